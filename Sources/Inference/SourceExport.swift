import DataPipeline
import Foundation
import Support
import Tensor

/// A stored case's two grids, the source file's and the store's, checked against each other: the store's must
/// be the source's resampled as `attunet prepare` resamples (same voxel axes, centred on the source's extent),
/// or the case cannot be mapped back and every initialiser throws.
public struct SourceGeometry: Sendable {
    /// The store's path and the case id, for messages.
    public var store: String
    public var caseID: String
    /// The stored grid: size, spacing (x, y, z, mm) and voxel-to-world affine (row-major 4x4).
    public var storedShape: Dim3
    public var storedSpacing: [Double]
    public var storedAffine: [Double]
    /// The source file's grid (`original_shape`, `original_spacing_mm`, `original_affine`).
    public var sourceShape: Dim3
    public var sourceSpacing: [Double]
    public var sourceAffine: [Double]
    /// Stored voxel `i'` samples the source at continuous index `scale · i' + offset` per axis; export inverts it.
    public var grid: ResampleGrid

    /// The geometry of case `c` of `store`.
    public init(store: CaseStore, case c: Int) throws {
        try self.init(info: store.cases[c], store: store.path)
    }

    /// The geometry of a case read from the store at `store` (the path names the store in errors).
    public init(info: CaseInfo, store: String) throws {
        let place = "\(store): case \(info.id)"
        guard let shape = info.originalShape, let spacing = info.originalSpacing, let affine = info.originalAffine
        else {
            throw AttunetError(
                "\(place) has no original_shape, original_spacing_mm or original_affine attribute; its source geometry is unknown (make the store with attunet prepare)"
            )
        }
        guard info.spacing.count == 3, info.affine.count == 16 else {
            throw AttunetError(
                "\(place): spacing_mm or affine has the wrong number of values (\(info.spacing.count), \(info.affine.count))"
            )
        }
        for (name, s) in [("original_spacing_mm", spacing), ("spacing_mm", info.spacing)]
        where !s.allSatisfy({ $0.isFinite && $0 > 0 }) {
            throw AttunetError("\(place): \(name) \(s) is not positive")
        }
        for a in 0..<3 {
            let norm = (0..<3).reduce(0.0) { $0 + affine[$1 * 4 + a] * affine[$1 * 4 + a] }.squareRoot()
            guard abs(norm - spacing[a]) <= 1e-4 * spacing[a] else {
                throw AttunetError(
                    "\(place): original_spacing_mm \(spacing) differs from the original_affine's column \(a) norm \(norm)"
                )
            }
        }
        let grid = ResampleGrid(
            from: shape, spacing: (spacing[0], spacing[1], spacing[2]),
            target: (info.spacing[0], info.spacing[1], info.spacing[2]))
        guard grid.to == info.shape else {
            throw AttunetError(
                "\(place): stored size \(info.shape) is not the source's \(shape) resampled from \(spacing) mm to \(info.spacing) mm (\(grid.to)); the store does not match its source geometry"
            )
        }
        let expected = grid.affine(source: affine)
        for i in 0..<16 {
            let tol = i % 4 == 3 ? 1e-3 : 1e-5 * max(1, abs(expected[i]))
            guard abs(info.affine[i] - expected[i]) <= tol else {
                throw AttunetError(
                    "\(place): stored affine row \(i / 4) column \(i % 4) is \(info.affine[i]), the source affine resampled to the stored grid gives \(expected[i]); the store does not match its source geometry"
                )
            }
        }
        self.store = store
        caseID = info.id
        storedShape = info.shape
        storedSpacing = info.spacing
        storedAffine = info.affine
        sourceShape = shape
        sourceSpacing = spacing
        sourceAffine = affine
        self.grid = grid
    }
}

/// How a prediction on the stored grid is taken back to the source grid.
public enum ExportResampling: String, Sendable, CaseIterable {
    /// Trilinear interpolation of the class probabilities, then the arg-max (nnU-Net's way) when the prediction
    /// kept its probabilities; else nearest-neighbour of the labels.
    case automatic
    /// Trilinear interpolation of the class probabilities, then the arg-max (needs the probabilities).
    case linearProbabilities
    /// The label of the nearest stored voxel.
    case nearestLabels
}

