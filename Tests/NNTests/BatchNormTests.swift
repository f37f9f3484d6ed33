import Foundation
import Support
import Tensor
import XCTest

@testable import NN

/// BatchNorm3d: batch/running statistics against hand-computed values, finite differences in training and
/// evaluation mode, and the SyncBN reducer hook.
/// Two threads that swap one buffer per round, as two MPI ranks in an all-gather.
final class PairExchange: @unchecked Sendable {
    private let cond = NSCondition()
    private var posted: [[Double]?] = [nil, nil]
    private var taken = [false, false]
    private(set) var rounds = 0

    /// Posts `mine` as `rank`'s buffer, waits for the other rank's, and returns it.
    func swap(rank: Int, _ mine: [Double]) -> [Double] {
        cond.lock()
        defer { cond.unlock() }
        while posted[rank] != nil { cond.wait() }  // the previous round is still being read
        posted[rank] = mine
        cond.broadcast()
        while posted[1 - rank] == nil || taken[rank] { cond.wait() }
        let other = posted[1 - rank]!
        taken[rank] = true
        if taken[1 - rank] {  // both have read: the round is over
            posted = [nil, nil]
            taken = [false, false]
            rounds += 1
        }
        cond.broadcast()
        return other
    }
}

final class BatchNormTests: XCTestCase {
    override func tearDown() {
        Parallelism.threads = 1
        super.tearDown()
    }

    static let shape = [2, 3, 3, 4, 5]  // N, C, Z, Y, X: M = 2*60 = 120 values per channel

    /// A layer (reset to PyTorch's initial state, then given non-trivial gamma/beta) and an input whose channels
    /// have different offsets and scales.
    func make(seed: UInt64 = 1) -> (BatchNorm3d, ParameterStore, ParameterStore, Tensor) {
        let params = ParameterStore()
        let buffers = ParameterStore()
        let bn = BatchNorm3d(params: params, buffers: buffers, name: "conv1.conv1.1", channels: Self.shape[1])
        params.allocate()
        buffers.allocate()
        bn.resetParameters()
        for c in 0..<bn.channels {
            bn.weight.value[c] = 0.5 + 0.4 * Float(c)
            bn.bias.value[c] = -0.3 + 0.2 * Float(c)
        }
        let count = Self.shape.reduce(1, *)
        var v = GradCheck.random(count, seed: seed)
        let per = count / (Self.shape[0] * Self.shape[1])
        for i in 0..<count {
            let c = (i / per) % Self.shape[1]
            v[i] = v[i] * Float(1 + c) + Float(c) * 1.5 - 1
        }
        return (bn, params, buffers, Tensor(Self.shape, v))
    }

    /// Per-channel (mean, biased variance, count) in Double.
    func stats(_ x: Tensor) -> [(mean: Double, variance: Double, m: Double)] {
        let n = x.shape[0]
        let c = x.shape[1]
        let v = x.count / (n * c)
        return (0..<c).map { ch in
            var vals: [Double] = []
            for i in 0..<n { for j in 0..<v { vals.append(Double(x.data[(i * c + ch) * v + j])) } }
            let mean = vals.reduce(0, +) / Double(vals.count)
            let variance = vals.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(vals.count)
            return (mean, variance, Double(vals.count))
        }
    }

    func testRegistersParametersAndBuffers() {
        let (bn, params, buffers, _) = make()
        XCTAssertEqual(params.entries.map(\.name), ["conv1.conv1.1.weight", "conv1.conv1.1.bias"])
        XCTAssertEqual(
            buffers.entries.map(\.name),
            [
                "conv1.conv1.1.running_mean", "conv1.conv1.1.running_var",
                "conv1.conv1.1.num_batches_tracked",
            ])
        XCTAssertEqual(buffers.entries.map(\.shape), [[3], [3], []])
        XCTAssertEqual(buffers.count, 7)
        XCTAssertEqual(bn.runningVar.value[2], 1)
        XCTAssertEqual(bn.numBatchesTracked.value.pointee, 0)
    }

