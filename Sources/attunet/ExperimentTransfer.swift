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

/// `attunet experiment transfer`: the paper's TCIA table (BFT, AFT, SCR) on two cohorts.
struct Transfer: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The paper's TCIA table: BFT, AFT and SCR on a target cohort's folds.",
        discussion: """
            The paper trained on CT-150 (multi-organ) and moved to TCIA Pancreas-CT (another site, pancreas only): the CT-150 model applied as it is (BFT, before fine-tuning), fine-tuned on the new cohort (AFT), and a model trained there from scratch (SCR). This does the same for every model of --models, trained first on a source cohort and then reported on a target cohort's folds:

            1. Train each model on the whole --source store, less a seeded --val-fraction that picks its best checkpoint (RUN/source/<model>/).
            2. Split the --target store into --folds folds (RUN/target/splits.json) and test every fold under each protocol:
            - BFT: the source checkpoint as it is: its arg-max over the source classes, mapped by --label-map (a class without a target class counts as background); RUN/target/bft-<model>/.
            - AFT: the source weights fine-tuned on the fold's training cases, the output rows of the mapped classes kept (--finetune-epochs, --finetune-lr, --freeze, --head-lr); RUN/target/aft-<model>/, an attunet cv folder.
            - SCR: trained from scratch on the fold's training cases with the source settings; RUN/target/scr/.
            3. Write RUN/transfer.md (the paper's table layout: Dice, precision, recall, S2S in mm, mean ± std over the target cases, the paper's numbers beside), transfer.csv and transfer.json, with paired Wilcoxon tests (AFT − BFT, AFT − SCR, and the first model against the others) over the same cases.

            --label-map SRC:DST,... maps source classes to target classes (background implied); by default every target class takes the source class of the same name (pancreas 2 → pancreas 1). It is checked against both stores before anything trains. Model classes come from the stores (--classes is refused).

            Without --source and --target, the built-in default: two phantom cohorts that differ as sites do, written to RUN/data and prepared at 4 mm. Source: 20 of attunet's phantoms (seed 1; 1.4-2.2 mm in-plane, 2-3 mm slices, noise 8-20 HU, pancreas 75-95 HU in the portal venous phase; spleen, pancreas and kidney labelled). Target: 16 phantoms from another site (seed 2; 1.2 mm in-plane, 5 mm slices, noise 40 HU; the pancreatic phase: pancreas 125 HU, liver 80, kidney cortex 230; another population: labelled organs at 0.75 of the size; only the pancreas labelled, as 1). The settings are small enough for 20 minutes on 2 ranks: --feature-scale 16 --patch 48x48x32 --batch 2 --epochs 120 --samples-per-case 2 --lr 5e-3 --schedule poly --foreground-fraction 0.67 --augment none --val-every 20 --seed 0 --folds 4, and --fold-parallel as many as the ranks; options given override them. With --source and --target every default is attunet cv's (the paper's settings).

              mpirun -np 2 --bind-to none attunet experiment transfer
              mpirun -np 8 --bind-to none -x OPENBLAS_NUM_THREADS=1 \\
                  attunet experiment transfer --source ct150.h5 \\
                  --target tcia82.h5 --epochs 300 --finetune-epochs 100

            Restart: rerun the same command; finished source runs and folds are skipped, an unfinished one resumes. A command whose settings differ from RUN/config.json is refused, naming the difference.

            Exit status:
              0   done
              1   an error, one line each on stderr
              3   the loss became NaN/Inf; the last good checkpoint is kept
              4   a collective waited past --step-timeout: a peer died, hung or is
                  unreachable, and the job was ended
              64  bad command line
              75  stopped on request (SIGTERM/SIGUSR1) after checkpointing the trainings
                  in progress: rerun the same command to continue
            """
    )

    @Argument(parsing: .captureForPassthrough, help: ArgumentHelp("The options below.", valueName: "options"))
    var arguments: [String] = []

    /// The built-in default's settings; given options come after them and override them.
    static let demoSettings = [
        "--feature-scale", "16", "--patch", "48x48x32", "--batch", "2", "--epochs", "120",
        "--samples-per-case", "2", "--lr", "5e-3", "--schedule", "poly", "--foreground-fraction", "0.67",
        "--augment", "none", "--val-every", "20", "--seed", "0", "--folds", "4",
    ]

    func run() throws {
        if arguments.contains("--help") || arguments.contains("-h") {
            print(
                AttuNet.helpMessage(for: Transfer.self) + "\n\nOptions:\n\n"
                    + TransferExperimentOptions.helpMessage(columns: nil))
            return
        }
        func given(_ name: String) -> Bool { arguments.contains { $0 == name || $0.hasPrefix(name + "=") } }
        guard given("--source") == given("--target") else {
            throw ValidationError("give both --source and --target stores, or neither for the built-in phantom cohorts")
        }
        if given("--classes") {
            throw ValidationError(
                "--classes: the models' classes come from the stores (source for the source training, target for the folds)"
            )
        }
        let builtIn = !given("--source")
        let options: TransferExperimentOptions
        do { options = try TransferExperimentOptions.parse((builtIn ? Self.demoSettings : []) + arguments) } catch {
            throw ValidationError(TransferExperimentOptions.message(for: error))
        }
        try options.run(builtIn: builtIn, foldParallelGiven: given("--fold-parallel"))
    }
}

