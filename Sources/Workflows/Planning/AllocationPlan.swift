import DataPipeline
import Foundation
import Inference
import Support
import Tensor
import Training

// The planner's model (`attunet plan`): how long a cross-validation takes on an allocation of nodes, for every
// layout of fold groups x ranks per group x threads per rank, from step times measured on one machine
// (``CalibrationProfile``). Everything here is arithmetic; the measuring is in Calibration.swift.

/// A link the gradient all-reduce runs over: a bandwidth and a per-message latency.
public struct NetworkLink: Codable, Sendable, Equatable {
    public var name: String
    /// Bytes per second one rank can send (and receive) at the same time.
    public var bandwidthBytesPerSecond: Double
    public var latencySeconds: Double

    public init(name: String, bandwidthBytesPerSecond: Double, latencySeconds: Double) {
        self.name = name
        self.bandwidthBytesPerSecond = bandwidthBytesPerSecond
        self.latencySeconds = latencySeconds
    }

    /// The `--network` presets: line rates (no protocol overhead) and typical MPI latencies. `shm` is the ranks
    /// of one node, as measured on a 2-core node with `--bind-to none` (about 5 GB/s, README "For cluster users").
    public static let presets: [NetworkLink] = [
        NetworkLink(name: "25gbe", bandwidthBytesPerSecond: 25e9 / 8, latencySeconds: 25e-6),
        NetworkLink(name: "100gbe", bandwidthBytesPerSecond: 100e9 / 8, latencySeconds: 10e-6),
        NetworkLink(name: "ib100", bandwidthBytesPerSecond: 100e9 / 8, latencySeconds: 2e-6),
        NetworkLink(name: "shm", bandwidthBytesPerSecond: 5e9, latencySeconds: 1e-6),
    ]

    /// The preset of that name (`25gbe`, `100gbe`, `ib100`, `shm`).
    public static func preset(_ name: String) -> NetworkLink? { presets.first { $0.name == name.lowercased() } }

    /// The ranks of one node (``presets``' `shm`).
    public static var sharedMemory: NetworkLink { preset("shm")! }

    /// A ring all-reduce of `bytes` over `ranks` ranks: each rank sends and receives 2 (p − 1)/p of the bytes
    /// in 2 (p − 1) messages, so `2 (p−1)/p × bytes / bandwidth + 2 (p−1) × latency`; 0 for one rank.
    public func ringAllReduceSeconds(bytes: Double, ranks p: Int) -> Double {
        guard p > 1 else { return 0 }
        let q = Double(p - 1)
        return 2 * q / Double(p) * bytes / bandwidthBytesPerSecond + 2 * q * latencySeconds
    }
}

/// Amdahl's law fitted to measured times at several thread counts: `t(T) = serial + parallel / T`
/// (so `t(1) = serial + parallel` and the serial fraction is `serial / t(1)`), by least squares in 1/T with both
/// terms kept non-negative. Two counts give the line through both points; more give the best fit.
/// Beyond the largest measured count it is an extrapolation (``extrapolates(_:)``).
public struct AmdahlFit: Codable, Sendable, Equatable {
    public var serialSeconds: Double
    public var parallelSeconds: Double
    /// The thread counts measured, ascending.
    public var measuredThreads: [Int]

    public init(serialSeconds: Double, parallelSeconds: Double, measuredThreads: [Int]) {
        self.serialSeconds = serialSeconds
        self.parallelSeconds = parallelSeconds
        self.measuredThreads = measuredThreads
    }

