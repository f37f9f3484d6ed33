import ArgumentParser
import Collectives
import DataPipeline
import Foundation
import Inference
import Support
import Tensor
import Training
import Workflows

/// `attunet predict`: segment CT volumes with a checkpoint, an ensemble, or a cross-validation's folds.
struct Predict: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Segment CT volumes with a checkpoint, an ensemble or a CV's folds.",
        discussion: """
            Models: --checkpoint (repeat it for an ensemble), or --cv-dir, a folder written by attunet cv: the ensemble of every fold's checkpoint_best.h5 of the run's first model, as nnU-Net ensembles its folds (--model, --folds and --which choose others). An ensemble averages the softmax outputs; its members must share the architecture, the classes and the preprocessing.

            Input: --input, a NIfTI file or a folder of them (.nii/.nii.gz), or --store, the cases of a case store (all, or --cases). Cases are named by the rule attunet prepare uses: the file name without .nii/.nii.gz and without nnU-Net's channel suffix _0000, so imagesTs/case_0000.nii.gz is written as case.nii.gz and attunet evaluate --ref labelsTs pairs it. Files of a second channel (_0001 and up) are refused: the models take one channel.

            Preprocessing comes from the checkpoint: every checkpoint records its prediction recipe (the spacing and pre-blur its training store was prepared with, the normalisation, the classes, the training patch and the axes training mirrored along), and each NIfTI image is resampled and normalised by attunet prepare's own image path with it. A --spacing or --blur-sigma that conflicts with the recipe is refused, naming both values, unless --force. A checkpoint written before attunet recorded recipes (or made by import-weights) is refused unless both --spacing and --blur-sigma are given.

            The sliding window tiles the volume with the training patch (--patch to change it) and blends the tiles' softmax with a Gaussian weight (--overlap). --tta averages the flips along the axes training mirrored along; a model trained without flips (--augment none) is refused, since flipped images are new to it, unless the axes are named with --tta-axes.

            Output in --out, per case: <case>.nii.gz, uint8 labels on the source's grid with its affine and qform/sform codes (a store case's source file when it is still where prepare read it, else scanner/scanner), read back and checked against the source. With --save-probabilities, probabilities/<case>.nii.gz: float32, 4-D (x, y, z, class), the class probabilities on the source grid. With --save-attention, attention/<case>_<gate>.nii.gz and .png: the attention gates' maps on the resampled grid, and 12 axial slices with the map overlaid. Only the label maps lie in --out itself, so attunet evaluate --pred OUT pairs them alone. Existing outputs are refused unless --force.

            Postprocessing: with --cv-dir, the run's postprocessing.json (written by attunet postprocess) is applied to each label map before it is written, and a line says so; --no-postprocess writes the labels as predicted. --postprocess FILE applies a postprocessing.json to any checkpoint of a model it was decided for, with the same classes; another model or other classes are refused. It keeps, per class, the largest connected component(s) or removes the small ones, on the grid the labels are written on; the probabilities are written as predicted.

              attunet predict --cv-dir runs/cv --input Dataset007/imagesTs \\
                  --out pred
              attunet predict --checkpoint runs/demo/checkpoint_best.h5 \\
                  --input scan.nii.gz --out pred --tta
              mpirun -np 2 --bind-to none -x OPENBLAS_NUM_THREADS=1 \\
                  attunet predict --store phantoms.h5 --cv-dir runs/cv --out pred

            Under mpirun, rank r takes cases r, r+p, ...; rank 0 prints one line per case (seconds, peak resident memory of the rank that predicted it) and a summary.

            Exit status:
              0   every case was written
              1   an error, one line naming the file: bad input, a refused checkpoint
                  or option, a failed case
              64  the command line itself is wrong (an unknown option, an invalid value)
            """
    )

    @Option(help: "A NIfTI image (.nii/.nii.gz) or a folder of them.")
    var input: String?

    @Option(help: "A case store (from attunet prepare) to predict instead of --input.")
    var store: String?

    @Option(help: "Comma-separated case ids of --store (default: all).")
    var cases: String?

    @Option(name: .customLong("checkpoint"), help: "A checkpoint (.h5); repeat for an ensemble.")
    var checkpoints: [String] = []

    @Option(help: "A cross-validation folder (attunet cv --out): ensemble its folds' checkpoints.")
    var cvDir: String?

    @Option(help: "With --cv-dir: the model whose folds to ensemble (default: the run's first model).")
    var model: String?

    @Option(help: "With --cv-dir: all, or comma-separated fold indices as in fold_<k> (e.g. 0,2).")
    var folds: String = "all"

    @Option(help: "With --cv-dir: best (checkpoint_best.h5, what cv scored) or latest (checkpoint_latest.h5).")
    var which: FoldEnsemble.Which = .best

    @Option(help: "Output folder.")
    var out: String

    @Option(help: "Tile size XxYxZ, each a multiple of 16 (default: the training patch the checkpoint records).")
    var patch: Dim3?

    @Option(help: "Overlap of neighbouring tiles, in [0, 1).")
    var overlap: Double = 0.5

    @Flag(help: "Test-time augmentation: average the flips along the axes training mirrored along.")
    var tta = false

    @Option(
        help: "Test-time augmentation along exactly these axes (e.g. x,y or x,y,z), even ones training never flipped.")
    var ttaAxes: String?

    @Option(
        help:
            "Spacing in mm to resample NIfTI inputs to (default: the checkpoint's recipe; needed for a checkpoint without one)."
    )
    var spacing: Double?

    @Option(
        help:
            "Gaussian pre-blur sigma in mm before resampling (default: the checkpoint's recipe; needed for a checkpoint without one)."
    )
    var blurSigma: Double?

    @Flag(help: "Also write the class probabilities on the source grid, one 4-D float32 NIfTI per case.")
    var saveProbabilities = false

    @Flag(help: "Also write the attention gates' maps (Attention U-Net only) as NIfTI and PNG.")
    var saveAttention = false

    @Option(
        help:
            "A postprocessing.json (attunet postprocess) to apply to each label map before it is written; its model and classes must be the checkpoints'."
    )
    var postprocess: String?

    @Flag(help: "With --cv-dir: do not apply the run's postprocessing.json.")
    var noPostprocess = false

    @Flag(
        help:
            "Overwrite existing outputs; accept a --spacing or --blur-sigma that conflicts with the checkpoint's recipe."
    )
    var force = false

    @Option(name: .customLong("threads"), help: "Threads per rank: every layer's work is spread over them.")
    var threadCount = RankThreadCount.fromEnvironment
    var threads: Int { threadCount.value }

    func validate() throws {
        guard (input == nil) != (store == nil) else { throw ValidationError("give exactly one of --input and --store") }
        if cases != nil && store == nil { throw ValidationError("--cases selects cases of --store") }
        guard checkpoints.isEmpty != (cvDir == nil) else {
            throw ValidationError("give --checkpoint (one or more) or --cv-dir")
        }
        if cvDir == nil && (model != nil || folds != "all") {
            throw ValidationError("--model and --folds choose the folds of --cv-dir")
        }
        guard (0..<1).contains(overlap) else { throw ValidationError("--overlap must be in [0, 1)") }
        if let spacing, !(spacing > 0 && spacing.isFinite) { throw ValidationError("--spacing must be positive") }
        if let blurSigma, !(blurSigma >= 0) { throw ValidationError("--blur-sigma must be at least 0") }
        if store != nil && (spacing != nil || blurSigma != nil) {
            throw ValidationError(
                "--spacing and --blur-sigma resample NIfTI inputs; the cases of --store are prepared already")
        }
        if tta && ttaAxes != nil { throw ValidationError("give --tta (the training's axes) or --tta-axes, not both") }
        _ = try mirrorAxes()
        do { _ = try FoldEnsemble.folds(parsing: folds) } catch let e as AttunetError {
            throw ValidationError(e.message)
        }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        if noPostprocess && (cvDir == nil || postprocess != nil) {
            throw ValidationError(
                "--no-postprocess skips the postprocessing.json of --cv-dir (and excludes --postprocess)")
        }
    }

    func mirrorAxes() throws -> MirrorAxes? {
        guard let ttaAxes else { return nil }
        let names = ttaAxes.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard let axes = MirrorAxes(names: names), !names.isEmpty else {
            throw ValidationError("--tta-axes: '\(ttaAxes)' is not a list of axes (x, y, z; e.g. x,y)")
        }
        return axes
    }

    func run() throws {
        Parallelism.threads = threads
        let comm = try MPICommunicator()
        var settings = PredictionSettings()
        settings.patch = patch
        settings.overlap = overlap
        settings.tta = tta
        settings.ttaAxes = try mirrorAxes()
        settings.spacing = spacing
        settings.blurSigma = blurSigma
        settings.force = force
        settings.saveProbabilities = saveProbabilities
        settings.saveAttention = saveAttention
        var models = checkpoints.count > 1 ? "an ensemble of \(checkpoints.count) checkpoints" : checkpoints.first ?? ""
        var paths = checkpoints
        var modelName: String? = nil
        if let cvDir {
            let e = try FoldEnsemble(
                run: cvDir, model: model, folds: try FoldEnsemble.folds(parsing: folds), which: which)
            paths = e.checkpoints
            modelName = e.model
            models =
                "\(e.model) folds \(e.folds.map(String.init).joined(separator: ",")) of \(cvDir) (\(which.rawValue))"
        }
        let caseStore = try store.map { try CaseStore(path: $0) }
        let predictor = try Predictor(checkpoints: paths, settings: settings, store: caseStore)
        // The postprocessing: --postprocess FILE, else the run's postprocessing.json when it exists.
        var postprocessing: String? = postprocess
        if postprocessing == nil, !noPostprocess, let cvDir {
            let file = RunFolder(path: cvDir).postprocessing.path
            if FileManager.default.fileExists(atPath: file) { postprocessing = file }
        }
        if let file = postprocessing {
            predictor.postprocessing = try PostprocessingPlan.load(file).postprocessing(
                model: modelName ?? predictor.modelConfig.kind.rawValue,
                classNames: Array(predictor.recipe.classNames.dropFirst()), file: file)
        }
        let ids = cases.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
        let items = try input.map(PredictionCase.files) ?? PredictionCase.stored(caseStore!, ids: ids)
        try predictor.checkOutputs(items, in: out, force: force)
        if comm.isRoot {
            let r = predictor.recipe
            let tile = predictor.options.patch
            let grid =
                input != nil
                ? "; inputs resampled to \(fmtShort(r.spacingMM)) mm, pre-blur \(fmtShort(r.blurSigmaMM)) mm (\(predictor.recipeSource))"
                : ""
            let flips =
                predictor.options.tta
                ? ", TTA flips along \(predictor.options.mirrorAxes.names.joined(separator: ","))" : ""
            print(
                "predict: \(items.count) case(s) on \(comm.size) rank(s) with \(models); tiles \(tile), overlap \(overlap)\(flips)\(grid)"
            )
        }
        if comm.isRoot, let file = postprocessing, let p = predictor.postprocessing {
            print("predict: postprocessing the labels with \(file): \(p.summary)")
        } else if comm.isRoot, noPostprocess {
            print("predict: --no-postprocess: the labels are written as predicted")
        }
        try predictor.run(items, into: out, comm: comm)
    }
}

extension FoldEnsemble.Which: ExpressibleByArgument {}
