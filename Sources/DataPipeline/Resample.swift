import Foundation
import Tensor

/// Resampling and filtering of 3D volumes stored `[Z][Y][X]` (x fastest), as flat arrays with a `Dim3`.
///
/// Conventions match scipy.ndimage so results can be checked against it: `gaussianBlur` is
/// `gaussian_filter(mode="reflect", truncate=4)`, `resampleLinear`/`resampleNearest` are
/// `map_coordinates(order=1 / order=0, mode="nearest")` on the grid that `ResampleGrid` describes.
public enum Resample {
    /// Separable Gaussian blur with per-axis sigma in voxels (an axis with sigma <= 1e-6 is left alone).
    /// Borders reflect about the edge (d c b a | a b c d), scipy's default.
    public static func gaussianBlur(_ v: inout [Float], dim: Dim3, sigma: (x: Double, y: Double, z: Double)) {
        blurAxis(&v, dim: dim, axis: 0, sigma: sigma.x)
        blurAxis(&v, dim: dim, axis: 1, sigma: sigma.y)
        blurAxis(&v, dim: dim, axis: 2, sigma: sigma.z)
    }

    /// Scipy's kernel: radius int(4 sigma + 0.5), weights exp(-x^2 / 2 sigma^2) normalised to sum 1.
    static func kernel(_ sigma: Double) -> [Float] {
        let r = Int(4 * sigma + 0.5)
        var w = (-r...r).map { exp(-0.5 * Double($0 * $0) / (sigma * sigma)) }
        let s = w.reduce(0, +)
        w = w.map { $0 / s }
        return w.map(Float.init)
    }

    /// Reflect index into 0..<n (half-sample symmetric).
    @inline(__always) static func reflect(_ i: Int, _ n: Int) -> Int {
        if n == 1 { return 0 }
        var i = i
        let period = 2 * n
        i %= period
        if i < 0 { i += period }
        return i < n ? i : period - 1 - i
    }

    static func blurAxis(_ v: inout [Float], dim: Dim3, axis: Int, sigma: Double) {
        guard sigma > 1e-6 else { return }
        let k = kernel(sigma)
        let r = k.count / 2
        let (nx, ny, nz) = (dim.x, dim.y, dim.z)
        let n = [nx, ny, nz][axis]
        let stride = [1, nx, nx * ny][axis]
        let lines = dim.count / n
        v.withUnsafeMutableBufferPointer { buf in
            let p = UncheckedSendable(buf.baseAddress!)
            parallelFor(lines) { line in
                // Start of the line: decompose `line` over the two other axes.
                let base: Int
                switch axis {
                case 0: base = line * nx
                case 1: base = (line / nx) * nx * ny + line % nx
                default: base = line
                }
                var src = [Float](repeating: 0, count: n)
                for i in 0..<n { src[i] = p.value[base + i * stride] }
                for i in 0..<n {
                    var acc: Float = 0
                    if i - r >= 0 && i + r < n {
                        for t in 0..<k.count { acc += k[t] * src[i - r + t] }
                    } else {
                        for t in 0..<k.count { acc += k[t] * src[reflect(i - r + t, n)] }
                    }
                    p.value[base + i * stride] = acc
                }
            }
        }
    }

    /// Trilinear interpolation at continuous source indices `grid.source(i')` with edge clamping.
    public static func resampleLinear(_ src: [Float], grid: ResampleGrid) -> [Float] {
        let s = grid.from
        let d = grid.to
        var out = [Float](repeating: 0, count: d.count)
        let xs = (0..<d.x).map { axisWeights(grid.scale.x * Double($0) + grid.offset.x, s.x) }
        let ys = (0..<d.y).map { axisWeights(grid.scale.y * Double($0) + grid.offset.y, s.y) }
        src.withUnsafeBufferPointer { sp in
            out.withUnsafeMutableBufferPointer { op in
                let spv = UncheckedSendable(sp.baseAddress!)
                let opv = UncheckedSendable(op.baseAddress!)
                parallelFor(d.z) { k in
                    let (z0, z1, wz) = axisWeights(grid.scale.z * Double(k) + grid.offset.z, s.z)
                    let sp = spv.value
                    let op = opv.value
                    for j in 0..<d.y {
                        let (y0, y1, wy) = ys[j]
                        let r00 = sp + (z0 * s.y + y0) * s.x
                        let r01 = sp + (z0 * s.y + y1) * s.x
                        let r10 = sp + (z1 * s.y + y0) * s.x
                        let r11 = sp + (z1 * s.y + y1) * s.x
                        let o = op + (k * d.y + j) * d.x
                        for i in 0..<d.x {
                            let (x0, x1, wx) = xs[i]
                            let a = r00[x0] + wx * (r00[x1] - r00[x0])
                            let b = r01[x0] + wx * (r01[x1] - r01[x0])
                            let c = r10[x0] + wx * (r10[x1] - r10[x0])
                            let e = r11[x0] + wx * (r11[x1] - r11[x0])
                            let ab = a + wy * (b - a)
                            let ce = c + wy * (e - c)
                            o[i] = ab + wz * (ce - ab)
                        }
                    }
                }
            }
        }
        return out
    }

