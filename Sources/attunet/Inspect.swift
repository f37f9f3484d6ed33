import ArgumentParser
import Foundation
import HDF5Kit
import NN
import Tensor
import Training

/// `attunet inspect`: a model's parameter table, or what a checkpoint holds.
struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a model's parameter count and per-module table, or describe a checkpoint.",
        discussion: """
        Without a file: builds the architecture from the model options and prints one row per top-level
        module of the original PyTorch class (conv1, ..., attentionblock4, up_concat1, dsv1, final) with its
        parameter count, then the total. With --tensors, one row per state_dict tensor instead.
          attunet inspect --model attention-unet --classes 4     # 6,473,322 parameters
          attunet inspect --model unet --classes 4               # 5,888,004
        With a checkpoint file: its model configuration, parameter count and tensors.
          attunet inspect runs/demo/checkpoint_best.h5
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
            model = try Checkpoint.load(file)
            print("checkpoint: \(file)")
            let root = try H5File.open(file).root
            if let json = try? root.stringAttribute("training_state"),
               let st = try? JSONDecoder().decode(TrainingState.self, from: Data(json.utf8)) {
                print("training state: next epoch \(st.epoch) step \(st.stepInEpoch), \(st.globalStep) optimizer steps, \(st.worldSize) rank(s), best mean Dice \(st.bestDice >= 0 ? fmt(st.bestDice, 4) : "-") (epoch \(st.bestEpoch))")
            }
            if let json = try? root.stringAttribute("metrics"),
               let r = try? JSONDecoder().decode(EpochRecord.self, from: Data(json.utf8)) {
                print("metrics of epoch \(r.epoch): loss \(fmt(r.trainLoss, 5)), lr \(String(format: "%.3e", r.learningRate)), validation Dice \(r.validationDice.map { fmt($0, 4) }.joined(separator: " "))")
            }
            print("weights sha256: \(TrainingCheckpoint.weightsDigest(model))")
        } else {
            model = SegmentationModel(modelOptions.config)
        }
        let c = model.config
        print("model: \(c.kind.rawValue)  in-channels \(c.inChannels)  classes \(c.classes)  feature-scale \(c.featureScale) (filters \(c.filters.map(String.init).joined(separator: ",")))  align-corners \(c.alignCorners)")
        if tensors {
            for e in model.params.entries + model.buffers.entries {
                print("  \(e.name.padding(toLength: 52, withPad: " ", startingAt: 0)) \(StateDict.torchShape(e.shape))")
            }
        } else {
            var order: [String] = [], counts: [String: Int] = [:]
            for e in model.params.entries {
                let module = String(e.name.split(separator: ".").first!)
                if counts[module] == nil { order.append(module) }
                counts[module, default: 0] += e.count
            }
            print("  module            parameters")
            for m in order { print("  \(m.padding(toLength: 16, withPad: " ", startingAt: 0)) \(grouped(counts[m]!).leftPadded(12))") }
        }
        let bnBuffers = model.buffers.count
        print("total trainable parameters: \(grouped(model.parameterCount))  (BN buffers: \(grouped(bnBuffers)) values, not trained)")
    }
}

extension String {
    func leftPadded(_ width: Int) -> String { count >= width ? self : String(repeating: " ", count: width - count) + self }
}
