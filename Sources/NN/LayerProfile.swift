import Foundation
import Tensor

/// Wall time of every layer's forward and backward passes, for `attunet bench train`'s per-layer breakdown.
///
/// Off by default (``active`` is nil): a layer then pays one load and one branch per pass. When a profile is
/// active, each layer object gets one ``Entry`` (in the order the layers first run), its passes' seconds are
/// summed, and the work one pass must do (FLOP for convolutions, bytes of tensor traffic for the memory-bound
/// layers) is recorded so rates can be printed. Layers run on one thread per rank (their loops fan out inside),
/// so the profile needs no locking.
public final class LayerProfile: @unchecked Sendable {
    /// One layer's totals.
    public struct Entry: Sendable, Codable {
        /// The layer's `state_dict` prefix (`conv1.conv1.0`) or its place in the model (`up_concat1.up`).
        public var name: String
        /// `Conv3d 3x3x3`, `BatchNorm3d`, `ReLU`, ...
        public var kind: String
        /// The output shape of its forward pass, `[N, C, Z, Y, X]`.
        public var shape: [Int]
        public var forwardSeconds = 0.0, backwardSeconds = 0.0
        public var forwardCalls = 0, backwardCalls = 0
        /// FLOP (multiply-adds × 2) of one pass; 0 for memory-bound layers.
        public var forwardFlop = 0.0, backwardFlop = 0.0
        /// Bytes one pass must read and write at least; 0 for convolutions.
        public var forwardBytes = 0.0, backwardBytes = 0.0
        /// The fewest work items of any parallel loop of a pass (how finely it splits over threads; nil when the
        /// pass ran no parallel loop), as partitioned for `threads`.
        public var forwardItems: Int?, backwardItems: Int?
        public var threads = 1

        /// An entry for a memory-bound layer whose passes read and write `forward` and `backward` floats.
        static func memoryBound(_ name: String, _ kind: String, _ shape: [Int], forward: Int, backward: Int) -> Entry {
            Entry(
                name: name, kind: kind, shape: shape, forwardBytes: Double(4 * forward),
                backwardBytes: Double(4 * backward))
        }
    }

    /// The profile layers record into; nil (the default) records nothing.
    nonisolated(unsafe) public static var active: LayerProfile?

    public private(set) var entries: [Entry] = []
    private var index: [ObjectIdentifier: Int] = [:]

    public init() {}

    /// Forgets every total (the entries' order is kept).
    public func reset() {
        for i in entries.indices {
            entries[i].forwardSeconds = 0
            entries[i].backwardSeconds = 0
            entries[i].forwardCalls = 0
            entries[i].backwardCalls = 0
        }
    }

    /// A pass's start time, or 0 when no profile is active.
    @inline(__always)
    static func start() -> UInt64 {
        guard active != nil else { return 0 }
        LoopCount.start()
        return DispatchTime.now().uptimeNanoseconds
    }

    /// Adds the pass that began at `start` to `layer`'s entry; `describe` names the layer and its work the
    /// first time (and is not called otherwise).
    @inline(__always)
    static func stop(_ layer: AnyObject, _ start: UInt64, backward: Bool, _ describe: () -> Entry) {
        guard let p = active, start != 0 else { return }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        p.add(ObjectIdentifier(layer), seconds, backward, LoopCount.stop(), describe)
    }

    private func add(
        _ id: ObjectIdentifier, _ seconds: Double, _ backward: Bool, _ loops: LoopCount.Counts,
        _ describe: () -> Entry
    ) {
        let i: Int
        if let k = index[id] {
            i = k
        } else {
            i = entries.count
            index[id] = i
            entries.append(describe())
        }
        let items = loops.loops > 0 ? loops.fewestItems : nil
        entries[i].threads = Parallelism.threads
        if backward {
            entries[i].backwardSeconds += seconds
            entries[i].backwardCalls += 1
            entries[i].backwardItems = items
        } else {
            entries[i].forwardSeconds += seconds
            entries[i].forwardCalls += 1
            entries[i].forwardItems = items
        }
    }
}
