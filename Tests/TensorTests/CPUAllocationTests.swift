import Foundation
import Tensor
import XCTest

/// The default thread count of a rank (`--threads`) from injected environments and affinity-mask sizes.
final class CPUAllocationTests: XCTestCase {
    func threads(_ env: [String: String], mask: Int) -> Int {
        CPUAllocation.defaultThreads(environment: env, affinityCount: mask).threads
    }

    func testExplicitThreadsWin() {
        XCTAssertEqual(
            threads(["ATTUNET_THREADS": "3", "SLURM_CPUS_PER_TASK": "8", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"], mask: 16),
            3)
        XCTAssertEqual(
            CPUAllocation.defaultThreads(environment: ["ATTUNET_THREADS": "3"], affinityCount: 1).source,
            "ATTUNET_THREADS")
        // More threads than CPUs is the user's choice (doctor warns about it).
        XCTAssertEqual(threads(["ATTUNET_THREADS": "4"], mask: 2), 4)
    }

    func testSlurmCPUsPerTask() {
        XCTAssertEqual(threads(["SLURM_CPUS_PER_TASK": "8"], mask: 64), 8)
        XCTAssertEqual(threads(["SLURM_CPUS_PER_TASK": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"], mask: 2), 2)
        XCTAssertEqual(
            CPUAllocation.defaultThreads(environment: ["SLURM_CPUS_PER_TASK": "2"], affinityCount: 2).source,
            "SLURM_CPUS_PER_TASK")
    }

    func testAffinityMaskSharedByTheLocalRanks() {
        XCTAssertEqual(threads([:], mask: 16), 16)
        XCTAssertEqual(threads(["OMPI_COMM_WORLD_LOCAL_SIZE": "1"], mask: 16), 16)
        // --bind-to none: every local rank sees the whole mask.
        XCTAssertEqual(threads(["OMPI_COMM_WORLD_LOCAL_SIZE": "4"], mask: 16), 4)
        XCTAssertEqual(threads(["OMPI_COMM_WORLD_LOCAL_SIZE": "3"], mask: 16), 5)
        XCTAssertEqual(threads(["OMPI_COMM_WORLD_LOCAL_SIZE": "4"], mask: 2), 1, "at least 1")
        // Bound at launch: each rank's mask is its own.
        XCTAssertEqual(threads(["OMPI_COMM_WORLD_LOCAL_SIZE": "4", "OMPI_MCA_orte_bound_at_launch": "1"], mask: 4), 4)
        XCTAssertEqual(threads([:], mask: 0), 1, "at least 1")
    }

    func testMalformedValuesAreIgnored() {
        XCTAssertEqual(threads(["ATTUNET_THREADS": "0", "SLURM_CPUS_PER_TASK": "x"], mask: 6), 6)
        XCTAssertEqual(threads(["ATTUNET_THREADS": "-2", "SLURM_CPUS_PER_TASK": "2"], mask: 6), 2)
        XCTAssertEqual(threads(["OMPI_COMM_WORLD_LOCAL_SIZE": "none"], mask: 6), 6)
    }

    func testThisProcessMaskAndListNotation() {
        let mask = CPUAllocation.affinity()
        XCTAssertFalse(mask.isEmpty)
        XCTAssertLessThanOrEqual(mask.count, ProcessInfo.processInfo.processorCount)
        XCTAssertEqual(CPUAllocation.listString([0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11")
        XCTAssertEqual(CPUAllocation.listString([5]), "5")
        XCTAssertEqual(CPUAllocation.listString([]), "")
    }
}
