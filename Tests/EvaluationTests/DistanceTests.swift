import Evaluation
import Foundation
import Tensor
import TestSupport
import XCTest

/// The distance transform, surfaces and per-case metrics against scipy, medpy, DeepMind's surface-distance and
/// OpenCV, on anisotropic grids (0.8 x 1.3 x 2.5 mm).
final class DistanceTests: XCTestCase {
    /// Our EDT equals `scipy.ndimage.distance_transform_edt(~features, sampling=(sz, sy, sx))` to float rounding
    /// on sparse points, a mask's surface and a one-voxel-thick volume; no features gives +inf everywhere.
    func testDistanceTransformMatchesScipy() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        var rng = SeededRNG(11)
        let grids: [(Dim3, VoxelSpacing)] = [
            (Masks.dim, Masks.spacing),
            (Dim3(z: 1, y: 17, x: 29), VoxelSpacing(x: 0.7, y: 3.1, z: 1.0)),
            (Dim3(z: 13, y: 1, x: 1), VoxelSpacing(x: 1, y: 1, z: 2.2)),
        ]
        var cases: [(Dim3, VoxelSpacing, [UInt8])] = []
        for (i, (dim, sp)) in grids.enumerated() {
            var sparse = [UInt8](repeating: 0, count: dim.count)
            for _ in 0..<max(1, dim.count / 400) { sparse[rng.below(dim.count)] = 1 }
            cases.append((dim, sp, sparse))
            if i == 0 {
                let mask = Masks.pair(seed: 5).reference
                var surface = [UInt8](repeating: 0, count: dim.count)
                _ = mask.withUnsafeBufferPointer { m in
                    surface.withUnsafeMutableBufferPointer {
                        SurfaceDistance.surface(of: m, dim: dim, into: $0)
                    }
                }
                cases.append((dim, sp, surface))
            }
        }
        for (i, c) in cases.enumerated() {
            try Masks.write(c.2, dir.path + "/f\(i).u8")
        }
        let shapes = cases.map { "(\($0.0.z), \($0.0.y), \($0.0.x))" }.joined(separator: ", ")
        let samplings = cases.map { "(\($0.1.z), \($0.1.y), \($0.1.x))" }.joined(separator: ", ")
        try TestEnv.python(
            """
            import numpy as np
            from scipy import ndimage
            d = '\(dir.path)/'
            for i, (shape, sampling) in enumerate(zip([\(shapes)], [\(samplings)])):
                f = np.fromfile(d + f'f{i}.u8', dtype=np.uint8).reshape(shape)
                ndimage.distance_transform_edt(f == 0, sampling=sampling).astype(np.float64).tofile(d + f'd{i}.f64')
            """)
        var worst = 0.0
        var bitwise = 0
        var total = 0
        for (i, c) in cases.enumerated() {
            let ours = DistanceTransform.euclidean(features: c.2, dim: c.0, spacing: c.1)
            let ref = try Masks.doubles(dir.path + "/d\(i).f64")
            XCTAssertEqual(ours.count, ref.count)
            for (a, b) in zip(ours, ref) {
                worst = max(worst, Masks.relative(a, b))
                if a == b { bitwise += 1 }
                total += 1
            }
        }
        print("EDT vs scipy: worst relative difference \(worst), \(bitwise) of \(total) values bit-identical")
        XCTAssertLessThanOrEqual(worst, 1e-12)
        let none = DistanceTransform.euclidean(
            features: [UInt8](repeating: 0, count: 24), dim: Dim3(z: 2, y: 3, x: 4),
            spacing: .isotropic1mm)
        XCTAssertTrue(none.allSatisfy { $0 == .infinity }, "no feature: every distance is +inf")
    }

    /// Counts, Dice, precision, recall, IoU, RVD, ASSD and HD95 of binary masks against numpy and medpy (pooled)
    /// and against
    /// DeepMind's `compute_robust_hausdorff` / `compute_average_surface_distance` fed medpy's directed distances
    /// with unit weights (maxDirected); the surface voxels against medpy's erosion-based border.
    func testBinaryMetricsMatchMedpyAndSurfaceDistance() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let seeds: [UInt64] = [1, 2, 3, 4, 7]
        var ours: [[ClassMetrics]] = []
        for (i, seed) in seeds.enumerated() {
            let (p, r) = Masks.pair(seed: seed)
            XCTAssertGreaterThan(p.filter { $0 != 0 }.count, 200)
            XCTAssertGreaterThan(r.filter { $0 != 0 }.count, 200)
            try Masks.write(p, dir.path + "/p\(i).u8")
            try Masks.write(r, dir.path + "/r\(i).u8")
            ours.append(
                SurfaceDistanceDefinition.allCases.map { definition in
                    p.withUnsafeBufferPointer { pb in
                        r.withUnsafeBufferPointer { rb in
                            CaseMetrics.evaluate(
                                prediction: pb, reference: rb, dim: Masks.dim, spacing: Masks.spacing,
                                definition: definition)
                        }
                    }
                })
            // Our surface voxels, for the comparison with medpy's border.
            var s = [UInt8](repeating: 0, count: p.count)
            _ = p.withUnsafeBufferPointer { pb in
                s.withUnsafeMutableBufferPointer { SurfaceDistance.surface(of: pb, dim: Masks.dim, into: $0) }
            }
            try Masks.write(s, dir.path + "/s\(i).u8")
        }
        let d = Masks.dim
        let sp = Masks.spacing
        try TestEnv.python(
            """
            import numpy as np
            from medpy.metric import binary as mb
            from scipy.ndimage import binary_erosion, generate_binary_structure
            import surface_distance as sd
            d = '\(dir.path)/'
            shape, sampling = (\(d.z), \(d.y), \(d.x)), (\(sp.z), \(sp.y), \(sp.x))
            directed = getattr(mb, '__surface_distances')
            for i in range(\(seeds.count)):
                p = np.fromfile(d + f'p{i}.u8', dtype=np.uint8).reshape(shape).astype(bool)
                r = np.fromfile(d + f'r{i}.u8', dtype=np.uint8).reshape(shape).astype(bool)
                s = np.fromfile(d + f's{i}.u8', dtype=np.uint8).reshape(shape).astype(bool)
                border = p ^ binary_erosion(p, structure=generate_binary_structure(3, 1), iterations=1)
                assert (s == border).all(), f'case {i}: {np.count_nonzero(s != border)} surface voxels differ from medpy'
                pr, rp = directed(p, r, sampling), directed(r, p, sampling)
                ones = lambda a: np.ones(len(a))
                dm = {'distances_gt_to_pred': np.sort(rp), 'distances_pred_to_gt': np.sort(pr),
                      'surfel_areas_gt': ones(rp), 'surfel_areas_pred': ones(pr)}
                gt_to_pred, pred_to_gt = sd.compute_average_surface_distance(dm)
                out = [np.count_nonzero(p & r), np.count_nonzero(p), np.count_nonzero(r),
                       mb.dc(p, r), mb.precision(p, r), mb.recall(p, r),
                       mb.assd(p, r, voxelspacing=sampling), mb.hd95(p, r, voxelspacing=sampling),
                       0.5 * (gt_to_pred + pred_to_gt), sd.compute_robust_hausdorff(dm, 95),
                       pred_to_gt, gt_to_pred,
                       (np.count_nonzero(p) - np.count_nonzero(r)) / np.count_nonzero(r),
                       np.count_nonzero(p & r) / np.count_nonzero(p | r), mb.ravd(p, r)]
                np.array(out, dtype=np.float64).tofile(d + f'm{i}.f64')
            """)
        var worst = [String: Double]()
        for i in seeds.indices {
            let ref = try Masks.doubles(dir.path + "/m\(i).f64")
            let pooled = ours[i][0]
            let maxDirected = ours[i][1]
            XCTAssertEqual(pooled.definition, .pooled)
            XCTAssertEqual(maxDirected.definition, .maxDirected)
            XCTAssertEqual(
                [pooled.intersection, pooled.predicted, pooled.reference], Array(ref[0..<3]), "case \(i): counts")
            let pairs: [(String, Double, Double)] = [
                ("dice", pooled.dice, ref[3]), ("precision", pooled.precision, ref[4]),
                ("recall", pooled.recall, ref[5]),
                ("assd pooled", pooled.assd, ref[6]), ("hd95 pooled", pooled.hd95, ref[7]),
                ("assd maxDirected", maxDirected.assd, ref[8]), ("hd95 maxDirected", maxDirected.hd95, ref[9]),
                ("mean prediction→reference", pooled.meanPredictionToReference, ref[10]),
                ("mean reference→prediction", pooled.meanReferenceToPrediction, ref[11]),
                ("rvd (numpy)", pooled.rvd, ref[12]), ("iou (numpy)", pooled.iou, ref[13]),
                ("rvd (medpy ravd)", pooled.rvd, ref[14]),
            ]
            for (name, a, b) in pairs {
                let rel = Masks.relative(a, b)
                worst[name] = max(worst[name] ?? 0, rel)
                XCTAssertLessThanOrEqual(rel, 1e-6, "case \(i) \(name): ours \(a), reference \(b)")
            }
            XCTAssertFalse(pooled.distancesAreWorstCase || pooled.s2sIsWorstCase)
            XCTAssertNotEqual(pooled.hd95, maxDirected.hd95, "case \(i): the two HD95 definitions should differ here")
        }
        print(
            "binary metrics vs medpy / surface-distance, worst relative differences: "
                + worst.keys.sorted().map { "\($0) \(worst[$0]!)" }.joined(separator: ", "))
    }

    /// The two percentile rules on their own, at sizes where 0.95·n is a whole number (n = 20, 40, 100) and not,
    /// with ties: numpy's `percentile(a, 95)` and surface-distance's `compute_robust_hausdorff` with unit weights.
    func testPercentilesMatchNumpyAndSurfaceDistance() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        var rng = SeededRNG(4)
        let sizes = [1, 2, 19, 20, 21, 40, 57, 100]
        let sets = sizes.map { n in (0..<n).map { _ in (rng.uniform(0, 20) * 2).rounded() / 2 }.sorted() }
        try Masks.write(sets.flatMap { $0 }, dir.path + "/a.f64")
        try TestEnv.python(
            """
            import numpy as np
            import surface_distance as sd
            d = '\(dir.path)/'
            v = np.fromfile(d + 'a.f64'); out = []; at = 0
            for n in [\(sizes.map(String.init).joined(separator: ", "))]:
                a = v[at:at + n]; at += n
                dm = {'distances_gt_to_pred': a, 'distances_pred_to_gt': a[:1], 'surfel_areas_gt': np.ones(n),
                      'surfel_areas_pred': np.ones(1)}
                out += [np.percentile(a, 95), max(sd.compute_robust_hausdorff(dm, 95), 0)]
            np.array(out, dtype=np.float64).tofile(d + 'q.f64')
            """)
        let ref = try Masks.doubles(dir.path + "/q.f64")
        for (i, a) in sets.enumerated() {
            XCTAssertEqual(
                SurfaceDistance.percentileLinear(sorted: a, 95), ref[i * 2], "numpy percentile, n = \(a.count)")
            XCTAssertEqual(
                max(SurfaceDistance.percentileFirstReaching(sorted: a, 95), a[0]), ref[i * 2 + 1],
                "surface-distance percentile, n = \(a.count)")
        }
    }

    /// Multi-class label maps: every class's metrics equal those of its binary masks evaluated alone (the crop
    /// to the classes' bounding box changes nothing); the empty-mask classes get their documented values.
    func testLabelMapsPerClassAndEmptyMasks() {
        let (p, r) = Masks.labelMaps(seed: 9)
        let d = Masks.dim
        let sp = Masks.spacing
        let worst = sp.diagonal(of: d)
        XCTAssertEqual(
            worst, ((40 * 0.8) * (40 * 0.8) + (34 * 1.3) * (34 * 1.3) + (22 * 2.5) * (22 * 2.5)).squareRoot())
        for definition in SurfaceDistanceDefinition.allCases {
            let m = CaseMetrics.evaluate(
                prediction: p, reference: r, dim: d, spacing: sp, classes: 6, definition: definition,
                nsdTolerances: [1, 2, 1, 1, 1])
            XCTAssertEqual(m.count, 5)
            for c in 1...2 {
                let pc = p.map { $0 == c ? UInt8(1) : 0 }
                let rc = r.map { $0 == c ? UInt8(1) : 0 }
                let alone = pc.withUnsafeBufferPointer { pb in
                    rc.withUnsafeBufferPointer { rb in
                        CaseMetrics.evaluate(
                            prediction: pb, reference: rb, dim: d, spacing: sp, definition: definition,
                            nsdTolerance: Double(c))
                    }
                }
                XCTAssertEqual(m[c - 1].empty, alone.empty)
                for metric in Metric.allCases {
                    XCTAssertLessThanOrEqual(
                        Masks.relative(metric.value(m[c - 1]), metric.value(alone)), 1e-12,
                        "class \(c) \(metric) from the label map = its binary masks alone")
                }
                XCTAssertEqual(
                    [m[c - 1].intersection, m[c - 1].predicted, m[c - 1].reference],
                    [alone.intersection, alone.predicted, alone.reference])
                XCTAssertEqual(m[c - 1].empty, .neither)
            }
            // Class 3: only in the reference. Class 4: only in the prediction. Class 5: in neither.
            XCTAssertEqual(m[2].empty, .prediction)
            XCTAssertEqual(m[3].empty, .reference)
            XCTAssertEqual(m[4].empty, .both)
            for c in [2, 3] {
                XCTAssertEqual([m[c].dice, m[c].precision, m[c].recall, m[c].iou, m[c].nsd], [0, 0, 0, 0, 0])
                XCTAssertEqual(
                    [m[c].assd, m[c].hd95, m[c].s2s2d, m[c].meanPredictionToReference, m[c].meanReferenceToPrediction],
                    [worst, worst, worst, worst, worst])
                XCTAssertTrue(m[c].distancesAreWorstCase && m[c].s2sIsWorstCase)
            }
            // RVD: −1 for an empty prediction; |P| (a substitute, counted as the worst case) for an empty reference.
            XCTAssertEqual(m[2].rvd, -1)
            XCTAssertFalse(Metric.rvd.isWorstCase(m[2]))
            XCTAssertEqual(m[3].rvd, Double(p.filter { $0 == 4 }.count))
            XCTAssertGreaterThan(m[3].rvd, 100)
            XCTAssertTrue(Metric.rvd.isWorstCase(m[3]))
            XCTAssertEqual(
                [m[4].dice, m[4].precision, m[4].recall, m[4].assd, m[4].hd95, m[4].s2s2d], [1, 1, 1, 0, 0, 0])
            XCTAssertEqual([m[4].iou, m[4].rvd, m[4].nsd], [1, 0, 1])
            XCTAssertFalse(m[4].distancesAreWorstCase || m[4].s2sIsWorstCase)
            XCTAssertTrue(m.allSatisfy { c in Metric.allCases.allSatisfy { $0.value(c).isFinite } }, "no NaN, no inf")
        }
        // Two masks in disjoint slabs of z: distances measured, but no slice holds both (S2S worst case).
        var a = [UInt8](repeating: 0, count: d.count)
        var b = a
        for y in 10..<20 {
            for x in 10..<20 {
                a[(3 * d.y + y) * d.x + x] = 1
                b[(9 * d.y + y) * d.x + x] = 1
            }
        }
        let m = a.withUnsafeBufferPointer { ab in
            b.withUnsafeBufferPointer { bb in
                CaseMetrics.evaluate(prediction: ab, reference: bb, dim: d, spacing: sp)
            }
        }
        XCTAssertFalse(m.distancesAreWorstCase)
        XCTAssertEqual(m.hd95, 6 * 2.5, accuracy: 1e-12, "two parallel squares 6 slices apart")
        XCTAssertTrue(m.s2sIsWorstCase)
        XCTAssertEqual(m.s2s2d, worst)
    }
}
