import ArgumentParser
import Collectives
import DataPipeline
import Foundation
import Support
import Tensor

/// `attunet prepare`: NIfTI cases -> the HDF5 case store training reads.
struct Prepare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert NIfTI CT cases into an HDF5 case store for training.",
        discussion: """
            Input, one of:
              --input DIR                      a Decathlon / nnU-Net folder:
                                               dataset.json, imagesTr/, labelsTr/
              --image-dir DIR --label-dir DIR  two folders of .nii / .nii.gz files,
                                               paired by name (an image's nnU-Net
                                               channel suffix _0000 is ignored)

            Geometry comes from each file's sform (else qform). Every case is checked, then the image is Gaussian-blurred (--blur-sigma, mm) and resampled trilinearly, the label by nearest neighbour, to --spacing mm isotropic (the paper: 2.0 mm; voxel axes and orientation are kept, the affine updated).

            Labels: values must be integers within the declared classes (dataset.json "labels", else --class-names). --labels remaps source values and sets every unlisted value to 0, e.g. CT-150's organ ids:
              --labels 4:1,7:2,8:3    (spleen, pancreas, kidney)

            Bad inputs (a missing label, image/label shape or geometry mismatch, unreadable/truncated/corrupt files, NaN or infinite intensities, CT intensities beyond ±100000 HU after the header's scl_slope and scl_inter, labels outside the classes, empty volumes) each print one line "error: FILE: PROBLEM"; the run then exits 1 and leaves no store behind. With --skip-bad the good cases are converted and the bad ones listed as skipped. The store is written to a hidden temporary file next to OUT, synced and renamed when complete, so OUT is either the previous file or a finished store (a full disk fails with "no space left on device while writing ..." and leaves no temporary file). Every dataset carries HDF5's Fletcher-32 checksum, so a damaged chunk fails its read with "checksum mismatch".

            Store layout (h5py / h5dump readable; every field in the DataPipeline documentation, CaseStoreFormat): /cases/<id>/image (int16 HU, or float32 for non-integer sources) and /cases/<id>/label (uint8), [Z][Y][X], chunked 32^3 with deflate; /cases/<id>/foreground (sampled foreground voxels, for patch oversampling); per-case attributes spacing_mm, affine, original_shape, original_spacing_mm, original_affine, source, source_label, intensity_stats, class_voxels; root attributes format, format_version, class_names, modality, spacing_mm, blur_sigma_mm, num_cases, foreground_intensity, label_map (with --labels) and a fingerprint (source spacings and shapes, foreground intensity percentiles 0.5/50/99.5, mean, std).

            Under mpirun the ranks convert disjoint cases (rank r takes cases r, r+p, ...) into part files next to OUT, and rank 0 assembles the store; the result equals a single-process run's.

            Example:
              attunet synth --cases 20 --out data/phantoms
              attunet prepare --input data/phantoms --out data/phantoms.h5
              mpirun -np 2 --bind-to none attunet prepare --input data/phantoms \\
                  --out data/phantoms.h5

            Exit status:
              0   done
              1   an error or bad inputs, one line each on stderr; no store written
              64  bad command line
            """
    )

    @Option(help: "Decathlon / nnU-Net dataset folder (dataset.json, imagesTr/, labelsTr/).")
    var input: String?

    @Option(help: "Folder of images (instead of --input).")
    var imageDir: String?

    @Option(help: "Folder of labels matching --image-dir by file name.")
    var labelDir: String?

    @Option(help: "Output store (.h5).")
    var out: String

    @Option(help: "Target isotropic voxel spacing in mm.")
    var spacing: Double = 2.0

    @Option(
        help: "Gaussian pre-blur sigma in mm before resampling the image (0 turns it off; CT-150 used 0.5, TCIA 0.75).")
    var blurSigma: Double = 0.5

    @Option(help: "Label remapping SRC:DST,... (unlisted values become 0), e.g. 4:1,7:2,8:3.")
    var labels: String?

    @Option(
        help:
            "Comma-separated class names, background first (default: dataset.json labels, else background,spleen,pancreas,kidney)."
    )
    var classNames: String?

    @Option(help: "Image storage type: auto (int16 for integer HU sources, else float32), int16 or float32.")
    var dtype: StorageChoice = .auto

    enum StorageChoice: String, ExpressibleByArgument, CaseIterable { case auto, int16, float32 }

    @Option(help: "Deflate level 0-9 (0 = uncompressed).")
    var deflate: Int = 1

    @Option(name: .customLong("threads"), help: "Threads converting cases in parallel.")
    var threadCount = CoreCount.allCores
    var threads: Int { threadCount.value }

    @Flag(help: "Convert the good cases and list the bad ones instead of failing.")
    var skipBad = false

    @Option(
        help:
            "After writing, draw this many augmented 160x160x96 training patches through the loader and report patches/s (0 = skip)."
    )
    var checkPatches: Int = 0

    @Flag(help: "Print one line per converted case.")
    var verbose = false

    func validate() throws {
        if (input == nil) == (imageDir == nil) {
            throw ValidationError("give either --input DIR or --image-dir DIR --label-dir DIR")
        }
        if (imageDir == nil) != (labelDir == nil) { throw ValidationError("--image-dir and --label-dir go together") }
        guard spacing > 0 && spacing.isFinite else { throw ValidationError("--spacing must be positive") }
        guard blurSigma >= 0 else { throw ValidationError("--blur-sigma must be >= 0") }
        guard (0...9).contains(deflate) else { throw ValidationError("--deflate is 0-9") }
        if let labels { _ = try Prepare.parseLabelMap(labels) }
    }

    static func parseLabelMap(_ s: String) throws -> [Int: Int] {
        var m: [Int: Int] = [:]
        for item in s.split(separator: ",") {
            let p = item.split(separator: ":")
            guard p.count == 2, let a = Int(p[0].trimmingCharacters(in: .whitespaces)),
                let b = Int(p[1].trimmingCharacters(in: .whitespaces)), a >= 0, (0...255).contains(b)
            else {
                throw ValidationError("--labels: '\(item)' is not SRC:DST (integers, DST 0-255)")
            }
            m[a] = b
        }
        guard !m.isEmpty else { throw ValidationError("--labels is empty") }
        return m
    }

    func run() throws {
        let start = Date()
        let comm = try MPICommunicator()
        let data =
            try input.map { try DatasetInput.folder($0) } ?? DatasetInput.folders(images: imageDir!, labels: labelDir!)
        var o = PrepareOptions()
        o.spacing = spacing
        o.blurSigma = blurSigma
        o.deflate = deflate == 0 ? nil : deflate
        o.threads = max(1, threads)
        o.storeFloat = dtype == .auto ? nil : dtype == .float32
        if let m = labels { o.labelMap = try Prepare.parseLabelMap(m) }
        if let cn = classNames {
            o.classNames = cn.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        } else if let cn = data.classNames, o.labelMap == nil {
            o.classNames = cn
        } else if let m = o.labelMap, let top = m.values.max(), top >= o.classNames.count {
            o.classNames += (o.classNames.count...top).map { "class\($0)" }
        }
        if let m = data.modality { o.modality = m }
        var progress: (@Sendable (String) -> Void)? = nil
        if verbose {
            let rank = comm.rank
            progress = { id in print("  converted \(id)\(rank > 0 ? " (rank \(rank))" : "")") }
        }
        let report: PrepareReport
        do {
            report = try CasePreparer.run(
                input: data, out: out, options: o, skipBad: skipBad, comm: comm,
                progress: progress)
        } catch let e as AttunetError where e.kind == .badInput {
            let note =
                skipBad
                ? "\(out): not written"
                : "\(out): not written (\(e.lines.count) bad input(s); --skip-bad converts the rest)"
            throw AttunetError(lines: e.lines + [note])
        }
        guard comm.isRoot else { return }
        for p in report.skipped { print("skipped: \(p)") }
        let fp = report.fingerprint
        let skipped = report.skipped.isEmpty ? "" : ", \(report.skipped.count) skipped"
        let secs = String(format: "%.1f", Date().timeIntervalSince(start))
        let hu = [fp["p0_5"] ?? 0, fp["p50"] ?? 0, fp["p99_5"] ?? 0].map { String(format: "%.0f", $0) }.joined(
            separator: "/")
        let ranks = comm.size > 1 ? " by \(comm.size) ranks" : ""
        print(
            "wrote \(out): \(report.written.count) case(s) at \(spacing) mm\(skipped)\(ranks) in \(secs) s; foreground intensity p0.5/p50/p99.5 = \(hu)"
        )
        if checkPatches > 0 { try checkLoader() }
    }

    /// Reads the new store back through the training loader (a quick end-to-end check and speed figure).
    func checkLoader() throws {
        let store = try CaseStore(path: out)
        let loader = try PatchLoader(
            store: store, patch: Dim3(z: 96, y: 160, x: 160), batch: 1, seed: 1,
            samplesPerCase: max(1, (checkPatches + store.cases.count - 1) / store.cases.count))
        loader.startEpoch(0)
        let t0 = Date()
        var n = 0
        var busy = 0.0
        while n < checkPatches, let b = try loader.next() {
            n += 1
            busy += b.loadSeconds
        }
        let wall = Date().timeIntervalSince(t0)
        print(
            String(
                format:
                    "loader check: %d patches 160x160x96 (paper augmentation) in %.2f s: %.1f patches/s, %.0f ms of loader work per patch",
                n, wall, Double(n) / wall, 1000 * busy / Double(max(n, 1))))
    }
}
