import Tensor

/// How the two directed surface-distance sets of a case are combined into ASSD and HD95.
public enum SurfaceDistanceDefinition: String, Sendable, CaseIterable, Codable {
    /// medpy's `assd` and `hd95` (medpy 0.5): the two directed sets (prediction → reference and reference →
    /// prediction) are concatenated; ASSD is the mean of the pooled set, HD95 its 95th percentile with numpy's
    /// default (`linear`) interpolation. The default.
    case pooled
    /// DeepMind's `surface-distance` combination rules on the same surfaces: HD95 is the larger of the two
    /// directed 95th percentiles, each the first sorted distance whose cumulative share of the set reaches
    /// 0.95 (`compute_robust_hausdorff` with unit weights); ASSD is the mean of the two directed means
    /// (`compute_average_surface_distance` returns the two directed means).
    case maxDirected
}

/// Surfaces and surface distances of binary masks in physical space.
public enum SurfaceDistance {
    /// Marks the surface voxels of `mask` (nonzero = foreground) in `out` (1 = surface, else 0) and returns
    /// their count. A surface voxel is a foreground voxel with at least one of its 6 face neighbours in the
    /// background or outside the volume: `mask ^ binary_erosion(mask, generate_binary_structure(3, 1))` with
    /// scipy's default `border_value=0`, exactly medpy's `__surface_distances`.
    @discardableResult
    public static func surface(
        of mask: UnsafeBufferPointer<UInt8>, dim: Dim3,
        into out: UnsafeMutableBufferPointer<UInt8>
    ) -> Int {
        precondition(mask.count == dim.count && out.count == dim.count)
        let sx = 1
        let sy = dim.x
        let sz = dim.y * dim.x
        var n = 0
        for z in 0..<dim.z {
            for y in 0..<dim.y {
                for x in 0..<dim.x {
                    let v = z * sz + y * sy + x
                    guard mask[v] != 0 else {
                        out[v] = 0
                        continue
                    }
                    let interior =
                        x > 0 && x < dim.x - 1 && y > 0 && y < dim.y - 1 && z > 0 && z < dim.z - 1
                        && mask[v - sx] != 0 && mask[v + sx] != 0 && mask[v - sy] != 0 && mask[v + sy] != 0
                        && mask[v - sz] != 0 && mask[v + sz] != 0
                    out[v] = interior ? 0 : 1
                    if !interior { n += 1 }
                }
            }
        }
        return n
    }

    /// The directed surface distances of two nonempty masks on the same grid, in mm: for every surface voxel
    /// of `a`, the distance to the nearest surface voxel of `b` (`aToB`), and the other way round (`bToA`), in
    /// raster order (z, y, x). medpy's `__surface_distances(a, b, spacing)` and `(b, a, spacing)`.
    /// Empty masks have no surface: the caller handles them (``CaseMetrics``).
    public static func directed(
        _ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>, dim: Dim3,
        spacing: VoxelSpacing
    ) -> (aToB: [Double], bToA: [Double]) {
        precondition(a.count == dim.count && b.count == dim.count)
        var surfA = [UInt8](repeating: 0, count: dim.count)
        var surfB = surfA
        var dist = [Double](repeating: 0, count: dim.count)
        var aToB = [Double]()
        var bToA = [Double]()
        surfA.withUnsafeMutableBufferPointer { sa in
            surfB.withUnsafeMutableBufferPointer { sb in
                dist.withUnsafeMutableBufferPointer { d in
                    let na = surface(of: a, dim: dim, into: sa)
                    let nb = surface(of: b, dim: dim, into: sb)
                    aToB.reserveCapacity(na)
                    bToA.reserveCapacity(nb)
                    DistanceTransform.squaredEuclidean(
                        features: UnsafeBufferPointer(sb), dim: dim, spacing: spacing, into: d)
                    for v in 0..<dim.count where sa[v] != 0 { aToB.append(d[v].squareRoot()) }
                    DistanceTransform.squaredEuclidean(
                        features: UnsafeBufferPointer(sa), dim: dim, spacing: spacing, into: d)
                    for v in 0..<dim.count where sb[v] != 0 { bToA.append(d[v].squareRoot()) }
                }
            }
        }
        return (aToB, bToA)
    }

    /// ASSD and HD95 of two directed distance sets (both nonempty) under `definition`.
    public static func assdAndHD95(
        _ aToB: [Double], _ bToA: [Double],
        definition: SurfaceDistanceDefinition
    ) -> (assd: Double, hd95: Double) {
        precondition(!aToB.isEmpty && !bToA.isEmpty)
        switch definition {
        case .pooled:
            var all = aToB + bToA
            let assd = all.reduce(0, +) / Double(all.count)
            all.sort()
            return (assd, percentileLinear(sorted: all, 95))
        case .maxDirected:
            let ma = aToB.reduce(0, +) / Double(aToB.count)
            let mb = bToA.reduce(0, +) / Double(bToA.count)
            return (
                (ma + mb) / 2,
                max(
                    percentileFirstReaching(sorted: aToB.sorted(), 95),
                    percentileFirstReaching(sorted: bToA.sorted(), 95))
            )
        }
    }

    /// numpy's default percentile (`method='linear'`) of ascending `sorted` values, with numpy's arithmetic:
    /// index h = (n − 1)·q/100, i = ⌊h⌋, t = h − i, result a + (b − a)·t, or b − (b − a)·(1 − t) when t ≥ 0.5.
    public static func percentileLinear(sorted a: [Double], _ q: Double) -> Double {
        precondition(!a.isEmpty)
        let h = Double(a.count - 1) * (q / 100)
        if h >= Double(a.count - 1) { return a[a.count - 1] }
        if h < 0 { return a[0] }
        let i = Int(h.rounded(.down))
        let t = h - Double(i)
        let lo = a[i]
        let hi = a[i + 1]
        let diff = hi - lo
        return t >= 0.5 ? hi - diff * (1 - t) : lo + diff * t
    }

    /// DeepMind's percentile with unit weights: the first of the ascending `sorted` values at which the
    /// cumulative share (i + 1)/n reaches q/100 (`np.searchsorted(np.cumsum(w) / np.sum(w), q / 100)`,
    /// clamped to the last value).
    public static func percentileFirstReaching(sorted a: [Double], _ q: Double) -> Double {
        precondition(!a.isEmpty)
        let n = Double(a.count)
        let target = q / 100
        // The first i with (i + 1)/n ≥ target, found by bisection on the same doubles numpy compares.
        var lo = 0
        var hi = a.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if Double(mid + 1) / n >= target { hi = mid } else { lo = mid + 1 }
        }
        return a[min(lo, a.count - 1)]
    }
}
