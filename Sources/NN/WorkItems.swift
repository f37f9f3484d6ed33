import Foundation
import Tensor

/// How finely every kind of layer of a model cuts its work into items for the threads of one rank, at a thread
/// count that need not be this machine's: what `attunet bench layers --work-items 32` prints.
///
/// The figures come from the model's own training step (forward, backward, the loss and the optimizer) run with
/// `Parallelism.threads` set to the count asked for but inside ``LoopCount/countOnly(_:)``: every parallel loop is
/// partitioned exactly as it would be and counted, and none of its items runs. So a patch of 160x160x96 takes well
/// under a second, touches no activation memory, and the counts are those of the real code, not of a model of it.
///
/// A layer's item count is the fewest items of any of its parallel loops (both passes). A kind is as well spread
/// as its worst layer: items per thread below about 2 leave threads idle while others finish. Some layers have so
/// little work (the gates' one-channel maps at the coarsest levels) that the partitions give them fewer items on
/// purpose: an item gets at least `WorkSplit.minimumItemWork` operations (`work` says how much there is).
public struct WorkItemsReport: Codable, Sendable {
    /// One kind of layer (or the loss, the optimizer).
    public struct Kind: Codable, Sendable {
        public var kind: String
        /// Layers of this kind in the model.
        public var layers: Int
        /// The layer with the fewest items: its name, output shape and item count.
        public var fewestLayer: String, fewestShape: [Int], fewestItems: Int
        /// Elements of that layer's output (its work, in voxels x channels).
        public var fewestElements: Int
        /// `fewestItems / threads`, and the median over the kind's layers of their items per thread.
        public var fewestItemsPerThread: Double, medianItemsPerThread: Double
    }

    public var threads: Int
    /// X, Y, Z.
    public var patch: [Int]
    public var batch: Int
    public var model: String
    public var featureScale: Double
    public var kinds: [Kind]

    /// Runs one training step of a model of `config` on a batch of `batch` patches of `patch`, counting the loops
    /// as partitioned for `threads` threads without running them. Must not run while other code uses
    /// `Parallelism.threads` or the parallel loops.
    public static func measure(config: ModelConfig, patch: Dim3, batch: Int, threads: Int) throws -> WorkItemsReport {
        precondition(threads >= 1 && batch >= 1, "WorkItemsReport: threads and batch must be positive")
        let saved = Parallelism.threads
        let savedProfile = LayerProfile.active
        defer {
            Parallelism.threads = saved
            LayerProfile.active = savedProfile
            TensorPool.trim()
        }
        let model = SegmentationModel(config)
        let optimizer = Optimizer(.adam, parameterCount: model.params.count)
        let profile = LayerProfile()
        Parallelism.threads = threads
        var extra: [(String, Int)] = []
        try LoopCount.countOnly {
            LayerProfile.active = profile
            let input = Tensor([batch, config.inChannels, patch.z, patch.y, patch.x])
            let logits = try model.forward(input)
            LayerProfile.active = nil
            let loss = SegmentationLoss(.dice)
            let labels = [UInt8](repeating: 0, count: batch * patch.count)
            LoopCount.start()
            _ = labels.withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0) }
            extra.append(("loss (Dice)", LoopCount.stop().fewestItems))
            LayerProfile.active = profile
            model.backward(loss.gradient)
            LayerProfile.active = nil
            LoopCount.start()
            optimizer.update(params: model.params.values, grads: model.params.grads)
            extra.append(("optimizer (Adam)", LoopCount.stop().fewestItems))
        }
        var kinds = Self.kinds(profile.entries, threads: threads)
        kinds.sort { $0.fewestItemsPerThread < $1.fewestItemsPerThread }
        let t = Double(threads)
        for (name, n) in extra {
            let shape =
                name.hasPrefix("loss") ? [batch, config.classes, patch.z, patch.y, patch.x] : [model.params.count]
            kinds.append(
                Kind(
                    kind: name, layers: 1, fewestLayer: name, fewestShape: shape, fewestItems: n,
                    fewestElements: shape.reduce(1, *), fewestItemsPerThread: Double(n) / t,
                    medianItemsPerThread: Double(n) / t))
        }
        return WorkItemsReport(
            threads: threads, patch: [patch.x, patch.y, patch.z], batch: batch, model: config.kind.rawValue,
            featureScale: config.featureScale, kinds: kinds)
    }

    /// The per-kind figures of a profile's entries (`LayerProfile.Entry.forwardItems`, `backwardItems`), for
    /// `threads` threads, in the order the kinds first ran.
    static func kinds(_ entries: [LayerProfile.Entry], threads: Int) -> [Kind] {
        var order: [String] = []
        var byKind: [String: [LayerProfile.Entry]] = [:]
        for e in entries {
            if byKind[e.kind] == nil { order.append(e.kind) }
            byKind[e.kind, default: []].append(e)
        }
        let t = Double(threads)
        func items(_ e: LayerProfile.Entry) -> Int { [e.forwardItems, e.backwardItems].compactMap { $0 }.min() ?? 1 }
        return order.map { k -> Kind in
            let entries = byKind[k]!
            let worst = entries.min { items($0) < items($1) }!
            let sorted = entries.map(items).sorted()
            return Kind(
                kind: k, layers: entries.count, fewestLayer: worst.name, fewestShape: worst.shape,
                fewestItems: items(worst), fewestElements: worst.shape.reduce(1, *),
                fewestItemsPerThread: Double(items(worst)) / t,
                medianItemsPerThread: Double(sorted[sorted.count / 2]) / t)
        }
    }

    /// The report as a text table.
    public func table() -> String {
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        func pad(_ s: String, _ w: Int, left: Bool = false) -> String {
            let p = String(repeating: " ", count: max(0, w - s.count))
            return left ? s + p : p + s
        }
        var out = [
            "work items per thread at \(threads) threads: \(model) (feature scale \(String(format: "%.2f", featureScale))), patch \(patch.map(String.init).joined(separator: "x")), batch \(batch), one training step",
            "(counted from the partitions, items not run; a layer's items: the fewest of any of its parallel loops)",
            "",
            pad("kind", 18, left: true) + pad("layers", 7) + pad("fewest/thread", 15) + pad("median/thread", 15)
                + "  " + pad("layer with the fewest (output, elements)", 40, left: true),
        ]
        for k in kinds {
            out.append(
                pad(k.kind, 18, left: true) + pad(String(k.layers), 7) + pad(f(k.fewestItemsPerThread), 15)
                    + pad(f(k.medianItemsPerThread), 15) + "  " + k.fewestLayer + " ("
                    + k.fewestShape.map(String.init).joined(separator: "x") + ", \(k.fewestElements))")
        }
        out.append(
            "An item gets at least \(WorkSplit.minimumItemWork) operations where the layers cut from the shape (WorkSplit): below \(f(Double(WorkSplit.targetItems) / Double(threads))) per thread, a layer has little work."
        )
        return out.joined(separator: "\n")
    }
}
