import Collectives
import Foundation
import NN
import Support
import Tensor
import XCTest

@testable import Training  // GradientReduction is internal to the trainer

/// The overlapped gradient all-reduce in-process, on a stand-in for 2 ranks that records what each all-reduce
/// saw: every bucket is handed over inside the backward pass, last bucket first, holding its final gradients
/// (the ones a plain backward pass computes), and the reduced buffer equals the blocking path's bit for bit.
/// The mpirun runs of TrainerTests check the same on real ranks.
final class GradientReductionTests: XCTestCase {
    /// Two ranks with the same gradients: the sum doubles every value. Records each all-reduced bucket (its
    /// offset in `base` and a copy of what it held) in call order, on whichever thread calls.
    final class RecordingCommunicator: Communicator, @unchecked Sendable {
        let base: UnsafeMutablePointer<Float>
        let calls = Locked<[(offset: Int, values: [Float])]>([])
        init(base: UnsafeMutablePointer<Float>) { self.base = base }
        var rank: Int { 0 }
        var size: Int { 2 }
        func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
            calls.withLock { $0.append((buffer.baseAddress! - base, Array(buffer))) }
            for i in buffer.indices { buffer[i] += buffer[i] }
        }
        func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {
            for i in buffer.indices { buffer[i] += buffer[i] }
        }
        func allReduceMax(_ buffer: UnsafeMutableBufferPointer<Double>) throws {}
        func broadcast(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws {}
        func broadcast(bytes: UnsafeMutableRawBufferPointer, root: Int) throws {}
        func allGather(bytes: UnsafeRawBufferPointer) throws -> [UInt8] { [UInt8](bytes) + [UInt8](bytes) }
        func barrier() throws {}
        func subgroup(color: Int, key: Int) throws -> any Communicator { self }
    }

    /// The attention U-Net at feature scale 16 (every kind of layer with parameters), one forward pass on a
    /// seeded input, and a seeded gradient of the logits.
    func makeModel() throws -> (SegmentationModel, Tensor) {
        let model = SegmentationModel(ModelConfig(kind: .attentionUNet, featureScale: 16), seed: 3)
        model.freesKeptTensors = false  // several backward passes on one forward (PyTorch's retain_graph)
        let input = Tensor([1, 1, 16, 32, 32])
        var rng = SeededRNG(7, 1)
        for i in 0..<input.count { input.data[i] = Float(rng.uniform() * 2 - 1) }
        let logits = try model.forward(input)
        let dLogits = Tensor(logits.shape)
        for i in 0..<dLogits.count { dLogits.data[i] = Float(rng.uniform() * 2 - 1) * 1e-3 }
        return (model, dLogits)
    }

    func testOverlappedBucketsAreFinalLastFirstAndBitIdenticalToBlocking() throws {
        let (model, dLogits) = try makeModel()
        let grads = model.params.grads
        // The gradients a plain backward pass computes, with nobody listening.
        model.params.zeroGrads()
        model.backward(dLogits)
        let local = Array(grads.data)
        XCTAssertGreaterThan(local.map { abs($0) }.max()!, 0)

        let bucketFloats = 5_000  // about 80 buckets, the last one partial
        func reduce(overlap: Bool) throws -> (grads: [Float], calls: [(offset: Int, values: [Float])], queued: Int) {
            let comm = RecordingCommunicator(base: grads.pointer)
            let reduction = GradientReduction(
                comm: comm, params: model.params, bucketFloats: bucketFloats, overlap: overlap)
            XCTAssertEqual(reduction.overlaps, overlap)
            model.params.zeroGrads()
            reduction.beginBackward()
            model.backward(dLogits)
            let queued = reduction.queuedDuringBackward
            _ = try reduction.finishBackward()
            XCTAssertNil(model.params.gradientFinished, "the listener is removed after the backward pass")
            return (Array(grads.data), comm.calls.current, queued)
        }
        let blocking = try reduce(overlap: false)
        let overlapped = try reduce(overlap: true)
        let n = grads.count
        let buckets = (n + bucketFloats - 1) / bucketFloats
        XCTAssertGreaterThan(buckets, 20)

        XCTAssertEqual(blocking.calls.map(\.offset), Array(stride(from: 0, to: n, by: bucketFloats)))
        XCTAssertEqual(blocking.queued, 0)
        // Every parameter reports its gradient, so every bucket leaves during the backward pass, from the end.
        XCTAssertEqual(overlapped.queued, buckets, "buckets handed over before the backward pass ended")
        XCTAssertEqual(overlapped.calls.map(\.offset), Array(stride(from: 0, to: n, by: bucketFloats).reversed()))
        for call in overlapped.calls {
            XCTAssertTrue(
                call.values == Array(local[call.offset..<min(n, call.offset + bucketFloats)]),
                "the bucket at \(call.offset) was reduced before its gradients were final")
        }
        XCTAssertTrue(overlapped.grads == blocking.grads, "overlapped and blocking results differ")
        XCTAssertTrue(blocking.grads == local, "2 equal ranks averaged give the local gradient back")
    }

    /// A failing all-reduce on the thread surfaces after the backward pass as the step's error, and the
    /// buckets queued after it are skipped.
    func testAnErrorOnTheThreadIsThrownAfterTheBackwardPass() throws {
        final class Failing: Communicator, @unchecked Sendable {
            let calls = Locked(0)
            var rank: Int { 0 }
            var size: Int { 2 }
            func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
                calls.withLock { $0 += 1 }
                throw AttunetError("MPI Allreduce failed: peer gone")
            }
            func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {}
            func allReduceMax(_ buffer: UnsafeMutableBufferPointer<Double>) throws {}
            func broadcast(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws {}
            func broadcast(bytes: UnsafeMutableRawBufferPointer, root: Int) throws {}
            func allGather(bytes: UnsafeRawBufferPointer) throws -> [UInt8] { [] }
            func barrier() throws {}
            func subgroup(color: Int, key: Int) throws -> any Communicator { self }
        }
        let (model, dLogits) = try makeModel()
        let comm = Failing()
        let reduction = GradientReduction(comm: comm, params: model.params, bucketFloats: 5_000, overlap: true)
        reduction.beginBackward()
        model.backward(dLogits)
        XCTAssertThrowsError(try reduction.finishBackward()) {
            XCTAssertEqual(($0 as? AttunetError)?.message, "MPI Allreduce failed: peer gone")
        }
        XCTAssertEqual(comm.calls.current, 1)
    }
}
