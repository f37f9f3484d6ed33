import ArgumentParser
import DataPipeline
import Collectives
import Foundation
import HDF5Kit
import Inference
import NN
import Support
import Tensor
import Training

/// `attunet predict`: segment CT volumes with one checkpoint or an ensemble, labels back on the source grid.
struct Predict: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Segment NIfTI volumes or store cases with a checkpoint (or an ensemble), labels on the source grid.",
        discussion: """
        Input: --input, a NIfTI file or a folder of them (.nii/.nii.gz, sorted by name), or --store, the cases
        of a case store (all, or --cases). Each NIfTI image is resampled as `attunet prepare` resamples (to the
        spacing of the store the checkpoint was trained on, read from the checkpoint's train_config when that
        store is at hand, else --spacing) and z-scored per case as training normalises patches. The
        sliding-window predictor tiles the volume with the training patch size (--patch; default the
        checkpoint's, else 160x160x96), blends the tiles' softmax with a Gaussian weight (--overlap) and,
        with --tta, averages the in-plane flips. Several --checkpoint options form an ensemble (e.g. the k
        fold models of a cross-validation): their softmax outputs are averaged; all must have the same
        architecture, input channels and classes.
        Output in --out, per case: <case>.nii.gz, uint8 labels on the source's grid with the source's affine
        as qform and sform, with the source file's own qform/sform codes (a store case's source file when it
        is still where prepare read it, else scanner/scanner); read back and checked against the source;
          --save-probabilities  probabilities/<case>_<c>.nii.gz, one float32 volume per class c on the
                                source grid (the NIfTI writer writes 3D volumes);
          --save-attention      attention/<case>_<gate>.nii.gz, the attention gates' alpha maps stitched as
                                the probabilities, on the resampled grid with its affine, and
                                attention/<case>_<gate>.png, 12 axial slices with alpha overlaid (jet),
                                anterior up, the patient's right on the left.
        Only the label maps lie in --out itself, so `attunet evaluate --pred OUT` pairs them alone.
        Existing outputs are refused unless --force.
          attunet predict --input phantoms/imagesTr --checkpoint runs/demo/checkpoint_best.h5 --out pred
          mpirun -np 2 --bind-to none -x OPENBLAS_NUM_THREADS=1 attunet predict --store phantoms.h5 \\
              --checkpoint runs/cv/fold0/checkpoint_best.h5 --checkpoint runs/cv/fold1/checkpoint_best.h5 --out pred
        Under mpirun, rank r takes cases r, r+p, ...; rank 0 prints one line per case (seconds, peak
        resident memory of the rank that predicted it) and a summary.
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

    @Option(help: "Output folder.")
    var out: String

    @Option(help: "Tile size XxYxZ, each a multiple of 16 (default: the checkpoint's training patch, else 160x160x96).")
    var patch: Dim3?

    @Option(help: "Overlap of neighbouring tiles, in [0, 1).")
    var overlap: Double = 0.5

    @Flag(help: "Test-time augmentation: average the flips along X and Y (4 passes per tile).")
    var tta = false

    @Option(help: "Spacing in mm that NIfTI inputs are resampled to when the checkpoint's training store is not at hand (default 2).")
    var spacing: Double?

    @Option(help: "Gaussian pre-blur sigma in mm before resampling NIfTI inputs (default: the training store's, else 0.5).")
    var blurSigma: Double?

    @Flag(help: "Also write the class probabilities on the source grid, one float32 NIfTI per class.")
    var saveProbabilities = false

    @Flag(help: "Also write the attention gates' maps (Attention U-Net only) as NIfTI on the resampled grid.")
    var saveAttention = false

    @Flag(help: "Overwrite existing outputs.")
    var force = false

    @Option(help: "Threads per rank: every layer's work is spread over them (default: ATTUNET_THREADS when set, else 1).")
    var threads: Int = PerRankThreads.fromEnvironment

    func validate() throws {
        guard (input == nil) != (store == nil) else { throw ValidationError("give exactly one of --input and --store") }
        if cases != nil && store == nil { throw ValidationError("--cases selects cases of --store") }
        guard !checkpoints.isEmpty else { throw ValidationError("give at least one --checkpoint") }
        guard (0..<1).contains(overlap) else { throw ValidationError("--overlap must be in [0, 1)") }
        if let spacing, !(spacing > 0 && spacing.isFinite) { throw ValidationError("--spacing must be positive") }
        if let blurSigma, !(blurSigma >= 0) { throw ValidationError("--blur-sigma must be at least 0") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
    }

    /// One case to predict: from a NIfTI file or a store.
    enum Source { case file(String), stored(Int) }

    func run() throws {
        Parallelism.threads = threads
        let comm = try MPICommunicator()

        // Networks: one architecture and class count across the ensemble.
        var models: [SegmentationModel] = []
        for path in checkpoints {
            let m = try Checkpoint.load(path)
            if let first = models.first {
                let a = first.config, b = m.config
                guard a.kind == b.kind, a.classes == b.classes, a.inChannels == b.inChannels else {
                    throw AttunetError("\(path): \(b.kind.rawValue) with \(b.classes) classes and \(b.inChannels) input channel(s) differs from \(checkpoints[0]) (\(a.kind.rawValue), \(a.classes) classes, \(a.inChannels) input channel(s)); an ensemble needs one architecture and one set of classes")
                }
            }
            models.append(m)
        }
        if saveAttention, models[0].config.kind != .attentionUNet {
            throw AttunetError("\(checkpoints[0]): --save-attention needs an Attention U-Net, this is \(models[0].config.kind.rawValue)")
        }
        let trainConfig: TrainConfig? = {
            guard let f = try? H5File.open(checkpoints[0]), let json = try? f.root.stringAttribute("train_config") else { return nil }
            return try? JSONDecoder().decode(TrainConfig.self, from: Data(json.utf8))
        }()
        let tile = patch ?? trainConfig?.patch ?? Dim3(z: 96, y: 160, x: 160)
        let options = SlidingWindowOptions(patch: tile, overlap: overlap, tta: tta, keepProbabilities: saveProbabilities,
                                           attentionMaps: saveAttention)
        try options.validate()
        let predictor = try SlidingWindowPredictor(networks: models, options: options)

        // Cases.
        var ids: [String] = [], sources: [Source] = []
        var caseStore: CaseStore? = nil
        var targetSpacing = spacing ?? 2, blur = blurSigma ?? 0.5, spacingFrom = spacing == nil ? "default" : "--spacing"
        if let input {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: input, isDirectory: &isDir) else { throw AttunetError("\(input): no such file or folder") }
            let files = isDir.boolValue
                ? try FileManager.default.contentsOfDirectory(atPath: input).filter(Self.isNIfTI).sorted().map { "\(input)/\($0)" }
                : [input]
            if files.isEmpty { throw AttunetError("\(input): no .nii or .nii.gz files") }
            for f in files { ids.append(Self.stem(f)); sources.append(.file(f)) }
            // The training store's spacing and blur, when the checkpoint names a store that is here.
            if let storePath = trainConfig?.store, let s = try? CaseStore(path: storePath) {
                if spacing == nil, let sp = s.spacing.first { targetSpacing = sp; spacingFrom = "training store \(storePath)" }
                if blurSigma == nil, let b = try? s.file.root.doublesAttribute("blur_sigma_mm").first { blur = b }
            }
        } else if let store {
            let s = try CaseStore(path: store)
            caseStore = s
            let all = s.cases.map(\.id)
            let chosen = cases.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } } ?? all
            for id in chosen {
                guard let i = all.firstIndex(of: id) else { throw AttunetError("\(store): no case '\(id)' (from --cases)") }
                ids.append(id); sources.append(.stored(i))
            }
        }
        if let dup = Dictionary(grouping: ids, by: { $0 }).first(where: { $0.value.count > 1 })?.key {
            throw AttunetError("\(input ?? store!): two inputs make the case '\(dup)' (the same file name)")
        }

        // Outputs: all checked before the first prediction.
        let k = models[0].config.classes
        func outputs(_ id: String) -> [String] {
            var o = ["\(out)/\(id).nii.gz"]
            if saveProbabilities { o += (0..<k).map { "\(out)/probabilities/\(id)_\($0).nii.gz" } }
            return o
        }
        if !force, let existing = ids.flatMap(outputs).first(where: { FileManager.default.fileExists(atPath: $0) }) {
            throw AttunetError("\(existing) exists: pass --force to overwrite")
        }
        // Attention maps are named after the gates: any file of a case in attention/ counts as existing.
        if !force, saveAttention, let listed = try? FileManager.default.contentsOfDirectory(atPath: "\(out)/attention"),
           let existing = listed.sorted().first(where: { f in ids.contains { f.hasPrefix("\($0)_") } }) {
            throw AttunetError("\(out)/attention/\(existing) exists: pass --force to overwrite")
        }
        if comm.isRoot {
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            for (on, sub) in [(saveProbabilities, "probabilities"), (saveAttention, "attention")] where on {
                try FileManager.default.createDirectory(atPath: "\(out)/\(sub)", withIntermediateDirectories: true)
            }
            let ens = checkpoints.count > 1 ? "an ensemble of \(checkpoints.count) checkpoints" : checkpoints[0]
            let grid = input != nil ? ", inputs resampled to \(fmt(targetSpacing, 3)) mm (\(spacingFrom))" : ""
            print("predict: \(ids.count) case(s) on \(comm.size) rank(s) with \(ens); tiles \(tile.x)x\(tile.y)x\(tile.z), overlap \(overlap)\(tta ? ", TTA" : "")\(grid)")
        }
        try comm.barrier()

        // Rank r takes cases r, r+p, ...: per case seconds, peak RSS, failure flag, summed across ranks.
        let n = ids.count
        var stats = [Double](repeating: 0, count: n * 3)
        var firstError: Error? = nil
        let started = Date()
        for i in stride(from: comm.rank, to: n, by: comm.size) {
            let t0 = Date()
            _ = Memory.resetPeak()
            do {
                try predictCase(id: ids[i], source: sources[i], store: caseStore, predictor: predictor,
                                spacing: targetSpacing, blur: blur)
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
        if comm.isRoot {
            for i in 0..<n {
                let status = stats[i * 3 + 2] > 0 ? "FAILED" : "\(out)/\(ids[i]).nii.gz"
                print("  \(ids[i])  \(fmt(stats[i * 3], 2)) s  peak RSS \(Memory.format(Int(stats[i * 3 + 1])))  rank \(i % comm.size)  \(status)")
            }
        }
        let failed = (0..<n).filter { stats[$0 * 3 + 2] > 0 }.count
        if failed > 0 {
            if let firstError { throw firstError }
            throw AttunetError("\(failed) of \(n) case(s) failed on other ranks (their errors are above)")
        }
        if comm.isRoot {
            let peak = (0..<n).map { stats[$0 * 3 + 1] }.max() ?? 0
            print("predict: \(n) case(s) in \(fmt(Date().timeIntervalSince(started), 1)) s, \(fmt(stats.enumerated().filter { $0.offset % 3 == 0 }.map(\.element).reduce(0, +), 1)) s of prediction; peak RSS \(Memory.format(Int(peak))); labels in \(out)")
        }
    }

    func predictCase(id: String, source: Source, store: CaseStore?, predictor: SlidingWindowPredictor,
                     spacing: Double, blur: Double) throws {
        let prediction: Prediction, geometry: SourceGeometry, codes: XformCodes, image: [Float]
        var sourcePath: String? = nil
        switch source {
        case let .file(path):
            let input = try SourceInput(path: path, id: id, spacing: spacing, blurSigma: blur)
            prediction = try predictor.predict(volume: input.image, shape: input.geometry.storedShape, padValue: input.padValue)
            geometry = input.geometry; codes = input.codes; sourcePath = path; image = input.image
        case let .stored(c):
            geometry = try SourceGeometry(store: store!, case: c)
            let (normalized, pad) = try store!.normalizedImage(c, normalization: .zscore)
            prediction = try predictor.predict(volume: normalized, shape: store!.cases[c].shape, padValue: pad)
            image = normalized
            // The source file's own codes when it is still where prepare read it (checked against the store's
            // record of its size and affine); else scanner anatomy for both.
            let recorded = store!.cases[c].source
            if FileManager.default.fileExists(atPath: recorded) {
                codes = try XformCodes.of(source: recorded, geometry: geometry); sourcePath = recorded
            } else {
                codes = .scanner
            }
        }
        let labelPath = "\(out)/\(id).nii.gz"
        try SourceExport.write(prediction, geometry: geometry, to: labelPath, codes: codes)
        if let sourcePath { try Self.checkGeometry(labelPath, against: sourcePath) }
        if saveProbabilities {
            let p = try SourceExport.probabilities(prediction, geometry: geometry)
            let s = geometry.sourceShape, sv = s.count
            for c in 0..<prediction.classes {
                var v = NIfTIVolume(nx: s.x, ny: s.y, nz: s.z, affine: geometry.sourceAffine, voxels: Array(p[(c * sv)..<((c + 1) * sv)]))
                v.qformCode = codes.qform; v.sformCode = codes.sform
                try v.write("\(out)/probabilities/\(id)_\(c).nii.gz")
            }
        }
        if saveAttention, let maps = prediction.attentionMaps {
            let s = maps.shape
            for name in maps.names {
                let safe = String(name.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" ? $0 : "_" })
                var v = NIfTIVolume(nx: s.x, ny: s.y, nz: s.z, affine: geometry.storedAffine, voxels: Array(maps.map(name)!))
                v.qformCode = codes.qform; v.sformCode = codes.sform
                try v.write("\(out)/attention/\(id)_\(safe).nii.gz")
                try AttentionMontage.write(image: image, attention: maps.map(name)!, shape: s, affine: geometry.storedAffine,
                                           to: "\(out)/attention/\(id)_\(safe).png")
            }
        }
    }

    /// The written labels must carry the input's size, affine and codes: a mismatch is an error, never a warning.
    static func checkGeometry(_ path: String, against source: String) throws {
        let a = try NIfTIVolume.readGeometry(path), b = try NIfTIVolume.readGeometry(source)
        guard [a.nx, a.ny, a.nz] == [b.nx, b.ny, b.nz] else {
            throw AttunetError("\(path): size \(a.nx)x\(a.ny)x\(a.nz) differs from its input \(source) (\(b.nx)x\(b.ny)x\(b.nz))")
        }
        for i in 0..<12 where abs(a.affine[i] - b.affine[i]) > 1e-4 * max(1, abs(b.affine[i])) {
            throw AttunetError("\(path): affine row \(i / 4) column \(i % 4) is \(a.affine[i]), its input \(source) has \(b.affine[i])")
        }
        guard a.qformCode == b.qformCode, a.sformCode == b.sformCode else {
            throw AttunetError("\(path): qform/sform codes \(a.qformCode)/\(a.sformCode) differ from its input \(source) (\(b.qformCode)/\(b.sformCode))")
        }
    }

    static func isNIfTI(_ name: String) -> Bool { name.hasSuffix(".nii") || name.hasSuffix(".nii.gz") }

    /// The case id of a file: its name without .nii / .nii.gz.
    static func stem(_ path: String) -> String {
        let name = URL(fileURLWithPath: path).lastPathComponent
        for ext in [".nii.gz", ".nii"] where name.hasSuffix(ext) { return String(name.dropLast(ext.count)) }
        return name
    }
}
