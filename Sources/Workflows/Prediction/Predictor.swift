import Collectives
import DataPipeline
import Evaluation
import Foundation
import HDF5Kit
import Inference
import NN
import Support
import Tensor
import Training

/// What a prediction asks for beyond the checkpoints: the tiling, test-time augmentation, explicit
/// preprocessing (only for checkpoints that record none, or with ``force``), and the optional outputs.
public struct PredictionSettings: Sendable {
    /// Tile size (nil: the training patch the checkpoint records).
    public var patch: Dim3?
    /// Overlap of neighbouring tiles, in [0, 1).
    public var overlap: Double = 0.5
    /// Mirror test-time augmentation along the axes training mirrored along (the recipe's).
    public var tta = false
    /// Mirror along exactly these axes, even those training never flipped (an explicit request).
    public var ttaAxes: MirrorAxes?
    /// Spacing in mm to resample NIfTI inputs to: required for a checkpoint without a recipe; refused when
    /// it conflicts with the recipe's, unless ``force``.
    public var spacing: Double?
    /// Pre-blur sigma in mm, as ``spacing``.
    public var blurSigma: Double?
    /// Accept a ``spacing`` or ``blurSigma`` that conflicts with the recipe.
    public var force = false
    /// Also write the class probabilities on the source grid (one 4-D NIfTI per case).
    public var saveProbabilities = false
    /// Also write the attention gates' maps (Attention U-Net only).
    public var saveAttention = false
    /// A stored case whose store records no source geometry is written on the stored grid, with the store's
    /// affine, instead of refused: what `cv` does with its test cases, so that a store prepared before attunet
    /// recorded the source geometry still cross-validates.
    public var storedGridWithoutSource = false

    public init() {}
}

/// One case to predict: a NIfTI file, or a case of a store.
public struct PredictionCase: Sendable {
    public enum Source: Sendable {
        case file(String)
        case stored(CaseStore, Int)
    }

    /// The case id: the output file's name (``DatasetInput/caseID(fileName:)`` for files).
    public var id: String
    public var source: Source

    public init(id: String, source: Source) {
        self.id = id
        self.source = source
    }

    /// The NIfTI files of `path` (a file, or a folder's `.nii` / `.nii.gz` files sorted by name), named by case id.
    /// Files of a second input channel (`_0001` and up) are refused, and two files that make one id.
    public static func files(_ path: String) throws -> [PredictionCase] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw AttunetError("\(path): no such file or folder")
        }
        let files =
            isDir.boolValue
            ? try FileManager.default.contentsOfDirectory(atPath: path).sorted()
                .filter { DatasetInput.caseID(fileName: $0) != nil }.map { "\(path)/\($0)" }
            : [path]
        if files.isEmpty { throw AttunetError("\(path): no .nii or .nii.gz files") }
        var cases: [PredictionCase] = []
        var byID: [String: String] = [:]
        for f in files {
            try DatasetInput.checkSingleChannel(f)
            let name = URL(fileURLWithPath: f).lastPathComponent
            guard let id = DatasetInput.caseID(fileName: name) else {
                throw AttunetError("\(f): not a .nii or .nii.gz file")
            }
            if let other = byID[id] { throw AttunetError("\(f): makes the case '\(id)' as \(other) does; rename one") }
            byID[id] = f
            cases.append(PredictionCase(id: id, source: .file(f)))
        }
        return cases
    }

    /// The cases `ids` of `store` (nil: all), in that order.
    public static func stored(_ store: CaseStore, ids: [String]?) throws -> [PredictionCase] {
        try (ids ?? store.cases.map(\.id)).map { id in
            guard let i = store.index(of: id) else { throw AttunetError("\(store.path): no case '\(id)'") }
            return PredictionCase(id: id, source: .stored(store, i))
        }
    }
}

