import ArgumentParser
import Foundation
import HDF5Kit
import NN
import Support
import Training

/// `attunet import-weights`: weights trained by the original PyTorch code → an attunet checkpoint.
struct ImportWeights: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import-weights",
        abstract: "Convert PyTorch weights (safetensors) into an attunet checkpoint.",
        discussion: """
            The input is a safetensors state_dict of the original PyTorch model, or an attunet checkpoint. The architecture (attention-unet or unet, input channels, classes, feature scale) is inferred from the tensors' names and shapes; every name and shape is checked. Convert a .pth first:
              python -c "import torch, safetensors.torch as st; \\
                sd = torch.load('model.pth', map_location='cpu'); \\
                sd = {k: v.contiguous() for k, v in sd.items()}; \\
                st.save_file(sd, 'model.safetensors')"
              attunet import-weights model.safetensors --out ckpt.h5

            A .pth saved from the whole training state (e.g. {'state_dict': ...}) must be reduced to the model's state_dict first. Weights trained with PyTorch <= 0.3 (the paper's) used align_corners=True trilinear upsampling: pass --align-corners to keep that behaviour.

            An attunet checkpoint (HDF5) as input is verified (Fletcher-32 checksums, stored SHA-256 of the weights) and written as a weights-only checkpoint (no optimizer or training state). safetensors has no checksum: a damaged header is refused with one line, but a changed value inside the data cannot be detected.

            Exit status:
              0   done, --out written
              1   an error, one line on stderr; --out not written
              64  bad command line
            """
    )

    @Argument(help: "The safetensors file (or an attunet checkpoint).")
    var input: String

    @Option(help: "The checkpoint to write (HDF5). Refuses to overwrite an existing file unless --force.")
    var out: String

    @Flag(help: "Use align_corners=True trilinear upsampling (PyTorch <= 0.3 semantics).")
    var alignCorners = false

    @Flag(help: "Overwrite --out if it exists.")
    var force = false

    func run() throws {
        if FileManager.default.fileExists(atPath: out) && !force {
            throw AttunetError("\(out) exists; pass --force to overwrite it")
        }
        let model: SegmentationModel
        if H5File.isHDF5(input) {
            if alignCorners {
                throw AttunetError(
                    "\(input): --align-corners is for safetensors input; an attunet checkpoint keeps its model_config")
            }
            model = try Checkpoint.load(input)  // verified: checksums and the stored weights digest
        } else {
            let f = try SafetensorsFile(input)
            var config: ModelConfig
            do {
                config = try SegmentationModel.inferConfig(
                    names: Set(f.entries.keys), shape: { f.entries[$0]?.shape },
                    alignCorners: alignCorners)
            } catch let e as AttunetError { throw AttunetError("\(input): \(e.message)", kind: e.kind) }
            // A file from `attunet export-weights` records the model configuration: its upsampling mode is kept.
            if let json = f.metadata["attunet_model_config"],
                let recorded = try? JSONFiles.decode(ModelConfig.self, from: json), recorded.alignCorners
            {
                config.alignCorners = true
            }
            model = SegmentationModel(config)
            try model.load(safetensors: f)
        }
        let config = model.config
        try Checkpoint.save(model, to: out)
        print(
            "import-weights: \(input) -> \(out): \(config.kind.rawValue), \(config.inChannels) input channel(s), \(config.classes) classes, feature scale \(config.featureScale), \(grouped(model.parameterCount)) parameters"
        )
    }
}
