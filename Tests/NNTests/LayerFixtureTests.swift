import Foundation
import NN
import Tensor
import TestSupport
import XCTest

/// Every layer against values computed by PyTorch (Tests/Fixtures/layers.h5).
final class LayerFixtureTests: XCTestCase {
    var fx: Fixture!
    override func setUpWithError() throws { fx = try Fixture("layers.h5") }

    private func checkConv(_ group: String, kernel: Int, path: ConvPath = .auto) throws {
        let cfg = try fx.config(group)
        let x = try fx.tensor("\(group)/x")
        let w = try fx.tensor("\(group)/weight")
        let hasBias = cfg["bias"] as? Bool ?? false
        let store = ParameterStore()
        let conv = Conv3d(
            params: store, name: "c", inChannels: w.shape[1], outChannels: w.shape[0], kernel: kernel, bias: hasBias)
        conv.path = path
        store.allocate()
        conv.weight.value.update(from: w.pointer, count: w.count)
        if hasBias {
            let b = try fx.tensor("\(group)/bias")
            conv.bias!.value.update(from: b.pointer, count: b.count)
        }
        let label =
            kernel == 3
            ? "\(group) [\(conv.pathName(for: .forward, dims: Dim3(z: x.shape[2], y: x.shape[3], x: x.shape[4])))]"
            : group
        assertClose(conv.forward(x), try fx.tensor("\(group)/y"), "\(label) y")
        assertClose(conv.backward(try fx.tensor("\(group)/dy")), try fx.tensor("\(group)/dx"), "\(label) dx")
        assertClose(conv.weight.grad, try fx.tensor("\(group)/dweight"), "\(label) dweight")
        if hasBias { assertClose(conv.bias!.grad, try fx.tensor("\(group)/dbias"), "\(label) dbias") }
    }

    /// Every path this CPU runs is checked (im2col + sgemm always; the direct AVX2 / AVX-512 kernels where they run).
    /// The test says which paths it checked, so a green run does not pass for a check of paths that did not run.
    func testConv3x3x3EveryPath() throws {
        for path in Conv3d.availablePaths {
            for group in ["conv3", "conv3_wide"] { try checkConv(group, kernel: 3, path: path) }
        }
        let skipped = ConvPath.allCases.filter { ![.auto, .direct].contains($0) && !$0.isAvailable }
        print(
            "conv 3x3x3 checked against PyTorch on: \(Conv3d.availablePaths.map { Conv3d.pathName($0) }.joined(separator: ", "))"
                + (skipped.isEmpty
                    ? ""
                    : "; NOT tested (this CPU does not run them or they are not implemented): \(skipped.map(\.rawValue).joined(separator: ", "))")
        )
    }

    func testConv1x1x1AndStrided2x2x2() throws {
        try checkConv("conv1", kernel: 1)
        try checkConv("conv2s2_even", kernel: 2)
        try checkConv("conv2s2_odd", kernel: 2)
    }

    func testBatchNormTrainAndEval() throws {
        for (group, training) in [("bn_train", true), ("bn_eval", false)] {
            let x = try fx.tensor("\(group)/x")
            let p = ParameterStore()
            let b = ParameterStore()
            let bn = BatchNorm3d(params: p, buffers: b, name: "bn", channels: x.shape[1])
            p.allocate()
            b.allocate()
            bn.training = training
            let w = try fx.tensor("\(group)/weight")
            let bias = try fx.tensor("\(group)/bias")
            bn.weight.value.update(from: w.pointer, count: w.count)
            bn.bias.value.update(from: bias.pointer, count: bias.count)
            let rm = try fx.tensor(training ? "\(group)/running_mean_before" : "\(group)/running_mean")
            let rv = try fx.tensor(training ? "\(group)/running_var_before" : "\(group)/running_var")
            bn.runningMean.value.update(from: rm.pointer, count: rm.count)
            bn.runningVar.value.update(from: rv.pointer, count: rv.count)
            assertClose(bn.forward(x), try fx.tensor("\(group)/y"), "\(group) y")
            if training {
                assertClose(
                    bn.runningMean.value, try fx.tensor("\(group)/running_mean_after"), tol: 1e-5, "running_mean")
                assertClose(bn.runningVar.value, try fx.tensor("\(group)/running_var_after"), tol: 1e-5, "running_var")
            }
            assertClose(bn.backward(try fx.tensor("\(group)/dy")), try fx.tensor("\(group)/dx"), "\(group) dx")
            assertClose(bn.weight.grad, try fx.tensor("\(group)/dweight"), "\(group) dweight")
            assertClose(bn.bias.grad, try fx.tensor("\(group)/dbias"), "\(group) dbias")
        }
    }

