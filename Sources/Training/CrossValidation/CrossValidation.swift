import Data
import Distributed
import Evaluation
import Foundation
import NN
import Support
import Tensor

/// Everything that defines a cross-validation; saved as the CV folder's `config.json` and compared at every
/// restart. Not stored, so free to change between restarts: `--stop-after-epochs` (how much runs in one job),
/// `--allreduce-bucket-mib` (the result does not depend on it) and `--threads` (as for `train --resume`).
public struct CrossValidationConfig: Codable, Sendable, Equatable {
    public var store: String
    /// The store's fingerprint: a restart on other data is refused even under the same path.
    public var storeFingerprint: String
    /// The models trained on the same folds, in report order.
    public var models: [ModelConfig]
    public var folds: Int
    public var inverse: Bool
    /// `--splits FILE` (the folds as given) or nil (seeded from `training.seed`).
    public var splitsFile: String?
    /// `--group-by FILE` (a patient's cases stay in one fold) or nil.
    public var groupBy: String?
    /// The seeded share of each fold's training cases held out for validation (model selection).
    public var validationFraction: Double
    /// How ASSD and HD95 combine the two directed distance sets.
    public var distanceDefinition: SurfaceDistanceDefinition
    /// The training settings of every fold and model (`model`, `trainCases`, `validationCases` are filled per fold).
    public var training: TrainConfig

    public init(store: String, storeFingerprint: String, models: [ModelConfig], folds: Int, inverse: Bool,
                splitsFile: String?, groupBy: String?, validationFraction: Double,
                distanceDefinition: SurfaceDistanceDefinition, training: TrainConfig) {
        self.store = store; self.storeFingerprint = storeFingerprint; self.models = models; self.folds = folds
        self.inverse = inverse; self.splitsFile = splitsFile; self.groupBy = groupBy
        self.validationFraction = validationFraction; self.distanceDefinition = distanceDefinition
        var t = training
        t.trainCases = []; t.validationCases = []
        self.training = t
    }

    /// The seed of fold `k`'s validation split: the run seed and the fold index mixed (SplitMix64's constants).
    public func validationSeed(fold k: Int) -> UInt64 {
        var z = training.seed &+ 0x9E37_79B9_7F4A_7C15 &* UInt64(k + 1)
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The training configuration of fold `k` for `model`: the fold's training cases less a seeded validation part.
    public func trainConfig(plan: FoldPlan, fold k: Int, model: ModelConfig) -> TrainConfig {
        let (train, val) = TrainConfig.split(plan.trainingCases(fold: k), validationFraction: validationFraction,
                                             seed: validationSeed(fold: k))
        var t = training
        t.model = model
        t.trainCases = train
        t.validationCases = val
        return t
    }

    /// The first difference from `old` (a run folder's `config.json`) as "key: new (was old)", nil when equal.
    public func difference(from old: Data) throws -> String? {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let new = try JSONSerialization.jsonObject(with: try enc.encode(self))
        guard let was = try? JSONSerialization.jsonObject(with: old) else { return "not a cross-validation configuration" }
        return Self.firstDifference(new, was, path: "")
    }

    static func firstDifference(_ a: Any, _ b: Any, path: String) -> String? {
        if let a = a as? [String: Any], let b = b as? [String: Any] {
            for key in Set(a.keys).union(b.keys).sorted() {
                let p = path.isEmpty ? key : path + "." + key
                guard let x = a[key] else { return "\(p): absent (was \(render(b[key]!)))" }
                guard let y = b[key] else { return "\(p): \(render(x)) (absent before)" }
                if let d = firstDifference(x, y, path: p) { return d }
            }
            return nil
        }
        return render(a) == render(b) ? nil : "\(path): \(render(a)) (was \(render(b)))"
    }

    static func render(_ v: Any) -> String {
        if v is NSNull { return "none" }
        if JSONSerialization.isValidJSONObject(v),
           let d = try? JSONSerialization.data(withJSONObject: v, options: [.sortedKeys, .withoutEscapingSlashes]) {
            return String(decoding: d, as: UTF8.self)
        }
        return "\(v)"
    }
}

/// One test case of one fold: its metrics per foreground class and the inference time.
public struct CaseResult: Codable, Sendable, Equatable {
    public var id: String
    /// Wall time of the sliding-window segmentation of this case, in seconds.
    public var seconds: Double
    /// Element c − 1 is class c.
    public var classes: [ClassMetrics]
}

/// A fold's results file (`fold_<k>/<model>/results.json`).
public struct FoldResults: Codable, Sendable, Equatable {
    public var model: String
    public var fold: Int
    /// The checkpoint evaluated: `checkpoint_best.h5`, or `checkpoint_latest.h5` when no validation ran.
    public var checkpoint: String
    public var weightsSHA256: String
    public var parameters: Int
    /// Foreground class names, in label order.
    public var classNames: [String]
    public var distanceDefinition: SurfaceDistanceDefinition
    /// In the order of the fold's test cases.
    public var cases: [CaseResult]
}

/// `attunet cv`: k-fold cross-validation of one or more models on the same folds, every rank taking part in
/// every fold (data-parallel training, test cases spread over ranks); rank 0 decides, writes and prints.
public final class CrossValidation {
    public let config: CrossValidationConfig
    public let comm: Communicator
    public let folder: RunFolder
    public var bucketFloats = 4 << 20
    /// Epochs to train in this process over all folds before stopping as on a stop request (exit 75).
    public var stopAfterEpochs: Int?
    public var verbose = true

