import CKernels
import Foundation
import Support
import Tensor

/// A 3D convolution over `[N, C, Z, Y, X]` activations, in the three forms the Attention U-Net uses:
///
/// - `kernel: 3`: 3x3x3, stride 1, zero padding 1 (every conv block). Runs on CKernels
///   (`ck_conv3_forward` / `backward_data` / `backward_weights`): Winograd F(2,3), the direct AVX-512 or
///   AVX2 + FMA kernels, or im2col + sgemm (`path`, `.auto` by default: the choice measured per layer, Winograd
///   on AVX2 for 16 channels and more, the direct kernels of the widest ISA elsewhere; the environment
///   variable `ATTUNET_CONV_PATH` forces the path of every layer left at `.auto`).
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
/// Work is spread over `Parallelism.threads`: for 3x3x3, each pass of each sample is cut into items (output z-slab x
/// output-channel range) from a partition made for the thread count; for 1x1x1 and 2x2x2, into samples x spatial
/// tiles x channel blocks from the shape alone (`GemmPartition`: the same items, and bit for bit the same results,
/// on any thread count), one single-threaded sgemm each. Parameter gradients that several items would share go to
/// private buffers added up in a fixed order, so results do not depend on thread timing.
/// The implementation of a 3x3x3 convolution pass (a CKernels path). Raw values are the names the command line and
/// `ATTUNET_CONV_PATH` take.
public enum ConvPath: String, CaseIterable, Sendable {
    /// What `ck_conv3_choose` picks for the shape and pass, as measured per layer (AVX2: Winograd where both channel
    /// counts reach 16, else the direct kernels; AVX-512: the direct kernels; im2col + sgemm without AVX2). What
    /// training uses, unless `ATTUNET_CONV_PATH` says otherwise.
    case auto
    /// im2col + OpenBLAS sgemm (every CPU).
    case gemm
    /// The best direct kernels this CPU runs: `directAVX512` where AVX-512 runs, else `directAVX2`.
    case direct
    /// Direct AVX2 + FMA kernels.
    case directAVX2 = "direct-avx2"
    /// Direct AVX-512 kernels.
    case directAVX512 = "direct-avx512"
    /// Winograd F(2x2x2, 3x3x3): 3.375x fewer multiplications, transforms fused with the products.
    case winogradAVX2 = "winograd-avx2"
    case winogradAVX512 = "winograd-avx512"

    var ck: ck_path {
        switch self {
        case .auto: CK_PATH_AUTO
        case .gemm: CK_PATH_GEMM
        case .direct: ck_cpu_has_avx512() != 0 ? CK_PATH_DIRECT_AVX512 : CK_PATH_DIRECT_AVX2
        case .directAVX2: CK_PATH_DIRECT_AVX2
        case .directAVX512: CK_PATH_DIRECT_AVX512
        case .winogradAVX2: CK_PATH_WINOGRAD_AVX2
        case .winogradAVX512: CK_PATH_WINOGRAD_AVX512
        }
    }

    /// The concrete path of a C path value (`.auto` for CK_PATH_AUTO).
    init(_ ck: ck_path) {
        switch ck {
        case CK_PATH_GEMM: self = .gemm
        case CK_PATH_DIRECT_AVX2: self = .directAVX2
        case CK_PATH_DIRECT_AVX512: self = .directAVX512
        case CK_PATH_WINOGRAD_AVX2: self = .winogradAVX2
        case CK_PATH_WINOGRAD_AVX512: self = .winogradAVX512
        default: self = .auto
        }
    }

    /// A path by its raw value or its CKernels name ("im2col-sgemm"), ignoring case.
    public init?(name: String) {
        let n = name.lowercased()
        if let p = ConvPath(rawValue: n) {
            self = p
            return
        }
        guard
            let p = ConvPath.allCases.first(where: {
                $0 != .auto && $0 != .direct && String(cString: ck_path_name($0.ck)) == n
            })
        else { return nil }
        self = p
    }

    /// Whether this CPU runs the path (`.auto` always; `.direct` when some direct ISA runs).
    public var isAvailable: Bool {
        switch self {
        case .auto: true
        case .direct: ck_path_available(CK_PATH_DIRECT_AVX2) != 0 || ck_path_available(CK_PATH_DIRECT_AVX512) != 0
        default: ck_path_available(ck) != 0
        }
    }
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

    /// The 3x3x3 implementation (`ConvPath`). Ignored for k = 1, 2. `.auto` obeys `ATTUNET_CONV_PATH` when it is set.
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

    // Per-thread scratch for the 3x3x3 kernels (or the k = 2 column tiles), sized once per shape.
    private struct WorkspaceKey: Equatable { var n, z, y, x, threads: Int }
    private var workspaceKey: WorkspaceKey?
    /// Floats of scratch per thread for each pass of k = 2 (and k = 1: none), and the thread count they were sized
    /// for. The scratch itself is recycled (`Tensor.recycled`) for the length of a pass, so every layer shares the
    /// same few buffers.
    private var scratchFloats = (forward: 0, backwardData: 0, backwardWeights: 0, parts: 1)
    /// The 3x3x3 passes' partitions (forward, backward-data, backward-weights) for the current shape.
    private var plans3: [PassPartition] = []
    /// Private weight(+bias) gradients: one per spatial tile of a multi-tile k = 1, 2 backward-weights partition
    /// (`GemmPartition`), `z-parts - 1` of backward-weights for k = 3 (the first part writes into the store).
    private var privateGrads: [ConvScratch] = []
    /// Their pointers (read per element by the k = 1, 2 reduction without touching the buffers' objects).
    private var privateGradPointers: [UnsafePointer<Float>] = []

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

    /// The environment variable that forces the path of every 3x3x3 conv whose `path` is `.auto`.
    public static let pathVariable = "ATTUNET_CONV_PATH"

