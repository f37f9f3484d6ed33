import Foundation
import FuzzSupport
import Support
import TestSupport
import XCTest

/// The inputs with which fuzzing (launch/fuzz.sh) crashed a reader, kept under Tests/Fixtures/fuzz/<target>/
/// (README.md there says what each did): fed to the same reads as the fuzz target, each now gives an error.
final class FuzzRegressionTests: XCTestCase {
    func testInputsThatCrashedAReaderNowGiveErrors() throws {
        defer { try? FileManager.default.removeItem(atPath: FuzzFile.folder) }
        let root = TestEnv.root.appendingPathComponent("Tests/Fixtures/fuzz")
        var inputs = 0
        for target in FuzzReaders.targets.keys.sorted() {
            let dir = root.appendingPathComponent(target)
            for name in ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).sorted() {
                let bytes = [UInt8](try Data(contentsOf: dir.appendingPathComponent(name))) + [0]  // never empty
                XCTAssertThrowsError(
                    try bytes.withUnsafeBufferPointer {
                        try FuzzReaders.read(target, $0.baseAddress!, $0.count - 1)
                    }, "\(target)/\(name) must be refused"
                ) { error in
                    if target != "config" {  // the config readers' errors are JSONDecoder's own
                        XCTAssertTrue(error is AttunetError, "\(target)/\(name): \(error)")
                    }
                }
                inputs += 1
            }
        }
        print("fuzz regression inputs: \(inputs)")
    }
}
