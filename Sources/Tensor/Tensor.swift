import Foundation
import Support

/// A dense float32 array with an owned, 64-byte-aligned allocation.
///
/// Activations use the layout `[N][C][Z][Y][X]` (X fastest, as NIfTI stores voxels). The class owns its memory;
/// hot loops take `data` (an `UnsafeMutableBufferPointer`) once and work on raw pointers, never per-element
/// subscripts.
public final class Tensor: @unchecked Sendable {
    public private(set) var shape: [Int]
    public private(set) var data: UnsafeMutableBufferPointer<Float>

    /// Whether the allocation goes back to ``TensorPool`` when the tensor dies.
    private let pooled: Bool

    /// A zero-filled tensor of the given shape.
    public init(_ shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in shape \(shape)")
        self.shape = shape
        let count = shape.reduce(1, *)
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * MemoryLayout<Float>.stride, alignment: 64)
        let p = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        // In a count-only run (`LoopCount.countOnly`) nothing reads the values: its pages stay untouched.
        if !LoopCount.isDryRun { p.initialize(repeating: 0, count: max(count, 1)) }
        data = UnsafeMutableBufferPointer(start: p, count: count)
        pooled = false
        TensorPool.noteOwned(max(count, 1))
    }

    private init(shape: [Int], pooledStorage p: UnsafeMutablePointer<Float>) {
        self.shape = shape
        data = UnsafeMutableBufferPointer(start: p, count: shape.reduce(1, *))
        pooled = true
    }

    /// A tensor whose memory comes from ``TensorPool`` (a buffer of the same size that another recycled
    /// tensor released, or a fresh one) and goes back there when the tensor dies. Its contents are whatever
    /// the buffer held: the caller must write every element. Layers return their gradients (and forward
    /// results nobody keeps) this way, so a buffer lives only while someone uses it and the next step reuses
    /// it without a page fault or a zero fill.
    public static func recycled(_ shape: [Int]) -> Tensor {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in shape \(shape)")
        return Tensor(shape: shape, pooledStorage: TensorPool.take(max(shape.reduce(1, *), 1)))
    }

    /// Whether `t` is a recycled tensor that no other reference holds: ``shrink(_:to:)`` may then cut it.
    public static func isSoleRecycled(_ t: inout Tensor) -> Bool { t.pooled && isKnownUniquelyReferenced(&t) }

    /// Cuts a recycled tensor that no other reference holds (``isSoleRecycled(_:)``) to its first elements, as
    /// `shape`, and gives the rest of its buffer back to the pool: a layer can hand out part of a gradient it
    /// computed as the gradient of one input without copying it.
    public static func shrink(_ t: inout Tensor, to shape: [Int]) {
        precondition(isSoleRecycled(&t), "Tensor.shrink: a tensor that is not recycled or is held elsewhere")
        let count = shape.reduce(1, *)
        precondition(shape.allSatisfy { $0 >= 0 } && count <= t.count, "Tensor.shrink: \(t.shape) to \(shape)")
        TensorPool.shrink(t.pointer, used: max(t.count, 1), to: max(count, 1))
        t.data = UnsafeMutableBufferPointer(start: t.pointer, count: count)
        t.shape = shape
    }

    /// A tensor holding a copy of `values`.
    public convenience init(_ shape: [Int], _ values: [Float]) {
        self.init(shape)
        precondition(values.count == count, "shape \(shape) needs \(count) values, got \(values.count)")
        _ = data.initialize(from: values)
    }

    deinit {
        if pooled {
            TensorPool.give(data.baseAddress!, used: max(data.count, 1))
        } else {
            UnsafeMutableRawPointer(data.baseAddress!).deallocate()
            TensorPool.noteOwned(-max(data.count, 1))
        }
    }

    public var count: Int { data.count }
    public var pointer: UnsafeMutablePointer<Float> { data.baseAddress! }
    public var array: [Float] { Array(data) }

    /// Changes the shape without touching the data (element count must not change).
    public func reshape(_ newShape: [Int]) {
        precondition(newShape.reduce(1, *) == count, "cannot reshape \(shape) to \(newShape)")
        shape = newShape
    }

    /// Every element set to `v`, in pieces on `Parallelism.threads` threads.
    public func fill(_ v: Float) {
        let p = pointer
        parallelForPieces(planes: 1, length: count) { _, r in (p + r.lowerBound).update(repeating: v, count: r.count) }
    }
    public func zero() { fill(0) }

    public func copy(from other: Tensor) {
        precondition(other.count == count, "copy: \(other.shape) into \(shape)")
        pointer.update(from: other.pointer, count: count)
    }

    /// The tensor in `slot` when it already has `shape` (its old contents kept), else a new zero-filled one
    /// stored there: a layer's output buffers are allocated once per input shape, not per step (gradients are
    /// recycled tensors instead, see `recycled(_:)`).
    @inline(__always)
    public static func reuse(_ slot: inout Tensor?, _ shape: [Int]) -> Tensor {
        if let t = slot, t.shape == shape { return t }
        let t = Tensor(shape)
        slot = t
        return t
    }

    public func clone() -> Tensor {
        let t = Tensor(shape)
        t.copy(from: self)
        return t
    }

    /// Fills `count` floats at `p` with deterministic values in [-scale, scale) (xorshift from `seed`): cheap
    /// enough for 100M floats, for benchmarks and probes that need non-trivial data.
    public static func fillDeterministic(_ p: UnsafeMutablePointer<Float>, count: Int, seed: UInt64, scale: Float) {
        var s = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        for i in 0..<count {
            s ^= s << 13
            s ^= s >> 7
            s ^= s << 17
            p[i] = scale * (Float(s >> 40) / Float(1 << 23) - 1)
        }
    }

    /// Maximum absolute value (0 for an empty tensor).
    public var maxAbs: Float {
        var m: Float = 0
        for v in data { m = max(m, abs(v)) }
        return m
    }
}

