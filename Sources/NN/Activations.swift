import Foundation
import Tensor

// Pointwise activations: ReLU, Sigmoid, and Softmax over channels. None has parameters.

/// Small helpers shared by the parameter-free layers (activations, pooling, resampling, combining).
enum PointwiseSupport {
    /// Runs `body(range)` over 0..<count split into pieces (`parallelForPieces`), in parallel.
    @inline(__always)
    static func chunks(_ count: Int, _ body: (Range<Int>) -> Void) {
        parallelForPieces(planes: 1, length: count) { _, r in body(r) }
    }

    /// Checks `x` is a 5D `[N, C, Z, Y, X]` activation.
    @inline(__always)
    static func require5D(_ x: Tensor, _ who: String) {
        precondition(x.shape.count == 5, "\(who): expected [N, C, Z, Y, X], got \(x.shape)")
    }
}

/// Rectified linear unit, y = max(x, 0).
///
/// `forward` keeps its output for backward (dx = dy where y > 0). With `inPlace: true` the output *is* the input
/// tensor (overwritten, no extra buffer), as PyTorch's `ReLU(inplace=True)`: the caller must not need x afterwards.
public final class ReLU {
    public let inPlace: Bool
    private var y: Tensor?

    /// Its place in the model (`up_concat1.up`), for the per-layer profile.
    public var label = ""

    public init(inPlace: Bool = false) { self.inPlace = inPlace }

    public func forward(_ x: Tensor) -> Tensor {
        let t0 = LayerProfile.start()
        defer {
            LayerProfile.stop(self, t0, backward: false) {
                .memoryBound(label, "ReLU", x.shape, forward: 2 * x.count, backward: 3 * x.count)
            }
        }
        let out = inPlace ? x : GradientMode.output(&y, x.shape)
        y = GradientMode.keep(out)
        let src = x.pointer
        let dst = out.pointer
        // The loop is written out in the piece's closure: a per-element closure call is not inlined once the
        // pieces run on worker threads.
        PointwiseSupport.chunks(x.count) { r in
            var i = r.lowerBound
            while i + 8 <= r.upperBound {
                let v = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD8<Float>.self)
                // Negative values become 0; NaN stays NaN (as max(x, 0) and PyTorch's ReLU).
                UnsafeMutableRawPointer(dst + i).storeBytes(
                    of: v.replacing(with: 0, where: v .<= 0), as: SIMD8<Float>.self)
                i += 8
            }
            while i < r.upperBound {
                dst[i] = src[i] <= 0 ? 0 : src[i]
                i += 1
            }
        }
        return out
    }

    /// dx = dy ⊙ [y > 0] (0 at the kink, as PyTorch). With `inPlace`, dx is written over dy and dy returned (the
    /// caller must own dy and not need it afterwards).
    public func backward(_ dy: Tensor, inPlace: Bool = false) -> Tensor {
        let t0 = LayerProfile.start()
        defer {
            LayerProfile.stop(self, t0, backward: true) {
                .memoryBound(label, "ReLU", dy.shape, forward: 2 * dy.count, backward: 3 * dy.count)
            }
        }
        guard let y else { preconditionFailure("ReLU.backward before forward") }
        precondition(dy.shape == y.shape, "ReLU.backward: dy \(dy.shape) vs y \(y.shape)")
        let g = inPlace ? dy : Tensor.recycled(dy.shape)
        let yp = y.pointer
        let dyp = dy.pointer
        let dxp = g.pointer
        PointwiseSupport.chunks(dy.count) { r in
            // An explicit vector select: the scalar form compiles to a data-dependent branch that mispredicts
            // on half the voxels (measured 10x slower).
            var i = r.lowerBound
            while i + 8 <= r.upperBound {
                let yv = UnsafeRawPointer(yp + i).loadUnaligned(as: SIMD8<Float>.self)
                let dv = UnsafeRawPointer(dyp + i).loadUnaligned(as: SIMD8<Float>.self)
                UnsafeMutableRawPointer(dxp + i).storeBytes(
                    of: dv.replacing(with: 0, where: .!(yv .> 0)), as: SIMD8<Float>.self)
                i += 8
            }
            while i < r.upperBound {
                dxp[i] = yp[i] > 0 ? dyp[i] : 0
                i += 1
            }
        }
        GradientMode.release(&self.y)
        return g
    }
}

/// Logistic sigmoid, y = 1 / (1 + e^(-x)); keeps y for backward (dx = dy ⊙ y ⊙ (1 − y)).
public final class Sigmoid {
    private var y: Tensor?

    /// Its place in the model (`up_concat1.up`), for the per-layer profile.
    public var label = ""

    public init() {}

