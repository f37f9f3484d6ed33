import DataPipeline
import Foundation
import NN
import Tensor

/// Everything that defines a training run; saved as `config.json` and inside every checkpoint, so a resumed
/// run can be checked against it.
public struct TrainConfig: Codable, Sendable, Equatable {
    public var store: String
    public var model: ModelConfig
    /// Patch size (z, y, x); every axis a multiple of 16.
    public var patch: Dim3
    /// Global batch, split evenly across ranks.
    public var batch: Int
    public var epochs: Int
    /// Patches drawn per training case per epoch.
    public var samplesPerCase: Int
    public var optimizer: OptimizerKind
    public var learningRate: Double
    public var weightDecay: Double
    public var schedule: LRSchedule
    public var loss: LossKind
    public var seed: UInt64
    public var syncBN: Bool
    public var foregroundFraction: Double
    public var augment: AugmentPreset
    /// Validate every N epochs (and after the last).
    public var validateEvery: Int
    /// Write checkpoint_latest.h5 every N epochs (and at the end).
    public var checkpointEvery: Int
    public var trainCases: [String]
    public var validationCases: [String]
    /// `--init` and its options: the run starts from a checkpoint's weights instead of the seeded
    /// initialisation (nil: seeded). Absent from the JSON when nil, so configurations saved before it compare
    /// equal.
    public var transfer: TransferConfig?

    public init(
        store: String, model: ModelConfig = ModelConfig(), patch: Dim3 = Dim3(z: 96, y: 160, x: 160),
        batch: Int = 2, epochs: Int = 100, samplesPerCase: Int = 1, optimizer: OptimizerKind = .adam,
        learningRate: Double = 1e-4, weightDecay: Double = 1e-6, schedule: LRSchedule = .step(every: 250, factor: 0.5),
        loss: LossKind = .dice, seed: UInt64 = 0, syncBN: Bool = false, foregroundFraction: Double = 1.0 / 3.0,
        augment: AugmentPreset = .paper, validateEvery: Int = 1, checkpointEvery: Int = 1,
        trainCases: [String] = [], validationCases: [String] = [], transfer: TransferConfig? = nil
    ) {
        self.store = store
        self.model = model
        self.patch = patch
        self.batch = batch
        self.epochs = epochs
        self.samplesPerCase = samplesPerCase
        self.optimizer = optimizer
        self.learningRate = learningRate
        self.weightDecay = weightDecay
        self.schedule = schedule
        self.loss = loss
        self.seed = seed
        self.syncBN = syncBN
        self.foregroundFraction = foregroundFraction
        self.augment = augment
        self.validateEvery = validateEvery
        self.checkpointEvery = checkpointEvery
        self.trainCases = trainCases
        self.validationCases = validationCases
        self.transfer = transfer
    }

    public var augmentOptions: AugmentOptions { AugmentOptions(augment) }

    /// A seeded split of case ids: `validationFraction` of them (at least one when there are two or more)
    /// are held out for validation.
    public static func split(_ ids: [String], validationFraction: Double, seed: UInt64) -> (
        train: [String], validation: [String]
    ) {
        var rng = SeededRNG(seed, 0x53_504C_4954)  // "SPLIT"
        let sorted = ids.sorted()
        let shuffled = rng.permutation(sorted.count).map { sorted[$0] }
        var nVal = Int((Double(ids.count) * validationFraction).rounded())
        if ids.count >= 2 { nVal = min(max(nVal, 1), ids.count - 1) } else { nVal = 0 }
        return (Array(shuffled.dropLast(nVal)).sorted(), Array(shuffled.suffix(nVal)).sorted())
    }
}

/// `attunet train --init CHECKPOINT` and the options that go with it (``WeightTransfer`` does the mapping).
/// Part of the run's configuration: a `--resume` with other values is refused, and a resume never applies
/// `--init` again (the weights come from the run's own checkpoint).
public struct TransferConfig: Codable, Sendable, Equatable {
    /// The checkpoint whose weights and BN buffers initialise the network (`--init`).
    public var checkpoint: String
    /// Parameters that keep their initial values (`--freeze`).
    public var freeze: FreezeKind
    /// The base learning rate of the parameters that start fresh, under the run's schedule (`--head-lr`; nil:
    /// the run's `--lr`).
    public var headLearningRate: Double?
    /// Start the output layers fresh (`--reset-head`).
    public var resetHead: Bool
    /// Copy the output layers' class rows from the checkpoint's classes to the store's (`--label-map`).
    public var labelMap: LabelMap?

    public init(
        checkpoint: String, freeze: FreezeKind = .none, headLearningRate: Double? = nil, resetHead: Bool = false,
        labelMap: LabelMap? = nil
    ) {
        self.checkpoint = checkpoint
        self.freeze = freeze
        self.headLearningRate = headLearningRate
        self.resetHead = resetHead
        self.labelMap = labelMap
    }
}
