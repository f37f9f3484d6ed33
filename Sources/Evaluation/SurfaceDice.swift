import Tensor

/// Normalised surface Dice (NSD) at a tolerance in mm, exactly as DeepMind's surface-distance library (version
/// 0.1) defines it: `compute_surface_dice_at_tolerance(compute_surface_distances(reference, prediction,
/// spacing), tolerance)` on `[Z][Y][X]` arrays with `spacing = (sz, sy, sx)`.
///
/// The library's surface is not made of voxels: it lives on the grid of voxel corners, half a voxel off the
/// voxel centres, one more point along each axis than the voxels. A corner's *neighbour code* holds its 2x2x2
/// voxel neighbourhood as 8 bits (outside the volume counts as background); a corner whose code is neither
/// 0 nor 255 is a surface element (surfel), weighted by the area in mm² of the marching-cubes triangles of its
/// code (``surfelAreas(spacing:)``). Each surfel's distance to the other surface is the exact Euclidean distance
/// to the nearest surfel of the other mask on that corner grid (the library's `distance_transform_edt` with
/// `sampling = spacing`, here ``DistanceTransform``). Then
///
///     NSD = (Σ area of R's surfels within τ of P's surface + Σ area of P's surfels within τ of R's surface)
///           / (Σ area of R's surfels + Σ area of P's surfels)
///
/// with "within" meaning distance ≤ τ. An empty mask has no surfel: with one mask empty the library gives 0,
/// with both empty 0/0 (NaN); ``CaseMetrics`` writes 1 there (the project's empty-mask rule, a correct "absent").
public enum SurfaceDice {
    /// The surfel areas of two masks and the parts of them within the tolerance of the other mask's surface.
    public struct Overlap: Sendable, Equatable {
        /// The total surfel area of the reference and of the prediction, in mm² (the library's
        /// `np.sum(surfel_areas_gt)` and `np.sum(surfel_areas_pred)`).
        public var referenceArea: Double, predictionArea: Double
        /// The surfel area of the reference within the tolerance of the prediction's surface, and of the
        /// prediction within the tolerance of the reference's surface, in mm².
        public var referenceWithin: Double, predictionWithin: Double

        /// `(referenceWithin + predictionWithin) / (referenceArea + predictionArea)`: the library's value
        /// (0 when one mask is empty, NaN when both are).
        public var nsd: Double { (referenceWithin + predictionWithin) / (referenceArea + predictionArea) }
    }

    /// The surfel areas of `prediction` and `reference` (binary masks, nonzero = foreground, of `dim` voxels at
    /// `spacing` mm) and their overlap at `tolerance` mm. Allocates three corner-grid buffers
    /// (`(z+1)·(y+1)·(x+1)` bytes twice and as many doubles) and works on them in place.
    public static func overlap(
        prediction: UnsafeBufferPointer<UInt8>, reference: UnsafeBufferPointer<UInt8>, dim: Dim3,
        spacing: VoxelSpacing, tolerance: Double
    ) -> Overlap {
        precondition(prediction.count == dim.count && reference.count == dim.count)
        let grid = Dim3(z: dim.z + 1, y: dim.y + 1, x: dim.x + 1)
        var codesP = [UInt8](repeating: 0, count: grid.count)
        var codesR = codesP
        var dist = [Double](repeating: 0, count: grid.count)
        // Surfel counts per neighbour code: [reference all, reference within, prediction all, prediction within].
        var counts = [Int](repeating: 0, count: 4 * 256)
        codesP.withUnsafeMutableBufferPointer { cp in
            codesR.withUnsafeMutableBufferPointer { cr in
                dist.withUnsafeMutableBufferPointer { d in
                    counts.withUnsafeMutableBufferPointer { n in
                        neighbourCodes(of: prediction, dim: dim, into: cp)
                        neighbourCodes(of: reference, dim: dim, into: cr)
                        let base = n.baseAddress!
                        directed(
                            from: UnsafeBufferPointer(cr), to: UnsafeBufferPointer(cp), grid: grid, spacing: spacing,
                            tolerance: tolerance, distances: d, all: base, within: base + 256)
                        directed(
                            from: UnsafeBufferPointer(cp), to: UnsafeBufferPointer(cr), grid: grid, spacing: spacing,
                            tolerance: tolerance, distances: d, all: base + 512, within: base + 768)
                    }
                }
            }
        }
        let areas = surfelAreas(spacing: spacing)
        func area(_ block: Int) -> Double {
            var s = 0.0
            for c in 0..<256 where counts[block * 256 + c] > 0 { s += Double(counts[block * 256 + c]) * areas[c] }
            return s
        }
        return Overlap(
            referenceArea: area(0), predictionArea: area(2), referenceWithin: area(1), predictionWithin: area(3))
    }

