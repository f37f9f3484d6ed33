import Foundation
import Tensor

/// Segmentation losses on logits [N, C, Z, Y, X] and integer labels (N·Z·Y·X values in 0..<C). Softmax over
/// channels happens inside the loss. `forward` returns the loss and leaves d(loss)/d(logits) in `gradient`.
public enum LossKind: String, Codable, Sendable, CaseIterable {
    /// Sørensen-Dice over all classes (background included), per sample and class:
    /// D = (2Σpg + s) / (Σp² + Σg² + s), loss = 1 − mean D, s = `smooth`.
    case dice
    /// The released code's `SoftDiceLoss`: I = Σpg + s, U = Σp + Σg + s,
    /// loss = 1 − mean(2I/U), s = 0.01. Terms of absent classes approach 2, so the loss can go below 0.
    case softDice = "soft-dice"
    /// Cross-entropy, mean over voxels (log-softmax + NLL).
    case crossEntropy = "cross-entropy"
}

public final class SegmentationLoss {
    public let kind: LossKind
    public let smooth: Double
    public private(set) var gradient = Tensor([0])
    private var probs = Tensor([0])

    /// `smooth` defaults to 1e-5 for `.dice` and to the original's 0.01 for `.softDice`.
    public init(_ kind: LossKind, smooth: Double? = nil) {
        self.kind = kind
        self.smooth = smooth ?? (kind == .softDice ? 0.01 : 1e-5)
    }

    /// Returns the loss; `gradient` then holds d(loss)/d(logits).
    public func forward(logits: Tensor, labels: UnsafeBufferPointer<UInt8>) -> Double {
        let s = logits.shape
        let n = s[0], c = s[1], v = s[2] * s[3] * s[4]
        precondition(labels.count == n * v, "loss: \(labels.count) labels for logits \(s)")
        if probs.shape != s { probs = Tensor(s); gradient = Tensor(s) }
        softmax(logits.pointer, probs.pointer, n: n, c: c, v: v)
        let p = probs.pointer, g = gradient.pointer
        switch kind {
        case .crossEntropy:
            var total = 0.0
            let scale = Float(1.0 / Double(n * v))
            for b in 0..<n {
                for i in 0..<v {
                    let t = Int(labels[b * v + i])
                    total -= Foundation.log(max(Double(p[(b * c + t) * v + i]), 1e-30))
                    for k in 0..<c { g[(b * c + k) * v + i] = p[(b * c + k) * v + i] * scale }
                    g[(b * c + t) * v + i] -= scale
                }
            }
            return total / Double(n * v)
        case .dice, .softDice:
            // Per (sample, class) sums, then dL/dp, then back through the softmax.
            var loss = 0.0
            let norm = 1.0 / Double(n * c)
            for b in 0..<n {
                for k in 0..<c {
                    let pk = p + (b * c + k) * v, lab = labels.baseAddress! + b * v
                    var pg = 0.0, pp = 0.0, gg = 0.0
                    for i in 0..<v {
                        let pv = Double(pk[i]), isK = lab[i] == UInt8(k)
                        if isK { pg += pv; gg += 1 }
                        pp += kind == .dice ? pv * pv : pv
                    }
                    let gk = g + (b * c + k) * v
                    if kind == .dice {
                        let num = 2 * pg + smooth, den = pp + gg + smooth
                        loss += num / den
                        // dD/dp = (2g·den − num·2p) / den²
                        let a = Float(-norm * 2 / den), bcoef = Float(norm * 2 * num / (den * den))
                        for i in 0..<v { gk[i] = (lab[i] == UInt8(k) ? a : 0) + bcoef * pk[i] }
                    } else {
                        let inter = pg + smooth, union = pp + gg + smooth
                        loss += 2 * inter / union
                        // d(2I/U)/dp = 2(g·U − I)/U²
                        let a = Float(-norm * 2 / union), bcoef = Float(norm * 2 * inter / (union * union))
                        for i in 0..<v { gk[i] = (lab[i] == UInt8(k) ? a : 0) + bcoef }
                    }
                }
            }
            softmaxBackward(p, g, n: n, c: c, v: v)
            return 1 - loss * norm
        }
    }

    /// Numerically stable softmax over channels.
    private func softmax(_ x: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>, n: Int, c: Int, v: Int) {
        for b in 0..<n {
            let xb = x + b * c * v, yb = y + b * c * v
            for i in 0..<v {
                var m = -Float.infinity
                for k in 0..<c { m = max(m, xb[k * v + i]) }
                var sum: Float = 0
                for k in 0..<c { let e = expf(xb[k * v + i] - m); yb[k * v + i] = e; sum += e }
                let inv = 1 / sum
                for k in 0..<c { yb[k * v + i] *= inv }
            }
        }
    }

    /// In place: g ← dL/dz from g = dL/dp, using dz_k = p_k (g_k − Σ_j p_j g_j).
    private func softmaxBackward(_ p: UnsafeMutablePointer<Float>, _ g: UnsafeMutablePointer<Float>, n: Int, c: Int, v: Int) {
        for b in 0..<n {
            let pb = p + b * c * v, gb = g + b * c * v
            for i in 0..<v {
                var dot: Float = 0
                for k in 0..<c { dot += pb[k * v + i] * gb[k * v + i] }
                for k in 0..<c { gb[k * v + i] = pb[k * v + i] * (gb[k * v + i] - dot) }
            }
        }
    }
}
