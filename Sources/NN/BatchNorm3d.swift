import CKernels
import Tensor

/// Batch normalisation over `[N, C, Z, Y, X]`, matching PyTorch's `nn.BatchNorm3d(C)` (eps 1e-5, momentum 0.1,
/// affine, running statistics tracked).
///
/// - Training (`training = true`): per-channel mean and **biased** variance over N, Z, Y, X normalise the
///   batch; the running statistics move by momentum 0.1 towards the mean and the **unbiased** variance
///   (`var * M / (M - 1)`, M the element count per channel, summed over ranks when a reducer is set), and
///   `num_batches_tracked` counts up.
/// - Evaluation: the running statistics normalise; backward is the affine map's.
///
/// Parameters: `<name>.weight` (gamma), `<name>.bias` (beta), `[C]` each, in `params`. Buffers, in `buffers`:
/// `<name>.running_mean`, `<name>.running_var` (`[C]`) and `<name>.num_batches_tracked` with shape `[]`
/// (one element): PyTorch's is a 0-dim int64 tensor; we keep the same 0-dim shape so checkpoints map one to
/// one, stored as a float (exact up to 2^24 = 16.7M steps). Call `resetParameters()` after the stores are
/// allocated to get PyTorch's initial values (gamma 1, beta 0, mean 0, var 1, count 0).
///
/// **SyncBN hook**: `statisticsReducer`, when set, is called in training forward with a buffer of `2C + 1`
/// doubles `[Σx (C) | Σx² (C) | element count]` of this process's batch, and must replace it in place by the sum
/// over all ranks (an all-reduce of doubles) before the batch is normalised. In training backward it is called
/// again with `2C` doubles `[Σdy (C) | Σdy·x̂ (C)]`. As in PyTorch's SyncBatchNorm, dgamma and dbeta
/// accumulate this rank's local sums (the trainer's gradient all-reduce combines them), while dx uses the
/// global ones. Without a reducer everything is local.
///
/// `forward` and `backward` do not throw (like every layer); a reducer error is fatal there, and the
/// `forwardThrowing` / `backwardThrowing` variants propagate it for callers that can recover.
///
/// **Fused ReLU**: with `fusedReLU`, the output is `max(y, 0)` (NaN stays NaN) and backward first masks dy where
/// y > 0 does not hold, as `BatchNorm3d` followed by an in-place `ReLU` (`ConvBNReLU`), without the ReLU's two
/// passes over the tensor: backward recomputes the mask from the input, with the forward's exact arithmetic.
///
/// Sums are accumulated in Double (one read pass for the statistics, one pass to normalise; the same for
/// backward), per piece of `parallelForPieces` and added in piece order, so the results do not depend on the
/// thread count. The per-element loops are CKernels' `ck_bn_*` (AVX2 + FMA where the CPU has them). The layer
/// keeps a reference to its input for backward; work is spread over channels.
public final class BatchNorm3d {
    public let name: String
    public let channels: Int
    public let eps: Double = 1e-5
    public let momentum: Double = 0.1
    public let weight: ParameterRef
    public let bias: ParameterRef
    public let runningMean: ParameterRef
    public let runningVar: ParameterRef
    public let numBatchesTracked: ParameterRef

    public var training = true
    /// True when no backward pass reads this layer's output (the next layer only copies it): the output is then
    /// a recycled tensor, freed once read, instead of a buffer the layer keeps between steps.
    public var outputIsScratch = false
    /// Applies a ReLU to the output (and its gradient mask in backward), as an in-place `ReLU` after the layer.
    public var fusedReLU = false
    /// Strong references: a ParameterRef does not keep its store alive.
    private let stores: (ParameterStore, ParameterStore)
    public var statisticsReducer: ((UnsafeMutableBufferPointer<Double>) throws -> Void)?

    private var input: Tensor?
    private var output: Tensor?
    /// Mean and 1/sqrt(var + eps) used by the last forward (batch or running statistics).
    private var mean: [Double]
    private var invStd: [Double]
    private var count = 0.0  // elements per channel in the last forward (global when reduced)
    private var forwardWasTraining = true
    private var forwardWasFused = false
    /// The float mean, scale and shift of the last forward, per channel: y = (x - mean) * scale + shift.
    private var affine: [Float]

    public init(params: ParameterStore, buffers: ParameterStore, name: String, channels: Int) {
        precondition(channels > 0, "BatchNorm3d \(name): channels must be positive")
        self.name = name
        self.channels = channels
        stores = (params, buffers)
        weight = params.add("\(name).weight", shape: [channels])
        bias = params.add("\(name).bias", shape: [channels])
        runningMean = buffers.add("\(name).running_mean", shape: [channels])
        runningVar = buffers.add("\(name).running_var", shape: [channels])
        numBatchesTracked = buffers.add("\(name).num_batches_tracked", shape: [])
        mean = Array(repeating: 0, count: channels)
        invStd = Array(repeating: 1, count: channels)
        affine = Array(repeating: 0, count: 3 * channels)
    }

