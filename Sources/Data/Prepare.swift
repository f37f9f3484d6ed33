import Distributed
import Foundation
import HDF5Kit
import Tensor

/// One case of an input dataset: an image file and (normally) its label file.
public struct CaseFiles: Sendable, Equatable {
    public var id: String
    public var image: String
    public var label: String?
    public init(id: String, image: String, label: String?) { self.id = id; self.image = image; self.label = label }
}

/// A problem with one input, reported as one line: "<file>: <problem>".
public struct CaseProblem: Error, CustomStringConvertible, LocalizedError, Sendable {
    public var caseID: String
    public var file: String
    public var problem: String
    public init(caseID: String, file: String, _ problem: String) { self.caseID = caseID; self.file = file; self.problem = problem }
    public var description: String { "\(file): \(problem)" }
    public var errorDescription: String? { description }
}

/// The cases of a dataset folder, found and paired by name.
public struct DatasetInput: Sendable {
    public var cases: [CaseFiles]
    /// Class names from dataset.json (index = label value), when it has them.
    public var classNames: [String]?
    public var modality: String?
    /// Files that could not be paired (a label without an image); each is a bad input.
    public var problems: [CaseProblem]

    static let suffixes = [".nii.gz", ".nii"]

    /// Case id of a NIfTI file name ("case_0000.nii.gz" -> "case": nnU-Net's channel suffix is dropped), or
    /// nil for files that are not NIfTI or are hidden (macOS "._" files in the Decathlon archives).
    static func caseID(_ name: String, dropChannel: Bool) -> String? {
        guard !name.hasPrefix("."), let suf = suffixes.first(where: { name.hasSuffix($0) }) else { return nil }
        var id = String(name.dropLast(suf.count))
        if dropChannel, id.count > 5, id.suffix(5).first == "_", id.suffix(4).allSatisfy(\.isNumber) { id = String(id.dropLast(5)) }
        return id
    }

    /// A Decathlon / nnU-Net folder: `dataset.json` (optional: labels, modality, training list) with
    /// `imagesTr/` and `labelsTr/`. Without a training list in dataset.json the folders are paired by name.
    public static func folder(_ dir: String) throws -> DatasetInput {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw VolumeError("\(dir): no such folder")
        }
        var classNames: [String]? = nil, modality: String? = nil
        var listed: [CaseFiles]? = nil
        let jsonPath = dir + "/dataset.json"
        if fm.fileExists(atPath: jsonPath) {
            guard let data = fm.contents(atPath: jsonPath),
                  let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw VolumeError("\(jsonPath): not valid JSON")
            }
            classNames = parseLabels(obj["labels"])
            if let m = obj["modality"] as? [String: Any] { modality = m["0"] as? String }
            if let m = obj["channel_names"] as? [String: Any] { modality = m["0"] as? String }
            if let training = obj["training"] as? [[String: Any]], !training.isEmpty {
                listed = try training.map { entry in
                    guard let img = entry["image"] as? String else { throw VolumeError("\(jsonPath): a training entry has no \"image\"") }
                    let path = resolve(dir, img)
                    let name = (path as NSString).lastPathComponent
                    let lab = (entry["label"] as? String).map { resolve(dir, $0) }
                    return CaseFiles(id: caseID(name, dropChannel: false) ?? name, image: path, label: lab)
                }
            }
        }
        if let listed {
            // Decathlon lists "./imagesTr/x.nii.gz"; nnU-Net v2 stores x_0000.nii.gz: accept either on disk.
            let fixed = listed.map { c -> CaseFiles in
                var c = c
                if !fm.fileExists(atPath: c.image) {
                    for suf in suffixes where c.image.hasSuffix(suf) {
                        let alt = String(c.image.dropLast(suf.count)) + "_0000" + suf
                        if fm.fileExists(atPath: alt) { c.image = alt }
                    }
                }
                return c
            }
            return DatasetInput(cases: fixed.sorted { $0.id < $1.id }, classNames: classNames, modality: modality, problems: [])
        }
        var r = try folders(images: dir + "/imagesTr", labels: dir + "/labelsTr")
        r.classNames = classNames; r.modality = modality
        return r
    }

    static func resolve(_ dir: String, _ p: String) -> String {
        if p.hasPrefix("/") { return p }
        var rel = p
        while rel.hasPrefix("./") { rel.removeFirst(2) }
        return dir + "/" + rel
    }

    /// dataset.json "labels": {"0": "background", ...} (Decathlon) or {"background": 0, ...} (nnU-Net v2).
    static func parseLabels(_ any: Any?) -> [String]? {
        guard let dict = any as? [String: Any], !dict.isEmpty else { return nil }
        var byIndex: [Int: String] = [:]
        for (k, v) in dict {
            if let i = Int(k), let name = v as? String { byIndex[i] = name }
            else if let i = v as? Int { byIndex[i] = k }
            else if let a = v as? [Int], let i = a.first { byIndex[i] = k }
        }
        guard let maxIndex = byIndex.keys.max(), maxIndex < 256 else { return nil }
        return (0...maxIndex).map { byIndex[$0] ?? "class\($0)" }
    }

    /// Two folders of `.nii` / `.nii.gz` files paired by name (an image's nnU-Net `_0000` suffix is ignored).
    /// An image without a label is kept with `label: nil` (reported when converted); a label without an
    /// image is a problem.
    public static func folders(images: String, labels: String) throws -> DatasetInput {
        func list(_ d: String, dropChannel: Bool) throws -> [String: String] {
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: d) else { throw VolumeError("\(d): no such folder") }
            var out: [String: String] = [:]
            for n in names { if let id = caseID(n, dropChannel: dropChannel) { out[id] = d + "/" + n } }
            return out
        }
        let imgs = try list(images, dropChannel: true)
        let labs = try list(labels, dropChannel: false)
        let cases = imgs.keys.sorted().map { CaseFiles(id: $0, image: imgs[$0]!, label: labs[$0]) }
        let orphans = labs.keys.filter { imgs[$0] == nil }.sorted().map {
            CaseProblem(caseID: $0, file: labs[$0]!, "label has no matching image in \(images)")
        }
        if cases.isEmpty && orphans.isEmpty { throw VolumeError("\(images): no .nii or .nii.gz images") }
        return DatasetInput(cases: cases, classNames: nil, modality: nil, problems: orphans)
    }
}

