import ArgumentParser
import NN


/// The options that choose an architecture, shared by the subcommands that build a model.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "Network: attention-unet (the paper's released Attention U-Net) or unet (its U-Net baseline).")
    var model: ModelKind = .attentionUNet

    @OptionGroup var architecture: ArchitectureOptions

    var config: ModelConfig { architecture.config(model) }
}

/// Everything of the architecture but the network kind (`attunet cv` trains several kinds with these).
struct ArchitectureOptions: ParsableArguments {
    @Option(help: "Output classes including background (the paper: 4 = background, spleen, pancreas, kidney).")
    var classes: Int = 4

    @Option(help: "Input channels (1 for CT).")
    var inChannels: Int = 1

    @Option(help: "Filters are [64,128,256,512,1024] / feature-scale (the paper: 4 -> [16,32,64,128,256]).")
    var featureScale: Double = 4

    @Flag(help: "Trilinear upsampling with align_corners=True (PyTorch <= 0.3, what the paper's models were trained with); default is modern PyTorch's align_corners=False.")
    var alignCorners = false

    @Flag(help: "Initialise attention gates to pass features through (alpha ~ 0.95), as the paper describes; the released code does not.")
    var passThroughGates = false

    func validate() throws {
        guard classes >= 2 else { throw ValidationError("--classes must be at least 2 (background + one organ)") }
        guard inChannels >= 1 else { throw ValidationError("--in-channels must be at least 1") }
        guard featureScale > 0, Int(64 / featureScale) >= 1 else { throw ValidationError("--feature-scale must be in (0, 64]") }
    }

    func config(_ kind: ModelKind) -> ModelConfig {
        ModelConfig(kind: kind, inChannels: inChannels, classes: classes, featureScale: featureScale,
                    alignCorners: alignCorners, passThroughGates: passThroughGates)
    }
}
