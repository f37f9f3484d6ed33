import CKernels
import Tensor

/// A 3D convolution over `[N, C, Z, Y, X]` activations, in the three forms the Attention U-Net uses:
///
/// - `kernel: 3`: 3x3x3, stride 1, zero padding 1 (every conv block). Runs on CKernels
///   (`ck_conv3_forward` / `backward_data` / `backward_weights`): the direct AVX-512 kernels or
///   im2col + sgemm (`path`, `.auto` by default: the direct kernels wherever the CPU runs AVX-512).
/// - `kernel: 1`: 1x1x1 (the gates' phi/psi/W and the final classifier): one sgemm `W[Cout][Cin] x X[Cin][V]`.
/// - `kernel: 2`: 2x2x2, stride 2, no padding (the attention gate's theta): the 8 taps of each output voxel
///   are gathered (space-to-depth) into a bounded column tile, then one sgemm per tile. The output is
///   `floor(Z/2) x floor(Y/2) x floor(X/2)`, as in PyTorch (a trailing odd plane is ignored).
///
/// Registers `<name>.weight` with shape `[Cout][Cin][k][k][k]` (kz, ky, kx) and, when `bias`, `<name>.bias`
/// `[Cout]`. Initial values are the model's business (the store is zero after `allocate()`).
///
/// `forward` keeps a reference to its input for `backward`: the caller must not overwrite it in between.
/// The output is owned by the layer and reused while the shapes stay the same; the input gradient is a
/// recycled tensor (`Tensor.recycled`) that belongs to the caller.
/// Work is spread over `Parallelism.threads` (z-slabs of each sample for 3x3x3, voxel/row ranges for the
/// others); parameter gradients use per-thread private buffers that are added up at the end, so results do
/// not depend on thread timing.
/// The implementation of a 3x3x3 convolution pass.
public enum ConvPath: String, CaseIterable, Sendable {
    /// What `ck_conv3_choose` picks (it may look at shape and pass; today it decides by the CPU alone: the
    /// direct kernels measured faster on every layer and pass wherever AVX-512 runs). What training uses.
    case auto
    /// The direct AVX-512 kernels (im2col + sgemm on a CPU without AVX-512).
    case direct
    /// im2col + OpenBLAS sgemm.
    case gemm

    var ck: ck_path {
        switch self {
        case .auto: CK_PATH_AUTO
        case .direct: CK_PATH_DIRECT
        case .gemm: CK_PATH_GEMM
        }
    }

    init(_ ck: ck_path) { self = ck == CK_PATH_DIRECT ? .direct : ck == CK_PATH_GEMM ? .gemm : .auto }
}

/// The three passes of a convolution.
public enum ConvPass: CaseIterable, Sendable {
    case forward, backwardData, backwardWeights

    var ck: ck_pass {
        switch self {
        case .forward: CK_PASS_FORWARD
        case .backwardData: CK_PASS_BACKWARD_DATA
        case .backwardWeights: CK_PASS_BACKWARD_WEIGHTS
        }
    }
}

public final class Conv3d {
    public let inChannels: Int
    public let outChannels: Int
    /// 3, 1 or 2 (see the type's documentation).
    public let kernel: Int
    public let weight: ParameterRef
    public let bias: ParameterRef?
    /// A ParameterRef does not keep its store alive; the layer does.
    private let store: ParameterStore

    /// The 3x3x3 implementation (`ConvPath`). Ignored for k = 1, 2.
    public var path: ConvPath = .auto {
        didSet { if path != oldValue { workspaceKey = nil } }
    }

    /// False for the network's first layer: `backward` then skips the data gradient (returns an empty
    /// tensor) and only accumulates the parameter gradients.
    public var needsInputGradient = true

    /// True when no backward pass reads this layer's output (the next layer copies it or needs only its own
    /// output for backward): the output is then a recycled tensor, freed once read, instead of a buffer the
    /// layer keeps between steps.
    public var outputIsScratch = false

    private var input: Tensor?
    private var output: Tensor?
    private static let empty = Tensor([0])

    // Per-thread scratch for the 3x3x3 kernels (or the k = 2 column tiles), allocated once per shape.
    private struct WorkspaceKey: Equatable { var n, z, y, x, threads: Int }
    private var workspaceKey: WorkspaceKey?
    /// Floats of scratch per thread for each pass, and the thread count they were sized for. The scratch itself
    /// is recycled (`Tensor.recycled`) for the length of a pass, so every layer shares the same few buffers.
    private var scratchFloats = (forward: 0, backwardData: 0, backwardWeights: 0, parts: 1)
    /// Per-thread private weight(+bias) gradients, `threads - 1` of them (thread 0 writes into the store).
    private var privateGrads: [ConvScratch] = []

