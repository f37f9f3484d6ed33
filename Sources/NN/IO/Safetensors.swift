import Foundation
import Support

/// A reader for the safetensors format (8-byte little-endian header length, a JSON header of
/// `{name: {dtype, shape, data_offsets: [begin, end]}}`, then the raw little-endian data). A PyTorch `.pth`
/// state_dict converts to it in two lines:
///     import torch, safetensors.torch as st
///     st.save_file({k: v.contiguous() for k, v in torch.load('model.pth', map_location='cpu').items()}, 'model.safetensors')
///
/// The format has no checksum. A damaged header (length, JSON, dtype, shape or offsets that do not fit the
/// file) is refused with one line naming the file and the tensor; a changed value inside the data cannot be
/// detected (beyond non-finite values, which loading refuses).
public struct SafetensorsFile {
    public struct Entry {
        public let dtype: String
        public let shape: [Int]
        let begin: Int
        let end: Int
    }
    public let path: String
    public let entries: [String: Entry]
    /// The header's `__metadata__` (string to string; empty when absent). Entries that are not strings are
    /// left out: the format allows only strings there.
    public let metadata: [String: String]
    private let data: Data
    private let dataStart: Int

    public init(_ path: String) throws {
        self.path = path
        guard let data = FileManager.default.contents(atPath: path) else {
            throw AttunetError("\(path): no such file or unreadable")
        }
        self.data = data
        guard data.count >= 8 else { throw AttunetError("\(path): too short to be a safetensors file") }
        let n = data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self).littleEndian }
        guard n > 0, n <= UInt64(data.count - 8) else {
            throw AttunetError("\(path): bad header length \(n) (not safetensors, or truncated)")
        }
        dataStart = 8 + Int(n)
        guard let json = try? JSONSerialization.jsonObject(with: data.subdata(in: 8..<dataStart)) as? [String: Any]
        else {
            throw AttunetError("\(path): header is not valid JSON")
        }
        metadata = (json["__metadata__"] as? [String: Any])?.compactMapValues { $0 as? String } ?? [:]
        var entries: [String: Entry] = [:]
        for (name, value) in json where name != "__metadata__" {
            guard let d = value as? [String: Any], let dtype = d["dtype"] as? String, let shape = d["shape"] as? [Int],
                let offs = d["data_offsets"] as? [Int], offs.count == 2
            else {
                throw AttunetError("\(path): malformed header entry for \(name)")
            }
            guard offs[0] >= 0, offs[1] >= offs[0], offs[1] <= data.count - dataStart else {
                throw AttunetError("\(path): tensor \(name) lies outside the file (truncated?)")
            }
            // Checked arithmetic: a damaged header must give an error, never an overflow.
            var count = 1
            for n in shape {
                let (p, overflow) = count.multipliedReportingOverflow(by: n)
                guard n >= 0, !overflow else {
                    throw AttunetError("\(path): tensor \(name) has an impossible shape \(shape)")
                }
                count = p
            }
            if let width = Self.widths[dtype] {
                let (bytes, overflow) = count.multipliedReportingOverflow(by: width)
                guard !overflow, bytes == offs[1] - offs[0] else {
                    throw AttunetError(
                        "\(path): tensor \(name) has \(offs[1] - offs[0]) bytes for shape \(shape) of \(dtype)")
                }
            }
            entries[name] = Entry(dtype: dtype, shape: shape, begin: offs[0], end: offs[1])
        }
        self.entries = entries
    }

    /// Bytes per element of the dtypes `floats(_:)` converts.
    static let widths = ["F32": 4, "F64": 8, "F16": 2, "BF16": 2, "I64": 8, "I32": 4]

    /// The tensor's values as Float (F32, F64, F16, BF16, I64, I32 are converted).
    public func floats(_ name: String) throws -> [Float] {
        guard let e = entries[name] else { throw AttunetError("\(path): no tensor \(name)") }
        guard let width = Self.widths[e.dtype] else {
            throw AttunetError("\(path): tensor \(name) has unsupported dtype \(e.dtype)")
        }
        let count = (e.end - e.begin) / width  // the header's shape and byte count agree (checked on opening)
        let bytes = data.subdata(in: (dataStart + e.begin)..<(dataStart + e.end))
        return bytes.withUnsafeBytes { raw -> [Float] in
            (0..<count).map { i -> Float in
                switch e.dtype {
                case "F32":
                    return Float(bitPattern: raw.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self).littleEndian)
                case "F64":
                    return Float(
                        Double(bitPattern: raw.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self).littleEndian))
                case "F16":
                    return Float(
                        Float16(bitPattern: raw.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self).littleEndian))
                case "BF16":
                    return Float(
                        bitPattern: UInt32(raw.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self).littleEndian) << 16
                    )
                case "I64":
                    return Float(
                        Int64(bitPattern: raw.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self).littleEndian))
                default:
                    return Float(
                        Int32(bitPattern: raw.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self).littleEndian))
                }
            }
        }
    }
}