    /// Counts the surfels of `from` by neighbour code into `all`, and those within `tolerance` mm of the surfels
    /// of `to` into `within` (256 counters each). `distances` is scratch of the grid's size.
    static func directed(
        from: UnsafeBufferPointer<UInt8>, to: UnsafeBufferPointer<UInt8>, grid: Dim3, spacing: VoxelSpacing,
        tolerance: Double, distances d: UnsafeMutableBufferPointer<Double>,
        all: UnsafeMutablePointer<Int>, within: UnsafeMutablePointer<Int>
    ) {
        for v in 0..<grid.count {
            let c = to[v]
            d[v] = c != 0 && c != 255 ? 0 : .infinity
        }
        DistanceTransform.squaredEuclidean(inPlace: d, dim: grid, spacing: spacing)
        for v in 0..<grid.count {
            let c = Int(from[v])
            guard c != 0 && c != 255 else { continue }
            all[c] += 1
            // The library compares the distance itself (√ of the same squared sum), not its square.
            if d[v].squareRoot() <= tolerance { within[c] += 1 }
        }
    }

    /// The neighbour code of every corner of a `dim` volume's voxels, written to `codes` (`(z+1)·(y+1)·(x+1)`
    /// entries, x fastest): corner (i, j, k) lies between voxels i − 1 and i along z (j along y, k along x), and
    /// voxel (i − 1 + a, j − 1 + b, k − 1 + c) of its 2x2x2 neighbourhood sets bit 7 − (4a + 2b + c) when it is
    /// inside the volume and nonzero in `mask`. The library's `ndimage.correlate(crop, [[[128, 64], [32, 16]],
    /// [[8, 4], [2, 1]]], mode="constant", cval=0)` on the mask padded by one zero voxel at the end of each axis.
    public static func neighbourCodes(
        of mask: UnsafeBufferPointer<UInt8>, dim: Dim3, into codes: UnsafeMutableBufferPointer<UInt8>
    ) {
        let gx = dim.x + 1
        let gy = dim.y + 1
        let plane = gy * gx
        precondition(mask.count == dim.count && codes.count == (dim.z + 1) * plane)
        // Two planes of 4-bit in-plane codes (bit 3 − (2b + c) for voxel (j − 1 + b, k − 1 + c)) of voxel planes
        // i − 1 and i, and the 2-bit codes (bit 1 − c for voxel k − 1 + c) of the row above.
        var scratch = [UInt8](repeating: 0, count: 2 * plane + gx)
        scratch.withUnsafeMutableBufferPointer { s in
            var previous = 0
            var current = plane
            let row = 2 * plane
            for i in 0...dim.z {
                for k in 0..<gx { s[row + k] = 0 }
                for j in 0..<gy {
                    let voxels = (i * dim.y + j) * dim.x
                    var left: UInt8 = 0
                    for k in 0..<gx {
                        let here: UInt8 = i < dim.z && j < dim.y && k < dim.x && mask[voxels + k] != 0 ? 1 : 0
                        let pair = left << 1 | here
                        s[current + j * gx + k] = s[row + k] << 2 | pair
                        s[row + k] = pair
                        left = here
                    }
                }
                let out = i * plane
                for v in 0..<plane { codes[out + v] = s[previous + v] << 4 | s[current + v] }
                swap(&previous, &current)
            }
        }
    }

    /// The area in mm² of the surface elements of each of the 256 neighbour codes at `spacing`: the library's
    /// `create_table_neighbour_code_to_surface_area((sz, sy, sx))`, with its arithmetic. Each of a code's
    /// triangles has a normal (n0, n1, n2) along (z, y, x) whose length is its area in voxel units; scaled to mm
    /// it is (n0·sy·sx, n1·sz·sx, n2·sz·sy), and the code's area is the sum of those vectors' lengths.
    public static func surfelAreas(spacing: VoxelSpacing) -> [Double] {
        let (s0, s1, s2) = (spacing.z, spacing.y, spacing.x)
        return normals.map { triangles in
            var sum = 0.0
            for t in triangles {
                let a = t.0 * s1 * s2
                let b = t.1 * s0 * s2
                let c = t.2 * s0 * s1
                sum += (a * a + b * b + c * c).squareRoot()
            }
            return sum
        }
    }

