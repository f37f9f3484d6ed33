import ArgumentParser
import Collectives
import DataPipeline
import Foundation
import NN
import Support
import Tensor
import Training

extension Bench {
    /// `attunet bench train`: whole training steps, timed as `attunet train` runs them.
    struct Train: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Time whole training steps, phase by phase, as train runs them.",
            discussion: """
                Runs --warmup steps, then --steps timed steps of Trainer.step, the function attunet train calls (data, forward, loss, backward, all-reduce, optimizer), on batches from the patch loader, in one process or on every rank under mpirun (--batch is global and split across ranks, as in train). Without --store, every rank synthesises two phantom CT cases (2 mm, in a temporary folder it removes afterwards), which takes a few seconds.

                It prints, for the whole job: the step time (median of the timed steps, slowest rank), patches/s and voxels/s; the phases of a step (waiting for data, forward, loss, backward, all-reduce, optimizer); every layer's forward and backward time, with GFLOP/s for convolutions and GB/s of tensor traffic for the memory-bound layers (bytes a pass must read and write at least), and totals per kind of layer; the peak resident memory per rank (VmHWM) and page faults per step in the timed steps. --json prints all of it as one JSON object instead.

                Compare runs side by side on an otherwise idle machine; one rank per core with one thread each (--threads 1) is how train runs on a node. OpenBLAS picks its kernel when the library loads: on CPUs it does not recognise, set OPENBLAS_CORETYPE=SkylakeX (AVX-512) or Haswell (AVX2) in the environment before starting (the output says when it is needed).

                  attunet bench train --patch 96x96x48 --batch 2
                  attunet bench train --patch 96x96x48 --batch 2 --threads 1,2
                  mpirun -np 2 --bind-to none attunet bench train --patch 160x160x96 \\
                      --batch 2 --json

                The second runs at 1 and 2 threads in turn, in one process, and ends with the thread scaling inside one rank.

                On several ranks the gradient all-reduce runs on a communication thread while the backward pass computes: each --allreduce-bucket-mib bucket of gradients is summed across ranks as soon as the backward pass has finished it, the last layers' first. The line "gradient all-reduce" gives its time per step (the buckets summed) and the part of it the step waited for after the backward pass (exposed). --overlap off times the all-reduce after the backward pass, as train --no-overlap runs it; --overlap both runs the bench with it off, then on, in one process, and ends with the exposed time and the step time side by side, as ratios (the weights are the same bit for bit either way). Smaller buckets start sooner and leave less exposed; each one costs a message's latency.

                  mpirun -np 2 --bind-to none attunet bench train --patch 96x96x48 \\
                      --batch 2 --overlap both --allreduce-bucket-mib 4

                Exit status:
                  0   done
                  1   an error, one line each on stderr
                  3   the loss became NaN/Inf in a step
                  64  bad command line
                """
        )

        @OptionGroup var modelOptions: ModelOptions

        @Option(help: "Patch size XxYxZ in voxels, each a multiple of 16.")
        var patch = Dim3(z: 48, y: 96, x: 96)

        @Option(help: "Global batch size, split across ranks.")
        var batch = 2

        @Option(help: "Timed steps.")
        var steps = 5

        @Option(
            help:
                "Untimed steps first: the first grows the memory pool, the second first touches the segment it settles into (2 or more for steady-state figures)."
        )
        var warmup = 2

        @Option(help: "Draw patches from this case store instead of synthesised phantoms.")
        var store: String?

        @Option(
            help: ArgumentHelp(
                "Threads per rank (attunet's loops; OpenBLAS runs single-threaded inside them). A list such as 1,2 runs the bench at each count in turn, in one process, and ends with the thread scaling: step time, speed-up and efficiency, and the speed-up of every kind of layer.",
                valueName: "n[,n...]"))
        var threads = ThreadCounts.fromEnvironment

        @Option(help: "Loss: dice, soft-dice or cross-entropy.")
        var loss: LossKind = .dice

        @Option(help: "Optimizer: adam or sgd.")
        var optimizer: OptimizerKind = .adam

        @Option(help: "Seed for the weights and the patches.")
        var seed: UInt64 = 0

        @Option(
            help: ArgumentHelp(
                "The gradient all-reduce on several ranks: on (overlapped with the backward pass, as train runs it), off (after it, as train --no-overlap), or both (off, then on, compared).",
                valueName: "on|off|both"))
        var overlap: OverlapMode = .on

        @Option(
            help:
                "All-reduce bucket in MiB, as train's option of the same name: the gradients are summed across ranks in pieces of this size."
        )
        var allreduceBucketMib: Double = 16

        @Flag(
            help:
                "Time evaluation-mode forward passes of one patch per rank (what prediction runs per tile) instead of training steps."
        )
        var inference = false

        @Flag(help: "Print one JSON object instead of the tables.")
        var json = false

        func validate() throws {
            guard steps >= 1 else { throw ValidationError("--steps must be at least 1") }
            guard warmup >= 0 else { throw ValidationError("--warmup must not be negative") }
            guard threads.counts.allSatisfy({ $0 >= 1 }) else { throw ValidationError("--threads must be at least 1") }
            guard batch >= 1 else { throw ValidationError("--batch must be at least 1") }
            guard allreduceBucketMib * 262_144 >= 1 else {
                throw ValidationError("--allreduce-bucket-mib must hold at least one float (4 bytes)")
            }
        }

        func run() throws {
            let comm = try MPICommunicator()
            let say: (String) -> Void = { line in
                if comm.isRoot && !json { FileHandle.standardError.write(Data((line + "\n").utf8)) }
            }
            var scratch: URL?
            defer { if let scratch { try? FileManager.default.removeItem(at: scratch) } }
            let storePath: String
            if let store {
                storePath = store
            } else {
                let dir = FileManager.default.temporaryDirectory.appendingPathComponent("attunet-bench-\(getpid())")
                scratch = dir
                say(
                    "bench train: synthesising 2 phantom cases at 2 mm (each rank in \(FileManager.default.temporaryDirectory.path)) ..."
                )
                storePath = try TrainingBench.phantomStore(in: dir, classes: modelOptions.config().classes)
            }
            let storeClasses = try store.map { try CaseStore(path: $0).classNames.count }
            let bench = try TrainingBench(
                store: storePath, model: modelOptions.config(storeClasses: storeClasses), patch: patch, batch: batch,
                loss: loss, optimizer: optimizer, seed: seed, bucketFloats: Int(allreduceBucketMib * 262_144),
                comm: comm)
            let modes: [Bool] = inference ? [false] : overlap == .both ? [false, true] : [overlap == .on]
            var reports: [TrainingBenchReport] = []
            var comparisons: [OverlapComparison] = []
            for t in threads.counts {
                Parallelism.threads = t
                var byMode: [TrainingBenchReport] = []
                for on in modes {
                    say(
                        "bench train: \(modelOptions.model.rawValue), \(comm.size) rank(s) x \(t) thread(s), patch \(patch), "
                            + (inference ? "inference, 1 patch per rank" : "global batch \(batch)")
                            + "; \(warmup) warm-up + \(steps) timed steps"
                            + (modes.count > 1 ? ", all-reduce overlap \(on ? "on" : "off")" : "") + " ...")
                    byMode.append(
                        try bench.run(warmup: warmup, steps: steps, threads: t, inference: inference, overlap: on))
                }
                reports += byMode
                if byMode.count == 2 { comparisons.append(OverlapComparison(off: byMode[0], on: byMode[1])) }
            }
            guard comm.isRoot else { return }
            // The thread scaling compares the runs of one overlap mode (the last: on, with --overlap both).
            let scaled = stride(from: modes.count - 1, to: reports.count, by: modes.count).map { reports[$0] }
            let scaling = scaled.count > 1 ? ThreadScaling(scaled) : nil
            if json {
                let enc = JSONFiles.encoder()
                // One report as before; with several counts or modes, the reports, the scaling and the comparisons.
                struct Runs: Encodable {
                    var runs: [TrainingBenchReport]
                    var scaling: ThreadScaling?
                    var overlap: [OverlapComparison]?
                }
                let data =
                    reports.count == 1
                    ? try enc.encode(reports[0])
                    : try enc.encode(
                        Runs(runs: reports, scaling: scaling, overlap: comparisons.isEmpty ? nil : comparisons))
                print(String(decoding: data, as: UTF8.self))
            } else {
                print(reports.map { $0.table() }.joined(separator: "\n\n"))
                if let scaling { print("\n" + scaling.table(kindOrder: scaled[0].kinds.map(\.kind))) }
                for c in comparisons { print("\n" + c.table()) }
            }
        }
    }
}

/// `bench train --overlap`: the gradient all-reduce overlapped with the backward pass, after it, or both in turn.
enum OverlapMode: String, ExpressibleByArgument, CaseIterable, Sendable {
    case on, off, both
}

/// `--threads 1,2`: one or more thread counts.
struct ThreadCounts: ExpressibleByArgument, Sendable {
    let counts: [Int]
    /// The default, ATTUNET_THREADS else 1: help shows that rule, not the count of the shell it runs in.
    private var isEnvironmentDefault = false
    init(_ counts: [Int]) { self.counts = counts }
    static var fromEnvironment: ThreadCounts {
        var t = ThreadCounts([PerRankThreads.fromEnvironment])
        t.isEnvironmentDefault = true
        return t
    }
    init?(argument: String) {
        let parts = argument.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !parts.isEmpty, parts.allSatisfy({ $0 != nil }) else { return nil }
        counts = parts.map { $0! }
    }
    var defaultValueDescription: String {
        isEnvironmentDefault ? PerRankThreads.defaultDescription : counts.map(String.init).joined(separator: ",")
    }
}
