import Foundation
import Tensor
import XCTest

@testable import NN

private let shape = [2, 3, 3, 5, 7]

private func tensor(_ shape: [Int], seed: UInt64, lo: Float = -1, hi: Float = 1) -> Tensor {
    Tensor(shape, GradCheck.random(shape.reduce(1, *), seed: seed, lo: lo, hi: hi))
}

/// Values in ±[0.1, 1.1]: at least 10 h away from ReLU's kink at 0.
private func awayFromZero(_ shape: [Int], seed: UInt64) -> Tensor {
    let v = GradCheck.random(shape.reduce(1, *), seed: seed).map { $0 < 0 ? $0 - 0.1 : $0 + 0.1 }
    return Tensor(shape, v)
}

final class ActivationTests: XCTestCase {
    func testReLUForwardAndGradient() {
        let relu = ReLU()
        let x = awayFromZero(shape, seed: 1)
        let y = relu.forward(x)
        XCTAssertEqual(y.shape, shape)
        XCTAssertFalse(y === x)
        for i in 0..<x.count { XCTAssertEqual(y.data[i], max(x.data[i], 0)) }
        let r = GradCheck.random(y.count, seed: 2)
        let dx = relu.backward(Tensor(y.shape, r)).array
        for i in 0..<x.count { XCTAssertEqual(dx[i], x.data[i] > 0 ? r[i] : 0) }
        GradCheck.check(
            "relu.dx", parameter: x.pointer, count: x.count, analytic: dx, relTol: 1e-4,
            samples: x.count
        ) { GradCheck.dot(relu.forward(x).data, r) }
    }

    func testReLUZeroHasZeroGradient() {
        let relu = ReLU()
        let x = Tensor([1, 1, 1, 1, 3], [-1, 0, 2])
        _ = relu.forward(x)
        XCTAssertEqual(relu.backward(Tensor([1, 1, 1, 1, 3], [5, 6, 7])).array, [0, 0, 7])
    }

    func testReLUInPlaceOverwritesInputAndMatches() {
        let x = awayFromZero(shape, seed: 3)
        let reference = ReLU()
        let expectedY = reference.forward(x).array
        let r = GradCheck.random(x.count, seed: 4)
        let expectedDx = reference.backward(Tensor(shape, r)).array

        let inPlace = ReLU(inPlace: true)
        let y = inPlace.forward(x)
        XCTAssertTrue(y === x, "in-place ReLU must return its input tensor")
        XCTAssertEqual(x.array, expectedY)
        XCTAssertEqual(inPlace.backward(Tensor(shape, r)).array, expectedDx)
    }

    func testOutputBufferIsReusedForSameShape() {
        let relu = ReLU()
        let a = relu.forward(tensor(shape, seed: 5))
        let b = relu.forward(tensor(shape, seed: 6))
        XCTAssertTrue(a === b)
        let c = relu.forward(tensor([1, 1, 2, 2, 2], seed: 7))
        XCTAssertEqual(c.shape, [1, 1, 2, 2, 2])
    }

    func testSigmoidValuesAndGradient() {
        let sig = Sigmoid()
        let x = tensor(shape, seed: 8, lo: -4, hi: 4)
        let y = sig.forward(x)
        for i in 0..<x.count {
            let ref = 1 / (1 + Foundation.exp(-Double(x.data[i])))
            XCTAssertEqual(Double(y.data[i]), ref, accuracy: 1e-6)
        }
        let r = GradCheck.random(y.count, seed: 9)
        let dx = sig.backward(Tensor(y.shape, r)).array
        GradCheck.check(
            "sigmoid.dx", parameter: x.pointer, count: x.count, analytic: dx, relTol: 1e-3,
            samples: x.count
        ) { GradCheck.dot(sig.forward(x).data, r) }
    }

    func testSigmoidExtremesAreFinite() {
        let sig = Sigmoid()
        let y = sig.forward(Tensor([1, 1, 1, 1, 4], [-1000, -90, 90, 1000])).array
        XCTAssertEqual(y[0], 0)
        XCTAssertEqual(y[3], 1)
        XCTAssertTrue(y.allSatisfy { $0.isFinite && $0 >= 0 && $0 <= 1 })
        XCTAssertLessThan(y[1], 1e-30)
    }

