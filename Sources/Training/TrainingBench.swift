import Collectives
import DataPipeline
import Foundation
import NN
import Support
import Tensor

/// Times whole training steps as `attunet train` runs them (``Trainer/step(_:)`` on batches from the
/// ``PatchLoader``), with the time of every layer, the phases of the step, memory and page faults: what
/// `attunet bench train` reports. Every rank of `comm` must take part.
public final class TrainingBench {
    public let trainer: Trainer
    let store: CaseStore
    let comm: Communicator

    /// A trainer for `model` on every case of `store` (no validation), writing nothing.
    /// `bucketFloats` and `overlap` are the gradient all-reduce's (``RunContext``); ``run(warmup:steps:threads:inference:overlap:)``
    /// may change the overlap.
    public init(
        store path: String, model: ModelConfig, patch: Dim3, batch: Int, loss: LossKind = .dice,
        optimizer: OptimizerKind = .adam, seed: UInt64 = 0, bucketFloats: Int = RunContext().bucketFloats,
        overlap: Bool = true, comm: Communicator
    ) throws {
        store = try CaseStore(path: path)
        self.comm = comm
        let config = TrainConfig(
            store: path, model: model, patch: patch, batch: batch, epochs: 1, optimizer: optimizer,
            loss: loss, seed: seed, trainCases: store.cases.map(\.id), validationCases: [])
        let unused = FileManager.default.temporaryDirectory.appendingPathComponent("attunet-bench-run-\(getpid())")
        trainer = try Trainer(
            config: config, comm: comm, outDir: unused,
            context: .quiet(bucketFloats: bucketFloats, overlapAllReduce: overlap))
    }

    /// Writes `count` (default 2) phantom cases prepared at 2 mm into `dir` and returns the store's path.
    public static func phantomStore(in dir: URL, classes: Int, count: Int = 2) throws -> String {
        guard classes == PhantomCase.classNames.count else {
            throw AttunetError(
                "the synthesised phantoms have \(PhantomCase.classNames.count) classes (\(PhantomCase.classNames.joined(separator: ", "))); pass --store for a model with \(classes)"
            )
        }
        try Phantom.writeDataset(to: dir.path + "/nii", count: count, seed: 0, threads: 1)
        var options = PrepareOptions()
        options.threads = 1
        let store = dir.path + "/store.h5"
        _ = try CasePreparer.run(
            input: try DatasetInput.folder(dir.path + "/nii"), out: store, options: options, skipBad: false)
        return store
    }

