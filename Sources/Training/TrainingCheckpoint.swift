import Foundation
import HDF5Kit
import NN
import Support
import Tensor

/// Where a run stands, saved with the weights so `--resume` continues exactly (bit-identical weights).
public struct TrainingState: Codable, Sendable, Equatable {
    /// The next epoch and step within it to run.
    public var epoch: Int
    public var stepInEpoch: Int
    /// Optimizer steps taken so far.
    public var globalStep: Int
    public var bestDice: Double
    public var bestEpoch: Int
    public var worldSize: Int
    public var storeFingerprint: String

    public init(
        epoch: Int, stepInEpoch: Int, globalStep: Int, bestDice: Double, bestEpoch: Int, worldSize: Int,
        storeFingerprint: String
    ) {
        self.epoch = epoch
        self.stepInEpoch = stepInEpoch
        self.globalStep = globalStep
        self.bestDice = bestDice
        self.bestEpoch = bestEpoch
        self.worldSize = worldSize
        self.storeFingerprint = storeFingerprint
    }
}

/// The training checkpoint: the model checkpoint of `Checkpoint` (state_dict in PyTorch order, model_config)
/// plus `optimizer/` (moment buffers in the flat parameter layout, kind, step), `train_config` and
/// `training_state` (JSON attributes), `metrics` (the last epoch's record), `class_names` (the store's, JSON),
/// `prediction_recipe` (``PredictionRecipe``: what prediction needs, so the checkpoint stands alone)
/// and, for a run started with `--init`, `transfer` (the ``TransferReport``: what was copied, what started
/// fresh). Besides the weights digest of `Checkpoint`, the root attribute `state_sha256` holds
/// ``stateDigest(moments:step:kind:trainingState:trainConfig:transfer:)`` of what `--resume` restores beyond
/// the weights; `--resume` and `attunet inspect` verify it.
public enum TrainingCheckpoint {
    /// The root attribute holding the digest of the optimizer and training state (hex).
    public static let stateDigestAttribute = "state_sha256"
    /// The root attribute holding the ``TransferReport`` of a run started with `--init` (JSON).
    public static let transferAttribute = "transfer"
    /// The root attribute holding the training store's class names, background first (JSON array).
    public static let classNamesAttribute = "class_names"

    /// Refuses to write non-finite weights (the previous checkpoint at `path` is kept). With a `writer`, the
    /// file's fsyncs and rename run on its thread (``Checkpoint/save(_:to:committingOn:extra:)``).
    public static func save(
        _ path: String, model: SegmentationModel, optimizer: Optimizer, config: TrainConfig,
        state: TrainingState, metrics: EpochRecord?, recipe: PredictionRecipe? = nil,
        transfer: TransferReport? = nil, committingOn writer: BackgroundWriter? = nil
    ) throws {
        for store in [model.params, model.buffers] {
            if let e = store.entries.first(where: { e in
                (e.offset..<(e.offset + e.count)).contains { !store.values.data[$0].isFinite }
            }) {
                throw AttunetError(
                    "\(e.name) holds NaN/Inf at global step \(state.globalStep); \(path) not written, the last good checkpoint is kept; lower --lr or check the data",
                    kind: .nonFinite)
            }
        }
        try Checkpoint.save(model, to: path, committingOn: writer) { f in
            let root = f.root
            let configJSON = try JSONFiles.string(config)
            let stateJSON = try JSONFiles.string(state)
            try root.setAttribute("train_config", configJSON)
            try root.setAttribute("training_state", stateJSON)
            if let metrics {
                try root.setAttribute("metrics", try JSONFiles.string(metrics))
            }
            if let recipe {
                try root.setAttribute(classNamesAttribute, try JSONFiles.string(recipe.classNames))
                try root.setAttribute(PredictionRecipe.attribute, try recipe.json())
            }
            let transferJSON = try transfer.map { try JSONFiles.string($0) }
            if let transferJSON { try root.setAttribute(transferAttribute, transferJSON) }
            let opt = try root.createGroup("optimizer")
            try opt.setAttribute("kind", optimizer.kind.rawValue)
            try opt.setAttribute("step", optimizer.step)
            try opt.setAttribute("learning_rate", optimizer.learningRate)
            let moments = [("moment1", optimizer.moment1), ("moment2", optimizer.moment2)].filter { $0.1.count > 0 }
            for (name, t) in moments {
                let d = try opt.createDataset(name, type: .float32, shape: [t.count])
                try d.write(from: t.pointer, as: .float32)
            }
            try root.setAttribute(
                stateDigestAttribute,
                stateDigest(
                    moments: moments, step: optimizer.step, kind: optimizer.kind.rawValue, trainingState: stateJSON,
                    trainConfig: configJSON,
                    transfer: transferJSON))
        }
    }