/// How `CasePreparer` converts cases.
public struct PrepareOptions: Sendable {
    /// Target isotropic spacing in mm (the paper: 2.0).
    public var spacing: Double = 2.0
    /// Gaussian pre-blur sigma in mm before image resampling (0 = none; the CT-150 script used 0.5, TCIA 0.75).
    public var blurSigma: Double = 0.5
    /// Source label value -> stored label value; values not listed become 0. nil keeps labels as they are.
    public var labelMap: [Int: Int]? = nil
    /// Class names, index = stored label value ("background" first).
    public var classNames: [String] = PhantomCase.classNames
    public var modality: String = "CT"
    /// Image storage: nil = int16 when every source voxel is an integer within int16 range, else float32.
    public var storeFloat: Bool? = nil
    /// Chunk edge (voxels) and deflate level (nil = no compression).
    public var chunk: Int = 32
    public var deflate: Int? = 1
    /// Worker threads converting cases.
    public var threads: Int = ProcessInfo.processInfo.activeProcessorCount
    public init() {}
}

/// One converted case, ready to store.
public struct PreparedCase: Sendable {
    public var id: String
    public var dim: Dim3
    public var image: [Float]
    public var label: [UInt8]
    public var storeFloat: Bool
    public var spacing: (x: Double, y: Double, z: Double)
    public var affine: [Double]
    public var originalShape: [Int]     // x, y, z
    public var originalSpacing: [Double] // x, y, z
    public var originalAffine: [Double]
    public var sourceImage: String, sourceLabel: String
    /// min, max, mean, std of the whole stored image.
    public var stats: [Double]
    /// Voxels per class.
    public var classVoxels: [Int64]
    /// A deterministic sample of foreground intensities (for the dataset fingerprint).
    public var foregroundSample: [Float]
    /// Up to `maxLocations` voxels per foreground class as (class, z, y, x) rows.
    public var foregroundLocations: [Int32]
}

