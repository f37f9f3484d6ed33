import ArgumentParser
import Collectives
import DataPipeline
import Evaluation
import Foundation
import NN
import Support
import Tensor
import Training
import Workflows

/// `attunet cv`: k-fold cross-validation of the Attention U-Net and its U-Net baseline on the same folds.
struct CV: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cv",
        abstract: "K-fold cross-validation of several models, with the paper's table.",
        discussion: """
            Every model of --models trains and is tested on the same folds, and rank 0 writes the paper's results table. Protocols (the paper's): 5-fold on CT-150 trains on 120 and tests on 30 cases per fold (--folds 5); 4-fold on TCIA-82 trains on 62 and tests on 20 (--folds 4); the inverse protocol trains on one part and tests on the others, 30/120 on CT-150 (--folds 5 --inverse). Every case is tested exactly once per model (k-fold), and every model of --models trains on the same folds, so the comparison is paired.

              mpirun -np 2 --bind-to none -x OPENBLAS_NUM_THREADS=1 \\
                  attunet cv --store phantoms.h5 --patch 64x64x32 --epochs 20 --out runs/cv

            Folds: seeded by --seed (--group-by FILE keeps a patient's scans in one fold: JSON {case: patient} or CSV case,patient), or taken verbatim from --splits FILE (attunet's splits.json or nnU-Net's splits_final.json; refused, naming the cases, when parts overlap, miss or name unknown cases). In each fold a seeded --val-fraction of the training cases (never a test case) is held out to pick the best checkpoint; the test cases are segmented whole with it and measured against the store's labels at the store's spacing: Dice, precision, recall, ASSD, HD95 (--distance-definition), the original code's S2S, IoU, the relative volume difference RVD, and with --nsd-tolerance the normalised surface Dice (see attunet evaluate --help). Every rank trains every fold (data-parallel), or with --fold-parallel G each of G groups of ranks trains its share of the folds at the same time; the test cases are spread over the ranks that trained the fold.

            Outputs in --out: config.json, splits.json, fold_<k>/<model>/ (a train run folder: checkpoints, log.csv, progress.svg, results.json, the fold's per-case metrics, and test/<case>.nii.gz, each test case's labels on its source grid as attunet predict writes them; with --save-probabilities also test/probabilities/<case>.nii.gz), summary.md (the paper's table: per model the pancreas DSC, precision, recall and S2S, the other organs' DSC, parameters, inference time per volume; ASSD/HD95 under the distance definition; IoU, RVD and NSD per organ; with two models a paired Wilcoxon test per organ), summary.csv and summary.json (also per fold and per case), summary.svg (a box plot of Dice per organ and model). Rank 0 prints the table at the end.

            Job arrays (cluster/cv-array.sbatch): one task per fold runs the command with --fold K (K = 0 … folds−1, every model of that fold, no summary); a job depending on all of them runs it with --summarize, which writes the summaries from the folds' results.json and fails naming any fold without one. The tasks share config.json and splits.json, so the folds are the same as in one run.

            Fine-tuning on the folds (the paper's TCIA protocols; attunet experiment transfer runs all three): --init CHECKPOINT starts every fold of every model from that checkpoint's weights, with train's --freeze, --head-lr, --reset-head and --label-map (AFT, after fine-tuning); with --epochs 0 each fold evaluates the mapped checkpoint as it is (BFT, before fine-tuning); without --init the folds train from scratch (SCR).

            Postprocessing: attunet postprocess --cv-dir OUT chooses per class, on the kept test predictions, whether keeping the largest connected component(s) or removing small ones helps, and attunet predict --cv-dir OUT applies its choice.

            Restart: run the same command again after a stop (exit 75: SIGTERM/SIGUSR1, or --stop-after-epochs, which counts the epochs of all folds in this job) or a crash. Folds with results.json are skipped (a finished fold whose test predictions are missing, as in a run made before cv kept them, writes the missing ones with the checkpoint it scored), an unfinished fold resumes from its checkpoint_latest.h5, bit-identical to an uninterrupted CV with the same rank count. A command whose configuration differs from --out's config.json is refused, naming the difference; --stop-after-epochs, --threads, --allreduce-bucket-mib and --no-overlap may change.

            Exit status:
              0   done
              1   an error, one line each on stderr
              3   the loss became NaN/Inf; the last good checkpoint is kept
              4   a collective waited past --step-timeout: a peer died, hung or is
                  unreachable, and the job was ended
              64  bad command line
              75  stopped on request (SIGTERM/SIGUSR1, --stop-after-epochs) after
                  checkpointing the folds in progress: rerun the same command to continue
            """
    )

    @Option(help: "The HDF5 case store (from attunet prepare).")
    var store: String

    @Option(help: "Run folder: config.json, splits.json, fold_<k>/<model>/ and the summaries.")
    var out: String = "runs/cv"

    @Option(help: "Number of folds (the paper: 5 on CT-150, 4 on TCIA-82).")
    var folds: Int = 5

    @Flag(help: "Inverse protocol: train on one part, test on all the others (the paper's 30/120).")
    var inverse = false

    @Option(help: "Reuse these folds (attunet's splits.json or nnU-Net's splits_final.json) instead of seeding them.")
    var splits: String?

    @Option(help: "Case-to-patient map (JSON object or CSV case,patient): a patient's cases stay in one fold.")
    var groupBy: String?

    @Option(
        help:
            "Comma-separated models, trained on the same folds; the first is compared with the others: attention-unet, unet, unet-capacity-matched, unet-10m (the presets fix their feature scale; --feature-scale then must be left out or equal theirs)."
    )
    var models: String = "attention-unet,unet"

    @OptionGroup var architecture: ArchitectureOptions

    @OptionGroup var training: TrainingOptions

    @OptionGroup(title: "Starting from a checkpoint (every model of every fold)") var transferOptions: TransferOptions

    @Option(
        help:
            "ASSD/HD95 definition: pooled (medpy: both directed sets pooled) or max-directed (DeepMind surface-distance)."
    )
    var distanceDefinition: SurfaceDistanceDefinition = .pooled

    @Option(
        help: ArgumentHelp(
            "Also score each test case's normalised surface Dice at this tolerance in mm: one value for every class, or per class by name or label (pancreas:1,spleen:2, or 2,pancreas:1 for a default and exceptions). Default: no NSD.",
            discussion:
                "Part of the run's configuration (config.json): a restart must give the same value. See attunet evaluate --help for the definition.",
            valueName: "MM"))
    var nsdTolerance: String?

    @Option(
        help: ArgumentHelp(
            "Split the MPI ranks into G groups that train different folds at the same time (each group data-parallel within itself); G must divide the ranks.",
            discussion:
                "Job j of the list (every fold of the first model, then of the next) goes to group j mod G. With few cases per fold or many ranks, groups waste less time in all-reduces than one big data-parallel run. A fold trained in a group of r ranks equals the same fold trained by attunet cv on r ranks; --batch must divide by r.",
            valueName: "G"))
    var foldParallel: Int = 1
    @Option(
        help: ArgumentHelp(
            "Train and evaluate only fold K (0-based, as the fold_K folder) of every model, and write no summary: one task of a job array (SLURM_ARRAY_TASK_ID).",
            valueName: "K"))
    var fold: Int?
    @Flag(
        help:
            "Train nothing: write the summaries from every fold's results.json (after the --fold K tasks of a job array); fails naming the folds without results."
    )
    var summarize = false
    @Flag(
        help:
            "Print the plan (folds, cases, steps, epochs) and an estimate of the wall time, core-hours and peak memory per rank on these ranks, from a few timed steps and one timed validation volume per model; write nothing. With --nodes: the layout that finishes soonest on that allocation instead (attunet plan, calibrated here on --store)."
    )
    var dryRun = false
    @Flag(
        help:
            "Also keep each test case's class probabilities, fold_<k>/<model>/test/probabilities/<case>.nii.gz, as predict --save-probabilities writes them (may be added on a restart)."
    )
    var saveProbabilities = false

    @OptionGroup(title: "Planning an allocation (with --dry-run --nodes N; see attunet plan)")
    var allocation: AllocationOptions

    @OptionGroup(title: "Calibrating the plan (with --dry-run --nodes N)") var calibration: CalibrationOptions

    func validate() throws {
        guard folds >= 2 else { throw ValidationError("--folds must be at least 2") }
        guard foldParallel >= 1 else { throw ValidationError("--fold-parallel must be at least 1") }
        guard fold == nil || !summarize else {
            throw ValidationError(
                "--fold and --summarize exclude each other (run the --fold tasks first, then --summarize)")
        }
        if let fold {
            guard fold >= 0 && fold < folds else {
                throw ValidationError("--fold \(fold): folds are numbered 0 to \(folds - 1) (as the fold_K folders)")
            }
        }
        guard splits == nil || groupBy == nil else {
            throw ValidationError("--splits and --group-by exclude each other (the splits file fixes the folds)")
        }
        _ = try modelKinds()
        try transferOptions.check(epochs: training.epochs)
        if let nsdTolerance {
            do { _ = try NSDTolerance(parsing: nsdTolerance) } catch let e as AttunetError {
                throw ValidationError(e.message)
            }
        }
        guard allocation.nodes == nil || dryRun else {
            throw ValidationError("--nodes plans an allocation: it goes with --dry-run")
        }
        guard allocation.nodeCounts.count == 1, allocation.networks.count == 1 else {
            throw ValidationError(
                "cv --dry-run plans one --nodes count on one --network (attunet plan --table: several)")
        }
    }

    func modelKinds() throws -> [ModelKind] { try architecture.kinds(models) }

    /// The training settings every fold and model share (their model and cases are filled per fold).
    var trainingTemplate: TrainConfig {
        var t = training.config(
            store: store, model: architecture.config(.attentionUNet), trainCases: [], validationCases: [])
        t.transfer = transferOptions.config
        return t
    }

    func run() throws {
        Parallelism.threads = training.threads
        let comm = try MPICommunicator()
        let caseStore = try CaseStore(path: store)
        let fingerprint = caseStore.fingerprint
        let config = CrossValidationConfig(
            store: store, storeFingerprint: fingerprint,
            models: try modelKinds().map { architecture.config($0, storeClasses: caseStore.classNames.count) },
            folds: folds, inverse: inverse, splitsFile: splits, groupBy: groupBy,
            validationFraction: training.valFraction, distanceDefinition: distanceDefinition,
            training: trainingTemplate,
            nsdTolerance: try nsdTolerance.map {
                try NSDTolerance(parsing: $0).resolve(classNames: Array(caseStore.classNames.dropFirst()))
            })
        let cv = CrossValidation(config: config, comm: comm, folder: RunFolder(path: out))
        cv.context = training.context
        cv.context.resumeHint = CrossValidation.resumeHint
        cv.foldParallel = foldParallel
        cv.onlyFold = fold
        cv.summarizeOnly = summarize
        cv.saveProbabilities = saveProbabilities
        if dryRun, allocation.nodes != nil {
            try planAllocation(cv, comm: comm, store: caseStore)
            return
        }
        if dryRun {
            let e = try cv.estimate()
            if comm.isRoot { print(Self.describe(e, inverse: inverse)) }
            return
        }
        Trainer.installStopHandlers()
        try cv.run()
    }

    /// `--dry-run --nodes N`: attunet plan's report for this cross-validation, calibrated here on the store (or
    /// from --profile); the printed command lines carry this command's options.
    func planAllocation(_ cv: CrossValidation, comm: Communicator, store caseStore: CaseStore) throws {
        guard comm.size == 1 else {
            throw AttunetError(
                "cv --dry-run --nodes times one rank: start it without mpirun (or without --nodes for the estimate on these ranks)"
            )
        }
        let configs = cv.config.models
        let profile: CalibrationProfile
        if let path = calibration.profile {
            profile = try CalibrationProfile.read(path)
        } else {
            profile = try calibration.measure(
                store: store, models: configs, patch: calibration.patch ?? training.patch, batch: training.batch,
                comm: comm, quiet: false)
        }
        let request = try PlanRequest(
            configs: configs, profile: profile, source: calibration.profile ?? "the calibration", folds: try cv.plan(),
            store: caseStore, storePath: store, volume: caseStore.cases.first?.shape ?? training.patch,
            patch: training.patch, batch: training.batch, epochs: training.epochs,
            samplesPerCase: training.samplesPerCase, validationFraction: training.valFraction,
            validateEvery: training.valEvery, cvOptions: Self.passedOn(Array(CommandLine.arguments.dropFirst())))
        print(try request.report(allocation.allocation(), json: false))
    }

    /// This command's options for the planned run: without the dry run, the planning and calibration options,
    /// --store, --out, --fold-parallel and --threads (the printed lines set those).
    static func passedOn(_ arguments: [String]) -> [String] {
        let withValue: Set<String> = [
            "--store", "--out", "--fold-parallel", "--threads", "--nodes", "--cores-per-node", "--memory-per-node",
            "--network",
            "--bandwidth", "--latency", "--exposed-allreduce", "--profile", "--calibration-threads",
            "--calibration-patch", "--calibration-steps", "--calibration-warmup",
        ]
        var out: [String] = []
        var skip = false
        for a in arguments.drop(while: { $0 != "cv" }).dropFirst() {
            if skip {
                skip = false
                continue
            }
            let name = String(a.split(separator: "=", maxSplits: 1).first ?? "")
            if a == "--dry-run" || withValue.contains(name) {
                skip = withValue.contains(a)
                continue
            }
            out.append(a)
        }
        return out
    }

    static func describe(_ e: CrossValidationEstimate, inverse: Bool) -> String {
        let schedule = e.groups > 1 ? ", \(e.groups) fold-parallel groups of \(e.ranks / e.groups) rank(s)" : ""
        var lines = [
            "cv dry run: \(e.folds.count) folds (\(inverse ? "inverse: train on one part, test on the others" : "k-fold")), \(e.models.count) model(s), \(e.epochs) epochs, \(e.ranks) rank(s) x \(e.threadsPerRank) thread(s)\(schedule)"
        ]
        for f in e.folds {
            lines.append(
                "  fold \(f.fold): \(f.training) training + \(f.validation) validation cases, \(f.test) test cases, \(f.stepsPerEpoch) steps per epoch"
            )
        }
        for m in e.models {
            lines.append(
                "  \(m.model) (\(grouped(m.parameters)) parameters): \(fmt(m.secondsPerStep, 2)) s per step, \(fmt(m.secondsPerVolume, 2)) s per whole validation/test volume (timed here\(e.groups > 1 ? ", all groups at once" : ""))"
            )
        }
        lines.append(
            "estimate: training \(formatDuration(e.trainingSeconds)), validation \(formatDuration(e.validationSeconds)) (\(e.validationsPerFold) per fold), testing \(formatDuration(e.testSeconds))"
        )
        lines.append(
            "  wall time \(formatDuration(e.wallSeconds)) on these \(e.ranks) rank(s) x \(e.threadsPerRank) thread(s) = \(fmt(e.coreHours, 1)) core-hours"
        )
        // Threads inside a rank are how a fold's few ranks (batch / ranks >= 1) reach the rest of a node.
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let perNode = min(e.ranks, cores)
        if perNode * e.threadsPerRank < cores {
            lines.append(
                "  this node has \(cores) cores and these ranks use \(perNode * e.threadsPerRank) of them here: --threads \(max(1, cores / perNode)) runs \(perNode) rank(s) x \(max(1, cores / perNode)) threads (the time above is for \(e.threadsPerRank) thread(s))"
            )
        }
        if let peak = e.peakResidentBytes {
            lines.append("  peak memory per rank: \(fmt(Double(peak) / 1_073_741_824, 2)) GiB")
        }
        lines.append("  (the data loader runs beside the steps and is not counted; nothing was written)")
        return lines.joined(separator: "\n")
    }
}