    /// Runs `warmup` untimed and `steps` timed steps and gathers every rank's figures (the report is complete
    /// on rank 0).
    /// With `inference`, each timed step is instead an evaluation-mode forward pass of one patch without
    /// gradients (what the sliding-window predictor runs per tile), and the report's phases hold only the
    /// forward time. `overlap`, when given, turns the overlap of the gradient all-reduce with the backward pass
    /// on or off for this run (``Trainer/overlapsAllReduce``).
    public func run(
        warmup: Int, steps: Int, threads: Int, inference: Bool = false, overlap: Bool? = nil
    ) throws -> TrainingBenchReport {
        if let overlap { trainer.overlapsAllReduce = overlap }
        let config = trainer.config
        let local = config.batch / comm.size
        // Enough samples per case that one epoch holds every step.
        let needed = (warmup + steps) * config.batch
        let perCase = (needed + config.trainCases.count - 1) / config.trainCases.count + 1
        let loader = try PatchLoader(
            store: store, cases: config.trainCases, patch: config.patch, batch: local,
            rank: comm.rank, worldSize: comm.size, seed: config.seed, augment: config.augmentOptions,
            foregroundFraction: config.foregroundFraction, samplesPerCase: perCase)
        loader.startEpoch(0)
        trainer.model.training = !inference
        let baseline = Double(Memory.residentBytes() ?? 0)
        let profile = LayerProfile()
        var walls: [Double] = []
        // data, forward, loss, backward, all-reduce, optimizer; the gradient all-reduce's total and exposed time
        var phases = [Double](repeating: 0, count: 8)
        var faultsBefore = rusage()
        var faultsAfter = rusage()
        var single: Tensor?  // inference: the first patch of each batch
        var inferenceSettled = false
        for i in 0..<(warmup + steps) {
            let timed = i >= warmup
            if timed && LayerProfile.active == nil {
                Memory.resetPeak()
                getrusage(RUSAGE_SELF.rawValue, &faultsBefore)
                LayerProfile.active = profile
            }
            let t0 = DispatchTime.now().uptimeNanoseconds
            guard let batch = try loader.next() else {
                throw AttunetError("the patch loader ran out of batches after \(i) steps")
            }
            let wait = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            let r: StepResult
            if inference {
                let one = Tensor.reuse(&single, [1] + Array(batch.image.shape.dropFirst()))
                one.pointer.update(from: batch.image.pointer, count: one.count)
                let f0 = DispatchTime.now().uptimeNanoseconds
                // Laid out after the first pass, as the sliding-window predictor does after its first tile.
                _ = try TensorPool.settling(after: &inferenceSettled) {
                    try GradientMode.withoutGradients { try trainer.model.forward(one) }
                }
                var times = StepTimes()
                times.forward = Double(DispatchTime.now().uptimeNanoseconds - f0) / 1e9
                r = StepResult(loss: 0, stopRequested: false, times: times)
            } else {
                r = try trainer.step(batch)
            }
            if timed {
                walls.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
                for (k, v) in [
                    wait, r.times.forward, r.times.loss, r.times.backward, r.times.allReduce, r.times.update,
                    r.gradientAllReduce, r.exposedAllReduce,
                ].enumerated() {
                    phases[k] += v / Double(steps)
                }
            }
        }
        LayerProfile.active = nil
        getrusage(RUSAGE_SELF.rawValue, &faultsAfter)
        let minor = Double(faultsAfter.ru_minflt - faultsBefore.ru_minflt) / Double(steps)
        let major = Double(faultsAfter.ru_majflt - faultsBefore.ru_majflt) / Double(steps)

        // Every rank's figures in its own slot of one summed vector.
        let n = comm.size
        let fields = 7
        var perRank = [Double](repeating: 0, count: n * fields)
        let sorted = walls.sorted()
        let mine = [
            sorted[sorted.count / 2], Double(Memory.peakResidentBytes() ?? 0), Double(Memory.residentBytes() ?? 0),
            minor, major,
            baseline, Double(TensorPool.reservedBytes),
        ]
        for k in 0..<fields { perRank[comm.rank * fields + k] = mine[k] }
        try perRank.withUnsafeMutableBufferPointer { try comm.allReduceSum($0) }
        // Phases and the slowest step: the largest over ranks; the fastest step: the smallest (negated under max).
        var slowest = phases + [-sorted.first!, sorted.last!]
        try slowest.withUnsafeMutableBufferPointer { try comm.allReduceMax($0) }
        func column(_ k: Int) -> [Double] { (0..<n).map { perRank[$0 * fields + k] } }

        let median = column(0).max()!
        let perStepPatches = inference ? comm.size : config.batch
        let voxels = Double(config.patch.count * perStepPatches)
        let perStep = profile.entries.map { e -> LayerProfile.Entry in
            var e = e
            e.forwardSeconds /= Double(max(e.forwardCalls, 1))
            e.backwardSeconds /= Double(max(e.backwardCalls, 1))
            return e
        }
        let cpu = CPUInfo.current
        var notes: [String] = []
        let env = ProcessInfo.processInfo.environment
        if env["OPENBLAS_CORETYPE"] == nil && BLASInfo.slowCores.contains(BLASInfo.coreName)
            && (cpu.hasAVX512F || cpu.hasAVX2)
        {
            notes.append(
                "OpenBLAS runs its slow '\(BLASInfo.coreName)' kernel on this CPU: rerun with OPENBLAS_CORETYPE=\(cpu.hasAVX512F ? "SkylakeX" : "Haswell") in the environment"
            )
        }
        return TrainingBenchReport(
            cpu: cpu.modelName, openblasCore: BLASInfo.coreName, openblasCoretypeEnv: env["OPENBLAS_CORETYPE"],
            mode: inference ? "inference" : "training", ranks: n, threadsPerRank: threads,
            model: config.model.kind.rawValue, featureScale: config.model.featureScale,
            parameters: trainer.model.parameterCount, patch: [config.patch.x, config.patch.y, config.patch.z],
            globalBatch: inference ? n : config.batch, batchPerRank: inference ? 1 : local, warmupSteps: warmup,
            timedSteps: steps,
            stepSeconds: .init(median: median, fastest: -slowest[8], slowest: slowest[9]),
            patchesPerSecond: Double(perStepPatches) / median, voxelsPerSecond: voxels / median,
            phases: .init(
                data: slowest[0], forward: slowest[1], loss: slowest[2], backward: slowest[3],
                allReduce: slowest[4], optimizer: slowest[5]),
            gradientAllReduce: .init(
                overlapped: !inference && trainer.overlapsAllReduce, buckets: trainer.allReduceBuckets.count,
                bucketBytes: 4 * trainer.allReduceBuckets.floats,
                seconds: inference ? 0 : slowest[6], exposedSeconds: inference ? 0 : slowest[7]),
            layers: perStep,
            peakResidentBytes: column(1).map(Int.init), residentBytes: column(2).map(Int.init),
            residentBeforeStepsBytes: column(5).map(Int.init), recycledBytes: column(6).map(Int.init),
            minorFaultsPerStep: column(3), majorFaultsPerStep: column(4), notes: notes)
    }
}