    public func forward(_ x: Tensor) -> Tensor {
        let t0 = LayerProfile.start()
        defer {
            LayerProfile.stop(self, t0, backward: false) {
                .memoryBound(label, "Sigmoid", x.shape, forward: 2 * x.count, backward: 3 * x.count)
            }
        }
        let out = GradientMode.output(&y, x.shape)
        let src = x.pointer
        let dst = out.pointer
        // The loop is written out in the piece's closure (as ReLU's): a per-element closure call is not inlined
        // once the pieces run on worker threads. Both branches avoid overflow of exp: e^(-|x|) is in (0, 1].
        PointwiseSupport.chunks(x.count) { r in
            for i in r {
                let v = src[i]
                let e = Foundation.exp(-abs(v))
                dst[i] = v >= 0 ? 1 / (1 + e) : e / (1 + e)
            }
        }
        return out
    }

    public func backward(_ dy: Tensor) -> Tensor {
        let t0 = LayerProfile.start()
        defer {
            LayerProfile.stop(self, t0, backward: true) {
                .memoryBound(label, "Sigmoid", dy.shape, forward: 2 * dy.count, backward: 3 * dy.count)
            }
        }
        guard let y else { preconditionFailure("Sigmoid.backward before forward") }
        precondition(dy.shape == y.shape, "Sigmoid.backward: dy \(dy.shape) vs y \(y.shape)")
        let g = Tensor.recycled(dy.shape)
        let yp = y.pointer
        let dyp = dy.pointer
        let dxp = g.pointer
        PointwiseSupport.chunks(dy.count) { r in
            for i in r {
                let s = yp[i]
                dxp[i] = dyp[i] * s * (1 - s)
            }
        }
        GradientMode.release(&self.y)
        return g
    }
}

/// Softmax over channels (dim 1) of `[N, C, Z, Y, X]`, numerically stable (the per-voxel max is subtracted).
///
/// Keeps y for backward: dx = y ⊙ (dy − Σ_c dy ⊙ y).
public final class Softmax {
    private var y: Tensor?
    /// Voxels handled at once per task (scratch for the per-voxel max/sum lives on the stack).
    private static let block = 512

    public init() {}

    public func forward(_ x: Tensor) -> Tensor {
        PointwiseSupport.require5D(x, "Softmax")
        let out = GradientMode.output(&y, x.shape)
        let n = x.shape[0]
        let c = x.shape[1]
        let v = x.shape[2] * x.shape[3] * x.shape[4]
        let blocks = (v + Self.block - 1) / Self.block
        let src = x.pointer
        let dst = out.pointer
        parallelFor(n * blocks) { task in
            let b = task / blocks
            let start = (task % blocks) * Self.block
            let len = min(Self.block, v - start)
            let xin = src + b * c * v + start
            let yout = dst + b * c * v + start
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * Self.block) { tmp in
                let m = tmp.baseAddress!
                let s = m + Self.block
                for i in 0..<len { m[i] = xin[i] }
                for ch in 1..<max(c, 1) {
                    let row = xin + ch * v
                    for i in 0..<len { m[i] = max(m[i], row[i]) }
                }
                for i in 0..<len { s[i] = 0 }
                for ch in 0..<c {
                    let row = xin + ch * v
                    let o = yout + ch * v
                    for i in 0..<len {
                        let e = Foundation.exp(row[i] - m[i])
                        o[i] = e
                        s[i] += e
                    }
                }
                for i in 0..<len { s[i] = 1 / s[i] }
                for ch in 0..<c {
                    let o = yout + ch * v
                    for i in 0..<len { o[i] *= s[i] }
                }
            }
        }
        return out
    }

    public func backward(_ dy: Tensor) -> Tensor {
        guard let y else { preconditionFailure("Softmax.backward before forward") }
        precondition(dy.shape == y.shape, "Softmax.backward: dy \(dy.shape) vs y \(y.shape)")
        let g = Tensor.recycled(dy.shape)
        let n = y.shape[0]
        let c = y.shape[1]
        let v = y.shape[2] * y.shape[3] * y.shape[4]
        let blocks = (v + Self.block - 1) / Self.block
        let yp = y.pointer
        let dyp = dy.pointer
        let dxp = g.pointer
        parallelFor(n * blocks) { task in
            let b = task / blocks
            let start = (task % blocks) * Self.block
            let len = min(Self.block, v - start)
            let off = b * c * v + start
            withUnsafeTemporaryAllocation(of: Float.self, capacity: Self.block) { tmp in
                let dot = tmp.baseAddress!
                for i in 0..<len { dot[i] = 0 }
                for ch in 0..<c {
                    let yr = yp + off + ch * v
                    let gr = dyp + off + ch * v
                    for i in 0..<len { dot[i] += yr[i] * gr[i] }
                }
                for ch in 0..<c {
                    let yr = yp + off + ch * v
                    let gr = dyp + off + ch * v
                    let o = dxp + off + ch * v
                    for i in 0..<len { o[i] = yr[i] * (gr[i] - dot[i]) }
                }
            }
        }
        GradientMode.release(&self.y)
        return g
    }
}