    public init(params: ParameterStore, name: String, inChannels: Int, outChannels: Int, kernel: Int, bias: Bool) {
        precondition([1, 2, 3].contains(kernel), "Conv3d \(name): kernel must be 1, 2 or 3, got \(kernel)")
        precondition(inChannels > 0 && outChannels > 0, "Conv3d \(name): channel counts must be positive")
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernel = kernel
        store = params
        weight = params.add("\(name).weight", shape: [outChannels, inChannels, kernel, kernel, kernel])
        self.bias = bias ? params.add("\(name).bias", shape: [outChannels]) : nil
    }

    /// Floats per output channel of the weight: Cin * k^3.
    public var weightRowLength: Int { inChannels * kernel * kernel * kernel }

    // MARK: Path information (for the bench and logs)

    /// Whether this CPU can run the direct AVX-512 kernels.
    public static var hasDirectKernels: Bool { ck_cpu_has_avx512() != 0 }

    /// The path `.auto` resolves to for a 3x3x3 conv of this shape and pass.
    public static func autoPath(inChannels: Int, outChannels: Int, dims: Dim3, pass: ConvPass) -> ConvPath {
        ConvPath(ck_conv3_choose(Int32(inChannels), Int32(outChannels), Int32(dims.z), Int32(dims.y), Int32(dims.x), pass.ck))
    }

    /// The path a 3x3x3 pass actually runs given a requested path (`.auto` resolved; `.direct` without
    /// AVX-512 falls back to GEMM, as CKernels does).
    public static func resolvedPath(_ requested: ConvPath, inChannels: Int, outChannels: Int, dims: Dim3,
                                    pass: ConvPass) -> ConvPath {
        switch requested {
        case .auto: return autoPath(inChannels: inChannels, outChannels: outChannels, dims: dims, pass: pass)
        case .direct: return hasDirectKernels ? .direct : .gemm
        case .gemm: return .gemm
        }
    }

    /// "direct-avx512", "im2col-sgemm".
    public static func pathName(_ path: ConvPath) -> String { String(cString: ck_path_name(path.ck)) }

    /// The path this layer runs for `pass` on `dims` (3x3x3 only; "sgemm" paths for k = 1, 2).
    public func pathName(for pass: ConvPass, dims: Dim3) -> String {
        guard kernel == 3 else { return kernel == 1 ? "sgemm-1x1x1" : "space-to-depth-sgemm" }
        return Self.pathName(Self.resolvedPath(path, inChannels: inChannels, outChannels: outChannels,
                                               dims: dims, pass: pass))
    }

    /// This layer in the per-layer profile: FLOP of a forward pass for output `shape`; backward does it twice
    /// (data and weight gradients), once for the first layer.
    private func profileEntry(_ shape: [Int]) -> LayerProfile.Entry {
        let flop = 2 * Double(inChannels * kernel * kernel * kernel) * Double(shape.reduce(1, *))
        return LayerProfile.Entry(name: String(weight.entry.name.dropLast(".weight".count)), kind: "Conv3d \(kernel)x\(kernel)x\(kernel)",
                                  shape: shape, forwardFlop: flop, backwardFlop: needsInputGradient ? 2 * flop : flop)
    }

    /// Output spatial extent for an input of extent `d`.
    public func outputDims(_ d: Dim3) -> Dim3 { kernel == 2 ? d.divided(by: 2) : d }

    // MARK: Forward

    public func forward(_ x: Tensor) -> Tensor {
        precondition(x.shape.count == 5 && x.shape[1] == inChannels,
                     "Conv3d.forward: expected [N, \(inChannels), Z, Y, X], got \(x.shape)")
        let n = x.shape[0], d = Dim3(z: x.shape[2], y: x.shape[3], x: x.shape[4])
        let od = outputDims(d)
        precondition(od.count > 0, "Conv3d.forward: input \(x.shape) too small for kernel \(kernel)")
        input = GradientMode.keep(x)
        let y = outputIsScratch ? Tensor.recycled([n, outChannels, od.z, od.y, od.x])
            : GradientMode.output(&output, [n, outChannels, od.z, od.y, od.x])
        let t0 = LayerProfile.start()
        defer { LayerProfile.stop(self, t0, backward: false) { profileEntry(y.shape) } }
        prepareWorkspaces(n: n, d: d)
        switch kernel {
        case 3: forward3(x, y, n: n, d: d)
        case 1: forward1(x, y, n: n, v: d.count)
        default: forward2(x, y, n: n, d: d)
        }
        return y
    }