    /// Fits `(threads, seconds)` points. One thread count alone says nothing of scaling: the time is then taken
    /// as the same at every count (no speed-up assumed).
    public init(_ points: [(threads: Int, seconds: Double)]) {
        precondition(!points.isEmpty && points.allSatisfy { $0.threads >= 1 }, "AmdahlFit needs measured points")
        measuredThreads = Array(Set(points.map(\.threads))).sorted()
        let x = points.map { 1 / Double($0.threads) }
        let t = points.map(\.seconds)
        let n = Double(points.count)
        let mx = x.reduce(0, +) / n
        let mt = t.reduce(0, +) / n
        let sxx = zip(x, x).reduce(0) { $0 + ($1.0 - mx) * ($1.1 - mx) }
        let sxt = zip(x, t).reduce(0) { $0 + ($1.0 - mx) * ($1.1 - mt) }
        guard measuredThreads.count > 1, sxx > 0 else {
            serialSeconds = mt
            parallelSeconds = 0
            return
        }
        var b = sxt / sxx
        var a = mt - b * mx
        if b < 0 {  // slower with more threads: no speed-up
            b = 0
            a = mt
        } else if a < 0 {  // better than linear: all parallel, fitted through the origin
            a = 0
            b = zip(x, t).reduce(0) { $0 + $1.0 * $1.1 } / x.reduce(0) { $0 + $1 * $1 }
        }
        serialSeconds = a
        parallelSeconds = b
    }

    /// The predicted time at `threads`.
    public func seconds(threads: Int) -> Double { serialSeconds + parallelSeconds / Double(max(threads, 1)) }

    /// The serial fraction s of `t(T) = t(1) (s + (1 − s) / T)`.
    public var serialFraction: Double {
        let t1 = serialSeconds + parallelSeconds
        return t1 > 0 ? serialSeconds / t1 : 1
    }

    /// Whether `threads` lies beyond the counts measured.
    public func extrapolates(_ threads: Int) -> Bool { threads > (measuredThreads.last ?? 1) }
}

/// One model's measured costs on the calibration machine, as the planner uses them: the part of a step that
/// grows with the rank's batch, the part that does not (optimizer, data, glue), and one evaluation-mode forward
/// pass of a patch (a sliding-window tile), each fitted over threads; and the memory of a rank.
public struct ModelCostModel: Sendable {
    public var model: String
    public var parameters: Int
    /// The timed steps' batch per rank and patch voxels.
    public var calibrationBatch: Int
    /// Experiment patch voxels / calibration patch voxels: the per-sample parts scale by it.
    public var voxelScale: Double
    /// Forward + loss + backward of `calibrationBatch` patches of the calibration size.
    public var batchFit: AmdahlFit
    /// The rest of a step on one rank (optimizer, data wait, glue).
    public var fixedFit: AmdahlFit
    /// One forward pass of one calibration-size patch without gradients.
    public var tileFit: AmdahlFit
    /// Resident before the first step, and the peak during the timed steps (bytes).
    public var residentBeforeBytes: Double, peakBytes: Double

    public init(
        model: String, parameters: Int, calibrationBatch: Int, voxelScale: Double, batchFit: AmdahlFit,
        fixedFit: AmdahlFit, tileFit: AmdahlFit, residentBeforeBytes: Double, peakBytes: Double
    ) {
        self.model = model
        self.parameters = parameters
        self.calibrationBatch = calibrationBatch
        self.voxelScale = voxelScale
        self.batchFit = batchFit
        self.fixedFit = fixedFit
        self.tileFit = tileFit
        self.residentBeforeBytes = residentBeforeBytes
        self.peakBytes = peakBytes
    }

    /// The compute of one step (no all-reduce) of a rank with `batch` patches of the experiment's size.
    public func computeSeconds(batch: Int, threads: Int) -> Double {
        voxelScale * Double(batch) / Double(calibrationBatch) * batchFit.seconds(threads: threads)
            + fixedFit.seconds(threads: threads)
    }

    /// One whole volume of `tiles` sliding-window tiles of the experiment's patch.
    public func volumeSeconds(tiles: Double, threads: Int) -> Double {
        tiles * voxelScale * tileFit.seconds(threads: threads)
    }

    /// The gradient bytes all-reduced per step (float32).
    public var gradientBytes: Double { Double(parameters) * 4 }

