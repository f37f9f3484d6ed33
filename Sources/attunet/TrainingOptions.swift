import ArgumentParser
import DataPipeline
import Foundation
import NN
import Support
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

    @Option(name: .customLong("lr"), help: "Base learning rate (the paper's).")
    var lrOption = WrittenNumber(1e-4, written: "1e-4")
    var lr: Double { lrOption.value }

    @Option(name: .customLong("weight-decay"), help: "L2 weight decay.")
    var weightDecayOption = WrittenNumber(1e-6, written: "1e-6")
    var weightDecay: Double { weightDecayOption.value }

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

    @Option(
        name: .customLong("foreground-fraction"),
        help: "Fraction of patches centred on a foreground voxel, a decimal or a ratio such as 1/3.")
    var foregroundFractionOption = WrittenNumber(1.0 / 3.0, written: "1/3")
    var foregroundFraction: Double { foregroundFractionOption.value }

    @Option(
        help:
            "Augmentation: paper (in-plane flips, rotation, shift, zoom), extended (+3D rotation, gamma, noise, brightness) or none."
    )
    var augment: AugmentPreset = .paper

    @Option(
        help:
            "Fraction of cases held out for validation (seeded); train: unless --val-cases is given; cv: of each fold's training cases, to pick the best checkpoint."
    )
    var valFraction: Double = 0.2

    @Option(help: "Validate every N epochs (and after the last).")
    var valEvery: Int = 1

    @Option(help: "Write checkpoint_latest.h5 every N epochs (and at the end).")
    var checkpointEvery: Int = 1

    @Option(
        name: .customLong("threads"),
        help:
            "Threads per rank: every layer's work is spread over them (the default follows the allocation: Slurm's --cpus-per-task, or the CPUs this rank may run on shared among the ranks of its node)."
    )
    var threadCount = RankThreadCount.fromEnvironment
    var threads: Int { threadCount.value }

    @Option(
        help:
            "All-reduce bucket in MiB: the flat gradient buffer is summed across ranks in pieces of this size, each as soon as the backward pass has finished it. The result does not depend on it; smaller pieces start sooner and need less MPI buffer memory, each costs a message's latency."
    )
    var allreduceBucketMib: Double = 16

    @Flag(
        help:
            "Sum the gradients across ranks after the backward pass instead of overlapping it: by default each bucket is summed, on a communication thread, as soon as the backward pass has finished it. The weights are the same bit for bit either way; for comparison (attunet bench train --overlap both)."
    )
    var noOverlap = false

    @Option(
        help:
            "Stop after N epochs in this invocation, as on SIGUSR1: checkpoint written, exit status 75; run the same command again (train: with --resume) for the next N (for batch jobs with short time limits)."
    )
    var stopAfterEpochs: Int?

    @Option(
        help: ArgumentHelp(
            "Seconds a collective of a training step may wait for the other ranks before the job is ended with exit status 4, naming the collective and the step (a peer that died, hung or sits behind a network partition would otherwise leave every rank waiting). Default: 20x the slowest step so far, at least 120 s (600 s for the first steps); between steps (validation, checkpoints) 10x that, at least 30 min. 0 turns the watchdog off.",
            valueName: "seconds"))
    var stepTimeout: Double?

    func validate() throws {
        guard batch >= 1, samplesPerCase >= 1, threads >= 1 else {
            throw ValidationError("--batch, --samples-per-case and --threads must be at least 1")
        }
        guard epochs >= 0 else {
            throw ValidationError("--epochs must be at least 1 (0 with --init: the mapped checkpoint as it is)")
        }
        guard lr > 0, lr.isFinite else { throw ValidationError("--lr must be a positive number") }
        guard (0..<1).contains(valFraction) else { throw ValidationError("--val-fraction must be in [0, 1)") }
        if let n = stopAfterEpochs, n < 1 { throw ValidationError("--stop-after-epochs must be at least 1") }
        if let t = stepTimeout {
            guard t >= 0, t.isFinite else {
                throw ValidationError("--step-timeout must be 0 (off) or a positive number of seconds")
            }
        }
        guard allreduceBucketMib * 262_144 >= 1 else {
            throw ValidationError("--allreduce-bucket-mib must hold at least one float (4 bytes)")
        }
    }

    /// The all-reduce bucket in floats.
    var bucketFloats: Int { Int(allreduceBucketMib * 262_144) }

    /// The settings of this process's part of the run that are not its configuration.
    var context: RunContext {
        RunContext(
            bucketFloats: bucketFloats, overlapAllReduce: !noOverlap, stepTimeout: stepTimeout,
            stopAfterEpochs: stopAfterEpochs)
    }

    /// The run's configuration with these options.
    func config(store: String, model: ModelConfig, trainCases: [String], validationCases: [String]) -> TrainConfig {
        TrainConfig(
            store: store, model: model, patch: patch, batch: batch,
            epochs: epochs, samplesPerCase: samplesPerCase, optimizer: optimizer, learningRate: lr,
            weightDecay: weightDecay, schedule: LRSchedule(schedule, epochs: epochs, stepEvery: lrStep),
            loss: loss, seed: seed, syncBN: syncBN, foregroundFraction: foregroundFraction,
            augment: augment, validateEvery: valEvery, checkpointEvery: checkpointEvery,
            trainCases: trainCases, validationCases: validationCases)
    }
}