/// The HDF5 case store layout (DESIGN.md §3), version 1:
///
///     /                               attrs: format="attunet-case-store", format_version=1, class_names (JSON
///                                            array), modality, spacing_mm [x,y,z], blur_sigma_mm, num_cases,
///                                            fingerprint (JSON), foreground_intensity [p0.5, p50, p99.5, mean, std]
///     /cases/<id>/image               int16 HU (or float32) [Z][Y][X], chunked 32^3, shuffle+deflate
///     /cases/<id>/label               uint8 [Z][Y][X], same chunks
///     /cases/<id>/foreground          int32 [M][4] rows (class, z, y, x): sampled foreground voxels
///     /cases/<id>                     attrs: spacing_mm [x,y,z], affine (4x4 row-major, voxel (x,y,z) -> mm),
///                                            original_shape [x,y,z], original_spacing_mm, original_affine,
///                                            source, source_label, intensity_stats [min,max,mean,std],
///                                            class_voxels [per class]
public enum CaseStoreFormat {
    public static let name = "attunet-case-store"
    public static let version = 1
    public static let maxLocations = 10_000
}

/// Result of a conversion run.
public struct PrepareReport: Sendable {
    public var written: [String]
    public var skipped: [CaseProblem]
    public var fingerprint: [String: Double]
}

public enum CasePreparer {
    static func isIntegral(_ d: Int32) -> Bool { [2, 4, 8, 256, 512, 768, 1024, 1280].contains(d) }

