import Collectives
import DataPipeline
import Evaluation
import Foundation
import Inference
import NN
import Support
import Tensor
import Training

/// The paper's transfer protocols on a target cohort, each evaluated on the same target folds.
public enum TransferProtocol: String, Codable, Sendable, CaseIterable {
    /// Before fine-tuning: the source model applied to the target's test cases as it is (its arg-max over
    /// its own classes, mapped to the target's; an unmapped class counts as background).
    case bft = "BFT"
    /// After fine-tuning: the source model trained further on each fold's training cases.
    case aft = "AFT"
    /// From scratch: trained on each fold's training cases from the seeded initialisation.
    case scr = "SCR"

    public var meaning: String {
        switch self {
        case .bft: "before fine-tuning"
        case .aft: "after fine-tuning"
        case .scr: "from scratch"
        }
    }
}

/// Everything that defines `attunet experiment transfer`; saved as the run folder's `config.json` and compared
/// at every restart.
public struct TransferExperimentConfig: Codable, Sendable, Equatable {
    public var sourceStore: String
    public var sourceFingerprint: String
    public var targetStore: String
    public var targetFingerprint: String
    /// The models, in report order, with the source store's class count (the target runs take the target's).
    public var models: [ModelConfig]
    /// Folds of the target cohort (every target case is tested once per model and protocol).
    public var folds: Int
    /// Source class → target class; background to background implied.
    public var labelMap: LabelMap
    /// The share of training cases held out to pick the best checkpoint: of the source cohort, and of each
    /// target fold's training cases.
    public var validationFraction: Double
    public var distanceDefinition: SurfaceDistanceDefinition
    /// Training on the source cohort (store, model and cases are filled per model); also the SCR settings.
    public var training: TrainConfig
    /// Fine-tuning (AFT) epochs and base learning rate, under `training`'s schedule kind.
    public var fineTuneEpochs: Int
    public var fineTuneLearningRate: Double
    /// AFT's `--freeze` and `--head-lr`.
    public var freeze: FreezeKind
    public var headLearningRate: Double?

    public init(
        sourceStore: String, sourceFingerprint: String, targetStore: String, targetFingerprint: String,
        models: [ModelConfig], folds: Int, labelMap: LabelMap, validationFraction: Double,
        distanceDefinition: SurfaceDistanceDefinition, training: TrainConfig, fineTuneEpochs: Int,
        fineTuneLearningRate: Double, freeze: FreezeKind = .none, headLearningRate: Double? = nil
    ) {
        self.sourceStore = sourceStore
        self.sourceFingerprint = sourceFingerprint
        self.targetStore = targetStore
        self.targetFingerprint = targetFingerprint
        self.models = models
        self.folds = folds
        self.labelMap = labelMap
        self.validationFraction = validationFraction
        self.distanceDefinition = distanceDefinition
        var t = training
        t.trainCases = []
        t.validationCases = []
        t.transfer = nil
        self.training = t
        self.fineTuneEpochs = fineTuneEpochs
        self.fineTuneLearningRate = fineTuneLearningRate
        self.freeze = freeze
        self.headLearningRate = headLearningRate
    }
}

/// `attunet experiment transfer`: the paper's TCIA table. Trains every model on the source cohort, then on the
/// target cohort's folds reports BFT (the source model as it is, its predicted classes mapped through the label
/// map), AFT (fine-tuned on the fold from the source weights, the output rows of the mapped classes kept) and SCR (trained from scratch on the fold), all on the same folds and test cases, so
/// every comparison is paired.
///
/// Layout of the run folder: `config.json`; `source/<model>/` (a training run folder on the whole source cohort,
/// less a seeded validation part); `target/splits.json` (the target folds every protocol uses);
/// `target/bft-<model>/` (each fold's `results.json` of the source model), `target/aft-<model>/` (a
/// cross-validation fine-tuning the source checkpoint) and `target/scr/` (a cross-validation of every model from scratch); the report
/// `transfer.md`, `transfer.csv` and `transfer.json`. A rerun of the same command continues: finished source
/// runs and folds are skipped, an unfinished one resumes.
public final class TransferExperiment {
    public let config: TransferExperimentConfig
    public let comm: Communicator
    public let folder: RunFolder
    /// Groups of ranks training side by side (the source models, then each protocol's folds); must divide the ranks.
    public var foldParallel = 1
    /// Bucket, step timeout and verbosity, passed to every training and cross-validation of the experiment.
    public var context = RunContext(resumeHint: TransferExperiment.resumeHint)
    /// How to continue a stopped experiment.
    public static let resumeHint = "rerun the same attunet experiment transfer command to continue"

