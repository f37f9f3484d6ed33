import Crypto
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
}

/// The training checkpoint: the model checkpoint of `Checkpoint` (state_dict in PyTorch order, model_config)
/// plus `optimizer/` (moment buffers in the flat parameter layout, kind, step), `train_config` and
/// `training_state` (JSON attributes) and `metrics` (the last epoch's record).
public enum TrainingCheckpoint {
    /// Refuses to write non-finite weights (the previous checkpoint at `path` is kept).
    public static func save(_ path: String, model: SegmentationModel, optimizer: Optimizer, config: TrainConfig,
                            state: TrainingState, metrics: EpochRecord?) throws {
        for store in [model.params, model.buffers] {
            if let e = store.entries.first(where: { e in (e.offset..<(e.offset + e.count)).contains { !store.values.data[$0].isFinite } }) {
                throw AttunetError("\(e.name) holds NaN/Inf at global step \(state.globalStep); \(path) not written, the last good checkpoint is kept; lower --lr or check the data",
                                   kind: .nonFinite)
            }
        }
        try Checkpoint.save(model, to: path) { f in
            let root = f.root
            try root.setAttribute("train_config", String(decoding: try JSONEncoder().encode(config), as: UTF8.self))
            try root.setAttribute("training_state", String(decoding: try JSONEncoder().encode(state), as: UTF8.self))
            if let metrics {
                try root.setAttribute("metrics", String(decoding: try JSONEncoder().encode(metrics), as: UTF8.self))
            }
            let opt = try root.createGroup("optimizer")
            try opt.setAttribute("kind", optimizer.kind.rawValue)
            try opt.setAttribute("step", optimizer.step)
            try opt.setAttribute("learning_rate", optimizer.learningRate)
            for (name, t) in [("moment1", optimizer.moment1), ("moment2", optimizer.moment2)] where t.count > 0 {
                let d = try opt.createDataset(name, type: .float32, shape: [t.count])
                try d.write(from: t.pointer, as: .float32)
            }
        }
    }

    /// Reads a checkpoint for `--resume` into `model` and `optimizer`, refusing one whose model, classes,
    /// store or optimizer differ from this run's. Returns the saved state.
    public static func load(_ path: String, model: SegmentationModel, optimizer: Optimizer, config: TrainConfig,
                            storeFingerprint: String) throws -> TrainingState {
        try Checkpoint.load(path, into: model)  // refuses another architecture or class count
        let f = try H5File.open(path)
        let root = f.root
        guard let stateJSON = try? root.stringAttribute("training_state"),
              let state = try? JSONDecoder().decode(TrainingState.self, from: Data(stateJSON.utf8)) else {
            throw AttunetError("\(path): no training state (a weights-only checkpoint cannot be resumed)")
        }
        if state.storeFingerprint != storeFingerprint {
            throw AttunetError("\(path): checkpoint was trained on another case store (fingerprints differ); this run uses \(config.store)")
        }
        // The run's settings must be the checkpoint's, or the resumed run is no continuation of it. The epoch
        // count (to train longer), the validation and checkpoint intervals and the store's path may change.
        if let saved = try? root.stringAttribute("train_config"),
           let d = try ConfigDifference.first(config, old: Data(saved.utf8),
                                              ignoring: ["epochs", "validateEvery", "checkpointEvery", "store"]) {
            throw AttunetError("\(path): this command's settings differ from the run's: \(d); resume with the run's options (its config.json) or start afresh with --force")
        }
        let opt = try root.group("optimizer")
        let kind = try opt.stringAttribute("kind")
        guard kind == optimizer.kind.rawValue else {
            throw AttunetError("\(path): checkpoint used optimizer \(kind), this run uses \(optimizer.kind.rawValue)")
        }
        for (name, t) in [("moment1", optimizer.moment1), ("moment2", optimizer.moment2)] where t.count > 0 {
            let d = try opt.dataset(name)
            guard d.count == t.count else { throw AttunetError("\(d.location): \(d.count) values, the optimizer needs \(t.count)") }
            try d.read(into: t.pointer, as: .float32)
        }
        optimizer.restore(step: try opt.intAttribute("step"))
        return state
    }

    /// SHA-256 of the flat parameter buffer and then the flat BN buffer store (float32 little-endian, attunet's
    /// order and axis layout): equal digests mean bit-identical weights and running statistics.
    public static func weightsDigest(_ model: SegmentationModel) -> String {
        var h = SHA256()
        for store in [model.params, model.buffers] {
            h.update(bufferPointer: UnsafeRawBufferPointer(start: store.values.pointer, count: store.count * 4))
        }
        return h.finalize().map { String(format: "%02x", $0) }.joined()
    }
}
