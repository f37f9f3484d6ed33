import Collectives
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

    /// An error only rank 1 meets (its store is missing) while rank 0 waits in doctor's all-reduce: rank 1
    /// prints it with its rank and ends the job within seconds, instead of both waiting forever. When every
    /// rank meets the same error, rank 0 prints it once and nothing says "rank 1".
    func testAnErrorOnOneRankEndsTheJobNamingTheRank() throws {
        let missing = "/tmp/attunet-no-such-store-\(getpid()).h5"
        let started = Date()
        let r = try TestEnv.run("timeout -s KILL 60 mpirun --bind-to none -np 1 \(TestEnv.attunet) doctor : -np 1 \(TestEnv.attunet) train --store \(missing) --out /tmp/attunet-unused-\(getpid())")
        let seconds = Date().timeIntervalSince(started)
        XCTAssertNotEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertNotEqual(r.status, 137, "killed by the test's timeout: the job hung")
        XCTAssertLessThan(seconds, 40, "the job must end within seconds")
        XCTAssertTrue(r.stderr.contains("error: rank 1: \(missing): no such file"), r.stderr)

        let same = try TestEnv.run("timeout -s KILL 60 mpirun --bind-to none -np 2 \(TestEnv.attunet) train --store \(missing) --out /tmp/attunet-unused-\(getpid())")
        XCTAssertEqual(same.status, 1, same.stdout + same.stderr)
        XCTAssertEqual(same.stderr.components(separatedBy: "error: \(missing): no such file").count, 2, same.stderr)
        XCTAssertFalse(same.stderr.contains("rank 1"), same.stderr)
    }
}