    /// A rank's peak resident memory with `batch` patches of the experiment's size: what the model, optimizer
    /// and loader hold before the steps, plus the activations, which grow with the patches.
    public func memoryBytes(batch: Int) -> Double {
        residentBeforeBytes + max(0, peakBytes - residentBeforeBytes) * voxelScale * Double(batch)
            / Double(calibrationBatch)
    }
}

/// The cross-validation to plan, in the numbers its cost depends on.
public struct PlannedExperiment: Codable, Sendable, Equatable {
    /// One (model, fold) training and evaluation, the unit `attunet cv` deals to fold groups.
    public struct Job: Codable, Sendable, Equatable {
        public var model: Int, fold: Int
        public var stepsPerEpoch: Int, validationCases: Int, testCases: Int
    }
    public var models: [String]
    public var folds: Int
    public var cases: Int
    public var epochs: Int
    public var batch: Int
    /// Validation passes per job (every `--val-every` epochs and after the last; 0 without validation cases).
    public var validations: Int
    /// Sliding-window tiles of one validation or test volume, on average.
    public var tilesPerVolume: Double
    /// In `attunet cv`'s order: every fold of the first model, then of the next.
    public var jobs: [Job]

    /// The jobs of `attunet cv` on `ids` (the store's case ids, or stand-ins for a case count) with seeded folds
    /// (``FoldPlan/make(ids:folds:seed:inverse:groups:)``).
    public init(
        models: [String], ids: [String], folds: Int, inverse: Bool = false, epochs: Int, batch: Int,
        samplesPerCase: Int = 1, validationFraction: Double = 0.2, validateEvery: Int = 1,
        tilesPerVolume: Double, seed: UInt64 = 0
    ) throws {
        self.init(
            models: models, plan: try FoldPlan.make(ids: ids, folds: folds, seed: seed, inverse: inverse),
            epochs: epochs, batch: batch, samplesPerCase: samplesPerCase, validationFraction: validationFraction,
            validateEvery: validateEvery, tilesPerVolume: tilesPerVolume)
    }

    /// The jobs of `attunet cv` on the folds of `plan`: the same validation split
    /// (`TrainConfig.split(_:validationFraction:seed:)`) and steps per epoch
    /// (`PatchLoader.stepsPerEpoch(samples:globalBatch:)`) as the run.
    public init(
        models: [String], plan: FoldPlan, epochs: Int, batch: Int, samplesPerCase: Int = 1,
        validationFraction: Double = 0.2, validateEvery: Int = 1, tilesPerVolume: Double
    ) {
        self.models = models
        self.folds = plan.count
        self.cases = Set(plan.parts.flatMap { $0 }).count
        self.epochs = epochs
        self.batch = batch
        self.tilesPerVolume = tilesPerVolume
        let every = max(validateEvery, 1)
        var sizes: [(Int, Int, Int)] = []
        for k in 0..<plan.count {
            // The split's sizes depend on the case count only, not on the seed.
            let (train, val) = TrainConfig.split(
                plan.trainingCases(fold: k), validationFraction: validationFraction, seed: UInt64(k))
            sizes.append(
                (
                    PatchLoader.stepsPerEpoch(samples: train.count * samplesPerCase, globalBatch: batch), val.count,
                    plan.testCases(fold: k).count
                ))
        }
        validations = sizes.allSatisfy({ $0.1 == 0 }) ? 0 : epochs / every + (epochs % every == 0 ? 0 : 1)
        jobs = models.indices.flatMap { m in
            sizes.enumerated().map {
                Job(
                    model: m, fold: $0.offset, stepsPerEpoch: $0.element.0, validationCases: $0.element.1,
                    testCases: $0.element.2)
            }
        }
    }

    /// Stand-in case ids for a cohort of `count` cases.
    public static func ids(count: Int) -> [String] { (0..<count).map { String(format: "case_%04d", $0) } }

