import ArgumentParser
import Foundation
import HDF5Kit
import NN
import Support

/// `attunet export-weights`: an attunet checkpoint → the original PyTorch model's state_dict as safetensors
/// (the reverse of `import-weights`).
struct ExportWeights: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export-weights",
        abstract: "Write a checkpoint's weights as a PyTorch safetensors state_dict.",
        discussion: """
            Reads a training checkpoint or a weights-only one, verifies it as every load does (HDF5's Fletcher-32 checksums, the stored SHA-256 of the weights and BN buffers) and writes every parameter and buffer of the original class's state_dict (unet_CT_multi_att_dsv_3D, or unet_CT_dsv_3D for the U-Nets) under its own name, in PyTorch's shape and axis order: float32, num_batches_tracked as int64, little-endian, in state_dict order. The optimizer and training state are not exported. The header's __metadata__ holds format "pt", attunet_model_config (the checkpoint's model_config JSON) and attunet_weights_sha256.

              attunet export-weights runs/demo/checkpoint_best.h5 --out model.safetensors

            It prints one line (tensors, parameters, bytes, path) and how to load the file into the original class, whose code this repository does not ship:

              from safetensors.torch import load_file
              model = unet_CT_multi_att_dsv_3D(feature_scale=4, n_classes=4, in_channels=1)
              model.load_state_dict(load_file('model.safetensors'), strict=True)

            The PyTorch model takes (B, C, X, Y, Z): an attunet volume [N][C][Z][Y][X] is x.transpose(0, 1, 4, 3, 2) there. A checkpoint with align_corners true needs the PyTorch <= 0.3 trilinear up-sampling (align_corners=True) to give the same logits. attunet import-weights reads the file back into bit-identical weights (pass --align-corners for such a checkpoint).

            The file is written atomically (a temporary file beside it, renamed into place); an existing --out is refused unless --force is given. A damaged or wrong input is refused with one line naming it, and nothing is written.

            Exit status:
              0   the file was written
              1   error (one line): bad or damaged input, --out exists, write failed
              64  bad command line
            """
    )

    @Argument(help: "The attunet checkpoint (.h5) to export.")
    var checkpoint: String

    @Option(help: "The safetensors file to write. Refuses to overwrite an existing file unless --force.")
    var out: String

    @Flag(help: "Overwrite --out if it exists.")
    var force = false

    func run() throws {
        if FileManager.default.fileExists(atPath: out) {
            guard force else { throw AttunetError("\(out) exists; pass --force to overwrite it") }
            // Even with --force a checkpoint must not be replaced by its own export.
            if let a = fileIdentity(out), a == fileIdentity(checkpoint) {
                throw AttunetError("\(out): is the input checkpoint itself; choose another --out")
            }
        }
        if FileManager.default.fileExists(atPath: checkpoint) && !H5File.isHDF5(checkpoint) {
            let hint =
                (try? SafetensorsFile(checkpoint)) != nil
                ? " (a safetensors file: attunet import-weights converts it into one)" : ""
            throw AttunetError("\(checkpoint): not an attunet checkpoint (not an HDF5 file)\(hint)")
        }
        let model = try Checkpoint.load(checkpoint)  // verified: checksums and the stored weights digest
        let tensors = try model.safetensorsTensors()
        let bytes = try SafetensorsFile.write(tensors, metadata: try model.safetensorsMetadata(), to: out)
        let c = model.config
        print(
            "export-weights: \(checkpoint) -> \(out): \(c.kind.rawValue), \(tensors.count) tensors, \(grouped(model.parameterCount)) parameters, \(grouped(bytes)) bytes"
        )
        let cls = c.kind.hasAttentionGates ? "unet_CT_multi_att_dsv_3D" : "unet_CT_dsv_3D"
        let scale = c.featureScale == c.featureScale.rounded() ? String(Int(c.featureScale)) : String(c.featureScale)
        print(
            """
            load it into the original class (ozan-oktay/Attention-Gated-Networks):
              from safetensors.torch import load_file
              model = \(cls)(feature_scale=\(scale), n_classes=\(c.classes), in_channels=\(c.inChannels))
              model.load_state_dict(load_file(\(pythonString(out))), strict=True)
            """)
        if c.alignCorners {
            print(
                "  # this model uses align_corners=True trilinear up-sampling (PyTorch <= 0.3): the same logits need it there"
            )
        }
    }

    /// Device and inode of `path`, nil when it cannot be read.
    private func fileIdentity(_ path: String) -> [UInt64]? {
        guard let a = try? FileManager.default.attributesOfItem(atPath: path),
            let dev = a[.systemNumber] as? NSNumber, let ino = a[.systemFileNumber] as? NSNumber
        else { return nil }
        return [dev.uint64Value, ino.uint64Value]
    }

    /// `s` as a Python string literal.
    private func pythonString(_ s: String) -> String {
        "'" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'"
    }
}
