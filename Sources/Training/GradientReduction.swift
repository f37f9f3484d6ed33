import Collectives
import Foundation
import NN
import Tensor

/// The all-reduce that averages the flat gradient buffer over the ranks, in buckets of `bucketFloats`: either
/// after the backward pass (blocking) or overlapped with it.
///
/// **Buckets.** The buffer is cut at multiples of `bucketFloats` from its start, as the blocking all-reduce has
/// always cut it, so every bucket is the same `MPI_Allreduce` of the same floats in both modes and the sums
/// are bit-identical (Open MPI chooses its algorithm, and so the order in which ranks' values are added, from
/// the message size and the rank count; a bucket cut elsewhere could be added in another order on 3 or more
/// ranks).
///
/// **Overlap.** The parameters lie in the buffer in the order the model registers them, from the input to the
/// output, and the backward pass finishes them roughly from the output back. Each layer reports a finished
/// gradient (``ParameterStore/gradientFinished``); the lowest offset above which every gradient is finished
/// (the watermark) moves down the buffer, and every bucket it passes is handed to the ``CommunicationThread``:
/// the last bucket first, then the one below it, in a fixed order on every rank. A layer finished out of that
/// order only delays the buckets below it; it never lets a bucket go early. After the backward pass the rest
/// is queued and the main thread waits for all of it (the exposed time) before the optimizer step.
///
/// Each bucket is scaled by 1/ranks on the thread right after its sum: the same float multiplication the
/// blocking path applies to the whole buffer afterwards.
final class GradientReduction {
    let comm: Communicator
    let params: ParameterStore
    /// The buckets, ascending: `[k·bucketFloats, min((k+1)·bucketFloats, count))`.
    let buckets: [Range<Int>]
    let bucketFloats: Int
    /// The thread that runs the step's collectives while the main thread computes; nil: blocking.
    private var thread: CommunicationThread?
    /// Per parameter entry: its gradient is finished in this backward pass.
    private var done: [Bool]
    /// Entries `watermark...` are all finished.
    private var watermark = 0
    /// The highest bucket not yet queued.
    private var next = 0
    /// Buckets handed to the thread by the backward pass of the last step (the rest left after it).
    private(set) var queuedDuringBackward = 0
    /// Between ``beginBackward()`` and ``finishBackward()`` with the overlap on.
    private var listening = false

    /// Overlapped when `overlap` and there are several ranks and MPI allows a second thread to call it.
    init(comm: Communicator, params: ParameterStore, bucketFloats: Int, overlap: Bool) {
        self.comm = comm
        self.params = params
        let n = params.grads.count
        let b = max(1, bucketFloats)
        self.bucketFloats = b
        buckets = stride(from: 0, to: n, by: b).map { $0..<min($0 + b, n) }
        done = [Bool](repeating: false, count: params.entries.count)
        setOverlap(overlap)
    }

    /// Whether the all-reduce overlaps the backward pass.
    var overlaps: Bool { thread != nil }

    /// Turns the overlap on (when there are several ranks and MPI allows a second thread) or off, between steps.
    func setOverlap(_ on: Bool) {
        if on && comm.size > 1 && MPIRuntime.allowsCommunicationThread {
            if thread == nil { thread = CommunicationThread(name: "attunet-allreduce") }
        } else {
            thread = nil
        }
    }

    /// Runs `body` (a collective) after the queued ones, on the communication thread when there is one:
    /// collectives inside a backward pass (SyncBN's) then keep one order with the buckets on every rank.
    func collective(_ body: @escaping () throws -> Void) throws {
        if let thread { try thread.run(body) } else { try body() }
    }

    /// Call before the backward pass: from now on, finished gradients start their buckets' reduction.
    func beginBackward() {
        guard let thread, comm.size > 1 else { return }
        for i in done.indices { done[i] = false }
        watermark = done.count
        next = buckets.count - 1
        queuedDuringBackward = 0
        listening = true
        params.gradientFinished = { [unowned self] index in self.finished(index, thread: thread) }
    }

    /// Entry `index`'s gradient is final: moves the watermark down and queues every bucket now above it.
    private func finished(_ index: Int, thread: CommunicationThread) {
        done[index] = true
        var w = watermark
        while w > 0 && done[w - 1] { w -= 1 }
        guard w < watermark else { return }
        watermark = w
        let finishedFrom = w == done.count ? params.grads.count : params.entries[w].offset
        while next >= 0 && buckets[next].lowerBound >= finishedFrom {
            queue(next, on: thread)
            next -= 1
            queuedDuringBackward += 1
        }
    }

    /// Call after the backward pass: reduces what is left and waits for every bucket. Returns the seconds the
    /// buckets' all-reduces took (their sum) and the seconds this call waited for them (the exposed part).
    func finishBackward() throws -> (total: Double, exposed: Double) {
        guard comm.size > 1 else { return (0, 0) }
        let t0 = DispatchTime.now().uptimeNanoseconds
        func since() -> Double { Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9 }
        guard let thread, listening else {
            try reduceBlocking()
            let s = since()
            return (s, s)
        }
        params.gradientFinished = nil
        listening = false
        while next >= 0 {
            queue(next, on: thread)
            next -= 1
        }
        let busy = try thread.waitAll()
        return (busy, since())
    }

    /// The blocking path: every bucket in buffer order, then the whole buffer scaled by 1/ranks.
    private func reduceBlocking() throws {
        let g = params.grads.data
        for r in buckets {
            try comm.allReduceSum(UnsafeMutableBufferPointer(rebasing: g[r]))
        }
        let scale = 1 / Float(comm.size)
        for i in 0..<g.count { g[i] *= scale }
    }

    private func queue(_ k: Int, on thread: CommunicationThread) {
        let bucket = UnsafeMutableBufferPointer(rebasing: params.grads.data[buckets[k]])
        let comm = comm
        let scale = 1 / Float(comm.size)
        thread.submit {
            try comm.allReduceSum(bucket)
            for i in bucket.indices { bucket[i] *= scale }
        }
    }
}