    func testSoftmaxMatchesNaiveAndSumsToOne() {
        let sm = Softmax()
        let x = tensor(shape, seed: 10, lo: -3, hi: 3)
        let y = sm.forward(x)
        let n = shape[0]
        let c = shape[1]
        let v = shape[2] * shape[3] * shape[4]
        for b in 0..<n {
            for i in 0..<v {
                let logits = (0..<c).map { Double(x.data[(b * c + $0) * v + i]) }
                let denom = logits.map { Foundation.exp($0) }.reduce(0, +)
                var sum = 0.0
                for ch in 0..<c {
                    let got = Double(y.data[(b * c + ch) * v + i])
                    XCTAssertEqual(got, Foundation.exp(logits[ch]) / denom, accuracy: 1e-6)
                    sum += got
                }
                XCTAssertEqual(sum, 1, accuracy: 1e-6)
            }
        }
    }

    func testSoftmaxIsStableForLargeLogits() {
        // Two voxels, three channels: logits far beyond exp's range differ by 0, 1, 2.
        let sm = Softmax()
        let y = sm.forward(Tensor([1, 3, 1, 1, 2], [1000, -1000, 1001, -999, 1002, -998])).array
        XCTAssertTrue(y.allSatisfy(\.isFinite))
        let e = [1.0, Foundation.exp(1.0), Foundation.exp(2.0)]
        let s = e.reduce(0, +)
        for ch in 0..<3 {
            XCTAssertEqual(Double(y[ch * 2]), e[ch] / s, accuracy: 1e-6)
            XCTAssertEqual(Double(y[ch * 2 + 1]), e[ch] / s, accuracy: 1e-6)
        }
    }

    func testSoftmaxGradient() {
        let sm = Softmax()
        let x = tensor(shape, seed: 11, lo: -2, hi: 2)
        let y = sm.forward(x)
        let r = GradCheck.random(y.count, seed: 12)
        let dx = sm.backward(Tensor(y.shape, r)).array
        GradCheck.check(
            "softmax.dx", parameter: x.pointer, count: x.count, analytic: dx, relTol: 1e-3,
            samples: x.count
        ) { GradCheck.dot(sm.forward(x).data, r) }
    }

    func testSoftmaxBlocksBeyondOneChunk() {
        // More voxels than one task's block (512) and a partial last block.
        let s = [2, 4, 3, 13, 17]
        let sm = Softmax()
        let x = tensor(s, seed: 13, lo: -5, hi: 5)
        let y = sm.forward(x)
        let c = s[1]
        let v = s[2] * s[3] * s[4]
        for b in 0..<s[0] {
            for i in Swift.stride(from: 0, to: v, by: 7) {
                let sum = (0..<c).reduce(0.0) { $0 + Double(y.data[(b * c + $1) * v + i]) }
                XCTAssertEqual(sum, 1, accuracy: 1e-6)
            }
        }
    }

    func testThreadedMatchesSingleThreaded() {
        let saved = Parallelism.threads
        defer { Parallelism.threads = saved }
        // Big enough for several flat chunks (1 << 15) and several softmax blocks.
        let s = [2, 3, 9, 40, 41]
        let x = tensor(s, seed: 14, lo: -3, hi: 3)
        let dy = tensor(s, seed: 15)
        var results: [[[Float]]] = []
        for threads in [1, 2, 3, 7] {
            Parallelism.threads = threads
            let relu = ReLU()
            let sig = Sigmoid()
            let sm = Softmax()
            var r: [[Float]] = []
            r.append(relu.forward(x).array)
            r.append(relu.backward(dy).array)
            r.append(sig.forward(x).array)
            r.append(sig.backward(dy).array)
            r.append(sm.forward(x).array)
            r.append(sm.backward(dy).array)
            results.append(r)
        }
        for r in results.dropFirst() { XCTAssertEqual(r, results[0]) }
        // The threaded sigmoid against its formula in Double.
        let sig = results[3][2]
        for i in stride(from: 0, to: x.count, by: 997) {
            XCTAssertEqual(Double(sig[i]), 1 / (1 + Foundation.exp(-Double(x.pointer[i]))), accuracy: 1e-6)
        }
    }
}