/// Segments cases with one network or an ensemble, as training saw its images: NIfTI inputs resampled and
/// normalised by `prepare`'s image path with the checkpoint's ``PredictionRecipe``, tiled by the sliding
/// window, and the labels (and probabilities, attention maps) written on the source's grid. `attunet predict`
/// and the cross-validation's test cases use it.
public final class Predictor {
    /// The checkpoints of the ensemble (empty when built from networks in memory).
    public let checkpoints: [String]
    /// The preprocessing in use: the checkpoints' recipe, or the explicit values for one that records none.
    public let recipe: PredictionRecipe
    /// Where ``recipe``'s spacing came from (for the header line): "checkpoint", "--spacing" or "--spacing, --force".
    public let recipeSource: String
    public let options: SlidingWindowOptions
    public let settings: PredictionSettings
    /// Architecture and classes (one across the ensemble).
    public let modelConfig: ModelConfig
    /// Applied to each label map on the grid it is written on, before it is written (the probabilities are
    /// written as predicted): `predict --postprocess`, or the `postprocessing.json` of `predict --cv-dir`
    /// (``PostprocessingPlan/postprocessing(model:classNames:file:)`` checks that it fits this model).
    public var postprocessing: LabelPostprocessing?
    /// Leave an output that exists as it is and write only the missing ones (a cross-validation completing a
    /// finished fold's test predictions on a restart).
    public var keepsExistingOutputs = false
    let sliding: SlidingWindowPredictor

    /// Networks in memory with their recipe (the cross-validation's fold model).
    public init(
        networks: [SegmentationModel], recipe: PredictionRecipe, options: SlidingWindowOptions,
        settings: PredictionSettings = PredictionSettings()
    ) throws {
        guard let first = networks.first else { throw AttunetError("predict: no network") }
        checkpoints = []
        self.recipe = recipe
        recipeSource = "checkpoint"
        self.options = options
        self.settings = settings
        modelConfig = first.config
        sliding = try SlidingWindowPredictor(networks: networks, options: options)
    }

    /// Loads the checkpoints (verified), checks that they form one ensemble and resolves the recipe, the tile
    /// and the mirror axes against `settings`. With `store` (its cases are the inputs, already prepared) the
    /// store's spacing must be the recipe's, and it stands in for the recipe of a checkpoint that records none.
    /// Every refusal is one line naming a checkpoint.
    public init(checkpoints: [String], settings: PredictionSettings, store: CaseStore? = nil) throws {
        guard let firstPath = checkpoints.first else { throw AttunetError("predict: give at least one checkpoint") }
        var models: [SegmentationModel] = []
        var recipes: [PredictionRecipe] = []
        var source = "checkpoint"
        for path in checkpoints {
            let m = try Checkpoint.load(path)
            if let first = models.first {
                let a = first.config
                let b = m.config
                guard a.kind == b.kind, a.classes == b.classes, a.inChannels == b.inChannels else {
                    throw AttunetError(
                        "\(path): \(b.kind.rawValue) with \(b.classes) classes and \(b.inChannels) input channel(s) differs from \(firstPath) (\(a.kind.rawValue), \(a.classes) classes, \(a.inChannels) input channel(s)); an ensemble needs one architecture and one set of classes"
                    )
                }
            }
            let (r, s) = try Self.recipe(of: path, model: m.config, settings: settings, store: store)
            if let first = recipes.first {
                for (what, x, y) in [
                    ("spacing", first.spacingMM, r.spacingMM), ("pre-blur", first.blurSigmaMM, r.blurSigmaMM),
                ] where x != y {
                    throw AttunetError(
                        "\(path): trained at \(what) \(fmtShort(y)) mm, \(firstPath) at \(fmtShort(x)) mm; an ensemble needs one preprocessing"
                    )
                }
                guard first.normalization == r.normalization, first.classNames == r.classNames else {
                    throw AttunetError(
                        "\(path): normalisation \(r.normalization) and classes \(r.classNames.joined(separator: ", ")) differ from \(firstPath)'s (\(first.normalization); \(first.classNames.joined(separator: ", ")))"
                    )
                }
            }
            models.append(m)
            recipes.append(r)
            source = s
        }
        var recipe = recipes[0]
        // Training flips in an ensemble: only the axes every member was trained to see mirrored.
        recipe.mirrorAxes = recipe.mirrorAxes.filter { a in recipes.allSatisfy { $0.mirrorAxes.contains(a) } }
        var options = SlidingWindowOptions(
            patch: settings.patch ?? recipe.patch, overlap: settings.overlap,
            keepProbabilities: settings.saveProbabilities, attentionMaps: settings.saveAttention)
        options.mirrorAxes = try Self.mirrorAxes(settings, trained: recipe.mirrorAxes, checkpoint: firstPath)
        try options.validate()
        if settings.saveAttention, models[0].config.kind != .attentionUNet {
            throw AttunetError(
                "\(firstPath): --save-attention needs an Attention U-Net, this is \(models[0].config.kind.rawValue)")
        }
        self.checkpoints = checkpoints
        self.recipe = recipe
        recipeSource = source
        self.options = options
        self.settings = settings
        modelConfig = models[0].config
        sliding = try SlidingWindowPredictor(networks: models, options: options)
    }