    public init(config: CrossValidationConfig, comm: Communicator, folder: RunFolder) {
        self.config = config
        self.comm = comm
        self.folder = folder
    }

    /// What rank 0 decided at the start, sent to every rank.
    struct Start: Codable { var plan: FoldPlan?; var error: String? }

    /// Checks the run folder, decides the folds, trains and evaluates every unfinished fold of every model, and
    /// writes the reports. Returns the summary (on every rank).
    @discardableResult
    public func run() throws -> CrossValidationSummary {
        let start: Start = try comm.broadcast(comm.isRoot ? decide() : nil)
        if let e = start.error { throw AttunetError(e) }
        let plan = start.plan!
        var epochsLeft = stopAfterEpochs
        for model in config.models {
            for k in 0..<plan.count {
                try runFold(k, model: model, plan: plan, epochsLeft: &epochsLeft)
            }
        }
        let summary: CrossValidationSummary = try comm.broadcast(comm.isRoot ? try report(plan: plan) : nil)
        try comm.barrier()
        return summary
    }

    /// The folds this configuration gives: seeded, or from the --splits file (checked against the store).
    /// Looks at nothing in the run folder and writes nothing.
    public func plan() throws -> FoldPlan {
        let ids = try CaseStore(path: config.store).cases.map(\.id)
        if let s = config.splitsFile {
            return try FoldPlan.load(s, ids: ids, folds: config.folds, inverse: config.inverse)
        }
        return try FoldPlan.make(ids: ids, folds: config.folds, seed: config.training.seed, inverse: config.inverse,
                                 groups: try config.groupBy.map(FoldPlan.groups(from:)))
    }

    /// Rank 0: the refusal of a changed configuration, the plan, and config.json and splits.json written.
    func decide() -> Start {
        do {
            if let old = FileManager.default.contents(atPath: folder.config.path),
               let d = try config.difference(from: old) {
                return Start(plan: nil, error: "\(folder.config.path): this command differs from the run in \(folder.path): \(d); rerun with the run's options or choose another --out")
            }
            let plan = try self.plan()
            // The same options give the same folds, unless the --splits file was edited in between.
            if let old = FileManager.default.contents(atPath: folder.splits.path), old != (try plan.json()) {
                return Start(plan: nil, error: "\(folder.splits.path): the folds differ from the run's (was \(config.splitsFile ?? "the seeded plan") edited?); restore them or choose another --out")
            }
            try FileManager.default.createDirectory(at: folder.url, withIntermediateDirectories: true)
            try AtomicFile.write(try Self.json(config), to: folder.config.path)
            try AtomicFile.write(try plan.json(), to: folder.splits.path)
            return Start(plan: plan, error: nil)
        } catch let e as AttunetError {
            return Start(plan: nil, error: e.message)
        } catch {
            return Start(plan: nil, error: "\(error)")
        }
    }

    static func json<T: Encodable>(_ value: T) throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try enc.encode(value)
    }

    private func say(_ line: String) { if comm.isRoot && verbose { print(line) } }

