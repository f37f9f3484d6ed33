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
        let r = try TestEnv.run(
            "OPENBLAS_NUM_THREADS=2 mpirun -np 2 --bind-to none -x OPENBLAS_NUM_THREADS \(TestEnv.attunet) doctor")
        XCTAssertEqual(r.status, 0, r.stderr)
        let cores = ProcessInfo.processInfo.activeProcessorCount
        if 4 > cores { XCTAssertTrue(r.stdout.contains("oversubscribed"), r.stdout) }
    }

    /// Each rank's CPUs (its affinity mask, as the kernel lists it in /proc/self/status) and threads: under
    /// mpirun --bind-to none without ATTUNET_THREADS the 2 ranks share the mask; ATTUNET_THREADS above the CPUs
    /// of a rank (taskset to one CPU) is warned about.
    func testDoctorPrintsEachRanksCPUsAndThreads() throws {
        let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        let list = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }!
            .split(separator: ":")[1].trimmingCharacters(in: .whitespaces)
        let count = list.split(separator: ",").reduce(0) { n, part in
            let ends = part.split(separator: "-").compactMap { Int($0) }
            return n + (ends.count == 2 ? ends[1] - ends[0] + 1 : 1)
        }
        var r = try TestEnv.run(
            "env -u ATTUNET_THREADS mpirun -np 2 --bind-to none --oversubscribe \(TestEnv.attunet) doctor --gemm-size 64"
        )
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        for rank in 0..<2 {
            let line = r.stdout.split(separator: "\n").first { $0.hasPrefix("rank \(rank)/2 ") } ?? ""
            XCTAssertTrue(
                line.contains(
                    "  CPUs \(list) (\(count))  threads \(max(1, count / 2)) (affinity mask of \(count) CPU(s) shared by 2 ranks on this node)  "
                ), r.stdout)
        }
        XCTAssertFalse(r.stdout.contains("but it may run on"), r.stdout)
        let first = list.split(whereSeparator: { $0 == "-" || $0 == "," })[0]
        r = try TestEnv.run("ATTUNET_THREADS=2 taskset -c \(first) \(TestEnv.attunet) doctor --gemm-size 64")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("  CPUs \(first) (1)  threads 2 (ATTUNET_THREADS)  "), r.stdout)
        XCTAssertTrue(r.stdout.contains("warning: rank 0 on "), r.stdout)
        XCTAssertTrue(
            r.stdout.contains(
                ": 2 threads (ATTUNET_THREADS) but it may run on 1 CPU(s) (\(first)); its threads share them"), r.stdout
        )
    }

    /// An error only rank 1 meets (its store is missing) while rank 0 waits in doctor's all-reduce: rank 1
    /// prints it with its rank and ends the job within seconds, instead of both waiting forever. When every
    /// rank meets the same error, rank 0 prints it once and nothing says "rank 1".
    func testAnErrorOnOneRankEndsTheJobNamingTheRank() throws {
        let missing = "/tmp/attunet-no-such-store-\(getpid()).h5"
        let started = Date()
        let r = try TestEnv.run(
            "timeout -s KILL 60 mpirun --bind-to none -np 1 \(TestEnv.attunet) doctor : -np 1 \(TestEnv.attunet) train --store \(missing) --out /tmp/attunet-unused-\(getpid())"
        )
        let seconds = Date().timeIntervalSince(started)
        XCTAssertNotEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertNotEqual(r.status, 137, "killed by the test's timeout: the job hung")
        XCTAssertLessThan(seconds, 40, "the job must end within seconds")
        XCTAssertTrue(r.stderr.contains("error: rank 1: \(missing): no such file"), r.stderr)

        let same = try TestEnv.run(
            "timeout -s KILL 60 mpirun --bind-to none -np 2 \(TestEnv.attunet) train --store \(missing) --out /tmp/attunet-unused-\(getpid())"
        )
        XCTAssertEqual(same.status, 1, same.stdout + same.stderr)
        XCTAssertEqual(same.stderr.components(separatedBy: "error: \(missing): no such file").count, 2, same.stderr)
        XCTAssertFalse(same.stderr.contains("rank 1"), same.stderr)
    }
}