    /// Reads, checks, resamples one case. Throws a `CaseProblem` naming the file for every bad input.
    public static func convert(_ c: CaseFiles, options o: PrepareOptions) throws -> PreparedCase {
        guard let labelPath = c.label else {
            throw CaseProblem(caseID: c.id, file: c.image, "no label file for this image")
        }
        let img: NIfTIVolume, lab: NIfTIVolume
        do { img = try NIfTIVolume.read(c.image) } catch { throw CaseProblem(caseID: c.id, file: c.image, strip(error, c.image)) }
        do { lab = try NIfTIVolume.read(labelPath) } catch { throw CaseProblem(caseID: c.id, file: labelPath, strip(error, labelPath)) }
        let dims = [img.nx, img.ny, img.nz]
        if img.voxels.isEmpty { throw CaseProblem(caseID: c.id, file: c.image, "empty volume (no voxels)") }
        if [lab.nx, lab.ny, lab.nz] != dims {
            throw CaseProblem(caseID: c.id, file: labelPath, "label shape \(lab.nx)x\(lab.ny)x\(lab.nz) differs from image shape \(img.nx)x\(img.ny)x\(img.nz)")
        }
        let sp = img.spacing
        if ![sp.x, sp.y, sp.z].allSatisfy({ $0.isFinite && $0 > 1e-6 }) {
            throw CaseProblem(caseID: c.id, file: c.image, "invalid voxel spacing \(fmt(sp.x)) x \(fmt(sp.y)) x \(fmt(sp.z)) mm")
        }
        for r in 0..<3 {
            for col in 0..<4 {
                let a = img.affine[r * 4 + col], b = lab.affine[r * 4 + col]
                let tol = col == 3 ? 0.05 : 1e-3 * max(1, abs(a))
                if !(abs(a - b) <= tol) {
                    throw CaseProblem(caseID: c.id, file: labelPath, "label geometry differs from the image (affine row \(r) column \(col): \(fmt(b)) vs \(fmt(a)))")
                }
            }
        }
        var bad = 0
        var lo = Float.infinity, hi = -Float.infinity, integral = true
        for v in img.voxels {
            if !v.isFinite { bad += 1; continue }
            lo = min(lo, v); hi = max(hi, v)
            if integral && v != v.rounded() { integral = false }
        }
        if bad > 0 { throw CaseProblem(caseID: c.id, file: c.image, "\(bad) NaN or infinite voxel(s)") }
        if !(hi - lo > 1e-6) { throw CaseProblem(caseID: c.id, file: c.image, "empty volume (every voxel is \(fmt(Double(lo))))") }
        // Labels: integers, remapped, within the declared classes.
        let nClasses = o.classNames.count
        var counts = [Int: Int]()
        var labels = [UInt8](repeating: 0, count: lab.voxels.count)
        for (i, v) in lab.voxels.enumerated() {
            guard v.isFinite, v == v.rounded(), abs(v) < 1e9 else {
                throw CaseProblem(caseID: c.id, file: labelPath, "label has a non-integer value (\(v))")
            }
            var k = Int(v)
            if let m = o.labelMap { k = m[k] ?? 0 }
            if k < 0 || k >= nClasses { counts[k, default: 0] += 1; continue }
            labels[i] = UInt8(k)
        }
        if !counts.isEmpty {
            let list = counts.keys.sorted().prefix(8).map { "\($0) (\(counts[$0]!) voxels)" }.joined(separator: ", ")
            throw CaseProblem(caseID: c.id, file: labelPath, "label values outside the declared classes 0-\(nClasses - 1): \(list)")
        }
        if !labels.contains(where: { $0 != 0 }) {
            throw CaseProblem(caseID: c.id, file: labelPath, "empty label (no foreground voxels)")
        }
        // Resample.
        let dim = Dim3(z: img.nz, y: img.ny, x: img.nx)
        let grid = ResampleGrid(from: dim, spacing: sp, target: (o.spacing, o.spacing, o.spacing))
        var image = img.voxels
        var label = labels
        if !grid.isIdentity {
            if o.blurSigma > 0 {
                Resample.gaussianBlur(&image, dim: dim, sigma: (o.blurSigma / sp.x, o.blurSigma / sp.y, o.blurSigma / sp.z))
            }
            image = Resample.resampleLinear(image, grid: grid)
            label = Resample.resampleNearest(label, grid: grid, fill: 0)
        }
        let storeFloat = o.storeFloat ?? !(integral && lo >= -32768 && hi <= 32767)
        if !storeFloat { for i in image.indices { image[i] = image[i].rounded() } }
        // Statistics, foreground sample and locations.
        var sum = 0.0, sum2 = 0.0, mn = Float.infinity, mx = -Float.infinity
        var classVoxels = [Int64](repeating: 0, count: nClasses)
        for i in image.indices {
            let v = image[i]; sum += Double(v); sum2 += Double(v) * Double(v); mn = min(mn, v); mx = max(mx, v)
            classVoxels[Int(label[i])] += 1
        }
        let n = Double(image.count), mean = sum / n
        let std = max(sum2 / n - mean * mean, 0).squareRoot()
        let fgCount = image.count - Int(classVoxels[0])
        var sample: [Float] = []
        let strideFG = max(1, fgCount / 20_000)
        var seen = 0
        var locations: [Int32] = []
        var perClassSeen = [Int](repeating: 0, count: nClasses)
        let perClassStride = classVoxels.map { max(1, Int($0) / CaseStoreFormat.maxLocations) }
        let to = grid.to
        for i in image.indices where label[i] != 0 {
            if seen % strideFG == 0 { sample.append(image[i]) }
            seen += 1
            let k = Int(label[i])
            if perClassSeen[k] % perClassStride[k] == 0 {
                locations += [Int32(k), Int32(i / (to.y * to.x)), Int32((i / to.x) % to.y), Int32(i % to.x)]
            }
            perClassSeen[k] += 1
        }
        return PreparedCase(
            id: c.id, dim: to, image: image, label: label, storeFloat: storeFloat,
            spacing: (o.spacing, o.spacing, o.spacing), affine: grid.affine(source: img.affine),
            originalShape: dims, originalSpacing: [sp.x, sp.y, sp.z], originalAffine: img.affine,
            sourceImage: c.image, sourceLabel: labelPath, stats: [Double(mn), Double(mx), mean, std],
            classVoxels: classVoxels, foregroundSample: sample, foregroundLocations: locations)
    }

    static func strip(_ error: Error, _ path: String) -> String {
        let s = "\(error)"
        return s.hasPrefix(path + ": ") ? String(s.dropFirst(path.count + 2)) : s
    }
    static func fmt(_ x: Double) -> String { String(format: "%.6g", x) }

