import Collectives
import DataPipeline
import Evaluation
import Foundation
import HDF5Kit
import Inference
import NN
import Support
import Tensor
import Training

/// Everything that defines a cross-validation; saved as the CV folder's `config.json` and compared at every
/// restart. Not stored, so free to change between restarts: `--stop-after-epochs` (how much runs in one job),
/// `--allreduce-bucket-mib` and `--no-overlap` (the result depends on neither) and `--threads` (as for
/// `train --resume`).
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
    /// The normalised surface Dice's tolerance in mm per foreground class (element c − 1 is class c's), from
    /// `--nsd-tolerance`; nil (and no key in `config.json`, as in runs made before attunet measured NSD): none.
    public var nsdTolerance: [Double]?

    public init(
        store: String, storeFingerprint: String, models: [ModelConfig], folds: Int, inverse: Bool,
        splitsFile: String?, groupBy: String?, validationFraction: Double,
        distanceDefinition: SurfaceDistanceDefinition, training: TrainConfig, nsdTolerance: [Double]? = nil
    ) {
        self.store = store
        self.storeFingerprint = storeFingerprint
        self.models = models
        self.folds = folds
        self.inverse = inverse
        self.splitsFile = splitsFile
        self.groupBy = groupBy
        self.validationFraction = validationFraction
        self.distanceDefinition = distanceDefinition
        self.nsdTolerance = nsdTolerance
        var t = training
        t.trainCases = []
        t.validationCases = []
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
        let (train, val) = TrainConfig.split(
            plan.trainingCases(fold: k), validationFraction: validationFraction,
            seed: validationSeed(fold: k))
        var t = training
        t.model = model
        t.trainCases = train
        t.validationCases = val
        return t
    }

    /// The first difference from `old` (a run folder's `config.json`) as "key: new (was old)", nil when equal.
    public func difference(from old: Data) throws -> String? {
        try ConfigDifference.first(self, old: old)
    }
}

/// One test case of one fold: its metrics per foreground class and the inference time.
public struct CaseResult: Codable, Sendable, Equatable {
    public var id: String
    /// Wall time of the sliding-window segmentation of this case, in seconds.
    public var seconds: Double
    /// Element c − 1 is class c.
    public var classes: [ClassMetrics]
    /// Voxels of the case's label map (nil in results written before attunet recorded it: the summary then
    /// has no TN).
    public var voxels: Int?

    public init(id: String, seconds: Double, classes: [ClassMetrics], voxels: Int?) {
        self.id = id
        self.seconds = seconds
        self.classes = classes
        self.voxels = voxels
    }
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

/// `attunet cv`: k-fold cross-validation of one or more models on the same folds. By default every rank takes
/// part in every fold (data-parallel training, test cases spread over the ranks); with ``foldParallel`` G > 1 the
/// world is split into G groups of equal size that train their share of the folds at the same time, each
/// all-reducing within itself. Rank 0 decides the folds, gathers every fold's results over the world and writes
/// the summaries.
public final class CrossValidation {
    public let config: CrossValidationConfig
    public let comm: Communicator
    public let folder: RunFolder
    /// Bucket, step timeout, stop budget (epochs over all folds in this process; with fold-parallel groups,
    /// over the folds of this process's group), verbosity. Each fold's trainer gets a copy with its prefix.
    public var context = RunContext(resumeHint: CrossValidation.resumeHint)
    /// How to continue a stopped cross-validation.
    public static let resumeHint = "rerun the same attunet cv command to continue"
    /// Groups of ranks training folds side by side (1: every rank trains every fold). Must divide the ranks.
    public var foldParallel = 1
    /// Train and evaluate only this fold (0-based, as `fold_<k>`) of every model and write no summary: one task
    /// of a batch-system job array. ``summarizeOnly`` then writes the summaries once every fold is done.
    public var onlyFold: Int?
    /// Train nothing: write the summaries from every fold's `results.json`; an error names the missing ones.
    public var summarizeOnly = false
    /// Print summary.md at the end (with ``RunContext/verbose``); off when the CV is one part of a larger report.
    public var printsSummary = true
    /// Keep the class probabilities of every test case beside its labels (`fold_<k>/<model>/test/probabilities/`,
    /// as `predict --save-probabilities` writes them). Not stored in `config.json`: a restart that adds it writes
    /// the probabilities the finished folds lack.
    public var saveProbabilities = false

