import ArgumentParser
import Data
import NN
import Tensor
import Training

/// The training options `attunet train` and `attunet cv` share (names and defaults are those of `train`).
struct TrainingOptions: ParsableArguments {
    @Option(help: "Patch size XxYxZ in voxels, each a multiple of 16 (the paper: 160x160x96).")
    var patch = Dim3(z: 96, y: 160, x: 160)

    @Option(help: "Global batch size, split across ranks (the paper: 2).")
    var batch: Int = 2

    @Option(help: "Epochs to train.")
    var epochs: Int = 100

    @Option(help: "Patches drawn per training case per epoch.")
    var samplesPerCase: Int = 1

    @Option(help: "adam (the paper) or sgd (Nesterov momentum 0.9, what the released code ran).")
    var optimizer: OptimizerKind = .adam

    @Option(help: "Base learning rate (the paper: 1e-4).")
    var lr: Double = 1e-4

    @Option(help: "L2 weight decay.")
    var weightDecay: Double = 1e-6

    @Option(help: "LR schedule: step (x0.5 every --lr-step epochs, the original), poly (x(1-e/E)^0.9) or constant.")
    var schedule: ScheduleKind = .step

    @Option(help: "Epochs between x0.5 LR steps for --schedule step.")
    var lrStep: Int = 250

    @Option(help: "Loss: dice (Sørensen-Dice over all classes), soft-dice (the released code's), cross-entropy.")
    var loss: LossKind = .dice

    @Option(help: "Seed for initial weights, split, patch order and augmentation.")
    var seed: UInt64 = 0

    @Flag(help: "Synchronise BatchNorm statistics across ranks (SyncBN); default: per-rank statistics.")
    var syncBN = false

    @Option(help: "Fraction of patches centred on a foreground voxel.")
    var foregroundFraction: Double = 1.0 / 3.0

    @Option(help: "Augmentation: paper (in-plane flips, rotation, shift, zoom), extended (+3D rotation, gamma, noise, brightness) or none.")
    var augment: AugmentPreset = .paper

    @Option(help: "Fraction of cases held out for validation (seeded); train: unless --val-cases is given; cv: of each fold's training cases, to pick the best checkpoint.")
    var valFraction: Double = 0.2

    @Option(help: "Validate every N epochs (and after the last).")
    var valEvery: Int = 1

    @Option(help: "Write checkpoint_latest.h5 every N epochs (and at the end).")
    var checkpointEvery: Int = 1

    @Option(help: "Threads per rank for the non-BLAS loops (1 when ranks fill the cores).")
    var threads: Int = 1

    @Option(help: "All-reduce bucket in MiB: the flat gradient buffer is summed across ranks in pieces of this size. The result does not depend on it; smaller pieces need less MPI buffer memory.")
    var allreduceBucketMib: Double = 16

    @Option(help: "Stop after N epochs in this invocation, as on SIGUSR1: checkpoint written, exit status 75; run the same command again (train: with --resume) for the next N (for batch jobs with short time limits).")
    var stopAfterEpochs: Int?

    @Option(help: ArgumentHelp("Seconds a collective of a training step may wait for the other ranks before the job is ended with exit status 4, naming the collective and the step (a peer that died, hung or sits behind a network partition would otherwise leave every rank waiting). Default: 20x the slowest step so far, at least 120 s (600 s for the first steps); between steps (validation, checkpoints) 10x that, at least 30 min. 0 turns the watchdog off.", valueName: "seconds"))
    var stepTimeout: Double?

    func validate() throws {
        guard batch >= 1, epochs >= 1, samplesPerCase >= 1, threads >= 1 else {
            throw ValidationError("--batch, --epochs, --samples-per-case and --threads must be at least 1")
        }
        guard lr > 0, lr.isFinite else { throw ValidationError("--lr must be a positive number") }
        guard (0..<1).contains(valFraction) else { throw ValidationError("--val-fraction must be in [0, 1)") }
        if let n = stopAfterEpochs, n < 1 { throw ValidationError("--stop-after-epochs must be at least 1") }
        if let t = stepTimeout { guard t >= 0, t.isFinite else { throw ValidationError("--step-timeout must be 0 (off) or a positive number of seconds") } }
        guard allreduceBucketMib * 262_144 >= 1 else { throw ValidationError("--allreduce-bucket-mib must hold at least one float (4 bytes)") }
    }

    /// The all-reduce bucket in floats.
    var bucketFloats: Int { Int(allreduceBucketMib * 262_144) }

    /// The run's configuration with these options.
    func config(store: String, model: ModelConfig, trainCases: [String], validationCases: [String]) -> TrainConfig {
        TrainConfig(store: store, model: model, patch: patch, batch: batch,
                    epochs: epochs, samplesPerCase: samplesPerCase, optimizer: optimizer, learningRate: lr,
                    weightDecay: weightDecay, schedule: LRSchedule(schedule, epochs: epochs, stepEvery: lrStep),
                    loss: loss, seed: seed, syncBN: syncBN, foregroundFraction: foregroundFraction,
                    augment: augment, validateEvery: valEvery, checkpointEvery: checkpointEvery,
                    trainCases: trainCases, validationCases: validationCases)
    }
}
