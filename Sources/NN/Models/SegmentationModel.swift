import Foundation
import Support
import Tensor

/// Which of the paper's networks: its two models and two U-Net presets of fixed capacity.
public enum ModelKind: String, Codable, Sendable, CaseIterable {
    /// `unet_CT_multi_att_dsv_3D`: the released 3D Attention U-Net (6,473,322 parameters at feature_scale 4,
    /// 1 input channel, 4 classes).
    case attentionUNet = "attention-unet"
    /// `unet_CT_dsv_3D`: the paper's U-Net baseline with the same deep-supervision head (5,888,004).
    case unet = "unet"
    /// `unet_CT_dsv_3D` at feature scale 3.82 (filters 16, 33, 67, 134, 268): the authors' capacity-matched
    /// U-Net (their deleted config `config_unet_ct_dsv_big_cap_match.json`), 6,444,328 parameters with 4
    /// classes, the paper's 6.44 M row.
    case unetCapacityMatched = "unet-capacity-matched"
    /// `unet_CT_dsv_3D` at feature scale 3 (filters 21, 42, 85, 170, 341): 10,403,190 parameters with 4
    /// classes, the paper's 10.40 M row (the only filter set of `unet_CT_dsv_3D` whose count rounds to
    /// 10.40 M; the paper does not give its feature scale).
    case unet10M = "unet-10m"

    /// Whether the network has the attention gates (`attention-unet`); the others are `unet_CT_dsv_3D`.
    public var hasAttentionGates: Bool { self == .attentionUNet }

    /// The feature scale a preset fixes (nil: `attention-unet` and `unet` take `--feature-scale`).
    public var presetFeatureScale: Double? {
        switch self {
        case .attentionUNet, .unet: return nil
        case .unetCapacityMatched: return 3.82
        case .unet10M: return 3
        }
    }

    /// One line on what the network is, for `attunet inspect`.
    public var summary: String {
        switch self {
        case .attentionUNet: return "unet_CT_multi_att_dsv_3D, the released Attention U-Net"
        case .unet: return "unet_CT_dsv_3D, the paper's U-Net baseline"
        case .unetCapacityMatched:
            return "unet_CT_dsv_3D at feature scale 3.82, the authors' capacity-matched U-Net (the paper's 6.44 M row)"
        case .unet10M: return "unet_CT_dsv_3D at feature scale 3, the paper's 10.40 M U-Net"
        }
    }
}

/// Everything that fixes a model's architecture; stored in checkpoints as JSON.
public struct ModelConfig: Codable, Sendable, Equatable {
    public var kind: ModelKind
    public var inChannels: Int
    public var classes: Int
    /// Filters are [64, 128, 256, 512, 1024] / featureScale, truncated (4 → [16, 32, 64, 128, 256]); a preset
    /// kind fixes it (``ModelKind/presetFeatureScale``).
    public var featureScale: Double
    /// Trilinear semantics of every upsampling: false = modern PyTorch (default), true = PyTorch ≤ 0.3, the
    /// version the paper's models were trained with.
    public var alignCorners: Bool
    /// The paper's pass-through initialisation of the attention gates, absent from the released code (off):
    /// ψ's weights are scaled by 1e-2 and its bias set to 3, so every gate starts with α ≈ 0.95 everywhere and
    /// passes features through while θ, φ and ψ still receive gradients. When the network is initialised
    /// from a U-Net checkpoint (``WeightTransfer``), the gates start as an exact pass-through instead
    /// (``WeightTransfer/passThrough(_:)``), so the network computes the U-Net's logits in evaluation mode.
    public var passThroughGates: Bool

    public init(
        kind: ModelKind = .attentionUNet, inChannels: Int = 1, classes: Int = 4, featureScale: Double = 4,
        alignCorners: Bool = false, passThroughGates: Bool = false
    ) {
        self.kind = kind
        self.inChannels = inChannels
        self.classes = classes
        self.featureScale = kind.presetFeatureScale ?? featureScale
        self.alignCorners = alignCorners
        self.passThroughGates = passThroughGates
    }

