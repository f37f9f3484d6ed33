import Foundation
import Support
import XCTest

/// The error type's exit statuses and lines, atomic writes (no half-written file, no temporary left, the old
/// file kept on failure), and the lock-protected value.
final class SupportTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("attunet-support-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func files() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() }

    func testErrorKindsCarryTheirExitStatus() {
        XCTAssertEqual(AttunetError("x").exitCode, 1)
        XCTAssertEqual(AttunetError(lines: ["a: bad", "b: bad"]).exitCode, 1)
        XCTAssertEqual(AttunetError(lines: ["a: bad", "b: bad"]).kind, .badInput)
        XCTAssertEqual(AttunetError(lines: ["a: bad", "b: bad"]).lines, ["a: bad", "b: bad"])
        XCTAssertEqual(AttunetError("", kind: .interrupted).exitCode, 75)
        XCTAssertEqual(AttunetError("", kind: .interrupted).lines, [], "an interrupted run prints no error line")
        XCTAssertEqual(AttunetError("loss", kind: .nonFinite).exitCode, 3)
        XCTAssertEqual("\(AttunetError("f.h5: missing dataset /x"))", "f.h5: missing dataset /x")
        XCTAssertEqual(
            AttunetError.message(of: AttunetError("/a/b.nii: truncated"), strippingPath: "/a/b.nii"), "truncated")
        XCTAssertEqual(
            AttunetError.message(of: AttunetError("other: truncated"), strippingPath: "/a/b.nii"), "other: truncated")
    }

    func testAtomicWriteReplacesTheFileAndLeavesNoTemporary() throws {
        let path = dir.appendingPathComponent("log.csv").path
        try AtomicFile.write("one\n", to: path)
        try AtomicFile.write("two\n", to: path)
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "two\n")
        XCTAssertEqual(try files(), ["log.csv"])
    }

    func testTemporaryKeepsTheNameAsSuffixAndIsHidden() throws {
        let path = dir.appendingPathComponent("case_000.nii.gz").path
        var seen = ""
        try AtomicFile.write(path) { tmp in
            seen = tmp
            try Data("x".utf8).write(to: URL(fileURLWithPath: tmp))
        }
        let name = URL(fileURLWithPath: seen).lastPathComponent
        XCTAssertTrue(name.hasPrefix("."), name)
        XCTAssertTrue(name.hasSuffix("-case_000.nii.gz"), name)
        XCTAssertEqual(URL(fileURLWithPath: seen).deletingLastPathComponent().path, dir.path)
    }

    func testAFailingWriterKeepsTheOldFileAndLeavesNothing() throws {
        struct Boom: Error {}
        let path = dir.appendingPathComponent("checkpoint.h5").path
        try AtomicFile.write("good", to: path)
        XCTAssertThrowsError(
            try AtomicFile.write(path) { tmp in
                try Data("half".utf8).write(to: URL(fileURLWithPath: tmp))
                throw Boom()
            })
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "good")
        XCTAssertEqual(try files(), ["checkpoint.h5"])
    }

    func testAWriterThatWritesNothingIsAnErrorNamingTheFile() throws {
        let path = dir.appendingPathComponent("x.json").path
        XCTAssertThrowsError(try AtomicFile.write(path) { _ in }) { error in
            XCTAssertTrue("\(error)".contains("fsync"), "\(error)")
        }
        XCTAssertEqual(try files(), [])
        XCTAssertThrowsError(try AtomicFile.write("x", to: dir.appendingPathComponent("no/such/folder/x.json").path)) {
            error in
            XCTAssertTrue("\(error)".contains("no/such/folder/x.json"), "\(error)")
        }
    }

    /// With a `BackgroundWriter`, the body runs at once and the fsyncs and rename on the writer's thread, in
    /// submission order: after `wait()` the last write is in place, with the work submitted between them done
    /// in order, and no temporary left.
    func testDeferredCommitsLandInOrder() throws {
        let writer = BackgroundWriter()
        let path = dir.appendingPathComponent("checkpoint_latest.h5").path
        let order = Locked<[String]>([])
        for i in 0..<5 {
            let committed: @Sendable () -> Void = { order.withLock { $0.append("commit \(i)") } }
            try AtomicFile.write(path, committingOn: writer, committed: committed) { tmp in
                try Data("epoch \(i)".utf8).write(to: URL(fileURLWithPath: tmp))
            }
            writer.submit { order.withLock { $0.append("log \(i)") } }
        }
        try writer.wait()
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "epoch 4")
        XCTAssertEqual(order.withLock { $0 }, (0..<5).flatMap { ["commit \($0)", "log \($0)"] })
        XCTAssertEqual(try files(), ["checkpoint_latest.h5"])
    }

    /// A commit that fails on the writer's thread: `wait()` throws it once, naming the target (not the
    /// temporary), the work submitted after it is skipped, the previous file is kept and no temporary is left;
    /// the writer then works again. A body that throws does so at once, before anything is queued.
    func testADeferredCommitErrorNamesTheFileAndStopsLaterWork() throws {
        struct Boom: Error {}
        let writer = BackgroundWriter()
        let path = dir.appendingPathComponent("checkpoint_latest.h5").path
        try AtomicFile.write("good", to: path)
        XCTAssertThrowsError(
            try AtomicFile.write(path, committingOn: writer) { tmp in
                try Data("half".utf8).write(to: URL(fileURLWithPath: tmp))
                throw Boom()
            }
        ) { XCTAssertTrue($0 is Boom, "\($0)") }
        // A body that writes nothing: its fsync fails on the writer's thread.
        try AtomicFile.write(path, committingOn: writer) { _ in }
        let ran = Locked(false)
        writer.submit { ran.withLock { $0 = true } }
        XCTAssertThrowsError(try writer.wait()) { error in
            XCTAssertTrue("\(error)".hasPrefix(path + ": cannot open the file to fsync it"), "\(error)")
        }
        XCTAssertFalse(ran.withLock { $0 }, "work after a failed commit must not run out of order")
        XCTAssertNoThrow(try writer.wait(), "the error is thrown once")
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "good")
        XCTAssertEqual(try files(), ["checkpoint_latest.h5"])
        try AtomicFile.write(path, committingOn: writer) { tmp in
            try Data("next".utf8).write(to: URL(fileURLWithPath: tmp))
        }
        try writer.wait()
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "next")
    }

    func testConcurrentWritersOfOneFolderDoNotCollide() throws {
        let folder = dir!
        DispatchQueue.concurrentPerform(iterations: 16) { i in
            try? AtomicFile.write("\(i)", to: folder.appendingPathComponent("f\(i).txt").path)
        }
        XCTAssertEqual(try files().count, 16)
        for i in 0..<16 {
            XCTAssertEqual(
                try String(contentsOfFile: dir.appendingPathComponent("f\(i).txt").path, encoding: .utf8), "\(i)")
        }
    }

    /// Temporaries of dead writers are removed, those of live processes and other hidden files kept.
    func testStaleTemporariesOfDeadProcessesAreRemoved() throws {
        let outcome = try ChildProcess.run(["/bin/sh", "-c", "echo $$ >&2"], timeout: 10)
        guard case .exited(0, let text) = outcome,
            let dead = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines))
        else {
            return XCTFail("\(outcome)")
        }
        let names = [".tmp-\(dead)-1-ckpt.h5", ".tmp-\(getpid())-2-ckpt.h5", ".tmp-x-1-other", ".hidden", "ckpt.h5"]
        for name in names { try Data([1]).write(to: dir.appendingPathComponent(name)) }
        XCTAssertEqual(AtomicFile.removeStaleTemporaries(in: dir.path), [".tmp-\(dead)-1-ckpt.h5"])
        XCTAssertEqual(try files(), names.dropFirst().sorted())
    }

    /// A child's exit status and stderr, its death by a signal, and a child that runs past its time, killed.
    func testChildProcessOutcomes() throws {
        XCTAssertEqual(
            try ChildProcess.run(["/bin/sh", "-c", "echo out; echo 'one line' >&2; exit 1"], timeout: 10),
            .exited(status: 1, stderr: "one line\n"))
        XCTAssertEqual(
            try ChildProcess.run(["/bin/sh", "-c", "kill -SEGV $$"], timeout: 10),
            .signaled(signal: SIGSEGV, stderr: ""))
        let start = Date()
        XCTAssertEqual(try ChildProcess.run(["/bin/sh", "-c", "exec sleep 30"], timeout: 0.3), .timedOut(seconds: 0.3))
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)
        XCTAssertThrowsError(try ChildProcess.run(["/nonexistent/program"], timeout: 1))
    }

    func testLockedCountsEveryIncrement() {
        let counter = Locked(0)
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            for _ in 0..<10_000 { counter.withLock { $0 += 1 } }
        }
        XCTAssertEqual(counter.current, 80_000)
    }
}
