import DataPipeline
import Evaluation
import Foundation
import NN
import Support
import Tensor
import TestSupport
import Training
import XCTest

@testable import Workflows  // FoldResults has no public initializer

/// The one evaluator and report: pairing by case id, the `summary.json` schema shared by `evaluate` and `cv`
/// (nnU-Net's keys, then attunet's), nnU-Net's `splits_final.json`, and the files written before attunet used
/// snake_case keys, which restarts and resumes still read.
final class EvaluatorTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try TestEnv.tempDir() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func touch(_ path: String) throws {
        try FileManager.default.createDirectory(
            atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data([0]).write(to: URL(fileURLWithPath: path))
    }

    func testPairsByCaseIDAndRefusesUnpairedFiles() throws {
        let pred = dir.path + "/pred"
        let ref = dir.path + "/ref"
        for f in [
            "ref/a.nii.gz", "ref/b_0001.nii.gz", "ref/c.nii", "ref/notes.txt", "pred/a.nii.gz", "pred/b_0001.nii.gz",
            "pred/c_0000.nii.gz", "pred/._a.nii.gz", "pred/evaluation/summary.json",
        ] {
            try touch(dir.path + "/" + f)
        }
        let pairs = try Evaluator.pairs(predictions: pred, references: ref)
        XCTAssertEqual(
            pairs,
            [
                EvaluationPair(id: "a", prediction: pred + "/a.nii.gz", reference: ref + "/a.nii.gz"),
                EvaluationPair(id: "b_0001", prediction: pred + "/b_0001.nii.gz", reference: ref + "/b_0001.nii.gz"),
                EvaluationPair(id: "c", prediction: pred + "/c_0000.nii.gz", reference: ref + "/c.nii"),
            ])
        func refusal() -> String {
            do {
                _ = try Evaluator.pairs(predictions: pred, references: ref)
                return ""
            } catch { return "\(error)" }
        }
        try touch(pred + "/d_0000.nii.gz")
        XCTAssertEqual(refusal(), "\(pred)/d_0000.nii.gz: no reference \(ref)/d_0000.nii.gz (nor \(ref)/d.nii.gz)")
        try FileManager.default.removeItem(atPath: pred + "/d_0000.nii.gz")
        try FileManager.default.removeItem(atPath: pred + "/a.nii.gz")
        XCTAssertEqual(refusal(), "\(pred)/a.nii.gz: missing (the reference \(ref)/a.nii.gz has no prediction)")
        XCTAssertThrowsError(try Evaluator.pairs(predictions: dir.path + "/none", references: ref)) {
            XCTAssertEqual("\($0)", "\(self.dir.path)/none: no such folder")
        }
        // --allow-missing: the predicted subset, and the references left out by case id.
        let subset = try Evaluator.pairs(predictions: pred, references: ref, allowMissing: true)
        XCTAssertEqual(subset.pairs.map(\.id), ["b_0001", "c"])
        XCTAssertEqual(subset.missing, ["a"])
        try touch(pred + "/d_0000.nii.gz")
        XCTAssertThrowsError(try Evaluator.pairs(predictions: pred, references: ref, allowMissing: true)) {
            XCTAssertEqual("\($0)", "\(pred)/d_0000.nii.gz: no reference \(ref)/d_0000.nii.gz (nor \(ref)/d.nii.gz)")
        }
        let nothing = dir.path + "/empty"
        try FileManager.default.createDirectory(atPath: nothing, withIntermediateDirectories: true)
        XCTAssertThrowsError(try Evaluator.pairs(predictions: nothing, references: ref, allowMissing: true)) {
            XCTAssertEqual("\($0)", "\(nothing): no prediction of any of the 3 reference(s) in \(ref)")
        }
    }

