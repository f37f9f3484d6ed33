import Foundation
import HDF5Kit
import Support
import Tensor

/// The PyTorch `state_dict` view of a model: names, PyTorch shapes and axis order.
///
/// Our activations are [N][C][Z][Y][X] while the original model's input is (B, C, X, Y, Z), so a PyTorch conv
/// weight [Cout][Cin][kx][ky][kz] is our [Cout][Cin][kz][ky][kx]: the three kernel axes are reversed on the
/// way out and on the way in. Everything else (biases, BN vectors) is 1-D and identical.
public enum StateDict {
    /// PyTorch's shape for one of our entries.
    public static func torchShape(_ shape: [Int]) -> [Int] {
        shape.count == 5 ? [shape[0], shape[1], shape[4], shape[3], shape[2]] : shape
    }

    /// Copies a tensor of shape `s` into `dst` with the three kernel axes of a 5-D tensor reversed (ours →
    /// PyTorch with our shape; PyTorch → ours with PyTorch's shape).
    public static func convert(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, ourShape s: [Int]) {
        guard s.count == 5 else {
            dst.update(from: src, count: s.reduce(1, *))
            return
        }
        let (kz, ky, kx) = (s[2], s[3], s[4])
        let k3 = kz * ky * kx
        for oc in 0..<(s[0] * s[1]) {
            let a = src + oc * k3
            let b = dst + oc * k3
            for z in 0..<kz {
                for y in 0..<ky { for x in 0..<kx { b[(x * ky + y) * kz + z] = a[(z * ky + y) * kx + x] } }
            }
        }
    }

    /// `num_batches_tracked` is an int64 scalar in PyTorch; we keep it as one float.
    static func isCounter(_ name: String) -> Bool { name.hasSuffix(".num_batches_tracked") }

    /// Writes every parameter and buffer of `model` under `group` as one dataset per state_dict name.
    public static func write(_ model: SegmentationModel, to group: H5Group) throws {
        for store in [model.params, model.buffers] {
            for e in store.entries {
                let src = store.values.pointer + e.offset
                if isCounter(e.name) {
                    let d = try group.createDataset(e.name, type: .int64, shape: [])
                    var v = Int64(src[0])
                    try d.write(from: &v, as: .int64)
                    continue
                }
                var out = [Float](repeating: 0, count: e.count)
                out.withUnsafeMutableBufferPointer { convert(src, $0.baseAddress!, ourShape: e.shape) }
                let d = try group.createDataset(e.name, type: .float32, shape: torchShape(e.shape))
                try out.withUnsafeBytes { try d.write(from: $0.baseAddress!, as: .float32) }
            }
        }
    }

    /// One tensor of a model's PyTorch `state_dict`: its name, PyTorch shape and values in PyTorch's axis order.
    /// `num_batches_tracked` counters are `isCounter`, shape `[]`, one value (an int64 in PyTorch).
    public struct NamedTensor: Sendable {
        public let name: String
        public let shape: [Int]
        public let values: [Float]
        public var isCounter: Bool { StateDict.isCounter(name) }
    }

    /// Every parameter and buffer of `model` as the original class's `state_dict()` returns them, in its
    /// order: PyTorch lists each module's parameters, then its buffers, module by module. Our two stores each
    /// keep registration order, so a BatchNorm's buffers follow its last parameter.
    public static func tensors(of model: SegmentationModel) -> [NamedTensor] {
        func module(_ name: String) -> Substring { name[..<(name.lastIndex(of: ".") ?? name.endIndex)] }
        func named(_ store: ParameterStore, _ e: ParameterEntry) -> NamedTensor {
            let src = store.values.pointer + e.offset
            if isCounter(e.name) { return NamedTensor(name: e.name, shape: [], values: [src[0]]) }
            var out = [Float](repeating: 0, count: e.count)
            out.withUnsafeMutableBufferPointer { convert(src, $0.baseAddress!, ourShape: e.shape) }
            return NamedTensor(name: e.name, shape: torchShape(e.shape), values: out)
        }
        let params = model.params.entries
        let buffers = model.buffers.entries
        var result: [NamedTensor] = []
        var next = 0
        for (i, e) in params.enumerated() {
            result.append(named(model.params, e))
            guard i + 1 == params.count || module(params[i + 1].name) != module(e.name) else { continue }
            while next < buffers.count && module(buffers[next].name) == module(e.name) {
                result.append(named(model.buffers, buffers[next]))
                next += 1
            }
        }
        result += buffers[next...].map { named(model.buffers, $0) }
        return result
    }