    /// The recipe `path` records, with the explicit values checked against it; for a checkpoint without one,
    /// the explicit spacing and pre-blur (both required) around what else it records.
    static func recipe(
        of path: String, model: ModelConfig, settings: PredictionSettings,
        store: CaseStore?
    ) throws -> (PredictionRecipe, String) {
        let file = try H5File.open(path)
        let recorded = try PredictionRecipe.read(from: file)
        var settings = settings
        if let store {
            // Stored cases are prepared already: the store's spacing is what the network will see.
            if let r = recorded, abs(store.spacing[0] - r.spacingMM) > 1e-9 * r.spacingMM,
                !settings.force
            {
                throw AttunetError(
                    "\(store.path): prepared at \(fmtShort(store.spacing[0])) mm, but \(path) was trained at \(fmtShort(r.spacingMM)) mm (its prediction recipe); prepare the cases at \(fmtShort(r.spacingMM)) mm, or add --force to predict anyway"
                )
            }
            settings.spacing = store.spacing[0]
            settings.blurSigma = store.blurSigma ?? 0
            settings.force = true
        }
        if var r = recorded {
            var source = "checkpoint"
            for (option, given, trained) in [
                ("--spacing", settings.spacing, r.spacingMM), ("--blur-sigma", settings.blurSigma, r.blurSigmaMM),
            ] {
                guard let given, abs(given - trained) > 1e-9 * max(1, trained) else { continue }
                guard settings.force else {
                    throw AttunetError(
                        "\(path): \(option) \(fmtShort(given)) conflicts with the \(fmtShort(trained)) mm the model was trained with (its prediction recipe); drop \(option), or add --force to predict with \(fmtShort(given)) mm anyway"
                    )
                }
                source = "\(option) with --force"
            }
            r.spacingMM = settings.spacing ?? r.spacingMM
            r.blurSigmaMM = settings.blurSigma ?? r.blurSigmaMM
            return (r, source)
        }
        guard let spacing = settings.spacing, let blur = settings.blurSigma else {
            throw AttunetError(
                "\(path): records no prediction recipe (written before attunet stored one, or made by import-weights); pass the spacing and pre-blur its training data was prepared with: --spacing MM --blur-sigma MM (attunet inspect STORE prints a case store's)"
            )
        }
        let config = TrainingCheckpoint.trainConfig(in: file)
        let names =
            TrainingCheckpoint.classNames(in: file) ?? (["background"] + (1..<model.classes).map { "class\($0)" })
        let mirror = config.map { PredictionRecipe.mirrorAxes(of: $0.augmentOptions) } ?? []
        return (
            PredictionRecipe(
                spacingMM: spacing, blurSigmaMM: blur, classNames: names,
                patch: config?.patch ?? Dim3(z: 96, y: 160, x: 160), mirrorAxes: mirror),
            store != nil ? "the store" : "--spacing"
        )
    }

    /// The axes test-time augmentation flips: explicit ``PredictionSettings/ttaAxes`` as given; `--tta` the
    /// axes training mirrored along, refused for a model trained without mirroring.
    static func mirrorAxes(_ s: PredictionSettings, trained: [String], checkpoint: String) throws -> MirrorAxes {
        if let axes = s.ttaAxes { return axes }
        guard s.tta else { return [] }
        guard !trained.isEmpty else {
            throw AttunetError(
                "\(checkpoint): --tta: the model was trained without mirroring (--augment none), so flipped images are new to it; pass --tta-axes x,y to flip anyway"
            )
        }
        guard let axes = MirrorAxes(names: trained) else {
            throw AttunetError(
                "\(checkpoint): unknown mirror axes \(trained.joined(separator: ",")) in the prediction recipe (x, y, z)"
            )
        }
        return axes
    }