    public var filters: [Int] { [64, 128, 256, 512, 1024].map { Int(Double($0) / featureScale) } }

    /// Why a configuration read from a file (a checkpoint's `model_config`, a state_dict's shapes) describes
    /// no network attunet builds, or nil: the feature scale must be finite and in [1, 64] (64 to 1 filters at
    /// the top level; 1 is the original's full width), input channels 1 to 64 and classes 1 to 1,024. A
    /// damaged file must give an error, never a network of billions of weights.
    public var problem: String? {
        guard featureScale.isFinite, featureScale >= 1, featureScale <= 64 else {
            return "feature scale \(featureScale) is not in [1, 64]"
        }
        guard (1...64).contains(inChannels) else { return "\(inChannels) input channels (1 to 64 expected)" }
        guard (1...1024).contains(classes) else { return "\(classes) classes (1 to 1024 expected)" }
        return nil
    }
}

/// The paper's segmentation networks: an encoder of `UnetConv3` blocks with 2³ max-pooling, a decoder of
/// ×2 trilinear upsampling + concat + `UnetConv3`, optional multi-attention gates on the skips of levels 2-4
/// (gated by the next coarser decoder feature), and the fused deep-supervision head. Layer for layer the
/// released PyTorch classes; every parameter and BN buffer carries the original `state_dict` name.
public final class SegmentationModel {
    public let config: ModelConfig
    /// Trainable parameters (one flat buffer) and their gradients.
    public let params = ParameterStore()
    /// BatchNorm running statistics (`running_mean`, `running_var`, `num_batches_tracked`).
    public let buffers = ParameterStore()

    let conv1, conv2, conv3, conv4, center: UnetConv3
    let pools = (0..<4).map { _ in MaxPool3d() }
    let gating: ConvBNReLU?
    let att2, att3, att4: MultiAttentionBlock?
    let up4, up3, up2, up1: UpBlock
    let dsv4, dsv3, dsv2, dsv1: DeepSupervision
    let headConcat = Concat()
    let final: Conv3d
    private var batchNorms: [BatchNorm3d] = []

    /// The α maps of the last forward pass (attention model only), named like the original's gates
    /// (`attentionblock2.gate_block_1`, ...), each [N, 1, Z, Y, X] at its block's skip resolution.
    public private(set) var attentionMaps: [(name: String, map: Tensor)] = []

    /// Builds the network and initialises it as the original code does, from `seed`.
    public init(_ config: ModelConfig, seed: UInt64 = 0) {
        self.config = config
        let f = config.filters
        let p = params
        let b = buffers
        let ac = config.alignCorners
        let attention = config.kind.hasAttentionGates
        // Construction order = the original's module registration order = its state_dict order.
        conv1 = UnetConv3(p, b, "conv1", config.inChannels, f[0])
        conv2 = UnetConv3(p, b, "conv2", f[0], f[1])
        conv3 = UnetConv3(p, b, "conv3", f[1], f[2])
        conv4 = UnetConv3(p, b, "conv4", f[2], f[3])
        center = UnetConv3(p, b, "center", f[3], f[4])
        gating = attention ? ConvBNReLU(p, b, "gating.conv1", f[4], f[4], kernel: 1) : nil
        att2 =
            attention
            ? MultiAttentionBlock(p, b, "attentionblock2", inSize: f[1], gateSize: f[2], alignCorners: ac) : nil
        att3 =
            attention
            ? MultiAttentionBlock(p, b, "attentionblock3", inSize: f[2], gateSize: f[3], alignCorners: ac) : nil
        att4 =
            attention
            ? MultiAttentionBlock(p, b, "attentionblock4", inSize: f[3], gateSize: f[4], alignCorners: ac) : nil
        up4 = UpBlock(p, b, "up_concat4", inSize: f[4], outSize: f[3], alignCorners: ac)
        up3 = UpBlock(p, b, "up_concat3", inSize: f[3], outSize: f[2], alignCorners: ac)
        up2 = UpBlock(p, b, "up_concat2", inSize: f[2], outSize: f[1], alignCorners: ac)
        up1 = UpBlock(p, b, "up_concat1", inSize: f[1], outSize: f[0], alignCorners: ac)
        dsv4 = DeepSupervision(
            p, name: "dsv4.dsv.0", inSize: f[3], classes: config.classes, factor: 8, alignCorners: ac)
        dsv3 = DeepSupervision(
            p, name: "dsv3.dsv.0", inSize: f[2], classes: config.classes, factor: 4, alignCorners: ac)
        dsv2 = DeepSupervision(
            p, name: "dsv2.dsv.0", inSize: f[1], classes: config.classes, factor: 2, alignCorners: ac)
        dsv1 = DeepSupervision(p, name: "dsv1", inSize: f[0], classes: config.classes, factor: 1, alignCorners: ac)
        final = Conv3d(
            params: p, name: "final", inChannels: 4 * config.classes, outChannels: config.classes, kernel: 1, bias: true
        )
        conv1.c1.conv.needsInputGradient = false  // nothing upstream of the image
        for (i, pool) in pools.enumerated() { pool.label = "maxpool\(i + 1)" }
        headConcat.label = "final.concat"
        params.allocate()
        buffers.allocate()
        batchNorms = allBatchNorms
        initialise(seed: seed)
    }