    /// Nearest-neighbour at `grid.source(i')` (index floor(c + 0.5), clamped), for label maps.
    public static func resampleNearest<T: BitwiseCopyable>(_ src: [T], grid: ResampleGrid, fill: T) -> [T] {
        let s = grid.from
        let d = grid.to
        func idx(_ c: Double, _ n: Int) -> Int { min(max(Int((c + 0.5).rounded(.down)), 0), n - 1) }
        let xi = (0..<d.x).map { idx(grid.scale.x * Double($0) + grid.offset.x, s.x) }
        let yi = (0..<d.y).map { idx(grid.scale.y * Double($0) + grid.offset.y, s.y) }
        let zi = (0..<d.z).map { idx(grid.scale.z * Double($0) + grid.offset.z, s.z) }
        var out = [T](repeating: fill, count: d.count)
        var o = 0
        for k in 0..<d.z {
            for j in 0..<d.y {
                let row = (zi[k] * s.y + yi[j]) * s.x
                for i in 0..<d.x {
                    out[o] = src[row + xi[i]]
                    o += 1
                }
            }
        }
        return out
    }

    @inline(__always) static func axisWeights(_ c: Double, _ n: Int) -> (Int, Int, Float) {
        if c <= 0 { return (0, 0, 0) }
        if c >= Double(n - 1) { return (n - 1, n - 1, 0) }
        let f = c.rounded(.down)
        let i = Int(f)
        return (i, min(i + 1, n - 1), Float(c - f))
    }
}

/// The mapping from a resampled grid to its source: output voxel i' (per axis) reads source index
/// `scale * i' + offset`. `init(from:spacing:to:)` keeps the voxel axes and centres the new grid on the old
/// extent (voxel corners align): scale = s_new / s_old, offset = (scale - 1) / 2, n' = max(1, round(n * s_old / s_new)).
public struct ResampleGrid: Sendable, Equatable {
    public var from: Dim3, to: Dim3
    public var scale: (x: Double, y: Double, z: Double)
    public var offset: (x: Double, y: Double, z: Double)

    public static func == (a: ResampleGrid, b: ResampleGrid) -> Bool {
        a.from == b.from && a.to == b.to && a.scale == b.scale && a.offset == b.offset
    }

    public init(
        from: Dim3, to: Dim3, scale: (x: Double, y: Double, z: Double), offset: (x: Double, y: Double, z: Double)
    ) {
        self.from = from
        self.to = to
        self.scale = scale
        self.offset = offset
    }

    /// The grid at spacing `target` (mm, per axis) covering a volume of `from` voxels at `spacing` mm.
    public init(from: Dim3, spacing: (x: Double, y: Double, z: Double), target: (x: Double, y: Double, z: Double)) {
        func n(_ n: Int, _ s: Double, _ t: Double) -> Int { max(1, Int((Double(n) * s / t).rounded())) }
        let to = Dim3(
            z: n(from.z, spacing.z, target.z), y: n(from.y, spacing.y, target.y), x: n(from.x, spacing.x, target.x))
        let sc = (x: target.x / spacing.x, y: target.y / spacing.y, z: target.z / spacing.z)
        self.init(from: from, to: to, scale: sc, offset: ((sc.x - 1) / 2, (sc.y - 1) / 2, (sc.z - 1) / 2))
    }

    /// True when the grid is the identity (no resampling needed).
    public var isIdentity: Bool {
        from == to && abs(scale.x - 1) < 1e-9 && abs(scale.y - 1) < 1e-9 && abs(scale.z - 1) < 1e-9
    }

    /// The voxel-to-world affine (row-major 4x4) of the output grid, given the source's.
    public func affine(source a: [Double]) -> [Double] {
        var out = a
        let sc = [scale.x, scale.y, scale.z]
        let off = [offset.x, offset.y, offset.z]
        for r in 0..<3 {
            for c in 0..<3 { out[r * 4 + c] = a[r * 4 + c] * sc[c] }
            out[r * 4 + 3] = a[r * 4 + 3] + (0..<3).reduce(0.0) { $0 + a[r * 4 + $1] * off[$1] }
        }
        return out
    }
}
