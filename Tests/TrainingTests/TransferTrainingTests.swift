import Collectives
import DataPipeline
import Foundation
import HDF5Kit
import NN
import Support
import Tensor
import TestSupport
import Training
import XCTest

/// `attunet train --init`: freezing and the fresh parameters' rate over real training steps, the settings kept
/// by `--resume` (and refused when they differ), and label maps checked against a checkpoint's and a store's
/// classes, end to end.
final class TransferTrainingTests: PhantomRunTestCase {
    func values(_ store: ParameterStore, _ e: ParameterEntry) -> [Float] {
        Array(UnsafeBufferPointer(start: store.values.pointer + e.offset, count: e.count))
    }

    func maxChange(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).map { abs($0 - $1) }.max() ?? 0 }

    /// A U-Net (feature scale 16) into an attention-unet with pass-through gates, `--freeze encoder`,
    /// `--head-lr 1e-2` at `--lr 1e-3`, five Adam steps on a fixed batch: the encoder's parameters stay
    /// bit-identical (and equal to the checkpoint's), their Adam moments stay 0, while their BN running
    /// statistics move (training mode, as PyTorch's requires_grad=False); the copied decoder steps at --lr,
    /// the fresh gates at --head-lr.
    func testFrozenEncoderStaysBitIdenticalOverSteps() throws {
        let source = SegmentationModel(ModelConfig(kind: .unet, featureScale: 16), seed: 3)
        let sourcePath = work.appendingPathComponent("unet.h5").path
        try Checkpoint.save(source, to: sourcePath)
        let fx = try TrainerStepTests.Fixture()
        let xyz = fx.config["patch_xyz"] as! [Int]
        let config = TrainConfig(
            store: try PhantomStore.path(),
            model: ModelConfig(kind: .attentionUNet, featureScale: 16, passThroughGates: true),
            patch: Dim3(z: xyz[2], y: xyz[1], x: xyz[0]), batch: 2, optimizer: .adam, learningRate: 1e-3,
            transfer: TransferConfig(checkpoint: sourcePath, freeze: .encoder, headLearningRate: 1e-2))
        let trainer = try Trainer(
            config: config, comm: LocalCommunicator(), outDir: work.appendingPathComponent("run"),
            context: .quiet)
        let report = try trainer.initialiseFromCheckpoint()
        let model = trainer.model
        let opt = trainer.optimizer
        XCTAssertEqual(
            opt.count(.frozen),
            model.params.entries.filter { FreezeKind.encoder.freezes($0.name) }.reduce(0) { $0 + $1.count })
        XCTAssertEqual(
            opt.count(.fresh),
            model.params.entries.filter { report.freshParameters.contains($0.name) }.reduce(0) { $0 + $1.count })
        let start = model.params.values.array
        let startBuffers = model.buffers.values.array
        let batch = try fx.batch()
        var afterFirst: [Float] = []
        for k in 0..<5 {
            _ = try trainer.step(batch)
            if k == 0 { afterFirst = model.params.values.array }
        }
        let end = model.params.values.array
        var frozenSeen = 0
        for e in model.params.entries {
            let range = e.offset..<(e.offset + e.count)
            if FreezeKind.encoder.freezes(e.name) {
                frozenSeen += 1
                XCTAssertTrue(
                    Array(end[range]) == Array(start[range]), "\(e.name) is frozen: it must stay bit-identical")
                XCTAssertTrue(
                    Array(end[range]) == values(source.params, source.params.entry(named: e.name)!),
                    "\(e.name) = the checkpoint's")
                XCTAssertTrue(
                    opt.moment1.array[range].allSatisfy { $0 == 0 } && opt.moment2.array[range].allSatisfy { $0 == 0 },
                    "\(e.name): the Adam moments of a frozen parameter stay 0")
            }
        }
        XCTAssertEqual(
            frozenSeen, 40, "conv1 ... center: 5 blocks x 2 convolutions x (weight, bias, BN weight, BN bias)")
        for e in model.buffers.entries where e.name.hasPrefix("conv2.conv1.1.running_mean") {
            XCTAssertNotEqual(
                Array(model.buffers.values.array[e.offset..<(e.offset + e.count)]),
                Array(startBuffers[e.offset..<(e.offset + e.count)]),
                "frozen layers' BN running statistics keep updating")
        }
        // The first Adam step moves every element by about its rate (|m̂/√v̂| = 1): --lr for copied, --head-lr for fresh.
        func firstStep(_ name: String) -> Float {
            let e = model.params.entry(named: name)!
            return maxChange(
                Array(afterFirst[e.offset..<(e.offset + e.count)]), Array(start[e.offset..<(e.offset + e.count)]))
        }
        XCTAssertEqual(firstStep("up_concat4.conv.conv1.0.weight"), 1e-3, accuracy: 1e-4, "copied: --lr")
        XCTAssertEqual(firstStep("final.weight"), 1e-3, accuracy: 1e-4, "copied: --lr")
        XCTAssertEqual(firstStep("attentionblock4.gate_block_1.psi.weight"), 1e-2, accuracy: 1e-3, "fresh: --head-lr")
        XCTAssertEqual(firstStep("attentionblock2.combine_gates.0.weight"), 1e-2, accuracy: 1e-3, "fresh: --head-lr")
    }

    /// The source run every CLI test starts from: a U-Net, one epoch on the phantom store.
    func sourceRun() throws -> String {
        let r = try TestEnv.run(
            "\(TestEnv.attunet) train --store \(try PhantomStore.path()) --model unet --feature-scale 16 --patch 32x32x16 --batch 2 --epochs 1 --samples-per-case 2 --lr 1e-3 --seed 5 --out \(work.path)/src"
        )
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        return "\(work.path)/src/checkpoint_latest.h5"
    }

    /// `train --init` from a U-Net run: the printed mapping, the settings in config.json and the checkpoint, and
    /// `--resume`: refused with other --init settings (naming them), and with the same ones it continues from
    /// the run's checkpoint (--init is not applied again) with the encoder still frozen.
    func testInitFreezeAndResumeFromTheCommandLine() throws {
        let src = try sourceRun()
        let store = try PhantomStore.path()
        let base =
            "\(TestEnv.attunet) train --store \(store) --model attention-unet --pass-through-gates --feature-scale 16 --patch 32x32x16 --batch 2 --samples-per-case 2 --lr 1e-3 --seed 6 --val-every 100 --out \(work.path)/ft"
        let opts = "--init \(src) --freeze encoder --head-lr 1e-2"
        var r = try TestEnv.run("\(base) \(opts) --epochs 1")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        print(r.stdout)
        for text in [
            "init: \(src) (unet, 4 classes", "conv1            copied", "gating           fresh",
            "pass-through", "not in the unet checkpoint",
            "frozen (--freeze encoder): conv1, conv2, conv3, conv4, center",
            "--head-lr 0.01",
        ] {
            XCTAssertTrue(r.stdout.contains(text), "missing '\(text)' in:\n\(r.stdout)")
        }
        let config = try String(contentsOfFile: "\(work.path)/ft/config.json", encoding: .utf8)
        XCTAssertTrue(
            config.contains("\"freeze\" : \"encoder\"") && config.contains("\"head_learning_rate\" : 0.01"), config)
        let source = try Checkpoint.load(src)
        func assertEncoderFrozen(_ path: String) throws {
            let m = try Checkpoint.load(path)
            for e in m.params.entries where FreezeKind.encoder.freezes(e.name) {
                XCTAssertTrue(
                    values(m.params, e) == values(source.params, source.params.entry(named: e.name)!),
                    "\(e.name) must be the checkpoint's")
            }
            let moved = m.params.entries.filter {
                !FreezeKind.encoder.freezes($0.name) && source.params.entry(named: $0.name) != nil
            }
            .contains { values(m.params, $0) != values(source.params, source.params.entry(named: $0.name)!) }
            XCTAssertTrue(moved, "the decoder must train")
        }
        try assertEncoderFrozen("\(work.path)/ft/checkpoint_latest.h5")
        let latest = try Data(contentsOf: URL(fileURLWithPath: "\(work.path)/ft/checkpoint_latest.h5"))
        for (changed, difference) in [
            ("", "transfer: absent"),
            ("--init \(src) --freeze none --head-lr 1e-2", "transfer.freeze: none (was encoder)"),
            ("--init \(src) --freeze encoder", "transfer.head_learning_rate"),
        ] {
            r = try TestEnv.run("\(base) \(changed) --epochs 2 --resume")
            XCTAssertNotEqual(r.status, 0, "a resume with other --init settings must be refused: \(changed)")
            XCTAssertTrue(r.stderr.hasPrefix("error: ") && r.stderr.contains(difference), "\(changed): \(r.stderr)")
        }
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: "\(work.path)/ft/checkpoint_latest.h5")), latest,
            "a refused resume writes nothing")
        r = try TestEnv.run("\(base) \(opts) --epochs 2 --resume")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertFalse(r.stdout.contains("init: "), "--resume must not apply --init again:\n\(r.stdout)")
        XCTAssertTrue(r.stdout.contains("resuming"), r.stdout)
        try assertEncoderFrozen("\(work.path)/ft/checkpoint_latest.h5")
    }

    /// A pancreas-only store (the phantoms' pancreas, label 2, relabelled 1): without --label-map or
    /// --reset-head the class counts are refused naming both; a map naming a class the checkpoint or the store
    /// does not have is one error line naming it and the file; --label-map 2:1 trains and is recorded.
    func testLabelMapAgainstAPancreasOnlyStore() throws {
        let src = try sourceRun()
        let dir = work.appendingPathComponent("pancreas")
        try Phantom.writeDataset(to: dir.path + "/nii", count: 3, seed: 8, scale: 0.5)
        var options = PrepareOptions()
        options.spacing = 4
        options.labelMap = [2: 1]
        options.classNames = ["background", "pancreas"]
        let store = dir.path + "/store.h5"
        _ = try CasePreparer.run(
            input: try DatasetInput.folder(dir.path + "/nii"), out: store, options: options, skipBad: false)
        let base =
            "\(TestEnv.attunet) train --store \(store) --classes 2 --model unet --feature-scale 16 --patch 32x32x16 --batch 2 --samples-per-case 2 --epochs 1 --init \(src) --out \(work.path)/pan"
        let refusals = [
            (
                "",
                "error: \(src): the checkpoint has 4 classes (background, spleen, pancreas, kidney), the store \(store) has 2 (background, pancreas)"
            ),
            (
                "--label-map 5:1",
                "error: \(src): --label-map 5:1 names class 5, but the checkpoint has classes 0-3 (background, spleen, pancreas, kidney)"
            ),
            (
                "--label-map 2:3",
                "error: \(store): --label-map 2:3 names class 3, but the store has classes 0-1 (background, pancreas)"
            ),
        ]
        for (extra, line) in refusals {
            let r = try TestEnv.run("\(base) \(extra)")
            XCTAssertNotEqual(r.status, 0, extra)
            XCTAssertTrue(r.stderr.contains(line), "\(extra):\n\(r.stderr)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "one line: \(r.stderr)")
            XCTAssertFalse(
                FileManager.default.fileExists(atPath: "\(work.path)/pan/config.json"), "a refused run writes nothing")
        }
        let r = try TestEnv.run("\(base) --label-map 2:1")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(
            r.stdout.contains(
                "label map (checkpoint class -> store class): 0 background -> 0 background, 2 pancreas -> 1 pancreas"),
            r.stdout)
        let f = try H5File.open("\(work.path)/pan/checkpoint_latest.h5")
        XCTAssertTrue(try f.root.stringAttribute("train_config").contains("\"label_map\":\"2:1\""))
        XCTAssertEqual(try TrainingCheckpoint.transferReport(in: f)?.labelMap?.description, "0:0,2:1")
        XCTAssertEqual(TrainingCheckpoint.classNames(in: f), ["background", "pancreas"])
        XCTAssertTrue(try TrainingCheckpoint.verifyState(in: f), "the transfer record is part of the state digest")
    }
}