    func testActivationsAndPooling() throws {
        let cases: [(String, (Tensor) -> Tensor, (Tensor) -> Tensor)] = {
            let relu = ReLU()
            let sig = Sigmoid()
            let sm = Softmax()
            let pool = MaxPool3d()
            return [
                ("relu", relu.forward, { relu.backward($0) }), ("sigmoid", sig.forward, sig.backward),
                ("softmax", sm.forward, sm.backward), ("maxpool", pool.forward, pool.backward),
            ]
        }()
        for (group, forward, backward) in cases {
            assertClose(forward(try fx.tensor("\(group)/x")), try fx.tensor("\(group)/y"), "\(group) y")
            assertClose(backward(try fx.tensor("\(group)/dy")), try fx.tensor("\(group)/dx"), "\(group) dx")
        }
    }

    func testTrilinearFactorsSizesAndAlignCorners() throws {
        let cases: [(String, Trilinear)] = [
            ("trilinear_x2_ac0", Trilinear(factor: 2, alignCorners: false)),
            ("trilinear_x2_ac1", Trilinear(factor: 2, alignCorners: true)),
            ("trilinear_x4", Trilinear(factor: 4, alignCorners: false)),
            ("trilinear_x4_ac1", Trilinear(factor: 4, alignCorners: true)),
            ("trilinear_x8", Trilinear(factor: 8, alignCorners: false)),
            ("trilinear_x8_ac1", Trilinear(factor: 8, alignCorners: true)),
            // torch size (X, Y, Z) = (9, 11, 13) is our (z: 13, y: 11, x: 9).
            ("trilinear_size_ac0", Trilinear(size: Dim3(z: 13, y: 11, x: 9), alignCorners: false)),
            ("trilinear_size_ac1", Trilinear(size: Dim3(z: 13, y: 11, x: 9), alignCorners: true)),
        ]
        for (group, layer) in cases {
            assertClose(layer.forward(try fx.tensor("\(group)/x")), try fx.tensor("\(group)/y"), "\(group) y")
            assertClose(layer.backward(try fx.tensor("\(group)/dy")), try fx.tensor("\(group)/dx"), "\(group) dx")
        }
    }

    func testGateAndConcat() throws {
        let gate = GateMultiply()
        assertClose(
            gate.forward(x: try fx.tensor("gate/x"), alpha: try fx.tensor("gate/alpha")), try fx.tensor("gate/y"),
            "gate y")
        let (dx, dalpha) = gate.backward(try fx.tensor("gate/dy"))
        assertClose(dx, try fx.tensor("gate/dx"), "gate dx")
        assertClose(dalpha, try fx.tensor("gate/dalpha"), "gate dalpha")
        let cat = Concat()
        assertClose(
            cat.forward(try fx.tensor("concat/a"), try fx.tensor("concat/b")), try fx.tensor("concat/y"), "concat y")
        let (da, db) = cat.backward(try fx.tensor("concat/dy"))
        assertClose(da, try fx.tensor("concat/da"), "concat da")
        assertClose(db, try fx.tensor("concat/db"), "concat db")
    }