/// Spatial extent of a 3D volume: `z` slowest, `x` fastest.
public struct Dim3: Hashable, Sendable, Codable, CustomStringConvertible {
    public var z: Int, y: Int, x: Int
    public init(z: Int, y: Int, x: Int) {
        self.z = z
        self.y = y
        self.x = x
    }
    public var count: Int { z * y * x }
    public var description: String { "\(x)x\(y)x\(z)" }  // users read sizes as X x Y x Z
    public func scaled(by f: Int) -> Dim3 { Dim3(z: z * f, y: y * f, x: x * f) }
    public func divided(by f: Int) -> Dim3 { Dim3(z: z / f, y: y / f, x: x / f) }
}

extension Tensor {
    /// self += other (same element count).
    public func add(_ other: Tensor) {
        precondition(other.count == count, "add: \(other.shape) into \(shape)")
        let d = pointer
        let s = other.pointer
        parallelForPieces(planes: 1, length: count) { _, r in
            for i in r { d[i] += s[i] }
        }
    }

    /// Spatial extent of an [N, C, Z, Y, X] tensor.
    public var dim3: Dim3 {
        precondition(shape.count == 5, "dim3 of a tensor of rank \(shape.count)")
        return Dim3(z: shape[2], y: shape[3], x: shape[4])
    }
}

/// Memory for ``Tensor/recycled(_:)`` tensors: PyTorch's caching allocator, in small, with a plan for the
/// steps that repeat.
///
/// Buffers come from segments that are kept while in use: a request takes the smallest free block that holds
/// it (splitting off the rest as a free block), a freed block merges with its free neighbours, and only when no
/// free block is large enough is a new segment of the request's size allocated. The free block at the end of a
/// segment (its tail) serves a request only when no other free block holds it, so how requests are placed
/// does not depend on how large a segment is.
///
/// A training step (or a prediction tile) makes the same requests in the same order every time. So the pool
/// records the requests of the first one (from ``beginStep()``), and ``settle(slack:)`` after it replaces the
/// segments that step grew one by one with a single one laid out for it: every block the step took and gave
/// back gets an offset where it overlaps no block live at the same time, the largest first, each as low as it
/// fits ("greedy by size"), so the segment needs little more than the most the step had live at once, where
/// best fit leaves holes (a 300 MB block freed below a 900 MB request). The later steps' requests, matched to
/// the plan in order, go where it says; a request the plan does not expect (or whose place is taken) is placed
/// by best fit instead. The settle writes once to every page the plan uses, so the steps after it take no
/// page fault and no zero fill. Thread-safe.
public enum TensorPool {
    struct Block {
        var offset: Int, size: Int, free: Bool
    }

