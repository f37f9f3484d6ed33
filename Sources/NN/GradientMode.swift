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

    /// A layer's output: its own buffer, reused while the shape stays the same, when recording; else a recycled
    /// tensor (and the layer's buffer is let go).
    @inline(__always)
    static func output(_ slot: inout Tensor?, _ shape: [Int]) -> Tensor {
        if recording { return Tensor.reuse(&slot, shape) }
        slot = nil
        return Tensor.recycled(shape)
    }

    /// What a layer keeps of a tensor for backward: the tensor when recording, else nothing.
    @inline(__always)
    static func keep(_ t: Tensor) -> Tensor? { recording ? t : nil }
}