    /// `--nsd-tolerance`: one value, per class by name or label, a default with exceptions; every malformed
    /// value, unknown class, class given twice or left without a tolerance is refused, naming it.
    func testNSDToleranceParsesAndResolvesPerClass() throws {
        let names = ["pancreas", "spleen", "kidney"]
        XCTAssertEqual(try NSDTolerance(parsing: "2").resolve(classNames: names), [2, 2, 2])
        XCTAssertEqual(
            try NSDTolerance(parsing: "pancreas:1,spleen:2,kidney:1.5").resolve(classNames: names), [1, 2, 1.5])
        XCTAssertEqual(try NSDTolerance(parsing: "2,pancreas:1").resolve(classNames: names), [1, 2, 2])
        XCTAssertEqual(try NSDTolerance(parsing: "1:1, 3:0.5 ,2").resolve(classNames: names), [1, 2, 0.5])
        func refusal(_ text: String) -> String {
            do {
                _ = try NSDTolerance(parsing: text).resolve(classNames: names)
                return ""
            } catch { return "\(error)" }
        }
        XCTAssertEqual(
            refusal("pancreas:1"),
            "--nsd-tolerance pancreas:1: no tolerance for spleen (label 2), kidney (label 3); "
                + "name every class or give a default first, e.g. 2,spleen:1")
        XCTAssertEqual(
            refusal("2,liver:1"),
            "--nsd-tolerance 2,liver:1: liver is no foreground class (the classes: 1 pancreas, 2 spleen, 3 kidney)")
        XCTAssertEqual(
            refusal("2,4:1"),
            "--nsd-tolerance 2,4:1: 4 is no foreground class (the classes: 1 pancreas, 2 spleen, 3 kidney)")
        XCTAssertEqual(
            refusal("2,1:1,pancreas:3"),
            "--nsd-tolerance 2,1:1,pancreas:3: class pancreas (label 1) is given twice (1 and pancreas)")
        XCTAssertEqual(refusal("2,3"), "--nsd-tolerance 2,3: two tolerances for every class (give one)")
        XCTAssertEqual(refusal("spleen:1,spleen:2"), "--nsd-tolerance spleen:1,spleen:2: class spleen is given twice")
        for bad in ["-1", "x", "inf", "pancreas:", "2,"] {
            XCTAssertTrue(refusal(bad).hasSuffix("is not a tolerance in mm (a number ≥ 0, e.g. 2 or pancreas:1)"), bad)
        }
        XCTAssertEqual(refusal(":2"), "--nsd-tolerance :2: :2 names no class (CLASS:MM)")
        XCTAssertEqual(refusal("a:1:2"), "--nsd-tolerance a:1:2: a:1:2 is not MM or CLASS:MM")
    }

    /// Two cases of a 2-class problem in memory: a perfect one, and one whose class 2 is empty in both masks.
    func sampleCases() -> [CaseEvaluation] {
        let dim = Dim3(z: 4, y: 6, x: 8)
        var ref = [UInt8](repeating: 0, count: dim.count)
        for v in 0..<20 { ref[v] = 1 }
        for v in 40..<50 { ref[v] = 2 }
        var pred = ref
        for v in 20..<25 { pred[v] = 1 }  // 5 false positives of class 1
        let ev = Evaluator(classes: 3)
        let noTwo = ref.map { $0 == 2 ? UInt8(0) : $0 }
        return [
            ev.evaluate(
                id: "x", prediction: pred, reference: ref, dim: dim, spacing: .isotropic1mm,
                predictionFile: "p/x.nii.gz", referenceFile: "r/x.nii.gz"),
            ev.evaluate(
                id: "y", prediction: noTwo, reference: noTwo, dim: dim, spacing: .isotropic1mm,
                predictionFile: "p/y.nii.gz", referenceFile: "r/y.nii.gz"),
        ]
    }

