import NN
import Tensor

/// What the sliding-window predictor needs of a network: logits for a batch of one-channel tiles, an
/// evaluation mode, and (optionally) the attention maps of the last forward pass.
///
/// ``SegmentationModel`` conforms; tests use small stand-ins whose logits are a known function of the tile, so
/// that tiling errors show as exact mismatches.
public protocol SegmentationNetwork: AnyObject {
    /// Channels of the input tile (the predictor feeds 1: one CT volume).
    var inputChannels: Int { get }
    /// Classes of the output logits, background first.
    var outputClasses: Int { get }
    /// BatchNorm mode: the predictor sets false (running statistics) for its passes and restores the value.
    var training: Bool { get set }
    /// Logits `[N, outputClasses, Z, Y, X]` for an input `[N, inputChannels, Z, Y, X]`, before softmax. The
    /// returned tensor may be owned and reused by the network: it is read before the next call.
    func forward(_ input: Tensor) throws -> Tensor
    /// Named maps `[N, 1, z, y, x]` of the last forward pass, each at a resolution that divides the tile's
    /// (empty for networks without attention gates).
    var attentionMaps: [(name: String, map: Tensor)] { get }
}

extension SegmentationModel: SegmentationNetwork {
    public var inputChannels: Int { config.inChannels }
    public var outputClasses: Int { config.classes }
}