    /// The concrete paths this CPU runs (im2col + sgemm always; the direct kernels by ISA).
    public static var availablePaths: [ConvPath] {
        [.gemm, .directAVX2, .directAVX512, .winogradAVX2, .winogradAVX512].filter { ck_path_available($0.ck) != 0 }
    }

    /// Whether this CPU runs any direct kernels (AVX2 + FMA or AVX-512).
    public static var hasDirectKernels: Bool { ConvPath.direct.isAvailable }

    /// `ATTUNET_CONV_PATH`, read once: nil when unset, empty or "auto". An unknown or unavailable name is refused
    /// (a silent fallback would measure or train something else than asked): the executable checks it first
    /// (``checkEnvironmentPath()``, one error line); a library user that skips the check stops here.
    public static let environmentPath: ConvPath? = {
        guard let value = ProcessInfo.processInfo.environment[pathVariable], !value.isEmpty else { return nil }
        do { return try parseEnvironmentPath(value) } catch { fatalError("\(error)") }
    }()

    /// Throws the one-line error an unknown or unavailable `ATTUNET_CONV_PATH` gets (nothing when it is unset).
    public static func checkEnvironmentPath() throws {
        guard let value = ProcessInfo.processInfo.environment[pathVariable], !value.isEmpty else { return }
        _ = try parseEnvironmentPath(value)
    }

    static func parseEnvironmentPath(_ value: String) throws -> ConvPath? {
        let available = (["auto", "direct"] + availablePaths.map(\.rawValue)).joined(separator: ", ")
        guard let p = ConvPath(name: value) else {
            throw AttunetError(
                "\(pathVariable)=\(value): unknown 3x3x3 convolution path; this CPU runs: \(available)", kind: .badInput
            )
        }
        guard p.isAvailable else {
            throw AttunetError(
                "\(pathVariable)=\(value): this CPU cannot run the \(p.rawValue) path; it runs: \(available)",
                kind: .badInput)
        }
        return p == .auto ? nil : p
    }

    /// What a layer whose `path` is `requested` asks CKernels for (`.auto` replaced by `ATTUNET_CONV_PATH` if set).
    public static func effectiveRequest(_ requested: ConvPath) -> ConvPath {
        requested == .auto ? environmentPath ?? .auto : requested
    }

    /// The path `ck_conv3_choose` picks for a 3x3x3 conv of this shape and pass (ignores `ATTUNET_CONV_PATH`).
    public static func autoPath(inChannels: Int, outChannels: Int, dims: Dim3, pass: ConvPass) -> ConvPath {
        ConvPath(
            ck_conv3_choose(Int32(inChannels), Int32(outChannels), Int32(dims.z), Int32(dims.y), Int32(dims.x), pass.ck)
        )
    }

    /// The concrete path a 3x3x3 pass runs given a requested path: `.auto` resolved (through `ATTUNET_CONV_PATH` when
    /// set, else `ck_conv3_choose`), an unavailable path falls back to GEMM, as CKernels does.
    public static func resolvedPath(
        _ requested: ConvPath, inChannels: Int, outChannels: Int, dims: Dim3,
        pass: ConvPass
    ) -> ConvPath {
        ConvPath(resolvedCK(requested, inChannels: inChannels, outChannels: outChannels, dims: dims, pass: pass))
    }

    static func resolvedCK(_ requested: ConvPath, inChannels: Int, outChannels: Int, dims: Dim3, pass: ConvPass)
        -> ck_path
    {
        ck_conv3_resolve(
            effectiveRequest(requested).ck, Int32(inChannels), Int32(outChannels), Int32(dims.z),
            Int32(dims.y), Int32(dims.x), pass.ck)
    }

    /// "im2col-sgemm", "direct-avx2", "direct-avx512"; for `.auto` / `.direct` the name of what they resolve to on
    /// this CPU for a generic shape.
    public static func pathName(_ path: ConvPath) -> String {
        let concrete =
            path == .auto || path == .direct
            ? resolvedCK(path, inChannels: 16, outChannels: 16, dims: Dim3(z: 8, y: 8, x: 8), pass: .forward) : path.ck
        return String(cString: ck_path_name(concrete))
    }

    /// The path this layer runs for `pass` on `dims` (3x3x3 only; "sgemm" paths for k = 1, 2).
    public func pathName(for pass: ConvPass, dims: Dim3) -> String {
        guard kernel == 3 else { return kernel == 1 ? "sgemm-1x1x1" : "space-to-depth-sgemm" }
        return String(
            cString: ck_path_name(
                Self.resolvedCK(
                    path, inChannels: inChannels, outChannels: outChannels,
                    dims: dims, pass: pass)))
    }

    /// This layer in the per-layer profile: FLOP of a forward pass for output `shape`; backward does it twice
    /// (data and weight gradients), once for the first layer.
    private func profileEntry(_ shape: [Int]) -> LayerProfile.Entry {
        let flop = 2 * Double(inChannels * kernel * kernel * kernel) * Double(shape.reduce(1, *))
        return LayerProfile.Entry(
            name: String(weight.entry.name.dropLast(".weight".count)), kind: "Conv3d \(kernel)x\(kernel)x\(kernel)",
            shape: shape, forwardFlop: flop, backwardFlop: needsInputGradient ? 2 * flop : flop)
    }

    /// Output spatial extent for an input of extent `d`.
    public func outputDims(_ d: Dim3) -> Dim3 { kernel == 2 ? d.divided(by: 2) : d }

    // MARK: Forward

