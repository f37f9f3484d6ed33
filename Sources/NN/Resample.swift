import CKernels
import Tensor

/// Trilinear resampling of `[N, C, Z, Y, X]` volumes (PyTorch `F.interpolate(mode: "trilinear")`).
///
/// The target is a scale factor per axis (integer up-sampling ×2/×4/×8 or any positive real) or an explicit
/// output size. Per axis, with `in` and `out` the sizes and `d` an output index (all in Float, as PyTorch's CPU
/// kernel for float tensors):
/// - `alignCorners: false` (PyTorch ≥ 0.4 default): `src = scale · (d + 0.5) − 0.5`, clamped at 0, where
///   `scale = Float(1 / scaleFactor)` when a scale factor is given (`recompute_scale_factor` unset) and
///   `Float(in) / Float(out)` when a size is given;
/// - `alignCorners: true` (PyTorch ≤ 0.3 behaviour): `src = d · (in − 1) / (out − 1)` (0 when out == 1);
/// then `i0 = min(⌊src⌋, in − 1)`, `i1 = min(i0 + 1, in − 1)`, `λ1 = clamp(src − i0, 0, 1)`, `λ0 = 1 − λ1`, and an
/// axis whose size is unchanged is copied. With a scale factor the output size is `⌊in · scaleFactor⌋`.
///
/// The work is separable: per output z-slice, a blend of two input slices (Z), a gather along X on the input
/// rows only, then a blend of rows (Y) written to the output, all from per-axis index/weight tables rebuilt only
/// when the input shape changes. Backward is the exact adjoint (scatter-add with the same weights), done as a
/// gather over input slices so tasks never race. The per-slice loops are CKernels' `ck_tri_forward` and
/// `ck_tri_backward` (`resample.c`): with AVX2 + FMA, 8-lane blends, the X pass as one load and two in-register
/// permutes per 8 output columns (gathers where down-sampling), its adjoint as per-column lists of taps read by
/// loads (×2) or gathers; plain C on other CPUs. The two builds differ by float rounding only (FMA, and the two
/// taps of a clamped edge merged in the adjoint), within a few ulps of the magnitude of the terms.
public final class Trilinear {
    public enum Target: Equatable, Sendable {
        /// Scale factors per axis (output size ⌊in · s⌋; the interpolation uses 1/s as PyTorch does).
        case scale(z: Double, y: Double, x: Double)
        /// An explicit output size (the interpolation uses in/out).
        case size(Dim3)
    }

    public let target: Target
    public let alignCorners: Bool
    /// Its place in the model (`up_concat1.up`), for the per-layer profile.
    public var label = ""

    /// One axis: output index → two input indices and weights.
    struct AxisTable {
        var i0: [Int32] = [], i1: [Int32] = [], w0: [Float] = [], w1: [Float] = []
        /// For the adjoint along Z: for input index i, the pairs (output index, weight) in `refs[start[i]..<start[i+1]]`.
        var start: [Int32] = [], refOut: [Int32] = [], refW: [Float] = []
        /// For X: the tables cut into blocks of 8 columns for the C kernels (`ck_tri_xplan`).
        var plan: [Int32] = []
    }

    private var tz = AxisTable(), ty = AxisTable(), tx = AxisTable()
    private var tableShape: [Int] = []
    /// The output shape of the last forward (its output is recycled: backward needs only the shape).
    private var outShape: [Int]?
    private var scratch = Tensor([0])

    /// Integer up-sampling by `factor` on all three axes (`nn.Upsample(scale_factor: factor)`).
    public convenience init(factor: Int, alignCorners: Bool) {
        precondition(factor > 0, "Trilinear: factor must be positive")
        self.init(scale: (Double(factor), Double(factor), Double(factor)), alignCorners: alignCorners)
    }

    /// Scale factors per axis, in (z, y, x) order.
    public init(scale: (z: Double, y: Double, x: Double), alignCorners: Bool) {
        precondition(scale.z > 0 && scale.y > 0 && scale.x > 0, "Trilinear: scale factors must be positive")
        target = .scale(z: scale.z, y: scale.y, x: scale.x)
        self.alignCorners = alignCorners
    }

    /// Resampling to a fixed output size (`F.interpolate(size: ...)`).
    public init(size: Dim3, alignCorners: Bool) {
        precondition(size.z > 0 && size.y > 0 && size.x > 0, "Trilinear: output size must be positive")
        target = .size(size)
        self.alignCorners = alignCorners
    }