    func testSummaryJSONHasNNUNetsKeysThenAttunets() throws {
        let report = SegmentationReport(
            cases: sampleCases(), classNames: ["liver", "tumour"], definition: .maxDirected)
        try report.write(to: dir.path + "/eval")
        let data = try Data(contentsOf: dir.appendingPathComponent("eval/summary.json"))
        let json = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        XCTAssertEqual(
            Set(json.keys),
            [
                "metric_per_case", "mean", "foreground_mean", "cases", "distance_definition",
                "distances", "std", "empty_masks", "classes", "per_case", "missing_cases",
            ])
        XCTAssertEqual(json["distance_definition"] as? String, "max-directed")
        XCTAssertEqual(json["missing_cases"] as? [String], [])
        let perCase = json["metric_per_case"] as! [[String: Any]]
        XCTAssertEqual(Set(perCase[0].keys), ["metrics", "prediction_file", "reference_file", "case_id"])
        let x1 = (perCase[0]["metrics"] as! [String: [String: Any]])["1"]!
        XCTAssertEqual(Set(x1.keys), ["Dice", "IoU", "TP", "FP", "FN", "TN", "n_pred", "n_ref"])
        XCTAssertEqual(x1["TP"] as? Int, 20)
        XCTAssertEqual(x1["FP"] as? Int, 5)
        XCTAssertEqual(x1["FN"] as? Int, 0)
        XCTAssertEqual(x1["TN"] as? Int, 192 - 25)  // voxels labelled 1 in neither mask
        XCTAssertEqual(x1["n_pred"] as? Int, 25)
        XCTAssertEqual(x1["n_ref"] as? Int, 20)
        XCTAssertEqual(x1["Dice"] as! Double, 40 / (45 + 1e-6), accuracy: 1e-15)
        XCTAssertEqual(x1["IoU"] as! Double, 20.0 / 25, accuracy: 1e-15)
        // Class 2 absent from both masks of case y: 1 under attunet's rule, so the mean over both cases is 1.
        let y2 = (perCase[1]["metrics"] as! [String: [String: Any]])["2"]!
        XCTAssertEqual(y2["Dice"] as? Double, 1)
        XCTAssertEqual(y2["IoU"] as? Double, 1)
        let mean = json["mean"] as! [String: [String: Double]]
        XCTAssertEqual(mean["1"]!["Dice"]!, (40 / (45 + 1e-6) + 40 / (40 + 1e-6)) / 2, accuracy: 1e-12)
        XCTAssertEqual(mean["2"]!["Dice"]!, 1, accuracy: 1e-6)
        XCTAssertEqual(
            (json["foreground_mean"] as! [String: Double])["Dice"]!, (mean["1"]!["Dice"]! + mean["2"]!["Dice"]!) / 2,
            accuracy: 1e-15)
        let classes = json["classes"] as! [[String: Any]]
        XCTAssertEqual(classes.map { $0["name"] as! String }, ["liver", "tumour"])
        XCTAssertEqual(classes[1]["both_empty"] as? Int, 1)
        let dice = (classes[0]["metrics"] as! [String: [String: Any]])["dice"]!
        XCTAssertEqual(Set(dice.keys), ["count", "mean", "std", "median", "worst_case_count"])
        XCTAssertEqual(dice["mean"] as! Double, mean["1"]!["Dice"]!, accuracy: 1e-15)
        // attunet's part has IoU (the nnU-Net part's mean) and RVD; no NSD without a tolerance.
        let metrics = classes[0]["metrics"] as! [String: [String: Any]]
        XCTAssertEqual(Set(metrics.keys), ["dice", "precision", "recall", "assd", "hd95", "s2s2d", "iou", "rvd"])
        XCTAssertEqual(metrics["iou"]!["mean"] as! Double, mean["1"]!["IoU"]!, accuracy: 1e-15)
        XCTAssertEqual(metrics["rvd"]!["mean"] as! Double, (5.0 / 20 + 0) / 2, accuracy: 1e-15)
        let rows = json["per_case"] as! [[String: Any]]
        XCTAssertEqual(rows.count, 4)
        XCTAssertEqual(
            Set(rows[0].keys),
            [
                "case_id", "label", "name", "dice", "iou", "precision", "recall", "rvd", "assd", "hd95", "s2s2d",
                "empty", "distances_are_worst_case", "s2s_is_worst_case",
            ])
        XCTAssertEqual(rows[0]["case_id"] as? String, "x")
        XCTAssertEqual(rows[0]["rvd"] as! Double, 0.25, accuracy: 1e-15)
        XCTAssertEqual(rows[0]["iou"] as! Double, 0.8, accuracy: 1e-15)
        XCTAssertEqual(rows[3]["empty"] as? String, "both")
        XCTAssertEqual(try JSONFiles.decode(EvaluationSummary.self, from: data), report.summary)
        let csv = try String(contentsOf: dir.appendingPathComponent("eval/metrics.csv"), encoding: .utf8)
        XCTAssertEqual(csv.split(separator: "\n").count, 1 + 2 * 2)
        XCTAssertTrue(
            try String(contentsOf: dir.appendingPathComponent("eval/summary.md"), encoding: .utf8).contains(
                "| tumour |"))
    }

