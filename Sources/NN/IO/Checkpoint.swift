import Foundation
import HDF5Kit
import Support

/// The HDF5 checkpoint (the NN documentation's "Checkpoint format" article), model part: `/state_dict/<name>` in PyTorch's shape and axis order
/// (loads into the original model with h5py + torch.from_numpy), and root attributes `format` and
/// `model_config` (JSON of `ModelConfig`). Training state (optimizer moments and step, epoch and step within it, config) is added by the
/// trainer through `extra`.
public enum Checkpoint {
    public static let formatName = "attunet-checkpoint"
    public static let formatVersion = 1
    /// The root `format` attribute: name and version.
    public static let format = "\(formatName) \(formatVersion)"

    /// Writes atomically (temporary file, fsync, rename): a crash never leaves a half-written `path`.
    public static func save(_ model: SegmentationModel, to path: String, extra: (H5File) throws -> Void = { _ in }) throws {
        try H5File.writeAtomically(path) { f in
            try f.root.setAttribute("format", format)
            let json = String(decoding: try JSONEncoder().encode(model.config), as: UTF8.self)
            try f.root.setAttribute("model_config", json)
            try StateDict.write(model, to: try f.root.createGroup("state_dict"))
            try extra(f)
        }
    }

    /// The model configuration stored in a checkpoint.
    public static func config(of file: H5File) throws -> ModelConfig {
        let format = (try? file.root.stringAttribute("format")) ?? ""
        guard format.hasPrefix(formatName) else {
            throw AttunetError("\(file.path): not an attunet checkpoint (no format attribute '\(formatName)')")
        }
        guard let version = Int(format.dropFirst(formatName.count).trimmingCharacters(in: .whitespaces)),
              version <= formatVersion else {
            throw AttunetError("\(file.path): checkpoint format '\(format)' is newer than this attunet reads (\(Self.format))")
        }
        let json = try file.root.stringAttribute("model_config")
        do { return try JSONDecoder().decode(ModelConfig.self, from: Data(json.utf8)) } catch {
            throw AttunetError("\(file.path): unreadable model_config attribute")
        }
    }

    /// Builds the model a checkpoint describes and loads its weights and BN buffers.
    public static func load(_ path: String) throws -> SegmentationModel {
        let f = try H5File.open(path)
        let model = SegmentationModel(try config(of: f))
        try StateDict.read(into: model, from: try f.root.group("state_dict"))
        return model
    }

    /// Loads a checkpoint's weights into an existing model, refusing one made for another architecture.
    public static func load(_ path: String, into model: SegmentationModel) throws {
        let f = try H5File.open(path)
        let c = try config(of: f)
        guard c.kind == model.config.kind, c.classes == model.config.classes, c.inChannels == model.config.inChannels,
              c.featureScale == model.config.featureScale else {
            throw AttunetError("\(path): checkpoint is for \(c.kind.rawValue) with \(c.classes) classes, \(c.inChannels) input channel(s), feature scale \(c.featureScale); this run uses \(model.config.kind.rawValue) with \(model.config.classes) classes, \(model.config.inChannels) input channel(s), feature scale \(model.config.featureScale)")
        }
        try StateDict.read(into: model, from: try f.root.group("state_dict"))
    }
}
