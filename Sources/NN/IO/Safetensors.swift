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
    public struct Entry { public let dtype: String; public let shape: [Int]; let begin: Int; let end: Int }
    public let path: String
    public let entries: [String: Entry]
    private let data: Data
    private let dataStart: Int

    public init(_ path: String) throws {
        self.path = path
        guard let data = FileManager.default.contents(atPath: path) else { throw AttunetError("\(path): no such file or unreadable") }
        self.data = data
        guard data.count >= 8 else { throw AttunetError("\(path): too short to be a safetensors file") }
        let n = data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self).littleEndian }
        guard n > 0, n <= UInt64(data.count - 8) else { throw AttunetError("\(path): bad header length \(n) (not safetensors, or truncated)") }
        dataStart = 8 + Int(n)
        guard let json = try? JSONSerialization.jsonObject(with: data.subdata(in: 8..<dataStart)) as? [String: Any] else {
            throw AttunetError("\(path): header is not valid JSON")
        }
        var entries: [String: Entry] = [:]
        for (name, value) in json where name != "__metadata__" {
            guard let d = value as? [String: Any], let dtype = d["dtype"] as? String, let shape = d["shape"] as? [Int],
                  let offs = d["data_offsets"] as? [Int], offs.count == 2 else {
                throw AttunetError("\(path): malformed header entry for \(name)")
            }
            guard offs[0] >= 0, offs[1] >= offs[0], offs[1] <= data.count - dataStart else {
                throw AttunetError("\(path): tensor \(name) lies outside the file (truncated?)")
            }
            // Checked arithmetic: a damaged header must give an error, never an overflow.
            var count = 1
            for n in shape {
                let (p, overflow) = count.multipliedReportingOverflow(by: n)
                guard n >= 0, !overflow else { throw AttunetError("\(path): tensor \(name) has an impossible shape \(shape)") }
                count = p
            }
            if let width = Self.widths[dtype] {
                let (bytes, overflow) = count.multipliedReportingOverflow(by: width)
                guard !overflow, bytes == offs[1] - offs[0] else {
                    throw AttunetError("\(path): tensor \(name) has \(offs[1] - offs[0]) bytes for shape \(shape) of \(dtype)")
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
        guard let width = Self.widths[e.dtype] else { throw AttunetError("\(path): tensor \(name) has unsupported dtype \(e.dtype)") }
        let count = (e.end - e.begin) / width   // the header's shape and byte count agree (checked on opening)
        let bytes = data.subdata(in: (dataStart + e.begin)..<(dataStart + e.end))
        return bytes.withUnsafeBytes { raw -> [Float] in
            (0..<count).map { i -> Float in
                switch e.dtype {
                case "F32": return Float(bitPattern: raw.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self).littleEndian)
                case "F64": return Float(Double(bitPattern: raw.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self).littleEndian))
                case "F16": return Float(Float16(bitPattern: raw.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self).littleEndian))
                case "BF16": return Float(bitPattern: UInt32(raw.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self).littleEndian) << 16)
                case "I64": return Float(Int64(bitPattern: raw.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self).littleEndian))
                default: return Float(Int32(bitPattern: raw.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self).littleEndian))
                }
            }
        }
    }
}

extension SegmentationModel {
    /// Infers the architecture from a state_dict's names and shapes: attention blocks present or not, input
    /// channels and feature scale from `conv1.conv1.0.weight`, classes from `final.weight`.
    public static func inferConfig(names: Set<String>, shape: (String) -> [Int]?, alignCorners: Bool = false) throws -> ModelConfig {
        guard let c1 = shape("conv1.conv1.0.weight"), c1.count == 5, let fin = shape("final.weight"), fin.count == 5 else {
            throw AttunetError("not a state_dict of unet_CT_multi_att_dsv_3D or unet_CT_dsv_3D (conv1.conv1.0.weight / final.weight missing)")
        }
        let kind: ModelKind = names.contains("attentionblock2.gate_block_1.psi.weight") ? .attentionUNet : .unet
        let config = ModelConfig(kind: kind, inChannels: c1[1], classes: fin[0], featureScale: 64.0 / Double(c1[0]),
                                 alignCorners: alignCorners)
        if let problem = config.problem { throw AttunetError("not a state_dict attunet can load: \(problem)") }
        return config
    }

    /// Loads weights from a safetensors state_dict (PyTorch axis order), checking every name and shape.
    public func load(safetensors f: SafetensorsFile) throws {
        try StateDict.load(into: self, location: f.path, names: Set(f.entries.keys), strict: true) { name in
            (f.entries[name]!.shape, try f.floats(name))
        }
    }
}