    func testTrainingForwardNormalisesWithBatchStatistics() {
        let (bn, _, _, x) = make()
        let y = bn.forward(x)
        let st = stats(x)
        let n = x.shape[0]
        let c = x.shape[1]
        let v = x.count / (n * c)
        var worst = 0.0
        for i in 0..<x.count {
            let ch = (i / v) % c
            let want =
                (Double(x.data[i]) - st[ch].mean) / (st[ch].variance + 1e-5).squareRoot()
                * Double(bn.weight.value[ch]) + Double(bn.bias.value[ch])
            worst = max(worst, abs(Double(y.data[i]) - want))
        }
        XCTAssertLessThan(worst, 2e-6)
    }

    func testRunningStatisticsUseMomentumAndUnbiasedVariance() {
        let (bn, _, _, x1) = make(seed: 1)
        let (_, _, _, x2) = make(seed: 2)
        _ = bn.forward(x1)
        let s1 = stats(x1)
        for ch in 0..<bn.channels {
            let unbiased = s1[ch].variance * s1[ch].m / (s1[ch].m - 1)
            XCTAssertEqual(Double(bn.runningMean.value[ch]), 0.1 * s1[ch].mean, accuracy: 1e-6)
            XCTAssertEqual(Double(bn.runningVar.value[ch]), 0.9 + 0.1 * unbiased, accuracy: 1e-6)
        }
        _ = bn.forward(x2)
        let s2 = stats(x2)
        for ch in 0..<bn.channels {
            let u1 = s1[ch].variance * 120 / 119
            let u2 = s2[ch].variance * 120 / 119
            XCTAssertEqual(
                Double(bn.runningMean.value[ch]), 0.9 * 0.1 * s1[ch].mean + 0.1 * s2[ch].mean, accuracy: 1e-6)
            XCTAssertEqual(Double(bn.runningVar.value[ch]), 0.9 * (0.9 + 0.1 * u1) + 0.1 * u2, accuracy: 1e-5)
        }
        XCTAssertEqual(bn.numBatchesTracked.value.pointee, 2)

        // Evaluation mode leaves the running statistics alone and normalises with them.
        bn.training = false
        let rm = (0..<3).map { bn.runningMean.value[$0] }
        let rv = (0..<3).map { bn.runningVar.value[$0] }
        let y = bn.forward(x1)
        XCTAssertEqual((0..<3).map { bn.runningMean.value[$0] }, rm)
        XCTAssertEqual((0..<3).map { bn.runningVar.value[$0] }, rv)
        XCTAssertEqual(bn.numBatchesTracked.value.pointee, 2)
        let v = x1.count / 6
        for i in Swift.stride(from: 0, to: x1.count, by: 7) {
            let ch = (i / v) % 3
            let want =
                (Double(x1.data[i]) - Double(rm[ch])) / (Double(rv[ch]) + 1e-5).squareRoot()
                * Double(bn.weight.value[ch]) + Double(bn.bias.value[ch])
            XCTAssertEqual(Double(y.data[i]), want, accuracy: 2e-6)
        }
    }

    func gradCheck(training: Bool, file: StaticString = #filePath, line: UInt = #line) {
        let (bn, params, buffers, x) = make(seed: 3)
        if !training {
            for c in 0..<3 {
                bn.runningMean.value[c] = 0.2 * Float(c) - 0.1
                bn.runningVar.value[c] = 0.5 + Float(c)
            }
            bn.training = false
        }
        let y = bn.forward(x)
        let r = GradCheck.random(y.count, seed: 21)
        params.zeroGrads()
        let dx = bn.backward(Tensor(y.shape, r)).array
        let dg = Array(UnsafeBufferPointer(start: bn.weight.grad, count: 3))
        let db = Array(UnsafeBufferPointer(start: bn.bias.grad, count: 3))
        let frozen = buffers.values.array
        // Training mode: every evaluation recomputes the batch statistics of the perturbed input.
        let loss = { GradCheck.dot(bn.forward(x).data, r) }
        let mode = training ? "train" : "eval"
        GradCheck.check(
            "bn \(mode) dx", parameter: x.pointer, count: x.count, analytic: dx, h: 1e-2, relTol: 2e-3,
            samples: 60, loss: loss, file: file, line: line)
        GradCheck.check(
            "bn \(mode) dgamma", parameter: bn.weight.value, count: 3, analytic: dg, relTol: 1e-3,
            loss: loss, file: file, line: line)
        GradCheck.check(
            "bn \(mode) dbeta", parameter: bn.bias.value, count: 3, analytic: db, relTol: 1e-3,
            loss: loss, file: file, line: line)
        if !training { XCTAssertEqual(buffers.values.array, frozen, file: file, line: line) }
    }

