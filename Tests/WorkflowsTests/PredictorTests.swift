import DataPipeline
import Foundation
import HDF5Kit
import Inference
import NN
import Support
import Tensor
import TestSupport
import Training
import XCTest

@testable import Workflows

/// The Predictor's decisions that no CLI test reaches cheaply: the recipe a trainer records and reads back,
/// conflicts and legacy checkpoints, the mirror axes test-time augmentation may use, and case naming.
final class PredictorTests: PhantomRunTestCase {
    /// A trainer's recipe is the store's spacing and pre-blur, the run's patch and its augmentation's flips;
    /// a saved checkpoint gives it back, and the Predictor uses it unless told otherwise.
    func testRecipeIsRecordedAndResolved() throws {
        let store = try CaseStore(path: try PhantomStore.path())
        var config = TrainConfig(
            store: store.path, model: ModelConfig(featureScale: 16), patch: Dim3(z: 16, y: 32, x: 32), batch: 1)
        config.augment = .paper
        let paper = try PredictionRecipe(store: store, config: config)
        XCTAssertEqual(paper.spacingMM, store.spacing[0])
        XCTAssertEqual(paper.blurSigmaMM, store.blurSigma)
        XCTAssertEqual(paper.mirrorAxes, ["x", "y"])
        XCTAssertEqual(paper.classNames, store.classNames)
        XCTAssertEqual(paper.patch, config.patch)
        config.augment = .none
        XCTAssertEqual(try PredictionRecipe(store: store, config: config).mirrorAxes, [])

        let model = SegmentationModel(config.model, seed: 1)
        let optimizer = Optimizer(.adam, parameterCount: model.params.count, learningRate: 1e-3, weightDecay: 0)
        let state = TrainingState(
            epoch: 1, stepInEpoch: 0, globalStep: 1, bestDice: -1, bestEpoch: -1, worldSize: 1,
            storeFingerprint: store.fingerprint)
        let path = work.appendingPathComponent("ck.h5").path
        try TrainingCheckpoint.save(
            path, model: model, optimizer: optimizer, config: config, state: state, metrics: nil, recipe: paper)
        XCTAssertEqual(try PredictionRecipe.read(from: try H5File.open(path)), paper)

        // As recorded; a conflicting spacing refused unless forced; a pre-blur given equal to the recipe's is fine.
        var settings = PredictionSettings()
        settings.blurSigma = paper.blurSigmaMM
        let p = try Predictor(checkpoints: [path], settings: settings)
        XCTAssertEqual(p.recipe, paper)
        XCTAssertEqual(p.options.patch, config.patch)
        settings.spacing = paper.spacingMM / 2
        XCTAssertThrowsError(try Predictor(checkpoints: [path], settings: settings)) { e in
            let m = (e as! AttunetError).message
            XCTAssertTrue(
                m.hasPrefix(
                    "\(path): --spacing \(fmtShort(paper.spacingMM / 2)) conflicts with the \(fmtShort(paper.spacingMM)) mm"
                ), m)
        }
        settings.force = true
        XCTAssertEqual(try Predictor(checkpoints: [path], settings: settings).recipe.spacingMM, paper.spacingMM / 2)

        // A weights-only checkpoint records none: refused without both values, used with them.
        let legacy = work.appendingPathComponent("weights.h5").path
        try Checkpoint.save(model, to: legacy)
        var plain = PredictionSettings()
        plain.spacing = 3
        XCTAssertThrowsError(try Predictor(checkpoints: [legacy], settings: plain)) { e in
            XCTAssertTrue((e as! AttunetError).message.contains("records no prediction recipe"), "\(e)")
        }
        plain.blurSigma = 0.5
        let r = try Predictor(checkpoints: [legacy], settings: plain).recipe
        XCTAssertEqual([r.spacingMM, r.blurSigmaMM], [3, 0.5])
        // Stored cases stand in for a missing recipe: the store's own spacing.
        XCTAssertEqual(
            try Predictor(checkpoints: [legacy], settings: PredictionSettings(), store: store).recipe.spacingMM,
            store.spacing[0])
        // ... and a recipe at another spacing than the store's is refused.
        var other = paper
        other.spacingMM = store.spacing[0] * 2
        let otherPath = work.appendingPathComponent("other.h5").path
        try TrainingCheckpoint.save(
            otherPath, model: model, optimizer: optimizer, config: config, state: state, metrics: nil, recipe: other)
        XCTAssertThrowsError(try Predictor(checkpoints: [otherPath], settings: PredictionSettings(), store: store)) {
            e in
            XCTAssertTrue((e as! AttunetError).message.hasPrefix("\(store.path): prepared at"), "\(e)")
        }
    }

    /// --tta flips only along the axes training mirrored along; a model trained without flips is refused
    /// unless the axes are named.
    func testTestTimeAugmentationUsesTheTrainedAxes() throws {
        var s = PredictionSettings()
        XCTAssertEqual(try Predictor.mirrorAxes(s, trained: ["x", "y"], checkpoint: "ck.h5"), [])
        s.tta = true
        XCTAssertEqual(try Predictor.mirrorAxes(s, trained: ["x", "y"], checkpoint: "ck.h5"), [.x, .y])
        XCTAssertEqual(try Predictor.mirrorAxes(s, trained: ["x"], checkpoint: "ck.h5"), [.x])
        XCTAssertThrowsError(try Predictor.mirrorAxes(s, trained: [], checkpoint: "ck.h5")) { e in
            let m = (e as! AttunetError).message
            XCTAssertTrue(
                m.hasPrefix("ck.h5: --tta: the model was trained without mirroring") && m.contains("--tta-axes"), m)
        }
        s.tta = false
        s.ttaAxes = [.x, .y, .z]
        XCTAssertEqual(try Predictor.mirrorAxes(s, trained: [], checkpoint: "ck.h5"), .all)
    }

    /// Files are named by prepare's case-id rule; a second channel and two files of one case are refused.
    func testInputFilesAreNamedByCaseID() throws {
        let dir = work.path
        for name in ["a_0000.nii.gz", "b.nii", ".hidden.nii.gz", "notes.txt"] {
            XCTAssertTrue(FileManager.default.createFile(atPath: "\(dir)/\(name)", contents: Data()))
        }
        let cases = try PredictionCase.files(dir)
        XCTAssertEqual(cases.map(\.id), ["a", "b"])
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(dir)/a.nii.gz", contents: Data()))
        XCTAssertThrowsError(try PredictionCase.files(dir)) { e in
            XCTAssertTrue((e as! AttunetError).message.contains("makes the case 'a'"), "\(e)")
        }
        try FileManager.default.removeItem(atPath: "\(dir)/a.nii.gz")
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(dir)/b_0001.nii.gz", contents: Data()))
        XCTAssertThrowsError(try PredictionCase.files(dir)) { e in
            XCTAssertTrue((e as! AttunetError).message.hasPrefix("\(dir)/b_0001.nii.gz: input channel 1"), "\(e)")
        }
    }
}