    public init(config: CrossValidationConfig, comm: Communicator, folder: RunFolder) {
        self.config = config
        self.comm = comm
        self.folder = folder
    }

    /// What rank 0 decided at the start, sent to every rank.
    struct Start: Codable {
        var plan: FoldPlan?
        var error: String?
    }

    /// One (model, fold) training and evaluation: the unit the fold-parallel schedule hands to a group.
    struct Job {
        var model: ModelConfig
        var fold: Int
    }

    /// How a group's share of the work ended, exchanged over the world before the summary.
    struct Outcome: Codable {
        var error: String?
        var interrupted = false
        var results: [FoldResults] = []
    }

    /// The communicator a fold trains on, and this rank's group: the world (group 0) or, with ``foldParallel``
    /// G > 1, this rank's group of the world split into G groups of consecutive ranks. Every rank must call it.
    func foldCommunicator() throws -> (comm: Communicator, group: Int) {
        try Self.split(comm, into: foldParallel)
    }

    /// `world` split into `groups` groups of consecutive ranks: this rank's group's communicator (the world
    /// itself for one group) and the group's index. Every rank must call it; `groups` must divide the ranks.
    static func split(_ world: Communicator, into groups: Int) throws -> (comm: Communicator, group: Int) {
        guard groups >= 1, world.size % groups == 0 else {
            throw AttunetError(
                "--fold-parallel \(groups) does not divide the \(world.size) MPI rank(s) into equal groups")
        }
        guard groups > 1 else { return (world, 0) }
        let g = world.rank / (world.size / groups)
        return (try world.subgroup(color: g, key: world.rank), g)
    }

    /// Checks the run folder, decides the folds, trains and evaluates every unfinished fold of every model, and
    /// writes the reports. Returns the summary (on every rank); nil with ``onlyFold``, which writes none.
    @discardableResult
    public func run() throws -> CrossValidationSummary? {
        let (local, group) = try foldCommunicator()
        let start: Start = try comm.broadcast(comm.isRoot ? decide() : nil)
        if let e = start.error { throw AttunetError(e) }
        let plan = start.plan!
        var jobs = config.models.flatMap { m in (0..<plan.count).map { Job(model: m, fold: $0) } }
        if summarizeOnly {
            let results: [FoldResults] = try comm.broadcast(comm.isRoot ? try collectResults(jobs) : nil)
            let summary: CrossValidationSummary = try comm.broadcast(
                comm.isRoot ? try report(results, plan: plan) : nil)
            return summary
        }
        if let k = onlyFold {
            guard (0..<plan.count).contains(k) else {
                throw AttunetError("--fold \(k): the plan has folds 0 to \(plan.count - 1) (as the fold_<k> folders)")
            }
            jobs = jobs.filter { $0.fold == k }
        }
        var results: [FoldResults]
        if foldParallel == 1 {
            var epochsLeft = context.stopAfterEpochs
            results = try jobs.map {
                try runFold($0.fold, model: $0.model, plan: plan, on: comm, epochsLeft: &epochsLeft)
            }
        } else {
            results = try runGroups(jobs, plan: plan, on: local, group: group)
        }
        if let k = onlyFold {
            if comm.isRoot && context.verbose {
                print(
                    "cv: fold \(k) of every model done; once every fold is, write the summaries with the same command and --summarize instead of --fold"
                )
            }
            try comm.barrier()
            return nil
        }
        let summary: CrossValidationSummary = try comm.broadcast(comm.isRoot ? try report(results, plan: plan) : nil)
        try comm.barrier()
        return summary
    }

