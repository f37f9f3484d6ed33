import Foundation
import TestSupport
import XCTest

/// The damaged HDF5 files with which fuzzing crashed, hung or exhausted the memory of Debian's libhdf5 1.10.8
/// itself (Tests/Fixtures/fuzz-hdf5/<target>/, README.md there): attunet probes every HDF5 file in a child
/// process before opening it (HDF5Kit's `H5Probe`), so each is refused through the command that reads it with
/// one `error: ` line naming the file, exit status 1, no library text, within a bounded time.
final class DamagedHDF5Tests: XCTestCase {
    func testFilesThatCrashOrHangLibHDF5AreRefusedWithOneLine() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let root = TestEnv.root.appendingPathComponent("Tests/Fixtures/fuzz-hdf5")
        // The commands that read each kind: a case store through train, a checkpoint through inspect.
        let commands: [(target: String, command: (String) -> String)] = [
            ("casestore", { "train --store \($0) --out \(dir.path)/run --epochs 1 --patch 32x32x16 --batch 1" }),
            ("checkpoint", { "inspect \($0)" }),
        ]
        var inputs = 0
        for (target, command) in commands {
            let folder = root.appendingPathComponent(target)
            for name in try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted() {
                let file = folder.appendingPathComponent(name).path
                let start = Date()
                // A hang input waits for the probe's time limit: 1.5 s here (a crash input refused as a hang would still be one line).
                let r = try TestEnv.run(
                    "ATTUNET_HDF5_PROBE_TIMEOUT=1.5 \(TestEnv.attunet) \(command(file))", timeout: 30)
                let seconds = Date().timeIntervalSince(start)
                XCTAssertEqual(r.status, 1, "\(target)/\(name): \(r.stdout)\(r.stderr)")
                let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
                XCTAssertEqual(lines.count, 1, "\(target)/\(name): one line, got:\n\(r.stderr)")
                XCTAssertTrue(
                    r.stderr.hasPrefix("error: \(file): ") && r.stderr.hasSuffix("\n"), "\(target)/\(name): \(r.stderr)"
                )
                for noise in ["HDF5-DIAG", "#000", "Crashed", "Backtrace", "💣"] {
                    XCTAssertFalse(
                        r.stderr.contains(noise) || r.stdout.contains(noise),
                        "\(target)/\(name): library text:\n\(r.stdout)\(r.stderr)")
                }
                XCTAssertLessThan(seconds, 30, "\(target)/\(name)")
                // Without the probe every input fails: stop at the first, not after each hang's 30 s.
                guard r.status == 1, lines.count == 1 else { return }
                print("\(target)/\(name): \(String(format: "%.1f", seconds)) s: \(r.stderr.dropLast())")
                inputs += 1
            }
        }
        XCTAssertGreaterThanOrEqual(inputs, 40)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir.path)/run/checkpoint_latest.h5"))
    }
}
