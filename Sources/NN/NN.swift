// NN: layers, models, losses, optimizers.
//
// Conventions every file here follows:
//
// - Activations are `Tensor`s of shape `[N, C, Z, Y, X]` (X fastest). Parameters live in a `ParameterStore`
//   (one flat value buffer, one flat gradient buffer); BN running statistics in a second store used for buffers.
// - A layer is a `final class` built with the store(s) and the PyTorch `state_dict` name prefix it registers
//   under (`conv1.conv1.0` → `conv1.conv1.0.weight`, `.bias`). Weights are stored in our layout (conv kernels
//   `[Cout][Cin][kz][ky][kx]`); checkpoint code converts to PyTorch's axis order.
// - `forward` returns an output tensor the layer owns and reuses while the input shape stays the same (no
//   per-step allocation); it keeps what backward needs. `backward(dy)` returns the input gradient as a recycled
//   tensor (`Tensor.recycled`, the caller's; its buffer returns to `TensorPool` when the last reference goes)
//   and **accumulates** parameter gradients into the store's `grads`.
// - Hot loops work on raw pointers; threads come from `parallelFor` (`Parallelism.threads`).
enum NNConventions {}