/// The options of `attunet experiment transfer`.
struct TransferExperimentOptions: ParsableArguments {
    @Option(
        help: "Source store (from attunet prepare): the cohort the models are trained on first (the paper: CT-150).")
    var source: String?

    @Option(help: "Target store: the cohort of the folds (the paper: TCIA Pancreas-CT).")
    var target: String?

    @Option(help: "Run folder.")
    var out: String = "runs/transfer"

    @Option(
        help:
            "Comma-separated models, each run through all three protocols: attention-unet, unet, unet-capacity-matched, unet-10m."
    )
    var models: String = "attention-unet,unet"

    @Option(
        help: ArgumentHelp(
            "Source class SRC becomes target class DST (background implied); default: by class name.",
            valueName: "SRC:DST,..."))
    var labelMap: String?

    @Option(help: "Folds of the target cohort (the paper: 4 on TCIA-82).")
    var folds: Int = 4

    @Option(help: "Fine-tuning (AFT) epochs per fold; default: half of --epochs.")
    var finetuneEpochs: Int?

    @Option(help: "Fine-tuning base learning rate, under --schedule; default: --lr / 5.")
    var finetuneLr: Double?

    @Option(help: "Fine-tuning: parameters that keep the source's values (encoder or none).")
    var freeze: FreezeKind = .none

    @Option(
        help: ArgumentHelp(
            "Fine-tuning: base learning rate of the parameters that start fresh; default: --finetune-lr.",
            valueName: "rate"))
    var headLr: Double?

    @Option(
        help: ArgumentHelp(
            "Groups of ranks training side by side (the source models, then each protocol's folds); must divide the ranks. The built-in default (no --source and --target) runs as many groups as ranks.",
            valueName: "G"))
    var foldParallel: Int = 1

    @Option(help: "ASSD/HD95 definition: pooled (medpy) or max-directed (DeepMind surface-distance).")
    var distanceDefinition: SurfaceDistanceDefinition = .pooled

    @OptionGroup var architecture: ArchitectureOptions

    @OptionGroup var training: TrainingOptions

    func validate() throws {
        guard folds >= 2 else { throw ValidationError("--folds must be at least 2") }
        guard training.epochs >= 1 else { throw ValidationError("--epochs must be at least 1") }
        if let n = finetuneEpochs {
            guard n >= 1 else { throw ValidationError("--finetune-epochs must be at least 1") }
        }
        for (v, name) in [(finetuneLr, "--finetune-lr"), (headLr, "--head-lr")] {
            if let v { guard v > 0, v.isFinite else { throw ValidationError("\(name) must be a positive number") } }
        }
        guard foldParallel >= 1 else { throw ValidationError("--fold-parallel must be at least 1") }
        if training.stopAfterEpochs != nil {
            throw ValidationError(
                "--stop-after-epochs: experiment transfer runs many trainings; stop it with SIGUSR1 or SIGTERM (every rank checkpoints, exit 75) and rerun the same command to continue"
            )
        }
        _ = try architecture.kinds(models)
        if let labelMap {
            do { _ = try LabelMap(parsing: labelMap) } catch let e as AttunetError { throw ValidationError(e.message) }
        }
    }

