import CKernels
import Tensor
import XCTest

@testable import NN

/// Conv3d (3x3x3 on every CKernels path this CPU runs, 1x1x1, 2x2x2 stride 2) against naive double-precision loops,
/// finite differences, and single- vs multi-threaded runs (different partitions of the 3x3x3 passes).
final class ConvTests: XCTestCase {
    override func tearDown() {
        Parallelism.threads = 1
        super.tearDown()
    }

    // MARK: Fixtures

    struct Case {
        var n, cin, cout, z, y, x: Int
        var dims: Dim3 { Dim3(z: z, y: y, x: x) }
    }

    static let odd = Case(n: 2, cin: 3, cout: 5, z: 5, y: 6, x: 7)
    static let wide = Case(n: 1, cin: 2, cout: 3, z: 3, y: 4, x: 17)
    /// Shapes the direct kernels treat specially: one input channel, a single slice, channel counts that are not
    /// multiples of the 4- or 8-channel tiles, X of 3, 10 and 20 (planes not a multiple of the vector width), more
    /// than 32 input and output channels (the AVX2 forward / backward-data kernels work in blocks of 32 channels).
    static let edgeCases = [
        Case(n: 1, cin: 1, cout: 4, z: 2, y: 2, x: 3), Case(n: 1, cin: 9, cout: 2, z: 1, y: 3, x: 10),
        Case(n: 1, cin: 4, cout: 9, z: 3, y: 5, x: 20), Case(n: 2, cin: 12, cout: 4, z: 4, y: 6, x: 6),
        Case(n: 1, cin: 37, cout: 35, z: 2, y: 3, x: 5),
    ]

    /// A layer with random weights (and bias) in a fresh store, plus a random input.
    func make(_ c: Case, kernel: Int, bias: Bool, seed: UInt64 = 1) -> (Conv3d, ParameterStore, Tensor) {
        let store = ParameterStore()
        let conv = Conv3d(
            params: store, name: "conv", inChannels: c.cin, outChannels: c.cout, kernel: kernel, bias: bias)
        store.allocate()
        let w = GradCheck.random(conv.weight.count, seed: seed &+ 11, lo: -0.5, hi: 0.5)
        conv.weight.value.update(from: w, count: w.count)
        if let b = conv.bias {
            let bv = GradCheck.random(b.count, seed: seed &+ 12)
            b.value.update(from: bv, count: bv.count)
        }
        let x = Tensor([c.n, c.cin, c.z, c.y, c.x], GradCheck.random(c.n * c.cin * c.z * c.y * c.x, seed: seed &+ 13))
        return (conv, store, x)
    }

    // MARK: Naive references (Double)

    /// Generic strided conv: out[o] = b + Σ w * in[stride*o + k - pad]; also its adjoints.
    struct Naive {
        let c: Case, k: Int, stride: Int, pad: Int
        var od: Dim3 {
            Dim3(
                z: (c.z + 2 * pad - k) / stride + 1, y: (c.y + 2 * pad - k) / stride + 1,
                x: (c.x + 2 * pad - k) / stride + 1)
        }

