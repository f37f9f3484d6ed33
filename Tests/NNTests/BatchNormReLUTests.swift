import CKernels
import Foundation
import Tensor
import XCTest

@testable import NN

/// BatchNorm3d with the fused ReLU (`fusedReLU`, as `ConvBNReLU` runs it): bit for bit the same as BatchNorm3d
/// followed by an in-place `ReLU`, within float rounding of the definition evaluated in Double, the same on 1, 2
/// and 3 threads, and NaN handled as the two layers handle it. The volume (7×25×27 = 4725 voxels) spans two pieces
/// of `parallelForPieces` and ends in a tail shorter than one vector.
final class BatchNormReLUTests: XCTestCase {
    override func tearDown() {
        Parallelism.threads = 1
        ck_bn_set_portable(0)
        super.tearDown()
    }

    /// The plain C code of `batchnorm.c` (CPUs without AVX2) against the same checks.
    func testPlainCCodeToo() {
        ck_bn_set_portable(1)
        testFusedEqualsBatchNormThenReLUBitForBit()
        testFusedMatchesTheDefinitionInDouble()
        testSameResultsOnOneTwoAndThreeThreads()
        testNaNPropagatesAsBatchNormThenReLU()
    }

    /// The AVX2 code and the plain C code agree within float rounding (where the CPU has AVX2).
    func testAVX2AndPlainCAgree() throws {
        try XCTSkipUnless(ck_cpu_has_avx2() != 0, "no AVX2")
        let x = input(seed: 71)
        let dy = GradCheck.random(Self.count, seed: 72)
        let a = run(fused: true, training: true, x: x, dy: dy)
        ck_bn_set_portable(1)
        let b = run(fused: true, training: true, x: x, dy: dy)
        for (u, w) in zip(a.y + a.dx, b.y + b.dx) { XCTAssertEqual(u, w, accuracy: 1e-5) }
        for (u, w) in zip(a.grads, b.grads) { XCTAssertEqual(u, w, accuracy: 1e-3) }
        XCTAssertNotEqual(a.dx, b.dx, "the two codes round differently: the switch took effect")
    }

    static let shape = [2, 3, 7, 25, 27]
    static var count: Int { shape.reduce(1, *) }
    static var perPlane: Int { shape[2] * shape[3] * shape[4] }

    struct Run {
        var y: [Float]
        var dx: [Float]
        var grads: [Float]
        var buffers: [Float]
    }

    /// One forward and backward pass: fused, or BN then an in-place ReLU; in training or evaluation mode.
    func run(fused: Bool, training: Bool, x xs: [Float], dy dys: [Float]) -> Run {
        let params = ParameterStore()
        let buffers = ParameterStore()
        let bn = BatchNorm3d(params: params, buffers: buffers, name: "b.1", channels: Self.shape[1])
        params.allocate()
        buffers.allocate()
        bn.resetParameters()
        for c in 0..<bn.channels {
            bn.weight.value[c] = 0.6 + 0.3 * Float(c)
            bn.bias.value[c] = 0.25 - 0.25 * Float(c)  // a positive, a zero and a negative shift
            bn.runningMean.value[c] = 0.1 * Float(c) - 0.1
            bn.runningVar.value[c] = 0.7 + 0.5 * Float(c)
        }
        bn.training = training
        bn.fusedReLU = fused
        let relu = ReLU(inPlace: true)
        let x = Tensor(Self.shape, xs)
        let y = fused ? bn.forward(x) : relu.forward(bn.forward(x))
        let yv = y.array
        params.zeroGrads()
        let dy = Tensor(Self.shape, dys)
        let dx = fused ? bn.backward(dy, inPlace: true) : bn.backward(relu.backward(dy, inPlace: true), inPlace: true)
        return Run(y: yv, dx: dx.array, grads: params.grads.array, buffers: buffers.values.array)
    }

    /// An input whose channels have different offsets and scales.
    func input(seed: UInt64) -> [Float] {
        var v = GradCheck.random(Self.count, seed: seed)
        for i in 0..<v.count {
            let c = (i / Self.perPlane) % Self.shape[1]
            v[i] = v[i] * Float(1 + c) + 0.5 * Float(c) - 0.2
        }
        return v
    }

    /// Equal element by element, NaN equal to NaN.
    func assertSame(_ a: [Float], _ b: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        let bad = zip(a, b).enumerated().first { !($0.1.0 == $0.1.1 || ($0.1.0.isNaN && $0.1.1.isNaN)) }
        XCTAssertNil(
            bad, "\(what): first difference at \(bad.map { "\($0.offset): \($0.element)" } ?? "")",
            file: file, line: line)
    }

    func testFusedEqualsBatchNormThenReLUBitForBit() {
        let x = input(seed: 31)
        let dy = GradCheck.random(Self.count, seed: 32)
        for training in [true, false] {
            let f = run(fused: true, training: training, x: x, dy: dy)
            let u = run(fused: false, training: training, x: x, dy: dy)
            let mode = training ? "train" : "eval"
            assertSame(f.y, u.y, "\(mode) y")
            assertSame(f.dx, u.dx, "\(mode) dx")
            assertSame(f.grads, u.grads, "\(mode) dgamma, dbeta")
            assertSame(f.buffers, u.buffers, "\(mode) running statistics")
            // Not vacuous: the ReLU cut some outputs and passed others.
            XCTAssertGreaterThan(f.y.filter { $0 == 0 }.count, Self.count / 10, mode)
            XCTAssertGreaterThan(f.y.filter { $0 > 0 }.count, Self.count / 10, mode)
        }
    }

