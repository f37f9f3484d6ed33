import DataPipeline
import Evaluation
import Foundation
import Inference
import NN
import Tensor
import TestSupport
import XCTest

/// `attunet experiment transfer`: a source cohort with three organs, a pancreas-only target cohort from another
/// "site"; BFT, AFT and SCR on the same target folds, the report, the restart, and the refusals.
final class ExperimentTransferTests: XCTestCase {
    nonisolated(unsafe) static var stores: (dir: URL, source: String, target: String)?

    /// Two small cohorts: 4 multi-organ phantoms; 4 pancreas-only phantoms with 5 mm slices and more noise.
    func cohorts() throws -> (source: String, target: String) {
        if let s = Self.stores { return (s.source, s.target) }
        let dir = try TestEnv.tempDir()
        let source = try TestEnv.phantomStore(
            in: dir.appendingPathComponent("a"), count: 4, seed: 3, scale: 0.5, spacing: 4)
        var site = PhantomOptions()
        site.labels = .pancreas
        site.sliceThickness = 5
        site.noiseHU = 30
        site.pancreasHU = 115
        let target = try TestEnv.phantomStore(
            in: dir.appendingPathComponent("b"), count: 4, seed: 4, scale: 0.5, spacing: 4, phantom: site)
        Self.stores = (dir, source, target)
        return (source, target)
    }

    override class func tearDown() {
        if let s = stores { try? FileManager.default.removeItem(at: s.dir) }
        stores = nil
        super.tearDown()
    }

    static let small =
        "--models unet --folds 2 --feature-scale 16 --patch 32x32x16 --batch 2 --epochs 2 --finetune-epochs 1 --samples-per-case 1 --lr 1e-3 --val-every 1 --augment none --seed 0"

