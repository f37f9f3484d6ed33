import Foundation
import Tensor

// Layers that combine two tensors: the attention gate's broadcast multiply, channel concatenation, and sum.

/// The attention gate's product y[n,c,v] = α[n,0,v] · x[n,c,v]: a one-channel map `[N, 1, Z, Y, X]` broadcast
/// over the C channels of `x` `[N, C, Z, Y, X]`.
///
/// Keeps references to x and α for backward, which returns dx = α ⊙ dy and dα = Σ_c dy ⊙ x.
public final class GateMultiply {
    private var x: Tensor?
    private var alpha: Tensor?
    private var y: Tensor?

    /// Its place in the model (`up_concat1.up`), for the per-layer profile.
    public var label = ""

    public init() {}

    public func forward(x: Tensor, alpha: Tensor) -> Tensor {
        let t0 = LayerProfile.start()
        defer {
            LayerProfile.stop(self, t0, backward: false) {
                .memoryBound(
                    label, "GateMultiply", x.shape, forward: 2 * x.count + alpha.count,
                    backward: 3 * x.count + 2 * alpha.count)
            }
        }
        PointwiseSupport.require5D(x, "GateMultiply")
        let s = x.shape
        precondition(
            alpha.shape == [s[0], 1, s[2], s[3], s[4]],
            "GateMultiply: alpha \(alpha.shape) must be [N, 1, Z, Y, X] for x \(s)")
        self.x = GradientMode.keep(x)
        self.alpha = GradientMode.keep(alpha)
        let out = GradientMode.output(&y, s)
        let c = s[1]
        let v = s[2] * s[3] * s[4]
        let xp = x.pointer
        let ap = alpha.pointer
        let op = out.pointer
        parallelForPieces(planes: s[0] * c, length: v) { plane, r in
            let a = ap + (plane / c) * v
            let src = xp + plane * v
            let dst = op + plane * v
            for i in r { dst[i] = a[i] * src[i] }
        }
        return out
    }

    /// Returns (dx, dα), recycled tensors that belong to the caller.
    public func backward(_ dy: Tensor) -> (dx: Tensor, dalpha: Tensor) {
        let t0 = LayerProfile.start()
        defer {
            LayerProfile.stop(self, t0, backward: true) {
                .memoryBound(label, "GateMultiply", dy.shape, forward: 2 * dy.count, backward: 3 * dy.count)
            }
        }
        guard let x, let alpha else { preconditionFailure("GateMultiply.backward before forward") }
        precondition(dy.shape == x.shape, "GateMultiply.backward: dy \(dy.shape) vs x \(x.shape)")
        let s = x.shape
        let gx = Tensor.recycled(s)
        let ga = Tensor.recycled(alpha.shape)
        let c = s[1]
        let v = s[2] * s[3] * s[4]
        let xp = x.pointer
        let ap = alpha.pointer
        let dyp = dy.pointer
        let gxp = gx.pointer
        let gap = ga.pointer
        // One item per tile of a sample's voxels (WorkSplit, from the shape: 3 operations per element): it owns dα
        // there and every channel's dx there, and sums the channels in order (the same on any thread count).
        let n = s[0]
        let tiles = alignedRanges(
            v, parts: WorkSplit.parts(work: 3 * Double(n * c * v), limits: [n, max(1, v / 64)])[1], align: 16)
        parallelFor(n * tiles.count) { item in
            let b = item / tiles.count
            let r = tiles[item % tiles.count]
            let off = r.lowerBound
            let len = r.count
            let a = ap + b * v + off
            let da = gap + b * v + off
            da.update(repeating: 0, count: len)
            for ch in 0..<c {
                let o = (b * c + ch) * v + off
                let g = dyp + o
                let xs = xp + o
                let d = gxp + o
                for i in 0..<len {
                    let gi = g[i]
                    d[i] = a[i] * gi
                    da[i] += gi * xs[i]
                }
            }
        }
        GradientMode.release(&self.x, &self.alpha, &self.y)
        return (gx, ga)
    }
}

/// Concatenation along channels (dim 1) of `[N, C_i, Z, Y, X]` tensors, in the order given (`torch.cat(dim=1)`).
///
/// The two-input form `forward(a, b)` / `backward(dy) -> (da, db)` serves the decoder's [skip, upsampled];
/// `forward([Tensor])` / `backwardAll(dy) -> [Tensor]` serves any count (the head's [dsv1, dsv2, dsv3, dsv4]).
/// Backward splits dy into recycled gradients of the input shapes.
public final class Concat {
    private var y: Tensor?
    private var inShapes: [[Int]] = []
    private var outShape: [Int] = []

    /// Its place in the model (`up_concat1.up`), for the per-layer profile.
    public var label = ""

    public init() {}

    public func forward(_ a: Tensor, _ b: Tensor) -> Tensor { forward([a, b]) }