/// What `attunet bench train` measured (times in seconds, per step unless named otherwise).
public struct TrainingBenchReport: Codable, Sendable {
    public struct StepSeconds: Codable, Sendable {
        /// The slowest rank's median step (the job's pace), and the extremes over every rank's timed steps.
        public var median: Double, fastest: Double, slowest: Double
    }
    /// Mean seconds per timed step in each phase, the slowest rank's.
    public struct Phases: Codable, Sendable {
        public var data: Double, forward: Double, loss: Double, backward: Double, allReduce: Double, optimizer: Double
    }
    /// The all-reduce of the gradients in a step (mean seconds per step, the slowest rank's; 0 on one rank).
    public struct GradientAllReduce: Codable, Sendable {
        /// Whether it overlapped the backward pass (`--overlap on`, several ranks).
        public var overlapped: Bool
        /// Buckets per step, and the size of each (`--allreduce-bucket-mib`; the last may be smaller).
        public var buckets: Int, bucketBytes: Int
        /// The buckets' all-reduces summed, overlapped or not.
        public var seconds: Double
        /// What the step waited for them after the backward pass: the part the backward pass did not hide.
        public var exposedSeconds: Double
    }
    /// A kind of layer's summed time per step.
    public struct KindTotal: Codable, Sendable {
        public var kind: String, forwardSeconds: Double, backwardSeconds: Double
        /// The fewest work items per thread of any parallel loop of this kind's layers (both passes), as
        /// partitioned for the run's threads: below about 2, some threads idle while others finish.
        public var fewestItemsPerThread: Double?
    }

    public var cpu: String, openblasCore: String, openblasCoretypeEnv: String?
    /// `training` (whole optimizer steps) or `inference` (evaluation-mode forward passes of one patch per rank).
    public var mode: String
    public var ranks: Int, threadsPerRank: Int
    public var model: String, featureScale: Double, parameters: Int
    /// X, Y, Z.
    public var patch: [Int]
    public var globalBatch: Int, batchPerRank: Int, warmupSteps: Int, timedSteps: Int
    public var stepSeconds: StepSeconds
    /// For the whole job (every rank).
    public var patchesPerSecond: Double, voxelsPerSecond: Double
    public var phases: Phases
    public var gradientAllReduce: GradientAllReduce
    /// Rank 0's layers in the order they first ran, seconds per pass.
    public var layers: [LayerProfile.Entry]
    /// Per rank.
    public var peakResidentBytes: [Int], residentBytes: [Int]
    /// Per rank: resident before the first step (model, optimizer state, store and loader), and the buffers of
    /// recycled tensors (gradients, scratch) held for reuse between steps.
    public var residentBeforeStepsBytes: [Int], recycledBytes: [Int]
    public var minorFaultsPerStep: [Double], majorFaultsPerStep: [Double]
    public var notes: [String]