    /// The fold-parallel schedule: job j goes to group j mod G; each group trains and evaluates its jobs on its
    /// own communicator; then the world exchanges how every group ended. Any group's error is raised on every
    /// rank (so rank 0 prints it, naming the group); a stop in any group stops every rank (exit 75) once all
    /// groups have checkpointed. Returns every job's results on rank 0 (empty elsewhere).
    func runGroups(_ jobs: [Job], plan: FoldPlan, on local: Communicator, group g: Int) throws -> [FoldResults] {
        let first = g * local.size
        let group = "group \(g + 1)/\(foldParallel)"
        let ranks = "ranks \(first)-\(first + local.size - 1)"
        var outcome = Outcome()
        var epochsLeft = context.stopAfterEpochs
        do {
            for (j, job) in jobs.enumerated() where j % foldParallel == g {
                let r = try runFold(
                    job.fold, model: job.model, plan: plan, on: local, epochsLeft: &epochsLeft,
                    tag: " (\(group), \(ranks))")
                if local.isRoot { outcome.results.append(r) }
            }
        } catch let e as AttunetError where e.kind == .interrupted {
            outcome.interrupted = true
        } catch let e as AttunetError {
            outcome.error = "\(group) (\(ranks)): " + e.message
        } catch {
            outcome.error = "\(group) (\(ranks)): \(error)"
        }
        // Groups can finish hours apart (one has a fold more): no watchdog on this exchange.
        CollectiveWatchdog.shared.timeout = 0
        let all = try comm.allGather(data: try JSONEncoder().encode(outcome)).map {
            try JSONDecoder().decode(Outcome.self, from: $0)
        }
        if let e = all.compactMap(\.error).first { throw AttunetError(e) }
        if all.contains(where: \.interrupted) {
            if comm.isRoot && context.verbose { print("cv: stopped; rerun the same command to continue") }
            throw AttunetError("", kind: .interrupted)
        }
        let byJob = Dictionary(
            all.flatMap(\.results).map { ("\($0.model)/\($0.fold)", $0) }, uniquingKeysWith: { a, _ in a })
        return comm.isRoot ? jobs.map { byJob["\($0.model.kind.rawValue)/\($0.fold)"]! } : []
    }

    /// The folds this configuration gives: seeded, or from the --splits file (checked against the store).
    /// Looks at nothing in the run folder and writes nothing.
    public func plan() throws -> FoldPlan {
        let ids = try CaseStore(path: config.store).cases.map(\.id)
        if let s = config.splitsFile {
            return try FoldPlan.load(s, ids: ids, folds: config.folds, inverse: config.inverse)
        }
        return try FoldPlan.make(
            ids: ids, folds: config.folds, seed: config.training.seed, inverse: config.inverse,
            groups: try config.groupBy.map(FoldPlan.groups(from:)))
    }

    /// Rank 0: the refusal of a changed configuration, the plan, and config.json, splits.json and nnU-Net's
    /// splits_final.json written.
    func decide() -> Start {
        do {
            if let old = FileManager.default.contents(atPath: folder.config.path) {
                if let d = try config.difference(from: old) {
                    return Start(
                        plan: nil,
                        error:
                            "\(folder.config.path): this command differs from the run in \(folder.path): \(d); rerun with the run's options or choose another --out"
                    )
                }
                if let removed = folder.removeStaleTemporaries(), context.verbose { print("cv: " + removed) }
            }
            let plan = try self.plan()
            // The same options give the same folds, unless the --splits file was edited in between.
            if let old = FileManager.default.contents(atPath: folder.splits.path), old != (try plan.json()) {
                return Start(
                    plan: nil,
                    error:
                        "\(folder.splits.path): the folds differ from the run's (was \(config.splitsFile ?? "the seeded plan") edited?); restore them or choose another --out"
                )
            }
            try FileManager.default.createDirectory(at: folder.url, withIntermediateDirectories: true)
            try AtomicFile.write(try Self.json(config), to: folder.config.path)
            try AtomicFile.write(try plan.json(), to: folder.splits.path)
            try AtomicFile.write(try plan.nnUNetJSON(), to: folder.splitsFinal.path)
            return Start(plan: plan, error: nil)
        } catch let e as AttunetError {
            return Start(plan: nil, error: e.message)
        } catch {
            return Start(plan: nil, error: "\(error)")
        }
    }

    /// A JSON file of the run folder (``JSONFiles``: snake_case keys, sorted, pretty-printed).
    static func json<T: Encodable>(_ value: T) throws -> Data {
        try JSONFiles.data(value)
    }