    /// Trains (or resumes) one fold of one model and evaluates its test cases; skips a fold with results.
    func runFold(_ k: Int, model: ModelConfig, plan: FoldPlan, epochsLeft: inout Int?) throws {
        let name = model.kind.rawValue
        let sub = folder.fold(k, model: name)
        // 0: fresh, 1: resume, 2: done (rank 0 looks; every rank follows).
        let fm = FileManager.default
        let status: Int = try comm.broadcast(comm.isRoot
            ? (fm.fileExists(atPath: sub.foldResults.path) ? 2 : fm.fileExists(atPath: sub.checkpointLatest.path) ? 1 : 0) : nil)
        if status == 2 {
            say("cv: \(name) fold \(k + 1)/\(plan.count): done, skipped (\(sub.foldResults.path) exists)")
            return
        }
        let train = config.trainConfig(plan: plan, fold: k, model: model)
        let test = plan.testCases(fold: k)
        say("cv: \(name) fold \(k + 1)/\(plan.count): \(train.trainCases.count) training / \(train.validationCases.count) validation / \(test.count) test cases" + (status == 1 ? ", resuming \(sub.checkpointLatest.path)" : ""))
        let trainer = try Trainer(config: train, comm: comm, outDir: sub.url)
        trainer.bucketFloats = bucketFloats
        trainer.verbose = verbose
        trainer.resumeHint = "rerun the same attunet cv command to continue"
        let state = status == 1 ? try trainer.resume() : nil
        if comm.isRoot {
            try fm.createDirectory(at: sub.url, withIntermediateDirectories: true)
            try AtomicFile.write(try Self.json(train), to: sub.config.path)
            try AtomicFile.write(try Self.json(["train": train.trainCases, "validation": train.validationCases, "test": test]),
                                 to: sub.splits.path)
        }
        let firstEpoch = state?.epoch ?? 0
        if firstEpoch < train.epochs {
            if let left = epochsLeft {
                if left <= 0 {
                    say("cv: stopped before \(name) fold \(k + 1) (--stop-after-epochs); rerun the same command to continue")
                    try comm.barrier()
                    throw AttunetError("", kind: .interrupted)
                }
                trainer.stopAfterEpochs = left
            }
            try trainer.run(from: state)
            epochsLeft = epochsLeft.map { $0 - (train.epochs - firstEpoch) }
        }
        let results = try evaluate(trainer: trainer, fold: k, test: test)
        if comm.isRoot {
            try AtomicFile.write(try Self.json(results), to: sub.foldResults.path)
            let dice = ClassSummary.summarize(results.cases.map(\.classes)).map { $0.metrics[.dice]!.mean }
            say("cv: \(name) fold \(k + 1)/\(plan.count): test Dice " + zip(results.classNames, dice).map { "\($0) \(String(format: "%.3f", $1))" }.joined(separator: ", ") + " (\(results.checkpoint)); wrote \(sub.foldResults.path)")
        }
        try comm.barrier()
    }

    /// Loads the fold's best checkpoint (the latest when no validation ran) and measures every test case
    /// (spread over ranks) against the store's label map at the store's spacing.
    func evaluate(trainer: Trainer, fold k: Int, test: [String]) throws -> FoldResults {
        let useBest: Bool = try comm.broadcast(comm.isRoot ? FileManager.default.fileExists(atPath: trainer.bestPath) : nil)
        let path = useBest ? trainer.bestPath : trainer.latestPath
        let model = trainer.model
        try Checkpoint.load(path, into: model)
        let store = try CaseStore(path: config.store)
        let classes = trainer.config.model.classes
        var mine: [CaseResult] = []
        for (i, id) in test.enumerated() where i % comm.size == comm.rank {
            guard let c = store.index(of: id) else { throw AttunetError("\(config.store): no test case \(id)") }
            let t0 = DispatchTime.now().uptimeNanoseconds
            let pred = try trainer.segment(case: c).labels
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            let label = try store.label(c)
            let m = CaseMetrics.evaluate(prediction: pred, reference: label, dim: store.cases[c].shape,
                                         spacing: VoxelSpacing(store.spacing), classes: classes,
                                         definition: config.distanceDefinition)
            mine.append(CaseResult(id: id, seconds: seconds, classes: m))
        }
        let all = try comm.allGather(data: try JSONEncoder().encode(mine))
            .flatMap { try JSONDecoder().decode([CaseResult].self, from: $0) }
        let byID = Dictionary(uniqueKeysWithValues: all.map { ($0.id, $0) })
        return FoldResults(model: trainer.config.model.kind.rawValue, fold: k,
                           checkpoint: URL(fileURLWithPath: path).lastPathComponent,
                           weightsSHA256: TrainingCheckpoint.weightsDigest(model), parameters: model.parameterCount,
                           classNames: Array(store.classNames.dropFirst()), distanceDefinition: config.distanceDefinition,
                           cases: test.map { byID[$0]! })
    }

    /// Rank 0: reads every fold's results and writes summary.md, summary.csv and summary.json.
    func report(plan: FoldPlan) throws -> CrossValidationSummary {
        var results: [FoldResults] = []
        for model in config.models {
            for k in 0..<plan.count {
                let path = folder.fold(k, model: model.kind.rawValue).foldResults.path
                guard let data = FileManager.default.contents(atPath: path) else { throw AttunetError("\(path): missing") }
                results.append(try JSONDecoder().decode(FoldResults.self, from: data))
            }
        }
        let summary = CrossValidationSummary(results: results, plan: plan, definition: config.distanceDefinition)
        try AtomicFile.write(try Self.json(summary), to: folder.summaryJSON.path)
        try AtomicFile.write(summary.csv(), to: folder.summaryCSV.path)
        let md = summary.markdown()
        try AtomicFile.write(md, to: folder.summaryMarkdown.path)
        if verbose {
            print(md, terminator: "")
            print("cv: wrote " + [folder.summaryMarkdown, folder.summaryCSV, folder.summaryJSON].map(\.path).joined(separator: ", "))
        }
        return summary
    }
}