    // MARK: Backward

    /// Returns dL/dx (empty when `needsInputGradient` is false) and accumulates dL/dW, dL/db into the store.
    @discardableResult
    public func backward(_ dy: Tensor) -> Tensor {
        runBackward(dy, data: needsInputGradient, weights: true) ?? Self.empty
    }

    /// The data half of `backward` alone: returns dL/dx, touches no parameter gradient (bench and tests).
    public func backwardData(_ dy: Tensor) -> Tensor {
        runBackward(dy, data: true, weights: false)!
    }

    /// The parameter half of `backward` alone: accumulates dL/dW, dL/db (bench and tests).
    public func backwardWeights(_ dy: Tensor) {
        _ = runBackward(dy, data: false, weights: true)
    }

    private func runBackward(_ dy: Tensor, data: Bool, weights: Bool) -> Tensor? {
        guard let x = input else { preconditionFailure("Conv3d.backward before forward") }
        let n = x.shape[0], d = Dim3(z: x.shape[2], y: x.shape[3], x: x.shape[4])
        let od = outputDims(d)
        precondition(dy.shape == [n, outChannels, od.z, od.y, od.x],
                     "Conv3d.backward: dy \(dy.shape) does not match the output [\(n), \(outChannels), \(od.z), \(od.y), \(od.x)]")
        prepareWorkspaces(n: n, d: d)
        let dx = data ? Tensor.recycled(x.shape) : nil
        let t0 = LayerProfile.start()
        defer { LayerProfile.stop(self, t0, backward: true) { profileEntry(dy.shape) } }
        switch kernel {
        case 3: backward3(x, dy, dx, weights: weights, n: n, d: d)
        case 1: backward1(x, dy, dx, weights: weights, n: n, v: d.count)
        default: backward2(x, dy, dx, weights: weights, n: n, d: d)
        }
        return dx
    }

    // MARK: 3x3x3

    private func forward3(_ x: Tensor, _ y: Tensor, n: Int, d: Dim3) {
        let cin = Int32(inChannels), cout = Int32(outChannels)
        let nz = Int32(d.z), ny = Int32(d.y), nx = Int32(d.x)
        let vin = inChannels * d.count, vout = outChannels * d.count
        let slabs = splitRange(d.z, parts: threadCount(d.z))
        let w = weight.value, b = bias?.value, path = path.ck
        let xp = x.pointer, yp = y.pointer, ws = scratch(scratchFloats.forward)
        for s in 0..<n {
            parallelFor(slabs.count) { t in
                let r = slabs[t]
                ck_conv3_forward(xp + s * vin, w, b, yp + s * vout, cin, cout, nz, ny, nx,
                                 Int32(r.lowerBound), Int32(r.upperBound), path, ws[t].pointer)
            }
        }
    }

    private func backward3(_ x: Tensor, _ dy: Tensor, _ dx: Tensor?, weights: Bool, n: Int, d: Dim3) {
        let cin = Int32(inChannels), cout = Int32(outChannels)
        let nz = Int32(d.z), ny = Int32(d.y), nx = Int32(d.x)
        let vin = inChannels * d.count, vout = outChannels * d.count
        let slabs = splitRange(d.z, parts: threadCount(d.z))
        let w = weight.value, path = path.ck
        let xp = x.pointer, dyp = dy.pointer
        if let dx {
            let dxp = dx.pointer, ws = scratch(scratchFloats.backwardData)
            for s in 0..<n {
                parallelFor(slabs.count) { t in
                    let r = slabs[t]
                    ck_conv3_backward_data(dyp + s * vout, w, dxp + s * vin, cin, cout, nz, ny, nx,
                                           Int32(r.lowerBound), Int32(r.upperBound), path, ws[t].pointer)
                }
            }
        }
        guard weights else { return }
        let wc = weight.count
        let ws = scratch(scratchFloats.backwardWeights)
        let targets = gradTargets(threads: slabs.count)
        for s in 0..<n {
            parallelFor(slabs.count) { t in
                let r = slabs[t]
                let (dw, db) = targets[t]
                ck_conv3_backward_weights(xp + s * vin, dyp + s * vout, dw, db, cin, cout, nz, ny, nx,
                                          Int32(r.lowerBound), Int32(r.upperBound), path, ws[t].pointer)
            }
        }
        reducePrivateGrads(threads: slabs.count, weightCount: wc)
    }

