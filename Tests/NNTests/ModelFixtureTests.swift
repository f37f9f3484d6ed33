import HDF5Kit
import NN
import Tensor
import XCTest

/// The whole model against the original PyTorch classes (Tests/Fixtures/model_*.h5): weights loaded through
/// the checkpoint reader; logits, attention maps, BN running statistics, the SoftDiceLoss value and the
/// gradients with respect to the input and to every parameter.
final class ModelFixtureTests: XCTestCase {
    private func run(file: String, kind: ModelKind) throws {
        let fx = try Fixture(file)
        for group in try fx.file.root.members() where group != "state_dict" {
            let cfg = try fx.config(group)
            let config = ModelConfig(
                kind: kind, inChannels: cfg["in_channels"] as! Int, classes: cfg["n_classes"] as! Int,
                featureScale: Double(cfg["feature_scale"] as! Int),
                alignCorners: cfg["align_corners"] as! Bool)
            let model = SegmentationModel(config)
            try StateDict.read(into: model, from: try fx.file.root.group("state_dict"))
            model.training = (cfg["bn_mode"] as! String) == "train"
            let input = try fx.tensor("\(group)/input")
            let logits = try model.forward(input)
            assertClose(logits, try fx.tensor("\(group)/logits"), "\(file)/\(group) logits")
            for (name, map) in model.attentionMaps {
                assertClose(map, try fx.tensor("\(group)/attention/\(name)"), "\(file)/\(group) attention \(name)")
            }
            if kind == .attentionUNet { XCTAssertEqual(model.attentionMaps.count, 6) }
            if model.training, fx.file.root.exists("\(group)/buffers_after") {
                for e in model.buffers.entries where !e.name.hasSuffix("num_batches_tracked") {
                    assertClose(
                        model.buffers.values.pointer + e.offset, try fx.tensor("\(group)/buffers_after/\(e.name)"),
                        tol: 1e-4, "\(group) \(e.name)")
                }
            }
            let labels = try fx.labels("\(group)/target")
            let loss = SegmentationLoss(.softDice)
            let value = labels.withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0) }
            XCTAssertEqual(value, try fx.scalar("\(group)/loss"), accuracy: 1e-5, "\(group) loss")
            model.params.zeroGrads()
            let dInput = model.backwardWithInputGradient(loss.gradient)
            assertClose(dInput, try fx.tensor("\(group)/dinput"), "\(file)/\(group) dinput")
            if fx.file.root.exists("\(group)/grad") {
                for e in model.params.entries {
                    let torch = try fx.tensor("\(group)/grad/\(e.name)")
                    let ours = Tensor(torch.shape)
                    StateDict.convert(model.params.grads.pointer + e.offset, ours.pointer, ourShape: e.shape)
                    // A conv bias followed by BatchNorm has a true gradient of 0; compare it on the scale of
                    // its weight's gradient.
                    var floor: Float = 1e-6
                    if e.name.hasSuffix(".bias") {
                        let w = try fx.tensor("\(group)/grad/" + e.name.dropLast(4) + "weight")
                        floor = max(floor, w.maxAbs)
                    }
                    assertClose(ours, torch, scaleFloor: floor, "\(file)/\(group) grad \(e.name)")
                }
            }
        }
    }

    func testAttentionUNetMatchesTheOriginal() throws { try run(file: "model_attention_unet.h5", kind: .attentionUNet) }
    func testUNetMatchesTheOriginal() throws { try run(file: "model_unet.h5", kind: .unet) }
}
