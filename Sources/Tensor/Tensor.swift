import Foundation

/// A dense float32 array with an owned, 64-byte-aligned allocation.
///
/// Activations use the layout `[N][C][Z][Y][X]` (X fastest, as NIfTI stores voxels). The class owns its memory;
/// hot loops take `data` (an `UnsafeMutableBufferPointer`) once and work on raw pointers, never per-element
/// subscripts.
public final class Tensor: @unchecked Sendable {
    public private(set) var shape: [Int]
    public let data: UnsafeMutableBufferPointer<Float>

    /// A zero-filled tensor of the given shape.
    public init(_ shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in shape \(shape)")
        self.shape = shape
        let count = shape.reduce(1, *)
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * MemoryLayout<Float>.stride, alignment: 64)
        let p = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        p.initialize(repeating: 0, count: max(count, 1))
        data = UnsafeMutableBufferPointer(start: p, count: count)
    }

    /// A tensor holding a copy of `values`.
    public convenience init(_ shape: [Int], _ values: [Float]) {
        self.init(shape)
        precondition(values.count == count, "shape \(shape) needs \(count) values, got \(values.count)")
        _ = data.initialize(from: values)
    }

    deinit { UnsafeMutableRawPointer(data.baseAddress!).deallocate() }

    public var count: Int { data.count }
    public var pointer: UnsafeMutablePointer<Float> { data.baseAddress! }
    public var array: [Float] { Array(data) }

    /// Changes the shape without touching the data (element count must not change).
    public func reshape(_ newShape: [Int]) {
        precondition(newShape.reduce(1, *) == count, "cannot reshape \(shape) to \(newShape)")
        shape = newShape
    }

    public func fill(_ v: Float) { data.update(repeating: v) }
    public func zero() { data.update(repeating: 0) }

    public func copy(from other: Tensor) {
        precondition(other.count == count, "copy: \(other.shape) into \(shape)")
        pointer.update(from: other.pointer, count: count)
    }

    /// The tensor in `slot` when it already has `shape` (its old contents kept), else a new zero-filled one
    /// stored there: a layer's output and gradient buffers are allocated once per input shape, not per step.
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
            s ^= s << 13; s ^= s >> 7; s ^= s << 17
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
    public init(z: Int, y: Int, x: Int) { self.z = z; self.y = y; self.x = x }
    public var count: Int { z * y * x }
    public var description: String { "\(x)x\(y)x\(z)" }  // users read sizes as X x Y x Z
    public func scaled(by f: Int) -> Dim3 { Dim3(z: z * f, y: y * f, x: x * f) }
    public func divided(by f: Int) -> Dim3 { Dim3(z: z / f, y: y / f, x: x / f) }
}

extension Tensor {
    /// self += other (same element count).
    public func add(_ other: Tensor) {
        precondition(other.count == count, "add: \(other.shape) into \(shape)")
        let d = pointer, s = other.pointer
        for i in 0..<count { d[i] += s[i] }
    }

    /// Spatial extent of an [N, C, Z, Y, X] tensor.
    public var dim3: Dim3 {
        precondition(shape.count == 5, "dim3 of a tensor of rank \(shape.count)")
        return Dim3(z: shape[2], y: shape[3], x: shape[4])
    }
}