    /// cv's summary.json: per model the same evaluation object over every test case, beside the per-fold rows,
    /// the per-case rows and the comparisons; fold results written before attunet recorded voxel counts (and
    /// with camelCase keys) still summarize, without TN.
    func testCVSummaryWrapsTheSharedEvaluation() throws {
        let cases = sampleCases()
        let results = ["unet", "attention-unet"].map { model in
            FoldResults(
                model: model, fold: 0, checkpoint: "checkpoint_best.h5", weightsSHA256: "ab", parameters: 7,
                classNames: ["liver", "tumour"], distanceDefinition: .pooled,
                cases: cases.map { CaseResult(id: $0.id, seconds: 1, classes: $0.classes, voxels: $0.voxels) })
        }
        let plan = FoldPlan(parts: [["x", "y"], ["z"]], inverse: false)
        let summary = CrossValidationSummary(results: results, plan: plan, definition: .pooled, store: "s.h5")
        let json = try JSONSerialization.jsonObject(with: try JSONFiles.data(summary)) as! [String: Any]
        XCTAssertEqual(
            Set(json.keys),
            [
                "protocol", "folds", "distance_definition", "class_names", "models", "per_fold",
                "per_case", "comparisons",
            ])
        let model = (json["models"] as! [[String: Any]])[0]
        XCTAssertEqual(Set(model.keys), ["model", "parameters", "inference_seconds_per_volume", "evaluation"])
        let evaluation = model["evaluation"] as! [String: Any]
        XCTAssertEqual(
            Set(evaluation.keys),
            [
                "metric_per_case", "mean", "foreground_mean", "cases", "distance_definition",
                "distances", "std", "empty_masks", "classes", "per_case",
            ])
        let first = (evaluation["metric_per_case"] as! [[String: Any]])[0]
        XCTAssertEqual(first["reference_file"] as? String, "s.h5#x")
        XCTAssertEqual(first["prediction_file"] as? String, "fold_0/unet#x")
        XCTAssertEqual(
            summary.models[0].evaluation,
            EvaluationSummary(
                cases: cases.map {
                    var c = $0
                    c.predictionFile = "fold_0/unet#\(c.id)"
                    c.referenceFile = "s.h5#\(c.id)"
                    return c
                },
                classNames: ["liver", "tumour"], definition: .pooled))
        XCTAssertEqual(
            Set((json["per_fold"] as! [[String: Any]])[0].keys),
            ["model", "fold", "checkpoint", "weights_sha256", "classes"])
        XCTAssertEqual(
            Set((json["per_case"] as! [[String: Any]])[0].keys),
            [
                "model", "fold", "case", "class", "dice", "precision", "recall", "assd", "hd95", "s2s2d", "empty",
                "distances_are_worst_case", "s2s_is_worst_case", "seconds", "iou", "rvd",
            ])
        XCTAssertEqual(try JSONFiles.decode(CrossValidationSummary.self, from: try JSONFiles.data(summary)), summary)

        // An older results.json: camelCase keys, no voxel count.
        var old = results[0]
        old.cases = old.cases.map {
            var c = $0
            c.voxels = nil
            return c
        }
        let text = String(decoding: try JSONEncoder().encode(old), as: UTF8.self)
        XCTAssertTrue(text.contains("\"weightsSHA256\"") && text.contains("\"distancesAreWorstCase\""))
        let back = try JSONFiles.decode(FoldResults.self, from: text)
        XCTAssertEqual(back, old)
        let summarized = CrossValidationSummary(results: [back], plan: plan, definition: .pooled, store: "s.h5")
        XCTAssertNil(summarized.models[0].evaluation.foregroundMean.tn)
        let noTN =
            try JSONSerialization.jsonObject(with: try JSONFiles.data(summarized.models[0].evaluation))
            as! [String: Any]
        XCTAssertEqual(
            Set((noTN["foreground_mean"] as! [String: Any]).keys), ["Dice", "IoU", "TP", "FP", "FN", "n_pred", "n_ref"])
    }

    func testSplitsFinalIsNNUNetsLayoutWithTheTestCasesAsVal() throws {
        let ids = (0..<7).map { "case_\($0)" }
        for inverse in [false, true] {
            let plan = try FoldPlan.make(ids: ids, folds: 3, seed: 4, inverse: inverse)
            let list = try JSONSerialization.jsonObject(with: try plan.nnUNetJSON()) as! [[String: [String]]]
            XCTAssertEqual(list.count, 3)
            for (k, fold) in list.enumerated() {
                XCTAssertEqual(Set(fold.keys), ["train", "val"])
                XCTAssertEqual(fold["train"], plan.trainingCases(fold: k))
                XCTAssertEqual(fold["val"], plan.testCases(fold: k))
            }
            let path = dir.appendingPathComponent("splits_final.json")
            try plan.nnUNetJSON().write(to: path)
            XCTAssertEqual(try FoldPlan.load(path.path, ids: ids, folds: 3, inverse: inverse), plan)
        }
    }