    public init(config: TransferExperimentConfig, comm: Communicator, folder: RunFolder) {
        self.config = config
        self.comm = comm
        self.folder = folder
    }

    /// The run folder of the source training of `model`.
    public func sourceFolder(_ model: ModelConfig) -> RunFolder {
        RunFolder(folder.url.appendingPathComponent("source").appendingPathComponent(model.kind.rawValue))
    }

    /// The cross-validation folder of `proto` (SCR: every model in one).
    public func targetFolder(_ proto: TransferProtocol, model: ModelConfig?) -> RunFolder {
        let name = proto == .scr ? "scr" : "\(proto.rawValue.lowercased())-\(model!.kind.rawValue)"
        return RunFolder(folder.url.appendingPathComponent("target").appendingPathComponent(name))
    }

    var targetSplits: String { folder.url.appendingPathComponent("target/splits.json").path }

    /// The source checkpoint a target run starts from: the best one (the latest when no validation ran).
    public func sourceCheckpoint(_ model: ModelConfig) -> String {
        let f = sourceFolder(model)
        return FileManager.default.fileExists(atPath: f.checkpointBest.path)
            ? f.checkpointBest.path : f.checkpointLatest.path
    }

    func say(_ line: String) {
        if comm.isRoot && context.verbose {
            print(line)
            fflush(nil)
        }
    }

    /// Checks the folder and the stores, trains the source models, runs the three protocols on the target
    /// folds and writes the report. Returns the report on every rank.
    @discardableResult
    public func run() throws -> TransferExperimentReport {
        let start: CrossValidation.Start = try comm.broadcast(
            comm.isRoot ? CrossValidation.Start(plan: nil, error: prepareFolder()) : nil)
        if let error = start.error { throw AttunetError(error) }
        try trainSources()
        var summaries: [TransferProtocol: [CrossValidationSummary]] = [:]
        for m in config.models { summaries[.bft, default: []].append(try beforeFineTuning(m)) }
        for m in config.models { summaries[.aft, default: []].append(try crossValidate(.aft, models: [m])) }
        summaries[.scr] = [try crossValidate(.scr, models: config.models)]
        let report = TransferExperimentReport(config: config, summaries: summaries)
        if comm.isRoot {
            try AtomicFile.write(
                try CrossValidation.json(report), to: folder.url.appendingPathComponent("transfer.json").path)
            try AtomicFile.write(report.csv(), to: folder.url.appendingPathComponent("transfer.csv").path)
            let md = report.markdown()
            try AtomicFile.write(md, to: folder.url.appendingPathComponent("transfer.md").path)
            if context.verbose {
                print(md, terminator: "")
                print("transfer: wrote \(folder.path)/transfer.md, transfer.csv, transfer.json")
            }
        }
        try comm.barrier()
        return report
    }

    /// Rank 0: refuses a changed configuration and a label map the stores contradict, writes config.json and
    /// the target folds. Returns the error line, or nil.
    func prepareFolder() -> String? {
        do {
            let config = folder.config.path
            if let old = FileManager.default.contents(atPath: config),
                let d = try ConfigDifference.first(self.config, old: old)
            {
                return
                    "\(config): this command differs from the run in \(folder.path): \(d); rerun with the run's options or choose another --out"
            }
            let source = try CaseStore(path: self.config.sourceStore)
            let target = try CaseStore(path: self.config.targetStore)
            _ = try WeightTransfer.check(
                self.config.labelMap, sourcePath: self.config.sourceStore, sourceNames: source.classNames,
                targetPath: self.config.targetStore, targetNames: target.classNames, sourceKind: "source store")
            let plan = try FoldPlan.make(
                ids: target.cases.map(\.id), folds: self.config.folds, seed: self.config.training.seed)
            try FileManager.default.createDirectory(atPath: folder.path + "/target", withIntermediateDirectories: true)
            if let old = FileManager.default.contents(atPath: targetSplits), old != (try plan.json()) {
                return
                    "\(targetSplits): the target folds differ from the run's (was it edited?); restore it or choose another --out"
            }
            try AtomicFile.write(try CrossValidation.json(self.config), to: config)
            try AtomicFile.write(try plan.json(), to: targetSplits)
            return nil
        } catch let e as AttunetError {
            return e.message
        } catch {
            return "\(error)"
        }
    }

