import Foundation
import Tensor

/// Optimizer choices. PyTorch's semantics exactly (weight decay is L2 added to the gradient, as
/// `torch.optim.SGD/Adam(weight_decay=...)`), over the flat parameter and gradient buffers.
public enum OptimizerKind: String, Codable, Sendable, CaseIterable {
    /// Adam (β 0.9/0.999, eps 1e-8): what the paper says it used.
    case adam
    /// SGD with Nesterov momentum 0.9: what the released code actually ran.
    case sgd
}

/// What the optimizer does with a parameter (`attunet train --init`): train it at the base learning rate,
/// train it at the rate of the parameters that start fresh (`--head-lr`), or leave it alone (`--freeze`).
public enum ParameterRole: String, Codable, Sendable {
    /// Initialised from a checkpoint (or the seeded initialisation of a run without `--init`): the base rate.
    case trained
    /// Not initialised from the checkpoint: ``Optimizer/freshLearningRate`` when set.
    case fresh
    /// Never updated: no step, no weight decay, its moments stay as they are (zero in a fresh optimizer).
    case frozen
}

public final class Optimizer {
    public let kind: OptimizerKind
    public var learningRate: Double
    /// The learning rate of the parameters whose role is ``ParameterRole/fresh`` (nil: ``learningRate``).
    public var freshLearningRate: Double?
    public let weightDecay: Double
    public let momentum: Double = 0.9
    public let beta1 = 0.9, beta2 = 0.999, eps = 1e-8
    /// Steps taken (Adam's bias correction uses it).
    public private(set) var step: Int = 0
    /// Adam's first/second moments, or SGD's momentum buffer (first) — same layout as the parameters.
    public let moment1: Tensor, moment2: Tensor
    /// Runs of the flat parameter buffer and their roles, in order, covering it (default: one run, trained).
    public private(set) var segments: [(range: Range<Int>, role: ParameterRole)]

    public init(_ kind: OptimizerKind, parameterCount: Int, learningRate: Double = 1e-4, weightDecay: Double = 1e-6) {
        self.kind = kind
        self.learningRate = learningRate
        self.weightDecay = weightDecay
        moment1 = Tensor([parameterCount])
        moment2 = Tensor([kind == .adam ? parameterCount : 0])
        segments = [(0..<parameterCount, .trained)]
    }

    /// Gives every parameter of `entries` (the model's parameter store) the role `role(name)`; neighbouring
    /// tensors of one role form one run.
    public func setRoles(_ entries: [ParameterEntry], _ role: (String) -> ParameterRole) {
        var runs: [(range: Range<Int>, role: ParameterRole)] = []
        for e in entries where e.count > 0 {
            let r = role(e.name)
            if let last = runs.last, last.role == r, last.range.upperBound == e.offset {
                runs[runs.count - 1].range = last.range.lowerBound..<(e.offset + e.count)
            } else {
                runs.append((e.offset..<(e.offset + e.count), r))
            }
        }
        precondition(runs.map { $0.range.count }.reduce(0, +) == moment1.count, "roles must cover every parameter")
        segments = runs
    }

    /// The number of parameters of each role.
    public func count(_ role: ParameterRole) -> Int {
        segments.filter { $0.role == role }.map { $0.range.count }.reduce(0, +)
    }

    /// Restores the state saved in a checkpoint.
    public func restore(step: Int) { self.step = step }

    /// One update of `params` from `grads` (already averaged across ranks), run by run: frozen runs are
    /// skipped, fresh ones use ``freshLearningRate``.
    public func update(params: Tensor, grads: Tensor) {
        precondition(params.count == grads.count && params.count == moment1.count)
        step += 1
        for (range, role) in segments {
            if role == .frozen { continue }
            let rate = role == .fresh ? freshLearningRate ?? learningRate : learningRate
            update(params: params, grads: grads, range: range, learningRate: rate)
        }
    }

    private func update(params: Tensor, grads: Tensor, range: Range<Int>, learningRate: Double) {
        let p = params.pointer
        let g = grads.pointer
        let m = moment1.pointer
        let lr = Float(learningRate)
        let wd = Float(weightDecay)
        switch kind {
        case .sgd:
            let mu = Float(momentum)
            let first = step == 1
            Self.chunks(range) { r in
                for i in r {
                    let gi = g[i] + wd * p[i]
                    let b = first ? gi : mu * m[i] + gi
                    m[i] = b
                    p[i] -= lr * (gi + mu * b)
                }
            }
        case .adam:
            let v = moment2.pointer
            let b1 = Float(beta1)
            let b2 = Float(beta2)
            let c1 = Float(1 - Foundation.pow(beta1, Double(step)))
            let c2 = Float(1 - Foundation.pow(beta2, Double(step)))
            let stepSize = lr / c1
            let c2root = c2.squareRoot()
            let e = Float(eps)
            Self.chunks(range) { r in
                for i in r {
                    let gi = g[i] + wd * p[i]
                    m[i] = b1 * m[i] + (1 - b1) * gi
                    v[i] = b2 * v[i] + (1 - b2) * gi * gi
                    p[i] -= stepSize * m[i] / (v[i].squareRoot() / c2root + e)
                }
            }
        }
    }

    /// Runs `body` over `range` in chunks of 16 Ki parameters on `Parallelism.threads` threads (the paper's 6.5M
    /// parameters make ~400 items: enough for 32-64 threads). Each parameter's update is independent, so the
    /// result is the same for any thread count.
    private static func chunks(_ range: Range<Int>, _ body: (Range<Int>) -> Void) {
        let size = 1 << 14
        let n = (range.count + size - 1) / size
        parallelFor(n) { i in
            let lo = range.lowerBound + i * size
            body(lo..<min(range.upperBound, lo + size))
        }
    }
}

/// Learning-rate schedules, evaluated per epoch.
/// The learning-rate schedules by name (`--schedule`).
public enum ScheduleKind: String, Codable, Sendable, CaseIterable {
    case step, poly, constant
}

public enum LRSchedule: Codable, Sendable, Equatable {
    /// lr × factor^⌊epoch / every⌋: the original's ×0.5 every 250 epochs.
    case step(every: Int, factor: Double)
    /// lr × (1 − epoch / epochs)^power (nnU-Net's poly, power 0.9).
    case poly(epochs: Int, power: Double)
    case constant

    /// The schedule `kind` over a run of `epochs` epochs: ×0.5 every `stepEvery` epochs, poly with power 0.9,
    /// or constant.
    public init(_ kind: ScheduleKind, epochs: Int, stepEvery: Int) {
        switch kind {
        case .step: self = .step(every: stepEvery, factor: 0.5)
        case .poly: self = .poly(epochs: epochs, power: 0.9)
        case .constant: self = .constant
        }
    }

    public func rate(base: Double, epoch: Int) -> Double {
        switch self {
        case .step(let every, let factor): return base * Foundation.pow(factor, Double(epoch / max(every, 1)))
        case .poly(let epochs, let power):
            return base * Foundation.pow(max(0, 1 - Double(epoch) / Double(max(epochs, 1))), power)
        case .constant: return base
        }
    }
}
