import Tensor

// Gradients returned by a layer's backward belong to the caller (recycled tensors that go back to the pool
// when the last reference goes), so a caller may sum other contributions into them in place (forward outputs,
// by contrast, are read again by backward and are never modified by consumers, except by an in-place ReLU
// that owns its input).

/// Conv3d → BatchNorm3d → ReLU: one `nn.Sequential(Conv3d, BatchNorm3d, ReLU)` of the original code, whose
/// children are named `<prefix>.0` (conv) and `<prefix>.1` (BN). The ReLU (the original's `ReLU(inplace=True)`,
/// `<prefix>.2`, no parameters) is fused into the BN layer (`BatchNorm3d.fusedReLU`): one pass over the tensor
/// less each way.
final class ConvBNReLU {
    let conv: Conv3d
    let bn: BatchNorm3d

    init(_ p: ParameterStore, _ b: ParameterStore, _ prefix: String, _ cin: Int, _ cout: Int, kernel: Int) {
        conv = Conv3d(params: p, name: "\(prefix).0", inChannels: cin, outChannels: cout, kernel: kernel, bias: true)
        bn = BatchNorm3d(params: p, buffers: b, name: "\(prefix).1", channels: cout)
        bn.fusedReLU = true
    }

    func forward(_ x: Tensor) -> Tensor { bn.forward(conv.forward(x)) }
    /// Takes `dy` over: BN (with its ReLU) writes its gradient over it, so only the convolution's input gradient is
    /// a new buffer (every caller hands in a gradient nobody else holds).
    func backward(_ dy: consuming Tensor) -> Tensor {
        conv.backward(bn.backward(dy, inPlace: true))
    }
}

/// `UnetConv3`: two 3×3×3 conv+BN+ReLU, children `conv1` and `conv2`.
final class UnetConv3 {
    let c1: ConvBNReLU, c2: ConvBNReLU

    init(_ p: ParameterStore, _ b: ParameterStore, _ prefix: String, _ cin: Int, _ cout: Int) {
        c1 = ConvBNReLU(p, b, "\(prefix).conv1", cin, cout, kernel: 3)
        c2 = ConvBNReLU(p, b, "\(prefix).conv2", cout, cout, kernel: 3)
    }

    func forward(_ x: Tensor) -> Tensor { c2.forward(c1.forward(x)) }
    func backward(_ dy: consuming Tensor) -> Tensor { c1.backward(c2.backward(dy)) }
}

/// `UnetUp3_CT`: upsample the coarser decoder feature ×2 (trilinear), concatenate [skip, up], `UnetConv3`.
final class UpBlock {
    let up: Trilinear
    let concat = Concat()
    let conv: UnetConv3

    init(_ p: ParameterStore, _ b: ParameterStore, _ prefix: String, inSize: Int, outSize: Int, alignCorners: Bool) {
        up = Trilinear(factor: 2, alignCorners: alignCorners)
        conv = UnetConv3(p, b, "\(prefix).conv", inSize + outSize, outSize)
        up.label = "\(prefix).up"
        concat.label = "\(prefix).concat"
    }

    func forward(skip: Tensor, coarse: Tensor) -> Tensor {
        // The upsampling writes straight into its channels of the concatenation: only the skip is copied.
        let (cat, upChannels) = concat.forward(skip, writingSecond: up.outputShape(for: coarse.shape))
        up.forward(coarse, into: cat, channels: upChannels)
        return conv.forward(cat)
    }

    /// Returns (d skip, d coarse).
    func backward(_ dy: consuming Tensor) -> (Tensor, Tensor) {
        // The upsampling's gradient is read straight out of the concatenation's, which then becomes the skip's
        // (its channels moved together, the rest given back): a decoder level never holds the two at once.
        var dCat = conv.backward(dy)
        let dCoarse = up.backward(dCat, channels: concat.channels(ofInput: 1))
        return (concat.backwardOfFirst(taking: &dCat), dCoarse)
    }
}

/// `GridAttentionBlock3D` in `concatenation` mode (the NN documentation's "Model graph" article): θ (2³ stride 2, no bias) on x, φ (1³) on g,
/// ReLU(θx + φg), ψ (1³ → 1 channel), sigmoid, trilinear upsampling of α to x's size, y = α ⊙ x, then W
/// (1³ conv + BN). Returns W(y) and α.
final class GridAttentionGate {
    let wConv: Conv3d, wBN: BatchNorm3d
    let theta: Conv3d, phi: Conv3d, psi: Conv3d
    let add = Add(), relu = ReLU(inPlace: true), sigmoid = Sigmoid()  // the ReLU overwrites the sum
    let upAlpha: Trilinear
    var resizePhi: Trilinear?
    let alignCorners: Bool
    let multiply = GateMultiply()