    /// The output spatial size for an input spatial size.
    public func outputSize(for s: Dim3) -> Dim3 {
        switch target {
        case .size(let d): return d
        case .scale(let z, let y, let x):
            return Dim3(
                z: Int((Double(s.z) * z).rounded(.down)), y: Int((Double(s.y) * y).rounded(.down)),
                x: Int((Double(s.x) * x).rounded(.down)))
        }
    }

    /// The (i0, i1, λ0, λ1) table of one axis, exactly as PyTorch's `compute_source_index_and_lambda`.
    static func axisTable(
        input: Int, output: Int, scaleFactor: Double?, alignCorners: Bool,
        withRefs: Bool
    ) -> AxisTable {
        var t = AxisTable()
        t.i0 = .init(repeating: 0, count: output)
        t.i1 = t.i0
        t.w0 = .init(repeating: 0, count: output)
        t.w1 = t.w0
        let scale: Float
        if alignCorners {
            scale = output > 1 ? Float(input - 1) / Float(output - 1) : 0
        } else if let sf = scaleFactor, sf > 0 {
            scale = Float(1.0 / sf)
        } else {
            scale = Float(input) / Float(output)
        }
        for d in 0..<output {
            if input == output {
                t.i0[d] = Int32(d)
                t.i1[d] = Int32(d)
                t.w0[d] = 1
                t.w1[d] = 0
                continue
            }
            var src: Float
            if alignCorners {
                src = scale * Float(d)
            } else {
                src = scale * (Float(d) + 0.5) - 0.5
                if src < 0 { src = 0 }
            }
            let i0 = min(Int(src.rounded(.down)), input - 1)
            let l1 = min(max(src - Float(i0), 0), 1)
            let i1 = i0 + (i0 < input - 1 ? 1 : 0)
            t.i0[d] = Int32(i0)
            t.i1[d] = Int32(i1)
            t.w0[d] = 1 - l1
            t.w1[d] = l1
        }
        if withRefs {
            // CSR of contributions per input index (both taps, even when i0 == i1, as the adjoint requires).
            var counts = [Int32](repeating: 0, count: input + 1)
            for d in 0..<output {
                counts[Int(t.i0[d]) + 1] += 1
                counts[Int(t.i1[d]) + 1] += 1
            }
            for i in 0..<input { counts[i + 1] += counts[i] }
            t.start = counts
            var fill = Array(counts.prefix(input))
            t.refOut = .init(repeating: 0, count: 2 * output)
            t.refW = .init(repeating: 0, count: 2 * output)
            for d in 0..<output {
                for (i, w) in [(Int(t.i0[d]), t.w0[d]), (Int(t.i1[d]), t.w1[d])] {
                    let k = Int(fill[i])
                    fill[i] += 1
                    t.refOut[k] = Int32(d)
                    t.refW[k] = w
                }
            }
        }
        return t
    }

    private func prepare(_ s: [Int]) {
        if s == tableShape { return }
        let o = outputSize(for: Dim3(z: s[2], y: s[3], x: s[4]))
        precondition(o.z > 0 && o.y > 0 && o.x > 0, "Trilinear: empty output \(o) for input \(s)")
        var sf: (Double?, Double?, Double?) = (nil, nil, nil)
        if case .scale(let z, let y, let x) = target { sf = (z, y, x) }
        tz = Self.axisTable(input: s[2], output: o.z, scaleFactor: sf.0, alignCorners: alignCorners, withRefs: true)
        ty = Self.axisTable(input: s[3], output: o.y, scaleFactor: sf.1, alignCorners: alignCorners, withRefs: false)
        tx = Self.axisTable(input: s[4], output: o.x, scaleFactor: sf.2, alignCorners: alignCorners, withRefs: false)
        let (xi, xo) = (Int32(s[4]), Int32(o.x))
        tx.plan = [Int32](repeating: 0, count: ck_tri_xplan_words(tx.i0, tx.i1, xi, xo))
        ck_tri_xplan(tx.i0, tx.i1, tx.w0, tx.w1, xi, xo, &tx.plan)
        tableShape = s
    }

    /// A thread's scratch floats rounded up to whole cache lines (no two threads write the same line).
    static func scratchStride(_ floats: Int) -> Int { (floats + 15) / 16 * 16 }