    /// The triangle normals (n0, n1, n2) of each neighbour code, decoded from ``encodedNormals``.
    static let normals: [[(Double, Double, Double)]] = encodedNormals.split(separator: " ").map { word in
        let eighths = word.map { Double($0.wholeNumberValue! - 4) / 8 }
        return stride(from: 0, to: eighths.count, by: 3).map { (eighths[$0], eighths[$0 + 1], eighths[$0 + 2]) }
    }

    /// The surface normals of the 256 neighbour codes, in code order, from DeepMind's surface-distance
    /// (`surface_distance/lookup_tables.py`, `_NEIGHBOUR_CODE_TO_NORMALS`, created there with the marching
    /// cubes algorithm; Copyright 2018 Google Inc., licensed under the Apache License, Version 2.0,
    /// http://www.apache.org/licenses/LICENSE-2.0; THIRD_PARTY_NOTICES.md). Changed here only in notation: one word per code, three
    /// digits per normal, digit d standing for (d − 4)/8 (every component there is a multiple of 1/8 in
    /// −0.5...0.5); code 0 and 255 hold the zero normal, as there.
    static let encodedNormals = """
        444 555 335 224664 535 242646 535335 844666555 355 555355 246246 844226335 624624 844626353 044266355 \
        844844 533 422466 335533 404666555 535533 440666333 335535533 333222666555 355533 422466355 246246533 \
        555777426246 533624624 777462333264 044333222555 044333222 535 555535 426462 404553662 535535 535242646 \
        426462535 117466553242 355535 555535355 448226335 662662553335 535624624 844626353535 462711355664 \
        044226335 624264 484266533 484535262 484404 624264535 111246333264 555404222333 404222333 355624264 \
        484662335335 171224353246 484662335 624264624624 224224335 555224224 224224 335 555335 335335 335224664 \
        426426 448626535 426426335 717422353664 335355 555335355 335246246 844226335335 484262535 262262353353 \
        242711462355 844262535 246642 448266355 335246642 242177224355 440662335 448448 555555666448 555666448 \
        246642355 448626535535 246246246642 535646646 646117264335 448626535 555646646 646646 335535 555335535 \
        335426462 404553662335 426426535 448626535535 426426426462 466466533 355535335 355535335555 448226335335 \
        555535533 484262535535 555335533 422466555 555533 844622533 266355266533 717466353246 404266355 \
        117624466335 355266448 555466466 466466 844666555555 535335555 242646555 555535 224664555 555335 555555 \
        555 555 555555 555335 224664555 555535 242646555 535335555 844666555555 466466 555466466 355266448 \
        117624466335 404266355 717466353246 266355266533 844622533 555533 422466555 555335533 484262535535 \
        555535533 448226335335 355535335555 355535335 466466533 422466466466 448626535535 426426535 404553662335 \
        335426462 555335535 335535 646646 555646646 448626535 646117264335 535646646 242646646646 448626535535 \
        246642355 555666448 555555666448 448448 440662335 242177224355 335246642 448266355 246642 844262535 \
        242711462355 262262353353 484262535 844226335335 335246246 555335355 335355 717422353664 426426335 \
        448626535 426426 335224664 335335 555335 335 224224 555224224 224224335 224224224664 484662335 \
        171224353246 484662335335 355624264 404222333 555404222333 111246333264 624264535 484404 484535262 \
        484266533 624264 044226335 462711355664 844626353535 535624624 662662553335 448226335 555535355 355535 \
        117466553242 426462535 535242646 535535 404553662 426462 555535 535 044333222 044333222555 777462333264 \
        533624624 555777426246 246246533 422466355 355533 333222666555 335535533 440666333 535533 404666555 \
        335533 422466 533 844844 044266355 844626353 624624 844226335 246246 555355 355 844666555 535335 242646 \
        535 224664 335 555 444
        """
}