/// The qform and sform codes an exported file carries (NIfTI's `NIFTI_XFORM_*`; 1 = scanner anatomy).
public struct XformCodes: Sendable, Equatable {
    public var qform: Int32, sform: Int32
    public init(qform: Int32, sform: Int32) {
        self.qform = qform
        self.sform = sform
    }

    /// Scanner anatomy for both: what CT converted from DICOM carries, and what makes every reader, whichever
    /// matrix it prefers, place the labels where the source's own matrix places its voxels.
    public static let scanner = XformCodes(qform: 1, sform: 1)

    /// The codes of the source file at `path` (its header alone is read), after checking that its size and
    /// affine are the ones the store recorded: a source that changed since `prepare` is an error.
    public static func of(source path: String, geometry g: SourceGeometry) throws -> XformCodes {
        let h = try NIfTIVolume.readGeometry(path)
        let s = g.sourceShape
        guard [h.nx, h.ny, h.nz] == [s.x, s.y, s.z] else {
            throw AttunetError(
                "\(path): size \(h.nx)x\(h.ny)x\(h.nz) differs from the \(s) that \(g.store) recorded for case \(g.caseID)"
            )
        }
        for i in 0..<16 {
            let tol = i % 4 == 3 ? 1e-3 : 1e-4 * max(1, abs(g.sourceAffine[i]))
            guard abs(h.affine[i] - g.sourceAffine[i]) <= tol else {
                throw AttunetError(
                    "\(path): affine row \(i / 4) column \(i % 4) is \(h.affine[i]), \(g.store) recorded \(g.sourceAffine[i]) for case \(g.caseID)"
                )
            }
        }
        return XformCodes(qform: h.qformCode, sform: h.sformCode)
    }
}

/// Takes a prediction made on a store's grid back to its source's grid, in slabs of output slices, and writes
/// it as NIfTI with the source's geometry.
///
/// Probabilities (when kept) are interpolated trilinearly at each source voxel and the arg-max taken at once,
/// so a full-resolution probability volume never exists unless ``probabilities(_:geometry:)`` is asked for it.
/// Source voxel `i` (per axis) reads the stored grid at `(i − offset) / scale`, the inverse of the sampling
/// that `prepare` did, clamped to the stored extent.
public enum SourceExport {
    /// Output slices computed per slab (the slab's labels are the only buffer besides the output).
    public static let slabSlices = 8

    /// The labels on the source grid, `[z][y][x]` of ``SourceGeometry/sourceShape``.
    public static func labels(
        _ prediction: Prediction, geometry g: SourceGeometry,
        resampling: ExportResampling = .automatic
    ) throws -> [UInt8] {
        let linear = try check(prediction, g, resampling)
        let s = g.sourceShape
        let plane = s.y * s.x
        var out = [UInt8](repeating: 0, count: s.count)
        let maps = AxisMaps(g)
        out.withUnsafeMutableBufferPointer { o in
            for z0 in stride(from: 0, to: s.z, by: slabSlices) {
                let z1 = min(s.z, z0 + slabSlices)
                fill(prediction, maps, linear: linear, slices: z0..<z1, into: o.baseAddress! + z0 * plane)
            }
        }
        return out
    }