    /// Sliding-window tiles of a volume of `shape` at `patch` with the trainer's overlap (0.5), padded where
    /// smaller than the patch, as `SlidingWindowPredictor` places them.
    public static func tiles(volume shape: Dim3, patch: Dim3, overlap: Double = 0.5) -> Int {
        let n = [max(shape.z, patch.z), max(shape.y, patch.y), max(shape.x, patch.x)]
        let p = [patch.z, patch.y, patch.x]
        return zip(n, p).reduce(1) {
            $0 * SlidingWindowPredictor.tileStarts(length: $1.0, patch: $1.1, overlap: overlap).count
        }
    }
}

/// Where the ranks of a cross-validation run: `groups` fold groups of `ranksPerGroup` ranks with
/// `threadsPerRank` threads each, on `nodes` nodes with `ranksPerNode` ranks each (groups are consecutive
/// ranks, as `attunet cv --fold-parallel` makes them).
public struct Layout: Codable, Sendable, Equatable, Hashable, CustomStringConvertible {
    public var groups: Int, ranksPerGroup: Int, threadsPerRank: Int, nodes: Int, ranksPerNode: Int

    public init(groups: Int, ranksPerGroup: Int, threadsPerRank: Int, nodes: Int, ranksPerNode: Int) {
        self.groups = groups
        self.ranksPerGroup = ranksPerGroup
        self.threadsPerRank = threadsPerRank
        self.nodes = nodes
        self.ranksPerNode = ranksPerNode
    }

    public var ranks: Int { groups * ranksPerGroup }
    public var cores: Int { ranks * threadsPerRank }
    /// Whether each group's ranks share one node (the all-reduce over shared memory).
    public var groupsWithinNodes: Bool { ranksPerNode % ranksPerGroup == 0 }
    public var description: String {
        "\(groups) group(s) x \(ranksPerGroup) rank(s) x \(threadsPerRank) thread(s) on \(nodes) node(s) (\(ranksPerNode) rank(s) per node)"
    }
}

/// A layout's predicted cost.
public struct LayoutPrediction: Codable, Sendable, Equatable {
    public var layout: Layout
    /// Per model of the experiment: one optimizer step (compute of the slowest rank + exposed all-reduce), its
    /// all-reduce part, and one whole validation or test volume on one rank.
    public var stepSeconds: [Double], allReduceSeconds: [Double], volumeSeconds: [Double]
    /// Summed over every job (work), and the wall time: the busiest group's jobs one after the other.
    public var trainingSeconds: Double, validationSeconds: Double, testSeconds: Double
    public var wallSeconds: Double
    /// The largest model's peak per rank, and per node (ranks per node x that).
    public var memoryPerRankBytes: Double
    /// Whether any thread count of the layout lies beyond the calibration's measured counts.
    public var extrapolated: Bool

    /// Cores held (ranks x threads) for the wall time.
    public var coreHours: Double { wallSeconds * Double(layout.cores) / 3600 }
    public var memoryPerNodeBytes: Double { memoryPerRankBytes * Double(layout.ranksPerNode) }
}

/// A job array's plan: one task per fold (every model of it), each task on `layout` (its `groups` run the
/// models of the fold side by side), as many tasks at once as the allocation's nodes hold.
public struct ArrayPrediction: Codable, Sendable, Equatable {
    public var task: LayoutPrediction
    /// Tasks running at once, and the longest task's wall time.
    public var concurrentTasks: Int
    public var taskSeconds: Double
    public var wallSeconds: Double
    public var coreHours: Double { wallSeconds * Double(task.layout.cores * concurrentTasks) / 3600 }
}

/// The nodes a plan may use.
public struct Allocation: Sendable, Equatable {
    public var nodes: Int, coresPerNode: Int
    /// Memory per node for the ranks (bytes); nil: not checked.
    public var memoryPerNodeBytes: Double?
    /// Between nodes; ranks of one node use ``NetworkLink/sharedMemory``.
    public var network: NetworkLink
    public var sharedMemory: NetworkLink
    /// The share of the all-reduce that is not hidden behind the backward pass (1: none hidden; `bench train`
    /// measures the exposed time of an overlapped all-reduce).
    public var exposedAllReduce: Double