/// `attunet train --init` and the options that go with it.
struct TransferOptions: ParsableArguments {
    @Option(
        name: .customLong("init"),
        help: ArgumentHelp(
            "Start from this checkpoint's weights and BN buffers instead of the seeded initialisation; the optimizer starts fresh.",
            discussion:
                "Tensors are copied by state_dict name (same feature scale and input channels); tensors the checkpoint lacks start from the seeded initialisation, e.g. the gates and the gating signal of an attention-unet initialised from a unet checkpoint (with --pass-through-gates they start as an exact pass-through, and the network computes the U-Net's logits in evaluation mode). The mapping is printed as a table and recorded in every checkpoint. --resume never applies --init again.",
            valueName: "checkpoint"))
    var initCheckpoint: String?

    @Option(
        help: ArgumentHelp(
            "Parameters that keep their initial values: encoder (conv1 ... conv4 and center, their convolutions and BN affine parameters) or none.",
            discussion:
                "Frozen parameters stay bit-identical: no step, no weight decay, their Adam moments stay 0. Their BN running statistics keep updating in training mode, as with PyTorch's requires_grad=False. Needs --init."
        ))
    var freeze: FreezeKind = .none

    @Option(
        help: ArgumentHelp(
            "Base learning rate of the parameters that start fresh (not copied from --init's checkpoint: new output layers, new gates), under the same schedule; default: --lr.",
            valueName: "rate"))
    var headLr: Double?

    @Flag(
        help:
            "The output layers (dsv1-dsv4, final) start fresh: needed for a checkpoint with another class count, unless --label-map maps its classes."
    )
    var resetHead = false

    @Option(
        help: ArgumentHelp(
            "Checkpoint class SRC becomes store class DST, e.g. 2:1 for a pancreas-only store whose pancreas (1) is the checkpoint's class 2.",
            discussion:
                "The output layers' rows (and final's columns) of every store class are copied from its checkpoint class; 0:0 (background) is implied unless class 0 is named. Every store class needs a checkpoint class, each class appears once, and every id must exist in the checkpoint and in the store (an error names one that does not). Recorded in the run's configuration.",
            valueName: "SRC:DST,..."))
    var labelMap: String?

    /// Refuses `--epochs 0` without `--init` (there would be nothing to evaluate but random weights).
    func check(epochs: Int) throws {
        if epochs == 0 && initCheckpoint == nil {
            throw ValidationError(
                "--epochs 0 needs --init CHECKPOINT (it writes the mapped checkpoint's weights as they are, e.g. to evaluate them before fine-tuning)"
            )
        }
    }

    func validate() throws {
        if initCheckpoint == nil {
            for (given, name) in [
                (freeze != .none, "--freeze"), (headLr != nil, "--head-lr"), (resetHead, "--reset-head"),
                (labelMap != nil, "--label-map"),
            ] where given {
                throw ValidationError(
                    "\(name) needs --init CHECKPOINT (it says how to start from a checkpoint's weights)")
            }
        }
        if let headLr {
            guard headLr > 0, headLr.isFinite else { throw ValidationError("--head-lr must be a positive number") }
        }
        if let labelMap {
            do { _ = try LabelMap(parsing: labelMap) } catch let e as AttunetError { throw ValidationError(e.message) }
            if resetHead {
                throw ValidationError(
                    "--label-map and --reset-head exclude each other: the map copies the output layers' class rows, --reset-head starts them fresh"
                )
            }
        }
    }

    /// The run's `transfer` configuration (nil without --init).
    var config: TransferConfig? {
        guard let initCheckpoint else { return nil }
        return TransferConfig(
            checkpoint: initCheckpoint, freeze: freeze, headLearningRate: headLr, resetHead: resetHead,
            labelMap: labelMap.map { try! LabelMap(parsing: $0) })
    }
}

/// The default of `--threads` (``CPUAllocation/defaultThreads``): `ATTUNET_THREADS` when it holds a positive
/// count, else `SLURM_CPUS_PER_TASK`, else the CPUs of the affinity mask divided among the node's ranks sharing it.
enum PerRankThreads {
    static var fromEnvironment: Int { CPUAllocation.defaultThreads.threads }
}