    /// The class probabilities on the source grid, `[classes][z][y][x]`: the full-resolution volume that
    /// ``labels(_:geometry:resampling:)`` and ``write(_:geometry:to:resampling:codes:)`` never hold. Needs the
    /// prediction's probabilities.
    public static func probabilities(_ prediction: Prediction, geometry g: SourceGeometry) throws -> [Float] {
        _ = try check(prediction, g, .linearProbabilities)
        let s = g.sourceShape
        let k = prediction.classes
        let sv = s.count
        let nv = prediction.shape.count
        let m = AxisMaps(g)
        let d = prediction.shape
        var out = [Float](repeating: 0, count: k * sv)
        prediction.probabilities!.withUnsafeBufferPointer { pb in
            out.withUnsafeMutableBufferPointer { ob in
                let p = pb.baseAddress!
                let o = ob.baseAddress!
                parallelFor(s.z) { z in
                    let (z0, z1, wz) = (Int(m.z.i0[z]), Int(m.z.i1[z]), m.z.w[z])
                    for y in 0..<s.y {
                        let (y0, y1, wy) = (Int(m.y.i0[y]), Int(m.y.i1[y]), m.y.w[y])
                        let r00 = (z0 * d.y + y0) * d.x
                        let r01 = (z0 * d.y + y1) * d.x
                        let r10 = (z1 * d.y + y0) * d.x
                        let r11 = (z1 * d.y + y1) * d.x
                        let row = (z * s.y + y) * s.x
                        for x in 0..<s.x {
                            let (x0, x1, wx) = (Int(m.x.i0[x]), Int(m.x.i1[x]), m.x.w[x])
                            for c in 0..<k {
                                o[c * sv + row + x] = trilinear(p + c * nv, r00, r01, r10, r11, x0, x1, wx, wy, wz)
                            }
                        }
                    }
                }
            }
        }
        return out
    }

    /// Writes the labels on the source grid to `path` (`.nii` / `.nii.gz`, uint8) with the source's affine as
    /// both the qform and the sform, with `codes`.
    public static func write(
        _ prediction: Prediction, geometry g: SourceGeometry, to path: String,
        resampling: ExportResampling = .automatic, codes: XformCodes = .scanner
    ) throws {
        let linear = try check(prediction, g, resampling)
        let s = g.sourceShape
        let plane = s.y * s.x
        // NIfTIVolume holds float voxels: the labels go straight into them, one slab of bytes at a time.
        var voxels = [Float](repeating: 0, count: s.count)
        var slab = [UInt8](repeating: 0, count: slabSlices * plane)
        let maps = AxisMaps(g)
        voxels.withUnsafeMutableBufferPointer { v in
            slab.withUnsafeMutableBufferPointer { sb in
                for z0 in stride(from: 0, to: s.z, by: slabSlices) {
                    let z1 = min(s.z, z0 + slabSlices)
                    fill(prediction, maps, linear: linear, slices: z0..<z1, into: sb.baseAddress!)
                    let dst = v.baseAddress! + z0 * plane
                    for i in 0..<((z1 - z0) * plane) { dst[i] = Float(sb[i]) }
                }
            }
        }
        var volume = NIfTIVolume(nx: s.x, ny: s.y, nz: s.z, affine: g.sourceAffine, voxels: voxels)
        voxels = []
        volume.qformCode = codes.qform
        volume.sformCode = codes.sform
        try volume.write(path, as: .uint8)
    }

    /// Checks that the prediction is on the stored grid of `g` and has what `resampling` needs; returns whether
    /// to interpolate probabilities.
    static func check(_ p: Prediction, _ g: SourceGeometry, _ resampling: ExportResampling) throws -> Bool {
        let place = "\(g.store): case \(g.caseID)"
        guard p.shape == g.storedShape, p.labels.count == p.shape.count else {
            throw AttunetError("\(place): the prediction's size \(p.shape) differs from the stored \(g.storedShape)")
        }
        let hasProbabilities = p.probabilities?.count == p.classes * p.shape.count
        if p.probabilities != nil && !hasProbabilities {
            throw AttunetError(
                "\(place): the prediction holds \(p.probabilities!.count) probabilities, expected \(p.classes) x \(p.shape.count)"
            )
        }
        switch resampling {
        case .automatic: return hasProbabilities
        case .nearestLabels: return false
        case .linearProbabilities:
            guard hasProbabilities else {
                throw AttunetError(
                    "\(place): trilinear export needs the prediction's probabilities (predict with keepProbabilities)")
            }
            return true
        }
    }

    /// Per output axis: the two stored indices and the weight of the second (linear, edges clamped), and the
    /// nearest stored index.
    struct AxisMap {
        var i0: [Int32] = [], i1: [Int32] = [], w: [Float] = [], nearest: [Int32] = []

