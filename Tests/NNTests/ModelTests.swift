import Foundation
import HDF5Kit
import Tensor
import TestSupport
import XCTest

@testable import NN

final class ModelTests: XCTestCase {
    /// The released classes at feature_scale 4, 1 input channel, 4 classes (the paper's Table and the released code).
    func testParameterCountsMatchTheReleasedClasses() {
        XCTAssertEqual(SegmentationModel(ModelConfig(kind: .attentionUNet)).parameterCount, 6_473_322)
        XCTAssertEqual(SegmentationModel(ModelConfig(kind: .unet)).parameterCount, 5_888_004)
        // Per-module figures of the released classes (`Sources/NN/NN.docc/ModelGraph.md`).
        let m = SegmentationModel(ModelConfig(kind: .attentionUNet))
        func module(_ prefix: String) -> Int {
            m.params.entries.filter { $0.name.hasPrefix(prefix + ".") }.reduce(0) { $0 + $1.count }
        }
        XCTAssertEqual(module("conv1"), 7_440)
        XCTAssertEqual(module("center"), 2_655_744)
        XCTAssertEqual(module("gating"), 66_304)
        XCTAssertEqual(module("attentionblock4"), 394_882)
        XCTAssertEqual(module("attentionblock4.gate_block_1.theta"), 131_072)
        XCTAssertEqual(module("up_concat4"), 1_770_240)
        XCTAssertEqual(module("dsv4"), 516)
        XCTAssertEqual(module("final"), 68)
        // BN affine values and running buffers (mean, var, num_batches_tracked per BN).
        XCTAssertEqual(
            m.params.entries.filter { $0.name.contains(".1.weight") || $0.name.contains("W.1.weight") }
                .reduce(0) { $0 + $1.count } * 2, 4_800)
        XCTAssertEqual(m.buffers.count, 4_828)
    }

    /// The U-Net presets against the original `unet_CT_dsv_3D` at their feature scale, 4 classes: the counts
    /// `python Tests/Fixtures/make_fixtures.py --presets` prints with the PyTorch class (it also shows that
    /// feature scale 3 gives the only filter set whose count rounds to 10.40 M). A preset ignores the feature
    /// scale it is constructed with; `testCheckpointLoadsIntoPyTorch` loads each into the PyTorch class.
    func testPresetsMatchTheOriginalClass() {
        let capacity = SegmentationModel(ModelConfig(kind: .unetCapacityMatched, featureScale: 16))
        XCTAssertEqual(capacity.config.featureScale, 3.82)
        XCTAssertEqual(capacity.config.filters, [16, 33, 67, 134, 268])
        XCTAssertEqual(capacity.parameterCount, 6_444_328)
        let big = SegmentationModel(ModelConfig(kind: .unet10M))
        XCTAssertEqual(big.config.filters, [21, 42, 85, 170, 341])
        XCTAssertEqual(big.parameterCount, 10_403_190)
        XCTAssertEqual((Double(big.parameterCount) / 1e4).rounded() / 100, 10.40)
        XCTAssertFalse(
            capacity.params.entries.contains { $0.name.hasPrefix("attentionblock") || $0.name.hasPrefix("gating") })
    }

    /// As the trainer runs them: the first step recorded (`TensorPool.beginStep`) and the pool laid out for it
    /// after it (`settle`). From the second step on, every gradient and scratch buffer comes from the plan: no
    /// step allocates anything new, none takes a page fault (the settle wrote to every page the plan uses), and
    /// the pool's touched part is within 2% of the most that is live at once.
    func testTrainingStepsReachASteadyStateWithoutAllocating() {
        TensorPool.settle()
        TensorPool.trim()
        let model = SegmentationModel(ModelConfig(kind: .attentionUNet, featureScale: 16))
        let x = Tensor([2, 1, 16, 32, 32], (0..<32_768).map { Float(($0 * 7919) % 101) / 50 - 1 })
        let dLogits = Tensor([2, 4, 16, 32, 32], (0..<131_072).map { Float(($0 * 31) % 17) / 17 - 0.5 })
        var settled = 0
        var faults: [Int] = []
        for step in 0..<6 {
            if step == 0 { TensorPool.beginStep() }
            var before = rusage()
            getrusage(RUSAGE_SELF.rawValue, &before)
            model.params.zeroGrads()
            _ = try! model.forward(x)
            model.backward(dLogits)
            var after = rusage()
            getrusage(RUSAGE_SELF.rawValue, &after)
            faults.append(after.ru_minflt - before.ru_minflt)
            if step == 0 {
                TensorPool.settle()
                settled = TensorPool.freshAllocations
            }
        }
        XCTAssertEqual(TensorPool.freshAllocations, settled, "steps 2 to 6 allocated new buffers")
        // The first step after the settle may fault a page or two of malloc's (not the pool's); none after it.
        XCTAssertLessThanOrEqual(faults[1], 16, "page faults per step: \(faults)")
        XCTAssertEqual(Array(faults[2...]), [0, 0, 0, 0], "page faults per step: \(faults)")
        XCTAssertGreaterThan(TensorPool.cachedBytes, 0)
        XCTAssertLessThanOrEqual(TensorPool.touchedBytes, TensorPool.peakLiveBytes * 102 / 100)
    }