    /// The case segmented on the store's grid (labels and probabilities in memory), normalised as training
    /// normalises: what the cross-validation scores against the store's labels.
    public func segment(store: CaseStore, case c: Int) throws -> Prediction {
        try sliding.predict(store: store, case: c)
    }

    /// The files ``predict(_:into:)`` writes for case `id` directly (attention maps aside).
    public func outputs(_ id: String, in out: String) -> [String] {
        ["\(out)/\(id).nii.gz"] + (settings.saveProbabilities ? ["\(out)/probabilities/\(id).nii.gz"] : [])
    }

    /// Refuses existing outputs of `cases` in `out` (checked before the first prediction), unless `force`.
    public func checkOutputs(_ cases: [PredictionCase], in out: String, force: Bool) throws {
        guard !force else { return }
        let fm = FileManager.default
        if let existing = cases.flatMap({ outputs($0.id, in: out) }).first(where: { fm.fileExists(atPath: $0) }) {
            throw AttunetError("\(existing) exists: pass --force to overwrite")
        }
        // Attention maps are named after the gates: any file of a case in attention/ counts as existing.
        if settings.saveAttention, let listed = try? fm.contentsOfDirectory(atPath: "\(out)/attention"),
            let existing = listed.sorted().first(where: { f in cases.contains { f.hasPrefix("\($0.id)_") } })
        {
            throw AttunetError("\(out)/attention/\(existing) exists: pass --force to overwrite")
        }
    }

    /// Where a case's outputs go: the source grid (and the source file to check them against), or the stored
    /// grid of a case without source geometry (``PredictionSettings/storedGridWithoutSource``).
    struct Placement {
        var geometry: SourceGeometry?
        /// The stored grid's affine (for the attention maps, and the labels of a case without source geometry).
        var storedAffine: [Double]
        var codes: XformCodes
        var sourcePath: String?
    }

    /// The placement of case `c` of `store`: the source file's own codes when it is still where prepare read
    /// it (checked against the store's record of its size and affine); else scanner anatomy for both.
    func placement(store: CaseStore, case c: Int) throws -> Placement {
        let geometry: SourceGeometry
        do { geometry = try SourceGeometry(store: store, case: c) } catch  where settings.storedGridWithoutSource {
            return Placement(geometry: nil, storedAffine: store.cases[c].affine, codes: .scanner, sourcePath: nil)
        }
        let recorded = store.cases[c].source
        if FileManager.default.fileExists(atPath: recorded) {
            return Placement(
                geometry: geometry, storedAffine: geometry.storedAffine,
                codes: try XformCodes.of(source: recorded, geometry: geometry), sourcePath: recorded)
        }
        return Placement(geometry: geometry, storedAffine: geometry.storedAffine, codes: .scanner, sourcePath: nil)
    }

    /// Segments one case and writes, in `out`: `<id>.nii.gz` (uint8 labels on the source's grid, with its
    /// affine and codes, read back and checked against the source file; postprocessed when the settings say
    /// so), and as asked `probabilities/<id>.nii.gz` (float32, 4-D: x, y, z, class) and
    /// `attention/<id>_<gate>.nii.gz` / `.png`. Returns the prediction on the grid the network saw (its labels
    /// not postprocessed).
    @discardableResult
    public func predict(_ item: PredictionCase, into out: String) throws -> Prediction {
        let prediction: Prediction
        let place: Placement
        let image: [Float]
        switch item.source {
        case .file(let path):
            let input = try SourceInput(
                path: path, id: item.id, spacing: recipe.spacingMM, blurSigma: recipe.blurSigmaMM,
                modality: recipe.modality)
            prediction = try sliding.predict(
                volume: input.image, shape: input.geometry.storedShape, padValue: input.padValue)
            place = Placement(
                geometry: input.geometry, storedAffine: input.geometry.storedAffine, codes: input.codes,
                sourcePath: path)
            image = input.image
        case .stored(let store, let c):
            place = try placement(store: store, case: c)
            let (normalized, pad) = try store.normalizedImage(c, normalization: .zscore)
            prediction = try sliding.predict(volume: normalized, shape: store.cases[c].shape, padValue: pad)
            image = normalized
        }
        try write(prediction, id: item.id, place: place, image: image, into: out)
        return prediction
    }