    /// Trains every model on the source cohort (model j in group j mod G), each resuming its own run when one
    /// was started; then every rank learns how every group ended.
    func trainSources() throws {
        let (local, g) = try CrossValidation.split(comm, into: foldParallel)
        var outcome = CrossValidation.Outcome()
        do {
            for (j, m) in config.models.enumerated() where j % foldParallel == g {
                try trainSource(m, on: local, tag: foldParallel > 1 ? "[source \(m.kind.rawValue)] " : "")
            }
        } catch let e as AttunetError where e.kind == .interrupted {
            outcome.interrupted = true
        } catch let e as AttunetError {
            outcome.error = foldParallel > 1 ? "group \(g + 1)/\(foldParallel): \(e.message)" : e.message
        } catch {
            outcome.error = "\(error)"
        }
        // Groups can finish at different times: no watchdog on this exchange.
        CollectiveWatchdog.shared.timeout = 0
        let all = try comm.allGather(data: try JSONEncoder().encode(outcome))
            .map { try JSONDecoder().decode(CrossValidation.Outcome.self, from: $0) }
        if let e = all.compactMap(\.error).first { throw AttunetError(e) }
        if all.contains(where: \.interrupted) {
            say("transfer: stopped; rerun the same command to continue")
            throw AttunetError("", kind: .interrupted)
        }
    }

    func trainSource(_ model: ModelConfig, on comm: Communicator, tag: String) throws {
        let sub = sourceFolder(model)
        let ids = try CaseStore(path: config.sourceStore).cases.map(\.id)
        let (train, val) = TrainConfig.split(
            ids, validationFraction: config.validationFraction, seed: config.training.seed)
        var t = config.training
        t.store = config.sourceStore
        t.model = model
        t.trainCases = train
        t.validationCases = val
        let resume: Bool = try comm.broadcast(
            comm.isRoot ? FileManager.default.fileExists(atPath: sub.checkpointLatest.path) : nil)
        if comm.isRoot && context.verbose {
            print(
                tag
                    + "transfer: source \(model.kind.rawValue) on \(config.sourceStore): \(train.count) training / \(val.count) validation cases"
                    + (resume ? ", resuming \(sub.checkpointLatest.path)" : ""))
        }
        var sourceContext = context
        sourceContext.linePrefix = tag
        sourceContext.progressBar = tag.isEmpty
        let trainer = try Trainer(config: t, comm: comm, outDir: sub.url, context: sourceContext)
        let state = resume ? try trainer.resume() : nil
        if comm.isRoot {
            try FileManager.default.createDirectory(at: sub.url, withIntermediateDirectories: true)
            try AtomicFile.write(try CrossValidation.json(t), to: sub.config.path)
            try AtomicFile.write(try CrossValidation.json(["train": train, "validation": val]), to: sub.splits.path)
        }
        if (state?.epoch ?? 0) < t.epochs { try trainer.run(from: state) }
    }

    /// BFT: the source model as it is — its arg-max over its own classes, mapped through the label map (a class
    /// without a target class counts as background) — on every fold's test cases, spread over the ranks; each
    /// fold's results written as a cross-validation's (`target/bft-<model>/fold_<k>/<model>/results.json`, a
    /// fold with one is read back).
    func beforeFineTuning(_ m: ModelConfig) throws -> CrossValidationSummary {
        let name = m.kind.rawValue
        let sub = targetFolder(.bft, model: m)
        let path = sourceCheckpoint(m)
        let target = try CaseStore(path: config.targetStore)
        let plan = try FoldPlan.load(targetSplits, ids: target.cases.map(\.id), folds: config.folds, inverse: false)
        say(
            "transfer: BFT (before fine-tuning) of \(name) on \(config.targetStore), \(config.folds) folds: \(path) as it is, its classes mapped \(config.labelMap)"
        )
        let model = SegmentationModel(m)
        try Checkpoint.load(path, into: model)  // verified against its checksums and digest
        var table = [UInt8](repeating: 0, count: m.classes)
        for p in config.labelMap.withBackground.pairs { table[p.source] = UInt8(p.target) }
        let predictor = try SlidingWindowPredictor(
            network: model, options: SlidingWindowOptions(patch: config.training.patch))
        var results: [FoldResults] = []
        for k in 0..<plan.count {
            let fold = sub.fold(k, model: name)
            let done: Bool = try comm.broadcast(
                comm.isRoot ? FileManager.default.fileExists(atPath: fold.foldResults.path) : nil)
            if done {
                results.append(
                    try comm.broadcast(comm.isRoot ? try CrossValidation.readResults(fold.foldResults.path) : nil))
                continue
            }
            let test = plan.testCases(fold: k)
            let cases = try CrossValidation.measure(
                test, of: target, path: config.targetStore, classes: target.classNames.count,
                definition: config.distanceDefinition, on: comm
            ) {
                var p = try predictor.predict(store: target, case: $0)
                p.labels = p.labels.map { table[Int($0)] }
                return p
            }
            let r = FoldResults(
                model: name, fold: k, checkpoint: path, weightsSHA256: TrainingCheckpoint.weightsDigest(model),
                parameters: model.parameterCount, classNames: Array(target.classNames.dropFirst()),
                distanceDefinition: config.distanceDefinition, cases: cases)
            if comm.isRoot {
                try FileManager.default.createDirectory(at: fold.url, withIntermediateDirectories: true)
                try AtomicFile.write(try CrossValidation.json(r), to: fold.foldResults.path)
                let dice = ClassSummary.summarize(r.cases.map(\.classes)).map { $0.metrics[.dice]!.mean }
                say(
                    "transfer: BFT \(name) fold \(k + 1)/\(plan.count): test Dice "
                        + zip(r.classNames, dice).map { "\($0) \(fmt($1, 3))" }.joined(separator: ", "))
            }
            results.append(r)
        }
        try comm.barrier()
        return CrossValidationSummary(
            results: results, plan: plan, definition: config.distanceDefinition,
            store: config.targetStore)
    }