    /// Writes one case under /cases/<id>.
    public static func write(_ c: PreparedCase, to file: H5File, options o: PrepareOptions) throws {
        let g = try file.root.createGroup("cases/\(c.id)")
        let shape = [c.dim.z, c.dim.y, c.dim.x]
        let chunks = [o.chunk, o.chunk, o.chunk]
        if c.storeFloat {
            let d = try g.createDataset("image", type: .float32, shape: shape, chunks: chunks, deflate: o.deflate)
            try c.image.withUnsafeBytes { try d.write(from: $0.baseAddress!, as: .float32) }
        } else {
            let v = c.image.map { Int16(clamping: Int($0)) }
            let d = try g.createDataset("image", type: .int16, shape: shape, chunks: chunks, deflate: o.deflate)
            try v.withUnsafeBytes { try d.write(from: $0.baseAddress!, as: .int16) }
        }
        let dl = try g.createDataset("label", type: .uint8, shape: shape, chunks: chunks, deflate: o.deflate)
        try c.label.withUnsafeBytes { try dl.write(from: $0.baseAddress!, as: .uint8) }
        if !c.foregroundLocations.isEmpty {
            let df = try g.createDataset("foreground", type: .int32, shape: [c.foregroundLocations.count / 4, 4])
            try c.foregroundLocations.withUnsafeBytes { try df.write(from: $0.baseAddress!, as: .int32) }
        }
        try g.setAttribute("spacing_mm", [c.spacing.x, c.spacing.y, c.spacing.z])
        try g.setAttribute("affine", c.affine)
        try g.setAttribute("original_shape", c.originalShape.map(Int64.init))
        try g.setAttribute("original_spacing_mm", c.originalSpacing)
        try g.setAttribute("original_affine", c.originalAffine)
        try g.setAttribute("source", c.sourceImage)
        try g.setAttribute("source_label", c.sourceLabel)
        try g.setAttribute("intensity_stats", c.stats)
        try g.setAttribute("class_voxels", c.classVoxels)
    }

    /// Percentile (linear interpolation, numpy's default) of sorted values.
    static func percentile(_ sorted: [Float], _ q: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        let pos = q / 100 * Double(sorted.count - 1)
        let i = Int(pos.rounded(.down)), f = pos - Double(i)
        return Double(sorted[i]) + f * (Double(sorted[min(i + 1, sorted.count - 1)]) - Double(sorted[i]))
    }

    /// Converts `input` into the store at `out`: checks and resamples every case (`options.threads` at a time),
    /// writes a temporary file next to `out` and renames it at the end. Without `skipBad`, any bad input makes
    /// it throw `PrepareFailure` (listing every problem) and no file is left behind; with `skipBad`, bad cases
    /// are left out and listed in the report.
    ///
    /// Under MPI (`comm` with several ranks) rank r converts cases r, r+p, ... into a part file; the problems of
    /// every rank are gathered, and rank 0 assembles the store from the parts (HDF5 object copies, chunks and
    /// compression kept). Every rank returns the same report or throws the same failure.
    public static func run(input: DatasetInput, out: String, options o: PrepareOptions, skipBad: Bool,
                           comm: Communicator? = nil, progress: (@Sendable (String) -> Void)? = nil) throws -> PrepareReport {
        if let comm, comm.size > 1 { return try runDistributed(input: input, out: out, options: o, skipBad: skipBad, comm: comm, progress: progress) }
        let tmp = out + ".tmp-\(getpid())"
        defer { unlink(tmp) }
        let report: PrepareReport
        do {
            let file = try H5File.create(tmp)
            let problems = ProblemBox(input.problems)
            let acc = try convert(input.cases, into: file, options: o, skipBad: skipBad, problems: problems, progress: progress)
            let bad = problems.all.sorted { ($0.caseID, $0.file) < ($1.caseID, $1.file) }
            if !bad.isEmpty && !skipBad { throw PrepareFailure(problems: bad) }
            if acc.written.isEmpty { throw PrepareFailure(problems: bad, message: "no usable cases") }
            let fp = try finish(file, acc, options: o)
            report = PrepareReport(written: acc.written.sorted(), skipped: bad, fingerprint: fp)
        }
        try moveIntoPlace(tmp, out)
        return report
    }

    static func moveIntoPlace(_ tmp: String, _ out: String) throws {
        if rename(tmp, out) != 0 {
            throw VolumeError("\(out): cannot move the finished store into place (\(String(cString: strerror(errno))))")
        }
    }

    /// What the fingerprint needs of the converted cases.
    final class Converted: @unchecked Sendable {
        var written: [String] = []
        var samples: [String: [Float]] = [:]
        var spacings: [String: [Double]] = [:]
        var shapes: [String: [Int]] = [:]
        var writeError: Error?
    }

