import ArgumentParser
import Collectives
import DataPipeline
import Foundation
import HDF5Kit
import Support
import Tensor

/// `attunet doctor`: what every rank sees, and whether the setup will run at full speed.
struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check MPI, OpenBLAS, HDF5 and nifticlib on every rank.",
        discussion: """
            Run it first on a new machine, and under mpirun the way you will train, e.g.
              mpirun -np 2 --bind-to none attunet doctor

            Rank 0 prints one line per rank (host, rank/size, the CPUs it may run on (its affinity mask), its threads (what --threads defaults to, and why), MPI library and thread level, OpenBLAS kernel and threads, a measured sgemm rate, HDF5 version, nifticlib), under mpirun whether an all-reduce and a broadcast across the ranks delivered the right data, and then warnings and a verdict. It warns when a rank's threads exceed the CPUs it may run on, when OpenBLAS runs a slow fallback kernel on a CPU with AVX2/AVX-512 (set OPENBLAS_CORETYPE=SkylakeX, or Haswell for AVX2-only CPUs) and when ranks x BLAS threads exceed the cores of a host.

            Exit status:
              0   every check passed (warnings allowed)
              1   a check failed, or an error (one line each on stderr)
              64  bad command line
            """
    )

    @Option(help: "Matrix size of the sgemm probe (n x n x n).")
    var gemmSize: Int = 512

    /// What one rank measures; gathered on rank 0 as fixed-size JSON blocks.
    struct Report: Codable {
        var host: String, rank: Int, size: Int
        var mpi: String, threadLevel: String
        var blasCore: String, blasThreads: Int, gflops: Double
        var hdf5: String, nifti: Bool
        var cores: Int, avx512: Bool, avx2: Bool, cpu: String
        var coretypeEnv: String?
        /// The affinity mask's CPUs, and the thread count the training subcommands default to here.
        var affinity: [Int] = [], threads = 1, threadsSource = ""
    }

    func run() throws {
        let comm = try MPICommunicator()
        let cpu = CPUInfo.current
        let affinity = CPUAllocation.affinity()
        let threads = CPUAllocation.defaultThreads
        let report = Report(
            host: MPIRuntime.processorName, rank: comm.rank, size: comm.size,
            mpi: MPIRuntime.libraryVersion, threadLevel: MPIRuntime.threadLevel,
            blasCore: BLASInfo.coreName, blasThreads: BLASInfo.threads,
            gflops: BLASInfo.sgemmRate(n: gemmSize, reps: 3),
            hdf5: hdf5LibraryVersion, nifti: NIfTIVolume.isLibraryUsable,
            cores: cpu.logicalCores, avx512: cpu.hasAVX512F, avx2: cpu.hasAVX2, cpu: cpu.modelName,
            coretypeEnv: ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"],
            affinity: affinity, threads: threads.threads, threadsSource: threads.source)

        // Fixed-size blocks so one Allgather collects every rank's report.
        let blockSize = 2048
        var block = [UInt8](try JSONFiles.compactEncoder().encode(report))
        precondition(block.count < blockSize, "doctor report too large")
        block += [UInt8](repeating: 0, count: blockSize - block.count)
        let all = try block.withUnsafeBytes { try comm.allGather(bytes: $0) }
        let collectives = comm.size > 1 ? try checkCollectives(comm) : nil
        guard comm.isRoot else { return }
        let reports: [Report] = try (0..<comm.size).map { r in
            let bytes = all[(r * blockSize)..<((r + 1) * blockSize)].prefix { $0 != 0 }
            return try JSONFiles.decode(Report.self, from: Data(bytes))
        }
        print("attunet doctor: \(comm.size) rank(s)")
        for r in reports {
            print(
                "rank \(r.rank)/\(r.size)  host \(r.host)  CPUs \(CPUAllocation.listString(r.affinity)) (\(r.affinity.count))  threads \(r.threads) (\(r.threadsSource))  \(r.mpi) thread=\(r.threadLevel)  OpenBLAS \(r.blasCore) x\(r.blasThreads) thread(s)  sgemm \(fmt(r.gflops, 1)) GFLOP/s  HDF5 \(r.hdf5)  nifticlib \(r.nifti ? "yes" : "NO")"
            )
        }
        var (warnings, failures) = Self.verdict(reports)
        if let c = collectives {
            print(
                "collectives: all-reduce of \(c.megabytes) MB \(c.allReduceOK ? "OK" : "WRONG") (\(fmt(c.allReduceGBs, 2)) GB/s), broadcast of \(c.megabytes) MB \(c.broadcastOK ? "OK" : "WRONG")"
            )
            if !c.allReduceOK { failures.append("all-reduce returned wrong sums on at least one rank") }
            if !c.broadcastOK { failures.append("broadcast delivered wrong data to at least one rank") }
        }
        for w in warnings { print("warning: \(w)") }
        for f in failures { print("FAIL: \(f)") }
        if failures.isEmpty {
            print(
                warnings.isEmpty
                    ? "verdict: OK, ready to train at full speed"
                    : "verdict: OK with \(warnings.count) warning(s): runs, but see above")
        } else {
            print("verdict: NOT READY (\(failures.count) failure(s))")
            throw ExitCode(1)
        }
    }

    /// Warnings (slow but correct) and failures (will not work) for a set of rank reports.
    static func verdict(_ reports: [Report]) -> (warnings: [String], failures: [String]) {
        var warnings: [String] = []
        var failures: [String] = []
        for r in reports {
            if r.threads > r.affinity.count {
                warnings.append(
                    "rank \(r.rank) on \(r.host): \(r.threads) threads (\(r.threadsSource)) but it may run on \(r.affinity.count) CPU(s) (\(CPUAllocation.listString(r.affinity))); its threads share them (give srun --cpus-per-task, or set ATTUNET_THREADS=\(max(1, r.affinity.count)))"
                )
            }
            if !r.nifti { failures.append("rank \(r.rank): nifticlib is not usable (install libnifti2-dev)") }
            let slow = BLASInfo.slowCores.contains(r.blasCore)
            if slow && (r.avx512 || r.avx2) {
                let fix = r.avx512 ? "SkylakeX" : "Haswell"
                warnings.append(
                    "rank \(r.rank) on \(r.host): OpenBLAS runs the fallback '\(r.blasCore)' kernel on a CPU with \(r.avx512 ? "AVX-512" : "AVX2") (\(fmt(r.gflops, 0)) GFLOP/s); export OPENBLAS_CORETYPE=\(fix) (and pass it to remote ranks with mpirun -x OPENBLAS_CORETYPE) for 2-5x faster GEMM"
                )
            }
        }
        for (host, ranks) in Dictionary(grouping: reports, by: \.host) {
            let threads = ranks.reduce(0) { $0 + $1.blasThreads }
            let cores = ranks.first!.cores
            if threads > cores {
                warnings.append(
                    "host \(host): \(ranks.count) rank(s) x BLAS threads = \(threads) > \(cores) cores; oversubscribed (set OPENBLAS_NUM_THREADS=\(max(1, cores / ranks.count)))"
                )
            }
        }
        let sizes = Set(reports.map(\.size))
        if sizes.count != 1 || reports.count != reports.first!.size {
            failures.append("ranks disagree on the world size: \(sizes.sorted())")
        }
        return (warnings, failures)
    }

    struct Collectives { var megabytes: Int, allReduceOK: Bool, allReduceGBs: Double, broadcastOK: Bool }

    /// Sums rank+1 over all ranks and broadcasts a pattern from rank 0, checking every element on every rank;
    /// the verdicts are combined so rank 0 knows whether any rank saw wrong data.
    func checkCollectives(_ comm: Communicator) throws -> Collectives {
        let n = 4 << 20
        let buf = Tensor([n])
        try comm.allReduceSum(buf.data)  // warm-up: first touch and connection set-up are not bandwidth
        buf.fill(Float(comm.rank + 1))
        try comm.barrier()
        let t0 = DispatchTime.now().uptimeNanoseconds
        try comm.allReduceSum(buf.data)
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        let expected = Float(comm.size * (comm.size + 1) / 2)
        let sumOK = buf.data.allSatisfy { $0 == expected }
        for i in 0..<n { buf.data[i] = comm.rank == 0 ? Float(i % 977) : -1 }
        try comm.broadcast(buf.data, root: 0)
        var bcastOK = true
        for i in 0..<n where buf.data[i] != Float(i % 977) {
            bcastOK = false
            break
        }
        var bad = [sumOK ? 0.0 : 1.0, bcastOK ? 0.0 : 1.0, seconds]
        try bad.withUnsafeMutableBufferPointer { try comm.allReduceMax($0) }
        return Collectives(
            megabytes: (n * 4) >> 20, allReduceOK: bad[0] == 0, allReduceGBs: Double(n * 4) / bad[2] / 1e9,
            broadcastOK: bad[1] == 0)
    }
}
