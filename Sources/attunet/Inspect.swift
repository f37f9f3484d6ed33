import ArgumentParser
import Foundation
import HDF5Kit
import NN
import Tensor
import Training

/// `attunet inspect`: a model's parameter table, or what a checkpoint holds.
struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a model's parameters per module, or describe a checkpoint.",
        discussion: """
            Without a file: builds the architecture from the model options and prints one row per top-level module of the original PyTorch class (conv1, ..., attentionblock4, up_concat1, dsv1, final) with its parameter count, then the total. With --tensors, one row per state_dict tensor instead.
              attunet inspect --model attention-unet --classes 4   # 6,473,322 parameters
              attunet inspect --model unet --classes 4             # 5,888,004
              attunet inspect --model unet-capacity-matched        # 6,444,328 (scale 3.82)
              attunet inspect --model unet-10m                     # 10,403,190 (scale 3)

            With a checkpoint file: its model configuration, training state, parameter count and tensors, the weights' SHA-256, and the integrity check: every dataset is read (HDF5's Fletcher-32 checksums) and the stored SHA-256 digests of the weights and of the optimizer and training state are verified. A damaged checkpoint is refused with one line naming it and what failed (exit status 1); one written before attunet stored digests says "no stored digest".
              attunet inspect runs/demo/checkpoint_best.h5

            Exit status:
              0   done
              1   an error or a damaged checkpoint, one line on stderr
              64  bad command line
            """
    )

    @Argument(help: "A checkpoint (.h5) to describe.")
    var file: String?

    @OptionGroup var modelOptions: ModelOptions

    @Flag(help: "List every state_dict tensor with its PyTorch shape.")
    var tensors = false

    func run() throws {
        let model: SegmentationModel
        if let file {
            model = try Checkpoint.load(file)  // verifies the weights' stored digest, when there is one
            let f = try H5File.open(file)
            let root = f.root
            let weights = root.hasAttribute(Checkpoint.weightsDigestAttribute)
            let state = try TrainingCheckpoint.verifyState(in: f)
            print("checkpoint: \(file)")
            if let st = TrainingCheckpoint.trainingState(in: f) {
                print(
                    "training state: next epoch \(st.epoch) step \(st.stepInEpoch), \(st.globalStep) optimizer steps, \(st.worldSize) rank(s), best mean Dice \(st.bestDice >= 0 ? fmt(st.bestDice, 4) : "-") (epoch \(st.bestEpoch))"
                )
            }
            if let r = TrainingCheckpoint.metrics(in: f) {
                print(
                    "metrics of epoch \(r.epoch): loss \(fmt(r.trainLoss, 5)), lr \(String(format: "%.3e", r.learningRate)), validation Dice \(r.validationDice.map { fmt($0, 4) }.joined(separator: " "))"
                )
            }
            if let t = try TrainingCheckpoint.transferReport(in: f) {
                let fresh = t.freshParameters.count
                let copied = t.tensors.filter { $0.action == .copied || $0.action == .classRows }.count
                print(
                    "initialised from: \(t.source) (\(t.sourceModel.kind.rawValue), \(t.sourceModel.classes) classes, weights sha256 \(t.sourceWeightsSHA256.prefix(16))…): \(copied) tensors copied, \(fresh) parameter tensors fresh"
                        + (t.labelMap.map { ", label map \($0)" } ?? ""))
            }
            if let r = try PredictionRecipe.read(from: f) {
                print(
                    "prediction recipe: \(fmtShort(r.spacingMM)) mm isotropic, pre-blur \(fmtShort(r.blurSigmaMM)) mm, \(r.normalization) normalisation, classes \(r.classNames.joined(separator: ", ")), patch \(r.patch), mirror axes \(r.mirrorAxes.isEmpty ? "none" : r.mirrorAxes.joined(separator: ","))"
                )
            } else {
                print(
                    "prediction recipe: none (written before attunet recorded it, or imported): predict needs --spacing and --blur-sigma"
                )
            }
            print("weights sha256: \(TrainingCheckpoint.weightsDigest(model))")
            let optimizer = root.exists("optimizer")
            print(
                "stored digests: "
                    + (!weights && !state
                        ? "none (no stored digest: written before attunet stored them; checksums of the datasets read passed)"
                        : "weights and BN buffers " + (weights ? "verified" : "no stored digest")
                            + "; optimizer and training state "
                            + (state
                                ? "verified" : optimizer ? "no stored digest" : "absent (weights-only checkpoint)"))
            )
        } else {
            model = SegmentationModel(modelOptions.config())
        }
        let c = model.config
        print(
            "model: \(c.kind.rawValue)  in-channels \(c.inChannels)  classes \(c.classes)  feature-scale \(c.featureScale) (filters \(c.filters.map(String.init).joined(separator: ",")))  align-corners \(c.alignCorners)"
        )
        print("  \(c.kind.summary)")
        if tensors {
            for e in model.params.entries + model.buffers.entries {
                print("  \(e.name.padding(toLength: 52, withPad: " ", startingAt: 0)) \(StateDict.torchShape(e.shape))")
            }
        } else {
            var order: [String] = []
            var counts: [String: Int] = [:]
            for e in model.params.entries {
                let module = String(e.name.split(separator: ".").first!)
                if counts[module] == nil { order.append(module) }
                counts[module, default: 0] += e.count
            }
            print("  module            parameters")
            for m in order {
                print("  \(m.padding(toLength: 16, withPad: " ", startingAt: 0)) \(grouped(counts[m]!).leftPadded(12))")
            }
        }
        let bnBuffers = model.buffers.count
        print(
            "total trainable parameters: \(grouped(model.parameterCount))  (BN buffers: \(grouped(bnBuffers)) values, not trained)"
        )
    }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}