    /// The blocks of one segment, in address order, covering it without gaps.
    struct Blocks {
        var list: [Block]
        /// The highest end of any block handed out (floats from the base): the part of the segment touched.
        var highWater = 0

        init(capacity: Int) { list = [Block(offset: 0, size: capacity, free: true)] }

        var idle: Bool { list.count == 1 && list[0].free }

        /// The free block that best fits `need`: the smallest (then the lowest) of the free blocks before the
        /// tail, else the tail when it holds `need` (`tail` says which).
        func bestFit(_ need: Int) -> (index: Int, size: Int, tail: Bool)? {
            var best: (index: Int, size: Int, tail: Bool)?
            for (i, b) in list.enumerated() where b.free && b.size >= need && i < list.count - 1 {
                if let c = best, c.size <= b.size { continue }
                best = (i, b.size, false)
            }
            if best == nil, let last = list.last, last.free, last.size >= need {
                best = (list.count - 1, last.size, true)
            }
            return best
        }

        /// Hands out `need` floats at the start of free block `i`; returns their offset.
        mutating func place(_ i: Int, _ need: Int) -> Int {
            let b = list[i]
            list[i] = Block(offset: b.offset, size: need, free: false)
            if b.size > need { list.insert(Block(offset: b.offset + need, size: b.size - need, free: true), at: i + 1) }
            highWater = max(highWater, b.offset + need)
            return b.offset
        }

        /// Hands out `need` floats at `offset` when they lie in one free block; false otherwise.
        mutating func place(at offset: Int, _ need: Int) -> Bool {
            let i = last(atOrBelow: offset)
            guard i >= 0, list[i].free, offset + need <= list[i].offset + list[i].size else { return false }
            let b = list[i]
            var pieces = [Block]()
            if offset > b.offset { pieces.append(Block(offset: b.offset, size: offset - b.offset, free: true)) }
            pieces.append(Block(offset: offset, size: need, free: false))
            let end = b.offset + b.size
            if end > offset + need {
                pieces.append(Block(offset: offset + need, size: end - offset - need, free: true))
            }
            list.replaceSubrange(i...i, with: pieces)
            highWater = max(highWater, offset + need)
            return true
        }

        /// Frees the block at `offset`, merged with its free neighbours; false when there is none.
        mutating func free(at offset: Int) -> Bool {
            var i = last(atOrBelow: offset)
            guard i >= 0, list[i].offset == offset, !list[i].free else { return false }
            list[i].free = true
            if i + 1 < list.count && list[i + 1].free {
                list[i].size += list[i + 1].size
                list.remove(at: i + 1)
            }
            if i > 0 && list[i - 1].free {
                list[i - 1].size += list[i].size
                list.remove(at: i)
                i -= 1
            }
            return true
        }

        /// Keeps the first `need` floats of the block at `offset` and frees the rest.
        mutating func shrink(at offset: Int, to need: Int) {
            let i = last(atOrBelow: offset)
            guard i >= 0, list[i].offset == offset, !list[i].free, list[i].size > need else { return }
            let rest = list[i].size - need
            list[i].size = need
            if i + 1 < list.count && list[i + 1].free {
                list[i + 1].offset -= rest
                list[i + 1].size += rest
            } else {
                list.insert(Block(offset: offset + need, size: rest, free: true), at: i + 1)
            }
        }

