import Foundation
import HDF5Kit
import Tensor

/// The HDF5 case store layout, version 1 (this type's page in the Data documentation has every field):
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

/// Writes the case store that `CaseStore` reads: one group per case, then the root attributes.
enum CaseStoreWriter {
    /// What the root attributes need of the cases written: their ids, a sample of their foreground
    /// intensities, and the spacing and shape of their sources.
    final class Contents: @unchecked Sendable {
        var written: [String] = []
        var samples: [String: [Float]] = [:]
        var spacings: [String: [Double]] = [:]
        var shapes: [String: [Int]] = [:]

        func add(_ c: PreparedCase) {
            written.append(c.id)
            samples[c.id] = c.foregroundSample
            spacings[c.id] = c.originalSpacing
            shapes[c.id] = c.originalShape
        }
    }

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

    /// Writes the root attributes (format, classes, spacing, fingerprint) of a store whose cases are in place;
    /// returns the foreground intensity percentiles and moments.
    static func finish(_ file: H5File, _ acc: Contents, options o: PrepareOptions) throws -> [String: Double] {
        // Fingerprint: spacings and shapes of the sources, intensities over the foreground.
        let ids = acc.written.sorted()
        let fg = ids.flatMap { acc.samples[$0]! }.sorted()
        let fmean = fg.isEmpty ? 0 : fg.reduce(0.0) { $0 + Double($1) } / Double(fg.count)
        let fstd =
            fg.isEmpty
            ? 0 : (fg.reduce(0.0) { $0 + (Double($1) - fmean) * (Double($1) - fmean) } / Double(fg.count)).squareRoot()
        let fp: [String: Double] = [
            "p0_5": percentile(fg, 0.5), "p50": percentile(fg, 50), "p99_5": percentile(fg, 99.5),
            "mean": fmean, "std": fstd,
        ]
        func median(_ v: [Double]) -> Double {
            let s = v.sorted()
            return s.isEmpty ? 0 : s[s.count / 2]
        }
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
        try root.setAttribute(
            "class_names", String(decoding: try JSONSerialization.data(withJSONObject: o.classNames), as: UTF8.self))
        try root.setAttribute("modality", o.modality)
        try root.setAttribute("spacing_mm", [o.spacing, o.spacing, o.spacing])
        try root.setAttribute("blur_sigma_mm", o.blurSigma)
        try root.setAttribute("num_cases", ids.count)
        try root.setAttribute(
            "fingerprint",
            String(
                decoding: try JSONSerialization.data(withJSONObject: fingerprint, options: [.sortedKeys]), as: UTF8.self
            ))
        try root.setAttribute("foreground_intensity", [fp["p0_5"]!, fp["p50"]!, fp["p99_5"]!, fp["mean"]!, fp["std"]!])
        if let m = o.labelMap {
            try root.setAttribute("label_map", m.keys.sorted().map { "\($0):\(m[$0]!)" }.joined(separator: ","))
        }
        try file.flush()
        return fp
    }

    /// Percentile (linear interpolation, numpy's default) of sorted values.
    static func percentile(_ sorted: [Float], _ q: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        let pos = q / 100 * Double(sorted.count - 1)
        let i = Int(pos.rounded(.down))
        let f = pos - Double(i)
        return Double(sorted[i]) + f * (Double(sorted[min(i + 1, sorted.count - 1)]) - Double(sorted[i]))
    }
}