    /// PyTorch's initial state: gamma 1, beta 0, running mean 0, running var 1, no batches tracked.
    public func resetParameters() {
        weight.value.update(repeating: 1, count: channels)
        bias.value.update(repeating: 0, count: channels)
        runningMean.value.update(repeating: 0, count: channels)
        runningVar.value.update(repeating: 1, count: channels)
        numBatchesTracked.value.pointee = 0
    }

    // MARK: Forward

    /// Normalises `x` (training or evaluation mode). A failing `statisticsReducer` stops the process
    /// (`fatalError` naming the layer and the error): use `forwardThrowing` to handle it instead.
    public func forward(_ x: Tensor) -> Tensor {
        do { return try forwardThrowing(x) } catch {
            fatalError("BatchNorm3d \(name): statistics reducer failed: \(error)")
        }
    }

    /// `forward`, propagating an error thrown by `statisticsReducer`.
    public func forwardThrowing(_ x: Tensor) throws -> Tensor {
        let t0 = LayerProfile.start()
        defer {
            LayerProfile.stop(self, t0, backward: false) {
                .memoryBound(name, "BatchNorm3d", x.shape, forward: 3 * x.count, backward: 5 * x.count)
            }
        }
        precondition(
            x.shape.count == 5 && x.shape[1] == channels,
            "BatchNorm3d.forward: expected [N, \(channels), Z, Y, X], got \(x.shape)")
        let n = x.shape[0]
        let c = channels
        let v = x.shape[2] * x.shape[3] * x.shape[4]
        input = GradientMode.keep(x)
        forwardWasTraining = training
        let y = outputIsScratch ? Tensor.recycled(x.shape) : GradientMode.output(&output, x.shape)
        let xp = UnsafePointer(x.pointer)
        if training {
            var stats = [Double](repeating: 0, count: 2 * c + 1)
            Self.planeSums(n: n, c: c, v: v, into: &stats) { plane, r in
                var s = 0.0
                var q = 0.0
                ck_bn_sums(xp + plane * v + r.lowerBound, r.count, &s, &q)
                return (s, q)
            }
            stats[2 * c] = Double(n * v)
            if let reduce = statisticsReducer { try stats.withUnsafeMutableBufferPointer { try reduce($0) } }
            let m = stats[2 * c]
            precondition(m > 1, "BatchNorm3d: expected more than 1 value per channel when training, got \(x.shape)")
            count = m
            let rm = runningMean.value
            let rv = runningVar.value
            for ch in 0..<c {
                let mu = stats[ch] / m
                let variance = max(stats[c + ch] / m - mu * mu, 0)
                mean[ch] = mu
                invStd[ch] = 1 / (variance + eps).squareRoot()
                rm[ch] = Float((1 - momentum) * Double(rm[ch]) + momentum * mu)
                rv[ch] = Float((1 - momentum) * Double(rv[ch]) + momentum * variance * m / (m - 1))
            }
            numBatchesTracked.value.pointee += 1
        } else {
            let rm = runningMean.value
            let rv = runningVar.value
            for ch in 0..<c {
                mean[ch] = Double(rm[ch])
                invStd[ch] = 1 / (Double(rv[ch]) + eps).squareRoot()
            }
            count = Double(n * v)
        }
        // y = (x - mean) * (gamma * invStd) + beta, then the ReLU when fused
        let g = weight.value
        let b = bias.value
        for ch in 0..<c {
            affine[ch] = Float(mean[ch])
            affine[c + ch] = Float(Double(g[ch]) * invStd[ch])
            affine[2 * c + ch] = b[ch]
        }
        forwardWasFused = fusedReLU
        let relu: Int32 = fusedReLU ? 1 : 0
        let yp = y.pointer
        let f = affine
        parallelForPieces(planes: n * c, length: v) { job, r in
            let ch = job % c
            let o = job * v + r.lowerBound
            ck_bn_apply(xp + o, yp + o, r.count, f[ch], f[c + ch], f[2 * c + ch], relu)
        }
        return y
    }

    // MARK: Backward

    /// Returns dL/dx and accumulates dL/dgamma, dL/dbeta into the parameter store's gradients. With `inPlace`,
    /// dx is written over dy and dy returned (the caller must own dy and not need it afterwards); the values are
    /// the same either way. A failing `statisticsReducer` stops the process (see `forward`); `backwardThrowing`
    /// propagates it.
    public func backward(_ dy: Tensor, inPlace: Bool = false) -> Tensor {
        do { return try backwardThrowing(dy, inPlace: inPlace) } catch {
            fatalError("BatchNorm3d \(name): statistics reducer failed: \(error)")
        }
    }