    public init(
        nodes: Int, coresPerNode: Int, memoryPerNodeBytes: Double? = nil, network: NetworkLink,
        sharedMemory: NetworkLink = .sharedMemory, exposedAllReduce: Double = 1
    ) {
        self.nodes = nodes
        self.coresPerNode = coresPerNode
        self.memoryPerNodeBytes = memoryPerNodeBytes
        self.network = network
        self.sharedMemory = sharedMemory
        self.exposedAllReduce = exposedAllReduce
    }
}

/// Every layout of an experiment on an allocation, predicted from measured costs, and the one that finishes
/// soonest within memory.
public struct AllocationPlanner: Sendable {
    public var experiment: PlannedExperiment
    /// One per model of the experiment, in its order.
    public var costs: [ModelCostModel]
    public var allocation: Allocation

    public init(experiment: PlannedExperiment, costs: [ModelCostModel], allocation: Allocation) {
        precondition(costs.count == experiment.models.count, "one cost model per model of the experiment")
        self.experiment = experiment
        self.costs = costs
        self.allocation = allocation
    }

    /// The wall time of each group when `jobSeconds` (in `attunet cv`'s job order) are dealt as `cv
    /// --fold-parallel` deals them: job j to group j mod `groups`, each group's jobs one after the other.
    public static func deal(_ jobSeconds: [Double], groups: Int) -> [Double] {
        var sums = [Double](repeating: 0, count: max(groups, 1))
        for (j, s) in jobSeconds.enumerated() { sums[j % sums.count] += s }
        return sums
    }

    /// The positive divisors of `n`, ascending.
    static func divisors(_ n: Int) -> [Int] { (1...max(n, 1)).filter { n % $0 == 0 } }

    /// The layout's cost, or nil when the ranks of a node need more memory than it has. Assumes a valid layout
    /// (``layouts()`` gives only those).
    public func predict(_ layout: Layout, jobs: [PlannedExperiment.Job]? = nil) -> LayoutPrediction? {
        let r = layout.ranksPerGroup
        let t = layout.threadsPerRank
        let local = experiment.batch / r
        let memory = costs.map { $0.memoryBytes(batch: local) }.max() ?? 0
        if let limit = allocation.memoryPerNodeBytes, memory * Double(layout.ranksPerNode) > limit { return nil }
        let link = layout.groupsWithinNodes ? allocation.sharedMemory : allocation.network
        let allReduce = costs.map {
            allocation.exposedAllReduce * link.ringAllReduceSeconds(bytes: $0.gradientBytes, ranks: r)
        }
        let steps = costs.indices.map { costs[$0].computeSeconds(batch: local, threads: t) + allReduce[$0] }
        let volumes = costs.map { $0.volumeSeconds(tiles: experiment.tilesPerVolume, threads: t) }
        func spread(_ n: Int) -> Double { Double((n + r - 1) / r) }  // volumes are spread over the group's ranks
        var training = 0.0
        var validation = 0.0
        var test = 0.0
        var perJob: [Double] = []
        for j in jobs ?? experiment.jobs {
            let a = Double(experiment.epochs * j.stepsPerEpoch) * steps[j.model]
            let b = Double(experiment.validations) * spread(j.validationCases) * volumes[j.model]
            let c = spread(j.testCases) * volumes[j.model]
            training += a
            validation += b
            test += c
            perJob.append(a + b + c)
        }
        let extrapolated = costs.contains {
            $0.batchFit.extrapolates(t) || $0.fixedFit.extrapolates(t) || $0.tileFit.extrapolates(t)
        }
        return LayoutPrediction(
            layout: layout, stepSeconds: steps, allReduceSeconds: allReduce, volumeSeconds: volumes,
            trainingSeconds: training, validationSeconds: validation, testSeconds: test,
            wallSeconds: Self.deal(perJob, groups: layout.groups).max() ?? 0, memoryPerRankBytes: memory,
            extrapolated: extrapolated)
    }

