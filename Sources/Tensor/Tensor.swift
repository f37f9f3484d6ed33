import Foundation
import Support

/// A dense float32 array with an owned, 64-byte-aligned allocation.
///
/// Activations use the layout `[N][C][Z][Y][X]` (X fastest, as NIfTI stores voxels). The class owns its memory;
/// hot loops take `data` (an `UnsafeMutableBufferPointer`) once and work on raw pointers, never per-element
/// subscripts.
public final class Tensor: @unchecked Sendable {
    public private(set) var shape: [Int]
    public let data: UnsafeMutableBufferPointer<Float>

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

/// Memory for ``Tensor/recycled(_:)`` tensors: PyTorch's caching allocator, in small.
///
/// Buffers come from segments that are kept while in use: a request takes the smallest free block that holds
/// it (splitting off the rest as a free block), a freed block merges with its free neighbours, and only when no
/// free block is large enough is a new segment of the request's size allocated. A training step makes the same
/// requests in the same order every time, so after the first step every request is served from the segments:
/// no page faults and no zero fill. ``settle(slack:)`` after the first step replaces the segments that step
/// grew one by one with a single one of (a little more than) the most it had live at once, which the later
/// steps share out by splitting: a 48-channel gradient's block serves three 16-channel ones later in the step.
/// Thread-safe.
public enum TensorPool {
    private struct Block { var offset: Int, size: Int, free: Bool }
    private struct Segment {
        let capacity: Int
        var blocks: [Block]
        /// Serves no new request; returned to the system when its last block is freed.
        var retired = false
        var idle: Bool { blocks.count == 1 && blocks[0].free }
    }
    private struct State {
        var segments: [UnsafeMutablePointer<Float>: Segment] = [:]
        /// The segment (its base) of every handed-out pointer.
        var owner: [UnsafeMutablePointer<Float>: UnsafeMutablePointer<Float>] = [:]
        var liveFloats = 0, peakLiveFloats = 0, fresh = 0
    }
    private static let state = Locked(State())
    /// Blocks start on 64-byte boundaries.
    private static let granule = 16

    private static func allocate(_ floats: Int) -> UnsafeMutablePointer<Float> {
        UnsafeMutableRawPointer.allocate(byteCount: floats * MemoryLayout<Float>.stride, alignment: 64)
            .bindMemory(to: Float.self, capacity: floats)
    }

    static func take(_ count: Int) -> UnsafeMutablePointer<Float> {
        let need = (count + granule - 1) / granule * granule
        return state.withLock { st in
            st.liveFloats += count
            st.peakLiveFloats = max(st.peakLiveFloats, st.liveFloats)
            // Best fit; ties go to the lower address, so the same requests get the same blocks every run.
            var best: (base: UnsafeMutablePointer<Float>, block: Int, size: Int, address: UnsafeMutablePointer<Float>)?
            for (base, seg) in st.segments where !seg.retired {
                for (bi, b) in seg.blocks.enumerated() where b.free && b.size >= need {
                    if let c = best, (c.size, c.address) <= (b.size, base + b.offset) { continue }
                    best = (base, bi, b.size, base + b.offset)
                }
            }
            guard let best else {
                st.fresh += 1
                let p = allocate(need)
                st.segments[p] = Segment(capacity: need, blocks: [Block(offset: 0, size: need, free: false)])
                st.owner[p] = p
                return p
            }
            var seg = st.segments[best.base]!
            let b = seg.blocks[best.block]
            seg.blocks[best.block] = Block(offset: b.offset, size: need, free: false)
            if b.size > need {
                seg.blocks.insert(Block(offset: b.offset + need, size: b.size - need, free: true), at: best.block + 1)
            }
            st.segments[best.base] = seg
            let p = best.base + b.offset
            st.owner[p] = best.base
            return p
        }
    }

    static func give(_ p: UnsafeMutablePointer<Float>, used: Int) {
        let release: UnsafeMutablePointer<Float>? = state.withLock { st in
            st.liveFloats -= used
            guard let base = st.owner.removeValue(forKey: p), var seg = st.segments[base],
                var i = seg.blocks.firstIndex(where: { $0.offset == p - base })
            else {
                preconditionFailure("TensorPool: a buffer it did not hand out")
            }
            seg.blocks[i].free = true
            if i + 1 < seg.blocks.count && seg.blocks[i + 1].free {
                seg.blocks[i].size += seg.blocks[i + 1].size
                seg.blocks.remove(at: i + 1)
            }
            if i > 0 && seg.blocks[i - 1].free {
                seg.blocks[i - 1].size += seg.blocks[i].size
                seg.blocks.remove(at: i)
                i -= 1
            }
            if seg.retired && seg.idle {
                st.segments[base] = nil
                return base
            }
            st.segments[base] = seg
            return nil
        }
        if let release { UnsafeMutableRawPointer(release).deallocate() }
    }

    /// Retires every segment (each is returned to the system as soon as nothing in it is live) and reserves one
    /// free segment of `slack` times the most that was live at once since the last settle. Call it after the first training
    /// step at a new shape: from then on the step's requests share that one segment instead of the many the
    /// first step grew, each sized for the request that first needed it.
    public static func settle(slack: Double = 1.25) {
        let released = state.withLock { st -> [UnsafeMutablePointer<Float>] in
            var idle: [UnsafeMutablePointer<Float>] = []
            for (base, seg) in st.segments {
                if seg.idle { idle.append(base) } else { st.segments[base]!.retired = true }
            }
            for base in idle { st.segments[base] = nil }
            let floats = (Int(Double(st.peakLiveFloats) * slack) + granule - 1) / granule * granule
            st.peakLiveFloats = st.liveFloats
            if floats > 0 {
                let p = allocate(floats)
                st.segments[p] = Segment(capacity: floats, blocks: [Block(offset: 0, size: floats, free: true)])
            }
            return idle
        }
        for p in released { UnsafeMutableRawPointer(p).deallocate() }
    }

    /// Returns every segment with nothing live in it to the system (after work whose sizes will not come again).
    public static func trim() {
        let released = state.withLock { st -> [UnsafeMutablePointer<Float>] in
            let idle = st.segments.filter { $0.value.idle }.map(\.key)
            for base in idle { st.segments[base] = nil }
            return idle
        }
        for p in released { UnsafeMutableRawPointer(p).deallocate() }
    }

    /// Buffers allocated from the system so far because no free block was large enough (a steady-state training
    /// step adds none).
    public static var freshAllocations: Int { state.withLock { $0.fresh } }

    /// The most bytes live recycled tensors held at once since the last ``settle(slack:)`` (their sizes, not
    /// their blocks').
    public static var peakLiveBytes: Int { state.withLock { $0.peakLiveFloats } * MemoryLayout<Float>.stride }

    /// Bytes in free blocks, held for reuse.
    public static var cachedBytes: Int {
        state.withLock { st in st.segments.values.reduce(0) { $0 + $1.blocks.filter(\.free).reduce(0) { $0 + $1.size } }
        }
            * MemoryLayout<Float>.stride
    }

    /// Bytes of every segment, in use or not.
    public static var reservedBytes: Int {
        state.withLock { st in st.segments.values.reduce(0) { $0 + $1.capacity } } * MemoryLayout<Float>.stride
    }
}
