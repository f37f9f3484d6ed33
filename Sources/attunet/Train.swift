import ArgumentParser
import Data
import Distributed
import Foundation
import NN
import Support
import Tensor
import Training

/// `attunet train`: data-parallel training on a case store.
struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train the Attention U-Net (or the U-Net baseline) on an HDF5 case store, data-parallel over MPI.",
        discussion: """
        One process trains alone; under mpirun every rank holds a replica, takes its share of each global batch
        (--batch must be divisible by the rank count) and gradients are averaged with an all-reduce. Rank 0
        prints one line per epoch, writes log.csv, progress.svg, checkpoint_latest.h5 (every
        --checkpoint-every epochs and at the end) and checkpoint_best.h5 (best mean validation Dice) into --out.
          attunet synth --cases 20 --out phantoms && attunet prepare --input phantoms --out phantoms.h5
          mpirun -np 2 --bind-to none -x OPENBLAS_NUM_THREADS=1 attunet train --store phantoms.h5 \\
              --patch 64x64x32 --batch 2 --epochs 20 --out runs/demo
        Validation: a seeded --val-fraction of the cases (or --val-cases) is held out and segmented whole
        (padded to multiples of 16) every --val-every epochs; Dice is reported per organ.
        Stopping: SIGTERM or SIGUSR1 to any rank (e.g. SLURM before the time limit) makes every rank finish the
        current step; rank 0 writes checkpoint_latest.h5 and the run exits with status 75. Run the same command
        with --resume to continue: the result is bit-identical to an uninterrupted run. A NaN/Inf loss stops
        the run with status 3, keeping the last good checkpoint.
        """
    )

    @Option(help: "The HDF5 case store (from attunet prepare).")
    var store: String

    @OptionGroup var modelOptions: ModelOptions

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

    @Option(help: "Fraction of cases held out for validation (seeded), unless --val-cases is given.")
    var valFraction: Double = 0.2

    @Option(help: "Comma-separated validation case ids (the rest train).")
    var valCases: String?

    @Option(help: "Validate every N epochs (and after the last).")
    var valEvery: Int = 1

    @Option(help: "Write checkpoint_latest.h5 every N epochs (and at the end).")
    var checkpointEvery: Int = 1

    @Option(help: "Run folder for checkpoints, log.csv and progress.svg.")
    var out: String = "runs/train"

    @Flag(help: "Continue the run in --out from its checkpoint_latest.h5.")
    var resume = false

    @Option(help: "Stop after N epochs in this invocation, as on SIGUSR1: checkpoint written, exit status 75; run the same command with --resume for the next N (for batch jobs with short time limits).")
    var stopAfterEpochs: Int?

    @Flag(help: "Start afresh even if --out already holds a checkpoint (it will be overwritten).")
    var force = false

    @Option(help: "Threads per rank for the non-BLAS loops (1 when ranks fill the cores).")
    var threads: Int = 1

    @Option(help: "All-reduce bucket in MiB: the flat gradient buffer is summed across ranks in pieces of this size. The result does not depend on it; smaller pieces need less MPI buffer memory.")
    var allreduceBucketMib: Double = 16

    func validate() throws {
        guard batch >= 1, epochs >= 1, samplesPerCase >= 1, threads >= 1 else {
            throw ValidationError("--batch, --epochs, --samples-per-case and --threads must be at least 1")
        }
        guard lr > 0, lr.isFinite else { throw ValidationError("--lr must be a positive number") }
        guard (0..<1).contains(valFraction) else { throw ValidationError("--val-fraction must be in [0, 1)") }
        if let n = stopAfterEpochs, n < 1 { throw ValidationError("--stop-after-epochs must be at least 1") }
        guard allreduceBucketMib * 262_144 >= 1 else { throw ValidationError("--allreduce-bucket-mib must hold at least one float (4 bytes)") }
    }

    func run() throws {
        Parallelism.threads = threads
        let comm = try MPICommunicator()
        let outDir = URL(fileURLWithPath: out)
        let storeFile = try CaseStore(path: store)
        let ids = storeFile.cases.map(\.id)
        var trainIDs: [String], valIDs: [String]
        if let valCases {
            valIDs = valCases.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            if let bad = valIDs.first(where: { !ids.contains($0) }) { throw AttunetError("\(store): no case '\(bad)' (from --val-cases)") }
            trainIDs = ids.filter { !valIDs.contains($0) }
        } else {
            (trainIDs, valIDs) = TrainConfig.split(ids, validationFraction: valFraction, seed: seed)
        }
        let config = TrainConfig(store: store, model: modelOptions.config, patch: patch, batch: batch,
                                 epochs: epochs, samplesPerCase: samplesPerCase, optimizer: optimizer, learningRate: lr,
                                 weightDecay: weightDecay, schedule: LRSchedule(schedule, epochs: epochs, stepEvery: lrStep),
                                 loss: loss, seed: seed, syncBN: syncBN, foregroundFraction: foregroundFraction,
                                 augment: augment, validateEvery: valEvery, checkpointEvery: checkpointEvery,
                                 trainCases: trainIDs, validationCases: valIDs)
        let latest = outDir.appendingPathComponent("checkpoint_latest.h5").path
        if !resume && !force && FileManager.default.fileExists(atPath: latest) {
            throw AttunetError("\(latest) exists: pass --resume to continue that run or --force to start afresh (it will be overwritten)")
        }
        // Every check (settings, store, a checkpoint to resume) comes before the first write, so a refused run
        // leaves an existing run folder as it was.
        let trainer = try Trainer(config: config, comm: comm, outDir: outDir)
        trainer.bucketFloats = Int(allreduceBucketMib * 262_144)
        trainer.stopAfterEpochs = stopAfterEpochs
        let state = resume ? try trainer.resume() : nil
        if comm.isRoot {
            try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            try AtomicFile.write(try enc.encode(config), to: outDir.appendingPathComponent("config.json").path)
            try AtomicFile.write(try enc.encode(["train": trainIDs, "validation": valIDs]),
                                 to: outDir.appendingPathComponent("splits.json").path)
        }
        try comm.barrier()
        Trainer.installStopHandlers()
        if let state, comm.isRoot { print("train: resuming \(latest) at epoch \(state.epoch) step \(state.stepInEpoch)") }
        try trainer.run(from: state)
    }
}