    /// Every layout `attunet cv` can run on the allocation for `jobCount` jobs: ranks per group dividing the
    /// global batch; at most the cores of a node per node; a node's ranks either whole groups or a whole part of
    /// one group (groups are consecutive ranks); no more groups than jobs (a group without a job idles).
    public func layouts(jobCount: Int? = nil, maxNodes: Int? = nil) -> [Layout] {
        let c = allocation.coresPerNode
        let jobs = jobCount ?? experiment.jobs.count
        var out: [Layout] = []
        for r in Self.divisors(experiment.batch) {
            for t in 1...max(c, 1) {
                for k in 1...max(c / t, 1) where k * t <= c && (k % r == 0 || r % k == 0) {
                    for n in 1...max(maxNodes ?? allocation.nodes, 1) where (n * k) % r == 0 {
                        let g = n * k / r
                        guard g <= jobs else { break }
                        out.append(Layout(groups: g, ranksPerGroup: r, threadsPerRank: t, nodes: n, ranksPerNode: k))
                    }
                }
            }
        }
        return out
    }

    /// The soonest of `predictions`; among those within 1% of it, the one with the fewest core-hours, then the
    /// fewest nodes.
    static func soonest(_ predictions: [LayoutPrediction]) -> LayoutPrediction? {
        guard let best = predictions.map(\.wallSeconds).min() else { return nil }
        return predictions.filter { $0.wallSeconds <= best * 1.01 }.min {
            ($0.coreHours, $0.layout.nodes, $0.wallSeconds) < ($1.coreHours, $1.layout.nodes, $1.wallSeconds)
        }
    }

    /// Every layout's prediction that fits in memory.
    public func predictions() -> [LayoutPrediction] { layouts().compactMap { predict($0) } }

    /// The layout that finishes soonest within memory (nil: none fits).
    public func plan() -> LayoutPrediction? { Self.soonest(predictions()) }

    /// The soonest job array: each task one fold (every model of it) on whole nodes, as many tasks at once as
    /// the allocation's nodes hold, the next task starting when one ends (nil: none fits).
    public func planArray() -> ArrayPrediction? {
        let m = experiment.models.count
        let byFold = (0..<experiment.folds).map { k in experiment.jobs.filter { $0.fold == k } }
        var candidates: [ArrayPrediction] = []
        for layout in layouts(jobCount: m) {
            let perFold = byFold.compactMap { predict(layout, jobs: $0) }
            let slots = allocation.nodes / layout.nodes
            guard perFold.count == byFold.count, var task = perFold.first, slots >= 1 else { continue }
            // List scheduling: each task to the slot that frees first.
            var free = [Double](repeating: 0, count: min(slots, byFold.count))
            for p in perFold {
                let i = free.indices.min { free[$0] < free[$1] }!
                free[i] += p.wallSeconds
            }
            task.wallSeconds = perFold.map(\.wallSeconds).max()!
            task.trainingSeconds = perFold.reduce(0) { $0 + $1.trainingSeconds }
            task.validationSeconds = perFold.reduce(0) { $0 + $1.validationSeconds }
            task.testSeconds = perFold.reduce(0) { $0 + $1.testSeconds }
            candidates.append(
                ArrayPrediction(
                    task: task, concurrentTasks: free.count, taskSeconds: task.wallSeconds, wallSeconds: free.max()!))
        }
        guard let best = candidates.map(\.wallSeconds).min() else { return nil }
        return candidates.filter { $0.wallSeconds <= best * 1.01 }.min {
            ($0.coreHours, $0.task.layout.nodes, $0.wallSeconds) < ($1.coreHours, $1.task.layout.nodes, $1.wallSeconds)
        }
    }
}