/// One tensor for ``SafetensorsFile/encode(_:metadata:)``: its name, dtype, shape and raw little-endian bytes.
public struct SafetensorsTensor: Sendable {
    /// The dtypes attunet writes: float32 weights and the int64 `num_batches_tracked` counters.
    public enum DType: String, Sendable {
        case f32 = "F32"
        case i64 = "I64"
        /// Bytes per element.
        public var width: Int { self == .f32 ? 4 : 8 }
    }
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let bytes: Data

    /// A float32 tensor; `values` has the shape's element count.
    public init(name: String, shape: [Int], floats values: [Float]) {
        precondition(values.count == shape.reduce(1, *), "\(name): \(values.count) values for shape \(shape)")
        self.name = name
        self.dtype = .f32
        self.shape = shape
        bytes = values.map { $0.bitPattern.littleEndian }.withUnsafeBytes { Data($0) }
    }

    /// An int64 tensor (shape `[]` for a scalar); `values` has the shape's element count.
    public init(name: String, shape: [Int], int64s values: [Int64]) {
        precondition(values.count == shape.reduce(1, *), "\(name): \(values.count) values for shape \(shape)")
        self.name = name
        self.dtype = .i64
        self.shape = shape
        bytes = values.map { $0.littleEndian }.withUnsafeBytes { Data($0) }
    }
}

extension SafetensorsFile {
    /// The bytes of a safetensors file holding `tensors`, the writer beside the reader above.
    ///
    /// The header lists the tensors in the order given, with `metadata` (sorted by key) as `__metadata__`
    /// when it is not empty, and is padded with spaces to a multiple of 8 bytes, as the reference writer
    /// does. The data holds the widest dtype first, each dtype in the order given, so every tensor starts at
    /// a multiple of its element size (PyTorch refuses a misaligned view) and the data is contiguous, as the
    /// reference reader requires. The same input gives the same bytes.
    public static func encode(_ tensors: [SafetensorsTensor], metadata: [String: String] = [:]) throws -> Data {
        var names = Set<String>()
        for t in tensors {
            guard t.name != "__metadata__", names.insert(t.name).inserted else {
                throw AttunetError("safetensors: tensor name \(t.name) used twice or reserved")
            }
        }
        var offsets: [String: (Int, Int)] = [:]
        var layout: [SafetensorsTensor] = []
        var end = 0
        for width in [8, 4] {
            for t in tensors where t.dtype.width == width {
                offsets[t.name] = (end, end + t.bytes.count)
                end += t.bytes.count
                layout.append(t)
            }
        }
        var fields: [String] = []
        if !metadata.isEmpty {
            let pairs = try metadata.sorted { $0.key < $1.key }.map {
                "\(try jsonString($0.key)):\(try jsonString($0.value))"
            }
            fields.append("\"__metadata__\":{\(pairs.joined(separator: ","))}")
        }
        for t in tensors {
            let (begin, end) = offsets[t.name]!
            fields.append(
                "\(try jsonString(t.name)):{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(begin),\(end)]}"
            )
        }
        var header = Data("{\(fields.joined(separator: ","))}".utf8)
        header.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - header.count % 8) % 8))
        var out = Data(capacity: 8 + header.count + end)
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(header)
        for t in layout { out.append(t.bytes) }
        return out
    }

    /// Writes ``encode(_:metadata:)`` of `tensors` to `path` atomically (temporary file, fsync, rename): a
    /// failed write keeps the previous file. Returns the bytes written.
    @discardableResult
    public static func write(_ tensors: [SafetensorsTensor], metadata: [String: String] = [:], to path: String) throws
        -> Int
    {
        let data = try encode(tensors, metadata: metadata)
        try AtomicFile.write(data, to: path)
        return data.count
    }

    /// `text` as a JSON string literal.
    static func jsonString(_ text: String) throws -> String {
        String(
            decoding: try JSONSerialization.data(
                withJSONObject: text, options: [.fragmentsAllowed, .withoutEscapingSlashes]), as: UTF8.self)
    }
}