    init(
        _ p: ParameterStore, _ b: ParameterStore, _ prefix: String, inChannels: Int, gatingChannels: Int,
        interChannels: Int, alignCorners: Bool
    ) {
        // Registration order = the original's module order (W, theta, phi, psi) = its state_dict order.
        wConv = Conv3d(
            params: p, name: "\(prefix).W.0", inChannels: inChannels, outChannels: inChannels, kernel: 1, bias: true)
        wBN = BatchNorm3d(params: p, buffers: b, name: "\(prefix).W.1", channels: inChannels)
        theta = Conv3d(
            params: p, name: "\(prefix).theta", inChannels: inChannels, outChannels: interChannels, kernel: 2,
            bias: false)
        phi = Conv3d(
            params: p, name: "\(prefix).phi", inChannels: gatingChannels, outChannels: interChannels, kernel: 1,
            bias: true)
        psi = Conv3d(params: p, name: "\(prefix).psi", inChannels: interChannels, outChannels: 1, kernel: 1, bias: true)
        upAlpha = Trilinear(factor: 2, alignCorners: alignCorners)
        self.alignCorners = alignCorners
        add.label = "\(prefix).add"
        relu.label = "\(prefix).relu"
        sigmoid.label = "\(prefix).sigmoid"
        upAlpha.label = "\(prefix).upsample"
        multiply.label = "\(prefix).multiply"
        // Read only by layers whose backward does not need them: the sum (θ, φ), the sigmoid (ψ, which keeps
        // its own output) and the concatenation of the two gates (W's BN).
        for c in [theta, phi, psi] { c.outputIsScratch = true }
        wBN.outputIsScratch = true
    }

    func forward(x: Tensor, g: Tensor) -> (out: Tensor, alpha: Tensor) {
        let thetaX = theta.forward(x)
        var phiG = phi.forward(g)
        // The original resizes φ(g) to θ(x)'s size; for inputs divisible by 16 the sizes already agree.
        if phiG.dim3 != thetaX.dim3 {
            if resizePhi == nil { resizePhi = Trilinear(size: thetaX.dim3, alignCorners: alignCorners) }
            phiG = resizePhi!.forward(phiG)
        } else {
            resizePhi = nil
        }
        let f = relu.forward(add.forward(thetaX, phiG))
        let alpha = upAlpha.forward(sigmoid.forward(psi.forward(f)))
        let y = multiply.forward(x: x, alpha: alpha)
        return (wBN.forward(wConv.forward(y)), alpha)
    }

    /// Returns (dx, dg) for the gradient of the output W(y) (α is for display only and gets no gradient).
    func backward(_ dOut: Tensor) -> (Tensor, Tensor) {
        let (dxDirect, dAlpha) = multiply.backward(wConv.backward(wBN.backward(dOut)))
        let dF = psi.backward(sigmoid.backward(upAlpha.backward(dAlpha)))
        let (dTheta, dPhiResized) = add.backward(relu.backward(dF))
        let dPhi = resizePhi.map { $0.backward(dPhiResized) } ?? dPhiResized
        let dg = phi.backward(dPhi)
        let dx = theta.backward(dTheta)
        dx.add(dxDirect)
        return (dx, dg)
    }
}

/// `MultiAttentionBlock`: two independent gates on the same (x, g), concatenated and combined by
/// 1³ conv + BN + ReLU (`combine_gates.0`, `.1`). Also returns both attention maps.
final class MultiAttentionBlock {
    let gate1: GridAttentionGate, gate2: GridAttentionGate
    let concat = Concat()
    let combine: ConvBNReLU

    init(_ p: ParameterStore, _ b: ParameterStore, _ prefix: String, inSize: Int, gateSize: Int, alignCorners: Bool) {
        gate1 = GridAttentionGate(
            p, b, "\(prefix).gate_block_1", inChannels: inSize, gatingChannels: gateSize,
            interChannels: inSize, alignCorners: alignCorners)
        gate2 = GridAttentionGate(
            p, b, "\(prefix).gate_block_2", inChannels: inSize, gatingChannels: gateSize,
            interChannels: inSize, alignCorners: alignCorners)
        combine = ConvBNReLU(p, b, "\(prefix).combine_gates", 2 * inSize, inSize, kernel: 1)
        concat.label = "\(prefix).concat"
    }

    func forward(x: Tensor, g: Tensor) -> (out: Tensor, alphas: [Tensor]) {
        let (o1, a1) = gate1.forward(x: x, g: g)
        let (o2, a2) = gate2.forward(x: x, g: g)
        return (combine.forward(concat.forward(o1, o2)), [a1, a2])
    }

    /// Returns (dx, dg).
    func backward(_ dOut: Tensor) -> (Tensor, Tensor) {
        let (d1, d2) = concat.backward(combine.backward(dOut))
        let (dx, dg) = gate1.backward(d1)
        let (dx2, dg2) = gate2.backward(d2)
        dx.add(dx2)
        dg.add(dg2)
        return (dx, dg)
    }
}

/// `UnetDsv3`: 1³ conv to the class logits (`dsv.0`), then trilinear upsampling by `factor` (1 = none, as dsv1).
final class DeepSupervision {
    let conv: Conv3d
    let up: Trilinear?

    init(_ p: ParameterStore, name: String, inSize: Int, classes: Int, factor: Int, alignCorners: Bool) {
        conv = Conv3d(params: p, name: name, inChannels: inSize, outChannels: classes, kernel: 1, bias: true)
        up = factor > 1 ? Trilinear(factor: factor, alignCorners: alignCorners) : nil
        up?.label = "\(name).upsample"
        conv.outputIsScratch = true  // read by the upsampling or the head's concatenation, which keep nothing of it
    }

    func forward(_ x: Tensor) -> Tensor {
        let y = conv.forward(x)
        return up?.forward(y) ?? y
    }

    func backward(_ dy: Tensor) -> Tensor { conv.backward(up?.backward(dy) ?? dy) }
}