    /// Loads every parameter and buffer of `model` from `group`; a missing name, an unexpected name (`strict`)
    /// or a wrong shape is an error naming the file, the tensor and both shapes. Nothing is changed unless the
    /// whole set matches.
    public static func read(into model: SegmentationModel, from group: H5Group, strict: Bool = true) throws {
        let counts = Dictionary(
            (model.params.entries + model.buffers.entries).map { ($0.name, $0.count) }, uniquingKeysWith: { a, _ in a })
        try load(into: model, location: group.location, names: Set(try group.members()), strict: strict) { name in
            let d = try group.dataset(name)
            // A dataset of another size is refused by its shape; its values are never read (a damaged file
            // may claim billions of them).
            if d.count != counts[name] && !isCounter(name) { return (d.shape, []) }
            if isCounter(name) {
                guard d.count == 1 else { throw AttunetError("\(d.location): expected a scalar") }
                var v: Int64 = 0
                try d.read(into: &v, as: .int64)
                return (d.shape, [Float(v)])
            }
            guard d.isFloat else { throw AttunetError("\(d.location): not a floating-point tensor") }
            return (d.shape, try d.readFloats())
        }
    }

    /// The one loading routine behind every state_dict source (HDF5 checkpoints, safetensors): for each of
    /// the model's tensors, `tensor(name)` gives its PyTorch shape and values; names, shapes and finiteness
    /// are checked, the kernel axes reversed, and the model is written only when every tensor passed.
    static func load(
        into model: SegmentationModel, location: String, names: Set<String>, strict: Bool,
        tensor: (String) throws -> (shape: [Int], values: [Float])
    ) throws {
        var staged: [(UnsafeMutablePointer<Float>, [Float])] = []
        for store in [model.params, model.buffers] {
            for e in store.entries {
                guard names.contains(e.name) else {
                    throw AttunetError(
                        "\(location): missing tensor \(e.name) (is this for another model? this model is \(model.config.kind.rawValue), \(model.config.classes) classes, feature scale \(model.config.featureScale))"
                    )
                }
                let (shape, torch) = try tensor(e.name)
                let want = isCounter(e.name) ? [] : torchShape(e.shape)
                guard shape == want || (want.isEmpty && torch.count == 1) else {
                    throw AttunetError(
                        "\(location): tensor \(e.name) has shape \(shape) but the model needs \(want) (another class count, channel count or feature scale?)"
                    )
                }
                if let bad = torch.firstIndex(where: { !$0.isFinite }) {
                    throw AttunetError("\(location): tensor \(e.name) has a non-finite value at element \(bad)")
                }
                var ours = [Float](repeating: 0, count: e.count)
                torch.withUnsafeBufferPointer { t in
                    ours.withUnsafeMutableBufferPointer {
                        convert(t.baseAddress!, $0.baseAddress!, ourShape: want.isEmpty ? [1] : want)
                    }
                }
                staged.append((store.values.pointer + e.offset, ours))
            }
        }
        if strict {
            let known = Set(model.params.entries.map(\.name) + model.buffers.entries.map(\.name))
            if let extra = names.subtracting(known).sorted().first {
                throw AttunetError(
                    "\(location): unexpected tensor \(extra) (not part of \(model.config.kind.rawValue))")
            }
        }
        for (dst, values) in staged { dst.update(from: values, count: values.count) }
    }
}
