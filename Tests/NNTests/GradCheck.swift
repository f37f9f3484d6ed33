import Foundation
import Tensor
import XCTest

/// Finite-difference gradient checks shared by the layer tests.
///
/// The scalar is L = Σ r ⊙ f(x) for a fixed random r (so dL/dy = r is what backward receives). Each checked
/// coordinate is perturbed by ±h and L is accumulated in Double; the central difference is compared with the
/// analytic gradient with a tolerance relative to the gradient's scale. Layers that are linear in the checked
/// input (convolutions, resampling) are exact up to float32 rounding, so tolerances stay tight.
enum GradCheck {
    /// Deterministic uniform values in [lo, hi).
    static func random(_ count: Int, seed: UInt64, lo: Float = -1, hi: Float = 1) -> [Float] {
        var s = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<count).map { _ in
            s ^= s << 13
            s ^= s >> 7
            s ^= s << 17
            return lo + (hi - lo) * Float(s >> 40) / Float(1 << 24)
        }
    }

    static func dot(_ a: UnsafeMutableBufferPointer<Float>, _ b: [Float]) -> Double {
        var acc = 0.0
        for i in 0..<b.count { acc += Double(a[i]) * Double(b[i]) }
        return acc
    }

    /// Checks `analytic[i]` ≈ dL/dp[i] for `samples` coordinates of `p` (all if fewer).
    /// `loss()` must recompute L from scratch using the current contents of `p`.
    static func check(
        _ name: String, parameter p: UnsafeMutablePointer<Float>, count: Int, analytic: [Float],
        h: Float = 1e-2, relTol: Double = 2e-3, samples: Int = 40,
        loss: () -> Double, file: StaticString = #filePath, line: UInt = #line
    ) {
        let scale = max(analytic.map { Double(abs($0)) }.max() ?? 0, 1e-3)
        let stride = max(1, count / samples)
        var worst = 0.0
        for i in Swift.stride(from: 0, to: count, by: stride) {
            let saved = p[i]
            p[i] = saved + h
            let lp = loss()
            p[i] = saved - h
            let lm = loss()
            p[i] = saved
            let numeric = (lp - lm) / (2 * Double(h))
            let err = abs(numeric - Double(analytic[i])) / scale
            worst = max(worst, err)
            if err > relTol {
                XCTFail(
                    "\(name)[\(i)]: analytic \(analytic[i]) vs numeric \(numeric) (rel err \(err) > \(relTol))",
                    file: file, line: line)
                return
            }
        }
        XCTAssertLessThanOrEqual(worst, relTol, name, file: file, line: line)
    }
}