    /// With NSD measured (`cv --nsd-tolerance`): summary.json's classes and rows carry it, summary.md has an
    /// NSD column per class with its tolerance beside IoU and RVD, summary.csv the iou, rvd and nsd columns last.
    func testCVSummaryWithNSDIoUAndRVD() throws {
        let dim = Dim3(z: 6, y: 8, x: 10)
        var ref = [UInt8](repeating: 0, count: dim.count)
        for z in 1..<5 { for y in 2..<6 { for x in 2..<8 { ref[(z * dim.y + y) * dim.x + x] = 1 } } }
        var pred = ref
        for z in 1..<5 { for y in 2..<6 { pred[(z * dim.y + y) * dim.x + 8] = 1 } }  // one layer too many
        let ev = Evaluator(classes: 3, nsdTolerances: [0.5, 2])
        let m = ev.metrics(prediction: pred, reference: ref, dim: dim, spacing: .isotropic1mm)
        XCTAssertEqual(m[0].nsdTolerance, 0.5)
        XCTAssertEqual(m[0].rvd, 1.0 / 6, accuracy: 1e-15)
        let nsd = try XCTUnwrap(m[0].nsd)
        XCTAssertGreaterThan(nsd, 0.5)
        XCTAssertLessThan(nsd, 1)
        XCTAssertEqual(m[1].nsd, 1, "class 2 in neither mask")
        let results = ["attention-unet", "unet"].map { model in
            FoldResults(
                model: model, fold: 0, checkpoint: "checkpoint_best.h5", weightsSHA256: "ab", parameters: 7,
                classNames: ["pancreas", "tumour"], distanceDefinition: .pooled,
                cases: [CaseResult(id: "x", seconds: 1, classes: m, voxels: dim.count)])
        }
        let summary = CrossValidationSummary(
            results: results, plan: FoldPlan(parts: [["x"], ["y"]], inverse: false), definition: .pooled,
            store: "s.h5")
        XCTAssertEqual(summary.models[0].classes.map(\.nsdTolerance), [0.5, 2])
        XCTAssertEqual(summary.models[0].classes[0].metrics["nsd"]!.mean, nsd)
        XCTAssertEqual(summary.cases[0].nsd, nsd)
        XCTAssertEqual(summary.models[0].evaluation.surfaceDice, EvaluationSummary.surfaceDiceRule)
        let md = summary.markdown()
        XCTAssertTrue(
            md.contains(
                "| Method | pancreas IoU | pancreas RVD | pancreas NSD 0.5 mm | tumour IoU | tumour RVD | tumour NSD 2 mm |"
            ),
            md)
        XCTAssertTrue(
            md.contains(
                String(format: "| attention-unet | %.3f ± 0.000 | 0.167 ± 0.000 (wc 0) | %.3f ± 0.000 |", m[0].iou, nsd)
            ), md)
        let csv = summary.csv().split(separator: "\n").map {
            $0.split(separator: ",", omittingEmptySubsequences: false)
        }
        XCTAssertEqual(
            csv[0].suffix(7).map(String.init),
            ["distances_worst_case", "s2s_worst_case", "empty", "seconds", "iou", "rvd", "nsd"])
        let caseRow = csv.first { $0[0] == "case" }!
        XCTAssertEqual(Double(caseRow[caseRow.count - 1])!, nsd, accuracy: 1e-8)
        XCTAssertEqual(Double(caseRow[caseRow.count - 2])!, 1.0 / 6, accuracy: 1e-8)
        XCTAssertEqual(try JSONFiles.decode(CrossValidationSummary.self, from: try JSONFiles.data(summary)), summary)
        // Without NSD, the column stays empty and the table has none.
        let plain = CrossValidationSummary(
            results: try resultsWithoutNSD(), plan: FoldPlan(parts: [["x", "y"], ["z"]], inverse: false),
            definition: .pooled, store: "s.h5")
        XCTAssertFalse(plain.markdown().contains("NSD"))
        XCTAssertTrue(plain.csv().split(separator: "\n")[1].hasSuffix(","), "an empty nsd cell")
    }