    /// One 3x3x3 convolution of the network and the spatial extent it runs at.
    public struct ConvShape: Hashable, Sendable {
        /// Its weight's state_dict name, e.g. `conv1.conv1.0.weight`.
        public var name: String
        public var inChannels: Int, outChannels: Int
        public var dims: Dim3
    }

    /// Every 3x3x3 convolution (the encoder's and decoder's `UnetConv3` blocks) with the extent it sees for an
    /// input `patch`, in state_dict order: what dominates the model's FLOPs, and what `attunet bench` times.
    public func convolutions3x3(patch: Dim3) -> [ConvShape] {
        let levels: [(UnetConv3, Int)] = [
            (conv1, 0), (conv2, 1), (conv3, 2), (conv4, 3), (center, 4),
            (up4.conv, 3), (up3.conv, 2), (up2.conv, 1), (up1.conv, 0),
        ]
        return levels.flatMap { block, level in
            [block.c1.conv, block.c2.conv].map { c in
                ConvShape(
                    name: c.weight.entry.name, inChannels: c.inChannels, outChannels: c.outChannels,
                    dims: patch.divided(by: 1 << level))
            }
        }
    }

    private var allConvs: [Conv3d] {
        var convs: [Conv3d] = []
        for u in [conv1, conv2, conv3, conv4, center] { convs += [u.c1.conv, u.c2.conv] }
        if let gating { convs.append(gating.conv) }
        for a in [att2, att3, att4].compactMap({ $0 }) {
            for g in [a.gate1, a.gate2] { convs += [g.wConv, g.theta, g.phi, g.psi] }
            convs.append(a.combine.conv)
        }
        for u in [up4, up3, up2, up1] { convs += [u.conv.c1.conv, u.conv.c2.conv] }
        convs += [dsv4.conv, dsv3.conv, dsv2.conv, dsv1.conv, final]
        return convs
    }

    /// The attention blocks (`attentionblock2`, `3`, `4`; empty for the U-Nets).
    var attentionBlocks: [MultiAttentionBlock] { [att2, att3, att4].compactMap { $0 } }

    private var allBatchNorms: [BatchNorm3d] {
        var bns: [BatchNorm3d] = []
        for u in [conv1, conv2, conv3, conv4, center] { bns += [u.c1.bn, u.c2.bn] }
        if let gating { bns.append(gating.bn) }
        for a in [att2, att3, att4].compactMap({ $0 }) { bns += [a.gate1.wBN, a.gate2.wBN, a.combine.bn] }
        for u in [up4, up3, up2, up1] { bns += [u.conv.c1.bn, u.conv.c2.bn] }
        return bns
    }