    // MARK: 1x1x1

    private func forward1(_ x: Tensor, _ y: Tensor, n: Int, v: Int) {
        let cin = inChannels, cout = outChannels
        let w = UnsafePointer(weight.value), b = bias.map { UnsafePointer($0.value) }
        let xp = x.pointer, yp = y.pointer
        let cols = splitRange(v, parts: threadCount(v / 1024))
        for s in 0..<n {
            parallelFor(cols.count) { t in
                let r = cols[t]
                let yo = yp + s * cout * v + r.lowerBound
                if let b {
                    for co in 0..<cout { (yo + co * v).update(repeating: b[co], count: r.count) }
                }
                sgemm(m: cout, n: r.count, k: cin, a: w, lda: cin, b: xp + s * cin * v + r.lowerBound, ldb: v,
                      beta: b == nil ? 0 : 1, c: yo, ldc: v)
            }
        }
    }

    private func backward1(_ x: Tensor, _ dy: Tensor, _ dx: Tensor?, weights: Bool, n: Int, v: Int) {
        let cin = inChannels, cout = outChannels
        let w = UnsafePointer(weight.value)
        let xp = x.pointer, dyp = dy.pointer
        let cols = splitRange(v, parts: threadCount(v / 1024))
        if let dx {
            let dxp = dx.pointer
            for s in 0..<n {
                parallelFor(cols.count) { t in
                    let r = cols[t]
                    // dx[Cin][V] = W^T[Cin][Cout] x dy[Cout][V]
                    sgemm(transA: true, m: cin, n: r.count, k: cout, a: w, lda: cin,
                          b: dyp + s * cout * v + r.lowerBound, ldb: v, c: dxp + s * cin * v + r.lowerBound, ldc: v)
                }
            }
        }
        guard weights else { return }
        let targets = gradTargets(threads: cols.count)
        let hasBias = bias != nil
        for s in 0..<n {
            parallelFor(cols.count) { t in
                let r = cols[t]
                let (dw, db) = targets[t]
                let dys = dyp + s * cout * v + r.lowerBound
                // dW[Cout][Cin] += dy[Cout][V] x X^T[V][Cin]
                sgemm(transB: true, m: cout, n: cin, k: r.count, a: dys, lda: v,
                      b: xp + s * cin * v + r.lowerBound, ldb: v, beta: 1, c: dw, ldc: cin)
                if hasBias, let db { Self.addRowSums(dys, rows: cout, length: r.count, stride: v, into: db) }
            }
        }
        reducePrivateGrads(threads: cols.count, weightCount: weight.count)
    }

    // MARK: 2x2x2 stride 2

    /// Output rows (oz, oy) per column tile: about 1M floats of columns, at least one row.
    private func rowsPerTile(_ od: Dim3) -> Int {
        max(1, (1 << 20) / max(1, inChannels * 8 * od.x))
    }

    /// col[(ci*8 + kz*4 + ky*2 + kx)][j*Xo + ox] = x[ci][2oz+kz][2oy+ky][2ox+kx] for output rows r0 ..< r0+nr.
    private static func gather2(_ xs: UnsafePointer<Float>, _ col: UnsafeMutablePointer<Float>, cin: Int,
                                d: Dim3, od: Dim3, r0: Int, nr: Int) {
        let nt = nr * od.x, plane = d.y * d.x, vol = d.z * plane
        for ci in 0..<cin {
            for k in 0..<8 {
                let kz = k >> 2, ky = (k >> 1) & 1, kx = k & 1
                var dst = col + (ci * 8 + k) * nt
                for j in 0..<nr {
                    let r = r0 + j, oz = r / od.y, oy = r % od.y
                    let src = xs + ci * vol + (2 * oz + kz) * plane + (2 * oy + ky) * d.x + kx
                    for ox in 0..<od.x { dst[ox] = src[2 * ox] }
                    dst += od.x
                }
            }
        }
    }

