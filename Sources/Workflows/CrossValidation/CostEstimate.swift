import DataPipeline
import Foundation
import NN
import Support
import Tensor
import Training

/// What a cross-validation will cost on the current ranks (`attunet cv --dry-run`): the plan, and a short timed
/// run of every model scaled by it. A user deciding how many nodes to ask a batch system for needs exactly this.
public struct CrossValidationEstimate: Codable, Sendable {
    public struct Fold: Codable, Sendable {
        public var fold: Int, training: Int, validation: Int, test: Int, stepsPerEpoch: Int
    }
    public struct ModelCost: Codable, Sendable {
        public var model: String, parameters: Int
        /// One optimizer step of the global batch, and one whole validation or test volume, on these ranks.
        public var secondsPerStep: Double, secondsPerVolume: Double
    }
    public var folds: [Fold]
    public var models: [ModelCost]
    public var epochs: Int
    /// Validation passes per fold (every --val-every epochs and after the last).
    public var validationsPerFold: Int
    /// Ranks, and the cores each one occupies (its threads).
    public var ranks: Int, threadsPerRank: Int
    /// Fold-parallel groups (1: every rank trains every fold); each has ranks / groups ranks.
    public var groups: Int
    /// Summed over every fold and model (work, not wall time when groups run side by side).
    public var trainingSeconds: Double, validationSeconds: Double, testSeconds: Double
    /// Wall time: the busiest group's folds, one after the other.
    public var wallSeconds: Double
    /// The largest peak resident memory of any rank during the timed run (bytes): training and whole-volume
    /// prediction of the largest model at these settings; the run itself holds somewhat more (metrics, caches).
    public var peakResidentBytes: Int?

    public var coreHours: Double { wallSeconds * Double(ranks * threadsPerRank) / 3600 }
}

extension CrossValidation {
    /// Times `timedSteps` optimizer steps (after one warm-up step) on a real batch of fold 0, and one
    /// whole-volume prediction, for every model, on the ranks that will train a fold (every rank, or each
    /// fold-parallel group at the same time), and scales them by the plan. Writes nothing. Every rank must call it.
    public func estimate(timedSteps: Int = 2) throws -> CrossValidationEstimate {
        let work = try foldCommunicator().comm
        let plan = try plan()
        let store = try CaseStore(path: config.store)
        let ranks = work.size
        let local = config.training.batch / ranks
        guard local >= 1, config.training.batch % ranks == 0 else {
            throw AttunetError(
                "--batch \(config.training.batch) is not divisible by the \(ranks) MPI ranks of a fold (each rank takes batch/ranks patches)"
            )
        }
        let t = config.training
        let folds = try (0..<plan.count).map { k -> CrossValidationEstimate.Fold in
            let tc = config.trainConfig(plan: plan, fold: k, model: config.models[0])
            let loader = try PatchLoader(
                store: store, cases: tc.trainCases, patch: t.patch, batch: local, rank: work.rank,
                worldSize: ranks, seed: t.seed, samplesPerCase: t.samplesPerCase)
            return .init(
                fold: k, training: tc.trainCases.count, validation: tc.validationCases.count,
                test: plan.testCases(fold: k).count, stepsPerEpoch: loader.stepsPerEpoch)
        }
        var costs: [CrossValidationEstimate.ModelCost] = []
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("attunet-dry-run-\(getpid())")
        for model in config.models {
            let tc = config.trainConfig(plan: plan, fold: 0, model: model)
            // The trainer writes nothing until it runs.
            let trainer = try Trainer(config: tc, comm: work, outDir: scratch, context: context)
            let loader = try PatchLoader(
                store: store, cases: tc.trainCases, patch: t.patch, batch: local, rank: work.rank,
                worldSize: ranks, seed: t.seed, augment: tc.augmentOptions,
                foregroundFraction: t.foregroundFraction, samplesPerCase: t.samplesPerCase)
            let batch = try loader.makeBatch(epoch: 0, step: 0)
            trainer.model.training = true
            _ = try trainer.step(batch)
            var seconds = [0.0, 0.0]
            for _ in 0..<max(1, timedSteps) { seconds[0] += try trainer.step(batch).times.total }
            seconds[0] /= Double(max(1, timedSteps))
            let volume = tc.validationCases.first ?? plan.testCases(fold: 0)[0]
            let c = store.index(of: volume)!
            _ = try trainer.segment(case: c)  // warm-up: first touch of the buffers
            let t0 = Date()
            _ = try trainer.segment(case: c)
            seconds[1] = Date().timeIntervalSince(t0)
            try seconds.withUnsafeMutableBufferPointer { try comm.allReduceMax($0) }
            costs.append(
                .init(
                    model: model.kind.rawValue, parameters: trainer.model.parameterCount,
                    secondsPerStep: seconds[0], secondsPerVolume: seconds[1]))
        }
        var peak = [Double(Memory.peakResidentBytes() ?? 0)]
        try peak.withUnsafeMutableBufferPointer { try comm.allReduceMax($0) }
        let every = max(t.validateEvery, 1)
        let validations = t.epochs / every + (t.epochs % every == 0 ? 0 : 1)
        func spread(_ n: Int) -> Double { Double((n + ranks - 1) / ranks) }  // volumes are spread over ranks
        var training = 0.0
        var validation = 0.0
        var test = 0.0
        var jobSeconds: [Double] = []
        for (m, f) in costs.flatMap({ m in folds.map { (m, $0) } }) {  // the run's job order
            let job = (
                Double(t.epochs * f.stepsPerEpoch) * m.secondsPerStep,
                Double(validations) * spread(f.validation) * m.secondsPerVolume,
                spread(f.test) * m.secondsPerVolume
            )
            training += job.0
            validation += job.1
            test += job.2
            jobSeconds.append(job.0 + job.1 + job.2)
        }
        return CrossValidationEstimate(
            folds: folds, models: costs, epochs: t.epochs, validationsPerFold: validations,
            ranks: comm.size, threadsPerRank: max(1, Parallelism.threads),
            groups: foldParallel,
            trainingSeconds: training, validationSeconds: validation, testSeconds: test,
            wallSeconds: AllocationPlanner.deal(jobSeconds, groups: foldParallel).max()!,
            peakResidentBytes: peak[0] > 0 ? Int(peak[0]) : nil)
    }
}