    /// Kaiming-normal (fan_in) conv weights, PyTorch-default U(±1/√fan_in) conv biases, BN weight N(1, 0.02),
    /// BN bias 0, running mean 0 / var 1, in the original's module order from one seeded stream.
    public func initialise(seed: UInt64) {
        var rng = SeededRNG(seed, 0x494E_4954)  // "INIT"
        for c in allConvs {
            let fanIn = c.inChannels * c.kernel * c.kernel * c.kernel
            Initializer.kaimingNormal(c.weight, fanIn: fanIn, rng: &rng)
            if let bias = c.bias { Initializer.uniform(bias, bound: 1 / Double(fanIn).squareRoot(), rng: &rng) }
        }
        for bn in batchNorms {
            Initializer.normal(bn.weight, mean: 1, std: 0.02, rng: &rng)
            Initializer.constant(bn.bias, 0)
        }
        buffers.values.zero()
        for e in buffers.entries where e.name.hasSuffix(".running_var") {
            for i in 0..<e.count { buffers.values.data[e.offset + i] = 1 }
        }
        if config.passThroughGates {
            for a in [att2, att3, att4].compactMap({ $0 }) {
                for g in [a.gate1, a.gate2] {
                    for i in 0..<g.psi.weight.count { g.psi.weight.value[i] *= 0.01 }
                    Initializer.constant(g.psi.bias!, 3)
                }
            }
        }
    }

    /// BatchNorm mode: batch statistics and running-stat updates (true) or running statistics (false).
    public var training: Bool = true {
        didSet { for bn in batchNorms { bn.training = training } }
    }

    /// Installs a cross-rank reducer for every BatchNorm's statistics (SyncBN), or removes it (nil).
    public func setStatisticsReducer(_ reducer: ((UnsafeMutableBufferPointer<Double>) throws -> Void)?) {
        for bn in batchNorms { bn.statisticsReducer = reducer }
    }

    /// Checks an input's shape: [N, inChannels, Z, Y, X] with every spatial size a positive multiple of 16.
    public func validate(inputShape s: [Int]) throws {
        guard s.count == 5 else { throw AttunetError("model input must be [N, C, Z, Y, X], got shape \(s)") }
        guard s[1] == config.inChannels else {
            throw AttunetError("model input has \(s[1]) channel(s), the model expects \(config.inChannels)")
        }
        let spatial = [s[4], s[3], s[2]]
        if spatial.contains(where: { $0 <= 0 || $0 % 16 != 0 }) {
            throw AttunetError(
                "model input spatial size \(spatial.map(String.init).joined(separator: "x")) (X x Y x Z) is not a multiple of 16 on every axis; pad or crop the patch (the network pools 4 times)"
            )
        }
    }

    /// Forward pass; returns the logits [N, classes, Z, Y, X] (no softmax). Attention maps are in
    /// `attentionMaps` afterwards.
    public func forward(_ input: Tensor) throws -> Tensor {
        try validate(inputShape: input.shape)
        return GradientMode.freeingKept(freesKeptTensors) { forwardPass(input) }
    }

    /// Whether a training step frees what the layers keep for backward as the backward pass reads it, as
    /// PyTorch does (``GradientMode/freeingKept(_:_:)``; the default): the step then needs the most its
    /// forward keeps plus the first decoder level's gradients, not every activation and every gradient at
    /// once. The layers' outputs then come from the recycled-tensor pool, laid out for the step after the
    /// first. False keeps every layer's output buffer between steps, and backward may run again on one forward.
    public var freesKeptTensors = true

    private func forwardPass(_ input: Tensor) -> Tensor {
        let c1 = conv1.forward(input)
        let c2 = conv2.forward(pools[0].forward(c1))
        let c3 = conv3.forward(pools[1].forward(c2))
        let c4 = conv4.forward(pools[2].forward(c3))
        let ctr = center.forward(pools[3].forward(c4))
        let u4: Tensor
        let u3: Tensor
        let u2: Tensor
        if let gating, let att2, let att3, let att4 {
            let g = gating.forward(ctr)
            let (g4, a4) = att4.forward(x: c4, g: g)
            u4 = up4.forward(skip: g4, coarse: ctr)
            let (g3, a3) = att3.forward(x: c3, g: u4)
            u3 = up3.forward(skip: g3, coarse: u4)
            let (g2, a2) = att2.forward(x: c2, g: u3)
            u2 = up2.forward(skip: g2, coarse: u3)
            attentionMaps = [
                ("attentionblock2.gate_block_1", a2[0]), ("attentionblock2.gate_block_2", a2[1]),
                ("attentionblock3.gate_block_1", a3[0]), ("attentionblock3.gate_block_2", a3[1]),
                ("attentionblock4.gate_block_1", a4[0]), ("attentionblock4.gate_block_2", a4[1]),
            ]
        } else {
            u4 = up4.forward(skip: c4, coarse: ctr)
            u3 = up3.forward(skip: c3, coarse: u4)
            u2 = up2.forward(skip: c2, coarse: u3)
        }
        let u1 = up1.forward(skip: c1, coarse: u2)
        let head = headConcat.forward([dsv1.forward(u1), dsv2.forward(u2), dsv3.forward(u3), dsv4.forward(u4)])
        return final.forward(head)
    }