    public func forward(_ xs: [Tensor]) -> Tensor { assemble(xs.map(\.shape), xs) }

    /// The two-input forward when the second input is written in place by the layer that makes it: copies `a`
    /// into its channels of the concatenation and returns the concatenation with the channels an input of
    /// `secondShape` has there, every one of which the caller must write (``Trilinear/forward(_:into:channels:)``
    /// does). Backward is as for `forward(a, b)`.
    public func forward(_ a: Tensor, writingSecond secondShape: [Int]) -> (Tensor, channels: Range<Int>) {
        let out = assemble([a.shape, secondShape], [a, nil])
        return (out, channels(ofInput: 1))
    }

    /// The concatenation of inputs of `shapes`, with those in `sources` (the same count; nil: written by the
    /// caller) copied into their channels.
    private func assemble(_ shapes: [[Int]], _ sources: [Tensor?]) -> Tensor {
        let t0 = LayerProfile.start()
        precondition(!shapes.isEmpty, "Concat: no inputs")
        let s0 = shapes[0]
        precondition(s0.count >= 2, "Concat: expected [N, C, ...], got \(s0)")
        var cTotal = 0
        for s in shapes {
            precondition(
                s.count == s0.count && s[0] == s0[0] && Array(s[2...]) == Array(s0[2...]),
                "Concat: \(s) does not match \(s0) outside dim 1")
            cTotal += s[1]
        }
        var os = s0
        os[1] = cTotal
        let out = GradientMode.output(&y, os)
        outShape = os
        inShapes = shapes
        let n = s0[0]
        let v = s0[2...].reduce(1, *)
        let copied = zip(shapes, sources).reduce(0) { $0 + ($1.1 == nil ? 0 : n * $1.0[1] * v) }
        defer {
            LayerProfile.stop(self, t0, backward: false) {
                .memoryBound(label, "Concat", os, forward: 2 * copied, backward: 2 * copied)
            }
        }
        let dst = out.pointer
        // Tasks are (n, output channel) planes of the copied inputs; each finds its source by a scan over the
        // (few) inputs.
        var planes: [(first: Int, count: Int, source: UncheckedSendable<UnsafeMutablePointer<Float>>)] = []
        var first = 0
        for (s, x) in zip(shapes, sources) {
            if let x { planes.append((first, s[1], UncheckedSendable(x.pointer))) }
            first += s[1]
        }
        let perSample = planes.reduce(0) { $0 + $1.count }
        parallelForPieces(planes: n * perSample, length: v) { task, r in
            let b = task / perSample
            var ch = task % perSample
            var k = 0
            while ch >= planes[k].count {
                ch -= planes[k].count
                k += 1
            }
            (dst + (b * cTotal + planes[k].first + ch) * v + r.lowerBound).update(
                from: planes[k].source.value + (b * planes[k].count + ch) * v + r.lowerBound, count: r.count)
        }
        return out
    }

    /// Gradients of the two inputs of `forward(a, b)`.
    public func backward(_ dy: Tensor) -> (Tensor, Tensor) {
        precondition(inShapes.count == 2, "Concat.backward(dy) -> (da, db) needs a two-input forward")
        let g = backwardAll(dy)
        return (g[0], g[1])
    }

    /// The gradient of input `k` of the last forward alone (the other inputs' parts of dy are read by their
    /// own layers in place, e.g. ``Trilinear/backward(_:channels:)``).
    public func backward(_ dy: Tensor, input k: Int) -> Tensor {
        precondition(inShapes.indices.contains(k), "Concat.backward: no input \(k) in the last forward")
        precondition(dy.shape == outShape, "Concat.backward: dy \(dy.shape) vs y \(outShape)")
        let n = outShape[0]
        let cTotal = outShape[1]
        let v = outShape[2...].reduce(1, *)
        let c = inShapes[k][1]
        let first = inShapes[..<k].reduce(0) { $0 + $1[1] }
        let grad = Tensor.recycled(inShapes[k])
        let src = dy.pointer
        let dst = grad.pointer
        parallelForPieces(planes: n * c, length: v) { task, r in
            let b = task / c
            let ch = task % c
            (dst + task * v + r.lowerBound).update(
                from: src + (b * cTotal + first + ch) * v + r.lowerBound, count: r.count)
        }
        GradientMode.release(&self.y)
        return grad
    }