    /// The layers' time summed by kind, largest first.
    public var kinds: [KindTotal] {
        var order: [String] = []
        var sums: [String: (Double, Double, Int?)] = [:]
        for e in layers {
            if sums[e.kind] == nil { order.append(e.kind) }
            let s = sums[e.kind] ?? (0, 0, nil)
            let items = [s.2, e.forwardItems, e.backwardItems].compactMap { $0 }.min()
            sums[e.kind] = (s.0 + e.forwardSeconds, s.1 + e.backwardSeconds, items)
        }
        return order.map { k in
            let s = sums[k]!
            return KindTotal(
                kind: k, forwardSeconds: s.0, backwardSeconds: s.1,
                fewestItemsPerThread: s.2.map { Double($0) / Double(max(threadsPerRank, 1)) })
        }.sorted { $0.forwardSeconds + $0.backwardSeconds > $1.forwardSeconds + $1.backwardSeconds }
    }

    /// "gradient all-reduce 0.210 s per step (...), exposed 0.050 s (24% of it; overlapped ...)".
    func gradientAllReduceLine() -> String {
        let g = gradientAllReduce
        guard ranks > 1, mode == "training" else {
            return "gradient all-reduce: none (\(ranks > 1 ? "inference" : "1 rank"))"
        }
        let mib = String(format: "%.4g", Double(g.bucketBytes) / 1_048_576)
        let share = String(format: "%.0f", 100 * g.exposedSeconds / max(g.seconds, 1e-12))
        return
            "gradient all-reduce: \(String(format: "%.3f", g.seconds)) s per step in \(g.buckets) bucket(s) of \(mib) MiB, exposed \(String(format: "%.3f", g.exposedSeconds)) s (\(share)% of it; "
            + (g.overlapped
                ? "overlapped with the backward pass)" : "after the backward pass: --overlap off)")
    }