    func testGradCheckTraining() { gradCheck(training: true) }

    func testGradCheckEvaluation() { gradCheck(training: false) }

    func testTrainingBackwardMatchesClosedForm() {
        // dx = gamma/sigma * (dy - mean(dy) - xhat * mean(dy*xhat)), in Double, on every element.
        let (bn, params, _, x) = make(seed: 4)
        let y = bn.forward(x)
        let r = GradCheck.random(y.count, seed: 5)
        params.zeroGrads()
        let dx = bn.backward(Tensor(y.shape, r))
        let st = stats(x)
        let v = x.count / 6
        for ch in 0..<3 {
            let sigma = (st[ch].variance + 1e-5).squareRoot()
            var idx: [Int] = []
            for n in 0..<2 { for j in 0..<v { idx.append((n * 3 + ch) * v + j) } }
            let xhat = idx.map { (Double(x.data[$0]) - st[ch].mean) / sigma }
            let dys = idx.map { Double(r[$0]) }
            let mdy = dys.reduce(0, +) / st[ch].m
            let mdyx = zip(dys, xhat).map(*).reduce(0, +) / st[ch].m
            for (k, i) in idx.enumerated() {
                let want = Double(bn.weight.value[ch]) / sigma * (dys[k] - mdy - xhat[k] * mdyx)
                XCTAssertEqual(Double(dx.data[i]), want, accuracy: 1e-5)
            }
            XCTAssertEqual(Double(bn.weight.grad[ch]), mdyx * st[ch].m, accuracy: 1e-4)
            XCTAssertEqual(Double(bn.bias.grad[ch]), mdy * st[ch].m, accuracy: 1e-4)
        }
    }

    func testReducerDoublingSumsMatchesLocal() throws {
        let (local, localParams, _, x) = make(seed: 6)
        let (synced, syncedParams, _, _) = make(seed: 6)
        var calls: [Int] = []
        synced.statisticsReducer = { buf in
            calls.append(buf.count)
            if buf.count == 7 { XCTAssertEqual(buf[6], 120) }  // the element count rides along in forward
            for i in buf.indices { buf[i] *= 2 }  // two identical ranks
        }
        let y0 = local.forward(x).array
        let y1 = try synced.forwardThrowing(x).array
        XCTAssertEqual(calls, [7])
        for (a, b) in zip(y0, y1) { XCTAssertEqual(a, b, accuracy: 1e-5) }

        let dy = Tensor(Self.shape, GradCheck.random(x.count, seed: 7))
        localParams.zeroGrads()
        syncedParams.zeroGrads()
        let dx0 = local.backward(dy).array
        let dx1 = try synced.backwardThrowing(dy).array
        XCTAssertEqual(calls, [7, 6])
        for (a, b) in zip(dx0, dx1) { XCTAssertEqual(a, b, accuracy: 1e-5) }
        // gamma/beta gradients stay local (the trainer's all-reduce combines them).
        for (a, b) in zip(localParams.grads.array, syncedParams.grads.array) { XCTAssertEqual(a, b, accuracy: 1e-5) }

        // The running variance's unbiasing uses the global count 2M = 240, not M = 120.
        let st = stats(x)
        for ch in 0..<3 {
            XCTAssertEqual(Double(synced.runningVar.value[ch]), 0.9 + 0.1 * st[ch].variance * 240 / 239, accuracy: 1e-6)
            XCTAssertEqual(Double(local.runningVar.value[ch]), 0.9 + 0.1 * st[ch].variance * 120 / 119, accuracy: 1e-6)
        }

        // Evaluation mode never calls the reducer.
        synced.training = false
        _ = synced.forward(x)
        _ = synced.backward(dy)
        XCTAssertEqual(calls, [7, 6])
    }

