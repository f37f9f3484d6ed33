import Distributed
import TestSupport
import XCTest

final class MPITests: XCTestCase {
    /// The built tool under `mpirun -np 2`: both ranks report, and an all-reduce and a broadcast of 16 MB
    /// arrive with the right values on every rank.
    func testDoctorUnderMpirunTwoRanks() throws {
        let r = try TestEnv.run("mpirun -np 2 --bind-to none \(TestEnv.attunet) doctor")
        XCTAssertEqual(r.status, 0, "stdout:\n\(r.stdout)\nstderr:\n\(r.stderr)")
        XCTAssertTrue(r.stdout.contains("rank 0/2"), r.stdout)
        XCTAssertTrue(r.stdout.contains("rank 1/2"), r.stdout)
        XCTAssertTrue(r.stdout.contains("all-reduce of 16 MB OK"), r.stdout)
        XCTAssertTrue(r.stdout.contains("broadcast of 16 MB OK"), r.stdout)
        XCTAssertTrue(r.stdout.contains("verdict: OK"), r.stdout)
    }

    /// Without mpirun the MPI communicator is a singleton whose collectives leave data unchanged, exactly like
    /// the local communicator.
    func testSingletonMatchesLocal() throws {
        let mpi = try MPICommunicator()
        XCTAssertEqual(mpi.size, 1)
        XCTAssertEqual(mpi.rank, 0)
        for comm in [mpi as Communicator, LocalCommunicator()] {
            var v: [Float] = [1, 2, 3]
            try v.withUnsafeMutableBufferPointer { try comm.allReduceSum($0) }
            XCTAssertEqual(v, [1, 2, 3])
            let s: [String] = try comm.broadcast(["a", "b"])
            XCTAssertEqual(s, ["a", "b"])
        }
    }

    /// Doctor's verdict flags the two configurations that silently cost speed.
    func testDoctorWarnsOnSlowKernelAndOversubscription() throws {
        let r = try TestEnv.run("OPENBLAS_NUM_THREADS=2 mpirun -np 2 --bind-to none -x OPENBLAS_NUM_THREADS \(TestEnv.attunet) doctor")
        XCTAssertEqual(r.status, 0, r.stderr)
        let cores = ProcessInfo.processInfo.activeProcessorCount
        if 4 > cores { XCTAssertTrue(r.stdout.contains("oversubscribed"), r.stdout) }
    }
}