    /// The cross-validation of `proto` (AFT or SCR) on the target folds (`target/splits.json`).
    func crossValidate(_ proto: TransferProtocol, models: [ModelConfig]) throws -> CrossValidationSummary {
        let target = try CaseStore(path: config.targetStore)
        var t = config.training
        t.store = config.targetStore
        let targetModels = models.map { m -> ModelConfig in
            var m = m
            m.classes = target.classNames.count
            return m
        }
        if proto != .scr {
            let m = models[0]
            t.transfer = TransferConfig(
                checkpoint: sourceCheckpoint(m), freeze: config.freeze,
                headLearningRate: config.headLearningRate, labelMap: config.labelMap)
            t.epochs = config.fineTuneEpochs
            t.learningRate = config.fineTuneLearningRate
            if case .poly(_, let power) = t.schedule { t.schedule = .poly(epochs: config.fineTuneEpochs, power: power) }
        }
        let sub = targetFolder(proto, model: proto == .scr ? nil : models[0])
        say(
            "transfer: \(proto.rawValue) (\(proto.meaning)) of \(targetModels.map(\.kind.rawValue).joined(separator: ", ")) on \(config.targetStore), \(config.folds) folds"
                + (proto == .scr ? "" : " from \(t.transfer!.checkpoint), label map \(config.labelMap)"))
        let cvConfig = CrossValidationConfig(
            store: config.targetStore, storeFingerprint: config.targetFingerprint, models: targetModels,
            folds: config.folds,
            inverse: false, splitsFile: targetSplits, groupBy: nil, validationFraction: config.validationFraction,
            distanceDefinition: config.distanceDefinition, training: t)
        let cv = CrossValidation(config: cvConfig, comm: comm, folder: sub)
        cv.foldParallel = foldParallel
        cv.context = context
        cv.context.resumeHint = Self.resumeHint
        cv.printsSummary = false
        return try cv.run()!
    }
}

/// The report of ``TransferExperiment``: per protocol and model, the target classes' metrics over every target
/// case, the paper's TCIA numbers beside them, and paired comparisons over the same cases.
public struct TransferExperimentReport: Codable, Sendable, Equatable {
    public struct Row: Codable, Sendable, Equatable {
        public var protocolName: String
        public var model: String
        public var parameters: Int
        public var classes: [CrossValidationSummary.ClassStats]
        enum CodingKeys: String, CodingKey {
            case protocolName = "protocol"
            case model, parameters, classes
        }
    }

    /// One paired Wilcoxon signed-rank test over the same target cases.
    public struct Comparison: Codable, Sendable, Equatable {
        public var className: String
        public var metric: String
        /// "AFT attention-unet" − "SCR attention-unet", and so on.
        public var a: String, b: String
        public var pairs: Int
        public var meanDifference: Double
        public var pValue: Double
        public var method: String
    }

    public var sourceStore: String, targetStore: String
    public var folds: Int
    public var labelMap: String
    public var classNames: [String]
    public var rows: [Row]
    public var comparisons: [Comparison]
    /// Every case's metrics: (protocol, model, case, class) → value, for the CSV.
    public var cases: [CrossValidationSummary.CaseRow]
    public var protocols: [String]

