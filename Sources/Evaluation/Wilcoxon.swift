import Foundation

/// The Wilcoxon signed-rank test of paired per-case values of two models, two-sided, as
/// `scipy.stats.wilcoxon(x, y)` computes it with its defaults (SciPy 1.17: `zero_method='wilcox'`,
/// `correction=False`, `method='auto'`).
public enum Wilcoxon {
    /// How the p-value was computed (scipy's `method='auto'` choice).
    public enum Method: String, Sendable, Codable {
        /// The exact null distribution of R⁺: n ≤ 50 differences, no zero and no tied |difference|.
        case exact
        /// All 2^m sign assignments of the nonzero differences enumerated: n ≤ 13 with zeros or ties.
        case permutation
        /// The normal approximation with the tie correction: n > 50, or n > 13 with zeros or ties.
        case asymptotic
    }

    public struct Result: Sendable, Equatable {
        /// min(R⁺, R⁻), scipy's two-sided statistic.
        public var statistic: Double
        /// Two-sided p-value in [0, 1].
        public var pValue: Double
        public var method: Method
        /// The number of nonzero differences (the m of the ranks).
        public var nonzero: Int
    }

    /// The test on the differences `x[i] − y[i]` (same count, finite). With `continuityCorrection` the normal
    /// approximation subtracts sign(z)·½/σ from z (scipy's `correction=True`); the exact and permutation
    /// p-values never use it. When every difference is zero the result is statistic 0, p-value 1.
    public static func signedRank(_ x: [Double], _ y: [Double], continuityCorrection: Bool = false) -> Result {
        precondition(x.count == y.count && !x.isEmpty, "paired samples need the same nonzero count")
        return signedRank(differences: zip(x, y).map { $0 - $1 }, continuityCorrection: continuityCorrection)
    }

    /// The test on paired differences `d` (see ``signedRank(_:_:continuityCorrection:)``).
    public static func signedRank(differences d: [Double], continuityCorrection: Bool = false) -> Result {
        precondition(!d.isEmpty && d.allSatisfy(\.isFinite), "Wilcoxon needs finite differences")
        let n = d.count
        // Zeros are dropped ('wilcox'); the rest are ranked by |d|, ties sharing their average rank.
        let nz = d.filter { $0 != 0 }
        let m = nz.count
        guard m > 0 else {
            return Result(statistic: 0, pValue: 1, method: n > 13 ? .asymptotic : .permutation, nonzero: 0)
        }
        let order = nz.indices.sorted { abs(nz[$0]) < abs(nz[$1]) }
        var rank = [Double](repeating: 0, count: m)
        var tieTerm = 0.0
        var ties = false
        var i = 0
        while i < m {
            var j = i
            while j + 1 < m && abs(nz[order[j + 1]]) == abs(nz[order[i]]) { j += 1 }
            let r = Double(i + j) / 2 + 1
            for k in i...j { rank[order[k]] = r }
            let t = Double(j - i + 1)
            if j > i {
                ties = true
                tieTerm += t * t * t - t
            }
            i = j + 1
        }
        var rPlus = 0.0
        var rMinus = 0.0
        for k in 0..<m { if nz[k] > 0 { rPlus += rank[k] } else { rMinus += rank[k] } }
        let statistic = min(rPlus, rMinus)

        let method: Method = n > 50 ? .asymptotic : (!ties && m == n) ? .exact : n <= 13 ? .permutation : .asymptotic
        let p: Double
        switch method {
        case .asymptotic:
            let mm = Double(m)
            let mean = mm * (mm + 1) * 0.25
            let se = ((mm * (mm + 1) * (2 * mm + 1) - tieTerm / 2) / 24).squareRoot()
            var z = (rPlus - mean) / se
            if continuityCorrection { z -= (z > 0 ? 1 : z < 0 ? -1 : 0) * 0.5 / se }
            p = 2 * normalCDF(-abs(z))
        case .exact:
            p = exactPValue(rPlus: rPlus, m: m)
        case .permutation:
            p = permutationPValue(rPlus: rPlus, ranks: rank, positive: nz.map { $0 > 0 })
        }
        return Result(statistic: statistic, pValue: min(max(p, 0), 1), method: method, nonzero: m)
    }

    /// Φ(x), with scipy's `ndtr` branches: ½ + ½·erf(x/√2) near 0, else ½·erfc(|x|/√2) on the far side.
    static func normalCDF(_ a: Double) -> Double {
        let x = a * 0.5.squareRoot()
        let z = abs(x)
        if z < 0.5.squareRoot() { return 0.5 + 0.5 * erf(x) }
        let y = 0.5 * erfc(z)
        return x > 0 ? 1 - y : y
    }

    /// 2·min(P(R⁺ ≥ ⌊r⌋), P(R⁺ ≤ ⌈r⌉)) under the exact null of m untied ranks, each sign ½; every tail summed
    /// the way scipy's `WilcoxonDistribution` sums it (the short side directly, the other as 1 − the rest).
    static func exactPValue(rPlus r: Double, m: Int) -> Double {
        let top = m * (m + 1) / 2
        // Number of subsets of {1…m} with each sum (exact in doubles below 2^53: m ≤ 50 gives < 2^50).
        var ways = [Double](repeating: 0, count: top + 1)
        ways[0] = 1
        for j in 1...m { for s in stride(from: top, through: j, by: -1) { ways[s] += ways[s - j] } }
        let total = Foundation.pow(2.0, Double(m))
        let pmf = ways.map { $0 / total }
        let mean = Double(m * (m + 1)) / 4
        func lower(_ k: Int) -> Double { k < 0 ? 0 : pmf[0...min(k, top)].reduce(0, +) }  // P(R⁺ ≤ k), direct
        func upper(_ k: Int) -> Double { k > top ? 0 : pmf[max(k, 0)...].reduce(0, +) }  // P(R⁺ ≥ k), direct
        func cdf(_ k: Int) -> Double { Double(k) <= mean ? lower(k) : 1 - upper(k + 1) }
        func sf(_ k: Int) -> Double { Double(k) <= mean ? upper(k) : 1 - lower(k - 1) }
        return 2 * min(sf(Int(r.rounded(.down))), cdf(Int(r.rounded(.up))))
    }

    /// scipy's `permutation_test` p-value for R⁺ over all 2^m sign assignments: 2·min(#{null ≤ r + γ},
    /// #{null ≥ r − γ}) / 2^m with γ = 100·ε·|r| (ε the double epsilon).
    static func permutationPValue(rPlus r: Double, ranks: [Double], positive: [Bool]) -> Double {
        let m = ranks.count
        let gamma = 100 * Double.ulpOfOne * abs(r)
        var below = 0
        var above = 0
        for signs in 0..<(1 << m) {
            var s = 0.0
            for k in 0..<m where signs & (1 << k) != 0 { s += ranks[k] }
            if s <= r + gamma { below += 1 }
            if s >= r - gamma { above += 1 }
        }
        return 2 * Double(min(below, above)) / Double(1 << m)
    }
}