    func testLossesAgainstTheOriginal() throws {
        for (group, kind) in [
            ("softmax_dice", LossKind.softDice), ("cross_entropy", LossKind.crossEntropy),
            ("sorensen_dice", LossKind.dice),
        ] {
            let logits = try fx.tensor("\(group)/logits")
            let labels = try fx.labels("\(group)/target")
            let loss = SegmentationLoss(kind)
            let value = labels.withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0) }
            XCTAssertEqual(value, try fx.scalar("\(group)/loss"), accuracy: 1e-5, group)
            assertClose(loss.gradient, try fx.tensor("\(group)/dlogits"), "\(group) dlogits")
        }
    }

    /// The loss's vector loops (softmax, Dice sums, gradient: 8 voxels at a time, a polynomial exp) on a volume that
    /// spans two 4096-voxel chunks and ends in a partial vector (2 x 3 x 7x23x31), with logits spread over ±40 so
    /// that the exp meets arguments far below 0: the loss and d(loss)/d(logits) of both Dice kinds against
    /// PyTorch's autograd in float64.
    func testLossVectorLoopsAgainstTorchOnOddVolumes() throws {
        let (n, c, v) = (2, 3, 7 * 23 * 31)
        var rng = SeededRNG(7)
        let logits = Tensor([n, c, 7, 23, 31], (0..<(n * c * v)).map { _ in Float(rng.uniform() * 80 - 40) })
        let labels = (0..<(n * v)).map { _ in UInt8(rng.below(c)) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("attunet-loss-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try Data(buffer: UnsafeBufferPointer(start: logits.pointer, count: logits.count))
            .write(to: dir.appendingPathComponent("x.f32"))
        try Data(labels).write(to: dir.appendingPathComponent("l.u8"))
        for kind in [LossKind.dice, .softDice] {
            let loss = SegmentationLoss(kind)
            let value = labels.withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0) }
            let squared = kind == .dice ? "True" : "False"
            try TestEnv.python(
                """
                import numpy as np, torch
                d = "\(dir.path)/"
                x = torch.tensor(np.fromfile(d + "x.f32", dtype=np.float32).reshape(\(n), \(c), -1).astype(np.float64),
                                 requires_grad=True)
                g = torch.nn.functional.one_hot(torch.tensor(np.fromfile(d + "l.u8", dtype=np.uint8).astype(np.int64)
                                                              .reshape(\(n), -1)), \(c)).permute(0, 2, 1).double()
                p = torch.softmax(x, dim=1)
                s = \(loss.smooth)
                if \(squared):
                    score = (2 * (p * g).sum(2) + s) / ((p * p).sum(2) + g.sum(2) + s)
                else:
                    score = 2 * ((p * g).sum(2) + s) / (p.sum(2) + g.sum(2) + s)
                value = 1 - score.mean()
                value.backward()
                np.array([value.item()]).tofile(d + "value.f64")
                x.grad.numpy().astype(np.float64).tofile(d + "grad.f64")
                """)
            let want = try Data(contentsOf: dir.appendingPathComponent("value.f64")).withUnsafeBytes {
                $0.load(as: Double.self)
            }
            XCTAssertEqual(value, want, accuracy: 1e-6, "\(kind) loss")
            let grad = try Data(contentsOf: dir.appendingPathComponent("grad.f64")).withUnsafeBytes {
                Array($0.bindMemory(to: Double.self))
            }
            let scale = grad.map(abs).max()!
            var worst = 0.0
            for i in 0..<grad.count { worst = max(worst, abs(Double(loss.gradient.pointer[i]) - grad[i]) / scale) }
            XCTAssertLessThan(worst, 1e-5, "\(kind) dlogits: worst error relative to the largest")
            XCTAssertGreaterThan(scale, 0)
        }
        // A NaN logit (in a full vector and in the partial one) makes the loss NaN: the exp's clamp must not hide it.
        for i in [5 * v + 100, n * c * v - 1] {
            let bad = Tensor(logits.shape, Array(UnsafeBufferPointer(start: logits.pointer, count: logits.count)))
            bad.pointer[i] = .nan
            let value = labels.withUnsafeBufferPointer { SegmentationLoss(.dice).forward(logits: bad, labels: $0) }
            XCTAssertTrue(value.isNaN, "NaN logit at \(i): loss \(value)")
        }
    }

    /// The validation loss: each sample's loss from its softmax probabilities (`value`, no gradient), averaged
    /// over the batch, equals the original's loss on the logits.
    func testLossValueFromProbabilitiesAgainstTheOriginal() throws {
        for (group, kind) in [
            ("softmax_dice", LossKind.softDice), ("cross_entropy", LossKind.crossEntropy),
            ("sorensen_dice", LossKind.dice),
        ] {
            let logits = try fx.tensor("\(group)/logits")
            let labels = try fx.labels("\(group)/target")
            let (n, c) = (logits.shape[0], logits.shape[1])
            let v = logits.count / (n * c)
            let x = Array(UnsafeBufferPointer(start: logits.pointer, count: logits.count))
            var total = 0.0
            for b in 0..<n {
                var p = [Float](repeating: 0, count: c * v)
                for i in 0..<v {
                    let z = (0..<c).map { Double(x[(b * c + $0) * v + i]) }
                    let m = z.max()!
                    let e = z.map { Foundation.exp($0 - m) }
                    let sum = e.reduce(0, +)
                    for k in 0..<c { p[k * v + i] = Float(e[k] / sum) }
                }
                total += p.withUnsafeBufferPointer { pp in
                    Array(labels[(b * v)..<((b + 1) * v)]).withUnsafeBufferPointer {
                        SegmentationLoss(kind).value(probabilities: pp, classes: c, labels: $0)
                    }
                }
            }
            XCTAssertEqual(total / Double(n), try fx.scalar("\(group)/loss"), accuracy: 1e-5, group)
        }
    }

    /// Adam and SGD with Nesterov momentum (weight decay 1e-6) against torch.optim over 4 steps.
    func testOptimizersMatchTorchOptim() throws {
        for (group, kind) in [("optim_adam", OptimizerKind.adam), ("optim_sgd_nesterov", OptimizerKind.sgd)] {
            let p0 = try fx.tensor("\(group)/params0")
            let grads = try fx.tensor("\(group)/grads")
            let want = try fx.tensor("\(group)/params")
            let n = p0.count
            let opt = Optimizer(kind, parameterCount: n, learningRate: 1e-2, weightDecay: 1e-6)
            let params = p0.clone()
            let g = Tensor([n])
            let expected = Tensor([n])
            for step in 0..<4 {
                g.pointer.update(from: grads.pointer + step * n, count: n)
                opt.update(params: params, grads: g)
                expected.pointer.update(from: want.pointer + step * n, count: n)
                assertClose(params, expected, tol: 1e-5, "\(group) step \(step + 1)")
            }
        }
    }
}