    /// The built-in cohorts in `out/data`: made and prepared unless already there. Returns (source, target) stores.
    func builtInStores(comm: Communicator) throws -> (String, String) {
        let data = out + "/data"
        var site = PhantomOptions()
        site.inPlaneSpacing = 1.2
        site.sliceThickness = 5
        site.noiseHU = 40
        site.pancreasHU = 125
        site.liverHU = 80
        site.kidneyHU = 230
        site.organScale = 0.75
        site.labels = .pancreas
        let cohorts: [(name: String, cases: Int, seed: UInt64, options: PhantomOptions)] = [
            ("source", 20, 1, PhantomOptions()), ("target", 16, 2, site),
        ]
        var stores: [String] = []
        for c in cohorts {
            let folder = "\(data)/\(c.name)"
            let store = "\(data)/\(c.name)_4mm.h5"
            stores.append(store)
            if FileManager.default.fileExists(atPath: store) {
                if comm.isRoot { print("transfer: \(store) exists, kept") }
                continue
            }
            if comm.isRoot && !FileManager.default.fileExists(atPath: folder + "/dataset.json") {
                let t0 = Date()
                try Phantom.writeDataset(to: folder, count: c.cases, seed: c.seed, options: c.options)
                print(
                    "transfer: \(c.name) cohort: \(c.cases) phantoms (seed \(c.seed); \(c.options.summary)) in \(folder), \(fmt(Date().timeIntervalSince(t0), 1)) s"
                )
            }
            try comm.barrier()
            var o = PrepareOptions()
            o.spacing = 4
            o.threads = max(1, ProcessInfo.processInfo.activeProcessorCount / comm.size)
            o.classNames = c.options.labels.classNames
            let t0 = Date()
            _ = try CasePreparer.run(
                input: try DatasetInput.folder(folder), out: store, options: o, skipBad: false, comm: comm,
                progress: nil)
            if comm.isRoot { print("transfer: prepared \(store) at 4 mm in \(fmt(Date().timeIntervalSince(t0), 1)) s") }
        }
        return (stores[0], stores[1])
    }

    func run(builtIn: Bool, foldParallelGiven: Bool) throws {
        Parallelism.threads = training.threads
        let comm = try MPICommunicator()
        let (sourcePath, targetPath) = builtIn ? try builtInStores(comm: comm) : (source!, target!)
        let sourceStore = try CaseStore(path: sourcePath)
        let targetStore = try CaseStore(path: targetPath)
        let map: LabelMap
        if let labelMap {
            map = try LabelMap(parsing: labelMap)
        } else {
            guard let m = LabelMap.matchingNames(source: sourceStore.classNames, target: targetStore.classNames) else {
                throw AttunetError(
                    "\(targetPath): the target's classes (\(targetStore.classNames.dropFirst().joined(separator: ", "))) are not all among the source's (\(sourceStore.classNames.dropFirst().joined(separator: ", ")), \(sourcePath)) by name; pass --label-map SRC:DST,..."
                )
            }
            map = m
        }
        if comm.isRoot {
            let names = map.pairs.map {
                "\($0) (\(sourceStore.classNames[safe: $0.source] ?? "?") → \(targetStore.classNames[safe: $0.target] ?? "?"))"
            }
            print("transfer: label map \(names.joined(separator: ", "))\(labelMap == nil ? ", by class name" : "")")
        }
        var template = training.config(
            store: sourcePath, model: architecture.config(.attentionUNet), trainCases: [], validationCases: [])
        template.model.classes = sourceStore.classNames.count
        let ftEpochs = finetuneEpochs ?? max(1, training.epochs / 2)
        let config = TransferExperimentConfig(
            sourceStore: sourcePath, sourceFingerprint: sourceStore.fingerprint,
            targetStore: targetPath, targetFingerprint: targetStore.fingerprint,
            models: try architecture.kinds(models).map { k in
                var m = architecture.config(k)
                m.classes = sourceStore.classNames.count
                return m
            },
            folds: folds, labelMap: map, validationFraction: training.valFraction,
            distanceDefinition: distanceDefinition,
            training: template, fineTuneEpochs: ftEpochs, fineTuneLearningRate: finetuneLr ?? training.lr / 5,
            freeze: freeze, headLearningRate: headLr)
        let experiment = TransferExperiment(config: config, comm: comm, folder: RunFolder(path: out))
        experiment.foldParallel = builtIn && !foldParallelGiven ? comm.size : foldParallel
        experiment.context = training.context
        experiment.context.resumeHint = TransferExperiment.resumeHint
        Trainer.installStopHandlers()
        let t0 = Date()
        try experiment.run()
        if comm.isRoot { print("transfer: done in \(formatDuration(Date().timeIntervalSince(t0)))") }
    }
}

extension Array {
    subscript(safe i: Int) -> Element? { indices.contains(i) ? self[i] : nil }
}
