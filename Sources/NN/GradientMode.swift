import Tensor

/// Whether layers keep what their backward pass needs (the default), or, inside ``withoutGradients(_:)``,
/// nothing: PyTorch's `torch.no_grad()`.
///
/// Without gradients a layer's output is a recycled tensor (`Tensor.recycled`) that goes back to the pool as
/// soon as the next layer has read it, and no layer holds on to its input, so a forward pass needs memory for
/// a few activations at a time instead of all of them: what prediction and validation run. Backward must not
/// be called on what ran there.
public enum GradientMode {
    nonisolated(unsafe) private static var recording = true

    /// Whether forward passes now keep what backward needs.
    public static var isRecording: Bool { recording }

    /// Runs `body` with forward passes that keep nothing for backward (on this thread's layers; layers run on
    /// one thread per model).
    public static func withoutGradients<R>(_ body: () throws -> R) rethrows -> R {
        let old = recording
        recording = false
        defer { recording = old }
        return try body()
    }

    nonisolated(unsafe) private static var freeing = false

    /// Whether layers now free what they keep once their backward pass has read it (``freeingKept(_:)``).
    public static var freesKept: Bool { freeing }

    /// Runs `body` (a model's forward pass, or its backward pass) with the layers' outputs taken from the pool
    /// (`Tensor.recycled`) and each layer letting go of what it kept at the end of its backward pass, as PyTorch
    /// frees a graph's saved tensors during `backward()`: memory a step's backward no longer needs (the head's
    /// concatenation, a decoder level's activations once it is done) serves the rest of it. The next step's
    /// forward takes the same buffers back from the pool. Without it, a layer keeps its own output buffer between
    /// steps and what it kept stays after backward (so backward may run again, as layer tests do).
    public static func freeingKept<R>(_ on: Bool = true, _ body: () throws -> R) rethrows -> R {
        let old = freeing
        freeing = on
        defer { freeing = old }
        return try body()
    }

    /// A layer's output: when recording, its own buffer, reused while the shape stays the same (or, while
    /// freeing what layers keep, a recycled tensor it holds until its backward pass); else a recycled tensor
    /// (and the layer's buffer is let go).
    @inline(__always)
    static func output(_ slot: inout Tensor?, _ shape: [Int]) -> Tensor {
        if recording && !freeing { return Tensor.reuse(&slot, shape) }
        let t = Tensor.recycled(shape)
        slot = recording ? t : nil
        return t
    }

    /// At the end of a layer's backward pass: lets go of what it kept, while freeing (``freeingKept(_:)``).
    @inline(__always)
    static func release(_ a: inout Tensor?) { if freeing { a = nil } }
    @inline(__always)
    static func release(_ a: inout Tensor?, _ b: inout Tensor?) {
        if freeing {
            a = nil
            b = nil
        }
    }
    @inline(__always)
    static func release(_ a: inout Tensor?, _ b: inout Tensor?, _ c: inout Tensor?) {
        if freeing {
            a = nil
            b = nil
            c = nil
        }
    }

    /// What a layer keeps of a tensor for backward: the tensor when recording, else nothing.
    @inline(__always)
    static func keep(_ t: Tensor) -> Tensor? { recording ? t : nil }
}
