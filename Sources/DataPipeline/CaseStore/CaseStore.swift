import Foundation
import HDF5Kit
import Support
import Tensor

/// One case of a store: geometry and statistics from its attributes, and its sampled foreground voxels.
public struct CaseInfo: Sendable {
    public var id: String
    /// Stored volume size ([Z][Y][X] order in the file).
    public var shape: Dim3
    /// Spacing in mm (x, y, z) and the voxel-to-world affine (row-major 4x4) of the stored grid.
    public var spacing: [Double]
    public var affine: [Double]
    /// min, max, mean, std of the stored image (the min pads patches that leave the volume).
    public var stats: [Double]
    public var classVoxels: [Int64]
    /// Sampled foreground voxels as rows (class, z, y, x), flat.
    public var foreground: [Int32]
    public var source: String
    /// The source file's geometry as `attunet prepare` recorded it (`original_shape`, `original_spacing_mm`,
    /// `original_affine`): its size, its spacing (x, y, z) in mm and its voxel-to-world affine (row-major 4x4).
    /// nil when the store lacks the attribute; what maps a prediction back onto the source's grid.
    public var originalShape: Dim3? = nil
    public var originalSpacing: [Double]? = nil
    public var originalAffine: [Double]? = nil

    public var minimum: Float { Float(stats[0]) }
    public var mean: Double { stats[2] }
    public var std: Double { stats[3] }
    /// The foreground classes present in this case.
    public var presentClasses: [Int] { classVoxels.indices.filter { $0 > 0 && classVoxels[$0] > 0 } }
}

/// A read-only HDF5 case store (layout: `CaseStoreFormat`), opened once and shared by the loader's threads
/// (HDF5 is built thread-safe; it serialises calls). Patch reads are hyperslabs: only the chunks a box
/// touches are read and inflated.
public final class CaseStore: @unchecked Sendable {
    public let path: String
    public let file: H5File
    public let classNames: [String]
    public let modality: String
    public let spacing: [Double]
    /// Dataset foreground intensity statistics: p0.5, p50, p99.5, mean, std.
    public let foregroundIntensity: [Double]
    /// Gaussian pre-blur sigma in mm that `prepare` applied before resampling images (nil: a store written
    /// before attunet recorded it).
    public let blurSigma: Double?
    /// The dataset fingerprint (JSON, sorted keys): a resume or restart on other data is refused by comparing
    /// it ("" for a store without one).
    public let fingerprint: String
    /// Cases sorted by id.
    public let cases: [CaseInfo]
    private let images: [H5Dataset], labels: [H5Dataset]