    /// SyncBN as two ranks really run it: two layers on the two halves of a batch (halves with different
    /// statistics), each on its own thread, whose reducers exchange their sums and add the other's. Forward
    /// outputs, input gradients and running statistics equal one layer over the whole batch elementwise, and the
    /// two ranks' γ/β gradients add up to the whole batch's (the trainer's all-reduce adds them).
    func testTwoRanksOnHalvesOfABatchMatchOneLayerOnTheWholeBatch() throws {
        let (whole, wholeParams, wholeBuffers, x) = make(seed: 11)
        let n = Self.shape[0]
        let half = x.count / n
        // Rank 1's half gets other statistics, so a layer that ignores the reduced sums normalises differently.
        for i in half..<x.count { x.data[i] = x.data[i] * 1.7 + 0.9 }
        let dy = Tensor(Self.shape, GradCheck.random(x.count, seed: 12))
        let y = whole.forward(x).array
        wholeParams.zeroGrads()
        let dx = whole.backward(dy).array

        let exchange = PairExchange()
        var ranks: [(bn: BatchNorm3d, params: ParameterStore, buffers: ParameterStore)] = []
        for r in 0..<2 {
            let (bn, params, buffers, _) = make(seed: 11)
            bn.statisticsReducer = { buf in
                let other = exchange.swap(rank: r, Array(buf))
                for i in buf.indices { buf[i] += other[i] }
            }
            params.zeroGrads()
            ranks.append((bn, params, buffers))
        }
        let halfShape = [n / 2] + Self.shape.dropFirst()
        let outputs = Locked([[Float]](repeating: [], count: 4))
        let layers = UncheckedSendable(ranks.map(\.bn))
        DispatchQueue.concurrentPerform(iterations: 2) { r in
            let xs = Tensor(halfShape, Array(x.data[(r * half)..<((r + 1) * half)]))
            let dys = Tensor(halfShape, Array(dy.data[(r * half)..<((r + 1) * half)]))
            let yr = layers.value[r].forward(xs).array
            let dxr = layers.value[r].backward(dys).array
            outputs.withLock {
                $0[r] = yr
                $0[2 + r] = dxr
            }
        }
        let o = outputs.current
        XCTAssertEqual(exchange.rounds, 2, "one exchange in forward, one in backward")
        for (a, b) in zip(o[0] + o[1], y) { XCTAssertEqual(a, b, accuracy: 1e-5) }
        for (a, b) in zip(o[2] + o[3], dx) { XCTAssertEqual(a, b, accuracy: 1e-5) }
        for r in 0..<2 {
            for (a, b) in zip(ranks[r].buffers.values.array, wholeBuffers.values.array) {
                XCTAssertEqual(a, b, accuracy: 1e-6)
            }
        }
        let summed = zip(ranks[0].params.grads.array, ranks[1].params.grads.array).map { $0 + $1 }
        for (a, b) in zip(summed, wholeParams.grads.array) { XCTAssertEqual(a, b, accuracy: 1e-4) }
    }

    func testReducerErrorPropagates() {
        struct Boom: Error {}
        let (bn, _, _, x) = make()
        bn.statisticsReducer = { _ in throw Boom() }
        XCTAssertThrowsError(try bn.forwardThrowing(x))
    }

    func testTwoThreadsEqualOneThread() {
        var outs: [[Float]] = []
        for t in [1, 2] {
            Parallelism.threads = t
            let (bn, params, _, x) = make(seed: 8)
            let y = bn.forward(x)
            params.zeroGrads()
            let dx = bn.backward(Tensor(y.shape, GradCheck.random(y.count, seed: 9)))
            outs.append(y.array + dx.array + params.grads.array)
        }
        XCTAssertEqual(outs[0], outs[1])
    }
}