    /// Converts `cases` (`options.threads` at a time) and writes them under /cases of `file`.
    static func convert(_ cases: [CaseFiles], into file: H5File, options o: PrepareOptions, skipBad: Bool,
                        problems: ProblemBox, progress: (@Sendable (String) -> Void)?) throws -> Converted {
        let lock = NSLock()
        let acc = Converted()
        let workers = max(1, min(o.threads, cases.count))
        let saved = Parallelism.threads
        Parallelism.threads = 1
        defer { Parallelism.threads = saved }
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            var i = w
            while i < cases.count {
                defer { i += workers }
                let c = cases[i]
                let prepared: PreparedCase
                do { prepared = try convert(c, options: o) } catch let p as CaseProblem {
                    problems.add(p); continue
                } catch { problems.add(CaseProblem(caseID: c.id, file: c.image, "\(error)")); continue }
                if problems.count > 0 && !skipBad { continue }   // the store will be discarded anyway
                lock.lock()
                do {
                    try write(prepared, to: file, options: o)
                    acc.written.append(c.id)
                    acc.samples[c.id] = prepared.foregroundSample
                    acc.spacings[c.id] = prepared.originalSpacing
                    acc.shapes[c.id] = prepared.originalShape
                } catch { acc.writeError = acc.writeError ?? error }
                lock.unlock()
                progress?(c.id)
            }
        }
        if let e = acc.writeError { throw e }
        return acc
    }

    /// Writes the root attributes (format, classes, spacing, fingerprint) of a store whose cases are in place.
    static func finish(_ file: H5File, _ acc: Converted, options o: PrepareOptions) throws -> [String: Double] {
        // Fingerprint: spacings and shapes of the sources, intensities over the foreground.
        let ids = acc.written.sorted()
        let fg = ids.flatMap { acc.samples[$0]! }.sorted()
        let fmean = fg.isEmpty ? 0 : fg.reduce(0.0) { $0 + Double($1) } / Double(fg.count)
        let fstd = fg.isEmpty ? 0 : (fg.reduce(0.0) { $0 + (Double($1) - fmean) * (Double($1) - fmean) } / Double(fg.count)).squareRoot()
        let fp: [String: Double] = ["p0_5": percentile(fg, 0.5), "p50": percentile(fg, 50), "p99_5": percentile(fg, 99.5),
                                    "mean": fmean, "std": fstd]
        func median(_ v: [Double]) -> Double { let s = v.sorted(); return s.isEmpty ? 0 : s[s.count / 2] }
        let fingerprint: [String: Any] = [
            "num_cases": ids.count,
            "original_spacing_median_mm": (0..<3).map { a in median(ids.map { acc.spacings[$0]![a] }) },
            "original_spacings_mm": ids.map { acc.spacings[$0]! },
            "original_shapes": ids.map { acc.shapes[$0]! },
            "foreground_intensity": fp,
        ]
        let root = file.root
        try root.setAttribute("format", CaseStoreFormat.name)
        try root.setAttribute("format_version", CaseStoreFormat.version)
        try root.setAttribute("class_names", String(decoding: try JSONSerialization.data(withJSONObject: o.classNames), as: UTF8.self))
        try root.setAttribute("modality", o.modality)
        try root.setAttribute("spacing_mm", [o.spacing, o.spacing, o.spacing])
        try root.setAttribute("blur_sigma_mm", o.blurSigma)
        try root.setAttribute("num_cases", ids.count)
        try root.setAttribute("fingerprint", String(decoding: try JSONSerialization.data(withJSONObject: fingerprint, options: [.sortedKeys]), as: UTF8.self))
        try root.setAttribute("foreground_intensity", [fp["p0_5"]!, fp["p50"]!, fp["p99_5"]!, fp["mean"]!, fp["std"]!])
        if let m = o.labelMap {
            try root.setAttribute("label_map", m.keys.sorted().map { "\($0):\(m[$0]!)" }.joined(separator: ","))
        }
        try file.flush()
        return fp
    }

    /// What one rank reports after converting its share.
    struct RankResult: Codable {
        var written: [String]
        var problems: [[String]]   // (case id, file, problem)
        var error: String?
    }

    static func runDistributed(input: DatasetInput, out: String, options o: PrepareOptions, skipBad: Bool,
                               comm: Communicator, progress: (@Sendable (String) -> Void)?) throws -> PrepareReport {
        let tag: Int = try comm.broadcast(comm.isRoot ? Int(getpid()) : nil)
        func partPath(_ r: Int) -> String { "\(out).part\(r)-\(tag)" }
        defer { unlink(partPath(comm.rank)) }
        // Discovery problems are the same on every rank: rank 0 reports them.
        let problems = ProblemBox(comm.isRoot ? input.problems : [])
        let mine = input.cases.enumerated().filter { $0.offset % comm.size == comm.rank }.map(\.element)
        var result = RankResult(written: [], problems: [], error: nil)
        do {
            let file = try H5File.create(partPath(comm.rank))
            let acc = try convert(mine, into: file, options: o, skipBad: skipBad, problems: problems, progress: progress)
            // The fingerprint's foreground samples travel with the part (the store itself does not keep them).
            for id in acc.written {
                let s = acc.samples[id]!
                try file.root.write("fg_sample/\(id)", s, shape: [s.count])
            }
            try file.flush()
            result.written = acc.written
        } catch { result.error = "\(error)" }
        result.problems = problems.all.map { [$0.caseID, $0.file, $0.problem] }
        let results = try comm.allGather(data: try JSONEncoder().encode(result)).map { try JSONDecoder().decode(RankResult.self, from: $0) }
        if let e = results.compactMap(\.error).first { throw VolumeError(e) }
        let bad = results.flatMap(\.problems).map { CaseProblem(caseID: $0[0], file: $0[1], $0[2]) }
            .sorted { ($0.caseID, $0.file) < ($1.caseID, $1.file) }
        if !bad.isEmpty && !skipBad { throw PrepareFailure(problems: bad) }
        let written = results.flatMap(\.written).sorted()
        if written.isEmpty { throw PrepareFailure(problems: bad, message: "no usable cases") }
        // Rank 0 assembles; its verdict reaches every rank.
        var assembled: (fp: [String: Double]?, error: String?) = (nil, nil)
        if comm.isRoot {
            let tmp = out + ".tmp-\(getpid())"
            defer { unlink(tmp) }
            do {
                do {
                    let file = try H5File.create(tmp)
                    let acc = Converted()
                    for r in 0..<comm.size where !results[r].written.isEmpty {
                        let part = try H5File.open(partPath(r))
                        for id in results[r].written {
                            try part.root.copy("cases/\(id)", to: file.root, as: "cases/\(id)")
                            let g = try part.root.group("cases/\(id)")
                            acc.written.append(id)
                            acc.samples[id] = try part.root.dataset("fg_sample/\(id)").readFloats()
                            acc.spacings[id] = try g.doublesAttribute("original_spacing_mm")
                            acc.shapes[id] = try g.intsAttribute("original_shape").map { Int($0) }
                        }
                    }
                    assembled.fp = try finish(file, acc, options: o)
                }
                try moveIntoPlace(tmp, out)
            } catch { assembled.error = "\(error)" }
        }
        try comm.barrier()
        let fp: [String: Double]? = try comm.broadcast(comm.isRoot ? assembled.fp ?? [:] : nil)
        let err: String? = try comm.broadcast(comm.isRoot ? assembled.error ?? "" : nil)
        if let err, !err.isEmpty { throw VolumeError(err) }
        return PrepareReport(written: written, skipped: bad, fingerprint: fp ?? [:])
    }
}

/// Every bad input of a `prepare` run, one line each.
public struct PrepareFailure: Error, CustomStringConvertible, LocalizedError {
    public var problems: [CaseProblem]
    public var message: String?
    public init(problems: [CaseProblem], message: String? = nil) { self.problems = problems; self.message = message }
    public var description: String {
        (problems.map(\.description) + (message.map { [$0] } ?? [])).joined(separator: "\n")
    }
    public var errorDescription: String? { description }
}

final class ProblemBox: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [CaseProblem]
    init(_ initial: [CaseProblem]) { items = initial }
    func add(_ p: CaseProblem) { lock.lock(); items.append(p); lock.unlock() }
    var count: Int { lock.lock(); defer { lock.unlock() }; return items.count }
    var all: [CaseProblem] { lock.lock(); defer { lock.unlock() }; return items }
}
