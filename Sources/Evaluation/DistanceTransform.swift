import Tensor

/// Voxel spacing in mm along x, y and z (our `[Z][Y][X]` layout stores x fastest). Anisotropic spacing is
/// the rule in CT: in-plane 0.6–0.9 mm, slices 1–5 mm apart.
public struct VoxelSpacing: Sendable, Equatable, CustomStringConvertible {
    public var x: Double, y: Double, z: Double
    public init(x: Double, y: Double, z: Double) {
        self.x = x
        self.y = y
        self.z = z
    }
    /// From `[x, y, z]`, the order of the case store's `spacing_mm` and of `PreparedCase.originalSpacing`.
    public init(_ xyz: [Double]) {
        precondition(xyz.count == 3, "spacing needs 3 values (x, y, z)")
        self.init(x: xyz[0], y: xyz[1], z: xyz[2])
    }
    public static let isotropic1mm = VoxelSpacing(x: 1, y: 1, z: 1)
    public var description: String { "\(x) x \(y) x \(z) mm" }
    /// The diagonal of a volume of `dim` voxels in mm: √((nx·sx)² + (ny·sy)² + (nz·sz)²), larger than any
    /// distance between two of its voxel centres. The worst-case distance of ``CaseMetrics``.
    public func diagonal(of dim: Dim3) -> Double {
        let a = Double(dim.x) * x
        let b = Double(dim.y) * y
        let c = Double(dim.z) * z
        return (a * a + b * b + c * c).squareRoot()
    }
}

/// The exact Euclidean distance transform with anisotropic spacing: Felzenszwalb and Huttenlocher's
/// separable algorithm ("Distance Transforms of Sampled Functions", 2012), a lower envelope of parabolas in
/// O(n) per line, along z, then y, then x.
///
/// For every voxel v the result is `min over feature voxels f of √(Σ_axis ((v_a − f_a)·s_a)²)`, exact up to
/// float rounding (no chamfer approximation), and `+∞` when the volume has no feature voxel. Each axis term is
/// computed as `((v_a − f_a)·s_a)²` and the terms are added z + y first, then x: the same operations, in the
/// same order, as `scipy.ndimage.distance_transform_edt(~features, sampling=(sz, sy, sx))` on a `(z, y, x)`
/// array, so the two agree bit for bit wherever both pick the same nearest feature.
public enum DistanceTransform {
    /// Squared distances in mm² from every voxel of a `dim` volume to the nearest voxel where
    /// `features[v] != 0`, written to `out` (`+∞` everywhere when there is none). Allocates only line scratch.
    public static func squaredEuclidean(
        features: UnsafeBufferPointer<UInt8>, dim: Dim3, spacing: VoxelSpacing,
        into out: UnsafeMutableBufferPointer<Double>
    ) {
        precondition(features.count == dim.count && out.count == dim.count)
        for i in 0..<dim.count { out[i] = features[i] != 0 ? 0 : .infinity }
        squaredEuclidean(inPlace: out, dim: dim, spacing: spacing)
    }

    /// The same transform on `values` already set to 0 at the feature voxels and `+∞` elsewhere (a caller that
    /// derives the features from other data marks them without a features buffer): on return each holds the
    /// squared distance in mm² to the nearest feature voxel. Allocates only line scratch.
    public static func squaredEuclidean(
        inPlace out: UnsafeMutableBufferPointer<Double>, dim: Dim3, spacing: VoxelSpacing
    ) {
        precondition(out.count == dim.count)
        let longest = max(dim.x, dim.y, dim.z)
        var line = [Double](repeating: 0, count: longest)
        var result = [Double](repeating: 0, count: longest)
        var vertices = [Int](repeating: 0, count: longest)
        var bounds = [Double](repeating: 0, count: longest + 1)
        line.withUnsafeMutableBufferPointer { f in
            result.withUnsafeMutableBufferPointer { d in
                vertices.withUnsafeMutableBufferPointer { v in
                    bounds.withUnsafeMutableBufferPointer { z in
                        // (length, stride, spacing, the lines' starts) for z, y, x.
                        let plane = dim.y * dim.x
                        let passes: [(n: Int, stride: Int, s: Double, starts: [(Int, Int)])] = [
                            (dim.z, plane, spacing.z, [(plane, 1)]),
                            (dim.y, dim.x, spacing.y, [(dim.z, plane), (dim.x, 1)]),
                            (dim.x, 1, spacing.x, [(dim.z * dim.y, dim.x)]),
                        ]
                        for pass in passes {
                            guard pass.n > 0 else { continue }
                            // Enumerate the line starts: a product of (count, step) ranges.
                            let counts = pass.starts.map(\.0)
                            let steps = pass.starts.map(\.1)
                            let lines = counts.reduce(1, *)
                            for l in 0..<lines {
                                var rest = l
                                var start = 0
                                for a in stride(from: counts.count - 1, through: 0, by: -1) {
                                    start += (rest % counts[a]) * steps[a]
                                    rest /= counts[a]
                                }
                                for q in 0..<pass.n { f[q] = out[start + q * pass.stride] }
                                envelope1D(f, count: pass.n, spacing: pass.s, vertices: v, bounds: z, into: d)
                                for q in 0..<pass.n { out[start + q * pass.stride] = d[q] }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Distances in mm (the square roots of ``squaredEuclidean(features:dim:spacing:into:)``).
    public static func euclidean(features: [UInt8], dim: Dim3, spacing: VoxelSpacing) -> [Double] {
        var out = [Double](repeating: 0, count: dim.count)
        features.withUnsafeBufferPointer { fb in
            out.withUnsafeMutableBufferPointer { ob in
                squaredEuclidean(features: fb, dim: dim, spacing: spacing, into: ob)
                for i in 0..<ob.count { ob[i] = ob[i].squareRoot() }
            }
        }
        return out
    }

    /// One line: `d[q] = min_p ((q − p)·s)² + f[p]` over the `count` samples, skipping `f[p] = +∞` (all `+∞`
    /// when every sample is). `vertices` and `bounds` are scratch of `count` and `count + 1` entries.
    @inline(__always)
    static func envelope1D(
        _ f: UnsafeMutableBufferPointer<Double>, count n: Int, spacing s: Double,
        vertices v: UnsafeMutableBufferPointer<Int>, bounds z: UnsafeMutableBufferPointer<Double>,
        into d: UnsafeMutableBufferPointer<Double>
    ) {
        let s2 = s * s
        var k = -1
        for q in 0..<n where f[q] < .infinity {
            if k < 0 {
                k = 0
                v[0] = q
                z[0] = -.infinity
                z[1] = .infinity
                continue
            }
            // Where q's parabola overtakes the envelope's last one; drop those it hides (z[0] = −∞ stops it).
            let fq = f[q] + s2 * Double(q * q)
            func crossing(_ p: Int) -> Double { (fq - (f[p] + s2 * Double(p * p))) / (2 * s2 * Double(q - p)) }
            var x = crossing(v[k])
            while x <= z[k] {
                k -= 1
                x = crossing(v[k])
            }
            k += 1
            v[k] = q
            z[k] = x
            z[k + 1] = .infinity
        }
        if k < 0 {
            for q in 0..<n { d[q] = .infinity }
            return
        }
        k = 0
        for q in 0..<n {
            while z[k + 1] < Double(q) { k += 1 }
            let t = Double(q - v[k]) * s
            d[q] = t * t + f[v[k]]
        }
    }
}