    /// The adjoint of gather2: dx[ci][2oz+kz][2oy+ky][2ox+kx] = col[...] (each input voxel is hit at most once).
    private static func scatter2(_ col: UnsafePointer<Float>, _ dxs: UnsafeMutablePointer<Float>, cin: Int,
                                 d: Dim3, od: Dim3, r0: Int, nr: Int) {
        let nt = nr * od.x, plane = d.y * d.x, vol = d.z * plane
        for ci in 0..<cin {
            for k in 0..<8 {
                let kz = k >> 2, ky = (k >> 1) & 1, kx = k & 1
                var src = col + (ci * 8 + k) * nt
                for j in 0..<nr {
                    let r = r0 + j, oz = r / od.y, oy = r % od.y
                    let dst = dxs + ci * vol + (2 * oz + kz) * plane + (2 * oy + ky) * d.x + kx
                    for ox in 0..<od.x { dst[2 * ox] = src[ox] }
                    src += od.x
                }
            }
        }
    }

    private func forward2(_ x: Tensor, _ y: Tensor, n: Int, d: Dim3) {
        let od = outputDims(d), rows = od.z * od.y, vo = od.count
        let cin = inChannels, cout = outChannels, k = cin * 8
        let w = UnsafePointer(weight.value), b = bias.map { UnsafePointer($0.value) }
        let xp = UnsafePointer(x.pointer), yp = y.pointer, ws = scratch(scratchFloats.forward)
        let parts = splitRange(rows, parts: threadCount(rows))
        let rt = rowsPerTile(od)
        for s in 0..<n {
            parallelFor(parts.count) { t in
                let col = ws[t].pointer
                var r0 = parts[t].lowerBound
                while r0 < parts[t].upperBound {
                    let nr = min(rt, parts[t].upperBound - r0), nt = nr * od.x
                    Self.gather2(xp + s * cin * d.count, col, cin: cin, d: d, od: od, r0: r0, nr: nr)
                    let yo = yp + s * cout * vo + r0 * od.x
                    if let b { for co in 0..<cout { (yo + co * vo).update(repeating: b[co], count: nt) } }
                    sgemm(m: cout, n: nt, k: k, a: w, lda: k, b: col, ldb: nt, beta: b == nil ? 0 : 1, c: yo, ldc: vo)
                    r0 += nr
                }
            }
        }
    }

    private func backward2(_ x: Tensor, _ dy: Tensor, _ dx: Tensor?, weights: Bool, n: Int, d: Dim3) {
        let od = outputDims(d), rows = od.z * od.y, vo = od.count
        let cin = inChannels, cout = outChannels, k = cin * 8
        let w = UnsafePointer(weight.value)
        let xp = UnsafePointer(x.pointer), dyp = dy.pointer
        let parts = splitRange(rows, parts: threadCount(rows))
        let rt = rowsPerTile(od)
        if let dx {
            // Voxels past the last even index (odd extents) get no gradient; the scatter covers the rest.
            if d.z % 2 != 0 || d.y % 2 != 0 || d.x % 2 != 0 { dx.zero() }
            let dxp = dx.pointer, ws = scratch(scratchFloats.backwardData)
            for s in 0..<n {
                parallelFor(parts.count) { t in
                    let col = ws[t].pointer
                    var r0 = parts[t].lowerBound
                    while r0 < parts[t].upperBound {
                        let nr = min(rt, parts[t].upperBound - r0), nt = nr * od.x
                        // dcol[Cin*8][nt] = W^T[Cin*8][Cout] x dy[Cout][nt]
                        sgemm(transA: true, m: k, n: nt, k: cout, a: w, lda: k, b: dyp + s * cout * vo + r0 * od.x,
                              ldb: vo, c: col, ldc: nt)
                        Self.scatter2(col, dxp + s * cin * d.count, cin: cin, d: d, od: od, r0: r0, nr: nr)
                        r0 += nr
                    }
                }
            }
        }
        guard weights else { return }
        let targets = gradTargets(threads: parts.count)
        let hasBias = bias != nil, ws = scratch(scratchFloats.backwardWeights)
        for s in 0..<n {
            parallelFor(parts.count) { t in
                let col = ws[t].pointer
                let (dw, db) = targets[t]
                var r0 = parts[t].lowerBound
                while r0 < parts[t].upperBound {
                    let nr = min(rt, parts[t].upperBound - r0), nt = nr * od.x
                    Self.gather2(xp + s * cin * d.count, col, cin: cin, d: d, od: od, r0: r0, nr: nr)
                    let dys = dyp + s * cout * vo + r0 * od.x
                    // dW[Cout][Cin*8] += dy[Cout][nt] x col^T[nt][Cin*8]
                    sgemm(transB: true, m: cout, n: k, k: nt, a: dys, lda: vo, b: col, ldb: nt, beta: 1, c: dw, ldc: k)
                    if hasBias, let db { Self.addRowSums(dys, rows: cout, length: nt, stride: vo, into: db) }
                    r0 += nr
                }
            }
        }
        reducePrivateGrads(threads: parts.count, weightCount: weight.count)
    }