    /// SHA-256 (hex) of what a resume restores besides the weights: each optimizer moment buffer present (its
    /// name, then its float32 little-endian values), the optimizer step (int64 little-endian) and kind, and
    /// the `training_state` and `train_config` JSON (strings length-prefixed, ``StoredDigest``), and the
    /// `transfer` JSON when the checkpoint has one (so the digest of a checkpoint without it is unchanged).
    public static func stateDigest(
        moments: [(name: String, values: Tensor)], step: Int, kind: String,
        trainingState: String, trainConfig: String, transfer: String? = nil
    ) -> String {
        var d = StoredDigest()
        for (name, t) in moments {
            d.add(name)
            withExtendedLifetime(t) { d.add(UnsafeRawBufferPointer(start: t.pointer, count: t.count * 4)) }
        }
        d.add(Int64(step))
        d.add(kind)
        d.add(trainingState)
        d.add(trainConfig)
        if let transfer { d.add(transfer) }
        return d.hex
    }

    /// Reads the optimizer and training state of `file` back and compares its digest with `state_sha256`
    /// (the datasets' Fletcher-32 checksums are verified on the way). Returns false when the file stores no
    /// such digest (a weights-only checkpoint, or one written before attunet stored it); throws a `.corrupt`
    /// error naming the file when they differ.
    @discardableResult
    public static func verifyState(in file: H5File) throws -> Bool {
        let root = file.root
        guard root.hasAttribute(stateDigestAttribute) else { return false }
        let opt = try root.group("optimizer")
        // A moment buffer holds one value per parameter: never more than /state_dict holds (a damaged file may
        // claim billions).
        let weights = try root.group("state_dict")
        var stateDictCount = 0
        for name in try weights.members() { stateDictCount += try weights.dataset(name).count }
        let moments = try ["moment1", "moment2"].filter { opt.exists($0) }.map {
            name -> (name: String, values: Tensor) in
            let d = try opt.dataset(name)
            guard d.count <= stateDictCount else {
                throw AttunetError(
                    "\(d.location): \(d.count) values, more than /state_dict holds (\(stateDictCount))", kind: .corrupt)
            }
            let t = Tensor([d.count])
            try d.read(into: t.pointer, as: .float32)
            return (name, t)
        }
        let actual = stateDigest(
            moments: moments, step: try opt.intAttribute("step"), kind: try opt.stringAttribute("kind"),
            trainingState: try root.stringAttribute("training_state"),
            trainConfig: try root.stringAttribute("train_config"),
            transfer: try root.hasAttribute(transferAttribute) ? root.stringAttribute(transferAttribute) : nil)
        try StoredDigest.check(
            stored: try root.stringAttribute(stateDigestAttribute), actual: actual, file: file.path,
            what: "the optimizer and training state (/optimizer, training_state, train_config)")
        return true
    }

