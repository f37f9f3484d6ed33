import Tensor
import XCTest

@testable import NN

private func tensor(_ shape: [Int], seed: UInt64, lo: Float = -1, hi: Float = 1) -> Tensor {
    Tensor(shape, GradCheck.random(shape.reduce(1, *), seed: seed, lo: lo, hi: hi))
}

final class CombineTests: XCTestCase {
    // MARK: GateMultiply

    func testGateMultiplyForwardBroadcastsOverChannels() {
        let s = [2, 3, 3, 5, 7]
        let x = tensor(s, seed: 41)
        let alpha = tensor([2, 1, 3, 5, 7], seed: 42, lo: 0, hi: 1)
        let y = GateMultiply().forward(x: x, alpha: alpha)
        let v = 3 * 5 * 7
        for b in 0..<2 {
            for c in 0..<3 {
                for i in 0..<v {
                    XCTAssertEqual(y.data[(b * 3 + c) * v + i], alpha.data[b * v + i] * x.data[(b * 3 + c) * v + i])
                }
            }
        }
    }

    func testGateMultiplyGradients() {
        let s = [2, 3, 3, 5, 7]
        let gate = GateMultiply()
        let x = tensor(s, seed: 43)
        let alpha = tensor([2, 1, 3, 5, 7], seed: 44, lo: 0.05, hi: 0.95)
        let y = gate.forward(x: x, alpha: alpha)
        let r = GradCheck.random(y.count, seed: 45)
        let (dx, da) = gate.backward(Tensor(y.shape, r))
        XCTAssertEqual(dx.shape, s)
        XCTAssertEqual(da.shape, [2, 1, 3, 5, 7])
        let dxa = dx.array
        let daa = da.array
        let loss = { GradCheck.dot(gate.forward(x: x, alpha: alpha).data, r) }
        GradCheck.check(
            "gate.dx", parameter: x.pointer, count: x.count, analytic: dxa, relTol: 1e-3,
            samples: x.count, loss: loss)
        GradCheck.check(
            "gate.dalpha", parameter: alpha.pointer, count: alpha.count, analytic: daa, relTol: 1e-3,
            samples: alpha.count, loss: loss)
    }

    // MARK: Concat

    func testConcatForwardOrderAndBackwardSplit() {
        let a = tensor([2, 3, 3, 5, 7], seed: 46)
        let b = tensor([2, 2, 3, 5, 7], seed: 47)
        let cat = Concat()
        let y = cat.forward(a, b)
        XCTAssertEqual(y.shape, [2, 5, 3, 5, 7])
        let v = 3 * 5 * 7
        for n in 0..<2 {
            for c in 0..<5 {
                for i in Swift.stride(from: 0, to: v, by: 4) {
                    let want = c < 3 ? a.data[(n * 3 + c) * v + i] : b.data[(n * 2 + c - 3) * v + i]
                    XCTAssertEqual(y.data[(n * 5 + c) * v + i], want)
                }
            }
        }
        // Backward of the identity-like map: concatenating (da, db) must give back dy.
        let r = GradCheck.random(y.count, seed: 48)
        let (da, db) = cat.backward(Tensor(y.shape, r))
        XCTAssertEqual(da.shape, a.shape)
        XCTAssertEqual(db.shape, b.shape)
        XCTAssertEqual(Concat().forward(da, db).array, r)
        let loss = { GradCheck.dot(cat.forward(a, b).data, r) }
        let daa = da.array
        let dba = db.array
        GradCheck.check("concat.da", parameter: a.pointer, count: a.count, analytic: daa, relTol: 1e-4, loss: loss)
        GradCheck.check("concat.db", parameter: b.pointer, count: b.count, analytic: dba, relTol: 1e-4, loss: loss)
    }

    func testConcatManyInputs() {
        let parts = [
            tensor([1, 4, 2, 2, 2], seed: 49), tensor([1, 4, 2, 2, 2], seed: 50),
            tensor([1, 1, 2, 2, 2], seed: 51), tensor([1, 4, 2, 2, 2], seed: 52),
        ]
        let cat = Concat()
        let y = cat.forward(parts)
        XCTAssertEqual(y.shape, [1, 13, 2, 2, 2])
        XCTAssertEqual(y.array, parts.flatMap(\.array))  // N = 1: channel blocks are contiguous
        let grads = cat.backwardAll(y)
        XCTAssertEqual(grads.map(\.array), parts.map(\.array))
    }