    public func forward(_ x: Tensor) -> Tensor {
        precondition(
            x.shape.count == 5 && x.shape[1] == inChannels,
            "Conv3d.forward: expected [N, \(inChannels), Z, Y, X], got \(x.shape)")
        let n = x.shape[0]
        let d = Dim3(z: x.shape[2], y: x.shape[3], x: x.shape[4])
        let od = outputDims(d)
        precondition(od.count > 0, "Conv3d.forward: input \(x.shape) too small for kernel \(kernel)")
        input = GradientMode.keep(x)
        let y =
            outputIsScratch
            ? Tensor.recycled([n, outChannels, od.z, od.y, od.x])
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
        let dx = runBackward(dy, data: needsInputGradient, weights: true) ?? Self.empty
        store.finished(weight, bias)
        GradientMode.release(&self.input, &self.output)
        return dx
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
        let n = x.shape[0]
        let d = Dim3(z: x.shape[2], y: x.shape[3], x: x.shape[4])
        let od = outputDims(d)
        precondition(
            dy.shape == [n, outChannels, od.z, od.y, od.x],
            "Conv3d.backward: dy \(dy.shape) does not match the output [\(n), \(outChannels), \(od.z), \(od.y), \(od.x)]"
        )
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

    /// The items of one 3x3x3 pass on the current shape: samples x output z-slabs x output-channel ranges (item i is
    /// sample i / (zs.count * ms.count), slab (i / ms.count) % zs.count, range i % ms.count), claimed one at a time by
    /// up to `parts` threads, each with its own workspace. Fixed for a shape and thread count. Backward-weights
    /// keeps its samples in turn (`samples` 1): its z-parts' private dW are shared by the samples.
    struct PassPartition {
        var path: ck_path
        var samples = 1
        var zs: [Range<Int>], ms: [Range<Int>]
        var parts: Int
        var workspaceFloats: Int, planFloats: Int
        var items: Int { samples * zs.count * ms.count }

        /// Item i as (sample, z-part, channel-range) indices.
        func item(_ i: Int) -> (s: Int, z: Int, m: Int) {
            let nm = ms.count
            let nz = zs.count
            return (i / (nm * nz), (i / nm) % nz, i % nm)
        }
    }

    /// Floats of private dW a Winograd backward-weights partition may use for its z-parts (16 MB).
    static let privateWeightFloats3 = 1 << 22

    /// a / b rounded up (b below 1 counts as 1).
    private static func ceilDiv(_ a: Int, _ b: Int) -> Int { (a + b - 1) / max(1, b) }

    /// The partition of `pass` for `threads` threads and a batch of `samples`. M = channels the pass writes (Cout, or
    /// Cin for backward-data), in ranges of `ck_conv3_channel_group` (0: the whole range). Forward / backward-data
    /// aim at about 4 items per thread over the samples, z-slabs first (items of one slab share its input), then
    /// channel ranges. On the Winograd paths an item transforms its slab's whole input, so a channel split repeats
    /// that transform: channel ranges are cut there only until each thread has 2 items. Backward-weights on the
    /// direct and GEMM paths splits the channel ranges first (disjoint dW rows: no private buffer), and z only when
    /// there are fewer channel groups than threads; on the Winograd paths `winogradWeightSplit` weighs z-parts and
    /// channel ranges against each item's fixed cost, with z-parts as far as `privateWeightFloats3` of private dW
    /// allows (each (sample, z-part) but the first writes a private dW, added up in part order).
    static func partition(
        pass: ConvPass, path: ck_path, cin: Int, cout: Int, d: Dim3, threads: Int, samples: Int = 1
    ) -> PassPartition {
        let m = pass == .backwardData ? cin : cout
        let group = Int(ck_conv3_channel_group(path, pass.ck))
        let groups = group > 0 ? (m + group - 1) / group : 1
        let t = max(1, threads)
        let n = max(1, samples)
        let target = 4 * t
        let align = max(1, Int(ck_conv3_z_align(path)))
        let zunits = (d.z + align - 1) / align
        let winograd = path == CK_PATH_WINOGRAD_AVX2 || path == CK_PATH_WINOGRAD_AVX512
        var zparts = 1
        var mparts = 1
        if t > 1 {
            // Backward-weights: (sample, z-part) pairs beyond the first write private dW.
            let cap = max(1, privateWeightFloats3 / max(1, cin * cout * 27) / n)
            if pass == .backwardWeights && winograd {
                (zparts, mparts) = winogradWeightSplit(
                    cin: cin, cout: cout, d: d, zunits: zunits, groups: groups, group: group, threads: t, samples: n,
                    maxZParts: cap)
            } else if pass == .backwardWeights {
                mparts = min(groups, target)
                zparts = min(zunits, ceilDiv(target, n * mparts), cap)
            } else {
                zparts = min(zunits, ceilDiv(target, n))
                mparts = min(groups, ceilDiv(winograd ? 2 * t : target, n * zparts))
            }
        }
        // Slabs start on multiples of the path's z alignment (Winograd's tiles span 2 slices).
        let zs = splitRange(zunits, parts: zparts).map { r in
            (r.lowerBound * align)..<min(d.z, r.upperBound * align)
        }
        // Channel ranges on group boundaries: split the groups, then scale to channels (the last range ends at m).
        let ms = splitRange(groups, parts: mparts).map { r in
            group > 0 ? (r.lowerBound * group)..<min(m, r.upperBound * group) : 0..<m
        }
        let slab = zs.map(\.count).max() ?? 1
        let ws = Int(
            ck_conv3_workspace_floats(
                Int32(cin), Int32(cout), Int32(d.z), Int32(d.y), Int32(d.x), Int32(slab),
                pass.ck, path))
        let plan = Int(ck_conv3_plan_floats(Int32(cin), Int32(cout), Int32(d.z), Int32(d.y), Int32(d.x), pass.ck, path))
        return PassPartition(
            path: path, samples: n, zs: zs, ms: ms, parts: min(t, n * zs.count * ms.count), workspaceFloats: ws,
            planFloats: plan)
    }

    /// Winograd backward-weights: the (z-parts, channel ranges) with the least estimated time, as rounds of items
    /// (items / threads, rounded up) times the cost of the largest item. Unlike the other passes, an item has a
    /// fixed cost: it clears its 64 x Cin x (Cout range) transformed gradient, transforms it back at the end and
    /// (all but the first) adds a private dW; each channel range transforms the input again. So a small layer cut
    /// into 4 items per thread ran slower on 2 threads than on 1. The costs are rough cycles: per 2-slice tile, 12
    /// per channel transformed (input and output gradient) and 4 per (Cin, Cout) pair (64 FMAs on 16 lanes); per
    /// item, 170 per pair.
    static func winogradWeightSplit(
        cin: Int, cout: Int, d: Dim3, zunits: Int, groups: Int, group: Int, threads: Int, samples: Int,
        maxZParts: Int
    ) -> (zparts: Int, mparts: Int) {
        let tilesPerUnit = ceilDiv(d.y, 2) * ceilDiv(d.x, 2)
        var candidates: [(cost: Double, items: Int, zparts: Int, mparts: Int)] = []
        for zparts in 1...max(1, min(zunits, maxZParts)) {
            for mparts in 1...max(1, groups) {
                let items = samples * zparts * mparts
                if items > 8 * threads { break }
                let mr = Double(group > 0 ? min(cout, ceilDiv(groups, mparts) * group) : cout)
                // Tiles run in blocks of 64 (a partial last block costs a whole one).
                let tiles = Double(ceilDiv(ceilDiv(zunits, zparts) * tilesPerUnit, 64) * 64)
                let item = tiles * (12 * (Double(cin) + mr) + 4 * Double(cin) * mr) + 170 * Double(cin) * mr
                candidates.append((Double(ceilDiv(items, threads)) * item, items, zparts, mparts))
            }
        }
        // Within 2% of the least estimate, the most items: threads slowed by other work then hand theirs on.
        let least = candidates.map(\.cost).min() ?? 0
        let pick = candidates.filter { $0.cost <= 1.02 * least }.max { ($0.items, -$0.cost) < ($1.items, -$1.cost) }
        return pick.map { ($0.zparts, $0.mparts) } ?? (1, 1)
    }

    /// The partition of `pass` for this layer's current shape (after prepareWorkspaces).
    func passPartition(_ pass: ConvPass) -> PassPartition {
        plans3[pass == .forward ? 0 : pass == .backwardData ? 1 : 2]
    }

    /// The pass's plan (packed weights, masks...), made once per pass into a recycled tensor (nil when the path
    /// needs none).
    private func makePlan(_ p: PassPartition, _ pass: ConvPass, _ d: Dim3) -> Tensor? {
        guard p.planFloats > 0 else { return nil }
        let plan = Tensor.recycled([p.planFloats])
        ck_conv3_plan(
            weight.value, plan.pointer, Int32(inChannels), Int32(outChannels), Int32(d.z), Int32(d.y),
            Int32(d.x), pass.ck, p.path)
        return plan
    }

    /// Runs the items of partition `p`: body(sample, item's z-range, channel range, z-part index, workspace).
    private func runItems(
        _ p: PassPartition,
        _ body: (Int, Range<Int>, Range<Int>, Int, UnsafeMutablePointer<Float>) -> Void
    ) {
        // Items are claimed one at a time by the loop's threads; each thread has its own workspace.
        let ws = (0..<p.parts).map { _ in Tensor.recycled([max(1, p.workspaceFloats)]) }
        parallelFor(p.items) { i in
            let (s, z, m) = p.item(i)
            // (A loop that runs inline, nested in another loop's item, has the workspaces to itself.)
            body(s, p.zs[z], p.ms[m], z, ws[min(Parallelism.threadIndex, ws.count - 1)].pointer)
        }
    }

    private func forward3(_ x: Tensor, _ y: Tensor, n: Int, d: Dim3) {
        let cin = Int32(inChannels)
        let cout = Int32(outChannels)
        let nz = Int32(d.z)
        let ny = Int32(d.y)
        let nx = Int32(d.x)
        let vin = inChannels * d.count
        let vout = outChannels * d.count
        let p = passPartition(.forward)
        let plan = makePlan(p, .forward, d)
        let pp = plan.map { UnsafePointer($0.pointer) }
        let b = bias.map { UnsafePointer($0.value) }
        let path = p.path
        let xp = x.pointer
        let yp = y.pointer
        runItems(p) { s, z, m, _, ws in
            ck_conv3_forward(
                xp + s * vin, pp, b, yp + s * vout, cin, cout, nz, ny, nx,
                Int32(z.lowerBound), Int32(z.upperBound), Int32(m.lowerBound), Int32(m.upperBound), path, ws)
        }
    }

    private func backward3(_ x: Tensor, _ dy: Tensor, _ dx: Tensor?, weights: Bool, n: Int, d: Dim3) {
        let cin = Int32(inChannels)
        let cout = Int32(outChannels)
        let nz = Int32(d.z)
        let ny = Int32(d.y)
        let nx = Int32(d.x)
        let vin = inChannels * d.count
        let vout = outChannels * d.count
        let xp = x.pointer
        let dyp = dy.pointer
        if let dx {
            let p = passPartition(.backwardData)
            let plan = makePlan(p, .backwardData, d)
            let pp = plan.map { UnsafePointer($0.pointer) }
            let path = p.path
            let dxp = dx.pointer
            runItems(p) { s, z, m, _, ws in
                ck_conv3_backward_data(
                    dyp + s * vout, pp, dxp + s * vin, cin, cout, nz, ny, nx,
                    Int32(z.lowerBound), Int32(z.upperBound), Int32(m.lowerBound),
                    Int32(m.upperBound), path, ws)
            }
        }
        guard weights else { return }
        let p = passPartition(.backwardWeights)
        let path = p.path
        let targets = gradTargets(threads: p.samples * p.zs.count)
        let zparts = p.zs.count
        runItems(p) { s, z, m, zpart, ws in
            let (dw, db) = targets[s * zparts + zpart]
            ck_conv3_backward_weights(
                xp + s * vin, dyp + s * vout, dw, db, cin, cout, nz, ny, nx,
                Int32(z.lowerBound), Int32(z.upperBound), Int32(m.lowerBound),
                Int32(m.upperBound), path, ws)
        }
        reducePrivateGrads(threads: p.samples * p.zs.count, weightCount: weight.count)
    }

    // MARK: 1x1x1 and 2x2x2: one sgemm per item

    /// The items of a 1x1x1 or 2x2x2 pass, cut from the shape alone (`WorkSplit`): the same items on any thread
    /// count, so the results are the same too, bit for bit. The spatial units are voxels (k = 1; tiles start on
    /// 16-voxel boundaries) or output rows (oz, oy) of X/2 voxels (k = 2).
    ///
    /// - forward and backward-data: samples x spatial tiles x blocks of the channels the pass writes (Cout, or Cin
    ///   for backward-data), the channel block fastest (neighbouring items read the same input tile).
    /// - backward-weights: blocks of dW rows (Cout) x blocks of dW columns (Cin) x spatial tiles, every sample summed
    ///   inside an item. With several tiles each tile writes a private dW (and bias gradient), added into the store's
    ///   gradients in tile order; with one, the items write disjoint blocks of the store's gradients.
    struct GemmPartition: Equatable {
        var samples: Int
        var tiles: [Range<Int>]
        /// Output-channel (forward, backward-weights rows) or input-channel (backward-data) ranges.
        var blocks: [Range<Int>]
        /// Input-channel ranges of dW's columns (backward-weights); `[0..<Cin]` for the other passes.
        var columns: [Range<Int>]
        var items: Int { samples * tiles.count * blocks.count * columns.count }

        /// Item i as (sample, tile, block, column) indices, the column fastest, then the block.
        func item(_ i: Int) -> (s: Int, t: Int, b: Int, c: Int) {
            let nc = columns.count
            let nb = blocks.count
            let nt = tiles.count
            return (i / (nc * nb * nt), (i / (nc * nb)) % nt, (i / nc) % nb, i % nc)
        }
    }

    /// Floats of private dW + bias-gradient buffers a backward-weights partition may use (4 MB).
    static let privateGradientFloats = 1 << 20
    /// The fewest voxels a spatial tile gets, and the fewest channels of a block (a narrower sgemm loses speed).
    static let minimumTileVoxels = 64
    static let minimumBlockChannels = 16

    /// The partition of a 1x1x1 (`kernel` 1, `units` voxels) or 2x2x2 (`kernel` 2, `units` output rows of
    /// `unitVoxels` voxels) pass for a batch of `n`.
    static func gemmPartition(
        pass: ConvPass, kernel: Int, n: Int, cin: Int, cout: Int, units: Int, unitVoxels: Int
    ) -> GemmPartition {
        let taps = kernel == 2 ? 8 : 1
        let work = Double(n) * Double(cin * taps) * Double(cout) * Double(units * unitVoxels)
        let unitsPerTile = max(1, (minimumTileVoxels + unitVoxels - 1) / max(1, unitVoxels))
        let tileLimit = max(1, units / unitsPerTile)
        let align = kernel == 1 ? 16 : 1
        // A 2x2x2 input channel is 8 rows of the sgemm.
        let inLimit = max(1, kernel == 2 ? cin * 8 / minimumBlockChannels : cin / minimumBlockChannels)
        let outLimit = max(1, cout / minimumBlockChannels)
        switch pass {
        case .forward, .backwardData:
            let m = pass == .forward ? cout : cin
            let p = WorkSplit.parts(work: work, limits: [n, tileLimit, pass == .forward ? outLimit : inLimit])
            return GemmPartition(
                samples: n, tiles: alignedRanges(units, parts: p[1], align: align), blocks: splitRange(m, parts: p[2]),
                columns: [0..<cin])
        case .backwardWeights:
            let floats = cin * taps * cout + cout
            let tileCap = max(1, min(tileLimit, privateGradientFloats / floats))
            // 2x2x2: column blocks first (each gathers only its input channels), then rows; 1x1x1: rows first.
            let limits = kernel == 2 ? [inLimit, outLimit, tileCap] : [outLimit, inLimit, tileCap]
            let p = WorkSplit.parts(work: work, limits: limits)
            let (cp, rp) = kernel == 2 ? (p[0], p[1]) : (p[1], p[0])
            return GemmPartition(
                samples: 1, tiles: alignedRanges(units, parts: p[2], align: align), blocks: splitRange(cout, parts: rp),
                columns: splitRange(cin, parts: cp))
        }
    }

    /// The partition of `pass` for this layer on a batch of `n` with input extent `d` (k = 1, 2).
    func gemmPartition(_ pass: ConvPass, n: Int, d: Dim3) -> GemmPartition {
        let od = outputDims(d)
        return Self.gemmPartition(
            pass: pass, kernel: kernel, n: n, cin: inChannels, cout: outChannels,
            units: kernel == 2 ? od.z * od.y : d.count, unitVoxels: kernel == 2 ? od.x : 1)
    }

    /// Where item (tile t) of a backward-weights partition writes dW and the bias gradient, and whether it assigns
    /// (a private buffer, first sample) rather than adds.
    private func gradTarget(_ p: GemmPartition, tile t: Int) -> (
        UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>?, Bool
    ) {
        if p.tiles.count == 1 { return (weight.grad, bias?.grad, false) }
        let q = privateGrads[t].pointer
        return (q, bias == nil ? nil : q + weight.count, true)
    }

    /// Adds the private gradients of a multi-tile backward-weights pass into the store, in tile order (per element,
    /// in parallel).
    private func reduceTileGrads(_ p: GemmPartition) {
        let tiles = p.tiles.count
        guard tiles > 1 else { return }
        let wc = weight.count
        let gw = UncheckedSendable(weight.grad)
        let gb = UncheckedSendable(bias?.grad)
        let parts = UncheckedSendable(privateGradPointers)
        let total = wc + (bias == nil ? 0 : outChannels)
        Self.elementwise(total, work: total * tiles) { r in
            for i in r {
                var a = parts.value[0][i]
                for t in 1..<tiles { a += parts.value[t][i] }
                if i < wc { gw.value[i] += a } else { gb.value![i - wc] += a }
            }
        }
    }

    /// Whether the backward passes of a 1x1x1 layer run the direct AVX2 kernels (`ck_conv1_backward_data`,
    /// `ck_conv1_backward_weights`) instead of sgemm: where the CPU has AVX2 + FMA and a channel count is below 16.
    /// There the sgemm has 1 to 15 rows, or a K of a few channels, on tiles of about a thousand voxels and ran at
    /// 10-30 GFLOP/s; the direct kernels measured 2-3x faster (16->4 at 48x48x32: 0.51 ms against 1.46 ms per
    /// sample, Zen 3). The forward stays on sgemm, which measured as fast there.
    static func pointwiseBackwardIsDirect(cin: Int, cout: Int) -> Bool {
        min(cin, cout) < 16 && ck_cpu_has_avx2() != 0
    }

    private func forward1(_ x: Tensor, _ y: Tensor, n: Int, v: Int) {
        let cin = inChannels
        let cout = outChannels
        let w = UnsafePointer(weight.value)
        let b = bias.map { UnsafePointer($0.value) }
        let xp = x.pointer
        let yp = y.pointer
        let p = gemmPartition(.forward, n: n, d: x.dim3)
        parallelFor(p.items) { i in
            let (s, t, k, _) = p.item(i)
            let r = p.tiles[t]
            let co = p.blocks[k]
            let yo = yp + (s * cout + co.lowerBound) * v + r.lowerBound
            if let b {
                for c in 0..<co.count { (yo + c * v).update(repeating: b[co.lowerBound + c], count: r.count) }
            }
            sgemm(
                m: co.count, n: r.count, k: cin, a: w + co.lowerBound * cin, lda: cin,
                b: xp + s * cin * v + r.lowerBound, ldb: v, beta: b == nil ? 0 : 1, c: yo, ldc: v)
        }
    }

    private func backward1(_ x: Tensor, _ dy: Tensor, _ dx: Tensor?, weights: Bool, n: Int, v: Int) {
        let cin = inChannels
        let cout = outChannels
        let w = UnsafePointer(weight.value)
        let xp = x.pointer
        let dyp = dy.pointer
        let direct = Self.pointwiseBackwardIsDirect(cin: cin, cout: cout)
        if let dx {
            let dxp = dx.pointer
            let p = gemmPartition(.backwardData, n: n, d: x.dim3)
            parallelFor(p.items) { i in
                let (s, t, k, _) = p.item(i)
                let r = p.tiles[t]
                let ci = p.blocks[k]
                if direct {
                    ck_conv1_backward_data(
                        dyp + s * cout * v, w, dxp + s * cin * v, Int32(cin), Int32(cout), v, r.lowerBound,
                        r.upperBound, Int32(ci.lowerBound), Int32(ci.upperBound))
                    return
                }
                // dx[ci block][tile] = W^T[ci block][Cout] x dy[Cout][tile]
                sgemm(
                    transA: true, m: ci.count, n: r.count, k: cout, a: w + ci.lowerBound, lda: cin,
                    b: dyp + s * cout * v + r.lowerBound, ldb: v,
                    c: dxp + (s * cin + ci.lowerBound) * v + r.lowerBound, ldc: v)
            }
        }
        guard weights else { return }
        let p = gemmPartition(.backwardWeights, n: n, d: x.dim3)
        let hasBias = bias != nil
        parallelFor(p.items) { i in
            let (_, t, k, c) = p.item(i)
            let r = p.tiles[t]
            let co = p.blocks[k]
            let ci = p.columns[c]
            let (dw, db, assign) = gradTarget(p, tile: t)
            for s in 0..<n {
                let dys = dyp + (s * cout + co.lowerBound) * v + r.lowerBound
                let first = assign && s == 0
                if direct {
                    ck_conv1_backward_weights(
                        xp + s * cin * v, dyp + s * cout * v, dw, Int32(cin), v, r.lowerBound, r.upperBound,
                        Int32(co.lowerBound), Int32(co.upperBound), Int32(ci.lowerBound), Int32(ci.upperBound),
                        first ? 1 : 0)
                } else {
                    // dW[co block][ci block] (+)= dy[co block][tile] x X^T[tile][ci block]
                    sgemm(
                        transB: true, m: co.count, n: ci.count, k: r.count, a: dys, lda: v,
                        b: xp + (s * cin + ci.lowerBound) * v + r.lowerBound, ldb: v, beta: first ? 0 : 1,
                        c: dw + co.lowerBound * cin + ci.lowerBound, ldc: cin)
                }
                if hasBias, c == 0, let db {
                    Self.addRowSums(
                        dys, rows: co.count, length: r.count, stride: v, into: db + co.lowerBound, assign: first)
                }
            }
        }
        reduceTileGrads(p)
    }

    // MARK: 2x2x2 stride 2

    /// Output rows (oz, oy) per column tile: about 1M floats of columns, at least one row.
    private func rowsPerTile(_ od: Dim3) -> Int {
        max(1, (1 << 20) / max(1, inChannels * 8 * od.x))
    }

    /// col[(ci*8 + kz*4 + ky*2 + kx)][j*Xo + ox] = x[ci][2oz+kz][2oy+ky][2ox+kx] for output rows r0 ..< r0+nr.
    private static func gather2(
        _ xs: UnsafePointer<Float>, _ col: UnsafeMutablePointer<Float>, cin: Int,
        d: Dim3, od: Dim3, r0: Int, nr: Int
    ) {
        let nt = nr * od.x
        let plane = d.y * d.x
        let vol = d.z * plane
        for ci in 0..<cin {
            for k in 0..<8 {
                let kz = k >> 2
                let ky = (k >> 1) & 1
                let kx = k & 1
                var dst = col + (ci * 8 + k) * nt
                for j in 0..<nr {
                    let r = r0 + j
                    let oz = r / od.y
                    let oy = r % od.y
                    let src = xs + ci * vol + (2 * oz + kz) * plane + (2 * oy + ky) * d.x + kx
                    for ox in 0..<od.x { dst[ox] = src[2 * ox] }
                    dst += od.x
                }
            }
        }
    }

    /// The adjoint of gather2: dx[ci][2oz+kz][2oy+ky][2ox+kx] = col[...] (each input voxel is hit at most once).
    private static func scatter2(
        _ col: UnsafePointer<Float>, _ dxs: UnsafeMutablePointer<Float>, cin: Int,
        d: Dim3, od: Dim3, r0: Int, nr: Int
    ) {
        let nt = nr * od.x
        let plane = d.y * d.x
        let vol = d.z * plane
        for ci in 0..<cin {
            for k in 0..<8 {
                let kz = k >> 2
                let ky = (k >> 1) & 1
                let kx = k & 1
                var src = col + (ci * 8 + k) * nt
                for j in 0..<nr {
                    let r = r0 + j
                    let oz = r / od.y
                    let oy = r % od.y
                    let dst = dxs + ci * vol + (2 * oz + kz) * plane + (2 * oy + ky) * d.x + kx
                    for ox in 0..<od.x { dst[2 * ox] = src[ox] }
                    src += od.x
                }
            }
        }
    }

    /// This thread's column scratch of a 2x2x2 pass (`ws` from `scratch`).
    @inline(__always)
    private static func columns(_ ws: [Tensor]) -> UnsafeMutablePointer<Float> {
        ws[min(Parallelism.threadIndex, ws.count - 1)].pointer
    }

    private func forward2(_ x: Tensor, _ y: Tensor, n: Int, d: Dim3) {
        let od = outputDims(d)
        let vo = od.count
        let cin = inChannels
        let cout = outChannels
        let k = cin * 8
        let w = UnsafePointer(weight.value)
        let b = bias.map { UnsafePointer($0.value) }
        let xp = UnsafePointer(x.pointer)
        let yp = y.pointer
        let ws = scratch(scratchFloats.forward)
        let p = gemmPartition(.forward, n: n, d: d)
        let rt = rowsPerTile(od)
        parallelFor(p.items) { i in
            let (s, t, blk, _) = p.item(i)
            let co = p.blocks[blk]
            let col = Self.columns(ws)
            var r0 = p.tiles[t].lowerBound
            while r0 < p.tiles[t].upperBound {
                let nr = min(rt, p.tiles[t].upperBound - r0)
                let nt = nr * od.x
                Self.gather2(xp + s * cin * d.count, col, cin: cin, d: d, od: od, r0: r0, nr: nr)
                let yo = yp + (s * cout + co.lowerBound) * vo + r0 * od.x
                if let b {
                    for c in 0..<co.count { (yo + c * vo).update(repeating: b[co.lowerBound + c], count: nt) }
                }
                sgemm(
                    m: co.count, n: nt, k: k, a: w + co.lowerBound * k, lda: k, b: col, ldb: nt,
                    beta: b == nil ? 0 : 1, c: yo, ldc: vo)
                r0 += nr
            }
        }
    }

    private func backward2(_ x: Tensor, _ dy: Tensor, _ dx: Tensor?, weights: Bool, n: Int, d: Dim3) {
        let od = outputDims(d)
        let vo = od.count
        let cin = inChannels
        let cout = outChannels
        let k = cin * 8
        let w = UnsafePointer(weight.value)
        let xp = UnsafePointer(x.pointer)
        let dyp = dy.pointer
        let rt = rowsPerTile(od)
        if let dx {
            // Voxels past the last even index (odd extents) get no gradient; the scatter covers the rest.
            if d.z % 2 != 0 || d.y % 2 != 0 || d.x % 2 != 0 { dx.zero() }
            let dxp = dx.pointer
            let ws = scratch(scratchFloats.backwardData)
            let p = gemmPartition(.backwardData, n: n, d: d)
            parallelFor(p.items) { i in
                let (s, t, blk, _) = p.item(i)
                let ci = p.blocks[blk]
                let col = Self.columns(ws)
                var r0 = p.tiles[t].lowerBound
                while r0 < p.tiles[t].upperBound {
                    let nr = min(rt, p.tiles[t].upperBound - r0)
                    let nt = nr * od.x
                    // dcol[ci block * 8][nt] = W^T[ci block * 8][Cout] x dy[Cout][nt]
                    sgemm(
                        transA: true, m: ci.count * 8, n: nt, k: cout, a: w + ci.lowerBound * 8, lda: k,
                        b: dyp + s * cout * vo + r0 * od.x, ldb: vo, c: col, ldc: nt)
                    Self.scatter2(
                        col, dxp + (s * cin + ci.lowerBound) * d.count, cin: ci.count, d: d, od: od, r0: r0, nr: nr)
                    r0 += nr
                }
            }
        }
        guard weights else { return }
        let p = gemmPartition(.backwardWeights, n: n, d: d)
        let hasBias = bias != nil
        let ws = scratch(scratchFloats.backwardWeights)
        parallelFor(p.items) { i in
            let (_, t, blk, c) = p.item(i)
            let co = p.blocks[blk]
            let ci = p.columns[c]
            let col = Self.columns(ws)
            let (dw, db, assign) = gradTarget(p, tile: t)
            var first = assign
            for s in 0..<n {
                var r0 = p.tiles[t].lowerBound
                while r0 < p.tiles[t].upperBound {
                    let nr = min(rt, p.tiles[t].upperBound - r0)
                    let nt = nr * od.x
                    Self.gather2(
                        xp + (s * cin + ci.lowerBound) * d.count, col, cin: ci.count, d: d, od: od, r0: r0, nr: nr)
                    let dys = dyp + (s * cout + co.lowerBound) * vo + r0 * od.x
                    // dW[co block][ci block * 8] (+)= dy[co block][nt] x col^T[nt][ci block * 8]
                    sgemm(
                        transB: true, m: co.count, n: ci.count * 8, k: nt, a: dys, lda: vo, b: col, ldb: nt,
                        beta: first ? 0 : 1, c: dw + co.lowerBound * k + ci.lowerBound * 8, ldc: k)
                    if hasBias, c == 0, let db {
                        Self.addRowSums(
                            dys, rows: co.count, length: nt, stride: vo, into: db + co.lowerBound, assign: first)
                    }
                    first = false
                    r0 += nr
                }
            }
        }
        reduceTileGrads(p)
    }

    // MARK: Helpers

    /// (dW, db) destinations of the 3x3x3 backward-weights (sample, z-part) pairs: the first accumulates into the
    /// store, the others into private buffers (zeroed here), added up by `reducePrivateGrads` in pair order.
    private func gradTargets(threads: Int) -> [(UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>?)] {
        let wc = weight.count
        let floats = wc + outChannels
        let buffers = UncheckedSendable(privateGradPointers)
        Self.elementwise(floats, work: floats * (threads - 1)) { r in
            for t in 1..<max(threads, 1) {
                UnsafeMutablePointer(mutating: buffers.value[t - 1] + r.lowerBound).update(repeating: 0, count: r.count)
            }
        }
        return (0..<threads).map { t in
            if t == 0 { return (weight.grad, bias?.grad) }
            let p = privateGrads[t - 1].pointer
            return (p, bias == nil ? nil : p + wc)
        }
    }

    private func reducePrivateGrads(threads: Int, weightCount wc: Int) {
        guard threads > 1 else { return }
        let gw = UncheckedSendable(weight.grad)
        let gb = UncheckedSendable(bias?.grad)
        let parts = UncheckedSendable(privateGradPointers)
        let total = wc + (bias == nil ? 0 : outChannels)
        Self.elementwise(total, work: total * (threads - 1)) { r in
            for i in r {
                var a = i < wc ? gw.value[i] : gb.value![i - wc]
                for t in 1..<threads { a += parts.value[t - 1][i] }
                if i < wc { gw.value[i] = a } else { gb.value![i - wc] = a }
            }
        }
    }

    /// Runs `body` over 0..<count (elements of private gradients, `work` operations in all) in ranges of 16
    /// elements or more cut by `WorkSplit`, on the threads. Bookkeeping: not counted as the layer's loops.
    private static func elementwise(_ count: Int, work: Int, _ body: (Range<Int>) -> Void) {
        guard count > 0 else { return }
        let ranges = alignedRanges(
            count, parts: WorkSplit.parts(work: Double(work), limits: [max(1, count / 16)])[0], align: 16)
        LoopCount.notCounting { parallelFor(ranges.count) { body(ranges[$0]) } }
    }

    /// into[r] += sum of length floats at p + r*stride (accumulated in Double); `assign`: into[r] = the sum.
    private static func addRowSums(
        _ p: UnsafePointer<Float>, rows: Int, length: Int, stride: Int,
        into: UnsafeMutablePointer<Float>, assign: Bool = false
    ) {
        for r in 0..<rows {
            let q = p + r * stride
            var a0 = 0.0
            var a1 = 0.0
            var a2 = 0.0
            var a3 = 0.0
            var i = 0
            while i + 4 <= length {
                a0 += Double(q[i])
                a1 += Double(q[i + 1])
                a2 += Double(q[i + 2])
                a3 += Double(q[i + 3])
                i += 4
            }
            while i < length {
                a0 += Double(q[i])
                i += 1
            }
            let sum = Float((a0 + a1) + (a2 + a3))
            into[r] = assign ? sum : into[r] + sum
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
        var fwd = 0
        var bd = 0
        var bw = 0
        var parts = 1
        var grads = 1
        switch kernel {
        case 3:
            plans3 = ConvPass.allCases.map { pass in
                let path = Self.resolvedCK(path, inChannels: inChannels, outChannels: outChannels, dims: d, pass: pass)
                return Self.partition(
                    pass: pass, path: path, cin: inChannels, cout: outChannels, d: d, threads: threads, samples: n)
            }
            grads = plans3[2].samples * plans3[2].zs.count
        case 2:
            // Column scratch per thread: the widest tile (capped by rowsPerTile) of the input channels an item
            // gathers (all of them forward, its block's backward).
            let od = outputDims(d)
            let rt = rowsPerTile(od)
            func floats(_ p: GemmPartition, channels: [Range<Int>]) -> Int {
                8 * (channels.map(\.count).max() ?? 0) * min(rt, p.tiles.map(\.count).max() ?? 0) * od.x
            }
            let f = gemmPartition(.forward, n: n, d: d)
            let b = gemmPartition(.backwardData, n: n, d: d)
            let w = gemmPartition(.backwardWeights, n: n, d: d)
            (fwd, bd, bw) = (
                floats(f, channels: [0..<inChannels]), floats(b, channels: b.blocks), floats(w, channels: w.columns)
            )
            parts = min(threads, max(f.items, b.items, w.items))
            grads = w.tiles.count > 1 ? w.tiles.count + 1 : 1
        default:
            let tiles = gemmPartition(.backwardWeights, n: n, d: d).tiles.count
            grads = tiles > 1 ? tiles + 1 : 1
        }
        scratchFloats = (fwd, bd, bw, parts)
        privateGrads = (0..<max(0, grads - 1)).map { _ in ConvScratch(weight.count + outChannels) }
        privateGradPointers = privateGrads.map { UnsafePointer($0.pointer) }
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
