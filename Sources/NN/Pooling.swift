import Tensor

/// 3D max pooling, kernel 2×2×2, stride 2 on all three axes, no padding (PyTorch `MaxPool3d(2)`).
///
/// Odd sizes floor like PyTorch (the last slice/row/column of an odd axis is dropped). Forward records, per
/// output voxel, the arg-max inside its window as a `UInt8` k = dz·4 + dy·2 + dx; ties go to the first maximum
/// in PyTorch's scan order (z, then y, then x) and a NaN wins (propagates) as in PyTorch. Backward routes each
/// output gradient to its arg-max and zero elsewhere.
public final class MaxPool3d {
    private var y: Tensor?
    private var winner: UnsafeMutableBufferPointer<UInt8>?
    private var inShape: [Int] = []

    /// Its place in the model (`up_concat1.up`), for the per-layer profile.
    public var label = ""

    public init() {}

    deinit { winner?.deallocate() }

    /// Output shape for an input shape `[N, C, Z, Y, X]`.
    public static func outputShape(_ s: [Int]) -> [Int] { [s[0], s[1], s[2] / 2, s[3] / 2, s[4] / 2] }

    public func forward(_ x: Tensor) -> Tensor {
        PointwiseSupport.require5D(x, "MaxPool3d")
        let t0 = LayerProfile.start()
        defer {
            LayerProfile.stop(self, t0, backward: false) {
                .memoryBound(
                    label, "MaxPool3d", Self.outputShape(x.shape), forward: x.count + x.count / 8 + x.count / 32,
                    backward: x.count + x.count / 8 + x.count / 32)
            }
        }
        let s = x.shape
        let os = Self.outputShape(s)
        let out = GradientMode.output(&y, os)
        inShape = s
        let outCount = out.count
        if winner == nil || winner!.count != outCount {
            winner?.deallocate()
            winner = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: outCount)
            winner!.initialize(repeating: 0)
        }
        let planes = s[0] * s[1]
        let zi = s[2]
        let yi = s[3]
        let xi = s[4]
        let zo = os[2]
        let yo = os[3]
        let xo = os[4]
        let src = x.pointer
        let dst = out.pointer
        let arg = winner!.baseAddress!
        let inPlane = zi * yi * xi
        let outPlane = zo * yo * xo
        let sy = xi
        let sz = yi * xi
        parallelFor(planes * zo) { task in
            let p = task / zo
            let z = task % zo
            let base = src + p * inPlane + 2 * z * sz
            var o = p * outPlane + z * yo * xo
            for yy in 0..<yo {
                let r00 = base + 2 * yy * sy
                let r01 = r00 + sy
                let r10 = r00 + sz
                let r11 = r10 + sy
                for xx in 0..<xo {
                    let i = 2 * xx
                    // Scan order of PyTorch's kernel loop: z outer, y, x inner; strict > keeps the first max.
                    var m = -Float.infinity
                    var k: UInt8 = 0
                    @inline(__always) func visit(_ v: Float, _ idx: UInt8) {
                        // Branch-free select (random data would mispredict a branch half the time).
                        let take = v > m || v != v
                        m = take ? v : m
                        k = take ? idx : k
                    }
                    visit(r00[i], 0)
                    visit(r00[i + 1], 1)
                    visit(r01[i], 2)
                    visit(r01[i + 1], 3)
                    visit(r10[i], 4)
                    visit(r10[i + 1], 5)
                    visit(r11[i], 6)
                    visit(r11[i + 1], 7)
                    dst[o] = m
                    arg[o] = k
                    o += 1
                }
            }
        }
        return out
    }

    public func backward(_ dy: Tensor) -> Tensor {
        let t0 = LayerProfile.start()
        defer {
            LayerProfile.stop(self, t0, backward: true) {
                .memoryBound(
                    label, "MaxPool3d", dy.shape, forward: 9 * dy.count + dy.count / 4,
                    backward: 9 * dy.count + dy.count / 4)
            }
        }
        guard let y, let winner else { preconditionFailure("MaxPool3d.backward before forward") }
        precondition(dy.shape == y.shape, "MaxPool3d.backward: dy \(dy.shape) vs y \(y.shape)")
        let s = inShape
        let os = y.shape
        let g = Tensor.recycled(s)
        let planes = s[0] * s[1]
        let zi = s[2]
        let yi = s[3]
        let xi = s[4]
        let zo = os[2]
        let yo = os[3]
        let xo = os[4]
        let gp = g.pointer
        let dyp = dy.pointer
        let arg = winner.baseAddress!
        let inPlane = zi * yi * xi
        let outPlane = zo * yo * xo
        let sy = xi
        let sz = yi * xi
        // Each task owns input slices 2z and 2z+1 of its plane; the leftover slice of an odd Z is zeroed too.
        parallelFor(planes * max(zo, 1)) { task in
            let p = task / max(zo, 1)
            let z = task % max(zo, 1)
            let plane = gp + p * inPlane
            if zo == 0 {
                plane.update(repeating: 0, count: inPlane)
                return
            }
            let zEnd = (z == zo - 1) ? zi : 2 * z + 2
            let slab = plane + 2 * z * sz
            slab.update(repeating: 0, count: (zEnd - 2 * z) * sz)
            var o = p * outPlane + z * yo * xo
            for yy in 0..<yo {
                let r00 = slab + 2 * yy * sy
                for xx in 0..<xo {
                    let k = Int(arg[o])
                    let dz = k >> 2
                    let dyy = (k >> 1) & 1
                    let dxx = k & 1
                    r00[dz * sz + dyy * sy + 2 * xx + dxx] = dyp[o]
                    o += 1
                }
            }
        }
        GradientMode.release(&self.y)
        return g
    }
}