        init(count: Int, stored n: Int, scale: Double, offset: Double) {
            for i in 0..<count {
                let t = (Double(i) - offset) / scale
                if t <= 0 {
                    i0.append(0)
                    i1.append(0)
                    w.append(0)
                } else if t >= Double(n - 1) {
                    i0.append(Int32(n - 1))
                    i1.append(Int32(n - 1))
                    w.append(0)
                } else {
                    let f = t.rounded(.down)
                    i0.append(Int32(f))
                    i1.append(Int32(min(Int(f) + 1, n - 1)))
                    w.append(Float(t - f))
                }
                nearest.append(Int32(min(max(Int((t + 0.5).rounded(.down)), 0), n - 1)))
            }
        }
    }

    struct AxisMaps {
        var x: AxisMap, y: AxisMap, z: AxisMap
        init(_ g: SourceGeometry) {
            let s = g.sourceShape
            let d = g.storedShape
            let r = g.grid
            x = AxisMap(count: s.x, stored: d.x, scale: r.scale.x, offset: r.offset.x)
            y = AxisMap(count: s.y, stored: d.y, scale: r.scale.y, offset: r.offset.y)
            z = AxisMap(count: s.z, stored: d.z, scale: r.scale.z, offset: r.offset.z)
        }
    }

    @inline(__always)
    static func trilinear(
        _ p: UnsafePointer<Float>, _ r00: Int, _ r01: Int, _ r10: Int, _ r11: Int,
        _ x0: Int, _ x1: Int, _ wx: Float, _ wy: Float, _ wz: Float
    ) -> Float {
        let a = p[r00 + x0] + wx * (p[r00 + x1] - p[r00 + x0])
        let b = p[r01 + x0] + wx * (p[r01 + x1] - p[r01 + x0])
        let c = p[r10 + x0] + wx * (p[r10 + x1] - p[r10 + x0])
        let e = p[r11 + x0] + wx * (p[r11 + x1] - p[r11 + x0])
        let ab = a + wy * (b - a)
        let ce = c + wy * (e - c)
        return ab + wz * (ce - ab)
    }

    /// Labels of the source slices `slices` into `out` (`slices.count` planes).
    static func fill(
        _ prediction: Prediction, _ m: AxisMaps, linear: Bool, slices: Range<Int>,
        into out: UnsafeMutablePointer<UInt8>
    ) {
        let d = prediction.shape
        let k = prediction.classes
        let nv = d.count
        let sy = m.y.i0.count
        let sx = m.x.i0.count
        if !linear {
            prediction.labels.withUnsafeBufferPointer { lb in
                let l = lb.baseAddress!
                parallelFor(slices.count) { dz in
                    let zi = Int(m.z.nearest[slices.lowerBound + dz])
                    for y in 0..<sy {
                        let row = l + (zi * d.y + Int(m.y.nearest[y])) * d.x
                        let o = out + (dz * sy + y) * sx
                        for x in 0..<sx { o[x] = row[Int(m.x.nearest[x])] }
                    }
                }
            }
            return
        }
        prediction.probabilities!.withUnsafeBufferPointer { pb in
            let p = pb.baseAddress!
            parallelFor(slices.count) { dz in
                let z = slices.lowerBound + dz
                let (z0, z1, wz) = (Int(m.z.i0[z]), Int(m.z.i1[z]), m.z.w[z])
                for y in 0..<sy {
                    let (y0, y1, wy) = (Int(m.y.i0[y]), Int(m.y.i1[y]), m.y.w[y])
                    let r00 = (z0 * d.y + y0) * d.x
                    let r01 = (z0 * d.y + y1) * d.x
                    let r10 = (z1 * d.y + y0) * d.x
                    let r11 = (z1 * d.y + y1) * d.x
                    let o = out + (dz * sy + y) * sx
                    for x in 0..<sx {
                        let (x0, x1, wx) = (Int(m.x.i0[x]), Int(m.x.i1[x]), m.x.w[x])
                        var best = 0
                        var bestValue = trilinear(p, r00, r01, r10, r11, x0, x1, wx, wy, wz)
                        for c in 1..<max(k, 1) {
                            let v = trilinear(p + c * nv, r00, r01, r10, r11, x0, x1, wx, wy, wz)
                            if v > bestValue {
                                best = c
                                bestValue = v
                            }
                        }
                        o[x] = UInt8(best)
                    }
                }
            }
        }
    }
}
