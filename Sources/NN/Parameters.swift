import Tensor

/// One named tensor inside a flat store: its PyTorch `state_dict` name, our shape, and where it lives.
public struct ParameterEntry: Sendable {
    /// The name the original PyTorch model's `state_dict` gives it (e.g. `conv1.conv1.0.weight`).
    public let name: String
    /// Shape in our layout; conv weights are `[Cout][Cin][kz][ky][kx]` (PyTorch's `[Cout][Cin][kx][ky][kz]`
    /// with the kernel axes reversed).
    public let shape: [Int]
    public let offset: Int
    public var count: Int { shape.reduce(1, *) }
}

/// All trainable parameters in one flat allocation and all gradients in a second of the same layout
/// (llm.c style): the all-reduce, the optimizer and the checkpoint each walk one buffer.
///
/// Layers register their tensors while the model is built (`add`), then the model calls `allocate()` once;
/// after that every `ParameterRef` resolves to stable pointers into `values` and `grads`.
/// BatchNorm running statistics live in a second `ParameterStore` used as a buffer store (no gradients needed,
/// but the same naming and checkpoint path).
public final class ParameterStore: @unchecked Sendable {
    public private(set) var entries: [ParameterEntry] = []
    public private(set) var values = Tensor([0])
    public private(set) var grads = Tensor([0])
    private var total = 0
    public private(set) var isAllocated = false

    public init() {}

    /// Registers a tensor; returns its handle. Names must be unique.
    public func add(_ name: String, shape: [Int]) -> ParameterRef {
        precondition(!isAllocated, "ParameterStore.add(\(name)) after allocate()")
        precondition(!entries.contains { $0.name == name }, "duplicate parameter name \(name)")
        let e = ParameterEntry(name: name, shape: shape, offset: total)
        entries.append(e)
        total += e.count
        return ParameterRef(store: self, index: entries.count - 1)
    }

    /// Allocates the flat value and gradient buffers (zero-filled).
    public func allocate() {
        precondition(!isAllocated, "ParameterStore.allocate() called twice")
        values = Tensor([total])
        grads = Tensor([total])
        isAllocated = true
    }

    /// Total number of scalars.
    public var count: Int { total }

    public func zeroGrads() { grads.zero() }

    public func entry(named name: String) -> ParameterEntry? { entries.first { $0.name == name } }

    /// Called with an entry's index when a backward pass has finished that entry's gradient (no later layer of
    /// the pass adds to it), on the thread running the backward pass; nil (the default) when nobody listens.
    /// The trainer starts reducing a bucket of ``grads`` across ranks as soon as all of its entries are
    /// finished, while the backward pass continues.
    public var gradientFinished: ((Int) -> Void)?

    /// Reports that `refs`' gradients are final for this backward pass (layers call it at the end of their
    /// backward, once per pass).
    @inline(__always)
    public func finished(_ refs: ParameterRef?...) {
        guard let report = gradientFinished else { return }
        for r in refs { if let r { report(r.index) } }
    }
}

/// A handle to one tensor of a `ParameterStore` (valid after `allocate()`).
public struct ParameterRef: @unchecked Sendable {
    public unowned let store: ParameterStore
    public let index: Int

    public var entry: ParameterEntry { store.entries[index] }
    public var shape: [Int] { entry.shape }
    public var count: Int { entry.count }
    /// Pointer to the values.
    public var value: UnsafeMutablePointer<Float> { store.values.pointer + entry.offset }
    /// Pointer to the gradient (accumulated by backward passes; zeroed by the trainer each step).
    public var grad: UnsafeMutablePointer<Float> { store.grads.pointer + entry.offset }
}