    func resultsWithoutNSD() throws -> [FoldResults] {
        [
            FoldResults(
                model: "unet", fold: 0, checkpoint: "checkpoint_best.h5", weightsSHA256: "ab", parameters: 7,
                classNames: ["liver", "tumour"], distanceDefinition: .pooled,
                cases: sampleCases().map { CaseResult(id: $0.id, seconds: 1, classes: $0.classes, voxels: $0.voxels) })
        ]
    }

    /// A CV folder's config.json and a checkpoint's train_config written with camelCase keys compare equal to
    /// the same configuration today (a restart and a resume go on), and a real difference is named in today's
    /// spelling; a training state written with camelCase keys reads back.
    func testConfigurationsAndStatesWrittenBeforeSnakeCaseStillCompareAndRead() throws {
        let training = TrainConfig(
            store: "s.h5", model: ModelConfig(classes: 3, featureScale: 16), syncBN: true,
            trainCases: ["a_0000"], validationCases: ["b"])
        let cv = CrossValidationConfig(
            store: "s.h5", storeFingerprint: "f", models: [training.model], folds: 2, inverse: false,
            splitsFile: nil, groupBy: nil, validationFraction: 0.2, distanceDefinition: .maxDirected,
            training: training)
        let camel = try JSONEncoder().encode(cv)
        XCTAssertTrue(String(decoding: camel, as: UTF8.self).contains("\"syncBN\":true"))
        XCTAssertNil(try cv.difference(from: camel))
        XCTAssertNil(try cv.difference(from: try JSONFiles.data(cv)))
        XCTAssertEqual(try JSONFiles.decode(CrossValidationConfig.self, from: camel), cv)
        var other = cv
        other.training.weightDecay = 1e-5
        XCTAssertEqual(try other.difference(from: camel), "training.weight_decay: 1e-05 (was 1e-06)")
        other = cv
        other.training.syncBN = false
        XCTAssertEqual(try other.difference(from: camel), "training.sync_bn: false (was true)")
        // A run made before --nsd-tolerance (no key) reads and compares equal without it; adding one is named.
        XCTAssertFalse(String(decoding: camel, as: UTF8.self).contains("nsd"))
        XCTAssertNil(try JSONFiles.decode(CrossValidationConfig.self, from: camel).nsdTolerance)
        other = cv
        other.nsdTolerance = [1, 2]
        XCTAssertEqual(try other.difference(from: camel), "nsd_tolerance: [1,2] (absent before)")
        XCTAssertNil(try other.difference(from: try JSONFiles.data(other)))
        XCTAssertEqual(try JSONFiles.decode(CrossValidationConfig.self, from: try JSONFiles.data(other)), other)

        // train --resume: the checkpoint's train_config, with the keys a resume may change ignored.
        let old = try JSONEncoder().encode(training)
        var longer = training
        longer.epochs += 10
        longer.validateEvery = 5
        XCTAssertNil(
            try ConfigDifference.first(
                longer, old: old, ignoring: ["epochs", "validateEvery", "checkpointEvery", "store"]))
        longer.learningRate = 1
        XCTAssertEqual(
            try ConfigDifference.first(
                longer, old: old, ignoring: ["epochs", "validateEvery", "checkpointEvery", "store"]),
            "learning_rate: 1 (was 0.0001)")
        XCTAssertEqual(try JSONFiles.decode(TrainConfig.self, from: old), training)

        let state =
            #"{"epoch":3,"stepInEpoch":2,"globalStep":14,"bestDice":0.5,"bestEpoch":1,"worldSize":2,"storeFingerprint":"f"}"#
        let s = try JSONFiles.decode(TrainingState.self, from: state)
        XCTAssertEqual([s.epoch, s.stepInEpoch, s.globalStep, s.bestEpoch, s.worldSize], [3, 2, 14, 1, 2])
        XCTAssertEqual(s.storeFingerprint, "f")
        let written = try JSONFiles.string(s)
        XCTAssertTrue(
            written.contains("\"step_in_epoch\":2") && written.contains("\"store_fingerprint\":\"f\""), written)
        XCTAssertEqual(try JSONFiles.decode(TrainingState.self, from: written), s)
    }
}
