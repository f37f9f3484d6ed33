import Foundation
import TestSupport
import XCTest

/// launch/fault-inject.sh with 5 trials: a 2-rank training killed (SIGKILL) at random moments, in a step, in
/// the all-reduce and in a checkpoint write, by a random victim (a rank, mpirun, or all of them), then resumed:
/// every run must end bit-identical to an uninterrupted one, and every checkpoint must stay readable.
final class FaultInjectionTests: XCTestCase {
    func testRandomKillsThenResumeEndBitIdenticalWithEveryCheckpointReadable() throws {
        let script = TestEnv.root.appendingPathComponent("launch/fault-inject.sh").path
        let r = try TestEnv.run("ATTUNET_BIN='\(TestEnv.attunet)' bash \(script) 5", timeout: 600)
        print(r.stdout)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("fault-inject: 5/5 bit-identical ("), r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains(", 0 unreadable checkpoint(s)"), r.stdout + r.stderr)
        XCTAssertFalse(
            r.stdout.contains("still there after the restart"),
            "a restart removes a killed write's temporary:\n\(r.stdout)")
    }
}
