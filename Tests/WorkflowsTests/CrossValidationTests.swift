import DataPipeline
import Evaluation
import Foundation
import NN
import Support
import Tensor
import TestSupport
import Training
import Workflows
import XCTest

/// `attunet cv` end to end on the tiny phantom store (4 cases, 2 folds, both models, 2 epochs per fold):
/// outputs and summaries, restart after stops, 2 ranks against 1, refusals.
final class CrossValidationTests: XCTestCase {
    nonisolated(unsafe) static var shared: URL?

    override class func tearDown() {
        if let shared { try? FileManager.default.removeItem(at: shared) }
        shared = nil
        PhantomStore.remove()
        super.tearDown()
    }

    var work: URL!
    override func setUpWithError() throws { work = try TestEnv.tempDir() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: work) }

    /// SyncBN and SGD so that 2 ranks compute what 1 rank does up to rounding (as the train rank-equivalence
    /// test); validation only after the last epoch, so the checkpoint evaluated is the last one on any rank count.
    /// NSD per class (pancreas 1 mm, the others 2 mm) rides along every run: restarts and rank counts must
    /// reproduce it too.
    static func command(ranks: Int, out: String, extra: String = "") throws -> String {
        let launcher = ranks > 1 ? "mpirun -np \(ranks) --bind-to none --oversubscribe " : ""
        return
            "\(launcher)\(TestEnv.attunet) cv --store \(try PhantomStore.path()) --folds 2 --feature-scale 16 --patch 32x32x16 --batch 2 --epochs 2 --samples-per-case 2 --sync-bn --optimizer sgd --lr 3e-3 --val-every 100 --seed 5 --nsd-tolerance 2,pancreas:1 --out \(out) \(extra)"
    }

    /// The uninterrupted CV on 1 or 2 ranks, each run once for the class.
    static func reference(ranks: Int = 1) throws -> URL {
        if shared == nil { shared = try TestEnv.tempDir() }
        let out = shared!.appendingPathComponent("cv\(ranks)")
        if FileManager.default.fileExists(atPath: RunFolder(out).summaryJSON.path) { return out }
        let r = try TestEnv.run(try command(ranks: ranks, out: out.path))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        return out
    }

    func summary(_ run: URL) throws -> CrossValidationSummary {
        try JSONFiles.decode(CrossValidationSummary.self, from: Data(contentsOf: RunFolder(run).summaryJSON))
    }

    func results(_ run: URL, fold k: Int, model: String) throws -> FoldResults {
        try JSONFiles.decode(FoldResults.self, from: Data(contentsOf: RunFolder(run).fold(k, model: model).foldResults))
    }

    /// Both models on 2 folds: splits.json and nnU-Net's splits_final.json, both folds' results, the three
    /// summaries; every case tested exactly once per model; the summary's means are the means of its per-case
    /// rows; the Wilcoxon p-values are in [0, 1]; summary.json read as nnU-Net's is read, checked against the
    /// store's label maps.
    func testTwoFoldCVOfBothModelsWritesResultsAndSummaries() throws {
        let run = try Self.reference()
        let folder = RunFolder(run)
        for f in [
            folder.config, folder.splits, folder.splitsFinal, folder.summaryMarkdown, folder.summaryCSV,
            folder.summaryJSON, folder.summarySVG,
        ] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: f.path), f.path)
        }
        let ids = try CaseStore(path: try PhantomStore.path()).cases.map(\.id).sorted()
        let s = try summary(run)
        XCTAssertEqual(s.models.map(\.model), ["attention-unet", "unet"])
        for model in ["attention-unet", "unet"] {
            var tested: [String] = []
            for k in 0..<2 {
                let r = try results(run, fold: k, model: model)
                XCTAssertEqual(r.checkpoint, "checkpoint_best.h5")
                tested += r.cases.map(\.id)
            }
            XCTAssertEqual(tested.sorted(), ids, "\(model): every case tested exactly once")
            let row = s.models.first { $0.model == model }!
            for c in row.classes {
                let values = s.cases.filter { $0.model == model && $0.className == c.name }
                XCTAssertEqual(values.map(\.caseID).sorted(), ids)
                for (metric, kp) in [
                    ("dice", \CrossValidationSummary.CaseRow.dice), ("precision", \.precision),
                    ("recall", \.recall), ("assd", \.assd), ("hd95", \.hd95), ("s2s2d", \.s2s2d),
                ] {
                    let mean = values.map { $0[keyPath: kp] }.reduce(0, +) / Double(values.count)
                    XCTAssertEqual(
                        c.metrics[metric]!.mean, mean, accuracy: 1e-12 * max(1, abs(mean)),
                        "\(model) \(c.name) \(metric)")
                }
            }
            XCTAssertEqual(row.evaluation.metricPerCase.map(\.caseID).sorted(), ids)
        }
        // splits_final.json: nnU-Net's list of folds, "val" the fold's test cases; --splits reads it back.
        let nnunet =
            try JSONSerialization.jsonObject(with: Data(contentsOf: folder.splitsFinal)) as! [[String: [String]]]
        let plan = try FoldPlan.load(folder.splits.path, ids: ids, folds: 2, inverse: false)
        XCTAssertEqual(nnunet.map { $0["val"]! }, [plan.testCases(fold: 0), plan.testCases(fold: 1)])
        XCTAssertEqual(nnunet.map { $0["train"]! }, [plan.trainingCases(fold: 0), plan.trainingCases(fold: 1)])
        XCTAssertEqual(try FoldPlan.load(folder.splitsFinal.path, ids: ids, folds: 2, inverse: false), plan)
        let check = TestEnv.root.appendingPathComponent("Tests/Fixtures/check_summary_json.py").path
        let py = try TestEnv.run(
            "\(TestEnv.python) \(check) cv \(folder.summaryJSON.path) \(try PhantomStore.path()) 1,2,3")
        XCTAssertEqual(py.status, 0, py.stdout + py.stderr)
        XCTAssertEqual(s.comparisons.count, 2 * s.classNames.count)
        for c in s.comparisons {
            XCTAssertTrue((0...1).contains(c.pValue), "\(c)")
            XCTAssertEqual(c.pairs, ids.count)
        }
        let md = try String(contentsOf: folder.summaryMarkdown, encoding: .utf8)
        XCTAssertTrue(
            md.contains("pancreas DSC") && md.contains("distance definition: pooled") && md.contains("Wilcoxon"), md)
        // --nsd-tolerance 2,pancreas:1: in config.json, every case's NSD at its class's tolerance, the NSD table.
        let config = try JSONFiles.decode(CrossValidationConfig.self, from: Data(contentsOf: folder.config))
        XCTAssertEqual(config.nsdTolerance, s.classNames.map { $0 == "pancreas" ? 1 : 2 })
        for c in s.models[0].classes {
            XCTAssertEqual(c.nsdTolerance, c.name == "pancreas" ? 1 : 2)
            XCTAssertNotNil(c.metrics["nsd"])
        }
        XCTAssertTrue(s.cases.allSatisfy { ($0.nsd ?? -1) >= 0 && $0.nsd! <= 1 && $0.iou != nil && $0.rvd != nil })
        XCTAssertTrue(md.contains("| pancreas NSD 1 mm |") && md.contains("| spleen NSD 2 mm |"), md)
        let csv = try String(contentsOf: folder.summaryCSV, encoding: .utf8)
        XCTAssertEqual(
            csv.split(separator: "\n").filter { $0.hasPrefix("case,") }.count, 2 * ids.count * s.classNames.count)
        // summary.svg: one box per model and class, at the median of that model's test Dice for the class.
        let svg = try String(contentsOf: folder.summarySVG, encoding: .utf8)
        XCTAssertTrue(svg.hasPrefix("<?xml") && svg.hasSuffix("</svg>\n"))
        for model in ["attention-unet", "unet"] {
            for name in s.classNames {
                let dice = s.cases.filter { $0.model == model && $0.className == name }.map(\.dice).sorted()
                let median = (dice[dice.count / 2 - 1] + dice[dice.count / 2]) / 2  // 4 cases
                XCTAssertTrue(
                    svg.contains(
                        "data-model=\"\(model)\" data-class=\"\(name)\" data-median=\"\(String(format: "%.4f", median))\""
                    ), "\(model) \(name)")
            }
        }
    }

    /// `tensorboard --logdir RUN` shows every fold and model of a CV as its own run, read with the
    /// `tensorboard` package's multiplexer (what the dashboard uses): one run per `fold_<k>/<model>`, each with
    /// every epoch's training loss and validation Dice equal to that run's `log.csv`.
    func testTensorBoardShowsEveryFoldAndModel() throws {
        let run = try Self.reference()
        try TestEnv.python(
            """
            import csv, os
            from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
            root = r'\(run.path)'
            mux = EventMultiplexer(size_guidance={'scalars': 0})
            mux.AddRunsFromDirectory(root)
            mux.Reload()
            want = {f'fold_{k}/{m}/tensorboard' for k in range(2) for m in ['attention-unet', 'unet']}
            assert set(mux.Runs()) == want, sorted(mux.Runs())
            for name in sorted(want):
                rows = list(csv.DictReader(open(os.path.join(root, os.path.dirname(name), 'log.csv'))))
                assert len(rows) == 2, (name, rows)   # --epochs 2
                loss = {e.step: e.value for e in mux.Scalars(name, 'train/loss')}
                assert sorted(loss) == [int(r['step']) for r in rows], (name, sorted(loss))
                for r in rows:
                    assert abs(loss[int(r['step'])] - float(r['train_loss'])) <= 1e-6 * max(1, abs(float(r['train_loss']))), (name, r)
                # --val-every 100: validated after the last epoch only.
                dice = {e.step: e.value for e in mux.Scalars(name, 'validation/mean_dice')}
                assert list(dice) == [int(rows[-1]['step'])], (name, dice)
                assert abs(dice[int(rows[-1]['step'])] - float(rows[-1]['mean_dice'])) <= 5e-5, (name, dice, rows[-1])
            print('runs:', len(want))
            """)
    }

    /// The test cases' label maps of `run`, model by model and fold by fold: every fold's test cases (from its
    /// results.json), and nothing else, in `fold_<k>/<model>/test/`.
    func assertTestPredictions(_ run: URL, file: StaticString = #filePath, line: UInt = #line) throws {
        for model in ["attention-unet", "unet"] {
            for k in 0..<2 {
                let test = RunFolder(run).fold(k, model: model).testPredictions.path
                let ids = try results(run, fold: k, model: model).cases.map(\.id)
                let files = try FileManager.default.contentsOfDirectory(atPath: test).filter { $0.hasSuffix(".nii.gz") }
                XCTAssertEqual(files.sorted(), ids.map { "\($0).nii.gz" }.sorted(), test, file: file, line: line)
            }
        }
    }

    func labels(_ path: String) throws -> (voxels: [Float], affine: [Double]) {
        let v = try NIfTIVolume.read(path)
        return (v.voxels, v.affine)
    }

    /// cv keeps every test case's labels in `fold_<k>/<model>/test/<case>.nii.gz`, equal (voxels, affine, codes)
    /// to what `attunet predict --store` writes for that case with the fold's checkpoint. A restart of the
    /// finished run rewrites none of them, writes a deleted one again (equal to the first, saying so), and with
    /// --save-probabilities adds every case's probabilities, equal to predict's; the results stay the run's.
    func testCVKeepsTestPredictionsAsPredictWritesThemAndARestartCompletesThem() throws {
        let reference = try Self.reference()
        let store = try PhantomStore.path()
        try assertTestPredictions(reference)
        let sub = RunFolder(reference).fold(1, model: "unet")
        let ids = try results(reference, fold: 1, model: "unet").cases.map(\.id)
        let pred = work.appendingPathComponent("pred").path
        let predict =
            "\(TestEnv.attunet) predict --store \(store) --cases \(ids.joined(separator: ",")) --checkpoint \(sub.checkpointBest.path)"
        var r = try TestEnv.run("\(predict) --out \(pred)")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        for id in ids {
            let a = try labels("\(pred)/\(id).nii.gz")
            let b = try labels("\(sub.testPredictions.path)/\(id).nii.gz")
            XCTAssertEqual(a.voxels, b.voxels, id)
            XCTAssertEqual(a.affine, b.affine, id)
            let ga = try NIfTIVolume.readGeometry("\(pred)/\(id).nii.gz")
            let gb = try NIfTIVolume.readGeometry("\(sub.testPredictions.path)/\(id).nii.gz")
            XCTAssertEqual([ga.qformCode, ga.sformCode], [gb.qformCode, gb.sformCode])
        }
        r = try TestEnv.run("\(predict) --save-probabilities --out \(pred)/with-probabilities")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)

        // A restart of a copy of the finished run: one prediction deleted, another watched.
        let copy = work.appendingPathComponent("copy")
        try FileManager.default.copyItem(at: reference, to: copy)
        let deleted = "\(RunFolder(copy).fold(1, model: "unet").testPredictions.path)/\(ids[0]).nii.gz"
        try FileManager.default.removeItem(atPath: deleted)
        let watched = RunFolder(copy).fold(0, model: "attention-unet").testPredictions.path
        let watchedID = try results(copy, fold: 0, model: "attention-unet").cases[0].id
        let date = {
            try FileManager.default.attributesOfItem(atPath: "\(watched)/\(watchedID).nii.gz")[.modificationDate]
                as! Date
        }
        let before = try date()
        r = try TestEnv.run(try Self.command(ranks: 1, out: copy.path))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("cv: attention-unet fold 1/2: done, skipped"), r.stdout)
        XCTAssertTrue(
            r.stdout.contains("cv: unet fold 2/2: done (")
                && r.stdout.contains("writing 1 of 2 test prediction(s) missing"),
            r.stdout)
        XCTAssertEqual(try labels(deleted).voxels, try labels("\(sub.testPredictions.path)/\(ids[0]).nii.gz").voxels)
        XCTAssertEqual(try date(), before, "an existing prediction is not rewritten")
        try assertTestPredictions(copy)

        // --save-probabilities on a restart: every finished fold writes the probabilities it lacks, and leaves
        // its labels as they are.
        r = try TestEnv.run(try Self.command(ranks: 1, out: copy.path, extra: "--save-probabilities"))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertEqual(try date(), before, "an existing prediction is not rewritten")
        XCTAssertEqual(r.stdout.components(separatedBy: "writing 2 of 2 test prediction(s) missing").count, 5, r.stdout)
        for id in ids {
            // nibabel reads both 4-D files (x, y, z, class).
            try TestEnv.python(
                """
                import nibabel as nib, numpy as np
                a = nib.load(r'\(pred)/with-probabilities/probabilities/\(id).nii.gz')
                b = nib.load(r'\(RunFolder(copy).fold(1, model: "unet").testPredictions.path)/probabilities/\(id).nii.gz')
                assert a.shape == b.shape and a.shape[3] == 4, (a.shape, b.shape)
                assert np.array_equal(a.get_fdata(), b.get_fdata()) and np.allclose(a.affine, b.affine)
                """)
        }
        XCTAssertEqual(timeless(try summary(copy)), timeless(try summary(reference)))
    }

    /// `attunet postprocess` on the 2-fold run (kidney: the 2 largest compared too): a decision for every model
    /// and class over the 4 test cases, following the rule (a kept variant has a mean Dice not lower and a mean
    /// HD95 not higher than none's; the chosen one the largest Dice among the kept); the paired summary's means
    /// are those of its per-case rows; cv's summary.json is untouched. `predict --cv-dir` then applies the
    /// decision and says so: its labels are `--no-postprocess`'s with the plan applied by hand. Missing
    /// predictions are refused, naming the file, and leave postprocessing.json as it was.
    func testPostprocessDecidesOnTheSavedPredictionsAndPredictApplies() throws {
        let reference = try Self.reference()
        let store = try PhantomStore.path()
        let run = work.appendingPathComponent("pp")
        try FileManager.default.copyItem(at: reference, to: run)
        let folder = RunFolder(run)
        var r = try TestEnv.run("\(TestEnv.attunet) postprocess --cv-dir \(run.path) --keep kidney:2")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("postprocess: unet fold 2/2: 2 case(s) scored under every variant"), r.stdout)
        let plan = try PostprocessingPlan.load(folder.postprocessing.path)
        XCTAssertEqual(plan.models.map(\.model), ["attention-unet", "unet"])
        XCTAssertEqual(plan.connectivity, .twentySix)
        for m in plan.models {
            XCTAssertEqual(m.classes.map(\.name), ["spleen", "pancreas", "kidney"])
            for c in m.classes {
                XCTAssertEqual(c.cases, 4)
                XCTAssertEqual(c.variants.map(\.step).first, PostprocessingStep.none)
                XCTAssertEqual(c.variants.count, c.name == "kidney" ? 4 : 3, c.name)
                let none = c.variants[0]
                for v in c.variants {
                    XCTAssertEqual(
                        v.kept, v.diceMean >= none.diceMean && v.hd95Mean <= none.hd95Mean, "\(m.model) \(c.name) \(v)")
                }
                let best = c.variants.filter(\.kept).map(\.diceMean).max()!
                let chosen = c.variants.first { $0.step == c.chosen }!
                XCTAssertTrue(chosen.kept)
                XCTAssertEqual(chosen.diceMean, best)
            }
        }
        let summary = try JSONFiles.decode(
            PostprocessedSummary.self, from: Data(contentsOf: folder.summaryPostprocessedJSON))
        XCTAssertEqual(summary.rows.count, 6)
        XCTAssertEqual(summary.perCase.count, 2 * 4 * 3)
        for row in summary.rows {
            let cases = summary.perCase.filter { $0.model == row.model && $0.className == row.className }
            XCTAssertEqual(row.pairs, 4)
            XCTAssertEqual(row.dice.raw, cases.map(\.diceRaw).reduce(0, +) / 4, accuracy: 1e-12)
            XCTAssertEqual(row.hd95.postprocessed, cases.map(\.hd95Postprocessed).reduce(0, +) / 4, accuracy: 1e-12)
            XCTAssertTrue((0...1).contains(row.dice.pValue) && (0...1).contains(row.hd95.pValue), "\(row)")
            if row.postprocessing == .none { XCTAssertEqual(row.dice.pValue, 1) }
        }
        let md = try String(contentsOf: folder.summaryPostprocessedMarkdown, encoding: .utf8)
        XCTAssertTrue(md.contains("| unet | kidney |") && md.contains("Wilcoxon"), md)
        XCTAssertEqual(try Data(contentsOf: folder.summaryJSON), try Data(contentsOf: RunFolder(reference).summaryJSON))

        // predict --cv-dir applies the decision and says so; --no-postprocess writes the labels as predicted.
        let ids = try CaseStore(path: store).cases.map(\.id).prefix(2)
        let base =
            "\(TestEnv.attunet) predict --cv-dir \(run.path) --store \(store) --cases \(ids.joined(separator: ","))"
        r = try TestEnv.run("\(base) --out \(work.path)/post")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let post = try plan.postprocessing(
            model: "attention-unet", classNames: ["spleen", "pancreas", "kidney"], file: folder.postprocessing.path)
        XCTAssertTrue(
            r.stdout.contains("predict: postprocessing the labels with \(folder.postprocessing.path): \(post.summary)"),
            r.stdout)
        r = try TestEnv.run("\(base) --no-postprocess --out \(work.path)/raw")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("--no-postprocess: the labels are written as predicted"), r.stdout)
        let cases = try CaseStore(path: store).cases
        for id in ids {
            let raw = try NIfTIVolume.read("\(work.path)/raw/\(id).nii.gz")
            var expected = raw.voxels.map { UInt8($0) }
            let info = cases.first { $0.id == id }!
            post.apply(
                to: &expected, dim: Dim3(z: raw.nz, y: raw.ny, x: raw.nx), spacing: VoxelSpacing(info.originalSpacing!))
            XCTAssertEqual(try labels("\(work.path)/post/\(id).nii.gz").voxels, expected.map(Float.init), id)
        }

        // Refusals: a missing case, then a fold without saved predictions; postprocessing.json stays.
        let decided = try Data(contentsOf: folder.postprocessing)
        let test = folder.fold(0, model: "unet").testPredictions.path
        let missing = try FileManager.default.contentsOfDirectory(atPath: test).filter { $0.hasSuffix(".nii.gz") }
            .sorted()[0]
        try FileManager.default.removeItem(atPath: "\(test)/\(missing)")
        r = try TestEnv.run("\(TestEnv.attunet) postprocess --cv-dir \(run.path)")
        XCTAssertEqual(r.status, 1, r.stdout + r.stderr)
        XCTAssertTrue(
            r.stderr.contains(
                "error: \(test)/\(missing): missing (a test case of fold 0 of unet); rerun the same attunet cv command"),
            r.stderr)
        try FileManager.default.removeItem(atPath: test)
        r = try TestEnv.run("\(TestEnv.attunet) postprocess --cv-dir \(run.path)")
        XCTAssertEqual(r.status, 1, r.stdout + r.stderr)
        XCTAssertTrue(
            r.stderr.contains("error: \(test): no saved test predictions")
                && r.stderr.contains("rerun the same attunet cv command with this version"),
            r.stderr)
        XCTAssertEqual(try Data(contentsOf: folder.postprocessing), decided)
        r = try TestEnv.run("\(TestEnv.attunet) postprocess --cv-dir \(run.path) --keep kidneys:2")
        XCTAssertEqual(r.status, 1, r.stdout + r.stderr)
        XCTAssertTrue(
            r.stderr.contains("--keep: no class 'kidneys' in \(run.path) (its classes: spleen, pancreas, kidney)"),
            r.stderr)
    }

    /// Box statistics as NumPy's percentile (linear) and Matplotlib's Tukey whiskers compute them.
    func testBoxStatisticsQuartilesWhiskersAndOutliers() {
        let b = BoxStatistics([0.9, 0.1, 0.82, 0.85, 0.8, .nan])!  // sorted: 0.1 0.8 0.82 0.85 0.9
        XCTAssertEqual(b.count, 5)
        XCTAssertEqual(b.q1, 0.8, accuracy: 1e-12)
        XCTAssertEqual(b.median, 0.82, accuracy: 1e-12)
        XCTAssertEqual(b.q3, 0.85, accuracy: 1e-12)
        XCTAssertEqual(b.lowWhisker, 0.8, accuracy: 1e-12, "0.1 is below q1 − 1.5·IQR = 0.725")
        XCTAssertEqual(b.highWhisker, 0.9, accuracy: 1e-12)
        XCTAssertEqual(b.outliers, [0.1])
        XCTAssertEqual(b.mean, 3.47 / 5, accuracy: 1e-12)
        let even = BoxStatistics([1, 2, 3, 4])!  // numpy.percentile([1,2,3,4], [25,50,75]) = 1.75, 2.5, 3.25
        XCTAssertEqual([even.q1, even.median, even.q3], [1.75, 2.5, 3.25])
        XCTAssertNil(BoxStatistics([.nan]))
    }

    /// Starts `cmd` in the background (output in killed.log) and returns once the second fold of the first model
    /// has written a checkpoint (or the job ended, or 120 s passed).
    func startUntilSecondFoldCheckpoints(_ cmd: String, out: URL) throws -> Process {
        let job = try TestEnv.start(cmd, log: "\(work.path)/killed.log")
        let marker = RunFolder(out).fold(1, model: "attention-unet").checkpointLatest.path
        let deadline = Date().addingTimeInterval(120)
        while job.isRunning && Date() < deadline && !FileManager.default.fileExists(atPath: marker) { usleep(5_000) }
        return job
    }

    /// Every fold of both models in `out` equals `reference`'s: results (weights digest, per-case metrics) and
    /// both checkpoints.
    func assertSameFolds(_ out: URL, _ reference: URL, file: StaticString = #filePath, line: UInt = #line) throws {
        for model in ["attention-unet", "unet"] {
            for k in 0..<2 {
                let a = try results(out, fold: k, model: model)
                let b = try results(reference, fold: k, model: model)
                XCTAssertEqual(a.weightsSHA256, b.weightsSHA256, "\(model) fold \(k)", file: file, line: line)
                XCTAssertEqual(
                    a.cases.map(\.classes), b.cases.map(\.classes), "\(model) fold \(k)", file: file, line: line)
            }
        }
        XCTAssertEqual(try digests(out), try digests(reference), file: file, line: line)
    }

    /// The summary's per-case rows without the inference times (which differ from run to run).
    func timeless(_ s: CrossValidationSummary) -> [CrossValidationSummary.CaseRow] {
        s.cases.map {
            var c = $0
            c.seconds = 0
            return c
        }
    }

    /// Weights digests of each fold's checkpoints.
    func digests(_ run: URL) throws -> [String] {
        var d: [String] = []
        for model in ["attention-unet", "unet"] {
            for k in 0..<2 {
                let sub = RunFolder(run).fold(k, model: model)
                for f in [sub.checkpointLatest, sub.checkpointBest] {
                    d.append(TrainingCheckpoint.weightsDigest(try Checkpoint.load(f.path)))
                }
            }
        }
        return d
    }

    /// `--stop-after-epochs 3` stops the CV in the middle of fold 2 of the first model (exit 75); the same
    /// command again skips the finished fold (and says so), resumes the unfinished one, stops again; a third
    /// time finishes. The results equal the uninterrupted CV's exactly: per-case metrics and weights digests.
    /// A changed option is refused, naming it.
    func testStoppedCVResumesToTheUninterruptedResults() throws {
        let reference = try Self.reference()
        let out = work.appendingPathComponent("cv")
        let cmd = try Self.command(ranks: 1, out: out.path, extra: "--stop-after-epochs 3")
        var r = try TestEnv.run(cmd)
        XCTAssertEqual(r.status, 75, r.stdout + r.stderr)
        XCTAssertTrue(
            FileManager.default.fileExists(atPath: RunFolder(out).fold(0, model: "attention-unet").foldResults.path))
        XCTAssertFalse(
            FileManager.default.fileExists(atPath: RunFolder(out).fold(1, model: "attention-unet").foldResults.path))

        let changed = try TestEnv.run(try Self.command(ranks: 1, out: out.path, extra: "--weight-decay 1e-5"))
        XCTAssertEqual(changed.status, 1, changed.stdout + changed.stderr)
        XCTAssertTrue(changed.stderr.contains("training.weight_decay: 1e-05 (was 1e-06)"), changed.stderr)
        let otherDistance = try TestEnv.run(
            try Self.command(ranks: 1, out: out.path, extra: "--distance-definition max-directed"))
        XCTAssertEqual(otherDistance.status, 1, otherDistance.stdout + otherDistance.stderr)
        XCTAssertTrue(
            otherDistance.stderr.contains("distance_definition: \"maxDirected\" (was \"pooled\")")
                || otherDistance.stderr.contains("distance_definition: maxDirected (was pooled)"), otherDistance.stderr)

        // Writes killed mid-way left temporaries of a dead process in the CV folder and in the fold to resume:
        // the restart removes them, one line each.
        let stale = ".tmp-\(try TestEnv.deadPID())-1-checkpoint_latest.h5"
        let resumed = RunFolder(out).fold(1, model: "attention-unet").path
        for folder in [out.path, resumed] { try Data([1]).write(to: URL(fileURLWithPath: "\(folder)/\(stale)")) }
        r = try TestEnv.run(cmd)
        XCTAssertEqual(r.status, 75, r.stdout + r.stderr)
        for folder in [out.path, resumed] {
            XCTAssertFalse(FileManager.default.fileExists(atPath: "\(folder)/\(stale)"), folder)
            XCTAssertEqual(
                r.stdout.components(
                    separatedBy: "removed 1 temporary file(s) of a write killed mid-way from \(folder): \(stale)\n"
                ).count, 2, r.stdout)
        }
        XCTAssertTrue(r.stdout.contains("attention-unet fold 1/2: done, skipped"), r.stdout)
        XCTAssertTrue(
            r.stdout.contains("attention-unet fold 2/2: 1 training / 1 validation / 2 test cases, resuming"), r.stdout)
        r = try TestEnv.run(cmd)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("cv: unet fold 1/2: done, skipped"), r.stdout)
        try assertSameFolds(out, reference)
    }

    /// SIGKILL once the second fold of the first model has written a checkpoint, then the same command again:
    /// the first fold is skipped, the second resumes (or, if the kill landed after its training, is evaluated),
    /// and every fold's results and checkpoints equal the uninterrupted CV's.
    func testKilledCVResumesToTheUninterruptedResults() throws {
        let reference = try Self.reference()
        let out = work.appendingPathComponent("cv")
        let cmd = try Self.command(ranks: 1, out: out.path)
        let job = try startUntilSecondFoldCheckpoints(cmd, out: out)
        kill(job.processIdentifier, SIGKILL)
        job.waitUntilExit()
        XCTAssertEqual(job.terminationReason, .uncaughtSignal, "the CV must have been killed before it finished")
        XCTAssertFalse(FileManager.default.fileExists(atPath: RunFolder(out).summaryJSON.path))
        let r = try TestEnv.run(cmd)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("cv: attention-unet fold 1/2: done, skipped"), r.stdout)
        try assertSameFolds(out, reference)
    }

    /// On 2 ranks: SIGKILL of one rank (not mpirun) once the second fold of the first model has written a
    /// checkpoint; mpirun ends the other. The same command again skips what finished, resumes the rest, and every
    /// fold's results and checkpoints equal the uninterrupted 2-rank CV's, bit for bit.
    func testKilledRankOfATwoRankCVResumesToTheUninterruptedResults() throws {
        let reference = try Self.reference(ranks: 2)
        let out = work.appendingPathComponent("cvkill2")
        let cmd = try Self.command(ranks: 2, out: out.path)
        let job = try startUntilSecondFoldCheckpoints(cmd, out: out)
        let pids = try TestEnv.run(
            "pgrep -f 'attunet cv .*\(out.path)' | while read p; do [ \"$(cat /proc/$p/comm)\" = attunet ] && echo $p; done"
        )
        let ranks = pids.stdout.split(separator: "\n")
        XCTAssertEqual(ranks.count, 2, "two rank processes: \(pids.stdout)")
        if let victim = ranks.last { kill(pid_t(victim)!, SIGKILL) }
        job.waitUntilExit()
        XCTAssertNotEqual(job.terminationStatus, 0, "mpirun must report the killed rank")
        XCTAssertFalse(
            FileManager.default.fileExists(atPath: RunFolder(out).summaryJSON.path),
            "the CV must have been killed before it finished")
        let r = try TestEnv.run(cmd)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("cv: attention-unet fold 1/2: done, skipped"), r.stdout)
        try assertSameFolds(out, reference)
    }

    /// The same CV on 2 ranks (training data-parallel with SyncBN, test cases spread over the ranks) against 1
    /// rank: each fold's weights within the train rank-equivalence test's tolerance (relative difference of the
    /// update from the initial weights ≤ 1e-3), and every per-case Dice within 0.01 (arg-max maps may flip a
    /// few voxels where two classes tie to rounding).
    func testTwoRanksMatchOneRank() throws {
        let (worst, worstDice) = try assertFoldsEquivalent(try Self.reference(ranks: 2), try Self.reference())
        print("cv rank equivalence: worst relative update difference \(worst), worst Dice difference \(worstDice)")
    }

    /// Elastic restarts: a CV stopped on 4 ranks in 2 fold-parallel groups (each fold on 2 ranks) continues on
    /// 2 ranks in 1 group, stops again, and finishes on 1 rank (the folds it left unfinished continue on 1 rank,
    /// saying so). Every fold equals the uninterrupted 1-rank CV's within the rank-equivalence tolerance.
    func testCVStoppedOnFourRanksInTwoGroupsContinuesOnTwoThenOneRank() throws {
        let reference = try Self.reference()
        let out = work.appendingPathComponent("elastic")
        var r = try TestEnv.run(
            try Self.command(ranks: 4, out: out.path, extra: "--fold-parallel 2 --stop-after-epochs 1"))
        XCTAssertEqual(r.status, 75, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("cv: attention-unet fold 2/2 (group 2/2, ranks 2-3): 1 training"), r.stdout)
        r = try TestEnv.run(try Self.command(ranks: 2, out: out.path, extra: "--stop-after-epochs 1"))
        XCTAssertEqual(r.status, 75, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("cv: attention-unet fold 1/2: 1 training"), r.stdout)
        r = try TestEnv.run(try Self.command(ranks: 1, out: out.path))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(
            r.stdout.contains("was written on 2 rank(s); continuing on 1 with the same global batch 2"), r.stdout)
        let (worst, worstDice) = try assertFoldsEquivalent(out, reference)
        print(
            "cv elastic restart 4 ranks (2 groups) -> 2 ranks -> 1 rank: worst relative update difference \(worst), worst Dice difference \(worstDice)"
        )
    }

    /// Each fold's weights of `out` against `reference`'s within the train rank-equivalence test's tolerance
    /// (relative difference of the update from the initial weights ≤ 1e-3), every per-case Dice within 0.01.
    /// Returns the worst of both.
    func assertFoldsEquivalent(_ out: URL, _ reference: URL, file: StaticString = #filePath, line: UInt = #line) throws
        -> (update: Double, dice: Double)
    {
        var worst = 0.0
        var worstDice = 0.0
        for model in ["attention-unet", "unet"] {
            for k in 0..<2 {
                let path = { (run: URL) in RunFolder(run).fold(k, model: model).checkpointLatest.path }
                let a = try Checkpoint.load(path(out))
                let b = try Checkpoint.load(path(reference))
                let start = SegmentationModel(b.config, seed: 5)
                var diff = 0.0
                var norm = 0.0
                for i in 0..<b.params.count {
                    let s = Double(start.params.values.data[i])
                    let da = Double(a.params.values.data[i]) - s
                    let db = Double(b.params.values.data[i]) - s
                    diff += (da - db) * (da - db)
                    norm += db * db
                }
                worst = max(worst, (diff / norm).squareRoot())
                XCTAssertLessThanOrEqual((diff / norm).squareRoot(), 1e-3, "\(model) fold \(k)", file: file, line: line)
                let ra = try results(out, fold: k, model: model)
                let rb = try results(reference, fold: k, model: model)
                XCTAssertEqual(ra.cases.map(\.id), rb.cases.map(\.id), file: file, line: line)
                for (ca, cb) in zip(ra.cases, rb.cases) {
                    for (ma, mb) in zip(ca.classes, cb.classes) {
                        worstDice = max(worstDice, abs(ma.dice - mb.dice))
                        XCTAssertEqual(
                            ma.dice, mb.dice, accuracy: 0.01, "\(model) fold \(k) \(ca.id)", file: file, line: line)
                    }
                }
            }
        }
        return (worst, worstDice)
    }

    /// `--fold-parallel 2` on 2 ranks: two groups of one rank train the folds side by side (jobs 0 and 2 on
    /// group 1, 1 and 3 on group 2). Every fold equals the same fold trained by the CV on 1 rank, bit for bit:
    /// weights digests and per-case metrics. The summary, written by rank 0 from results gathered over the world,
    /// equals the 1-rank summary's per-case rows; both groups' progress lines name their group.
    func testFoldParallelGroupsEqualTheFoldsTrainedAloneOnTheirRankCount() throws {
        let reference = try Self.reference()
        let out = work.appendingPathComponent("cvfp")
        let r = try TestEnv.run(try Self.command(ranks: 2, out: out.path, extra: "--fold-parallel 2"))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("cv: attention-unet fold 1/2 (group 1/2, ranks 0-0): 1 training"), r.stdout)
        XCTAssertTrue(r.stdout.contains("cv: attention-unet fold 2/2 (group 2/2, ranks 1-1): 1 training"), r.stdout)
        try assertSameFolds(out, reference)
        let a = try summary(out)
        let b = try summary(reference)
        XCTAssertEqual(a.models.map(\.model), b.models.map(\.model))
        XCTAssertEqual(timeless(a), timeless(b))
        XCTAssertEqual(a.comparisons, b.comparisons)

        let bad = try TestEnv.run(
            try Self.command(ranks: 2, out: work.appendingPathComponent("bad").path, extra: "--fold-parallel 3"))
        XCTAssertEqual(bad.status, 1, bad.stdout + bad.stderr)
        XCTAssertTrue(
            bad.stderr.contains("error: --fold-parallel 3 does not divide the 2 MPI rank(s) into equal groups"),
            bad.stderr)
    }

    /// The job-array path: `--fold 1` then `--summarize` (refused, naming fold_0 of both models, which has no
    /// results yet), `--fold 0`, and `--summarize` again: every fold equals the one-run CV's, and so do the
    /// summary's per-case rows.
    func testFoldTasksThenSummarizeEqualOneRun() throws {
        let reference = try Self.reference()
        let out = work.appendingPathComponent("array")
        var r = try TestEnv.run(try Self.command(ranks: 1, out: out.path, extra: "--fold 1"))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("cv: fold 1 of every model done"), r.stdout)
        XCTAssertFalse(FileManager.default.fileExists(atPath: RunFolder(out).summaryJSON.path))
        r = try TestEnv.run(try Self.command(ranks: 1, out: out.path, extra: "--summarize"))
        XCTAssertEqual(r.status, 1, r.stdout + r.stderr)
        XCTAssertTrue(
            r.stderr.contains("2 of 4 fold(s) have no results.json yet: fold_0/attention-unet, fold_0/unet"), r.stderr)
        r = try TestEnv.run(try Self.command(ranks: 1, out: out.path, extra: "--fold 0"))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        r = try TestEnv.run(try Self.command(ranks: 1, out: out.path, extra: "--summarize"))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("| attention-unet |"), r.stdout)
        for model in ["attention-unet", "unet"] {
            for k in 0..<2 {
                XCTAssertEqual(
                    try results(out, fold: k, model: model).weightsSHA256,
                    try results(reference, fold: k, model: model).weightsSHA256)
            }
        }
        XCTAssertEqual(timeless(try summary(out)), timeless(try summary(reference)))
        let bad = try TestEnv.run(try Self.command(ranks: 1, out: out.path, extra: "--fold 2"))
        XCTAssertEqual(bad.status, 64, bad.stdout + bad.stderr)
        XCTAssertTrue(bad.stderr.contains("--fold 2: folds are numbered 0 to 1"), bad.stderr)
    }

    /// A splits file whose test parts overlap is refused, naming the case, before anything is written.
    func testBadSplitsAreRefusedNamingTheCases() throws {
        let ids = try CaseStore(path: try PhantomStore.path()).cases.map(\.id).sorted()
        let bad = [
            ["train": [ids[2], ids[3]], "val": [ids[0], ids[1]]],
            ["train": [ids[0], ids[2]], "val": [ids[1], ids[3]]],
        ]
        let file = work.appendingPathComponent("splits_final.json")
        try JSONEncoder().encode(bad).write(to: file)
        let out = work.appendingPathComponent("cv")
        let r = try TestEnv.run(try Self.command(ranks: 1, out: out.path, extra: "--splits \(file.path)"))
        XCTAssertEqual(r.status, 1, r.stdout + r.stderr)
        XCTAssertTrue(
            r.stderr.contains("error: \(file.path): case \(ids[1]) is in the test sets of folds 0 and 1"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: RunFolder(out).fold(0, model: "unet").path))

        // Good splits, one epoch of the first fold, stop; the file edited to other folds: the rerun is refused.
        let good = [
            ["train": [ids[2], ids[3]], "val": [ids[0], ids[1]]],
            ["train": [ids[0], ids[1]], "val": [ids[2], ids[3]]],
        ]
        try JSONEncoder().encode(good).write(to: file)
        let cmd = try Self.command(
            ranks: 1, out: out.path, extra: "--splits \(file.path) --epochs 1 --stop-after-epochs 1")
        var s = try TestEnv.run(cmd)
        XCTAssertEqual(s.status, 75, s.stdout + s.stderr)
        let edited = [
            ["train": [ids[1], ids[3]], "val": [ids[0], ids[2]]],
            ["train": [ids[0], ids[2]], "val": [ids[1], ids[3]]],
        ]
        try JSONEncoder().encode(edited).write(to: file)
        s = try TestEnv.run(cmd)
        XCTAssertEqual(s.status, 1, s.stdout + s.stderr)
        XCTAssertTrue(s.stderr.contains("\(RunFolder(out).splits.path): the folds differ from the run's"), s.stderr)
    }

    /// --dry-run prints the plan (every fold's case counts and steps), per-model timings and the estimate on
    /// these ranks, and writes nothing.
    func testDryRunPrintsThePlanAndWritesNothing() throws {
        let out = work.appendingPathComponent("dry").path
        let r = try TestEnv.run(try Self.command(ranks: 2, out: out, extra: "--dry-run"))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("cv dry run: 2 folds (k-fold), 2 model(s)"), r.stdout)
        XCTAssertTrue(r.stdout.contains("2 rank(s)"), r.stdout)
        for k in 0..<2 { XCTAssertTrue(r.stdout.contains("  fold \(k): "), r.stdout) }
        for m in ["attention-unet", "unet"] { XCTAssertTrue(r.stdout.contains("  \(m) ("), r.stdout) }
        XCTAssertTrue(r.stdout.contains("core-hours") && r.stdout.contains("peak memory per rank"), r.stdout)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "a dry run writes nothing")
    }
}
