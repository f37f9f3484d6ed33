import COpenSSL
import Foundation
import HDF5Kit
import Support

/// The HDF5 checkpoint (the NN documentation's "Checkpoint format" article), model part: `/state_dict/<name>` in PyTorch's shape and axis order
/// (loads into the original model with h5py + torch.from_numpy), and root attributes `format` and
/// `model_config` (JSON of `ModelConfig`). Training state (optimizer moments and step, epoch and step within it, config) is added by the
/// trainer through `extra`.
///
/// Integrity: every dataset carries HDF5's Fletcher-32 checksum (`H5Group/createDataset(_:type:shape:chunks:deflate:)`),
/// and the root attribute `weights_sha256` holds ``weightsDigest(_:)`` of what was saved. Loading verifies both
/// and refuses a damaged file with one line naming it and what failed; a checkpoint written before the digest
/// existed loads without it.
public enum Checkpoint {
    public static let formatName = "attunet-checkpoint"
    public static let formatVersion = 1
    /// The root `format` attribute: name and version.
    public static let format = "\(formatName) \(formatVersion)"

    /// The root attribute holding ``weightsDigest(_:)`` of the saved weights and BN buffers (hex).
    public static let weightsDigestAttribute = "weights_sha256"

    /// Writes atomically (temporary file, fsync, rename): a crash never leaves a half-written `path`, and a
    /// failed write (a full disk) keeps the previous file. With a `writer`, the fsyncs and the rename run on its
    /// thread after this returns (``H5File/writeAtomically(_:committingOn:_:)``).
    public static func save(
        _ model: SegmentationModel, to path: String, committingOn writer: BackgroundWriter? = nil,
        extra: (H5File) throws -> Void = { _ in }
    ) throws {
        try H5File.writeAtomically(path, committingOn: writer) { f in
            try f.root.setAttribute("format", format)
            try f.root.setAttribute("model_config", try JSONFiles.string(model.config))
            try StateDict.write(model, to: try f.root.createGroup("state_dict"))
            try f.root.setAttribute(weightsDigestAttribute, weightsDigest(model))
            try extra(f)
        }
    }

    /// SHA-256 of the flat parameter buffer and then the flat BN buffer store (float32 little-endian, attunet's
    /// order and axis layout), as hex: equal digests mean bit-identical weights and running statistics. What
    /// `attunet inspect` prints and the checkpoint stores.
    public static func weightsDigest(_ model: SegmentationModel) -> String {
        var d = StoredDigest()
        for store in [model.params, model.buffers] {
            d.add(UnsafeRawBufferPointer(start: store.values.pointer, count: store.count * 4))
        }
        return d.hex
    }

    /// Compares ``weightsDigest(_:)`` of `model` (just loaded from `file`) with the digest `file` stores.
    /// Returns false when the file stores none (written before attunet stored it); throws a `.corrupt` error
    /// naming the file when they differ.
    @discardableResult
    public static func verifyWeights(_ model: SegmentationModel, in file: H5File) throws -> Bool {
        let root = file.root
        guard root.hasAttribute(weightsDigestAttribute) else { return false }
        try StoredDigest.check(
            stored: try root.stringAttribute(weightsDigestAttribute), actual: weightsDigest(model),
            file: file.path, what: "the weights and BN buffers (/state_dict)")
        return true
    }

    /// The model configuration stored in a checkpoint.
    public static func config(of file: H5File) throws -> ModelConfig {
        let format = (try? file.root.stringAttribute("format")) ?? ""
        guard format.hasPrefix(formatName) else {
            throw AttunetError("\(file.path): not an attunet checkpoint (no format attribute '\(formatName)')")
        }
        guard let version = Int(format.dropFirst(formatName.count).trimmingCharacters(in: .whitespaces)),
            version <= formatVersion
        else {
            throw AttunetError(
                "\(file.path): checkpoint format '\(format)' is newer than this attunet reads (\(Self.format))")
        }
        let json = try file.root.stringAttribute("model_config")
        guard let config = try? JSONFiles.decode(ModelConfig.self, from: json) else {
            throw AttunetError("\(file.path): unreadable model_config attribute")
        }
        if let problem = config.problem { throw AttunetError("\(file.path): model_config: \(problem)", kind: .corrupt) }
        // The first convolution's stored shape must be the configuration's before a network is built from it.
        let first = "conv1.conv1.0.weight"
        let expected = [config.filters[0], config.inChannels, 3, 3, 3]
        guard let group = try? file.root.group("state_dict"), group.exists(first) else {
            throw AttunetError("\(file.path): missing /state_dict/\(first)", kind: .corrupt)
        }
        let shape = try group.dataset(first).shape
        guard shape == expected else {
            throw AttunetError(
                "\(file.path): /state_dict/\(first) has shape \(shape), model_config needs \(expected)", kind: .corrupt)
        }
        return config
    }