    /// Trains (or resumes) one fold of one model on `comm` (the world, or a fold-parallel group) and evaluates
    /// its test cases; a fold with results.json is skipped and its results read back. Returns the results on
    /// every rank of `comm`.
    func runFold(
        _ k: Int, model: ModelConfig, plan: FoldPlan, on comm: Communicator, epochsLeft: inout Int?,
        tag: String = ""
    ) throws -> FoldResults {
        let name = model.kind.rawValue
        let sub = folder.fold(k, model: name)
        func say(_ line: String) {
            if comm.isRoot && context.verbose {
                print(line)
                fflush(nil)
            }
        }
        let head = "cv: \(name) fold \(k + 1)/\(plan.count)\(tag)"
        // 0: fresh, 1: resume, 2: done (the group's root looks; its ranks follow).
        let fm = FileManager.default
        // A fold whose first checkpoint write was killed has a temporary file and no checkpoint yet.
        if comm.isRoot, fm.fileExists(atPath: sub.path) {
            for f in [
                sub, RunFolder(sub.testPredictions),
                RunFolder(sub.testPredictions.appendingPathComponent("probabilities")),
            ]
            where fm.fileExists(atPath: f.path) {
                if let removed = f.removeStaleTemporaries() { say(head + ": " + removed) }
            }
        }
        let status: Int = try comm.broadcast(
            comm.isRoot
                ? (fm.fileExists(atPath: sub.foldResults.path)
                    ? 2 : fm.fileExists(atPath: sub.checkpointLatest.path) ? 1 : 0) : nil)
        if status == 2 {
            let results: FoldResults = try comm.broadcast(
                comm.isRoot ? try Self.readResults(sub.foldResults.path) : nil)
            try completeTestPredictions(
                results, train: config.trainConfig(plan: plan, fold: k, model: model), in: sub, on: comm, head: head)
            return results
        }
        let train = config.trainConfig(plan: plan, fold: k, model: model)
        let test = plan.testCases(fold: k)
        say(
            "\(head): \(train.trainCases.count) training / \(train.validationCases.count) validation / \(test.count) test cases"
                + (status == 1 ? ", resuming \(sub.checkpointLatest.path)" : ""))
        var foldContext = context
        foldContext.linePrefix = tag.isEmpty ? "" : "[\(name) fold \(k + 1)] "
        foldContext.progressBar = tag.isEmpty
        foldContext.printsTransferTable = k == 0
        foldContext.stopAfterEpochs = epochsLeft
        let trainer = try Trainer(config: train, comm: comm, outDir: sub.url, context: foldContext)
        let state = status == 1 ? try trainer.resume() : nil
        if comm.isRoot {
            try fm.createDirectory(at: sub.url, withIntermediateDirectories: true)
            try AtomicFile.write(try Self.json(train), to: sub.config.path)
            try AtomicFile.write(
                try Self.json(["train": train.trainCases, "validation": train.validationCases, "test": test]),
                to: sub.splits.path)
        }
        let firstEpoch = state?.epoch ?? 0
        if firstEpoch < train.epochs || (train.epochs == 0 && state == nil) {
            if let left = epochsLeft {
                if left <= 0 {
                    say(
                        "cv: stopped before \(name) fold \(k + 1) (--stop-after-epochs); rerun the same command to continue"
                    )
                    try comm.barrier()
                    throw AttunetError("", kind: .interrupted)
                }
            }
            try trainer.run(from: state)
            epochsLeft = epochsLeft.map { $0 - (train.epochs - firstEpoch) }
        }
        let results = try evaluate(trainer: trainer, fold: k, test: test, on: comm)
        if comm.isRoot {
            try AtomicFile.write(try Self.json(results), to: sub.foldResults.path)
            let dice = ClassSummary.summarize(results.cases.map(\.classes)).map { $0.metrics[.dice]!.mean }
            say(
                "\(head): test Dice "
                    + zip(results.classNames, dice).map { "\($0) \(String(format: "%.3f", $1))" }.joined(
                        separator: ", ") + " (\(results.checkpoint)); wrote \(sub.foldResults.path)")
        }
        try comm.barrier()
        return results
    }

    /// Rank 0, for --summarize: every job's results.json, or an error naming the folds without one.
    func collectResults(_ jobs: [Job]) throws -> [FoldResults] {
        let missing = jobs.filter {
            !FileManager.default.fileExists(
                atPath: folder.fold($0.fold, model: $0.model.kind.rawValue).foldResults.path)
        }
        guard missing.isEmpty else {
            let names = missing.map { "fold_\($0.fold)/\($0.model.kind.rawValue)" }.joined(separator: ", ")
            throw AttunetError(
                "\(folder.path): \(missing.count) of \(jobs.count) fold(s) have no results.json yet: \(names); run them (--fold K) before --summarize"
            )
        }
        return try jobs.map {
            try Self.readResults(folder.fold($0.fold, model: $0.model.kind.rawValue).foldResults.path)
        }
    }

