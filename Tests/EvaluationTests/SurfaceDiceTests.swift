import Evaluation
import Foundation
import Tensor
import TestSupport
import XCTest

/// Normalised surface Dice against DeepMind's surface-distance (`compute_surface_distances`,
/// `compute_surface_dice_at_tolerance`), called through the test venv's python on the same `[Z][Y][X]` arrays
/// with `spacing_mm = (sz, sy, sx)`.
///
/// The bound, 1e-9 relative, is float64 against float64 with the same definition: the surfel distances are
/// computed with scipy's operations in scipy's order (``DistanceTransform``), so no surfel crosses the
/// tolerance on one side only, and what remains is the order of summation (here per neighbour code, count ×
/// area; there `np.sum` over the surfels sorted by distance) and the area's norm (there a BLAS dot product,
/// which may fuse multiply-adds on AVX2 and AVX-512 kernels alike): a few ulps per term, far below 1e-9 on
/// these surfaces of ≤ 10⁵ surfels. A surfel on the wrong side of the tolerance would move NSD by ≥ 1e-5.
final class SurfaceDiceTests: XCTestCase {
    /// The areas of the 256 neighbour codes equal the library's `create_table_neighbour_code_to_surface_area`
    /// at isotropic and anisotropic spacings, and our neighbour codes equal the library's `ndimage.correlate`
    /// with its kernel on a random mask padded as the library pads its crop; the surfels of a box (and their
    /// areas) are the library's.
    func testSurfelAreasAndNeighbourCodesMatchTheLibrary() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let spacings = [VoxelSpacing(x: 1, y: 1, z: 1), VoxelSpacing(x: 0.8, y: 0.8, z: 2.5), Masks.spacing]
        try Masks.write(spacings.flatMap { SurfaceDice.surfelAreas(spacing: $0) }, dir.path + "/areas.f64")
        // A random mask (codes of every kind) and a box of 5 x 4 x 3 voxels inside a larger volume.
        let dim = Dim3(z: 7, y: 9, x: 11)
        var rng = SeededRNG(21)
        let random = (0..<dim.count).map { _ in UInt8(rng.below(2)) }
        var box = [UInt8](repeating: 0, count: dim.count)
        for z in 2..<5 { for y in 3..<7 { for x in 1..<6 { box[(z * dim.y + y) * dim.x + x] = 1 } } }
        let grid = Dim3(z: dim.z + 1, y: dim.y + 1, x: dim.x + 1)
        func codes(_ m: [UInt8]) -> [UInt8] {
            var out = [UInt8](repeating: 0, count: grid.count)
            m.withUnsafeBufferPointer { mb in
                out.withUnsafeMutableBufferPointer { SurfaceDice.neighbourCodes(of: mb, dim: dim, into: $0) }
            }
            return out
        }
        try Masks.write(random, dir.path + "/random.u8")
        try Masks.write(box, dir.path + "/box.u8")
        try Masks.write(codes(random), dir.path + "/ours_random.u8")
        let boxCodes = codes(box)
        let boxAreas = SurfaceDice.surfelAreas(spacing: Masks.spacing)
        let boxSurfels = boxCodes.filter { $0 != 0 && $0 != 255 }.map { boxAreas[Int($0)] }.sorted()
        try Masks.write(boxSurfels, dir.path + "/box_surfels.f64")
        let sp = Masks.spacing
        try TestEnv.python(
            """
            import numpy as np
            from scipy import ndimage
            import surface_distance as sd
            np.Inf = np.inf  # surface-distance 0.1 uses np.Inf (for an empty mask), which NumPy 2 removed
            from surface_distance import lookup_tables as lt
            d = '\(dir.path)/'
            ours = np.fromfile(d + 'areas.f64').reshape(3, 256)
            for row, s in zip(ours, [(1, 1, 1), (2.5, 0.8, 0.8), (\(sp.z), \(sp.y), \(sp.x))]):
                ref = lt.create_table_neighbour_code_to_surface_area(s)
                err = np.max(np.abs(row - ref) / np.maximum(ref, 1e-300))
                assert err <= 1e-13, (s, err, np.argmax(np.abs(row - ref)))
                assert (row[1:255] > 0).all() and row[0] == 0 and row[255] == 0
            shape = (\(dim.z), \(dim.y), \(dim.x))
            m = np.fromfile(d + 'random.u8', dtype=np.uint8).reshape(shape)
            padded = np.zeros(np.array(shape) + 1, np.uint8)
            padded[:-1, :-1, :-1] = m
            ref = ndimage.correlate(padded, lt.ENCODE_NEIGHBOURHOOD_3D_KERNEL, mode='constant', cval=0)
            mine = np.fromfile(d + 'ours_random.u8', dtype=np.uint8).reshape(padded.shape)
            assert (mine == ref).all(), f'{np.count_nonzero(mine != ref)} neighbour codes differ'
            box = np.fromfile(d + 'box.u8', dtype=np.uint8).reshape(shape).astype(bool)
            sdm = sd.compute_surface_distances(box, box, (\(sp.z), \(sp.y), \(sp.x)))
            a = np.sort(sdm['surfel_areas_gt'])
            b = np.fromfile(d + 'box_surfels.f64')
            assert a.shape == b.shape, (a.shape, b.shape)
            assert np.max(np.abs(a - b) / a) <= 1e-13, np.max(np.abs(a - b) / a)
            print('box: %d surfels, %.6f mm2' % (len(a), a.sum()))
            """)
        // The box's total area: its six faces, less what the marching cubes cut off its edges and corners.
        let o = box.withUnsafeBufferPointer { b in
            SurfaceDice.overlap(prediction: b, reference: b, dim: dim, spacing: Masks.spacing, tolerance: 0)
        }
        XCTAssertEqual(o.referenceArea, boxSurfels.reduce(0, +), accuracy: 1e-9 * o.referenceArea)
        XCTAssertEqual(o.predictionArea, o.referenceArea)
        XCTAssertEqual(o.nsd, 1, "a surface is within 0 mm of itself")
        let faces = 2 * (5 * 0.8 * 4 * 1.3 + 5 * 0.8 * 3 * 2.5 + 4 * 1.3 * 3 * 2.5)
        XCTAssertLessThan(o.referenceArea, faces)
        XCTAssertGreaterThan(o.referenceArea, 0.6 * faces)
    }

    /// NSD, and both surfaces' areas and overlaps, against the library on deformed blobs (0.8 x 1.3 x 2.5 mm),
    /// random masks (0.8 x 0.8 x 2.5 mm), one-voxel masks and empty masks, at 0.5, 1, 2 and 3 mm; the
    /// library's NaN for two empty masks is our 1 (the project's empty-mask rule), one empty mask 0 in both.
    func testNSDMatchesSurfaceDistance() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let tolerances = [0.5, 1, 2, 3]
        let thin = VoxelSpacing(x: 0.8, y: 0.8, z: 2.5)
        var cases: [(name: String, dim: Dim3, spacing: VoxelSpacing, p: [UInt8], r: [UInt8])] = []
        for seed: UInt64 in [1, 2, 3] {
            let (p, r) = Masks.pair(seed: seed)
            cases.append(("blobs \(seed)", Masks.dim, Masks.spacing, p, r))
        }
        var rng = SeededRNG(8)
        let small = Dim3(z: 9, y: 14, x: 12)
        for density in [0.3, 0.6] {
            let p = (0..<small.count).map { _ in UInt8(rng.uniform(0, 1) < density ? 1 : 0) }
            let r = (0..<small.count).map { _ in UInt8(rng.uniform(0, 1) < density ? 1 : 0) }
            cases.append(("random \(density)", small, thin, p, r))
        }
        func one(_ z: Int, _ y: Int, _ x: Int) -> [UInt8] {
            var m = [UInt8](repeating: 0, count: small.count)
            m[(z * small.y + y) * small.x + x] = 1
            return m
        }
        let empty = [UInt8](repeating: 0, count: small.count)
        let blob = cases[3].r
        cases += [
            ("one voxel, same", small, thin, one(4, 5, 6), one(4, 5, 6)),
            ("one voxel, 1 apart in x", small, thin, one(4, 5, 6), one(4, 5, 7)),
            ("one voxel, 1 apart in z", small, thin, one(4, 5, 6), one(5, 5, 6)),
            ("one voxel at the edge vs a random mask", small, thin, one(0, 0, 0), blob),
            ("empty prediction", small, thin, empty, blob),
            ("empty reference", small, thin, blob, empty),
            ("both empty", small, thin, empty, empty),
        ]
        for (i, c) in cases.enumerated() {
            try Masks.write(c.p, dir.path + "/p\(i).u8")
            try Masks.write(c.r, dir.path + "/r\(i).u8")
        }
        let shapes = cases.map { "(\($0.dim.z), \($0.dim.y), \($0.dim.x))" }.joined(separator: ", ")
        let samplings = cases.map { "(\($0.spacing.z), \($0.spacing.y), \($0.spacing.x))" }.joined(separator: ", ")
        try TestEnv.python(
            """
            import warnings
            import numpy as np
            import surface_distance as sd
            np.Inf = np.inf  # surface-distance 0.1 uses np.Inf (for an empty mask), which NumPy 2 removed
            warnings.simplefilter('ignore', RuntimeWarning)  # 0/0 for two empty masks
            d = '\(dir.path)/'
            for i, (shape, spacing) in enumerate(zip([\(shapes)], [\(samplings)])):
                p = np.fromfile(d + f'p{i}.u8', dtype=np.uint8).reshape(shape).astype(bool)
                r = np.fromfile(d + f'r{i}.u8', dtype=np.uint8).reshape(shape).astype(bool)
                sdm = sd.compute_surface_distances(r, p, spacing)
                out = [np.sum(sdm['surfel_areas_gt']), np.sum(sdm['surfel_areas_pred'])]
                for t in [\(tolerances.map { "\($0)" }.joined(separator: ", "))]:
                    out.append(sd.compute_surface_dice_at_tolerance(sdm, t))
                    out += list(sd.compute_surface_overlap_at_tolerance(sdm, t))
                np.array(out, dtype=np.float64).tofile(d + f'n{i}.f64')
            """)
        var worst = 0.0
        var strictlyBetween = 0
        for (i, c) in cases.enumerated() {
            let ref = try Masks.doubles(dir.path + "/n\(i).f64")
            for (j, t) in tolerances.enumerated() {
                let m = c.p.withUnsafeBufferPointer { pb in
                    c.r.withUnsafeBufferPointer { rb in
                        CaseMetrics.evaluate(
                            prediction: pb, reference: rb, dim: c.dim, spacing: c.spacing, nsdTolerance: t)
                    }
                }
                let o = c.p.withUnsafeBufferPointer { pb in
                    c.r.withUnsafeBufferPointer { rb in
                        SurfaceDice.overlap(prediction: pb, reference: rb, dim: c.dim, spacing: c.spacing, tolerance: t)
                    }
                }
                let library = ref[2 + j * 3]
                XCTAssertEqual(m.nsdTolerance, t)
                let nsd = try XCTUnwrap(m.nsd, c.name)
                XCTAssertEqual(o.referenceArea, ref[0], accuracy: 1e-9 * ref[0], "\(c.name): reference area")
                XCTAssertEqual(o.predictionArea, ref[1], accuracy: 1e-9 * ref[1], "\(c.name): prediction area")
                if c.name == "both empty" {
                    XCTAssertTrue(library.isNaN, "the library's 0/0")
                    XCTAssertEqual(nsd, 1, "two empty masks: a correct absent")
                    XCTAssertEqual(m.empty, .both)
                    continue
                }
                if c.name.hasPrefix("empty") {
                    XCTAssertEqual(library, 0)
                    XCTAssertEqual(nsd, 0)
                    continue
                }
                let rel = Masks.relative(nsd, library)
                worst = max(worst, rel)
                XCTAssertLessThanOrEqual(rel, 1e-9, "\(c.name) at \(t) mm: ours \(nsd), surface-distance \(library)")
                XCTAssertEqual(o.nsd, nsd)
                // The two directed overlaps (compute_surface_overlap_at_tolerance: reference, prediction).
                XCTAssertEqual(o.referenceWithin / o.referenceArea, ref[3 + j * 3], accuracy: 1e-9, c.name)
                XCTAssertEqual(o.predictionWithin / o.predictionArea, ref[4 + j * 3], accuracy: 1e-9, c.name)
                if nsd > 0.01 && nsd < 0.99 { strictlyBetween += 1 }
            }
        }
        print("NSD vs surface-distance: worst relative difference \(worst); \(strictlyBetween) values in (0.01, 0.99)")
        XCTAssertGreaterThan(strictlyBetween, 10, "the cases must test partial overlaps, not only 0 and 1")
    }

    /// Multi-class label maps: each class's NSD at its own tolerance equals that of its binary masks alone (the
    /// crop to the class's bounding box changes nothing), and the empty-mask classes get the documented values.
    func testLabelMapNSDPerClass() {
        let (p, r) = Masks.labelMaps(seed: 9)
        let tolerances = [1.0, 2.5, 1, 1, 3]
        let m = CaseMetrics.evaluate(
            prediction: p, reference: r, dim: Masks.dim, spacing: Masks.spacing, classes: 6, nsdTolerances: tolerances)
        XCTAssertEqual(m.map(\.nsdTolerance), tolerances)
        for c in 1...2 {
            let pc = p.map { $0 == c ? UInt8(1) : 0 }
            let rc = r.map { $0 == c ? UInt8(1) : 0 }
            let alone = pc.withUnsafeBufferPointer { pb in
                rc.withUnsafeBufferPointer { rb in
                    SurfaceDice.overlap(
                        prediction: pb, reference: rb, dim: Masks.dim, spacing: Masks.spacing,
                        tolerance: tolerances[c - 1])
                }
            }
            XCTAssertEqual(m[c - 1].nsd!, alone.nsd, accuracy: 1e-12, "class \(c)")
            XCTAssertGreaterThan(alone.nsd, 0.05)
            XCTAssertLessThan(alone.nsd, 0.999)
        }
        XCTAssertEqual(m[2].nsd, 0, "only in the reference")
        XCTAssertEqual(m[3].nsd, 0, "only in the prediction")
        XCTAssertEqual(m[4].nsd, 1, "in neither")
        let none = CaseMetrics.evaluate(
            prediction: p, reference: r, dim: Masks.dim, spacing: Masks.spacing, classes: 6)
        XCTAssertTrue(none.allSatisfy { $0.nsd == nil && $0.nsdTolerance == nil }, "no tolerance, no NSD")
    }
}