    /// Builds the model a checkpoint describes and loads its weights and BN buffers, verified against the
    /// stored digest (and every dataset's Fletcher-32 checksum) when the file has them.
    public static func load(_ path: String) throws -> SegmentationModel {
        let f = try H5File.open(path)
        let model = SegmentationModel(try config(of: f))
        try StateDict.read(into: model, from: try f.root.group("state_dict"))
        try verifyWeights(model, in: f)
        return model
    }

    /// Loads a checkpoint's weights into an existing model, refusing one made for another architecture or one
    /// that fails its checksums; `model` is changed only when everything passed.
    public static func load(_ path: String, into model: SegmentationModel) throws {
        let f = try H5File.open(path)
        let c = try config(of: f)
        guard c.kind == model.config.kind, c.classes == model.config.classes, c.inChannels == model.config.inChannels,
            c.featureScale == model.config.featureScale
        else {
            throw AttunetError(
                "\(path): checkpoint is for \(c.kind.rawValue) with \(c.classes) classes, \(c.inChannels) input channel(s), feature scale \(c.featureScale); this run uses \(model.config.kind.rawValue) with \(model.config.classes) classes, \(model.config.inChannels) input channel(s), feature scale \(model.config.featureScale)"
            )
        }
        let loaded = SegmentationModel(model.config)
        try StateDict.read(into: loaded, from: try f.root.group("state_dict"))
        try verifyWeights(loaded, in: f)
        for (dst, src) in [(model.params, loaded.params), (model.buffers, loaded.buffers)] {
            dst.values.pointer.update(from: src.values.pointer, count: src.count)
        }
    }
}

/// SHA-256 (OpenSSL's libcrypto) over byte buffers and length-prefixed strings, as lowercase hex: the stored
/// digests of a checkpoint. A value: a copy hashes on from where the original was.
public struct StoredDigest {
    /// The EVP context, copied before an update when it is shared (copy on write).
    private final class Context {
        let ctx: OpaquePointer
        init(copying other: Context? = nil) {
            guard let ctx = EVP_MD_CTX_new() else { fatalError("OpenSSL: EVP_MD_CTX_new failed (out of memory)") }
            self.ctx = ctx
            let ok = other.map { EVP_MD_CTX_copy_ex(ctx, $0.ctx) } ?? EVP_DigestInit_ex(ctx, EVP_sha256(), nil)
            precondition(ok == 1, "OpenSSL: SHA-256 initialisation failed")
        }
        deinit { EVP_MD_CTX_free(ctx) }
    }
    private var context = Context()
    public init() {}

    public mutating func add(_ bytes: UnsafeRawBufferPointer) {
        if !isKnownUniquelyReferenced(&context) { context = Context(copying: context) }
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        precondition(EVP_DigestUpdate(context.ctx, base, bytes.count) == 1, "OpenSSL: SHA-256 update failed")
    }

    /// An integer as 8 bytes little-endian.
    public mutating func add(_ value: Int64) {
        withUnsafeBytes(of: value.littleEndian) { add($0) }
    }

    /// A string as its UTF-8 byte count (8 bytes little-endian) and bytes, so concatenations cannot collide.
    public mutating func add(_ text: String) {
        let bytes = Array(text.utf8)
        add(Int64(bytes.count))
        bytes.withUnsafeBytes { add($0) }
    }

    /// The digest so far, as 64 lowercase hex digits (the digest itself can go on taking bytes).
    public var hex: String {
        let done = Context(copying: context)
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        precondition(EVP_DigestFinal_ex(done.ctx, &out, &length) == 1 && length == 32, "OpenSSL: SHA-256 failed")
        return out.map { String(format: "%02x", $0) }.joined()
    }

    /// Throws a `.corrupt` error naming `file` and `what` when `actual` is not the `stored` digest.
    public static func check(stored: String, actual: String, file: String, what: String) throws {
        guard stored != actual else { return }
        throw AttunetError(
            "\(file): SHA-256 mismatch in \(what): the file records \(stored.prefix(16))…, its contents give \(actual.prefix(16))… (the file is damaged)",
            kind: .corrupt)
    }
}