    /// A training step of the paper's model at the paper's patch (2 x 160x160x96), counted rather than run
    /// (`LoopCount.countOnly`: no page touched, under a second), as the trainer runs it: the first step recorded
    /// and the pool laid out for it. The layers free what they keep as the backward pass reads it (as PyTorch
    /// does), so between steps no activation is kept (only the parameters' buffers and the loss's gradient),
    /// and the backward pass adds little to the forward's peak: the first decoder level's gradients (16 + 48
    /// channels at full resolution) take the place of that level's activations, which are freed as it goes.
    /// The pool's plan needs no more than the peak of recycled tensors, where best fit left a quarter unused.
    func testPaperPatchStepFreesWhatItKeepsAndTheLayoutHasNoHoles() throws {
        TensorPool.settle()
        TensorPool.trim()
        let config = ModelConfig(kind: .attentionUNet, featureScale: 4)
        let (n, z, y, x) = (2, 96, 160, 160)
        let channel = 4 * n * z * y * x  // bytes of one channel at full resolution
        let model = SegmentationModel(config)
        let loss = SegmentationLoss(.dice)
        let labels = [UInt8](repeating: 0, count: n * z * y * x)
        var kept = 0
        var forwardPeak = 0
        try LoopCount.countOnly {
            let input = Tensor([n, 1, z, y, x])
            for step in 0..<3 {
                if step == 0 { TensorPool.beginStep() }
                if step == 2 {
                    kept = TensorMemory.liveBytes
                    TensorMemory.resetPeak()
                }
                let logits = try model.forward(input)
                _ = labels.withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0) }
                if step == 2 { forwardPeak = TensorMemory.peakBytes }
                model.backward(loss.gradient)
                if step == 0 { TensorPool.settle() }
            }
        }
        let peak = TensorMemory.peakBytes
        let mib = { (b: Int) in b >> 20 }
        let figures =
            "kept \(mib(kept)) MiB, forward peak \(mib(forwardPeak)), step peak \(mib(peak)); pool touched \(mib(TensorPool.touchedBytes)), peak live \(mib(TensorPool.peakLiveBytes))"
        // Between steps: the parameters and their gradients (2 x 26 MB), the loss's gradient (4 channels) and
        // the test's input (1); every activation is back in the pool.
        XCTAssertLessThanOrEqual(kept, 8 * channel, figures)
        XCTAssertGreaterThan(forwardPeak, 250 * channel, "the forward keeps its activations: \(figures)")
        XCTAssertLessThanOrEqual(peak - forwardPeak, 24 * channel, figures)
        XCTAssertLessThanOrEqual(TensorPool.touchedBytes, TensorPool.peakLiveBytes * 104 / 100, figures)
        TensorPool.trim()
    }

    /// Without gradients (prediction), a forward pass gives the same logits bit for bit, keeps no activation
    /// in the layers, and has at most three times the largest activation live at once, where a recording pass
    /// keeps every activation.
    func testForwardWithoutGradientsKeepsOnlyAFewActivations() throws {
        let model = SegmentationModel(ModelConfig(kind: .attentionUNet, featureScale: 16))
        model.training = false
        // The recorded pass (the reference) keeps its outputs in the layers' own buffers, not in the pool.
        model.freesKeptTensors = false
        let x = Tensor([1, 1, 16, 32, 32], (0..<16_384).map { Float(($0 * 7919) % 101) / 50 - 1 })
        let recorded = try model.forward(x).array
        TensorPool.settle()  // peak counted from here
        let free = try GradientMode.withoutGradients { try model.forward(x).array }
        XCTAssertEqual(free, recorded)
        // The largest activation: the head's concatenation of 4 x 4 class maps, [1, 16, 16, 32, 32]. Without
        // gradients it comes from the pool (so the peak is at least its size) and is freed with the rest.
        let largest = 4 * 16 * 16 * 32 * 32
        XCTAssertGreaterThanOrEqual(TensorPool.peakLiveBytes, largest, "layer outputs must be recycled tensors")
        XCTAssertLessThanOrEqual(TensorPool.peakLiveBytes, 3 * largest)
        XCTAssertTrue(GradientMode.isRecording, "recording resumes after the block")
        // The layers let go of their buffers: a second pass is served entirely from the pool.
        let fresh = TensorPool.freshAllocations
        _ = try GradientMode.withoutGradients { try model.forward(x) }
        XCTAssertEqual(TensorPool.freshAllocations, fresh)
    }

    func testNamesFollowTheOriginalStateDict() {
        let names = SegmentationModel(ModelConfig(kind: .attentionUNet, featureScale: 16)).params.entries.map(\.name)
        for n in [
            "conv1.conv1.0.weight", "conv1.conv1.1.bias", "conv1.conv2.0.bias", "gating.conv1.0.weight",
            "attentionblock2.gate_block_1.W.0.weight", "attentionblock2.gate_block_1.W.1.weight",
            "attentionblock2.gate_block_1.theta.weight", "attentionblock2.gate_block_2.psi.bias",
            "attentionblock4.combine_gates.0.weight", "attentionblock4.combine_gates.1.bias",
            "up_concat1.conv.conv2.1.weight", "dsv4.dsv.0.weight", "dsv1.bias", "final.weight",
        ] {
            XCTAssertTrue(names.contains(n), n)
        }
        XCTAssertFalse(names.contains("attentionblock2.gate_block_1.theta.bias"), "theta has no bias")
        XCTAssertEqual(names.first, "conv1.conv1.0.weight")
        XCTAssertEqual(names.last, "final.bias")
    }

    func testInitialisationIsSeededAndFollowsTheOriginal() {
        let a = SegmentationModel(ModelConfig(featureScale: 16), seed: 7)
        let b = SegmentationModel(ModelConfig(featureScale: 16), seed: 7)
        let c = SegmentationModel(ModelConfig(featureScale: 16), seed: 8)
        XCTAssertEqual(a.params.values.array, b.params.values.array)
        XCTAssertNotEqual(a.params.values.array, c.params.values.array)
        // center conv: Kaiming std sqrt(2 / (Cin * 27)) with Cin = 32 at feature scale 16.
        let w = a.center.c1.conv.weight
        let values = (0..<w.count).map { Double(w.value[$0]) }
        let std = (values.map { $0 * $0 }.reduce(0, +) / Double(values.count)).squareRoot()
        XCTAssertEqual(std, (2.0 / (32 * 27)).squareRoot(), accuracy: 0.03 * std)
        // BN weights N(1, 0.02), over every BN of the model (600 values at feature scale 16): the mean and the spread, so an
        // all-ones init (PyTorch's default, not the original's) fails.
        let gammas = a.params.entries.filter { $0.name.hasSuffix(".weight") && $0.shape.count == 1 }
            .flatMap { e in (e.offset..<(e.offset + e.count)).map { Double(a.params.values.data[$0]) } }
        XCTAssertGreaterThan(gammas.count, 500)
        let mean = gammas.reduce(0, +) / Double(gammas.count)
        let spread = (gammas.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(gammas.count)).squareRoot()
        XCTAssertEqual(mean, 1, accuracy: 0.003)
        XCTAssertEqual(spread, 0.02, accuracy: 0.002)
        XCTAssertEqual(a.center.c1.bn.bias.value[0], 0)
    }

    func testInputsNotDivisibleBy16AreRefusedAtTheEntrance() {
        let m = SegmentationModel(ModelConfig(featureScale: 16))
        XCTAssertThrowsError(try m.forward(Tensor([1, 1, 16, 24, 32]))) {
            XCTAssertTrue("\($0)".contains("32x24x16"), "\($0)")
            XCTAssertTrue("\($0)".contains("multiple of 16"), "\($0)")
        }
        XCTAssertThrowsError(try m.forward(Tensor([1, 2, 16, 16, 16])))
    }

    /// Save → load gives identical weights and buffers; another architecture and a truncated file are refused.
    func testCheckpointRoundTripAndRefusals() throws {
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent(
            "attunet-ckpt-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("c.h5").path
        let m = SegmentationModel(ModelConfig(featureScale: 16), seed: 3)
        for e in m.buffers.entries {
            // num_batches_tracked is an integer counter (int64 on disk); the statistics are arbitrary floats.
            for i in 0..<e.count {
                m.buffers.values.data[e.offset + i] =
                    e.name.hasSuffix("num_batches_tracked") ? 17 : Float(i % 13) * 0.25 + 1
            }
        }
        try Checkpoint.save(m, to: path)
        let back = try Checkpoint.load(path)
        XCTAssertEqual(back.config, m.config)
        XCTAssertTrue(back.params.values.array == m.params.values.array, "parameters differ after a round trip")
        XCTAssertTrue(back.buffers.values.array == m.buffers.values.array, "BN buffers differ after a round trip")
        // PyTorch axis order on disk: our [Cout][Cin][kz][ky][kx] element (o,i,z,y,x) is stored at (o,i,x,y,z).
        let f = try H5File.open(path)
        let d = try f.root.dataset("state_dict/conv1.conv1.0.weight")
        XCTAssertEqual(d.shape, [4, 1, 3, 3, 3])
        let disk = try d.readFloats()
        let w = m.conv1.c1.conv.weight.value
        XCTAssertEqual(disk[(0 * 3 + 1) * 3 + 2], w[(2 * 3 + 1) * 3 + 0])  // (x=0,y=1,z=2) vs ours (z=2,y=1,x=0)
        let other = SegmentationModel(ModelConfig(classes: 3, featureScale: 16))
        XCTAssertThrowsError(try Checkpoint.load(path, into: other)) {
            XCTAssertTrue("\($0)".contains("4 classes"), "\($0)")
        }
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let cut = dir.appendingPathComponent("cut.h5").path
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: cut))
        XCTAssertThrowsError(try Checkpoint.load(cut)) { XCTAssertTrue("\($0)".contains("cut.h5"), "\($0)") }
    }

    /// A checkpoint written here loads into the original PyTorch model (h5py + torch.from_numpy) and gives the
    /// same logits. Needs a Python with torch and h5py: the test venv's (launch/test.sh installs CPU torch), or
    /// ATTUNET_TORCH_PYTHON.
    func testCheckpointLoadsIntoPyTorch() throws {
        let python = ProcessInfo.processInfo.environment["ATTUNET_TORCH_PYTHON"] ?? TestEnv.python
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent(
            "attunet-torch-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for kind in ModelKind.allCases {
            let m = SegmentationModel(ModelConfig(kind: kind, featureScale: 8), seed: 11)
            for i in 0..<m.buffers.count { m.buffers.values.data[i] = 0.5 + Float(i % 7) * 0.1 }
            m.training = false
            let x = Tensor([1, 1, 16, 32, 48])
            for i in 0..<x.count { x.data[i] = sin(Float(i) * 0.37) }
            let logits = try m.forward(x)
            let ckpt = dir.appendingPathComponent("\(kind.rawValue).h5").path
            let io = dir.appendingPathComponent("io.h5").path
            try Checkpoint.save(m, to: ckpt)
            do {
                let f = try H5File.create(io)
                try f.root.write("input", x.array, shape: x.shape)
                try f.root.write("logits", logits.array, shape: logits.shape)
            }
            let script = Fixture.directory.appendingPathComponent("check_checkpoint_in_torch.py").path
            let p = Process()
            p.executableURL = URL(fileURLWithPath: python)
            p.arguments = [script, ckpt, io]
            try p.run()
            p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 0, "\(kind.rawValue): PyTorch logits differ (see output above)")
        }
    }
}