    /// Opens a store written by `attunet prepare`; errors name the file and what is missing.
    public init(path: String) throws {
        self.path = path
        file = try H5File.open(path)
        let root = file.root
        let format = (try? root.stringAttribute("format")) ?? ""
        guard format == CaseStoreFormat.name else {
            throw AttunetError(
                "\(path): not an attunet case store (format attribute '\(format)'); make one with attunet prepare")
        }
        let version = try root.intAttribute("format_version")
        guard version <= CaseStoreFormat.version else {
            throw AttunetError(
                "\(path): case store format version \(version) is newer than this attunet reads (\(CaseStoreFormat.version))"
            )
        }
        let names = try root.stringAttribute("class_names")
        classNames = (try? JSONSerialization.jsonObject(with: Data(names.utf8)) as? [String]) ?? []
        modality = (try? root.stringAttribute("modality")) ?? "CT"
        spacing = try root.doublesAttribute("spacing_mm")
        foregroundIntensity = try root.doublesAttribute("foreground_intensity")
        blurSigma = root.hasAttribute("blur_sigma_mm") ? try root.doublesAttribute("blur_sigma_mm").first : nil
        fingerprint = (try? root.stringAttribute("fingerprint")) ?? ""
        try Self.expect(spacing, 3, "spacing_mm", at: "/", in: path)
        try Self.expect(foregroundIntensity, 5, "foreground_intensity", at: "/", in: path)
        let group = try root.group("cases")
        var infos: [CaseInfo] = []
        var imgs: [H5Dataset] = []
        var labs: [H5Dataset] = []
        for id in try group.members().sorted() {
            let g = try group.group(id)
            let img = try g.dataset("image")
            let lab = try g.dataset("label")
            guard img.shape.count == 3, img.shape == lab.shape else {
                throw AttunetError(
                    "\(path): /cases/\(id) image \(img.shape) and label \(lab.shape) shapes differ or are not 3D")
            }
            var fg: [Int32] = []
            if g.exists("foreground") {
                let d = try g.dataset("foreground")
                fg = [Int32](repeating: 0, count: d.count)
                try fg.withUnsafeMutableBytes { try d.read(into: $0.baseAddress!, as: .int32) }
            }
            /// An optional numeric attribute of `count` values: nil when absent, an error when malformed.
            func optional<T>(_ name: String, _ count: Int, _ read: (String) throws -> [T]) throws -> [T]? {
                guard g.hasAttribute(name) else { return nil }
                let v = try read(name)
                guard v.count == count else {
                    throw AttunetError(
                        "\(path): /cases/\(id) attribute \(name) has \(v.count) values, expected \(count)")
                }
                return v
            }
            let originalShape = try optional("original_shape", 3, g.intsAttribute).map {
                Dim3(z: Int($0[2]), y: Int($0[1]), x: Int($0[0]))  // stored x, y, z
            }
            guard fg.count % 4 == 0 else {
                throw AttunetError(
                    "\(path): /cases/\(id)/foreground has \(fg.count) values, not rows of 4 (class, z, y, x)",
                    kind: .corrupt)
            }
            let caseSpacing = try g.doublesAttribute("spacing_mm")
            let affine = try g.doublesAttribute("affine")
            let stats = try g.doublesAttribute("intensity_stats")
            for (values, count, name) in [
                (caseSpacing, 3, "spacing_mm"), (affine, 16, "affine"), (stats, 4, "intensity_stats"),
            ] {
                try Self.expect(values, count, name, at: "/cases/\(id)", in: path)
            }
            infos.append(
                CaseInfo(
                    id: id, shape: Dim3(z: img.shape[0], y: img.shape[1], x: img.shape[2]),
                    spacing: caseSpacing, affine: affine,
                    stats: stats, classVoxels: try g.intsAttribute("class_voxels"),
                    foreground: fg, source: (try? g.stringAttribute("source")) ?? "",
                    originalShape: originalShape,
                    originalSpacing: try optional("original_spacing_mm", 3, g.doublesAttribute),
                    originalAffine: try optional("original_affine", 16, g.doublesAttribute)))
            imgs.append(img)
            labs.append(lab)
        }
        guard !infos.isEmpty else { throw AttunetError("\(path): the store has no cases") }
        cases = infos
        images = imgs
        labels = labs
    }

    /// Refuses a numeric attribute of a damaged or foreign store that does not hold `count` values.
    static func expect(_ values: [Double], _ count: Int, _ name: String, at object: String, in path: String) throws {
        guard values.count == count else {
            throw AttunetError(
                "\(path): \(object) attribute \(name) has \(values.count) values, expected \(count)", kind: .corrupt)
        }
    }

    public func index(of id: String) -> Int? { cases.firstIndex { $0.id == id } }

    /// The whole image of case `c` as float.
    public func image(_ c: Int) throws -> [Float] { try images[c].readFloats() }