    /// Reads a checkpoint for `--resume` into `model` and `optimizer`, refusing one whose model, classes,
    /// store or optimizer differ from this run's. Returns the saved state.
    public static func load(
        _ path: String, model: SegmentationModel, optimizer: Optimizer, config: TrainConfig,
        storeFingerprint: String
    ) throws -> TrainingState {
        try Checkpoint.load(path, into: model)  // refuses another architecture or class count, or damaged weights
        let f = try H5File.open(path)
        try verifyState(in: f)
        let root = f.root
        guard let stateJSON = try? root.stringAttribute("training_state"),
            let state = try? JSONFiles.decode(TrainingState.self, from: stateJSON)
        else {
            throw AttunetError("\(path): no training state (a weights-only checkpoint cannot be resumed)")
        }
        if state.storeFingerprint != storeFingerprint {
            throw AttunetError(
                "\(path): checkpoint was trained on another case store (fingerprints differ); this run uses \(config.store)"
            )
        }
        // The run's settings must be the checkpoint's, or the resumed run is no continuation of it. The epoch
        // count (to train longer), the validation and checkpoint intervals and the store's path may change.
        if let saved = try? root.stringAttribute("train_config"),
            let d = try ConfigDifference.first(
                config, old: Data(saved.utf8),
                ignoring: ["epochs", "validateEvery", "checkpointEvery", "store"])
        {
            throw AttunetError(
                "\(path): this command's settings differ from the run's: \(d); resume with the run's options (its config.json) or start afresh with --force"
            )
        }
        let opt = try root.group("optimizer")
        let kind = try opt.stringAttribute("kind")
        guard kind == optimizer.kind.rawValue else {
            throw AttunetError("\(path): checkpoint used optimizer \(kind), this run uses \(optimizer.kind.rawValue)")
        }
        for (name, t) in [("moment1", optimizer.moment1), ("moment2", optimizer.moment2)] where t.count > 0 {
            let d = try opt.dataset(name)
            guard d.count == t.count else {
                throw AttunetError("\(d.location): \(d.count) values, the optimizer needs \(t.count)")
            }
            try d.read(into: t.pointer, as: .float32)
        }
        optimizer.restore(step: try opt.intAttribute("step"))
        return state
    }

    /// The ``TransferReport`` a checkpoint of a run started with `--init` records (nil: none).
    public static func transferReport(in file: H5File) throws -> TransferReport? {
        guard file.root.hasAttribute(transferAttribute) else { return nil }
        do {
            return try JSONFiles.decode(TransferReport.self, from: try file.root.stringAttribute(transferAttribute))
        } catch {
            throw AttunetError("\(file.path): unreadable \(transferAttribute) attribute")
        }
    }

    /// The training state a checkpoint records (nil: a weights-only checkpoint).
    public static func trainingState(in file: H5File) -> TrainingState? {
        guard let json = try? file.root.stringAttribute("training_state") else { return nil }
        return try? JSONFiles.decode(TrainingState.self, from: json)
    }

    /// The run configuration a checkpoint records (nil: a weights-only checkpoint).
    public static func trainConfig(in file: H5File) -> TrainConfig? {
        guard let json = try? file.root.stringAttribute("train_config") else { return nil }
        return try? JSONFiles.decode(TrainConfig.self, from: json)
    }

    /// The last epoch's record a checkpoint holds (nil: none, e.g. the initial weights of `--epochs 0`).
    public static func metrics(in file: H5File) -> EpochRecord? {
        guard let json = try? file.root.stringAttribute("metrics") else { return nil }
        return try? JSONFiles.decode(EpochRecord.self, from: json)
    }

    /// The class names a checkpoint records (nil: written before attunet recorded them, or not by `train`).
    public static func classNames(in file: H5File) -> [String]? {
        guard let json = try? file.root.stringAttribute(classNamesAttribute) else { return nil }
        return try? JSONFiles.decode([String].self, from: json)
    }

    /// `Checkpoint.weightsDigest(_:)`: the SHA-256 of the weights and BN buffers that a checkpoint stores and
    /// `attunet inspect` prints.
    public static func weightsDigest(_ model: SegmentationModel) -> String { Checkpoint.weightsDigest(model) }
}