        /// The last block that starts at or below `offset` (-1 if none), by binary search.
        private func last(atOrBelow offset: Int) -> Int {
            var lo = 0
            var hi = list.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if list[mid].offset <= offset { lo = mid + 1 } else { hi = mid }
            }
            return lo - 1
        }
    }

    private struct Segment {
        let capacity: Int
        var blocks: Blocks
        /// Serves no new request; returned to the system when its last block is freed.
        var retired = false
    }

    /// A request since the last settle: a take of `floats` (> 0), a give (0), or a shrink to `-floats`, of the
    /// block at `address`.
    struct Request {
        var address: Int, floats: Int
    }

    /// The settled segment's layout for the requests of one step: each take's size and offsets (the first free
    /// one serves it), and the take the next request should be.
    private struct Plan {
        var base: UnsafeMutablePointer<Float>
        var takes: [(floats: Int, offsets: [Int])]
        var next = 0
    }

    private struct State {
        var segments: [UnsafeMutablePointer<Float>: Segment] = [:]
        /// The segment (its base) of every handed-out pointer.
        var owner: [UnsafeMutablePointer<Float>: UnsafeMutablePointer<Float>] = [:]
        var liveFloats = 0, peakLiveFloats = 0, fresh = 0
        /// Floats of every tensor (recycled or not) live now, and the most at once since ``TensorMemory/resetPeak()``.
        var allFloats = 0, peakAllFloats = 0
        /// The requests since the last settle or ``beginStep()`` (until there are `maxRequests`: then none).
        var requests: [Request] = []
        var requestsOverflowed = false
        /// Whether `requests` start where a step starts (``beginStep()``).
        var recordingStep = false
        var plan: Plan?
    }
    private static let state = Locked(State())
    /// Blocks start on 64-byte boundaries.
    private static let granule = 16
    /// The most requests kept for the next settle (a training step of the paper's model makes about 500).
    static let maxRequests = 1 << 16

    /// Segments of this many floats (1 MiB) or more are mapped from the system directly, and unmapped when
    /// freed; smaller ones come from malloc. malloc serves requests below its mmap threshold (which grows to
    /// 32 MiB as large blocks are freed) from its heap, which keeps their pages when they are freed: the first
    /// step's segments would then stay resident beside the settled one.
    static let mappedFloats = 1 << 18

    private static func allocate(_ floats: Int) -> UnsafeMutablePointer<Float> {
        let bytes = floats * MemoryLayout<Float>.stride
        if floats >= mappedFloats {
            guard let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED
            else {
                fatalError("TensorPool: cannot map \(bytes) bytes for tensors (out of memory)")
            }
            return p.bindMemory(to: Float.self, capacity: floats)
        }
        return UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64).bindMemory(
            to: Float.self, capacity: floats)
    }

    private static func free(_ segments: [(UnsafeMutablePointer<Float>, Int)]) {
        for (p, floats) in segments {
            if floats >= mappedFloats {
                munmap(p, floats * MemoryLayout<Float>.stride)
            } else {
                UnsafeMutableRawPointer(p).deallocate()
            }
        }
    }

    private static func rounded(_ count: Int) -> Int { (count + granule - 1) / granule * granule }

    private static func log(_ st: inout State, _ p: UnsafeMutablePointer<Float>, _ floats: Int) {
        if st.requestsOverflowed { return }
        if st.requests.count == maxRequests {
            st.requestsOverflowed = true
            st.requests = []
            return
        }
        st.requests.append(Request(address: Int(bitPattern: p), floats: floats))
    }

    /// Where the plan puts a request of `need` floats, if it expects one (the next take it lists, or its first,
    /// which starts a new step) and that place is free.
    private static func planned(_ st: inout State, _ need: Int) -> UnsafeMutablePointer<Float>? {
        guard var plan = st.plan, st.segments[plan.base]?.retired == false else { return nil }
        defer { st.plan = plan }
        let k: Int
        if plan.takes[plan.next].floats == need {
            k = plan.next
        } else if plan.takes[0].floats == need {
            k = 0
        } else {
            return nil
        }
        plan.next = (k + 1) % plan.takes.count
        for offset in plan.takes[k].offsets where st.segments[plan.base]!.blocks.place(at: offset, need) {
            return plan.base + offset
        }
        return nil
    }

    static func take(_ count: Int) -> UnsafeMutablePointer<Float> {
        let need = rounded(count)
        return state.withLock { st in
            st.liveFloats += count
            st.peakLiveFloats = max(st.peakLiveFloats, st.liveFloats)
            st.allFloats += count
            st.peakAllFloats = max(st.peakAllFloats, st.allFloats)
            if let p = planned(&st, need) {
                st.owner[p] = st.plan!.base
                log(&st, p, need)
                return p
            }
            // Best fit over the segments (tails last); ties go to the lower address, so the same requests get the
            // same blocks every run.
            var best: (base: UnsafeMutablePointer<Float>, index: Int, rank: (Int, Int, Int))?
            for (base, seg) in st.segments where !seg.retired {
                guard let c = seg.blocks.bestFit(need) else { continue }
                let rank = (c.tail ? 1 : 0, c.size, Int(bitPattern: base + seg.blocks.list[c.index].offset))
                if let b = best, b.rank <= rank { continue }
                best = (base, c.index, rank)
            }
            let p: UnsafeMutablePointer<Float>
            if let best {
                p = best.base + st.segments[best.base]!.blocks.place(best.index, need)
                st.owner[p] = best.base
            } else {
                st.fresh += 1
                p = allocate(need)
                var blocks = Blocks(capacity: need)
                _ = blocks.place(0, need)
                st.segments[p] = Segment(capacity: need, blocks: blocks)
                st.owner[p] = p
            }
            log(&st, p, need)
            return p
        }
    }

    static func give(_ p: UnsafeMutablePointer<Float>, used: Int) {
        let release: (UnsafeMutablePointer<Float>, Int)? = state.withLock { st in
            st.liveFloats -= used
            st.allFloats -= used
            guard let base = st.owner.removeValue(forKey: p), st.segments[base]!.blocks.free(at: p - base) else {
                preconditionFailure("TensorPool: a buffer it did not hand out")
            }
            log(&st, p, 0)
            if st.segments[base]!.retired && st.segments[base]!.blocks.idle {
                return (base, st.segments.removeValue(forKey: base)!.capacity)
            }
            return nil
        }
        if let release { free([release]) }
    }

    /// Keeps the first `count` of the `used` floats handed out at `p` and frees the rest of its block.
    static func shrink(_ p: UnsafeMutablePointer<Float>, used: Int, to count: Int) {
        precondition(count <= used, "TensorPool.shrink: \(count) floats from \(used)")
        state.withLock { st in
            st.liveFloats -= used - count
            st.allFloats -= used - count
            guard let base = st.owner[p] else { preconditionFailure("TensorPool: a buffer it did not hand out") }
            st.segments[base]!.blocks.shrink(at: p - base, to: rounded(count))
            log(&st, p, -rounded(count))
        }
    }

    /// One block of a step: its size over its life (a shrink starts a phase) and its offset in the plan.
    struct PlannedBlock {
        /// (floats, index of the first request, index of the last request + 1), sizes decreasing.
        var phases: [(floats: Int, from: Int, to: Int)]
        var offset = 0
    }

    /// The blocks of a step recorded in `requests`, and for every take in order, the blocks it may go to. A block
    /// taken and given back in the step lives from its take to its give (a shrink starts a phase). A block the
    /// step does not give back is held into the next step (an attention map kept for display, a prediction's
    /// logits) and freed there after its successor is taken: it gets two blocks that live through the whole
    /// step, one for each generation.
    static func lifetimes(of requests: [Request]) -> (blocks: [PlannedBlock], takes: [[Int]]) {
        var open: [Int: Int] = [:]  // address -> its take
        var all: [PlannedBlock] = []
        var given: [Bool] = []
        for (i, r) in requests.enumerated() {
            if r.floats > 0 {
                open[r.address] = all.count
                all.append(PlannedBlock(phases: [(r.floats, i, Int.max)]))
                given.append(false)
            } else if let b = open[r.address] {
                all[b].phases[all[b].phases.count - 1].to = i
                if r.floats == 0 {
                    open[r.address] = nil
                    given[b] = true
                } else {
                    all[b].phases.append((-r.floats, i, Int.max))
                }
            }
        }
        var blocks: [PlannedBlock] = []
        var takes: [[Int]] = []
        for (b, g) in zip(all, given) {
            if g {
                takes.append([blocks.count])
                blocks.append(b)
            } else {
                let whole = PlannedBlock(phases: [(b.phases[0].floats, 0, Int.max)])
                takes.append([blocks.count, blocks.count + 1])
                blocks += [whole, whole]
            }
        }
        return (blocks, takes)
    }

    /// Gives `blocks` offsets at which no two live at the same time overlap: the largest first, each at the
    /// lowest offset free for its whole life ("greedy by size"). Returns the high-water mark.
    static func plan(_ blocks: inout [PlannedBlock]) -> Int {
        let order = blocks.indices.sorted {
            (blocks[$0].phases[0].floats, $1) > (blocks[$1].phases[0].floats, $0)
        }
        var placed: [Int] = []
        var mark = 0
        var taken: [(Int, Int)] = []
        for b in order {
            // The ranges the blocks placed so far take while b lives, by offset.
            taken.removeAll(keepingCapacity: true)
            for q in placed {
                var widest = 0
                for pb in blocks[b].phases {
                    for pq in blocks[q].phases where pq.from < pb.to && pb.from < pq.to {
                        widest = max(widest, pq.floats)
                    }
                }
                if widest > 0 { taken.append((blocks[q].offset, blocks[q].offset + widest)) }
            }
            taken.sort { $0.0 < $1.0 }
            let need = blocks[b].phases[0].floats
            var offset = 0
            for (lo, hi) in taken {
                if lo >= offset + need { break }
                offset = max(offset, hi)
            }
            blocks[b].offset = offset
            placed.append(b)
            mark = max(mark, offset + need)
        }
        return mark
    }

    /// The high-water mark of `requests` placed by best fit in one segment of unbounded size, counting only
    /// the blocks both taken and given back among them.
    static func bestFitHighWater(of requests: [Request]) -> Int {
        let takes = lifetimes(of: requests).takes
        var blocks = Blocks(capacity: Int.max / 2)
        var offsetOf: [Int: Int] = [:]
        var t = 0
        for r in requests {
            if r.floats > 0 {
                defer { t += 1 }
                guard takes[t].count == 1, let c = blocks.bestFit(r.floats) else { continue }
                offsetOf[r.address] = blocks.place(c.index, r.floats)
            } else if let o = offsetOf[r.address] {
                if r.floats == 0 {
                    _ = blocks.free(at: o)
                    offsetOf[r.address] = nil
                } else {
                    blocks.shrink(at: o, to: -r.floats)
                }
            }
        }
        return blocks.highWater
    }

    /// Runs `body`, a step (or a prediction tile) that will repeat at one shape. While `settled` is false its
    /// requests are recorded (``beginStep()``) and the pool is laid out for them after it (``settle(slack:)``),
    /// and `settled` becomes true; later runs just run `body`. Training steps, the sliding-window predictor's
    /// tiles and `bench train` share this.
    public static func settling<R>(after settled: inout Bool, _ body: () throws -> R) rethrows -> R {
        if settled { return try body() }
        beginStep()
        let result = try body()
        settle()
        settled = true
        return result
    }

    /// Starts recording the requests of a step (or a prediction tile) that will repeat, for the next
    /// ``settle(slack:)`` to lay out. Call it before the first step at a new shape.
    public static func beginStep() {
        state.withLock { st in
            st.requests.removeAll(keepingCapacity: true)
            st.requestsOverflowed = false
            st.recordingStep = true
        }
    }

    /// Retires every segment (each is returned to the system as soon as nothing in it is live) and reserves one
    /// free segment for the steps to come, of `slack` times what they need: after ``beginStep()``, the high-water
    /// mark of the plan that lays out the recorded step, whose requests then go where it says; otherwise the
    /// most that was live at once since the last settle or, when more, the high-water mark of best fit on the
    /// requests since then. The settle writes once to every page of that mark, so the next step
    /// takes no page fault. Call it after the first training step at a new shape: from then on the step's
    /// requests share that one segment instead of the many the first step grew, each sized for the request
    /// that first needed it. The slack is for requests that come in another order and costs no memory unless one
    /// needs it.
    public static func settle(slack: Double = 1.25) {
        var touch: (UnsafeMutablePointer<Float>, Int)?
        let released = state.withLock { st -> [(UnsafeMutablePointer<Float>, Int)] in
            var idle: [(UnsafeMutablePointer<Float>, Int)] = []
            for (base, seg) in st.segments {
                if seg.blocks.idle { idle.append((base, seg.capacity)) } else { st.segments[base]!.retired = true }
            }
            for (base, _) in idle { st.segments[base] = nil }
            var mark: Int
            var takes: [(floats: Int, offsets: [Int])] = []
            if st.requestsOverflowed {
                mark = st.peakLiveFloats
            } else if st.recordingStep {
                var (blocks, order) = lifetimes(of: st.requests)
                mark = plan(&blocks)
                takes = zip(st.requests.filter { $0.floats > 0 }, order).map { r, b in
                    (r.floats, b.map { blocks[$0].offset })
                }
            } else {
                mark = max(st.peakLiveFloats, bestFitHighWater(of: st.requests))
            }
            mark = max(mark, granule)
            let floats = rounded(Int(Double(mark) * slack))
            st.peakLiveFloats = st.liveFloats
            st.requests.removeAll(keepingCapacity: true)
            st.requestsOverflowed = false
            st.recordingStep = false
            let p = allocate(floats)
            var blocks = Blocks(capacity: floats)
            blocks.highWater = mark
            st.segments[p] = Segment(capacity: floats, blocks: blocks)
            st.plan = takes.isEmpty ? nil : Plan(base: p, takes: takes)
            touch = (p, mark)
            return idle
        }
        free(released)
        // One write per page of what the next step will use: its page faults, taken here instead.
        if let (p, floats) = touch, !LoopCount.isDryRun {
            let page = 4096 / MemoryLayout<Float>.stride
            parallelForPieces(planes: 1, length: (floats + page - 1) / page) { _, r in
                for i in r { p[i * page] = 0 }
            }
        }
    }

    /// Returns every segment with nothing live in it to the system (after work whose sizes will not come again).
    public static func trim() {
        let released = state.withLock { st -> [(UnsafeMutablePointer<Float>, Int)] in
            let idle = st.segments.filter { $0.value.blocks.idle }.map { ($0.key, $0.value.capacity) }
            for (base, _) in idle { st.segments[base] = nil }
            if let plan = st.plan, st.segments[plan.base] == nil { st.plan = nil }
            return idle
        }
        free(released)
    }

    /// Counts a tensor that owns its memory (not recycled): `floats` more (or, negative, fewer) live.
    static func noteOwned(_ floats: Int) {
        state.withLock { st in
            st.allFloats += floats
            st.peakAllFloats = max(st.peakAllFloats, st.allFloats)
        }
    }

    fileprivate static var allBytes: (live: Int, peak: Int) {
        state.withLock { ($0.allFloats * MemoryLayout<Float>.stride, $0.peakAllFloats * MemoryLayout<Float>.stride) }
    }

    fileprivate static func resetAllPeak() { state.withLock { $0.peakAllFloats = $0.allFloats } }

    /// Buffers allocated from the system so far because no free block was large enough (a steady-state training
    /// step adds none).
    public static var freshAllocations: Int { state.withLock { $0.fresh } }

    /// The most bytes live recycled tensors held at once since the last ``settle(slack:)`` (their sizes, not
    /// their blocks').
    public static var peakLiveBytes: Int { state.withLock { $0.peakLiveFloats } * MemoryLayout<Float>.stride }

    /// Bytes in free blocks, held for reuse.
    public static var cachedBytes: Int {
        state.withLock { st in
            st.segments.values.reduce(0) { $0 + $1.blocks.list.filter(\.free).reduce(0) { $0 + $1.size } }
        } * MemoryLayout<Float>.stride
    }

    /// Bytes of every segment up to its high-water mark (the highest end of any block it handed out, or, for
    /// the settled segment, what the settle wrote to): the pool's part of the resident memory.
    public static var touchedBytes: Int {
        state.withLock { st in st.segments.values.reduce(0) { $0 + $1.blocks.highWater } } * MemoryLayout<Float>.stride
    }

    /// Bytes of every segment, in use or not.
    public static var reservedBytes: Int {
        state.withLock { st in st.segments.values.reduce(0) { $0 + $1.capacity } } * MemoryLayout<Float>.stride
    }
}

/// The storage of every live ``Tensor``, recycled or not, as the tensors' sizes (not the pages the system
/// gives them): a model's memory as PyTorch's allocator statistics count it. Works inside
/// `LoopCount.countOnly`, where no page is touched, so the tensor memory of a training step at any patch size
/// can be known in well under a second.
public enum TensorMemory {
    /// Bytes of tensor storage live now.
    public static var liveBytes: Int { TensorPool.allBytes.live }
    /// The most bytes of tensor storage live at once since the last ``resetPeak()`` (or the start).
    public static var peakBytes: Int { TensorPool.allBytes.peak }
    /// Starts a new peak from what is live now.
    public static func resetPeak() { TensorPool.resetAllPeak() }
}