    // MARK: Add

    func testAddForwardBackwardAndAccumulate() {
        let s = [2, 3, 3, 5, 7]
        let a = tensor(s, seed: 53)
        let b = tensor(s, seed: 54)
        let add = Add()
        let y = add.forward(a, b).array  // copied: gradient checks below rerun forward into the same buffer
        for i in 0..<y.count { XCTAssertEqual(y[i], a.data[i] + b.data[i]) }
        let dy = tensor(s, seed: 55)
        let (da, db) = add.backward(dy)
        XCTAssertEqual(da.array, dy.array)
        XCTAssertEqual(db.array, dy.array)
        let loss = { GradCheck.dot(add.forward(a, b).data, dy.array) }
        GradCheck.check("add.da", parameter: a.pointer, count: a.count, analytic: da.array, relTol: 1e-4, loss: loss)
        GradCheck.check("add.db", parameter: b.pointer, count: b.count, analytic: db.array, relTol: 1e-4, loss: loss)

        let acc = a.clone()
        Add.accumulate(into: acc, b)
        XCTAssertEqual(acc.array, y)
    }

    func testThreadedMatchesSingleThreaded() {
        let saved = Parallelism.threads
        defer { Parallelism.threads = saved }
        // Several pieces per plane and several tiles of GateMultiply's backward per sample.
        let s = [2, 5, 6, 40, 41]
        let x = tensor(s, seed: 56)
        let alpha = tensor([2, 1, 6, 40, 41], seed: 57, lo: 0, hi: 1)
        let a = tensor([2, 2, 6, 40, 41], seed: 58)
        let dy = tensor(s, seed: 59)
        let dcat = tensor([2, 7, 6, 40, 41], seed: 60)
        var results: [[[Float]]] = []
        for threads in [1, 2, 3, 7] {
            Parallelism.threads = threads
            let gate = GateMultiply()
            let cat = Concat()
            let add = Add()
            let y = gate.forward(x: x, alpha: alpha).array
            let (dx, da) = gate.backward(dy)
            let c = cat.forward(a, x).array
            let (ca, cx) = cat.backward(dcat)
            let sum = add.forward(x, dy).array
            results.append([y, dx.array, da.array, c, ca.array, cx.array, sum])
        }
        for r in results.dropFirst() { XCTAssertEqual(r, results[0]) }
        // dα = Σ_c dy ⊙ x, checked in Double at a few voxels of the threaded run.
        let v = 6 * 40 * 41
        for (b, i) in [(0, 0), (1, v - 1), (1, 4097), (0, 5000)] {
            var want = 0.0
            for c in 0..<5 { want += Double(dy.pointer[(b * 5 + c) * v + i]) * Double(x.pointer[(b * 5 + c) * v + i]) }
            XCTAssertEqual(Double(results[3][2][b * v + i]), want, accuracy: 1e-5)
        }
    }