    // MARK: Helpers

    /// Threads for `units` independent units of work (at most one per unit).
    private func threadCount(_ units: Int) -> Int { max(1, min(Parallelism.threads, units)) }

    /// (dW, db) destinations per thread: thread 0 accumulates into the store, the others into private buffers.
    private func gradTargets(threads: Int) -> [(UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>?)] {
        let wc = weight.count
        return (0..<threads).map { t in
            if t == 0 { return (weight.grad, bias?.grad) }
            let p = privateGrads[t - 1].pointer
            p.update(repeating: 0, count: wc + outChannels)
            return (p, bias == nil ? nil : p + wc)
        }
    }

    private func reducePrivateGrads(threads: Int, weightCount wc: Int) {
        guard threads > 1 else { return }
        let gw = weight.grad, gb = bias?.grad
        for t in 1..<threads {
            let p = privateGrads[t - 1].pointer
            for i in 0..<wc { gw[i] += p[i] }
            if let gb { for i in 0..<outChannels { gb[i] += p[wc + i] } }
        }
    }

    /// into[r] += sum of length floats at p + r*stride (accumulated in Double).
    private static func addRowSums(_ p: UnsafePointer<Float>, rows: Int, length: Int, stride: Int,
                                   into: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let q = p + r * stride
            var a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0
            var i = 0
            while i + 4 <= length {
                a0 += Double(q[i]); a1 += Double(q[i + 1]); a2 += Double(q[i + 2]); a3 += Double(q[i + 3])
                i += 4
            }
            while i < length { a0 += Double(q[i]); i += 1 }
            into[r] += Float((a0 + a1) + (a2 + a3))
        }
    }

    /// (Re)allocates the per-thread workspaces for this input shape, thread count and path.
    /// One recycled scratch buffer of `floats` per thread of the current shape.
    private func scratch(_ floats: Int) -> [Tensor] {
        (0..<scratchFloats.parts).map { _ in Tensor.recycled([floats]) }
    }

    private func prepareWorkspaces(n: Int, d: Dim3) {
        let threads = max(1, Parallelism.threads)
        let key = WorkspaceKey(n: n, z: d.z, y: d.y, x: d.x, threads: threads)
        if key == workspaceKey { return }
        var fwd = 0, bd = 0, bw = 0, parts = 1
        switch kernel {
        case 3:
            parts = threadCount(d.z)
            let slab = (d.z + parts - 1) / parts
            func size(_ pass: ck_pass) -> Int {
                Int(ck_conv3_workspace_floats(Int32(inChannels), Int32(outChannels), Int32(d.z), Int32(d.y),
                                              Int32(d.x), Int32(slab), pass, path.ck))
            }
            fwd = size(CK_PASS_FORWARD); bd = size(CK_PASS_BACKWARD_DATA); bw = size(CK_PASS_BACKWARD_WEIGHTS)
        case 2:
            let od = outputDims(d)
            parts = threadCount(od.z * od.y)
            let tile = inChannels * 8 * min(rowsPerTile(od), od.z * od.y) * od.x
            (fwd, bd, bw) = (tile, tile, tile)
        default:
            parts = threadCount(d.count / 1024)
        }
        scratchFloats = (fwd, bd, bw, parts)
        privateGrads = (0..<max(0, parts - 1)).map { _ in ConvScratch(weight.count + outChannels) }
        workspaceKey = key
    }
}

/// A 64-byte-aligned float scratch buffer (uninitialised contents), freed with its owner.
private final class ConvScratch: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Float>
    let count: Int
    init(_ count: Int) {
        self.count = count
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
            .bindMemory(to: Float.self, capacity: max(count, 1))
    }
    deinit { UnsafeMutableRawPointer(pointer).deallocate() }
}