extension SegmentationModel {
    /// The metadata ``save(safetensors:metadata:)`` writes: `format` `pt` (what PyTorch's own writer
    /// records), `attunet_model_config` (the checkpoint's `model_config` JSON: kind, classes, input channels,
    /// feature scale, align_corners) and `attunet_weights_sha256` (``Checkpoint/weightsDigest(_:)``).
    public func safetensorsMetadata() throws -> [String: String] {
        return [
            "format": "pt",
            "attunet_model_config": try JSONFiles.string(config),
            "attunet_weights_sha256": Checkpoint.weightsDigest(self),
        ]
    }

    /// The model's `state_dict` as safetensors tensors, in the original class's order: float32 in PyTorch's
    /// shape and axis order, `num_batches_tracked` as int64 scalars. A non-finite value is an error naming
    /// the tensor: loading refuses such a file, so none is written.
    public func safetensorsTensors() throws -> [SafetensorsTensor] {
        try StateDict.tensors(of: self).map { t in
            if let bad = t.values.firstIndex(where: { !$0.isFinite }) {
                throw AttunetError("tensor \(t.name) has a non-finite value at element \(bad); not written")
            }
            return t.isCounter
                ? SafetensorsTensor(name: t.name, shape: [], int64s: [Int64(t.values[0])])
                : SafetensorsTensor(name: t.name, shape: t.shape, floats: t.values)
        }
    }

    /// Writes the model's `state_dict` to `path` as safetensors, atomically, with ``safetensorsMetadata()``
    /// and `metadata` (which wins on a shared key) in the header: the file the original class loads with
    /// `load_state_dict(safetensors.torch.load_file(path), strict=True)`. Returns the bytes written.
    @discardableResult
    public func save(safetensors path: String, metadata: [String: String] = [:]) throws -> Int {
        try SafetensorsFile.write(
            try safetensorsTensors(), metadata: try safetensorsMetadata().merging(metadata) { $1 }, to: path)
    }

    /// Infers the architecture from a state_dict's names and shapes: attention blocks present or not, input
    /// channels and feature scale from `conv1.conv1.0.weight` (or a preset's feature scale, 3.82 or 3, when
    /// the widths of `conv1` ... `center` are that preset's), classes from `final.weight`.
    public static func inferConfig(names: Set<String>, shape: (String) -> [Int]?, alignCorners: Bool = false) throws
        -> ModelConfig
    {
        guard let c1 = shape("conv1.conv1.0.weight"), c1.count == 5, let fin = shape("final.weight"), fin.count == 5
        else {
            throw AttunetError(
                "not a state_dict of unet_CT_multi_att_dsv_3D or unet_CT_dsv_3D (conv1.conv1.0.weight / final.weight missing)"
            )
        }
        let kind: ModelKind = names.contains("attentionblock2.gate_block_1.psi.weight") ? .attentionUNet : .unet
        let config = ModelConfig(
            kind: kind, inChannels: c1[1], classes: fin[0], featureScale: 64.0 / Double(c1[0]),
            alignCorners: alignCorners)
        if let problem = config.problem { throw AttunetError("not a state_dict attunet can load: \(problem)") }
        // conv1's width alone cannot tell the scales whose deeper widths truncate differently (3.82 gives 16,
        // 33, 67, 134, 268; 4 gives 16, 32, 64, 128, 256): the presets' scales are tried against every
        // level's width. When none fits, loading names the first tensor whose shape differs.
        let widths = ["conv1", "conv2", "conv3", "conv4", "center"].map { shape("\($0).conv1.0.weight")?.first }
        for preset in [nil] + ModelKind.allCases.filter({ $0.presetFeatureScale != nil }) {
            let candidate =
                preset.map {
                    ModelConfig(
                        kind: kind == .unet ? $0 : kind, inChannels: c1[1], classes: fin[0],
                        featureScale: $0.presetFeatureScale!, alignCorners: alignCorners)
                } ?? config
            if candidate.filters.map(Optional.some) == widths { return candidate }
        }
        return config
    }

    /// Loads weights from a safetensors state_dict (PyTorch axis order), checking every name and shape.
    public func load(safetensors f: SafetensorsFile) throws {
        try StateDict.load(into: self, location: f.path, names: Set(f.entries.keys), strict: true) { name in
            (f.entries[name]!.shape, try f.floats(name))
        }
    }
}