    /// y = max(γ(x − μ)/σ + β, 0) and, with the ReLU's mask m = [y > 0] taken from the layer's own output,
    /// dx = γ/σ (m·dy − mean(m·dy) − x̂ mean(m·dy·x̂)) (training) or γ/σ m·dy (evaluation), dγ = Σ m·dy·x̂,
    /// dβ = Σ m·dy, all in Double.
    func testFusedMatchesTheDefinitionInDouble() {
        let x = input(seed: 41)
        let dy = GradCheck.random(Self.count, seed: 42)
        let (n, c, v) = (Self.shape[0], Self.shape[1], Self.perPlane)
        for training in [true, false] {
            let f = run(fused: true, training: training, x: x, dy: dy)
            for ch in 0..<c {
                var idx: [Int] = []
                for i in 0..<n { idx += Array(((i * c + ch) * v)..<((i * c + ch + 1) * v)) }
                let xs = idx.map { Double(x[$0]) }
                let m = Double(xs.count)
                let gamma = 0.6 + 0.3 * Double(ch)
                let beta = 0.25 - 0.25 * Double(ch)
                var mean = Double(Float(0.1 * Double(ch) - 0.1))
                var variance = Double(Float(0.7 + 0.5 * Double(ch)))
                if training {
                    mean = xs.reduce(0, +) / m
                    variance = xs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / m
                }
                let sigma = (variance + 1e-5).squareRoot()
                let xhat = xs.map { ($0 - mean) / sigma }
                let md = idx.map { f.y[$0] > 0 ? Double(dy[$0]) : 0 }
                let mdy = md.reduce(0, +) / m
                let mdyx = zip(md, xhat).map(*).reduce(0, +) / m
                for (k, i) in idx.enumerated() {
                    XCTAssertEqual(Double(f.y[i]), max(gamma * xhat[k] + beta, 0), accuracy: 2e-6)
                    let want = training ? gamma / sigma * (md[k] - mdy - xhat[k] * mdyx) : gamma / sigma * md[k]
                    XCTAssertEqual(Double(f.dx[i]), want, accuracy: 2e-6)
                }
                XCTAssertEqual(Double(f.grads[ch]), mdyx * m, accuracy: 1e-6 * m)
                XCTAssertEqual(Double(f.grads[c + ch]), mdy * m, accuracy: 1e-6 * m)
            }
        }
    }

    func testSameResultsOnOneTwoAndThreeThreads() {
        let x = input(seed: 51)
        let dy = GradCheck.random(Self.count, seed: 52)
        for training in [true, false] {
            var runs: [Run] = []
            for t in [1, 2, 3] {
                Parallelism.threads = t
                runs.append(run(fused: true, training: training, x: x, dy: dy))
            }
            for r in runs.dropFirst() {
                XCTAssertEqual(r.y, runs[0].y)
                XCTAssertEqual(r.dx, runs[0].dx)
                XCTAssertEqual(r.grads, runs[0].grads)
                XCTAssertEqual(r.buffers, runs[0].buffers)
            }
        }
    }

    /// A NaN input: in training its channel's statistics, and so all its outputs, are NaN (the ReLU keeps NaN);
    /// in evaluation only that voxel's output is NaN and it passes no gradient. Either way the same as BN + ReLU.
    func testNaNPropagatesAsBatchNormThenReLU() {
        var x = input(seed: 61)
        let bad = Self.perPlane + 1234  // sample 0, channel 1
        x[bad] = .nan
        let dy = GradCheck.random(Self.count, seed: 62)
        let v = Self.perPlane
        for training in [true, false] {
            let f = run(fused: true, training: training, x: x, dy: dy)
            let u = run(fused: false, training: training, x: x, dy: dy)
            assertSame(f.y, u.y, "y")
            assertSame(f.dx, u.dx, "dx")
            assertSame(f.grads, u.grads, "grads")
            let channel1: [Int] = Array(v..<(2 * v)) + Array((4 * v)..<(5 * v))
            if training {
                XCTAssertTrue(channel1.allSatisfy { f.y[$0].isNaN })
                XCTAssertTrue(f.buffers[1].isNaN, "running mean of channel 1")
            } else {
                XCTAssertTrue(f.y[bad].isNaN)
                XCTAssertEqual(f.dx[bad], 0)
                XCTAssertEqual(channel1.filter { f.y[$0].isNaN }.count, 1)
            }
            // The other channels stay finite.
            XCTAssertTrue((0..<v).allSatisfy { f.y[$0].isFinite && f.dx[$0].isFinite })
            XCTAssertTrue(((2 * v)..<(3 * v)).allSatisfy { f.y[$0].isFinite && f.dx[$0].isFinite })
        }
    }
}