    /// Makes sure `scratch` holds `parts * perPart` floats.
    private func scratchBase(_ parts: Int, _ perPart: Int) -> UnsafeMutablePointer<Float> {
        if scratch.count < parts * perPart { scratch = Tensor([parts * perPart]) }
        return scratch.pointer
    }

    /// The output shape for an input shape `[N, C, Z, Y, X]`.
    public func outputShape(for s: [Int]) -> [Int] {
        precondition(s.count == 5, "Trilinear: expected [N, C, Z, Y, X], got \(s)")
        let o = outputSize(for: Dim3(z: s[2], y: s[3], x: s[4]))
        return [s[0], s[1], o.z, o.y, o.x]
    }

    public func forward(_ x: Tensor) -> Tensor {
        PointwiseSupport.require5D(x, "Trilinear")
        let out = Tensor.recycled(outputShape(for: x.shape))
        run(x, into: out, channels: 0..<x.shape[1])
        return out
    }

    /// Writes the output into channels `channels` of every sample of `out`, a wider tensor (the concatenation
    /// the output goes into, ``Concat/forward(_:writingSecond:)``), with the same values as ``forward(_:)``.
    public func forward(_ x: Tensor, into out: Tensor, channels: Range<Int>) {
        PointwiseSupport.require5D(x, "Trilinear")
        var expected = outputShape(for: x.shape)
        expected[1] = out.shape.count == 5 ? out.shape[1] : -1
        precondition(
            out.shape == expected && channels.count == x.shape[1] && channels.upperBound <= out.shape[1],
            "Trilinear.forward: output \(out.shape) (channels \(channels)) for input \(x.shape)")
        run(x, into: out, channels: channels)
    }

    private func run(_ x: Tensor, into out: Tensor, channels: Range<Int>) {
        let t0 = LayerProfile.start()
        defer { LayerProfile.stop(self, t0, backward: false) { profileEntry(x.count) } }
        let s = x.shape
        prepare(s)
        let planes = s[0] * s[1]
        let zi = s[2]
        let yi = s[3]
        let xi = s[4]
        let zo = tz.i0.count
        let yo = ty.i0.count
        let xo = tx.i0.count
        outShape = [s[0], s[1], zo, yo, xo]
        let cIn = s[1]
        let cOut = out.shape[1]
        let cOff = channels.lowerBound
        let tasks = planes * zo
        // Items: runs of (plane, output slice) tasks, cut from the shape alone (WorkSplit: ~6 operations per output
        // voxel); scratch for each thread that runs them.
        let ranges = splitRange(tasks, parts: WorkSplit.parts(work: 6 * Double(tasks * yo * xo), limits: [tasks])[0])
        let parts = max(1, min(Parallelism.threads, ranges.count))
        let perPart = Self.scratchStride(ck_tri_forward_scratch(Int32(yi), Int32(xi), Int32(xo)))
        let scr = scratchBase(parts, perPart)
        let src = x.pointer
        let dst = out.pointer
        let inPlane = zi * yi * xi
        let outPlane = zo * yo * xo
        let inSlice = yi * xi
        let outSlice = yo * xo
        let (tabY, tabX, tabZ) = (ty, tx, tz)
        Self.withPointers(tabZ) { zt in
            withTables(tabY, tabX) { yt, xt in
                parallelFor(ranges.count) { part in
                    let scratch = scr + min(Parallelism.threadIndex, parts - 1) * perPart
                    for task in ranges[part] {
                        let p = task / zo
                        let oz = task % zo
                        let plane = src + p * inPlane
                        let oslice = dst + ((p / cIn) * cOut + cOff + p % cIn) * outPlane + oz * outSlice
                        ck_tri_forward(
                            plane + Int(zt.i0[oz]) * inSlice, plane + Int(zt.i1[oz]) * inSlice, zt.w0[oz], zt.w1[oz],
                            Int32(yi), Int32(xi), Int32(yo), Int32(xo), yt.i0, yt.i1, yt.w0, yt.w1, xt.i0, xt.i1,
                            xt.w0, xt.w1, xt.plan, scratch, oslice)
                    }
                }
            }
        }
    }

    /// Raw pointers to an axis table (and the X plan) for the C calls.
    struct TablePointers {
        var i0: UnsafePointer<Int32>, i1: UnsafePointer<Int32>, w0: UnsafePointer<Float>, w1: UnsafePointer<Float>
        var plan: UnsafePointer<Int32>?
    }