    /// Backward pass from d(loss)/d(logits); accumulates parameter gradients into `params.grads`.
    /// Returns nothing: the input needs no gradient in training. Use `backwardWithInputGradient` for tests.
    public func backward(_ dLogits: Tensor) {
        _ = backwardPass(dLogits, inputGradient: false)
    }

    /// Backward pass that also returns d(loss)/d(input).
    public func backwardWithInputGradient(_ dLogits: Tensor) -> Tensor {
        backwardPass(dLogits, inputGradient: true)!
    }

    private func backwardPass(_ dLogits: Tensor, inputGradient: Bool) -> Tensor? {
        GradientMode.freeingKept(freesKeptTensors) { backwardLayers(dLogits, inputGradient: inputGradient) }
    }

    private func backwardLayers(_ dLogits: Tensor, inputGradient: Bool) -> Tensor? {
        conv1.c1.conv.needsInputGradient = inputGradient
        // The head's gradients live only inside this closure (an array local to the function would keep them
        // alive through the whole decoder).
        let (dU1, dU2, dU3, dU4) = { () -> (Tensor, Tensor, Tensor, Tensor) in
            let dHead = headConcat.backwardAll(final.backward(dLogits))
            return (dsv1.backward(dHead[0]), dsv2.backward(dHead[1]), dsv3.backward(dHead[2]), dsv4.backward(dHead[3]))
        }()
        let (dC1, dU2b) = up1.backward(consume dU1)
        dU2.add(dU2b)
        let dC2: Tensor
        let dC3: Tensor
        let dC4: Tensor
        let dCtr: Tensor
        if let gating, let att2, let att3, let att4 {
            let (dG2, dU3b) = up2.backward(consume dU2)
            let (dC2a, dU3c) = att2.backward(dG2)
            dU3.add(dU3b)
            dU3.add(dU3c)
            let (dG3, dU4b) = up3.backward(consume dU3)
            let (dC3a, dU4c) = att3.backward(dG3)
            dU4.add(dU4b)
            dU4.add(dU4c)
            let (dG4, dCtrA) = up4.backward(consume dU4)
            let (dC4a, dGating) = att4.backward(dG4)
            dCtrA.add(gating.backward(dGating))
            dC2 = dC2a
            dC3 = dC3a
            dC4 = dC4a
            dCtr = dCtrA
        } else {
            let (dS2, dU3b) = up2.backward(consume dU2)
            dU3.add(dU3b)
            let (dS3, dU4b) = up3.backward(consume dU3)
            dU4.add(dU4b)
            let (dS4, dCtrA) = up4.backward(consume dU4)
            dC2 = dS2
            dC3 = dS3
            dC4 = dS4
            dCtr = dCtrA
        }
        dC4.add(pools[3].backward(center.backward(dCtr)))
        dC3.add(pools[2].backward(conv4.backward(dC4)))
        dC2.add(pools[1].backward(conv3.backward(dC3)))
        dC1.add(pools[0].backward(conv2.backward(dC2)))
        let dInput = conv1.backward(dC1)
        return inputGradient ? dInput : nil
    }

    /// Number of trainable parameters (what PyTorch's `sum(p.numel() for p in model.parameters())` counts).
    public var parameterCount: Int { params.count }
}