    /// Writes `prediction` of case `c` of `store` (made by ``segment(store:case:)``) into `out` as
    /// ``predict(_:into:)`` writes it (attention maps aside): the cross-validation scores a test case's labels
    /// in memory and keeps the same prediction on disk.
    public func write(_ prediction: Prediction, store: CaseStore, case c: Int, into out: String) throws {
        try write(prediction, id: store.cases[c].id, place: try placement(store: store, case: c), image: nil, into: out)
    }

    func write(_ prediction: Prediction, id: String, place: Placement, image: [Float]?, into out: String) throws {
        let labelPath = "\(out)/\(id).nii.gz"
        let probabilityPath = "\(out)/probabilities/\(id).nii.gz"
        if keepsExistingOutputs {
            let fm = FileManager.default
            if fm.fileExists(atPath: labelPath)
                && (!settings.saveProbabilities || fm.fileExists(atPath: probabilityPath))
            {
                return
            }
            if fm.fileExists(atPath: labelPath) {
                // Only the probabilities are missing.
                try writeProbabilities(prediction, place: place, to: probabilityPath)
                return
            }
        }
        if let geometry = place.geometry {
            if let post = postprocessing, !post.isIdentity {
                var labels = try SourceExport.labels(prediction, geometry: geometry)
                let s = geometry.sourceShape
                post.apply(to: &labels, dim: s, spacing: VoxelSpacing(geometry.sourceSpacing))
                try Self.writeLabels(labels, shape: s, affine: geometry.sourceAffine, codes: place.codes, to: labelPath)
            } else {
                try SourceExport.write(prediction, geometry: geometry, to: labelPath, codes: place.codes)
            }
            if let sourcePath = place.sourcePath { try Self.checkGeometry(labelPath, against: sourcePath) }
        } else {
            // No source geometry: the stored grid, as the network saw it.
            var labels = prediction.labels
            let s = prediction.shape
            if let post = postprocessing {
                let spacing = (0..<3).map { a in
                    (0..<3).reduce(0.0) { $0 + place.storedAffine[$1 * 4 + a] * place.storedAffine[$1 * 4 + a] }
                        .squareRoot()
                }
                post.apply(to: &labels, dim: s, spacing: VoxelSpacing(spacing))
            }
            try Self.writeLabels(labels, shape: s, affine: place.storedAffine, codes: place.codes, to: labelPath)
        }
        if settings.saveProbabilities { try writeProbabilities(prediction, place: place, to: probabilityPath) }
        if settings.saveAttention, let maps = prediction.attentionMaps, let image {
            let s = maps.shape
            for name in maps.names {
                let safe = String(name.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" ? $0 : "_" })
                var v = NIfTIVolume(
                    nx: s.x, ny: s.y, nz: s.z, affine: place.storedAffine, voxels: Array(maps.map(name)!))
                v.qformCode = place.codes.qform
                v.sformCode = place.codes.sform
                try v.write("\(out)/attention/\(id)_\(safe).nii.gz")
                try AttentionMontage.write(
                    image: image, attention: maps.map(name)!, shape: s, affine: place.storedAffine,
                    to: "\(out)/attention/\(id)_\(safe).png")
            }
        }
    }

    /// Writes the class probabilities (float32, 4-D: x, y, z, class) on the placement's grid.
    func writeProbabilities(_ prediction: Prediction, place: Placement, to path: String) throws {
        if let geometry = place.geometry {
            let p = try SourceExport.probabilities(prediction, geometry: geometry)
            let s = geometry.sourceShape
            try NIfTIVolume.write4D(
                path, nx: s.x, ny: s.y, nz: s.z, channels: prediction.classes, affine: geometry.sourceAffine,
                voxels: p, qformCode: place.codes.qform, sformCode: place.codes.sform)
        } else if let p = prediction.probabilities {
            let s = prediction.shape
            try NIfTIVolume.write4D(
                path, nx: s.x, ny: s.y, nz: s.z, channels: prediction.classes, affine: place.storedAffine,
                voxels: p, qformCode: place.codes.qform, sformCode: place.codes.sform)
        }
    }

    /// Writes a uint8 label map `[z][y][x]` of `shape` with `affine` and `codes`.
    static func writeLabels(_ labels: [UInt8], shape s: Dim3, affine: [Double], codes: XformCodes, to path: String)
        throws
    {
        var volume = NIfTIVolume(nx: s.x, ny: s.y, nz: s.z, affine: affine, voxels: labels.map(Float.init))
        volume.qformCode = codes.qform
        volume.sformCode = codes.sform
        try volume.write(path, as: .uint8)
    }

    /// Predicts `cases` into `out` over the ranks of `comm` (rank r takes cases r, r+p, ...). Rank 0 makes the
    /// folders and, with `verbose`, prints one line per case (seconds, peak resident memory of the rank that
    /// predicted it) and a summary. A failed case fails the run once every rank is done, with its error.
    public func run(_ cases: [PredictionCase], into out: String, comm: Communicator, verbose: Bool = true) throws {
        if comm.isRoot {
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            for (on, sub) in [(settings.saveProbabilities, "probabilities"), (settings.saveAttention, "attention")]
            where on {
                try FileManager.default.createDirectory(atPath: "\(out)/\(sub)", withIntermediateDirectories: true)
            }
        }
        try comm.barrier()
        let n = cases.count
        var stats = [Double](repeating: 0, count: n * 3)  // per case: seconds, peak RSS, failed
        var firstError: Error? = nil
        let started = Date()
        for i in stride(from: comm.rank, to: n, by: comm.size) {
            let t0 = Date()
            _ = Memory.resetPeak()
            do {
                try predict(cases[i], into: out)
            } catch {
                if firstError == nil { firstError = error }
                if !comm.isRoot {
                    let lines = (error as? AttunetError)?.lines ?? ["\(error)"]
                    FileHandle.standardError.write(Data(lines.map { "error: \($0)\n" }.joined().utf8))
                }
                stats[i * 3 + 2] = 1
            }
            stats[i * 3] = Date().timeIntervalSince(t0)
            stats[i * 3 + 1] = Double(Memory.peakResidentBytes() ?? 0)
        }
        try stats.withUnsafeMutableBufferPointer { try comm.allReduceSum($0) }
        if comm.isRoot && verbose {
            for i in 0..<n {
                let status = stats[i * 3 + 2] > 0 ? "FAILED" : "\(out)/\(cases[i].id).nii.gz"
                print(
                    "  \(cases[i].id)  \(fmt(stats[i * 3], 2)) s  peak RSS \(Memory.format(Int(stats[i * 3 + 1])))  rank \(i % comm.size)  \(status)"
                )
            }
        }
        let failed = (0..<n).filter { stats[$0 * 3 + 2] > 0 }.count
        if failed > 0 {
            if let firstError { throw firstError }
            throw AttunetError("\(failed) of \(n) case(s) failed on other ranks (their errors are above)")
        }
        if comm.isRoot && verbose {
            let peak = (0..<n).map { stats[$0 * 3 + 1] }.max() ?? 0
            let busy = (0..<n).map { stats[$0 * 3] }.reduce(0, +)
            print(
                "predict: \(n) case(s) in \(fmt(Date().timeIntervalSince(started), 1)) s, \(fmt(busy, 1)) s of prediction; peak RSS \(Memory.format(Int(peak))); labels in \(out)"
            )
        }
    }

    /// The written labels must carry the input's size, affine and codes: a mismatch is an error, never a warning.
    public static func checkGeometry(_ path: String, against source: String) throws {
        let a = try NIfTIVolume.readGeometry(path)
        let b = try NIfTIVolume.readGeometry(source)
        guard [a.nx, a.ny, a.nz] == [b.nx, b.ny, b.nz] else {
            throw AttunetError(
                "\(path): size \(a.nx)x\(a.ny)x\(a.nz) differs from its input \(source) (\(b.nx)x\(b.ny)x\(b.nz))")
        }
        for i in 0..<12 where abs(a.affine[i] - b.affine[i]) > 1e-4 * max(1, abs(b.affine[i])) {
            throw AttunetError(
                "\(path): affine row \(i / 4) column \(i % 4) is \(a.affine[i]), its input \(source) has \(b.affine[i])"
            )
        }
        guard a.qformCode == b.qformCode, a.sformCode == b.sformCode else {
            throw AttunetError(
                "\(path): qform/sform codes \(a.qformCode)/\(a.sformCode) differ from its input \(source) (\(b.qformCode)/\(b.sformCode))"
            )
        }
    }
}