    /// The memory-saving forms of backward give the plain forms' values bit for bit: BN and ReLU writing over
    /// dy, one input's gradient of a concatenation, and an upsampling reading its part of a wider gradient.
    func testInPlaceAndSlicedBackwardsEqualThePlainOnes() {
        let shape = [2, 3, 4, 6, 5]
        let count = 720
        let params = ParameterStore()
        let buffers = ParameterStore()
        let bn = BatchNorm3d(params: params, buffers: buffers, name: "bn", channels: 3)
        params.allocate()
        buffers.allocate()
        bn.resetParameters()
        let x = Tensor(shape, GradCheck.random(count, seed: 1))
        _ = bn.forward(x)
        let dy = GradCheck.random(count, seed: 2)
        let plain = bn.backward(Tensor(shape, dy)).array
        let owned = Tensor(shape, dy)
        let inPlace = bn.backward(owned, inPlace: true)
        XCTAssertTrue(inPlace === owned)
        XCTAssertEqual(inPlace.array, plain)

        let relu = ReLU()
        _ = relu.forward(x)
        let reluOwned = Tensor(shape, dy)
        XCTAssertEqual(relu.backward(reluOwned, inPlace: true).array, relu.backward(Tensor(shape, dy)).array)

        // [skip 2 ch | upsampled 3 ch]: the upsampling's gradient read in place from channels 2..<5.
        let up = Trilinear(factor: 2, alignCorners: false)
        let cat = Concat()
        let coarse = Tensor([2, 3, 2, 3, 3], GradCheck.random(108, seed: 3))
        let skip = Tensor([2, 2, 4, 6, 6], GradCheck.random(576, seed: 4))
        _ = cat.forward(skip, up.forward(coarse))
        let dCat = Tensor([2, 5, 4, 6, 6], GradCheck.random(1440, seed: 5))
        let (dSkip, dUp) = cat.backward(dCat)
        XCTAssertEqual(cat.backward(dCat, input: 0).array, dSkip.array)
        XCTAssertEqual(cat.channels(ofInput: 1), 2..<5)
        XCTAssertEqual(up.backward(dCat, channels: 2..<5).array, up.backward(dUp).array)
    }

    /// The decoder's concatenation without copies: the upsampling written straight into its channels gives the
    /// same bits as upsampling then concatenating; the skip's gradient made out of the concatenation's
    /// gradient itself (its buffer, cut) equals the copy, on one sample and several, both when a sample's
    /// channels can move in parallel (up channels >= skip channels, as in the model) and when they cannot.
    func testUpsamplingWrittenInPlaceAndSkipGradientTakenOverEqualTheCopies() {
        for (n, cSkip, cUp) in [(1, 2, 3), (2, 2, 3), (3, 3, 2), (2, 16, 32)] {
            let coarse = tensor([n, cUp, 2, 3, 3], seed: 10)
            let skip = tensor([n, cSkip, 4, 6, 6], seed: 11)
            let up = Trilinear(factor: 2, alignCorners: false)
            let cat = Concat()
            let plain = cat.forward(skip, up.forward(coarse)).array
            let upInPlace = Trilinear(factor: 2, alignCorners: false)
            let catInPlace = Concat()
            let (y, channels) = catInPlace.forward(skip, writingSecond: upInPlace.outputShape(for: coarse.shape))
            // Garbage where the upsampling must write: every value must be overwritten.
            for c in channels {
                for b in 0..<n { (y.pointer + ((b * (cSkip + cUp)) + c) * 144).update(repeating: .nan, count: 144) }
            }
            upInPlace.forward(coarse, into: y, channels: channels)
            XCTAssertEqual(channels, cSkip..<(cSkip + cUp))
            XCTAssertEqual(y.array, plain, "n \(n), skip \(cSkip), up \(cUp)")

            let shape = [n, cSkip + cUp, 4, 6, 6]
            let r = GradCheck.random(shape.reduce(1, *), seed: 12)
            let dUp = up.backward(Tensor(shape, r), channels: channels)
            let dSkip = cat.backward(Tensor(shape, r), input: 0)
            var dCat = Tensor.recycled(shape)
            _ = dCat.data.initialize(from: r)
            let p = dCat.pointer
            XCTAssertEqual(upInPlace.backward(dCat, channels: channels).array, dUp.array)
            let live = TensorMemory.liveBytes
            let taken = catInPlace.backwardOfFirst(taking: &dCat)
            XCTAssertEqual(taken.pointer, p, "the concatenation's gradient becomes the skip's")
            XCTAssertEqual(TensorMemory.liveBytes, live - 4 * n * cUp * 144, "its other channels given back")
            XCTAssertEqual(taken.shape, skip.shape)
            XCTAssertEqual(taken.array, dSkip.array, "n \(n), skip \(cSkip), up \(cUp)")
            // Held elsewhere too: a copy, and the concatenation's gradient untouched.
            var held = Tensor.recycled(shape)
            _ = held.data.initialize(from: r)
            let other = held
            XCTAssertEqual(catInPlace.backwardOfFirst(taking: &held).array, dSkip.array)
            XCTAssertEqual(other.array, r)
        }
    }
}