    /// The report as text tables.
    public func table() -> String {
        var out: [String] = []
        func f(_ v: Double, _ d: Int) -> String { String(format: "%.\(d)f", v) }
        func pad(_ s: String, _ w: Int, left: Bool = false) -> String {
            let p = String(repeating: " ", count: max(0, w - s.count))
            return left ? s + p : p + s
        }
        let patchText = "\(patch[0])x\(patch[1])x\(patch[2])"
        out.append(
            "attunet bench train (\(mode)): \(model) (feature scale \(f(featureScale, 2)), \(grouped(parameters)) parameters), patch \(patchText), global batch \(globalBatch) (\(batchPerRank) per rank)"
        )
        out.append(
            "CPU \(cpu); \(ranks) rank(s) x \(threadsPerRank) thread(s); OpenBLAS core \(openblasCore) (OPENBLAS_CORETYPE=\(openblasCoretypeEnv ?? "unset")); \(warmupSteps) warm-up + \(timedSteps) timed steps"
        )
        out.append("")
        out.append(
            "step \(f(stepSeconds.median, 3)) s (median; fastest \(f(stepSeconds.fastest, 3)), slowest \(f(stepSeconds.slowest, 3)))   \(f(patchesPerSecond, 3)) patches/s   \(f(voxelsPerSecond / 1e6, 3)) Mvoxels/s"
        )
        let p = phases
        let parts = [
            ("data wait", p.data), ("forward", p.forward), ("loss", p.loss), ("backward", p.backward),
            ("all-reduce", p.allReduce), ("optimizer", p.optimizer),
        ]
        let total = parts.reduce(0) { $0 + $1.1 }
        out.append(
            "phases per step: "
                + parts.map { "\($0.0) \(f($0.1, 3)) s (\(f(100 * $0.1 / max(total, 1e-12), 1))%)" }.joined(
                    separator: ", "))
        out.append(gradientAllReduceLine())
        out.append("")
        out.append(
            pad("layer", 44, left: true) + pad("kind", 16, left: true) + pad("output", 22, left: true)
                + pad("fwd ms", 9) + pad("rate", 12) + pad("bwd ms", 9) + pad("rate", 12)
                + pad("items fwd/bwd", 15))
        func items(_ n: Int?) -> String { n.map(String.init) ?? "-" }
        func rate(_ e: LayerProfile.Entry, backward: Bool) -> String {
            let s = backward ? e.backwardSeconds : e.forwardSeconds
            guard s > 0 else { return "" }
            let flop = backward ? e.backwardFlop : e.forwardFlop
            if flop > 0 { return f(flop / s / 1e9, 1) + " GF/s" }
            let bytes = backward ? e.backwardBytes : e.forwardBytes
            return f(bytes / s / 1e9, 1) + " GB/s"
        }
        var layerSum = 0.0
        for e in layers {
            layerSum += e.forwardSeconds + e.backwardSeconds
            out.append(
                pad(String(e.name.prefix(43)), 44, left: true) + pad(e.kind, 16, left: true)
                    + pad(e.shape.map(String.init).joined(separator: "x"), 22, left: true)
                    + pad(f(1e3 * e.forwardSeconds, 1), 9) + pad(rate(e, backward: false), 12)
                    + pad(e.backwardCalls > 0 ? f(1e3 * e.backwardSeconds, 1) : "", 9)
                    + pad(rate(e, backward: true), 12)
                    + pad(items(e.forwardItems) + "/" + (e.backwardCalls > 0 ? items(e.backwardItems) : "-"), 15))
        }
        out.append("")
        out.append(
            "by kind (per step, rank 0; items: the fewest work items per thread of any of the kind's parallel loops):")
        for k in kinds {
            out.append(
                "  " + pad(k.kind, 16, left: true) + " fwd " + pad(f(1e3 * k.forwardSeconds, 1), 8) + " ms  bwd "
                    + pad(f(1e3 * k.backwardSeconds, 1), 8)
                    + " ms  "
                    + pad(f(100 * (k.forwardSeconds + k.backwardSeconds) / max(stepSeconds.median, 1e-12), 1), 5)
                    + "% of the step"
                    + "  items/thread " + (k.fewestItemsPerThread.map { f($0, 1) } ?? "-"))
        }
        out.append(
            "  layers cover \(f(100 * layerSum / max(p.forward + p.backward, 1e-12), 1))% of forward + backward (the rest: summing gradients where paths join, and glue)"
        )
        out.append("")
        for r in 0..<ranks {
            out.append(
                "rank \(r): peak resident \(Memory.format(peakResidentBytes[r])) (\(Memory.format(peakResidentBytes[r] / max(batchPerRank, 1))) per sample; \(Memory.format(residentBeforeStepsBytes[r])) before the first step, \(Memory.format(recycledBytes[r])) of gradient and scratch buffers between steps); page faults per timed step: \(f(minorFaultsPerStep[r], 1)) minor, \(f(majorFaultsPerStep[r], 1)) major"
            )
        }
        for n in notes { out.append("note: \(n)") }
        return out.joined(separator: "\n")
    }
}

/// Thread scaling inside one rank: the same bench at several `--threads` counts, side by side in one process.
public struct ThreadScaling: Codable, Sendable {
    public struct Row: Codable, Sendable {
        public var threads: Int, stepSeconds: Double
        /// Step time at the first count divided by this one, and that divided by the thread ratio.
        public var speedup: Double, efficiency: Double
        /// Per kind of layer: (forward + backward) time at the first count divided by this one.
        public var kindSpeedups: [String: Double]
    }
    public var rows: [Row]