        /// Calls body(inIndex, outIndex, weightIndex) for every (valid) multiply of the convolution.
        func forEachTap(_ body: (Int, Int, Int) -> Void) {
            let od = od
            let k3 = k * k * k
            for n in 0..<c.n {
                for co in 0..<c.cout {
                    for oz in 0..<od.z {
                        for oy in 0..<od.y {
                            for ox in 0..<od.x {
                                let o = (((n * c.cout + co) * od.z + oz) * od.y + oy) * od.x + ox
                                for ci in 0..<c.cin {
                                    for kz in 0..<k {
                                        for ky in 0..<k {
                                            for kx in 0..<k {
                                                let iz = oz * stride + kz - pad
                                                let iy = oy * stride + ky - pad
                                                let ix = ox * stride + kx - pad
                                                guard iz >= 0, iz < c.z, iy >= 0, iy < c.y, ix >= 0, ix < c.x else {
                                                    continue
                                                }
                                                let i = (((n * c.cin + ci) * c.z + iz) * c.y + iy) * c.x + ix
                                                let wi = (co * c.cin + ci) * k3 + (kz * k + ky) * k + kx
                                                body(i, o, wi)
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }

        func forward(x: [Float], w: [Float], b: [Float]?) -> [Double] {
            let vo = od.count
            var y = [Double](repeating: 0, count: c.n * c.cout * vo)
            if let b { for i in y.indices { y[i] = Double(b[(i / vo) % c.cout]) } }
            forEachTap { i, o, wi in y[o] += Double(w[wi]) * Double(x[i]) }
            return y
        }

        /// (dx, dW, db) for output gradient dy.
        func backward(x: [Float], w: [Float], dy: [Float]) -> ([Double], [Double], [Double]) {
            var dx = [Double](repeating: 0, count: x.count)
            var dw = [Double](repeating: 0, count: w.count)
            var db = [Double](repeating: 0, count: c.cout)
            forEachTap { i, o, wi in
                dx[i] += Double(w[wi]) * Double(dy[o])
                dw[wi] += Double(x[i]) * Double(dy[o])
            }
            let vo = od.count
            for o in dy.indices { db[(o / vo) % c.cout] += Double(dy[o]) }
            return (dx, dw, db)
        }
    }

    func assertClose(
        _ got: [Float], _ want: [Double], _ what: String, rel: Double = 2e-6,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertEqual(got.count, want.count, "\(what): count", file: file, line: line)
        let scale = max(want.map(abs).max() ?? 0, 1e-6)
        var worst = 0.0
        var at = 0
        for i in 0..<min(got.count, want.count) {
            let e = abs(Double(got[i]) - want[i]) / scale
            if e > worst {
                worst = e
                at = i
            }
        }
        XCTAssertLessThanOrEqual(
            worst, rel,
            "\(what): worst rel error at [\(at)] got \(got.isEmpty ? 0 : got[at]) want \(want.isEmpty ? 0 : want[at])",
            file: file, line: line)
    }

    /// Forward, then backward of dy, compared with the naive loops in full.
    func checkAgainstNaive(
        _ c: Case, kernel: Int, bias: Bool, path: ConvPath = .auto,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        let (conv, store, x) = make(c, kernel: kernel, bias: bias)
        conv.path = path
        let tag =
            kernel == 3
            ? "k3 \(conv.pathName(for: .forward, dims: c.dims)) \(c.cin)->\(c.cout) @\(c.dims)" : "k\(kernel)"
        let naive = Naive(c: c, k: kernel, stride: kernel == 2 ? 2 : 1, pad: kernel == 3 ? 1 : 0)
        let w = Array(UnsafeBufferPointer(start: conv.weight.value, count: conv.weight.count))
        let b = conv.bias.map { Array(UnsafeBufferPointer(start: $0.value, count: $0.count)) }
        let y = conv.forward(x)
        XCTAssertEqual(y.shape, [c.n, c.cout, naive.od.z, naive.od.y, naive.od.x], file: file, line: line)
        assertClose(y.array, naive.forward(x: x.array, w: w, b: b), "\(tag) forward", file: file, line: line)

        let dy = Tensor(y.shape, GradCheck.random(y.count, seed: 99))
        store.zeroGrads()
        let dx = conv.backward(dy)
        let (rdx, rdw, rdb) = naive.backward(x: x.array, w: w, dy: dy.array)
        XCTAssertEqual(dx.shape, x.shape, file: file, line: line)
        assertClose(dx.array, rdx, "\(tag) dx", file: file, line: line)
        assertClose(
            Array(UnsafeBufferPointer(start: conv.weight.grad, count: conv.weight.count)), rdw, "\(tag) dW",
            file: file, line: line)
        if let bias = conv.bias {
            assertClose(
                Array(UnsafeBufferPointer(start: bias.grad, count: bias.count)), rdb, "\(tag) db",
                file: file, line: line)
        }
    }

    // MARK: Forward / backward against the naive loops

    func testConv3EveryPathMatchesNaive() {
        XCTAssertTrue(Conv3d.availablePaths.contains(.gemm))
        for path in Conv3d.availablePaths {
            checkAgainstNaive(Self.odd, kernel: 3, bias: true, path: path)
            checkAgainstNaive(Self.wide, kernel: 3, bias: false, path: path)
            for c in Self.edgeCases { checkAgainstNaive(c, kernel: 3, bias: true, path: path) }
        }
        print(
            "conv 3x3x3 checked against naive loops on: \(Conv3d.availablePaths.map { Conv3d.pathName($0) }.joined(separator: ", "))"
        )
    }

    /// A path the CPU cannot run resolves to GEMM (CKernels' fallback); `.auto` and `.direct` resolve to an
    /// available path; names parse both ways.
    func testPathResolutionAndNames() throws {
        let available = Conv3d.availablePaths
        for path in ConvPath.allCases {
            for pass in ConvPass.allCases {
                let r = Conv3d.resolvedPath(path, inChannels: 3, outChannels: 5, dims: Self.odd.dims, pass: pass)
                XCTAssertTrue(available.contains(r), "\(path) resolves to \(r), not available here")
                if path != .auto && path != .direct {
                    XCTAssertEqual(r, path.isAvailable ? path : .gemm, "\(path) \(pass)")
                }
            }
            XCTAssertEqual(ConvPath(name: path.rawValue), path)
        }
        // Each Winograd build runs exactly where its ISA's direct kernels do.
        XCTAssertEqual(ConvPath.winogradAVX2.isAvailable, ConvPath.directAVX2.isAvailable)
        XCTAssertEqual(ConvPath.winogradAVX512.isAvailable, ConvPath.directAVX512.isAvailable)
        XCTAssertEqual(ConvPath(name: "im2col-sgemm"), .gemm)
        XCTAssertEqual(ConvPath(name: "Direct-AVX2"), .directAVX2)
        XCTAssertNil(ConvPath(name: "fast"))
        XCTAssertEqual(try Conv3d.parseEnvironmentPath("gemm"), .gemm)
        XCTAssertNil(try Conv3d.parseEnvironmentPath("auto"))
        XCTAssertThrowsError(try Conv3d.parseEnvironmentPath("fast")) { error in
            XCTAssertTrue(
                "\(error)".contains(
                    "ATTUNET_CONV_PATH=fast: unknown 3x3x3 convolution path; this CPU runs: auto, direct, gemm"),
                "\(error)")
        }
        XCTAssertEqual(Conv3d.hasDirectKernels, available.contains(.directAVX2) || available.contains(.directAVX512))
    }

    func testConv3AutoPathMatchesNaive() {
        checkAgainstNaive(Self.odd, kernel: 3, bias: true)
    }

    func testConv1MatchesNaive() {
        checkAgainstNaive(Self.odd, kernel: 1, bias: true)
        checkAgainstNaive(Self.wide, kernel: 1, bias: false)
    }

    func testConv2Stride2MatchesNaive() {
        // Odd extents (5, 7, 17): the trailing plane/row/column is dropped and gets zero gradient.
        checkAgainstNaive(Self.odd, kernel: 2, bias: false)
        checkAgainstNaive(Self.wide, kernel: 2, bias: false)
        checkAgainstNaive(Case(n: 2, cin: 3, cout: 4, z: 4, y: 6, x: 8), kernel: 2, bias: true)
    }

    // MARK: Finite differences

    func gradCheck(
        _ c: Case, kernel: Int, bias: Bool, path: ConvPath = .auto,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        let (conv, store, x) = make(c, kernel: kernel, bias: bias, seed: 5)
        conv.path = path
        let y = conv.forward(x)
        let r = GradCheck.random(y.count, seed: 77)
        let dy = Tensor(y.shape, r)
        store.zeroGrads()
        let dx = conv.backward(dy).array
        let dw = Array(UnsafeBufferPointer(start: conv.weight.grad, count: conv.weight.count))
        let loss = { GradCheck.dot(conv.forward(x).data, r) }
        let tag = kernel == 3 ? "k3 \(Conv3d.pathName(path))" : "k\(kernel)"
        GradCheck.check(
            "\(tag) dx", parameter: x.pointer, count: x.count, analytic: dx, relTol: 1e-3,
            loss: loss, file: file, line: line)
        GradCheck.check(
            "\(tag) dW", parameter: conv.weight.value, count: conv.weight.count, analytic: dw, relTol: 1e-3,
            loss: loss, file: file, line: line)
        if let b = conv.bias {
            let db = Array(UnsafeBufferPointer(start: b.grad, count: b.count))
            GradCheck.check(
                "\(tag) db", parameter: b.value, count: b.count, analytic: db, relTol: 1e-3,
                loss: loss, file: file, line: line)
        }
    }

    func testConv3GradCheck() {
        for path in Conv3d.availablePaths { gradCheck(Self.odd, kernel: 3, bias: true, path: path) }
    }

    func testConv1GradCheck() { gradCheck(Self.odd, kernel: 1, bias: true) }

    func testConv2GradCheck() { gradCheck(Self.odd, kernel: 2, bias: true) }

    // MARK: Threads, accumulation, reuse, first layer

    func testTwoThreadsEqualOneThread() {
        let conv3 = Conv3d.availablePaths.map { (3, $0) }
        for (kernel, path) in conv3 + [(1, ConvPath.auto), (2, .auto)] {
            // Large enough in V for the 1x1x1 split (V / 1024 >= 2).
            let c = kernel == 1 ? Case(n: 2, cin: 3, cout: 5, z: 4, y: 24, x: 24) : Self.odd
            let results = [1, 2].map { threads in runAll(c, kernel: kernel, path: path, threads: threads) }
            let scale = Double(results[0].map(abs).max()!)
            let worst = zip(results[0], results[1]).map { Double(abs($0 - $1)) }.max()!
            let tag = kernel == 3 ? Conv3d.pathName(path) : ""
            XCTAssertLessThanOrEqual(worst / scale, 1e-6, "kernel \(kernel) \(tag): 2 threads differ from 1")
        }
    }

    /// forward + backward (data and parameter gradients) of a fresh layer on `threads` threads, concatenated.
    func runAll(_ c: Case, kernel: Int, path: ConvPath, threads: Int) -> [Float] {
        Parallelism.threads = threads
        defer { Parallelism.threads = 1 }
        let (conv, store, x) = make(c, kernel: kernel, bias: true, seed: 3)
        conv.path = path
        let y = conv.forward(x).array
        let dy = Tensor(conv.forward(x).shape, GradCheck.random(y.count, seed: 4))
        store.zeroGrads()
        let dx = conv.backward(dy).array
        return y + dx + store.grads.array
    }

    /// The 3x3x3 passes cut into items (z-slab x channel range) differently for 1, 3 and 7 threads give the same
    /// results (within float rounding: backward-weights may add its z-parts in another grouping), on every path, for
    /// odd channel counts; and a partition covers every (z, channel) once, on channel-group boundaries.
    func testPartitionsAgree() {
        let cases = [
            Case(n: 1, cin: 5, cout: 7, z: 6, y: 5, x: 6), Case(n: 2, cin: 9, cout: 3, z: 3, y: 4, x: 10),
            Case(n: 1, cin: 1, cout: 4, z: 5, y: 3, x: 3),
        ]
        for path in Conv3d.availablePaths {
            for c in cases {
                let one = runAll(c, kernel: 3, path: path, threads: 1)
                for threads in [3, 7] {
                    let many = runAll(c, kernel: 3, path: path, threads: threads)
                    let scale = Double(one.map(abs).max()!)
                    let worst = zip(one, many).map { Double(abs($0 - $1)) }.max()!
                    XCTAssertLessThanOrEqual(
                        worst / scale, 1e-5,
                        "\(Conv3d.pathName(path)) \(c.cin)->\(c.cout) @\(c.dims): \(threads) threads differ from 1")
                }
                for pass in ConvPass.allCases {
                    let ck = Conv3d.resolvedCK(path, inChannels: c.cin, outChannels: c.cout, dims: c.dims, pass: pass)
                    let m = pass == .backwardData ? c.cin : c.cout
                    let group = Int(ck_conv3_channel_group(ck, pass.ck))
                    let winograd = ck == CK_PATH_WINOGRAD_AVX2 || ck == CK_PATH_WINOGRAD_AVX512
                    for threads in [1, 2, 3, 16] {
                        let p = Conv3d.partition(
                            pass: pass, path: ck, cin: c.cin, cout: c.cout, d: c.dims, threads: threads, samples: 2)
                        let what = "\(Conv3d.pathName(path)) \(pass) \(c.cin)->\(c.cout) @\(c.dims) threads \(threads)"
                        XCTAssertEqual(p.zs.flatMap { Array($0) }, Array(0..<c.z), what)
                        XCTAssertEqual(p.ms.flatMap { Array($0) }, Array(0..<m), what)
                        XCTAssertTrue(p.ms.allSatisfy { group == 0 || $0.lowerBound % group == 0 }, what)
                        XCTAssertLessThanOrEqual(p.parts, threads, what)
                        // Samples are items of their own (backward-weights: each (sample, z-part) with its own dW).
                        XCTAssertEqual(p.samples, 2, what)
                        let cells = (0..<p.items).map { i -> [Int] in
                            let (s, z, m) = p.item(i)
                            return [s, z, m]
                        }
                        XCTAssertEqual(Set(cells).count, p.items, what)
                        XCTAssertTrue(
                            cells.allSatisfy { $0[0] < p.samples && $0[1] < p.zs.count && $0[2] < p.ms.count }, what)
                        if threads == 1 { XCTAssertEqual(p.items, p.samples, what) }
                        // Direct and GEMM backward-weights cut the channel groups first (disjoint dW rows).
                        if pass == .backwardWeights && !winograd && threads > 1 {
                            XCTAssertEqual(p.ms.count, min(group > 0 ? (m + group - 1) / group : 1, 4 * threads), what)
                        }
                        if pass == .backwardWeights && p.zs.count > 1 {
                            XCTAssertLessThanOrEqual(
                                p.samples * p.zs.count * c.cin * c.cout * 27, Conv3d.privateWeightFloats3, what)
                        }
                    }
                }
            }
        }
    }

    // MARK: 1x1x1 and 2x2x2 partitions

    /// Winograd backward-weights weighs each item's fixed cost (its transformed gradient and private dW) against
    /// the threads it keeps busy: a small layer gets one or two items per thread, not four (cut into four, it ran
    /// slower on 2 threads than on 1), while the paper's full-resolution layer still gives every one of 32 threads
    /// the same number of items.
    func testWinogradWeightSplitWeighsTheItemsFixedCost() {
        for path in [CK_PATH_WINOGRAD_AVX2, CK_PATH_WINOGRAD_AVX512] {
            func split(_ cin: Int, _ cout: Int, _ d: Dim3, threads: Int, samples: Int) -> Conv3d.PassPartition {
                Conv3d.partition(
                    pass: .backwardWeights, path: path, cin: cin, cout: cout, d: d, threads: threads,
                    samples: samples)
            }
            let small = Dim3(z: 12, y: 24, x: 24)
            // 192->64 at 24x24x12 (the paper's model on the main job's 96x96x48 patch, third level).
            XCTAssertEqual(split(192, 64, small, threads: 2, samples: 1).items, 2)
            XCTAssertLessThanOrEqual(split(192, 64, small, threads: 2, samples: 2).items, 4)
            // 16->16 at 160x160x96 on 32 threads, batch 2: every thread has an item, none waits a second round.
            let full = split(16, 16, Dim3(z: 96, y: 160, x: 160), threads: 32, samples: 2)
            XCTAssertGreaterThanOrEqual(full.items, 32)
            XCTAssertEqual(full.items % 32, 0, "\(full.items) items leave threads idle in the last round")
            XCTAssertEqual(full.parts, 32)
        }
    }

    /// Shapes whose 1x1x1 and 2x2x2 passes are cut into several samples, tiles, channel blocks and (backward-weights)
    /// private dW tiles: more than 16 channels, a channel count that is not a multiple of the blocks, odd extents,
    /// a voxel count that is not a multiple of the 16-voxel tile alignment.
    static let gemmCases = [
        Case(n: 2, cin: 32, cout: 33, z: 6, y: 10, x: 10), Case(n: 2, cin: 17, cout: 32, z: 9, y: 12, x: 14),
        // Fewer than 16 channels: the 1x1x1 backward passes run the direct AVX2 kernels where the CPU has AVX2.
        Case(n: 2, cin: 12, cout: 5, z: 9, y: 12, x: 13),
    ]

    func testGemmPartitionsCoverTheWorkOnceFromTheShapeAlone() {
        var multiTile: [Int: Bool] = [1: false, 2: false]
        for kernel in [1, 2] {
            for c in Self.gemmCases {
                let od = kernel == 2 ? c.dims.divided(by: 2) : c.dims
                let units = kernel == 2 ? od.z * od.y : c.dims.count
                for pass in ConvPass.allCases {
                    let p = Conv3d.gemmPartition(
                        pass: pass, kernel: kernel, n: c.n, cin: c.cin, cout: c.cout, units: units,
                        unitVoxels: kernel == 2 ? od.x : 1)
                    let what = "k\(kernel) \(pass) \(c.cin)->\(c.cout) @\(c.dims)"
                    XCTAssertEqual(p.tiles.flatMap { Array($0) }, Array(0..<units), what)
                    XCTAssertEqual(
                        p.blocks.flatMap { Array($0) }, Array(0..<(pass == .backwardData ? c.cin : c.cout)), what)
                    XCTAssertEqual(p.columns.flatMap { Array($0) }, Array(0..<c.cin), what)
                    XCTAssertEqual(p.samples, pass == .backwardWeights ? 1 : c.n, what)
                    if kernel == 1 { XCTAssertTrue(p.tiles.allSatisfy { $0.lowerBound % 16 == 0 }, what) }
                    XCTAssertGreaterThan(p.items, 1, what)
                    XCTAssertLessThanOrEqual(p.items, WorkSplit.targetItems, what)
                    let cells = Set(
                        (0..<p.items).map { i -> [Int] in
                            let (s, t, b, col) = p.item(i)
                            return [s, t, b, col]
                        })
                    XCTAssertEqual(cells.count, p.items, what)
                    if pass == .backwardWeights {
                        multiTile[kernel, default: false] = multiTile[kernel]! || p.tiles.count > 1
                    }
                }
            }
        }
        XCTAssertEqual(multiTile, [1: true, 2: true], "private dW per tile exercised by the cases")
        // The paper's 10x10x6 bottleneck (batch 2): the 256-channel gating conv and the coarsest gate's theta
        // (2x2x2, 128 channels from 20x20x12) give every one of 32 threads 4 items in every pass.
        for pass in ConvPass.allCases {
            let gating = Conv3d.gemmPartition(
                pass: pass, kernel: 1, n: 2, cin: 256, cout: 256, units: 600, unitVoxels: 1)
            XCTAssertGreaterThanOrEqual(gating.items, 4 * 32, "gating \(pass)")
            let theta = Conv3d.gemmPartition(
                pass: pass, kernel: 2, n: 2, cin: 128, cout: 128, units: 60, unitVoxels: 10)
            XCTAssertGreaterThanOrEqual(theta.items, 4 * 32, "theta \(pass)")
        }
    }

    /// The 1x1x1 and 2x2x2 passes give the same bits on 1, 2, 3 and 7 threads (their partitions do not depend on the
    /// thread count), and match the naive loops on 7.
    func testGemmPassesAreBitIdenticalOnAnyThreadCount() {
        for kernel in [1, 2] {
            for c in Self.gemmCases {
                let one = runAll(c, kernel: kernel, path: .auto, threads: 1)
                for threads in [2, 3, 7] {
                    XCTAssertEqual(
                        runAll(c, kernel: kernel, path: .auto, threads: threads), one,
                        "k\(kernel) \(c.cin)->\(c.cout) @\(c.dims): \(threads) threads differ from 1")
                }
                Parallelism.threads = 7
                checkAgainstNaive(c, kernel: kernel, bias: true)
                Parallelism.threads = 1
            }
        }
    }

    func testBackwardAccumulatesAndRecyclesBuffers() {
        let (conv, store, x) = make(Self.odd, kernel: 3, bias: true)
        let y1 = conv.forward(x)
        let y2 = conv.forward(x)
        XCTAssertTrue(y1 === y2, "output must be reused while the shape is unchanged")
        let dy = Tensor(y1.shape, GradCheck.random(y1.count, seed: 8))
        store.zeroGrads()
        var dx1: Tensor? = conv.backward(dy)
        let first = (dx1!.pointer, dx1!.array)
        let once = store.grads.array
        XCTAssertGreaterThan(once.map(abs).max()!, 0)
        dx1 = nil  // the caller is done with it: its buffer goes back to the pool
        let dx2 = conv.backward(dy)
        XCTAssertEqual(dx2.pointer, first.0, "the input gradient's buffer must be recycled once the caller drops it")
        XCTAssertEqual(dx2.array, first.1, "a recycled buffer must be overwritten in full")
        for (a, b) in zip(once, store.grads.array) { XCTAssertEqual(2 * a, b, accuracy: 1e-5 * max(1, abs(b))) }

        // A new shape gets a new output.
        let x2 = Tensor([1, 3, 4, 4, 4], GradCheck.random(192, seed: 9))
        XCTAssertEqual(conv.forward(x2).shape, [1, 5, 4, 4, 4])
    }

    func testFirstLayerSkipsInputGradient() {
        let (conv, store, x) = make(Self.odd, kernel: 3, bias: true)
        let (ref, refStore, _) = make(Self.odd, kernel: 3, bias: true)
        conv.needsInputGradient = false
        let y = conv.forward(x)
        _ = ref.forward(x)
        let dy = Tensor(y.shape, GradCheck.random(y.count, seed: 8))
        store.zeroGrads()
        refStore.zeroGrads()
        XCTAssertEqual(conv.backward(dy).count, 0)
        XCTAssertEqual(ref.backward(dy).count, x.count)
        XCTAssertEqual(store.grads.array, refStore.grads.array)
    }

    func testSplitBackwardEqualsBackward() {
        for kernel in [3, 1, 2] {
            let (conv, store, x) = make(Self.odd, kernel: kernel, bias: true)
            let y = conv.forward(x)
            let dy = Tensor(y.shape, GradCheck.random(y.count, seed: 8))
            store.zeroGrads()
            let dx = conv.backward(dy).array
            let grads = store.grads.array
            store.zeroGrads()
            XCTAssertEqual(conv.backwardData(dy).array, dx, "kernel \(kernel)")
            XCTAssertEqual(store.grads.array.map(abs).max(), 0, "backwardData must not touch parameter gradients")
            conv.backwardWeights(dy)
            XCTAssertEqual(store.grads.array, grads, "kernel \(kernel)")
        }
    }

    func testRegistersPyTorchNamesAndShapes() {
        let store = ParameterStore()
        _ = Conv3d(params: store, name: "conv1.conv1.0", inChannels: 1, outChannels: 16, kernel: 3, bias: true)
        _ = Conv3d(params: store, name: "gate.theta", inChannels: 16, outChannels: 8, kernel: 2, bias: false)
        XCTAssertEqual(store.entries.map(\.name), ["conv1.conv1.0.weight", "conv1.conv1.0.bias", "gate.theta.weight"])
        XCTAssertEqual(store.entries.map(\.shape), [[16, 1, 3, 3, 3], [16], [8, 16, 2, 2, 2]])
        XCTAssertFalse(Conv3d.pathName(.gemm).isEmpty)
    }
}
