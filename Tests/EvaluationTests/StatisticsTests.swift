import DataPipeline
import Evaluation
import Foundation
import Support
import Tensor
import TestSupport
import XCTest

/// Wilcoxon against scipy.stats.wilcoxon, summaries against numpy, the geometry check's error lines.
final class StatisticsTests: XCTestCase {
    /// Every regime of scipy's `method='auto'`: exact (n ≤ 50, no ties or zeros), permutation (n ≤ 13 with ties
    /// or zeros), asymptotic (n > 50, or ties/zeros with n > 13), with and without the continuity correction.
    func testWilcoxonMatchesScipy() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        var rng = SeededRNG(21)
        // (n, kind): 0 continuous, 1 rounded to 0.1 (ties), 2 small integers (ties and zeros).
        let specs: [(Int, Int, Wilcoxon.Method)] = [
            (5, 0, .exact), (12, 0, .exact), (25, 0, .exact), (50, 0, .exact),
            (6, 2, .permutation), (9, 1, .permutation), (13, 2, .permutation),
            (14, 2, .asymptotic), (30, 1, .asymptotic), (51, 0, .asymptotic), (80, 2, .asymptotic),
            (200, 1, .asymptotic),
        ]
        var samples: [([Double], [Double])] = []
        for (n, kind, _) in specs {
            var x: [Double] = []
            var y: [Double] = []
            for _ in 0..<n {
                let a = 0.8 + 0.05 * rng.normal()
                var diff = 0.01 + 0.03 * rng.normal()
                if kind == 1 { diff = (diff * 100).rounded() / 10 }
                if kind == 2 { diff = Double(rng.below(7) - 3) }
                x.append(a + diff)
                y.append(a)
            }
            if kind == 2 { x[0] = y[0] }  // at least one zero difference
            samples.append((x, y))
        }
        try Masks.write(samples.flatMap { $0.0 + $0.1 }, dir.path + "/xy.f64")
        try TestEnv.python(
            """
            import numpy as np
            from scipy import stats
            d = '\(dir.path)/'
            ns = [\(specs.map { String($0.0) }.joined(separator: ", "))]
            v = np.fromfile(d + 'xy.f64'); out = []; at = 0
            for n in ns:
                x, y = v[at:at + n], v[at + n:at + 2 * n]; at += 2 * n
                for corr in (False, True):
                    r = stats.wilcoxon(x, y, correction=corr)
                    out += [r.statistic, r.pvalue]
            np.array(out, dtype=np.float64).tofile(d + 'w.f64')
            """)
        let ref = try Masks.doubles(dir.path + "/w.f64")
        var worst = [Wilcoxon.Method: Double]()
        for (i, (x, y)) in samples.enumerated() {
            for (j, corr) in [false, true].enumerated() {
                let r = Wilcoxon.signedRank(x, y, continuityCorrection: corr)
                let sRef = ref[(i * 2 + j) * 2]
                let pRef = ref[(i * 2 + j) * 2 + 1]
                XCTAssertEqual(r.method, specs[i].2, "n = \(x.count), kind \(specs[i].1)")
                XCTAssertEqual(r.statistic, sRef, "statistic, n = \(x.count)")
                let rel = Masks.relative(r.pValue, pRef)
                worst[r.method] = max(worst[r.method] ?? 0, rel)
                XCTAssertLessThanOrEqual(
                    rel, 1e-10, "p-value, n = \(x.count), correction \(corr): ours \(r.pValue), scipy \(pRef)")
            }
        }
        print(
            "Wilcoxon vs scipy, worst relative p-value difference: "
                + worst.keys.map(\.rawValue).sorted().map { m in "\(m) \(worst[Wilcoxon.Method(rawValue: m)!]!)" }
                .joined(separator: ", "))
        let zeros = Wilcoxon.signedRank([1, 2, 3], [1, 2, 3])
        XCTAssertEqual(zeros.pValue, 1)
        XCTAssertEqual(zeros.statistic, 0)
    }

    /// Mean, sample std, median and the worst-case counts over cases with empty masks, against numpy.
    func testSummaryMatchesNumpyAndCountsSubstitutions() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let d = Masks.dim
        let sp = Masks.spacing
        var cases: [[ClassMetrics]] = []
        for seed: UInt64 in [9, 10, 11, 12] {
            let (p, r) = Masks.labelMaps(seed: seed)
            cases.append(
                CaseMetrics.evaluate(
                    prediction: p, reference: r, dim: d, spacing: sp, classes: 6, nsdTolerances: [2, 2, 2, 2, 2]))
        }
        // A fifth case where class 1 is missing from the prediction: its distances become the worst case.
        var (p, r) = Masks.labelMaps(seed: 13)
        for i in p.indices where p[i] == 1 { p[i] = 0 }
        cases.append(
            CaseMetrics.evaluate(
                prediction: p, reference: r, dim: d, spacing: sp, classes: 6, nsdTolerances: [2, 2, 2, 2, 2]))
        let summary = ClassSummary.summarize(cases)
        XCTAssertEqual(summary.map(\.label), [1, 2, 3, 4, 5])
        XCTAssertEqual([summary[0].predictionEmpty, summary[0].referenceEmpty, summary[0].bothEmpty], [1, 0, 0])
        XCTAssertEqual(summary[0].metrics[.hd95]!.worstCaseCount, 1)
        XCTAssertEqual(summary[0].metrics[.s2s2d]!.worstCaseCount, 1)
        XCTAssertEqual(summary[0].metrics[.dice]!.worstCaseCount, 0)
        XCTAssertEqual(summary[2].predictionEmpty, 5)
        XCTAssertEqual(summary[2].metrics[.assd]!.worstCaseCount, 5)
        XCTAssertEqual(summary[3].referenceEmpty, 5)
        XCTAssertEqual(summary[3].metrics[.rvd]!.worstCaseCount, 5, "RVD's substitute for an empty reference")
        XCTAssertEqual(summary[2].metrics[.rvd]!.mean, -1, "an empty prediction")
        XCTAssertEqual(summary[0].metrics[.nsd]!.worstCaseCount, 0)
        XCTAssertEqual(summary.map(\.nsdTolerance), [2, 2, 2, 2, 2])
        XCTAssertEqual(Set(summary[0].metrics.keys), Set(Metric.allCases))
        XCTAssertEqual(summary[4].bothEmpty, 5)
        XCTAssertEqual(summary[4].metrics[.dice]!.mean, 1)
        XCTAssertEqual(summary[4].metrics[.hd95]!.mean, 0)
        XCTAssertEqual(summary[2].metrics[.hd95]!.std, 0)
        XCTAssertEqual(summary[2].metrics[.hd95]!.median, sp.diagonal(of: d))
        for s in summary {
            for m in s.metrics.values {
                XCTAssertTrue(m.mean.isFinite && m.std.isFinite && m.median.isFinite, "no NaN reaches a summary")
                XCTAssertEqual(m.count, 5)
            }
        }
        // Against numpy: mean, std(ddof=1), median per class and metric.
        let values = summary.indices.flatMap { c in
            Metric.allCases.flatMap { metric in cases.map { metric.value($0[c]) } }
        }
        try Masks.write(values, dir.path + "/v.f64")
        try TestEnv.python(
            """
            import numpy as np
            d = '\(dir.path)/'
            v = np.fromfile(d + 'v.f64').reshape(-1, \(cases.count))
            np.stack([v.mean(axis=1), v.std(axis=1, ddof=1), np.median(v, axis=1)], axis=1).tofile(d + 's.f64')
            """)
        let ref = try Masks.doubles(dir.path + "/s.f64")
        var row = 0
        for s in summary {
            for metric in Metric.allCases {
                let m = s.metrics[metric]!
                XCTAssertEqual(
                    m.mean, ref[row * 3], accuracy: 1e-12 * max(1, abs(ref[row * 3])), "class \(s.label) \(metric) mean"
                )
                XCTAssertEqual(
                    m.std, ref[row * 3 + 1], accuracy: 1e-12 * max(1, abs(ref[row * 3 + 1])),
                    "class \(s.label) \(metric) std")
                XCTAssertEqual(m.median, ref[row * 3 + 2], "class \(s.label) \(metric) median")
                row += 1
            }
        }
        let one = MetricSummary(values: [0.5], worstCaseCount: 0)
        XCTAssertEqual([one.mean, one.std, one.median], [0.5, 0, 0.5])
    }

    /// A prediction on another grid is refused with one line naming its file; affines within prepare's
    /// tolerance pass.
    func testGeometryCheckNamesTheFile() {
        var affine: [Double] = [0.8, 0, 0, -100, 0, 1.3, 0, 50, 0, 0, 2.5, 20, 0, 0, 0, 1]
        let reference = NIfTIVolume(nx: 4, ny: 3, nz: 2, affine: affine, voxels: [Float](repeating: 0, count: 24))
        var close = affine
        close[3] += 0.04
        close[0] += 5e-4
        let same = NIfTIVolume(nx: 4, ny: 3, nz: 2, affine: close, voxels: [Float](repeating: 0, count: 24))
        XCTAssertNoThrow(
            try GeometryCheck.check(same, path: "pred/a.nii.gz", against: reference, referencePath: "labels/a.nii.gz"))
        func message(_ v: NIfTIVolume) -> String {
            do {
                try GeometryCheck.check(v, path: "pred/a.nii.gz", against: reference, referencePath: "labels/a.nii.gz")
            } catch let e as AttunetError { return e.message } catch { return "\(error)" }
            return ""
        }
        let other = NIfTIVolume(nx: 4, ny: 2, nz: 3, affine: affine, voxels: [Float](repeating: 0, count: 24))
        XCTAssertEqual(message(other), "pred/a.nii.gz: shape 4x2x3 differs from the reference labels/a.nii.gz (4x3x2)")
        affine[7] += 0.2
        let shifted = NIfTIVolume(nx: 4, ny: 3, nz: 2, affine: affine, voxels: [Float](repeating: 0, count: 24))
        XCTAssertEqual(
            message(shifted),
            "pred/a.nii.gz: geometry differs from the reference labels/a.nii.gz (affine row 1 column 3: 50.2 vs 50)")
        XCTAssertEqual(message(shifted).split(separator: "\n").count, 1)
    }
}