    /// Raw pointers to one table's index and weight arrays (and plan) for the duration of `f`.
    private static func withPointers(_ t: AxisTable, _ f: (TablePointers) -> Void) {
        t.i0.withUnsafeBufferPointer { i0 in
            t.i1.withUnsafeBufferPointer { i1 in
                t.w0.withUnsafeBufferPointer { w0 in
                    t.w1.withUnsafeBufferPointer { w1 in
                        t.plan.withUnsafeBufferPointer { plan in
                            f(
                                TablePointers(
                                    i0: i0.baseAddress!, i1: i1.baseAddress!, w0: w0.baseAddress!,
                                    w1: w1.baseAddress!, plan: plan.baseAddress))
                        }
                    }
                }
            }
        }
    }

    private func withTables(_ y: AxisTable, _ x: AxisTable, _ body: (TablePointers, TablePointers) -> Void) {
        Self.withPointers(y) { yt in Self.withPointers(x) { xt in body(yt, xt) } }
    }

    /// This layer in the per-layer profile: a pass reads one tensor and writes the other.
    private func profileEntry(_ inputCount: Int) -> LayerProfile.Entry {
        let n = inputCount + (outShape?.reduce(1, *) ?? 0)
        return .memoryBound(label, "Trilinear", outShape ?? [], forward: n, backward: n)
    }

    /// The adjoint of `forward`: dx = Zᵀ Yᵀ Xᵀ dy (scatter-add with the forward weights).
    ///
    /// With `channels`, dy is a wider tensor (the gradient of a concatenation the output went into) and the
    /// output's gradient is its channels `channels` of every sample, read in place.
    public func backward(_ dy: Tensor, channels: Range<Int>? = nil) -> Tensor {
        let t0 = LayerProfile.start()
        defer { LayerProfile.stop(self, t0, backward: true) { profileEntry(tableShape.reduce(1, *)) } }
        guard let outShape else { preconditionFailure("Trilinear.backward before forward") }
        let range = channels ?? 0..<dy.shape[1]
        var expected = dy.shape
        if expected.count == 5 { expected[1] = range.count }
        precondition(
            expected == outShape && range.upperBound <= dy.shape[1],
            "Trilinear.backward: dy \(dy.shape) (channels \(range)) vs y \(outShape)")
        let s = tableShape
        let cOut = s[1]
        let cDy = dy.shape[1]
        let cOff = range.lowerBound
        let planes = s[0] * s[1]
        let zi = s[2]
        let yi = s[3]
        let xi = s[4]
        let zo = tz.i0.count
        let yo = ty.i0.count
        let xo = tx.i0.count
        let g = Tensor.recycled(s)
        let tasks = planes * zi
        let ranges = splitRange(
            tasks, parts: WorkSplit.parts(work: 6 * Double(planes * zo * yo * xo), limits: [tasks])[0])
        let parts = max(1, min(Parallelism.threads, ranges.count))
        let perPart = Self.scratchStride(ck_tri_backward_scratch(Int32(yi), Int32(yo), Int32(xo)))
        let scr = scratchBase(parts, perPart)
        let dyp = dy.pointer
        let gp = g.pointer
        let inPlane = zi * yi * xi
        let outPlane = zo * yo * xo
        let inSlice = yi * xi
        let outSlice = yo * xo
        let (tabY, tabX, tabZ) = (ty, tx, tz)
        withTables(tabY, tabX) { yt, xt in
            tabZ.start.withUnsafeBufferPointer { zs in
                tabZ.refOut.withUnsafeBufferPointer { zro in
                    tabZ.refW.withUnsafeBufferPointer { zrw in
                        parallelFor(ranges.count) { part in
                            let scratch = scr + min(Parallelism.threadIndex, parts - 1) * perPart
                            for task in ranges[part] {
                                let p = task / zi
                                let iz = task % zi
                                let r0 = Int(zs[iz])
                                let gplane = dyp + ((p / cOut) * cDy + cOff + p % cOut) * outPlane
                                ck_tri_backward(
                                    gplane, outSlice, zro.baseAddress! + r0, zrw.baseAddress! + r0,
                                    Int32(Int(zs[iz + 1]) - r0), Int32(yi), Int32(xi), Int32(yo), Int32(xo), yt.i0,
                                    yt.i1, yt.w0, yt.w1, xt.i0, xt.i1, xt.w0, xt.w1, xt.plan, scratch,
                                    gp + p * inPlane + iz * inSlice)
                            }
                        }
                    }
                }
            }
        }
        return g
    }
}
