import CKernels
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

    /// `smooth` defaults to 1e-5 for `.dice` and to the original's 0.01 for `.softDice`.
    public init(_ kind: LossKind, smooth: Double? = nil) {
        self.kind = kind
        self.smooth = smooth ?? (kind == .softDice ? 0.01 : 1e-5)
    }

    /// Voxels per work item of the loss's loops: the partition (and so every partial sum) is the same for any
    /// thread count, so the loss and its gradient do not depend on `Parallelism.threads`.
    static let chunk = 4096
    /// Per (sample, chunk) partial sums (Dice: Σpg, Σp or Σp², Σg per class; cross-entropy: −Σ log p), kept
    /// between steps.
    private var partials: [Double] = []

    /// Returns the loss; `gradient` then holds d(loss)/d(logits).
    public func forward(logits: Tensor, labels: UnsafeBufferPointer<UInt8>) -> Double {
        let s = logits.shape
        let n = s[0]
        let c = s[1]
        let v = s[2] * s[3] * s[4]
        precondition(labels.count == n * v, "loss: \(labels.count) labels for logits \(s)")
        if gradient.shape != s { gradient = Tensor(s) }
        // The softmax, needed only here: a recycled tensor, free again when the gradient is made.
        let probs = Tensor.recycled(s)
        defer { withExtendedLifetime(probs) {} }  // read through its pointer only
        let chunks = (v + Self.chunk - 1) / Self.chunk
        let items = n * chunks
        let width = kind == .crossEntropy ? 1 : 3 * c
        if partials.count != items * width { partials = [Double](repeating: 0, count: items * width) }
        let p = probs.pointer
        let g = gradient.pointer
        let x = logits.pointer
        let lab = labels.baseAddress!
        let smooth = smooth
        let kind = kind
        // Work item j: sample j / chunks, voxels [lo, hi) of it.
        func span(_ j: Int) -> (b: Int, lo: Int, hi: Int) {
            let lo = (j % chunks) * Self.chunk
            return (j / chunks, lo, min(v, lo + Self.chunk))
        }
        return partials.withUnsafeMutableBufferPointer { buffer -> Double in
            let part = buffer.baseAddress!
            parallelFor(items) { j in
                let (b, lo, hi) = span(j)
                ck_softmax_channels(x + b * c * v, p + b * c * v, Int32(c), v, lo, hi)
            }
            switch kind {
            case .crossEntropy:
                let scale = Float(1.0 / Double(n * v))
                parallelFor(items) { j in
                    let (b, lo, hi) = span(j)
                    var total = 0.0
                    for i in lo..<hi {
                        let t = Int(lab[b * v + i])
                        total -= Foundation.log(max(Double(p[(b * c + t) * v + i]), 1e-30))
                        for k in 0..<c { g[(b * c + k) * v + i] = p[(b * c + k) * v + i] * scale }
                        g[(b * c + t) * v + i] -= scale
                    }
                    part[j] = total
                }
                var total = 0.0
                for j in 0..<items { total += part[j] }
                return total / Double(n * v)
            case .dice, .softDice:
                // Per (sample, class) sums over the chunks in order, then dL/dp, then back through the softmax.
                parallelFor(items) { j in
                    let (b, lo, hi) = span(j)
                    ck_dice_sums(
                        p + b * c * v, lab + b * v, Int32(c), v, lo, hi, kind == .dice ? 1 : 0, part + j * width)
                }
                var loss = 0.0
                let norm = 1.0 / Double(n * c)
                // (a, b) of each (sample, class): dL/dp = a·g + b (Dice: b·p).
                var ca = [Float](repeating: 0, count: n * c)
                var cb = [Float](repeating: 0, count: n * c)
                for b in 0..<n {
                    for k in 0..<c {
                        var pg = 0.0
                        var pp = 0.0
                        var gg = 0.0
                        for j in (b * chunks)..<((b + 1) * chunks) {
                            pg += part[j * width + 3 * k]
                            pp += part[j * width + 3 * k + 1]
                            gg += part[j * width + 3 * k + 2]
                        }
                        if kind == .dice {
                            let num = 2 * pg + smooth
                            let den = pp + gg + smooth
                            loss += num / den
                            // dD/dp = (2g·den − num·2p) / den²
                            ca[b * c + k] = Float(-norm * 2 / den)
                            cb[b * c + k] = Float(norm * 2 * num / (den * den))
                        } else {
                            let inter = pg + smooth
                            let union = pp + gg + smooth
                            loss += 2 * inter / union
                            // d(2I/U)/dp = 2(g·U − I)/U²
                            ca[b * c + k] = Float(-norm * 2 / union)
                            cb[b * c + k] = Float(norm * 2 * inter / (union * union))
                        }
                    }
                }
                ca.withUnsafeBufferPointer { a in
                    cb.withUnsafeBufferPointer { bc in
                        parallelFor(items) { j in
                            let (b, lo, hi) = span(j)
                            ck_dice_gradient(
                                p + b * c * v, lab + b * v, g + b * c * v, Int32(c), v, lo, hi,
                                a.baseAddress! + b * c, bc.baseAddress! + b * c, kind == .dice ? 1 : 0)
                        }
                    }
                }
                return 1 - loss * norm
            }
        }
    }

    /// The loss of one sample from probabilities that already sum to 1 over the classes (`[C][Z][Y][X]`, e.g. a
    /// sliding-window prediction's blended softmax) and its labels: the value `forward` gives for logits whose
    /// softmax they are, with no gradient. It keeps nothing between calls and allocates only the per-chunk sums,
    /// so it can score a whole validation volume. The chunking is `forward`'s, so the value does not depend on
    /// the thread count.
    public func value(probabilities: UnsafeBufferPointer<Float>, classes c: Int, labels: UnsafeBufferPointer<UInt8>)
        -> Double
    {
        let v = labels.count
        precondition(probabilities.count == c * v, "loss: \(probabilities.count) probabilities for \(c) x \(v)")
        guard v > 0 else { return .nan }
        let chunks = (v + Self.chunk - 1) / Self.chunk
        let width = kind == .crossEntropy ? 1 : 3 * c
        var part = [Double](repeating: 0, count: chunks * width)
        let p = probabilities.baseAddress!
        let lab = labels.baseAddress!
        let kind = kind
        part.withUnsafeMutableBufferPointer { buffer in
            let out = buffer.baseAddress!
            parallelFor(chunks) { j in
                let lo = j * Self.chunk
                let hi = min(v, lo + Self.chunk)
                if kind == .crossEntropy {
                    var total = 0.0
                    for i in lo..<hi { total -= Foundation.log(max(Double(p[Int(lab[i]) * v + i]), 1e-30)) }
                    out[j] = total
                    return
                }
                ck_dice_sums(p, lab, Int32(c), v, lo, hi, kind == .dice ? 1 : 0, out + j * width)
            }
        }
        if kind == .crossEntropy { return part.reduce(0, +) / Double(v) }
        var score = 0.0
        for k in 0..<c {
            var pg = 0.0
            var pp = 0.0
            var gg = 0.0
            for j in 0..<chunks {
                pg += part[j * width + 3 * k]
                pp += part[j * width + 3 * k + 1]
                gg += part[j * width + 3 * k + 2]
            }
            score += kind == .dice ? (2 * pg + smooth) / (pp + gg + smooth) : 2 * (pg + smooth) / (pp + gg + smooth)
        }
        return 1 - score / Double(c)
    }
}
