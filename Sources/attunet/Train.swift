import ArgumentParser
import Collectives
import DataPipeline
import Foundation
import NN
import Support
import Tensor
import Training

/// `attunet train`: data-parallel training on a case store.
struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train the Attention U-Net (or a U-Net) on a case store, over MPI.",
        discussion: """
            One process trains alone (the Attention U-Net, or with --model its U-Net baseline or a U-Net preset); under mpirun every rank holds a replica, takes its share of each global batch (--batch must be divisible by the rank count) and gradients are averaged with an all-reduce. Rank 0 prints one line per epoch, writes log.csv, progress.svg, checkpoint_latest.h5 (every --checkpoint-every epochs and at the end) and checkpoint_best.h5 (best mean validation Dice) into --out.

              attunet synth --cases 20 --out phantoms
              attunet prepare --input phantoms --out phantoms.h5
              mpirun -np 2 --bind-to none -x OPENBLAS_NUM_THREADS=1 \\
                  attunet train --store phantoms.h5 --patch 64x64x32 --batch 2 \\
                  --epochs 20 --out runs/demo

            Validation: a seeded --val-fraction of the cases (or --val-cases) is held out and segmented whole (sliding window at the training patch, Gaussian blending) every --val-every epochs; Dice is reported per organ.

            Stopping: SIGTERM or SIGUSR1 to any rank (e.g. SLURM before the time limit) makes every rank finish the current step; rank 0 writes checkpoint_latest.h5 and the run exits with status 75. Run the same command with --resume to continue: the result is bit-identical to an uninterrupted run. A --resume whose settings differ from the run's is refused, naming the first difference (--epochs, --val-every, --checkpoint-every and the store's path may change). A NaN/Inf loss stops the run with status 3, keeping the last good checkpoint. A collective that waits past --step-timeout (a dead, hung or unreachable peer) ends the job with status 4.

            Starting from a checkpoint: --init CHECKPOINT copies its weights and BN buffers by name (the optimizer starts fresh) and prints what was copied and what starts fresh. --freeze encoder keeps conv1 ... center as they are; --head-lr trains the fresh parameters at another rate; --reset-head starts the output layers fresh (a checkpoint with another class count); --label-map SRC:DST,... copies the output rows of the checkpoint's classes to the store's. From a unet checkpoint into --model attention-unet --pass-through-gates the network starts computing the U-Net's logits (evaluation mode). These settings are part of the run's configuration: --resume needs the same ones and does not apply --init again.

              attunet train --store pancreas.h5 --classes 2 \\
                  --init runs/ct/checkpoint_best.h5 --label-map 2:1 --freeze encoder \\
                  --head-lr 1e-3 --out runs/finetune

            Integrity: every checkpoint carries Fletcher-32 checksums on its datasets and SHA-256 digests of its weights and of its optimizer and training state; --resume verifies them and refuses a damaged checkpoint_latest.h5 with one line. It never falls back on its own: continue from another checkpoint with --resume-from PATH (checkpoint_best.h5, or a copy of an earlier checkpoint_latest.h5); the run goes on from that checkpoint's epoch and overwrites checkpoint_latest.h5 at its next save. A checkpoint that cannot be written (a full disk) ends the run with status 1 and keeps the previous one.

            Exit status:
              0   done
              1   an error, one line each on stderr (e.g. a refused --resume, a checkpoint
                  that cannot be written: the previous one is kept)
              3   the loss became NaN/Inf; the last good checkpoint is kept
              4   a collective waited past --step-timeout: a peer died, hung or is
                  unreachable, and the job was ended
              64  bad command line
              75  stopped on request (SIGTERM/SIGUSR1, --stop-after-epochs) after writing
                  checkpoint_latest.h5: run the same command with --resume to continue
            """
    )

    @Option(help: "The HDF5 case store (from attunet prepare).")
    var store: String

    @OptionGroup var modelOptions: ModelOptions

    @OptionGroup var training: TrainingOptions

    @OptionGroup(title: "Starting from a checkpoint") var transferOptions: TransferOptions

    @Option(help: "Comma-separated validation case ids (the rest train).")
    var valCases: String?

    @Option(help: "Run folder for checkpoints, log.csv and progress.svg.")
    var out: String = "runs/train"

    @Flag(help: "Continue the run in --out from its checkpoint_latest.h5.")
    var resume = false

    @Option(
        help: ArgumentHelp(
            "Continue the run in --out from this checkpoint instead (e.g. its checkpoint_best.h5 when checkpoint_latest.h5 is damaged).",
            valueName: "path"))
    var resumeFrom: String?

    @Flag(help: "Start afresh even if --out already holds a checkpoint (it will be overwritten).")
    var force = false

    func validate() throws { try transferOptions.check(epochs: training.epochs) }

    func run() throws {
        Parallelism.threads = training.threads
        let comm = try MPICommunicator()
        let outDir = URL(fileURLWithPath: out)
        let folder = RunFolder(outDir)
        let storeFile = try CaseStore(path: store)
        let ids = storeFile.cases.map(\.id)
        var trainIDs: [String]
        var valIDs: [String]
        if let valCases {
            valIDs = valCases.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            if let bad = valIDs.first(where: { !ids.contains($0) }) {
                throw AttunetError("\(store): no case '\(bad)' (from --val-cases)")
            }
            trainIDs = ids.filter { !valIDs.contains($0) }
        } else {
            (trainIDs, valIDs) = TrainConfig.split(ids, validationFraction: training.valFraction, seed: training.seed)
        }
        var config = training.config(
            store: store, model: modelOptions.config(storeClasses: storeFile.classNames.count), trainCases: trainIDs,
            validationCases: valIDs)
        config.transfer = transferOptions.config
        let latest = folder.checkpointLatest.path
        if resume && resumeFrom != nil { throw AttunetError("--resume and --resume-from: pass one of them") }
        let resuming = resume || resumeFrom != nil
        if !resuming && !force && FileManager.default.fileExists(atPath: latest) {
            throw AttunetError(
                "\(latest) exists: pass --resume to continue that run or --force to start afresh (it will be overwritten)"
            )
        }
        // Every check (settings, store, a checkpoint to resume) comes before the first write, so a refused run
        // leaves an existing run folder as it was.
        let trainer = try Trainer(config: config, comm: comm, outDir: outDir, context: training.context)
        var state: TrainingState?
        if let resumeFrom {
            state = try trainer.resume(from: resumeFrom)
        } else if resume {
            do { state = try trainer.resume() } catch let e as AttunetError where e.kind == .corrupt {
                let best = folder.checkpointBest.path
                let example =
                    FileManager.default.fileExists(atPath: best)
                    ? "e.g. --resume-from \(best)" : "with a copy of an earlier checkpoint_latest.h5"
                throw AttunetError(
                    "\(e.message); to continue from another checkpoint pass --resume-from (\(example))", kind: .corrupt)
            }
        } else if config.transfer != nil {
            try trainer.initialiseFromCheckpoint()  // prints the mapping; refusals come before anything is written
        }
        if comm.isRoot {
            try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)
            try AtomicFile.write(try JSONFiles.data(config), to: folder.config.path)
            try AtomicFile.write(
                try JSONFiles.data(["train": trainIDs, "validation": valIDs]),
                to: folder.splits.path)
        }
        try comm.barrier()
        Trainer.installStopHandlers()
        if let state, comm.isRoot {
            print("train: resuming \(resumeFrom ?? latest) at epoch \(state.epoch) step \(state.stepInEpoch)")
        }
        try trainer.run(from: state)
    }
}