    static func readResults(_ path: String) throws -> FoldResults {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw AttunetError("\(path): cannot read the fold's results")
        }
        do {
            return try JSONFiles.decode(FoldResults.self, from: data)
        } catch {
            throw AttunetError("\(path): not a fold results file (\(error)); delete it to evaluate the fold again")
        }
    }

    /// Loads the fold's best checkpoint (the latest when no validation ran) and measures every test case
    /// (spread over the ranks of `comm`) against the store's label map at the store's spacing.
    func evaluate(trainer: Trainer, fold k: Int, test: [String], on comm: Communicator) throws -> FoldResults {
        let useBest: Bool = try comm.broadcast(
            comm.isRoot ? FileManager.default.fileExists(atPath: trainer.bestPath) : nil)
        let path = useBest ? trainer.bestPath : trainer.latestPath
        let model = trainer.model
        try Checkpoint.load(path, into: model)
        let store = try CaseStore(path: config.store)
        // The test cases are segmented by the Predictor that `attunet predict` uses, on the store's grid, scored
        // there, and the same predictions written as predict writes them.
        let predictor = try Predictor(
            networks: [model], recipe: trainer.recipe,
            options: SlidingWindowOptions(patch: trainer.config.patch, keepProbabilities: saveProbabilities),
            settings: testPredictionSettings)
        let out = RunFolder(trainer.outDir).testPredictions.path
        try makeTestFolder(out, on: comm)
        let cases = try Self.measure(
            test, of: store, path: config.store, classes: trainer.config.model.classes,
            definition: config.distanceDefinition, nsdTolerance: config.nsdTolerance, on: comm,
            segment: { try predictor.segment(store: store, case: $0) },
            keep: { try predictor.write($1, store: store, case: $0, into: out) })
        return FoldResults(
            model: trainer.config.model.kind.rawValue, fold: k,
            checkpoint: URL(fileURLWithPath: path).lastPathComponent,
            weightsSHA256: TrainingCheckpoint.weightsDigest(model), parameters: model.parameterCount,
            classNames: Array(store.classNames.dropFirst()), distanceDefinition: config.distanceDefinition,
            cases: cases)
    }

    /// Segments the `test` cases of `store` (case i on rank i mod size) with `segment` (store index → the
    /// prediction on the store's grid), times each and scores its labels against the store's labels at the
    /// store's spacing (``Evaluator``, with the NSD at `nsdTolerance` per class when given), then hands it to
    /// `keep` (untimed: the cross-validation writes it); every rank gets every case's result, in the order of
    /// `test`.
    static func measure(
        _ test: [String], of store: CaseStore, path: String, classes: Int,
        definition: SurfaceDistanceDefinition, nsdTolerance: [Double]? = nil, on comm: Communicator,
        segment: (Int) throws -> Prediction, keep: (Int, Prediction) throws -> Void = { _, _ in }
    ) throws -> [CaseResult] {
        var mine: [CaseResult] = []
        if let n = nsdTolerance?.count, n != classes - 1 {
            throw AttunetError(
                "\(path): --nsd-tolerance gives \(n) tolerance(s) for a model of \(classes - 1) foreground class(es)")
        }
        let evaluator = Evaluator(classes: classes, definition: definition, nsdTolerances: nsdTolerance)
        for (i, id) in test.enumerated() where i % comm.size == comm.rank {
            guard let c = store.index(of: id) else { throw AttunetError("\(path): no test case \(id)") }
            let t0 = DispatchTime.now().uptimeNanoseconds
            let pred = try segment(c)
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            let shape = store.cases[c].shape
            let m = evaluator.metrics(
                prediction: pred.labels, reference: try store.label(c), dim: shape,
                spacing: VoxelSpacing(store.spacing))
            try keep(c, pred)
            mine.append(CaseResult(id: id, seconds: seconds, classes: m, voxels: shape.count))
        }
        let byID = Dictionary(
            uniqueKeysWithValues: try comm.allGather(data: try JSONEncoder().encode(mine))
                .flatMap { try JSONDecoder().decode([CaseResult].self, from: $0) }.map { ($0.id, $0) })
        return test.map { byID[$0]! }
    }