    /// The three protocols run on the same two folds: every target case is tested once under each, BFT
    /// evaluates the source checkpoint mapped 2:1 as it is (the same weights `train --init … --label-map 2:1
    /// --epochs 0` writes), the report has the paper's layout and numbers; a rerun skips everything and gives the
    /// same report; a changed command is refused.
    func testThreeProtocolsOnTheSameFoldsWithTheirReport() throws {
        let (source, target) = try cohorts()
        let out = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: out) }
        let command =
            "\(TestEnv.attunet) experiment transfer --source \(source) --target \(target) --out \(out.path) \(Self.small)"
        let r = try TestEnv.run(command, timeout: 600)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("transfer: label map 2:1 (pancreas → pancreas), by class name"), r.stdout)
        let report =
            try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("transfer.json")))
            as! [String: Any]
        let rows = report["rows"] as! [[String: Any]]
        XCTAssertEqual(rows.map { "\($0["protocol"]!) \($0["model"]!)" }, ["BFT unet", "AFT unet", "SCR unet"])
        XCTAssertEqual(report["label_map"] as? String, "2:1")
        // Paired: each protocol tests every target case exactly once, on the same folds.
        let cases = report["per_case"] as! [[String: Any]]
        var byProtocol: [String: [String]] = [:]
        for c in cases { byProtocol[c["model"] as! String, default: []].append("\(c["fold"]!)/\(c["case"]!)") }
        XCTAssertEqual(Set(byProtocol.keys), ["BFT unet", "AFT unet", "SCR unet"])
        let ids = byProtocol["SCR unet"]!.sorted()
        XCTAssertEqual(ids.count, 4)
        XCTAssertEqual(Set(ids.map { $0.split(separator: "/")[1] }).count, 4, "every case once")
        for (k, v) in byProtocol { XCTAssertEqual(v.sorted(), ids, k) }
        // BFT = the source's best checkpoint as it is: its arg-max over the four source classes, pancreas (2) as
        // the target's 1 and every other class background, Dice counted here for every case.
        let best = out.appendingPathComponent("source/unet/checkpoint_best.h5").path
        let model = try Checkpoint.load(best)
        XCTAssertEqual(model.config.classes, 4)
        let predictor = try SlidingWindowPredictor(
            network: model, options: SlidingWindowOptions(patch: Dim3(z: 16, y: 32, x: 32)))
        let store = try CaseStore(path: target)
        var checked = 0
        for k in 0..<2 {
            let results =
                try JSONSerialization.jsonObject(
                    with: Data(contentsOf: out.appendingPathComponent("target/bft-unet/fold_\(k)/unet/results.json")))
                as! [String: Any]
            XCTAssertEqual(results["checkpoint"] as? String, best)
            XCTAssertEqual(results["parameters"] as? Int, model.parameterCount, "the 4-class source model")
            for c in results["cases"] as! [[String: Any]] {
                let id = c["id"] as! String
                let i = store.index(of: id)!
                let pred = try predictor.predict(store: store, case: i).labels.map { $0 == 2 ? UInt8(1) : 0 }
                let ref = try store.label(i)
                let both = zip(pred, ref).filter { $0 == 1 && $1 == 1 }.count
                // Evaluation's one definition of Dice (with its 1e-6 in the denominator), so that only the label
                // maps are compared: a wrong mapping or checkpoint changes Dice by far more than 1e-12.
                let dice = DiceScore.dice(
                    intersection: Double(both), predicted: Double(pred.filter { $0 == 1 }.count),
                    reference: Double(ref.filter { $0 == 1 }.count))
                let reported = ((c["classes"] as! [[String: Any]])[0]["dice"] as! NSNumber).doubleValue
                XCTAssertEqual(reported, dice, accuracy: 1e-12, "\(id)")
                checked += 1
            }
        }
        XCTAssertEqual(checked, 4)
        try TestEnv.python(
            """
            import json
            # AFT and SCR trained (their weights differ from each other and have the target's 2 classes).
            a = json.load(open(r'\(out.path)/target/aft-unet/fold_0/unet/results.json'))
            s = json.load(open(r'\(out.path)/target/scr/fold_0/unet/results.json'))
            assert a['weights_sha256'] != s['weights_sha256']
            assert a['parameters'] == s['parameters'] < \(model.parameterCount)
            """)
        let md = try String(contentsOf: out.appendingPathComponent("transfer.md"), encoding: .utf8)
        for needle in [
            "| Protocol | Method | pancreas DSC | precision | recall | S2S (mm) | paper DSC", "| BFT | unet |",
            "0.690 ± 0.132", "| AFT | unet |", "0.820 ± 0.043", "| SCR | unet |", "0.815 ± 0.068",
            "AFT unet − BFT unet", "AFT unet − SCR unet",
        ] {
            XCTAssertTrue(md.contains(needle), "transfer.md lacks '\(needle)':\n\(md)")
        }
        XCTAssertTrue(r.stdout.contains("| BFT | unet |"), "the table is printed")
        // A rerun finds everything done and writes the same report.
        let first = try Data(contentsOf: out.appendingPathComponent("transfer.json"))
        let again = try TestEnv.run(command, timeout: 600)
        XCTAssertEqual(again.status, 0, again.stdout + again.stderr)
        XCTAssertTrue(again.stdout.contains("done, skipped"), again.stdout)
        XCTAssertFalse(again.stdout.contains("train: unet"), "nothing trains again:\n\(again.stdout)")
        XCTAssertEqual(try Data(contentsOf: out.appendingPathComponent("transfer.json")), first)
        let changed = try TestEnv.run(command + " --finetune-epochs 3")
        XCTAssertNotEqual(changed.status, 0)
        XCTAssertTrue(
            changed.stderr.contains("config.json: this command differs")
                && changed.stderr.contains("fine_tune_epochs: 3 (was 1)"), changed.stderr)
    }

    /// Label maps are checked against both stores before anything trains; half-given stores, --classes and
    /// --epochs 0 without --init are refused with one line.
    func testRefusalsComeBeforeAnyTraining() throws {
        let (source, target) = try cohorts()
        let out = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: out) }
        let base =
            "\(TestEnv.attunet) experiment transfer --source \(source) --target \(target) --out \(out.path)/run \(Self.small)"
        for (options, message) in [
            (
                "--label-map 5:1",
                "\(source): --label-map 5:1 names class 5, but the source store has classes 0-3 (background, spleen, pancreas, kidney)"
            ),
            (
                "--label-map 2:3",
                "\(target): --label-map 2:3 names class 3, but the store has classes 0-1 (background, pancreas)"
            ),
            ("--label-map 1:0", "gives the store's class 1 (pancreas) no checkpoint class"),
            ("--classes 2", "--classes: the models' classes come from the stores"),
            ("--stop-after-epochs 1", "--stop-after-epochs: experiment transfer runs many trainings"),
        ] {
            let r = try TestEnv.run("\(base) \(options)")
            XCTAssertNotEqual(r.status, 0, options)
            XCTAssertTrue(r.stderr.contains(message), "\(options): \(r.stderr)")
            XCTAssertEqual(
                r.stderr.split(separator: "\n").filter { $0.hasPrefix("error:") || $0.hasPrefix("Error:") }.count, 1,
                "\(options): one line:\n\(r.stderr)")
            XCTAssertFalse(
                FileManager.default.fileExists(atPath: "\(out.path)/run/source"), "\(options): nothing trained")
        }
        let half = try TestEnv.run("\(TestEnv.attunet) experiment transfer --source \(source) --out \(out.path)/run")
        XCTAssertNotEqual(half.status, 0)
        XCTAssertTrue(half.stderr.contains("give both --source and --target"), half.stderr)
        for sub in ["train", "cv"] {
            let zero = try TestEnv.run(
                "\(TestEnv.attunet) \(sub) --store \(target) --classes 2 --epochs 0 --out \(out.path)/zero")
            XCTAssertNotEqual(zero.status, 0, sub)
            XCTAssertTrue(zero.stderr.contains("--epochs 0 needs --init"), "\(sub): \(zero.stderr)")
        }
        let help = try TestEnv.run("\(TestEnv.attunet) experiment transfer --help")
        XCTAssertEqual(help.status, 0, help.stderr)
        for needle in ["BFT", "AFT", "SCR", "--finetune-epochs", "--label-map", "--fold-parallel", "built-in default"] {
            XCTAssertTrue(help.stdout.contains(needle), "help lacks \(needle)")
        }
    }
}