    /// The paper's TCIA Pancreas-CT table (61 training / 21 test cases; pancreas): Dice, precision, recall,
    /// S2S (mm), each (mean, std), keyed by protocol and attunet's model name.
    public static let paper: [String: [String: [(Double, Double)]]] = [
        "BFT": [
            "unet": [(0.690, 0.132), (0.680, 0.109), (0.733, 0.190), (6.389, 3.900)],
            "attention-unet": [(0.712, 0.110), (0.693, 0.115), (0.751, 0.149), (5.251, 2.551)],
        ],
        "AFT": [
            "unet": [(0.820, 0.043), (0.824, 0.070), (0.828, 0.064), (2.464, 0.529)],
            "attention-unet": [(0.831, 0.038), (0.825, 0.073), (0.840, 0.053), (2.305, 0.568)],
        ],
        "SCR": [
            "unet": [(0.815, 0.068), (0.815, 0.105), (0.826, 0.062), (2.576, 1.180)],
            "attention-unet": [(0.821, 0.057), (0.815, 0.093), (0.835, 0.057), (2.333, 0.856)],
        ],
    ]

    enum CodingKeys: String, CodingKey {
        case sourceStore, targetStore, folds, labelMap, classNames, rows, comparisons
        case cases = "perCase"
        case protocols
    }

    public init(config: TransferExperimentConfig, summaries: [TransferProtocol: [CrossValidationSummary]]) {
        sourceStore = config.sourceStore
        targetStore = config.targetStore
        folds = config.folds
        labelMap = config.labelMap.description
        classNames = summaries.values.first?.first?.classNames ?? []
        let protocolOrder = TransferProtocol.allCases.map(\.rawValue)
        protocols = protocolOrder
        var rows: [Row] = []
        var cases: [CrossValidationSummary.CaseRow] = []
        for proto in TransferProtocol.allCases {
            for s in summaries[proto] ?? [] {
                for m in s.models {
                    rows.append(
                        Row(protocolName: proto.rawValue, model: m.model, parameters: m.parameters, classes: m.classes))
                }
                // The CSV names the protocol with the model: "AFT attention-unet".
                cases += s.cases.map {
                    var c = $0
                    c.model = "\(proto.rawValue) \(c.model)"
                    return c
                }
            }
        }
        // Report order: protocol by protocol, models as given.
        let order = config.models.map(\.kind.rawValue)
        rows.sort {
            (protocolOrder.firstIndex(of: $0.protocolName)!, order.firstIndex(of: $0.model) ?? 0)
                < (protocolOrder.firstIndex(of: $1.protocolName)!, order.firstIndex(of: $1.model) ?? 0)
        }
        self.rows = rows
        self.cases = cases
        var comparisons: [Comparison] = []
        func values(_ key: String, _ className: String, _ metric: Metric) -> [String: Double] {
            var v: [String: Double] = [:]
            for c in cases where c.model == key && c.className == className { v[c.caseID] = c.value(metric) }
            return v
        }
        var pairs: [(String, String)] = []
        for m in order { pairs += [("AFT \(m)", "BFT \(m)"), ("AFT \(m)", "SCR \(m)")] }
        if order.count > 1 {
            for p in protocolOrder {
                for other in order.dropFirst() { pairs.append(("\(p) \(order[0])", "\(p) \(other)")) }
            }
        }
        for name in classNames {
            for (a, b) in pairs {
                for metric in [Metric.dice, .s2s2d] {
                    let x = values(a, name, metric)
                    let y = values(b, name, metric)
                    let ids = x.keys.filter { y[$0] != nil }.sorted()
                    guard !ids.isEmpty else { continue }
                    let xs = ids.map { x[$0]! }
                    let ys = ids.map { y[$0]! }
                    let w = Wilcoxon.signedRank(xs, ys)
                    comparisons.append(
                        Comparison(
                            className: name, metric: metric.rawValue, a: a, b: b, pairs: ids.count,
                            meanDifference: zip(xs, ys).map { $0 - $1 }.reduce(0, +) / Double(ids.count),
                            pValue: w.pValue, method: w.method.rawValue))
                }
            }
        }
        self.comparisons = comparisons
    }

    /// The class the paper's table details: pancreas when the target has it, else its first foreground class.
    public var primaryClass: String { classNames.first { $0.lowercased() == "pancreas" } ?? classNames.first ?? "" }