    public init(_ runs: [TrainingBenchReport]) {
        let base = runs[0]
        let baseKinds = Dictionary(
            uniqueKeysWithValues: base.kinds.map { ($0.kind, $0.forwardSeconds + $0.backwardSeconds) })
        rows = runs.map { r in
            let speedup = base.stepSeconds.median / r.stepSeconds.median
            var kinds: [String: Double] = [:]
            for k in r.kinds where k.forwardSeconds + k.backwardSeconds > 0 {
                if let b = baseKinds[k.kind] { kinds[k.kind] = b / (k.forwardSeconds + k.backwardSeconds) }
            }
            return Row(
                threads: r.threadsPerRank, stepSeconds: r.stepSeconds.median, speedup: speedup,
                efficiency: speedup * Double(base.threadsPerRank) / Double(r.threadsPerRank), kindSpeedups: kinds)
        }
    }

    public func table(kindOrder: [String]) -> String {
        func f(_ v: Double, _ d: Int) -> String { String(format: "%.\(d)f", v) }
        var out = ["thread scaling in one rank (same process, one run after the other):"]
        for r in rows {
            out.append(
                "  \(r.threads) thread(s): step \(f(r.stepSeconds, 3)) s, speed-up \(f(r.speedup, 2))x, efficiency \(f(100 * r.efficiency, 0))%"
            )
        }
        guard let last = rows.last, rows.count > 1 else { return out.joined(separator: "\n") }
        out.append("  speed-up per kind of layer at \(last.threads) threads (largest first):")
        for k in kindOrder {
            if let v = last.kindSpeedups[k] {
                out.append("    \(k.padding(toLength: 16, withPad: " ", startingAt: 0)) \(f(v, 2))x")
            }
        }
        return out.joined(separator: "\n")
    }
}

/// The same bench with the gradient all-reduce after the backward pass and overlapped with it, one run after
/// the other in one process (`attunet bench train --overlap both`).
public struct OverlapComparison: Codable, Sendable {
    public var threadsPerRank: Int
    /// Step time (median, slowest rank), the all-reduce's total and exposed seconds per step, off and on.
    public var stepSecondsOff: Double, stepSecondsOn: Double
    public var allReduceSecondsOff: Double, allReduceSecondsOn: Double
    public var exposedSecondsOff: Double, exposedSecondsOn: Double
    /// On / off.
    public var exposedRatio: Double, stepRatio: Double

    public init(off: TrainingBenchReport, on: TrainingBenchReport) {
        threadsPerRank = on.threadsPerRank
        stepSecondsOff = off.stepSeconds.median
        stepSecondsOn = on.stepSeconds.median
        allReduceSecondsOff = off.gradientAllReduce.seconds
        allReduceSecondsOn = on.gradientAllReduce.seconds
        exposedSecondsOff = off.gradientAllReduce.exposedSeconds
        exposedSecondsOn = on.gradientAllReduce.exposedSeconds
        exposedRatio = exposedSecondsOn / max(exposedSecondsOff, 1e-12)
        stepRatio = stepSecondsOn / max(stepSecondsOff, 1e-12)
    }

    public func table() -> String {
        func f(_ v: Double) -> String { String(format: "%.3f", v) }
        return [
            "overlap of the gradient all-reduce with the backward pass, \(threadsPerRank) thread(s) per rank (off, then on, in one process):",
            "  off: step \(f(stepSecondsOff)) s, all-reduce \(f(allReduceSecondsOff)) s, exposed \(f(exposedSecondsOff)) s",
            "  on:  step \(f(stepSecondsOn)) s, all-reduce \(f(allReduceSecondsOn)) s, exposed \(f(exposedSecondsOn)) s",
            "  exposed on/off \(String(format: "%.2f", exposedRatio))x, step on/off \(String(format: "%.2f", stepRatio))x",
        ].joined(separator: "\n")
    }
}