    /// The gradient of the first input of the last forward, made out of `dy` itself when nothing else holds it
    /// (the other inputs' parts must have been read already): each sample's first channels are moved down to
    /// follow the previous sample's, and `dy`, cut to the input's shape, is returned (the rest of its buffer goes
    /// back to the pool). So the largest gradient of a decoder level is never held twice. Otherwise a copy, as
    /// ``backward(_:input:)``. `dy` must not be used afterwards.
    public func backwardOfFirst(taking dy: inout Tensor) -> Tensor {
        precondition(!inShapes.isEmpty, "Concat.backward before forward")
        guard Tensor.isSoleRecycled(&dy) else { return backward(dy, input: 0) }
        precondition(dy.shape == outShape, "Concat.backward: dy \(dy.shape) vs y \(outShape)")
        let n = outShape[0]
        let cTotal = outShape[1]
        let v = outShape[2...].reduce(1, *)
        let c = inShapes[0][1]
        let p = dy.pointer
        // Sample b's planes move from b·cTotal to b·c (sample 0 stays): in sample order, so no sample's planes are
        // overwritten before they move; a sample's planes move in parallel when their source and destination
        // cannot overlap (b·(cTotal − c) ≥ c), else in channel order with memmove.
        for b in 1..<max(n, 1) {
            let from = p + b * cTotal * v
            let to = p + b * c * v
            if b * (cTotal - c) >= c {
                parallelForPieces(planes: c, length: v) { ch, r in
                    (to + ch * v + r.lowerBound).update(from: from + ch * v + r.lowerBound, count: r.count)
                }
            } else {
                memmove(to, from, c * v * MemoryLayout<Float>.stride)
            }
        }
        Tensor.shrink(&dy, to: inShapes[0])
        GradientMode.release(&self.y)
        return dy
    }

    /// The channels of input `k` in the concatenation.
    public func channels(ofInput k: Int) -> Range<Int> {
        let first = inShapes[..<k].reduce(0) { $0 + $1[1] }
        return first..<(first + inShapes[k][1])
    }

    /// Gradients of every input of the last forward, in order.
    public func backwardAll(_ dy: Tensor) -> [Tensor] {
        let t0 = LayerProfile.start()
        defer {
            LayerProfile.stop(self, t0, backward: true) {
                .memoryBound(label, "Concat", dy.shape, forward: 2 * dy.count, backward: 2 * dy.count)
            }
        }
        guard let y else { preconditionFailure("Concat.backward before forward") }
        precondition(dy.shape == y.shape, "Concat.backward: dy \(dy.shape) vs y \(y.shape)")
        let n = y.shape[0]
        let cTotal = y.shape[1]
        let v = y.shape[2...].reduce(1, *)
        let src = dy.pointer
        let grads = inShapes.map { Tensor.recycled($0) }
        let dsts = grads.map { UncheckedSendable($0.pointer) }
        let cs = inShapes.map { $0[1] }
        parallelForPieces(planes: n * cTotal, length: v) { task, r in
            let b = task / cTotal
            var ch = task % cTotal
            var k = 0
            while ch >= cs[k] {
                ch -= cs[k]
                k += 1
            }
            (dsts[k].value + (b * cs[k] + ch) * v + r.lowerBound).update(
                from: src + task * v + r.lowerBound, count: r.count)
        }
        GradientMode.release(&self.y)
        return grads
    }
}

/// Elementwise sum y = a + b of two tensors of the same shape (the gate's θ(x) + φ(g)).
///
/// Backward passes dy through to both inputs: it returns `dy` itself twice (no copy), so callers must treat the
/// returned tensors as read-only. `accumulate(into:_:)` adds one gradient into another where paths fan out.
public final class Add {
    private var y: Tensor?

    /// Its place in the model (`up_concat1.up`), for the per-layer profile.
    public var label = ""

    public init() {}

    public func forward(_ a: Tensor, _ b: Tensor) -> Tensor {
        let t0 = LayerProfile.start()
        defer {
            LayerProfile.stop(self, t0, backward: false) {
                .memoryBound(label, "Add", a.shape, forward: 3 * a.count, backward: 0)
            }
        }
        precondition(a.shape == b.shape, "Add: \(a.shape) vs \(b.shape)")
        let out = GradientMode.output(&y, a.shape)
        let ap = a.pointer
        let bp = b.pointer
        let op = out.pointer
        PointwiseSupport.chunks(a.count) { r in
            for i in r { op[i] = ap[i] + bp[i] }
        }
        return out
    }

    /// (da, db) = (dy, dy).
    public func backward(_ dy: Tensor) -> (Tensor, Tensor) {
        if let y { precondition(dy.shape == y.shape, "Add.backward: dy \(dy.shape) vs y \(y.shape)") }
        GradientMode.release(&self.y)
        return (dy, dy)
    }

    /// dst += src (same element count), e.g. to sum the gradients of a tensor used by two layers.
    public static func accumulate(into dst: Tensor, _ src: Tensor) {
        precondition(dst.count == src.count, "Add.accumulate: \(dst.shape) vs \(src.shape)")
        let d = dst.pointer
        let s = src.pointer
        PointwiseSupport.chunks(dst.count) { r in
            for i in r { d[i] += s[i] }
        }
    }
}