    /// `backward`, propagating an error thrown by `statisticsReducer`.
    public func backwardThrowing(_ dy: Tensor, inPlace: Bool = false) throws -> Tensor {
        let t0 = LayerProfile.start()
        defer {
            LayerProfile.stop(self, t0, backward: true) {
                .memoryBound(name, "BatchNorm3d", dy.shape, forward: 3 * dy.count, backward: 5 * dy.count)
            }
        }
        guard let x = input else { preconditionFailure("BatchNorm3d.backward before forward") }
        precondition(dy.shape == x.shape, "BatchNorm3d.backward: dy \(dy.shape) vs input \(x.shape)")
        let n = x.shape[0]
        let c = channels
        let v = x.shape[2] * x.shape[3] * x.shape[4]
        // In place, each element of dx is computed from the same element of dy only (the sums come first).
        let dx = inPlace ? dy : Tensor.recycled(x.shape)
        let xp = UnsafePointer(x.pointer)
        let dyp = UnsafePointer(dy.pointer)
        let invStd = invStd
        let f = affine
        let relu: Int32 = forwardWasFused ? 1 : 0
        // Σdy and Σdy·(x - mean) per channel, local to this rank (dy masked by the fused ReLU first).
        var sums = [Double](repeating: 0, count: 2 * c)
        Self.planeSums(n: n, c: c, v: v, into: &sums) { plane, r in
            let ch = plane % c
            let o = plane * v + r.lowerBound
            var s = 0.0
            var q = 0.0
            ck_bn_backward_sums(dyp + o, xp + o, r.count, f[ch], f[c + ch], f[2 * c + ch], relu, &s, &q)
            return (s, q)
        }
        for ch in 0..<c { sums[c + ch] *= invStd[ch] }  // Σdy·x̂ (mean is subtracted in float, then exact-ish)
        let g = weight.value
        let gg = weight.grad
        let gb = bias.grad
        for ch in 0..<c {
            gg[ch] += Float(sums[c + ch])
            gb[ch] += Float(sums[ch])
        }
        let dxp = dx.pointer
        let train: Int32 = forwardWasTraining ? 1 : 0
        if forwardWasTraining {
            if let reduce = statisticsReducer { try sums.withUnsafeMutableBufferPointer { try reduce($0) } }
        }
        // train: dx = gamma*invStd * (dy - Σdy/M - x̂ * Σdy·x̂/M),  x̂ = (x - mean)*invStd; else gamma*invStd * dy
        let m = count
        let total = sums
        parallelForPieces(planes: n * c, length: v) { job, r in
            let ch = job % c
            let k = Double(g[ch]) * invStd[ch]
            let mdy = Float(total[ch] / m)
            let bx = Float(k * invStd[ch] * total[c + ch] / m)  // k * x̂ * Σdy·x̂/M = bx * (x - mean)
            let o = job * v + r.lowerBound
            ck_bn_backward_apply(
                dyp + o, xp + o, dxp + o, r.count, f[ch], f[c + ch], f[2 * c + ch], relu, train, Float(k), mdy, bx)
        }
        // After the statistics reducer: a bucket reduction queued before it would hold up this backward.
        stores.0.finished(weight, bias)
        GradientMode.release(&self.input, &self.output)
        return dx
    }

    // MARK: Reductions

    /// Per channel, two sums over every sample's plane: `piece(plane, range)` sums one piece of plane `i·c + ch`
    /// (`parallelForPieces`, in parallel), and the pieces are added up per channel in sample and piece order,
    /// so the sums do not depend on the thread count. `out[ch]` and `out[c + ch]` receive them.
    static func planeSums(
        n: Int, c: Int, v: Int, into out: inout [Double],
        _ piece: (Int, Range<Int>) -> (Double, Double)
    ) {
        let pieces = pieceCount(v)
        var partial = [Double](repeating: 0, count: 2 * n * c * pieces)
        partial.withUnsafeMutableBufferPointer { buffer in
            let p = UncheckedSendable(buffer.baseAddress!)
            parallelForPieces(planes: n * c, length: v) { plane, r in
                let (a, b) = piece(plane, r)
                let k = 2 * (plane * pieces + r.lowerBound / parallelPieceLength)
                p.value[k] = a
                p.value[k + 1] = b
            }
        }
        for ch in 0..<c {
            var a = 0.0
            var b = 0.0
            for i in 0..<n {
                for j in 0..<pieces {
                    let k = 2 * ((i * c + ch) * pieces + j)
                    a += partial[k]
                    b += partial[k + 1]
                }
            }
            out[ch] = a
            out[c + ch] = b
        }
    }
}
