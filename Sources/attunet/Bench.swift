import ArgumentParser
import Foundation
import NN
import Support
import Tensor

/// `attunet bench`: speed measurements of the building blocks on this machine.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure how fast the network's building blocks run on this machine.",
        discussion: """
            bench layers times each building block alone, in one process, on one thread by default (--threads for more; OpenBLAS's threads stay at 1): a rank of one core gets the single-core rate. bench train times whole training steps as attunet train runs them, in one process or on every rank under mpirun. bench components times 3D connected components and the postprocessing built on them (keep the largest, remove small islands) on a CT-sized label map, with the memory they take beyond the map.

            Run them on an otherwise idle machine; another busy process on the same cores makes every figure low. Build in release mode first (swift build -c release); a debug build is 10-100x slower.
            """,
        subcommands: [Layers.self, Train.self, ComponentsBench.self]
    )
}

extension Bench {
    /// `attunet bench layers`: every 3x3x3 convolution shape of the paper's model, and BatchNorm.
    struct Layers: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Time each 3x3x3 convolution of the model and the memory-bound layers.",
            discussion: """
                The shapes are those of the paper's model on a 160x160x96 (X x Y x Z) input patch, batch 1 (--feature-scale and --patch choose another model): the encoder/decoder convs at 160x160x96, 80x80x48, 40x40x24, 20x20x12 and 10x10x6, including the decoder convs that read a concatenation (48->16, 96->32, 192->64, 384->128). Each is timed forward, backward-data and backward-weights.

                For each layer and pass it prints the rate in GFLOP/s, counted as 2*Cin*Cout*27*voxels per pass (the same count for forward, backward-data and backward-weights), and the kernel path each pass ran (by default the automatic choice training uses: the direct kernels of the widest ISA the CPU runs, AVX-512 or AVX2 + FMA, else im2col + sgemm; ATTUNET_CONV_PATH in the environment overrides it as in training). --path forces one path for every layer to compare them: gemm (im2col + OpenBLAS sgemm), direct-avx2, direct-avx512, or direct (the widest direct ISA this CPU runs); a path the CPU cannot run falls back to gemm, and the table says so per pass. "eff" is each rate divided by the OpenBLAS sgemm rate on 1024x1024x1024 measured in the same run (before and after the layers; the better one): the practical single-core ceiling. An efficiency near or above 100% means the conv runs as fast as the best dense matrix product this core can do. The "all" row is total FLOP over total time, i.e. FLOP-weighted. The first layer (1->16) never runs backward-data in training (there is no input gradient to compute); it is timed for completeness.

                BatchNorm, ReLU, MaxPool, Trilinear, Concat and GateMultiply are memory-bound, so they are reported in GB/s of tensor traffic (bytes a pass must read and write at least; BatchNorm forward reads x twice, for the statistics and to normalise, and backward reads dy and x twice), at the paper's full-resolution sizes. One core reaches about 14-20 GB/s.

                --threads T spreads every layer over T threads of one rank (OpenBLAS stays single-threaded, as in training); compare runs at 1 and T threads side by side for the thread scaling of each layer. --work-items T times nothing: it prints, per kind of layer, how many work items one training step of the model (--feature-scale, --patch, --batch) is cut into at T threads, per thread, counted from the partitions the layers use (any T, on any machine). About 4 per thread or more keeps every thread busy; a layer with less has little work (a one-channel attention map at the coarsest level).

                  attunet bench layers --threads 2
                  attunet bench layers --work-items 32

                Each pass runs once to warm up (first touch of the buffers), then the best of several timed runs is kept (--quick: a single timed run). A full run takes about a minute in a release build.

                OpenBLAS picks its kernel when the library loads. On CPUs it does not recognise it falls back to a slow SSE kernel ('Prescott'), which makes the gemm path and the sgemm reference 3-5x slower: set OPENBLAS_CORETYPE=SkylakeX (AVX-512) or Haswell (AVX2) in the environment before starting, only where OpenBLAS does not recognise the CPU by itself (the output says when). Figures meant for comparison are taken with
                  OPENBLAS_CORETYPE=SkylakeX OPENBLAS_NUM_THREADS=1 attunet bench layers

                Exit status:
                  0   done
                  1   an error, one line each on stderr
                  64  bad command line
                """
        )

        @Flag(help: "Print one JSON object instead of the table.")
        var json = false

        @Flag(help: "One timed run per pass after the warm-up instead of the best of several (faster, noisier).")
        var quick = false

        @Option(
            help:
                "3x3x3 kernel path for every layer: auto (what training uses), gemm, direct (the widest direct ISA this CPU runs), direct-avx2 or direct-avx512."
        )
        var path: ConvPath = .auto

        @Option(help: "Only the conv layers whose name contains this text, e.g. '48->16' or '@80x80'.")
        var only: String?

        @Option(
            help: "Feature scale of the model whose conv layers are timed (4: the paper's 16..256 channels; 16: 4..64)."
        )
        var featureScale: Double = 4

        @Option(help: "Input patch X x Y x Z of the model whose conv layers are timed, e.g. 48x48x32.")
        var patch = Dim3(z: 96, y: 160, x: 160)

        @Flag(name: .customLong("no-memory-bound"), help: "Skip the memory-bound layers (BatchNorm, ReLU, ...).")
        var noMemoryBound = false

        @Option(
            help:
                "Threads of attunet's loops for every layer (OpenBLAS stays at one thread; the sgemm reference is one thread's, so above 1 thread an efficiency above 100% is possible)."
        )
        var threads = 1

        @Option(
            name: .customLong("work-items"),
            help: ArgumentHelp(
                "Instead of timing, print how many work items every kind of layer cuts a training step of the model into at this many threads, per thread (counted from the partitions, nothing run: any count works on any machine).",
                valueName: "threads"))
        var workItems: Int?

        @Option(help: "Batch of the --work-items report (the paper's 2).")
        var batch = 2

        func validate() throws {
            guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
            guard (workItems ?? 1) >= 1 else { throw ValidationError("--work-items must be at least 1") }
            guard batch >= 1 else { throw ValidationError("--batch must be at least 1") }
        }

        func run() throws {
            if let workItems {
                let report = try WorkItemsReport.measure(
                    config: ModelConfig(kind: .attentionUNet, featureScale: featureScale), patch: patch, batch: batch,
                    threads: workItems)
                print(json ? String(decoding: try JSONFiles.data(report), as: UTF8.self) : report.table())
                return
            }
            let started = DispatchTime.now().uptimeNanoseconds
            Parallelism.threads = threads
            BLASInfo.setThreads(1)
            let cpu = CPUInfo.current
            let env = ProcessInfo.processInfo.environment
            var notes: [String] = []
            if env["OPENBLAS_CORETYPE"] == nil && BLASInfo.slowCores.contains(BLASInfo.coreName)
                && (cpu.hasAVX512F || cpu.hasAVX2)
            {
                let fix = cpu.hasAVX512F ? "SkylakeX" : "Haswell"
                notes.append(
                    "OpenBLAS runs its slow '\(BLASInfo.coreName)' kernel on a CPU with \(cpu.hasAVX512F ? "AVX-512" : "AVX2"): rerun with OPENBLAS_CORETYPE=\(fix) in the environment (OpenBLAS reads it only at load time)"
                )
            }
            if !Conv3d.hasDirectKernels {
                notes.append(
                    "this CPU runs neither direct kernel (AVX2 + FMA, AVX-512): every 3x3x3 pass uses im2col + sgemm")
            }
            if path == .auto, let forced = Conv3d.environmentPath {
                notes.append("\(Conv3d.pathVariable)=\(forced.rawValue) forces the path of --path auto")
            }
            let reps = quick ? 1 : 3
            let log: (String) -> Void = { line in
                if !json { FileHandle.standardError.write((line + "\n").data(using: .utf8)!) }
            }
            log("measuring sgemm 1024^3 ...")
            let sgemmStart = BLASInfo.sgemmRate(n: 1024, reps: quick ? 2 : 5)

            // Measured again after the layers and the better figure kept: on a shared machine a busy moment
            // at the start would otherwise inflate every efficiency.
            var sgemmRate = sgemmStart
            let shapes = Self.shapes(featureScale: featureScale, patch: patch).filter {
                only == nil || $0.name.contains(only!)
            }
            var convs: [ConvResult] = []
            for s in shapes {
                log("measuring conv \(s.name) ...")
                convs.append(Self.measure(s, reps: reps, path: path))
            }
            let sgemmEnd = BLASInfo.sgemmRate(n: 1024, reps: quick ? 2 : 5)
            sgemmRate = max(sgemmStart, sgemmEnd)
            for i in convs.indices { convs[i].setEfficiency(sgemm: sgemmRate) }
            log("measuring BatchNorm, ReLU, MaxPool, Trilinear, Concat, GateMultiply ...")
            let memoryBound = noMemoryBound ? [] : Self.measureMemoryBound(reps: reps)
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9

            let report = Report(
                cpu: cpu.modelName, avx512: cpu.hasAVX512F, directKernels: Conv3d.hasDirectKernels,
                availablePaths: Conv3d.availablePaths.map(\.rawValue),
                openblasCore: BLASInfo.coreName, openblasCoretypeEnv: env["OPENBLAS_CORETYPE"],
                openblasThreads: BLASInfo.threads, threads: Parallelism.threads, path: path.rawValue, quick: quick,
                sgemm1024GFlops: sgemmRate, sgemm1024StartEnd: [sgemmStart, sgemmEnd], convs: convs,
                all: Self.total(convs, sgemm: sgemmRate), memoryBound: memoryBound,
                seconds: seconds, notes: notes)
            if json {
                print(String(decoding: try JSONFiles.data(report), as: UTF8.self))
            } else {
                Self.printTable(report)
            }
        }

        // MARK: Shapes

        struct Shape {
            var cin, cout: Int
            var dims: Dim3
            var name: String { "\(cin)->\(cout) @\(dims)" }
            var gflop: Double { 2 * Double(cin * cout * 27 * dims.count) / 1e9 }
        }

        /// The distinct 3x3x3 conv shapes of the Attention U-Net (by default the paper's: feature scale 4, i.e. 16, 32,
        /// 64, 128, 256 channels, on a 160x160x96 patch), as the model itself reports them, largest extent first.
        static func shapes(featureScale: Double = 4, patch: Dim3 = Dim3(z: 96, y: 160, x: 160)) -> [Shape] {
            let model = SegmentationModel(ModelConfig(kind: .attentionUNet, featureScale: featureScale))
            var seen = Set<[Int]>()
            var out: [Shape] = []
            for c in model.convolutions3x3(patch: patch)
            where seen.insert([c.inChannels, c.outChannels, c.dims.count]).inserted {
                out.append(Shape(cin: c.inChannels, cout: c.outChannels, dims: c.dims))
            }
            return out.enumerated().sorted { ($1.element.dims.count, $0.offset) < ($0.element.dims.count, $1.offset) }
                .map(\.element)
        }

        // MARK: Results

        struct PassResult: Codable {
            var seconds: Double, gflops: Double, path: String, efficiency: Double
        }

        struct ConvResult: Codable {
            var name: String, cin: Int, cout: Int, x: Int, y: Int, z: Int, gflop: Double
            var forward: PassResult, backwardData: PassResult, backwardWeights: PassResult

            mutating func setEfficiency(sgemm: Double) {
                forward.efficiency = forward.gflops / sgemm
                backwardData.efficiency = backwardData.gflops / sgemm
                backwardWeights.efficiency = backwardWeights.gflops / sgemm
            }
        }

        /// A memory-bound layer: GB/s = bytes read + written by one pass / its time.
        struct MemoryBoundResult: Codable {
            var name: String
            var forwardSeconds: Double, forwardGBs: Double, backwardSeconds: Double, backwardGBs: Double
        }

        struct Report: Codable {
            var cpu: String, avx512: Bool, directKernels: Bool
            /// The concrete 3x3x3 paths this CPU runs.
            var availablePaths: [String]
            var openblasCore: String, openblasCoretypeEnv: String?, openblasThreads: Int, threads: Int, path: String,
                quick: Bool
            /// The better of the two measurements (before and after the layers) is the reference.
            var sgemm1024GFlops: Double
            var sgemm1024StartEnd: [Double]
            var convs: [ConvResult]
            var all: ConvResult?
            var memoryBound: [MemoryBoundResult]
            var seconds: Double
            var notes: [String]
        }

        // MARK: Measurement

        static func measure(_ s: Shape, reps: Int, path: ConvPath) -> ConvResult {
            let store = ParameterStore()
            let conv = Conv3d(
                params: store, name: "conv", inChannels: s.cin, outChannels: s.cout, kernel: 3, bias: true)
            conv.path = path
            store.allocate()
            Tensor.fillDeterministic(
                conv.weight.value, count: conv.weight.count, seed: 3, scale: (6 / Float(27 * s.cin)).squareRoot())
            let x = Tensor([1, s.cin, s.dims.z, s.dims.y, s.dims.x])
            Tensor.fillDeterministic(x.pointer, count: x.count, seed: 4, scale: 1)
            let y = conv.forward(x)
            let dy = Tensor(y.shape)
            Tensor.fillDeterministic(dy.pointer, count: dy.count, seed: 5, scale: 1)
            // Big layers need fewer repetitions for a stable best-of.
            let r = s.gflop > 20 ? min(reps, 2) : reps
            let tf = bestTime(of: r) { _ = conv.forward(x) }
            let td = bestTime(of: r) { _ = conv.backwardData(dy) }
            let tw = bestTime(of: r) { conv.backwardWeights(dy) }
            func pass(_ t: Double, _ p: ConvPass) -> PassResult {
                let rate = s.gflop / t
                return PassResult(seconds: t, gflops: rate, path: conv.pathName(for: p, dims: s.dims), efficiency: 0)
            }
            return ConvResult(
                name: s.name, cin: s.cin, cout: s.cout, x: s.dims.x, y: s.dims.y, z: s.dims.z, gflop: s.gflop,
                forward: pass(tf, .forward), backwardData: pass(td, .backwardData),
                backwardWeights: pass(tw, .backwardWeights))
        }

        /// FLOP-weighted totals over all measured layers.
        static func total(_ r: [ConvResult], sgemm: Double) -> ConvResult? {
            guard !r.isEmpty else { return nil }
            let gflop = r.reduce(0) { $0 + $1.gflop }
            func agg(_ k: KeyPath<ConvResult, PassResult>) -> PassResult {
                let t = r.reduce(0) { $0 + $1[keyPath: k].seconds }
                let paths = Set(r.map { $0[keyPath: k].path })
                return PassResult(
                    seconds: t, gflops: gflop / t, path: paths.count == 1 ? paths.first! : "mixed",
                    efficiency: gflop / t / sgemm)
            }
            return ConvResult(
                name: "all", cin: 0, cout: 0, x: 0, y: 0, z: 0, gflop: gflop, forward: agg(\.forward),
                backwardData: agg(\.backwardData), backwardWeights: agg(\.backwardWeights))
        }

        /// The non-GEMM layers at the model's full-resolution sizes (batch 1): BatchNorm (train) and ReLU on
        /// 16ch 160x160x96, MaxPool 16ch 160x160x96, Trilinear x2 32ch 80x80x48 -> 160x160x96 (up_concat1),
        /// Concat 16+32ch at 160x160x96, GateMultiply 32ch 80x80x48 by a 1-channel map.
        static func measureMemoryBound(reps: Int) -> [MemoryBoundResult] {
            let full = Dim3(z: 96, y: 160, x: 160)
            let half = Dim3(z: 48, y: 80, x: 80)
            func tensor(_ c: Int, _ d: Dim3, seed: UInt64) -> Tensor {
                let t = Tensor([1, c, d.z, d.y, d.x])
                Tensor.fillDeterministic(t.pointer, count: t.count, seed: seed, scale: 2)
                return t
            }
            func result(_ name: String, fwdBytes: Int, bwdBytes: Int, _ fwd: () -> Void, _ bwd: () -> Void)
                -> MemoryBoundResult
            {
                let tf = bestTime(of: reps, fwd)
                let tb = bestTime(of: reps, bwd)
                return MemoryBoundResult(
                    name: name, forwardSeconds: tf, forwardGBs: Double(fwdBytes) / tf / 1e9,
                    backwardSeconds: tb, backwardGBs: Double(bwdBytes) / tb / 1e9)
            }
            var out: [MemoryBoundResult] = []
            let x16 = tensor(16, full, seed: 6)
            let dy16 = tensor(16, full, seed: 7)
            let n16 = x16.count * 4
            do {
                let params = ParameterStore()
                let buffers = ParameterStore()
                let bn = BatchNorm3d(params: params, buffers: buffers, name: "bn", channels: 16)
                params.allocate()
                buffers.allocate()
                bn.resetParameters()
                // forward: read x twice (statistics, normalise), write y; backward: read dy, x̂ twice, write dx.
                out.append(
                    result(
                        "BatchNorm3d 16ch @160x160x96", fwdBytes: 3 * n16, bwdBytes: 5 * n16,
                        { _ = bn.forward(x16) }, { _ = bn.backward(dy16) }))
            }
            let relu = ReLU()
            out.append(
                result(
                    "ReLU 16ch @160x160x96", fwdBytes: 2 * n16, bwdBytes: 3 * n16,
                    { _ = relu.forward(x16) }, { _ = relu.backward(dy16) }))
            let pool = MaxPool3d()
            let dyPool = tensor(16, half, seed: 8)
            out.append(
                result(
                    "MaxPool3d 16ch @160x160x96", fwdBytes: n16 + n16 / 8 + n16 / 32,
                    bwdBytes: n16 + n16 / 8 + n16 / 32,
                    { _ = pool.forward(x16) }, { _ = pool.backward(dyPool) }))
            let up = Trilinear(factor: 2, alignCorners: false)
            let x32h = tensor(32, half, seed: 9)
            let dy32 = tensor(32, full, seed: 10)
            let n32h = x32h.count * 4
            out.append(
                result(
                    "Trilinear x2 32ch 80x80x48->160x160x96", fwdBytes: n32h * 9, bwdBytes: n32h * 9,
                    { _ = up.forward(x32h) }, { _ = up.backward(dy32) }))
            let cat = Concat()
            let dyCat = tensor(48, full, seed: 11)
            out.append(
                result(
                    "Concat 16+32ch @160x160x96", fwdBytes: 2 * 48 * full.count * 4, bwdBytes: 2 * 48 * full.count * 4,
                    { _ = cat.forward(x16, dy32) }, { _ = cat.backward(dyCat) }))
            let gate = GateMultiply()
            let alpha = tensor(1, half, seed: 12)
            let dyGate = tensor(32, half, seed: 13)
            out.append(
                result(
                    "GateMultiply 32ch @80x80x48", fwdBytes: 2 * n32h + n32h / 32, bwdBytes: 3 * n32h + n32h / 32,
                    { _ = gate.forward(x: x32h, alpha: alpha) }, { _ = gate.backward(dyGate) }))
            return out
        }

        // MARK: Output

        static func pad(_ s: String, _ w: Int, left: Bool = false) -> String {
            let p = String(repeating: " ", count: max(0, w - s.count))
            return left ? s + p : p + s
        }

        static func short(_ path: String) -> String {
            switch path {
            case "direct-avx512": return "avx512"
            case "direct-avx2": return "avx2"
            case "im2col-sgemm": return "gemm"
            default: return path
            }
        }

        static func printTable(_ r: Report) {
            print(
                "attunet bench layers: 3x3x3 conv, batch 1, \(r.threads) thread(s), path \(r.path)\(r.quick ? " (--quick)" : "")"
            )
            print(
                "CPU \(r.cpu); AVX-512 \(r.avx512 ? "yes" : "no"); 3x3x3 paths this CPU runs: \(r.availablePaths.joined(separator: ", "))"
            )
            print(
                "OpenBLAS core \(r.openblasCore) (OPENBLAS_CORETYPE=\(r.openblasCoretypeEnv ?? "unset")), \(r.openblasThreads) thread(s); sgemm 1024^3: \(fmt(r.sgemm1024GFlops, 1)) GFLOP/s (before/after the layers: \(r.sgemm1024StartEnd.map { fmt($0, 1) }.joined(separator: " / ")))"
            )
            print("")
            let head =
                pad("layer", 24, left: true) + pad("GFLOP", 7) + " | " + pad("fwd GF/s", 15) + pad("bwd-data", 15)
                + pad("bwd-weights", 15) + " | " + pad("eff fwd / data / wts", 21)
            print(head)
            print(String(repeating: "-", count: head.count))
            func cell(_ p: PassResult) -> String { pad(fmt(p.gflops, 1), 7) + " " + pad(short(p.path), 7, left: true) }
            func row(_ c: ConvResult) {
                let eff = [c.forward, c.backwardData, c.backwardWeights].map {
                    pad(fmt(100 * $0.efficiency, 0) + "%", 5)
                }
                print(
                    pad(c.name, 24, left: true) + pad(fmt(c.gflop, 1), 7) + " | " + cell(c.forward)
                        + cell(c.backwardData)
                        + cell(c.backwardWeights) + " | " + pad(eff.joined(separator: " / "), 21))
            }
            r.convs.forEach(row)
            if let all = r.all {
                print(String(repeating: "-", count: head.count))
                row(all)
                print(
                    "  conv time for one pass of each layer: fwd \(fmt(all.forward.seconds, 2)) s, bwd-data \(fmt(all.backwardData.seconds, 2)) s, bwd-weights \(fmt(all.backwardWeights.seconds, 2)) s"
                )
            }
            print("")
            print(
                pad("memory-bound layer", 40, left: true) + pad("fwd GB/s", 10) + pad("ms", 8) + pad("bwd GB/s", 10)
                    + pad("ms", 8))
            for m in r.memoryBound {
                print(
                    pad(m.name, 40, left: true) + pad(fmt(m.forwardGBs, 1), 10) + pad(fmt(1e3 * m.forwardSeconds, 1), 8)
                        + pad(fmt(m.backwardGBs, 1), 10) + pad(fmt(1e3 * m.backwardSeconds, 1), 8))
            }
            print("total bench time \(fmt(r.seconds, 1)) s")
            for n in r.notes { print("note: \(n)") }
        }
    }
}