    /// How the test predictions are written: as `predict` writes a store's case (probabilities with
    /// ``saveProbabilities``), on the stored grid for a case whose store records no source geometry.
    var testPredictionSettings: PredictionSettings {
        var s = PredictionSettings()
        s.saveProbabilities = saveProbabilities
        s.storedGridWithoutSource = true
        return s
    }

    /// Rank 0 makes the test predictions' folder (and its probabilities/); every rank of `comm` waits.
    func makeTestFolder(_ out: String, on comm: Communicator) throws {
        if comm.isRoot {
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            if saveProbabilities {
                try FileManager.default.createDirectory(
                    atPath: out + "/probabilities", withIntermediateDirectories: true)
            }
        }
        try comm.barrier()
    }

    /// A finished fold's test predictions: those missing (a run made before cv kept them, a write killed, or
    /// probabilities asked for since) are predicted with the checkpoint the fold evaluated (its weights digest
    /// checked against results.json) and written; existing ones are kept as they are.
    func completeTestPredictions(
        _ results: FoldResults, train: TrainConfig, in sub: RunFolder, on comm: Communicator, head: String
    ) throws {
        let out = sub.testPredictions.path
        let store = try CaseStore(path: config.store)
        let settings = testPredictionSettings
        let ids = results.cases.map(\.id)
        let missing: [String] = try comm.broadcast(
            comm.isRoot
                ? ids.filter { id in
                    (["\(out)/\(id).nii.gz"] + (saveProbabilities ? ["\(out)/probabilities/\(id).nii.gz"] : []))
                        .contains { !FileManager.default.fileExists(atPath: $0) }
                } : nil)
        guard !missing.isEmpty else {
            if comm.isRoot && context.verbose {
                print("\(head): done, skipped (\(sub.foldResults.path) exists)")
                fflush(nil)
            }
            return
        }
        let checkpoint = sub.url.appendingPathComponent(results.checkpoint).path
        if comm.isRoot && context.verbose {
            print(
                "\(head): done (\(sub.foldResults.path) exists); writing \(missing.count) of \(ids.count) test prediction(s) missing from \(out) with \(results.checkpoint)"
            )
            fflush(nil)
        }
        let network = try Checkpoint.load(checkpoint)
        guard TrainingCheckpoint.weightsDigest(network) == results.weightsSHA256 else {
            throw AttunetError(
                "\(checkpoint): its weights differ from those \(sub.foldResults.path) scored (weights_sha256); the fold's test predictions cannot be remade: delete results.json to evaluate the fold again"
            )
        }
        // The recipe the fold's trainer recorded in the checkpoint (as evaluate used it).
        let recipe = try PredictionRecipe.read(from: try H5File.open(checkpoint))
        let predictor = try Predictor(
            networks: [network], recipe: try recipe ?? PredictionRecipe(store: store, config: train),
            options: SlidingWindowOptions(patch: train.patch, keepProbabilities: saveProbabilities),
            settings: settings)
        predictor.keepsExistingOutputs = true
        try makeTestFolder(out, on: comm)
        try predictor.run(
            try PredictionCase.stored(store, ids: missing), into: out, comm: comm, verbose: false)
    }

    /// Rank 0: writes summary.md, summary.csv and summary.json from every fold's results (model by model, fold
    /// by fold).
    func report(_ results: [FoldResults], plan: FoldPlan) throws -> CrossValidationSummary {
        let summary = CrossValidationSummary(
            results: results, plan: plan, definition: config.distanceDefinition,
            store: config.store)
        try AtomicFile.write(try Self.json(summary), to: folder.summaryJSON.path)
        try AtomicFile.write(summary.csv(), to: folder.summaryCSV.path)
        let md = summary.markdown()
        try AtomicFile.write(md, to: folder.summaryMarkdown.path)
        try AtomicFile.write(summary.boxPlotSVG(), to: folder.summarySVG.path)
        if context.verbose {
            if printsSummary { print(md, terminator: "") }
            print(
                "cv: wrote "
                    + [folder.summaryMarkdown, folder.summaryCSV, folder.summaryJSON, folder.summarySVG].map(\.path)
                    .joined(separator: ", "))
        }
        return summary
    }
}