    static func f(_ x: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", x) }

    /// `transfer.md`: the paper's TCIA table layout with the paper's numbers beside ours, then the paired tests.
    public func markdown() -> String {
        let p = primaryClass
        let n = rows.first?.classes.first?.metrics["dice"]?.count ?? 0
        var s = "# Transfer: \(sourceStore) → \(targetStore), \(folds)-fold on the target, \(n) test cases per row\n\n"
        s +=
            "BFT: the source model as it is (its predicted classes mapped \(labelMap), the others background); AFT: fine-tuned from it on each fold's training cases; "
        s +=
            "SCR: trained from scratch on them. Every row is tested on the same folds and cases. Mean ± std over the test cases; "
        s +=
            "S2S: the original code's slice-wise contour distance in mm ((wc N): N cases scored with the worst-case substitute). "
        s +=
            "Paper: the TCIA Pancreas-CT table (82 scans, 61 training / 21 test, 2 mm, source CT-150), for reference.\n\n"
        let header = [
            "Protocol", "Method", "\(p) DSC", "precision", "recall", "S2S (mm)", "paper DSC", "paper precision",
            "paper recall", "paper S2S (mm)",
        ]
        s += "| " + header.joined(separator: " | ") + " |\n|" + header.map { _ in "---|" }.joined() + "\n"
        for r in rows {
            guard let c = r.classes.first(where: { $0.name == p }) else { continue }
            func cell(_ metric: String, _ digits: Int, worstCase: Bool = false) -> String {
                let m = c.metrics[metric]!
                return Self.f(m.mean, digits) + " ± " + Self.f(m.std, digits)
                    + (worstCase ? " (wc \(m.worstCaseCount))" : "")
            }
            var row = [
                r.protocolName, r.model, cell("dice", 3), cell("precision", 3), cell("recall", 3),
                cell("s2s2d", 2, worstCase: true),
            ]
            if let ref = Self.paper[r.protocolName]?[r.model] {
                row += ref.enumerated().map { i, v in Self.f(v.0, i == 3 ? 3 : 3) + " ± " + Self.f(v.1, 3) }
            } else {
                row += Array(repeating: "—", count: 4)
            }
            s += "| " + row.joined(separator: " | ") + " |\n"
        }
        let others = classNames.filter { $0 != p }
        if !others.isEmpty {
            s +=
                "\nOther target classes (DSC)\n\n| Protocol | Method | " + others.joined(separator: " | ")
                + " |\n|---|---|" + others.map { _ in "---|" }.joined() + "\n"
            for r in rows {
                s +=
                    "| \(r.protocolName) | \(r.model) | "
                    + others.map { o in
                        r.classes.first { $0.name == o }.map {
                            Self.f($0.metrics["dice"]!.mean, 3) + " ± " + Self.f($0.metrics["dice"]!.std, 3)
                        } ?? "—"
                    }.joined(separator: " | ") + " |\n"
            }
        }
        if !comparisons.isEmpty {
            s += "\nPaired comparisons over the same test cases (Wilcoxon signed-rank, two-sided)\n\n"
            s += CrossValidationSummary.comparisonTable(
                comparisons.map {
                    ($0.className, $0.metric, "\($0.a) − \($0.b)", $0.meanDifference, $0.pValue, $0.pairs)
                })
        }
        return s
    }

    /// `transfer.csv`: one row per protocol, model and class (mean and std of each metric), then one per case.
    public func csv() -> String {
        let metrics = Metric.core.map(\.rawValue)
        func g(_ x: Double) -> String { String(format: "%.9g", x) }
        var s = "level,protocol,model,fold,case,class,statistic," + metrics.joined(separator: ",") + "\n"
        for r in rows {
            for c in r.classes {
                for stat in ["mean", "std"] {
                    s += "row,\(r.protocolName),\(r.model),,,\(c.name),\(stat),"
                    s +=
                        metrics.map { g(stat == "mean" ? c.metrics[$0]!.mean : c.metrics[$0]!.std) }.joined(
                            separator: ",") + "\n"
                }
            }
        }
        for c in cases {
            let parts = c.model.split(separator: " ", maxSplits: 1).map(String.init)
            s += "case,\(parts[0]),\(parts.count > 1 ? parts[1] : ""),\(c.fold),\(c.caseID),\(c.className),value,"
            s += [c.dice, c.precision, c.recall, c.assd, c.hd95, c.s2s2d].map(g).joined(separator: ",") + "\n"
        }
        return s
    }
}