    /// The whole label map of case `c`.
    public func label(_ c: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: labels[c].count)
        try out.withUnsafeMutableBytes { try labels[c].read(into: $0.baseAddress!, as: .uint8) }
        return out
    }

    /// Reads the box `start ..< start + size` (voxels, z/y/x; may extend past the volume on any side) of case
    /// `c` into `image` (and `label` when given), padding with the volume's minimum (label 0) outside.
    public func readBox(
        _ c: Int, start: (z: Int, y: Int, x: Int), size: Dim3,
        image: UnsafeMutablePointer<Float>, label: UnsafeMutablePointer<UInt8>?
    ) throws {
        let s = cases[c].shape
        let lo = [max(0, start.z), max(0, start.y), max(0, start.x)]
        let hi = [min(s.z, start.z + size.z), min(s.y, start.y + size.y), min(s.x, start.x + size.x)]
        let inside = zip(lo, hi).allSatisfy { $0 < $1 }
        let full =
            inside && lo == [start.z, start.y, start.x] && hi == [start.z + size.z, start.y + size.y, start.x + size.x]
        if full {
            try images[c].readHyperslab(start: lo, count: [size.z, size.y, size.x], into: image, as: .float32)
            if let label {
                try labels[c].readHyperslab(start: lo, count: [size.z, size.y, size.x], into: label, as: .uint8)
            }
            return
        }
        image.update(repeating: cases[c].minimum, count: size.count)
        label?.update(repeating: 0, count: size.count)
        guard inside else { return }
        let cnt = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]]
        var tmp = [Float](repeating: 0, count: cnt[0] * cnt[1] * cnt[2])
        try tmp.withUnsafeMutableBytes {
            try images[c].readHyperslab(start: lo, count: cnt, into: $0.baseAddress!, as: .float32)
        }
        var ltmp = [UInt8]()
        if label != nil {
            ltmp = [UInt8](repeating: 0, count: tmp.count)
            try ltmp.withUnsafeMutableBytes {
                try labels[c].readHyperslab(start: lo, count: cnt, into: $0.baseAddress!, as: .uint8)
            }
        }
        for z in 0..<cnt[0] {
            for y in 0..<cnt[1] {
                let dst = ((lo[0] - start.z + z) * size.y + (lo[1] - start.y + y)) * size.x + (lo[2] - start.x)
                let src = (z * cnt[1] + y) * cnt[2]
                tmp.withUnsafeBufferPointer { (image + dst).update(from: $0.baseAddress! + src, count: cnt[2]) }
                if let label {
                    ltmp.withUnsafeBufferPointer { (label + dst).update(from: $0.baseAddress! + src, count: cnt[2]) }
                }
            }
        }
    }
}

/// Intensity normalisation of image patches.
public enum IntensityNormalization: Sendable, Equatable {
    /// (x - mean) / std with the case's whole-volume statistics (the original's "linearly scaled to N(0,1)").
    case zscore
    /// CT windowing as nnU-Net: clip to [lower, upper] (dataset foreground percentiles 0.5 / 99.5), then
    /// z-score with the dataset foreground mean and std.
    case ctWindow(lower: Double, upper: Double, mean: Double, std: Double)
    /// Leave HU as they are.
    case none

    /// CT windowing with the store's fingerprint.
    public static func ctWindow(_ store: CaseStore) -> IntensityNormalization {
        let f = store.foregroundIntensity
        return .ctWindow(lower: f[0], upper: f[2], mean: f[3], std: f[4])
    }

    public func apply(_ p: UnsafeMutablePointer<Float>, count: Int, case info: CaseInfo) {
        apply(p, count: count, stats: info.stats)
    }

    /// Normalises `count` values of an image whose statistics are `stats` (min, max, mean, population std, as
    /// the store's `intensity_stats`).
    public func apply(_ p: UnsafeMutablePointer<Float>, count: Int, stats: [Double]) {
        switch self {
        case .none: return
        case .zscore:
            let m = Float(stats[2])
            let inv = Float(1 / max(stats[3], 1e-6))
            for i in 0..<count { p[i] = (p[i] - m) * inv }
        case .ctWindow(let lo, let hi, let mean, let std):
            let l = Float(lo)
            let h = Float(hi)
            let m = Float(mean)
            let inv = Float(1 / max(std, 1e-6))
            for i in 0..<count { p[i] = (min(max(p[i], l), h) - m) * inv }
        }
    }
}
