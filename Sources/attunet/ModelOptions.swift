import ArgumentParser
import NN

/// The options that choose an architecture, shared by the subcommands that build a model.
struct ModelOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "Network: attention-unet (the paper's released Attention U-Net), unet (its U-Net baseline), or a U-Net preset of fixed capacity: unet-capacity-matched (feature scale 3.82, 6,444,328 parameters with 4 classes, the paper's 6.44 M row) or unet-10m (feature scale 3, 10,403,190, the 10.40 M row).",
            discussion: "The presets fix their feature scale: a different --feature-scale is refused."))
    var model: ModelKind = .attentionUNet

    @OptionGroup var architecture: ArchitectureOptions

    func validate() throws { try architecture.check([model]) }

    /// The architecture, with the class count of the store it trains on unless --classes is given.
    func config(storeClasses: Int? = nil) -> ModelConfig { architecture.config(model, storeClasses: storeClasses) }
}

/// Everything of the architecture but the network kind (`attunet cv` trains several kinds with these).
struct ArchitectureOptions: ParsableArguments {
    @Option(
        help:
            "Output classes including background (default: the store's class count; 4 without a store, the paper's background, spleen, pancreas, kidney)."
    )
    var classes: Int?

    @Option(help: "Input channels (1 for CT).")
    var inChannels: Int = 1

    @Option(
        help:
            "Filters are [64,128,256,512,1024] / feature-scale (default 4, the paper's: [16,32,64,128,256]); the presets unet-capacity-matched and unet-10m fix their own."
    )
    var featureScale: Double?

    @Flag(
        help:
            "Trilinear upsampling with align_corners=True (PyTorch <= 0.3, what the paper's models were trained with); default is modern PyTorch's align_corners=False."
    )
    var alignCorners = false

    @Flag(
        help: ArgumentHelp(
            "Initialise attention gates to pass features through (alpha ~ 0.95), as the paper describes; the released code does not.",
            discussion:
                "With train --init from a U-Net checkpoint the gates start as an exact pass-through instead (psi 0 with bias 3, W = I/alpha, the combine convolution the mean of the two gates, their BNs the identity), so the new network computes the U-Net's logits in evaluation mode."
        ))
    var passThroughGates = false

    func validate() throws {
        if let classes, classes < 2 { throw ValidationError("--classes must be at least 2 (background + one organ)") }
        guard inChannels >= 1 else { throw ValidationError("--in-channels must be at least 1") }
        if let featureScale {
            guard featureScale > 0, Int(64 / featureScale) >= 1 else {
                throw ValidationError("--feature-scale must be in (0, 64]")
            }
        }
    }

    /// Refuses a --feature-scale that contradicts a preset's.
    func check(_ kinds: [ModelKind]) throws {
        guard let featureScale else { return }
        for k in kinds {
            if let fixed = k.presetFeatureScale, fixed != featureScale {
                throw ValidationError(
                    "--feature-scale \(featureScale) conflicts with \(k.rawValue), which fixes feature scale \(fixed) (\(k.summary)); leave --feature-scale out, or use unet with --feature-scale"
                )
            }
        }
    }

    /// The models of a comma-separated `--models` list, in order, checked against these options.
    func kinds(_ list: String) throws -> [ModelKind] {
        let names = list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        var kinds: [ModelKind] = []
        for n in names {
            guard let k = ModelKind(rawValue: n) else {
                throw ValidationError(
                    "--models: unknown model '\(n)' (\(ModelKind.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            guard !kinds.contains(k) else { throw ValidationError("--models: \(n) given twice") }
            kinds.append(k)
        }
        guard !kinds.isEmpty else { throw ValidationError("--models: no model") }
        try check(kinds)
        return kinds
    }

    /// The architecture of `kind`: --classes when given, else `storeClasses` (the store's class count), else 4.
    func config(_ kind: ModelKind, storeClasses: Int? = nil) -> ModelConfig {
        ModelConfig(
            kind: kind, inChannels: inChannels, classes: classes ?? storeClasses ?? 4, featureScale: featureScale ?? 4,
            alignCorners: alignCorners, passThroughGates: passThroughGates)
    }
}
