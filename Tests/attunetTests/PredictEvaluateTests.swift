import DataPipeline
import Evaluation
import Foundation
import NN
import Tensor
import TestSupport
import XCTest

/// `attunet predict` and `attunet evaluate` as a user runs them: outputs read back with nibabel, an MPI run
/// against a single-process run, metrics against `CaseMetrics.evaluate` called here.
final class PredictEvaluateTests: XCTestCase {
    /// Two small phantoms and untrained checkpoints (feature scale 16): A and B with 4 classes, C with 3.
    struct Fixture {
        var dir: URL
        var images: String
        var labels: String
        var a: String
        var b: String
        var c: String
    }

    func makeFixture() throws -> Fixture {
        let dir = try TestEnv.tempDir()
        let s = try TestEnv.run("\(TestEnv.attunet) synth --cases 2 --resolution 0.5 --threads 2 --out \(dir.path)/ph")
        XCTAssertEqual(s.status, 0, s.stderr)
        var paths: [String] = []
        for (name, classes, seed) in [("A", 4, UInt64(1)), ("B", 4, 2), ("C", 3, 3)] {
            let path = "\(dir.path)/\(name).h5"
            try Checkpoint.save(
                SegmentationModel(ModelConfig(classes: classes, featureScale: 16), seed: seed), to: path)
            paths.append(path)
        }
        return Fixture(
            dir: dir, images: "\(dir.path)/ph/imagesTr", labels: "\(dir.path)/ph/labelsTr",
            a: paths[0], b: paths[1], c: paths[2])
    }

    /// The fixture's checkpoints are weights-only (no prediction recipe): the spacing and pre-blur are given.
    static let tile = "--patch 32x32x16 --spacing 4 --blur-sigma 0.5"

    func testPredictFolderKeepsSourceGeometryEnsemblesAndRefuses() throws {
        let f = try makeFixture()
        defer { try? FileManager.default.removeItem(at: f.dir) }
        let out = "\(f.dir.path)/pred"
        let r = try TestEnv.run(
            "\(TestEnv.attunet) predict --input \(f.images) --checkpoint \(f.a) \(Self.tile) --out \(out) --save-probabilities --save-attention"
        )
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("phantom_000") && r.stdout.contains("peak RSS"), r.stdout)
        try TestEnv.python(
            """
            import nibabel as nib, numpy as np, os, glob
            imgs = sorted(glob.glob(r'\(f.images)/*.nii.gz'))
            assert len(imgs) == 2
            for p in imgs:
                name = os.path.basename(p)
                a, b = nib.load(p), nib.load(os.path.join(r'\(out)', name))
                assert a.shape == b.shape, (a.shape, b.shape)
                assert np.allclose(a.affine, b.affine, atol=1e-4), (a.affine, b.affine)
                qa, qca = a.get_qform(coded=True); qb, qcb = b.get_qform(coded=True)
                sa, sca = a.get_sform(coded=True); sb, scb = b.get_sform(coded=True)
                assert qca == qcb and sca == scb, (qca, qcb, sca, scb)
                assert np.allclose(qa, qb, atol=1e-4) and np.allclose(sa, sb, atol=1e-4)
                lab = np.asarray(b.dataobj)
                assert lab.dtype == np.uint8 and lab.min() >= 0 and lab.max() <= 3, (lab.dtype, lab.max())
                p4 = nib.load(os.path.join(r'\(out)', 'probabilities', name))
                assert p4.shape == a.shape + (4,) and np.allclose(p4.affine, a.affine, atol=1e-4), (p4.shape, a.shape)
                probs = [np.asarray(p4.dataobj)[..., c] for c in range(4)]
                s = np.sum(probs, axis=0)
                assert probs[0].shape == a.shape and np.allclose(s, 1, atol=1e-3), (s.min(), s.max())
                assert np.array_equal(np.argmax(probs, axis=0), lab) or np.mean(np.argmax(probs, axis=0) == lab) > 0.999
                att = glob.glob(os.path.join(r'\(out)', 'attention', name.replace('.nii.gz', '_*.nii.gz')))
                assert len(att) == 6, att
                pngs = glob.glob(os.path.join(r'\(out)', 'attention', name.replace('.nii.gz', '_*.png')))
                assert len(pngs) == 6, pngs
                for png in pngs:
                    head = open(png, 'rb').read(24)
                    assert head[:8] == b'\\x89PNG\\r\\n\\x1a\\n' and head[12:16] == b'IHDR', png
            """)
        // An ensemble of two checkpoints.
        let e = try TestEnv.run(
            "\(TestEnv.attunet) predict --input \(f.images)/phantom_000.nii.gz --checkpoint \(f.a) --checkpoint \(f.b) \(Self.tile) --out \(f.dir.path)/ens"
        )
        XCTAssertEqual(e.status, 0, e.stderr)
        XCTAssertTrue(e.stdout.contains("an ensemble of 2 checkpoints"), e.stdout)
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(f.dir.path)/ens/phantom_000.nii.gz"))
        // A mismatched ensemble: one error line naming the file.
        let m = try TestEnv.run(
            "\(TestEnv.attunet) predict --input \(f.images) --checkpoint \(f.a) --checkpoint \(f.c) \(Self.tile) --out \(f.dir.path)/bad"
        )
        XCTAssertNotEqual(m.status, 0)
        let lines = m.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, m.stderr)
        XCTAssertTrue(m.stderr.hasPrefix("error: \(f.c):") && m.stderr.contains("3 classes"), m.stderr)
        // An existing output without --force.
        let again = try TestEnv.run(
            "\(TestEnv.attunet) predict --input \(f.images) --checkpoint \(f.a) \(Self.tile) --out \(out)")
        XCTAssertNotEqual(again.status, 0)
        XCTAssertTrue(again.stderr.contains("\(out)/phantom_000.nii.gz exists: pass --force"), again.stderr)
    }

    /// Cases spread over two ranks give the labels one process gives; a NIfTI input, prepared in memory, gives
    /// the labels its store case gives; a trained checkpoint supplies the patch size and the store's spacing.
    func testPredictStoreUnderMPIEqualsOneRank() throws {
        let f = try makeFixture()
        defer { try? FileManager.default.removeItem(at: f.dir) }
        let store = "\(f.dir.path)/s.h5"
        let p = try TestEnv.run(
            "\(TestEnv.attunet) prepare --input \(f.dir.path)/ph --out \(store) --spacing 4 --threads 2")
        XCTAssertEqual(p.status, 0, p.stderr)
        let one = try TestEnv.run(
            "\(TestEnv.attunet) predict --store \(store) --checkpoint \(f.a) --patch 32x32x16 --out \(f.dir.path)/p1")
        XCTAssertEqual(one.status, 0, one.stderr)
        let two = try TestEnv.run(
            "mpirun -np 2 --bind-to none --oversubscribe \(TestEnv.attunet) predict --store \(store) --checkpoint \(f.a) --patch 32x32x16 --out \(f.dir.path)/p2"
        )
        XCTAssertEqual(two.status, 0, two.stderr)
        XCTAssertTrue(two.stdout.contains("on 2 rank(s)") && two.stdout.contains("rank 1"), two.stdout)
        let files = try TestEnv.run(
            "\(TestEnv.attunet) predict --input \(f.images) --checkpoint \(f.a) \(Self.tile) --out \(f.dir.path)/p3")
        XCTAssertEqual(files.status, 0, files.stderr)
        try TestEnv.python(
            """
            import nibabel as nib, numpy as np
            for c in ['phantom_000', 'phantom_001']:
                a = nib.load(r'\(f.dir.path)/p1/' + c + '.nii.gz'); b = nib.load(r'\(f.dir.path)/p2/' + c + '.nii.gz')
                src = nib.load(r'\(f.images)/' + c + '.nii.gz')
                assert a.shape == src.shape and np.allclose(a.affine, src.affine, atol=1e-4)
                assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), c
                assert np.array_equal(a.affine, b.affine)
                f = nib.load(r'\(f.dir.path)/p3/' + c + '.nii.gz')
                assert np.array_equal(np.asarray(a.dataobj), np.asarray(f.dataobj)), c + ': the NIfTI input differs from its store case'
            """)
        // A weights-only checkpoint (no recipe) is refused for NIfTI inputs without the spacing and pre-blur.
        let legacy = try TestEnv.run(
            "\(TestEnv.attunet) predict --input \(f.images) --checkpoint \(f.a) --spacing 4 --out \(f.dir.path)/p5")
        XCTAssertEqual(legacy.status, 1)
        XCTAssertEqual(legacy.stderr.split(separator: "\n").count, 1, legacy.stderr)
        XCTAssertTrue(
            legacy.stderr.hasPrefix("error: \(f.a): records no prediction recipe")
                && legacy.stderr.contains("--spacing MM --blur-sigma MM"), legacy.stderr)
        // A checkpoint from `attunet train` records its recipe: no --patch or --spacing needed.
        let t = try TestEnv.run(
            "\(TestEnv.attunet) train --store \(store) --feature-scale 16 --patch 32x32x16 --batch 1 --epochs 1 --val-cases phantom_001 --out \(f.dir.path)/run"
        )
        XCTAssertEqual(t.status, 0, t.stderr)
        let d = try TestEnv.run(
            "\(TestEnv.attunet) predict --input \(f.images)/phantom_001.nii.gz --checkpoint \(f.dir.path)/run/checkpoint_latest.h5 --out \(f.dir.path)/p4"
        )
        XCTAssertEqual(d.status, 0, d.stderr)
        XCTAssertTrue(
            d.stdout.contains("tiles 32x32x16") && d.stdout.contains("resampled to 4 mm, pre-blur 0.5 mm (checkpoint)"),
            d.stdout)
        // The wrong-spacing case: an explicit --spacing that conflicts with the recipe is refused, naming both.
        let wrong = try TestEnv.run(
            "\(TestEnv.attunet) predict --input \(f.images)/phantom_001.nii.gz --checkpoint \(f.dir.path)/run/checkpoint_latest.h5 --spacing 2 --out \(f.dir.path)/p6"
        )
        XCTAssertEqual(wrong.status, 1)
        XCTAssertTrue(
            wrong.stderr.contains("--spacing 2 conflicts with the 4 mm the model was trained with"), wrong.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(f.dir.path)/p6/phantom_001.nii.gz"))
        let forced = try TestEnv.run(
            "\(TestEnv.attunet) predict --input \(f.images)/phantom_001.nii.gz --checkpoint \(f.dir.path)/run/checkpoint_latest.h5 --spacing 2 --force --out \(f.dir.path)/p6"
        )
        XCTAssertEqual(forced.status, 0, forced.stderr)
        XCTAssertTrue(
            forced.stdout.contains("resampled to 2 mm") && forced.stdout.contains("--spacing with --force"),
            forced.stdout)
        // A copy of the checkpoint in another folder, its training store gone from view, predicts the same labels.
        let elsewhere = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: elsewhere) }
        try FileManager.default.copyItem(
            atPath: "\(f.dir.path)/run/checkpoint_latest.h5", toPath: elsewhere.path + "/ck.h5")
        try FileManager.default.moveItem(atPath: store, toPath: store + ".moved")
        let copied = try TestEnv.run(
            "\(TestEnv.attunet) predict --input \(f.images)/phantom_001.nii.gz --checkpoint \(elsewhere.path)/ck.h5 --out \(f.dir.path)/p7"
        )
        XCTAssertEqual(copied.status, 0, copied.stderr)
        try TestEnv.python(
            """
            import nibabel as nib, numpy as np
            a = np.asarray(nib.load(r'\(f.dir.path)/p4/phantom_001.nii.gz').dataobj)
            b = np.asarray(nib.load(r'\(f.dir.path)/p7/phantom_001.nii.gz').dataobj)
            assert np.array_equal(a, b)
            """)
    }

    // MARK: - evaluate

    static let dim = Dim3(z: 16, y: 24, x: 30)
    static let affine: [Double] = [1.5, 0, 0, -20, 0, 1.2, 0, 10, 0, 0, 2.5, 5, 0, 0, 0, 1]

    /// Two boxes (class 1 and 2) shifted by `dx` voxels along x; class 2 left out when `drop2`.
    static func labelMap(dx: Int, drop2: Bool = false) -> [UInt8] {
        var v = [UInt8](repeating: 0, count: dim.count)
        for z in 3..<12 { for y in 4..<18 { for x in 5..<14 { v[(z * dim.y + y) * dim.x + x + dx] = 1 } } }
        if !drop2 {
            for z in 5..<10 { for y in 6..<12 { for x in 18..<25 { v[(z * dim.y + y) * dim.x + x + dx] = 2 } } }
        }
        return v
    }

    static func write(_ v: [UInt8], _ path: String, affine: [Double] = affine) throws {
        try NIfTIVolume(nx: dim.x, ny: dim.y, nz: dim.z, affine: affine, voxels: v.map(Float.init)).write(
            path, as: .uint8)
    }

    func testEvaluateKnownAnswersSummariesAndRefusals() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let ref = "\(dir.path)/ref"
        let pred = "\(dir.path)/pred"
        for d in [ref, pred] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        let reference = Self.labelMap(dx: 0)
        let shifted = Self.labelMap(dx: 2)
        let dropped = Self.labelMap(dx: 1, drop2: true)
        for c in ["a", "b", "c"] { try Self.write(reference, "\(ref)/\(c).nii.gz") }
        try Self.write(reference, "\(pred)/a.nii.gz")
        try Self.write(shifted, "\(pred)/b.nii.gz")
        try Self.write(dropped, "\(pred)/c.nii.gz")
        let r = try TestEnv.run(
            "\(TestEnv.attunet) evaluate --pred \(pred) --ref \(ref) --class-names background,spleen,kidney")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("| spleen |") && r.stdout.contains("pooled"), r.stdout)
        let out = "\(pred)/evaluation"
        for f in ["metrics.csv", "summary.json", "summary.md"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(out)/\(f)"), f)
        }
        // metrics.csv against CaseMetrics.evaluate in this process.
        let csv = try String(contentsOfFile: "\(out)/metrics.csv", encoding: .utf8).split(separator: "\n").map {
            $0.split(separator: ",").map(String.init)
        }
        let header = csv[0]
        func value(_ row: [String], _ col: String) -> Double { Double(row[header.firstIndex(of: col)!])! }
        let sp = try NIfTIVolume.read("\(ref)/a.nii.gz").spacing  // the float32 affine's column norms
        let spacing = VoxelSpacing(x: sp.x, y: sp.y, z: sp.z)
        var expected: [[ClassMetrics]] = []
        for (i, (name, p)) in [("a", reference), ("b", shifted), ("c", dropped)].enumerated() {
            let m = CaseMetrics.evaluate(
                prediction: p, reference: reference, dim: Self.dim, spacing: spacing, classes: 3)
            expected.append(m)
            for c in 0..<2 {
                let row = csv[1 + i * 2 + c]
                XCTAssertEqual(row[0], name)
                XCTAssertEqual(row[2], String(c + 1))
                for (col, x) in [
                    ("dice", m[c].dice), ("precision", m[c].precision), ("recall", m[c].recall),
                    ("assd_mm", m[c].assd), ("hd95_mm", m[c].hd95), ("s2s_mm", m[c].s2s2d),
                ] {
                    XCTAssertEqual(value(row, col), x, accuracy: 1e-5 * max(1, abs(x)), "\(name) class \(c + 1) \(col)")
                }
            }
        }
        // The reference itself: Dice 1, distances 0; the shifted copy: a known overlap (shift 2 of 9 and 7 voxels).
        XCTAssertEqual(value(csv[1], "dice"), 1, accuracy: 1e-6)
        XCTAssertEqual(value(csv[1], "assd_mm"), 0)
        XCTAssertEqual(value(csv[1], "hd95_mm"), 0)
        XCTAssertEqual(value(csv[3], "dice"), 7.0 / 9.0, accuracy: 1e-6)
        XCTAssertEqual(value(csv[4], "dice"), 5.0 / 7.0, accuracy: 1e-6)
        XCTAssertEqual(csv[6][header.firstIndex(of: "empty")!], "prediction")
        // summary.json: the summaries of the same results, with the worst-case count and the definition.
        let json =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(out)/summary.json")))
            as! [String: Any]
        XCTAssertEqual(json["distance_definition"] as? String, "pooled")
        let classes = json["classes"] as! [[String: Any]]
        let summaries = ClassSummary.summarize(expected)
        for c in 0..<2 {
            let metrics = classes[c]["metrics"] as! [String: [String: Any]]
            XCTAssertEqual(
                Set(metrics.keys), Set(Metric.allCases.filter { $0 != .nsd }.map(\.rawValue)), "no NSD asked")
            for m in Metric.allCases where m != .nsd {
                let s = summaries[c].metrics[m]!
                XCTAssertEqual(metrics[m.rawValue]!["mean"] as! Double, s.mean, accuracy: 1e-9 * max(1, s.mean))
                XCTAssertEqual(metrics[m.rawValue]!["std"] as! Double, s.std, accuracy: 1e-9 * max(1, s.std))
                XCTAssertEqual(metrics[m.rawValue]!["worst_case_count"] as! Int, s.worstCaseCount)
            }
        }
        XCTAssertEqual(classes[1]["name"] as? String, "kidney")
        XCTAssertEqual(classes[1]["prediction_empty"] as? Int, 1)
        // The nnU-Net part: the same means under nnU-Net's names, and every value against numpy on the files.
        let mean = json["mean"] as! [String: [String: Any]]
        XCTAssertEqual(Set(mean.keys), ["1", "2"])
        for c in 0..<2 {
            XCTAssertEqual(mean[String(c + 1)]!["Dice"] as! Double, summaries[c].metrics[.dice]!.mean, accuracy: 1e-12)
        }
        XCTAssertEqual(
            (json["foreground_mean"] as! [String: Any])["Dice"] as! Double,
            (summaries[0].metrics[.dice]!.mean + summaries[1].metrics[.dice]!.mean) / 2, accuracy: 1e-12)
        let perCase = json["metric_per_case"] as! [[String: Any]]
        XCTAssertEqual(perCase.map { $0["reference_file"] as! String }, ["a", "b", "c"].map { "\(ref)/\($0).nii.gz" })
        XCTAssertEqual(
            perCase.map { $0["prediction_file"] as! String }, ["a", "b", "c"].map { "\(pred)/\($0).nii.gz" })
        let check = TestEnv.root.appendingPathComponent("Tests/Fixtures/check_summary_json.py").path
        let py = try TestEnv.run("\(TestEnv.python) \(check) evaluate \(out)/summary.json 1,2")
        XCTAssertEqual(py.status, 0, py.stdout + py.stderr)
        XCTAssertTrue(try String(contentsOfFile: "\(out)/summary.md", encoding: .utf8).contains("[1 worst]"))

        // max-directed differs from pooled on the shifted case and is named.
        let md = try TestEnv.run(
            "\(TestEnv.attunet) evaluate --pred \(pred) --ref \(ref) --distance-definition max-directed --out \(dir.path)/md"
        )
        XCTAssertEqual(md.status, 0, md.stderr)
        let mdJSON = try String(contentsOfFile: "\(dir.path)/md/summary.json", encoding: .utf8)
        XCTAssertTrue(mdJSON.contains("\"max-directed\""), mdJSON)

        // Geometry mismatch: one line naming the file.
        var moved = Self.affine
        moved[3] += 3
        try Self.write(reference, "\(pred)/b.nii.gz", affine: moved)
        let g = try TestEnv.run("\(TestEnv.attunet) evaluate --pred \(pred) --ref \(ref)")
        XCTAssertNotEqual(g.status, 0)
        XCTAssertEqual(g.stderr.split(separator: "\n").count, 1, g.stderr)
        XCTAssertTrue(
            g.stderr.hasPrefix("error: \(pred)/b.nii.gz: geometry differs from the reference \(ref)/b.nii.gz"), g.stderr
        )
        // A missing prediction, and an extra one.
        try FileManager.default.removeItem(atPath: "\(pred)/b.nii.gz")
        let miss = try TestEnv.run("\(TestEnv.attunet) evaluate --pred \(pred) --ref \(ref)")
        XCTAssertNotEqual(miss.status, 0)
        XCTAssertTrue(miss.stderr.hasPrefix("error: \(pred)/b.nii.gz: missing"), miss.stderr)
        try Self.write(reference, "\(pred)/b.nii.gz")
        try Self.write(reference, "\(pred)/z.nii.gz")
        let extra = try TestEnv.run("\(TestEnv.attunet) evaluate --pred \(pred) --ref \(ref)")
        XCTAssertNotEqual(extra.status, 0)
        XCTAssertTrue(extra.stderr.hasPrefix("error: \(pred)/z.nii.gz: no reference \(ref)/z.nii.gz"), extra.stderr)
    }

    /// Predictions pair with references by case id, the rule of `prepare`: `case.nii.gz` with `case.nii.gz`
    /// (nnU-Net's `labelsTs` as --ref), a prediction named with the channel suffix with the reference without it,
    /// an id that itself ends in four digits with its own reference; hidden files are ignored.
    func testEvaluatePairsByCaseIDAsPrepareDoes() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let ref = "\(dir.path)/labelsTs"
        let pred = "\(dir.path)/out"
        for d in [ref, pred] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        let reference = Self.labelMap(dx: 0)
        let shifted = Self.labelMap(dx: 2)
        for c in ["liver_7", "case_0001", "pan"] { try Self.write(reference, "\(ref)/\(c).nii.gz") }
        try Self.write(shifted, "\(pred)/liver_7_0000.nii.gz")
        try Self.write(reference, "\(pred)/case_0001.nii.gz")
        try Self.write(reference, "\(pred)/pan.nii")
        try Data([0]).write(to: URL(fileURLWithPath: "\(pred)/._pan.nii.gz"))
        let r = try TestEnv.run("\(TestEnv.attunet) evaluate --pred \(pred) --ref \(ref)")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("evaluate: 3 case(s)"), r.stdout)
        let json =
            try JSONSerialization.jsonObject(
                with: Data(contentsOf: URL(fileURLWithPath: "\(pred)/evaluation/summary.json"))) as! [String: Any]
        let perCase = json["metric_per_case"] as! [[String: Any]]
        XCTAssertEqual(perCase.map { $0["case_id"] as! String }, ["case_0001", "liver_7", "pan"])
        XCTAssertEqual(
            perCase.map { $0["prediction_file"] as! String },
            ["\(pred)/case_0001.nii.gz", "\(pred)/liver_7_0000.nii.gz", "\(pred)/pan.nii"])
        let dice = perCase.map { (($0["metrics"] as! [String: [String: Any]])["1"]!["Dice"] as! NSNumber).doubleValue }
        XCTAssertEqual(dice[0], 1, accuracy: 1e-6)
        XCTAssertEqual(dice[1], 7.0 / 9.0, accuracy: 1e-6, "the shifted prediction paired with liver_7")
        let check = TestEnv.root.appendingPathComponent("Tests/Fixtures/check_summary_json.py").path
        let py = try TestEnv.run("\(TestEnv.python) \(check) evaluate \(pred)/evaluation/summary.json 1,2")
        XCTAssertEqual(py.status, 0, py.stdout + py.stderr)
        // Two predictions of one case: refused, naming both.
        try Self.write(reference, "\(pred)/liver_7.nii.gz")
        let twice = try TestEnv.run("\(TestEnv.attunet) evaluate --pred \(pred) --ref \(ref)")
        XCTAssertEqual(twice.status, 1, twice.stdout + twice.stderr)
        XCTAssertEqual(
            twice.stderr,
            "error: \(pred)/liver_7_0000.nii.gz: a second prediction of case liver_7 (\(pred)/liver_7.nii.gz)\n")
    }

    /// `--allow-missing` scores the predicted subset, names what is missing on one stderr line and in
    /// summary.json; without it the first missing case is the error it always was. `--nsd-tolerance` per class
    /// (by name, with a default) gives each case's NSD equal to surface-distance's on the NIfTI files as a user
    /// reads them (nibabel, `(x, y, z)` arrays, the header's spacing), and check_summary_json.py still passes.
    func testEvaluateAllowMissingAndNSDAgainstSurfaceDistance() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let ref = "\(dir.path)/ref"
        let pred = "\(dir.path)/pred"
        for d in [ref, pred] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        let reference = Self.labelMap(dx: 0)
        for c in ["a", "b", "c", "d"] { try Self.write(reference, "\(ref)/\(c).nii.gz") }
        try Self.write(Self.labelMap(dx: 2), "\(pred)/a.nii.gz")
        try Self.write(Self.labelMap(dx: 1, drop2: true), "\(pred)/c.nii.gz")
        let refused = try TestEnv.run("\(TestEnv.attunet) evaluate --pred \(pred) --ref \(ref)")
        XCTAssertEqual(refused.status, 1)
        XCTAssertEqual(
            refused.stderr, "error: \(pred)/b.nii.gz: missing (the reference \(ref)/b.nii.gz has no prediction)\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(pred)/evaluation"), "nothing written")

        let names = "--class-names background,spleen,kidney"
        let r = try TestEnv.run(
            "\(TestEnv.attunet) evaluate --pred \(pred) --ref \(ref) \(names) --allow-missing --nsd-tolerance 1,kidney:3.5"
        )
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(
            r.stderr, "warning: 2 of 4 reference(s) have no prediction and are not scored: b, d\n")
        XCTAssertTrue(r.stdout.contains("evaluate: 2 case(s)"), r.stdout)
        XCTAssertTrue(
            r.stdout.contains(" IoU | ") && r.stdout.contains(" RVD | ") && r.stdout.contains(" NSD |"), r.stdout)
        XCTAssertTrue(r.stdout.contains("at 3.5 mm") && r.stdout.contains("not scored: b, d."), r.stdout)
        let out = "\(pred)/evaluation"
        let json =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(out)/summary.json")))
            as! [String: Any]
        XCTAssertEqual(json["missing_cases"] as? [String], ["b", "d"])
        XCTAssertEqual(json["cases"] as? Int, 2)
        let classes = json["classes"] as! [[String: Any]]
        XCTAssertEqual(classes.map { $0["nsd_tolerance"] as? Double }, [1, 3.5])
        let rows = json["per_case"] as! [[String: Any]]
        XCTAssertEqual(rows.map { $0["case_id"] as! String }, ["a", "a", "c", "c"])
        XCTAssertEqual(rows[3]["nsd"] as? Double, 0, "kidney left out of c's prediction")
        let sp = try NIfTIVolume.read("\(ref)/a.nii.gz").spacing
        try TestEnv.python(
            """
            import json
            import nibabel as nib, numpy as np
            import surface_distance as sd
            np.Inf = np.inf  # surface-distance 0.1 uses np.Inf (for an empty mask), which NumPy 2 removed
            s = json.load(open(r'\(out)/summary.json'))
            spacing = (\(sp.x), \(sp.y), \(sp.z))
            worst = 0
            between = 0
            for row in s['per_case']:
                read = lambda d: np.asarray(nib.load(f"{d}/{row['case_id']}.nii.gz").dataobj)
                p, r = read(r'\(pred)') == row['label'], read(r'\(ref)') == row['label']
                t = row['nsd_tolerance']
                assert t == (1 if row['label'] == 1 else 3.5), row
                want = sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(r, p, spacing), t)
                worst = max(worst, abs(row['nsd'] - want) / max(want, 1e-300))
                assert abs(row['nsd'] - want) <= 1e-9 * max(want, 1e-300), (row, want)
                between += 0.05 < want < 0.99
                assert row['rvd'] == (p.sum() - r.sum()) / r.sum(), row
            assert between >= 2, between
            print('NSD vs surface-distance on the NIfTI files: worst relative difference', worst)
            """)
        let check = TestEnv.root.appendingPathComponent("Tests/Fixtures/check_summary_json.py").path
        let py = try TestEnv.run("\(TestEnv.python) \(check) evaluate \(out)/summary.json 1,2")
        XCTAssertEqual(py.status, 0, py.stdout + py.stderr)
        // The refusals of --nsd-tolerance: a malformed value before anything runs (64), an unknown class naming it.
        let bad = try TestEnv.run("\(TestEnv.attunet) evaluate --pred \(pred) --ref \(ref) --nsd-tolerance 1,x")
        XCTAssertEqual(bad.status, 64, bad.stderr)
        XCTAssertTrue(bad.stderr.contains("--nsd-tolerance 1,x: x is not a tolerance in mm"), bad.stderr)
        let unknown = try TestEnv.run(
            "\(TestEnv.attunet) evaluate --pred \(pred) --ref \(ref) \(names) --allow-missing --nsd-tolerance liver:1 --out \(dir.path)/u"
        )
        XCTAssertEqual(unknown.status, 1)
        XCTAssertTrue(
            unknown.stderr.hasSuffix(
                "error: --nsd-tolerance liver:1: liver is no foreground class (the classes: 1 spleen, 2 kidney)\n"),
            unknown.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir.path)/u"), "nothing written")
    }

    /// Phantom label maps (attunet synth, 5 cases x 3 organs, 1.65 x 1.65 x 2.8 mm) against deformed copies (shifted, dilated, eroded
    /// with scipy): NSD at 1 and 2 mm from `attunet evaluate` beside surface-distance's, printed as a table,
    /// with the largest difference.
    func testPhantomNSDFiguresBesideSurfaceDistance() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let s = try TestEnv.run("\(TestEnv.attunet) synth --cases 5 --resolution 1 --threads 2 --out \(dir.path)/ph")
        XCTAssertEqual(s.status, 0, s.stderr)
        let ref = "\(dir.path)/ph/labelsTr"
        let pred = "\(dir.path)/pred"
        try TestEnv.python(
            """
            import os
            import nibabel as nib, numpy as np
            from scipy import ndimage
            os.makedirs(r'\(pred)')
            for i, name in enumerate(sorted(os.listdir(r'\(ref)'))):
                img = nib.load(os.path.join(r'\(ref)', name))
                lab = np.asarray(img.dataobj).astype(np.uint8)
                out = np.zeros_like(lab)
                for c in range(1, int(lab.max()) + 1):
                    m = lab == c
                    m = np.roll(m, (i % 3) - 1, axis=i % 3)
                    m = ndimage.binary_dilation(m) if (c + i) % 3 == 0 else ndimage.binary_erosion(m) if (c + i) % 3 == 1 else m
                    out[m & (out == 0)] = c
                nib.save(nib.Nifti1Image(out, img.affine, img.header), os.path.join(r'\(pred)', name))
            """)
        var outputs: [String] = []
        for t in ["1", "2"] {
            let r = try TestEnv.run(
                "\(TestEnv.attunet) evaluate --pred \(pred) --ref \(ref) --nsd-tolerance \(t) --out \(dir.path)/e\(t)")
            XCTAssertEqual(r.status, 0, r.stderr)
            outputs.append("\(dir.path)/e\(t)/summary.json")
        }
        // Run here rather than through TestEnv.python, so that the table reaches the test's output.
        let script = "\(dir.path)/figures.py"
        try """
        import json
        import nibabel as nib, numpy as np
        import surface_distance as sd
        np.Inf = np.inf  # surface-distance 0.1 uses np.Inf (for an empty mask), which NumPy 2 removed
        worst = 0
        rows = {}
        for path in [r'\(outputs[0])', r'\(outputs[1])']:
            s = json.load(open(path))
            for row in s['per_case']:
                cid = row['case_id']
                p_img = nib.load(f"\(pred)/{cid}.nii.gz"); r_img = nib.load(f"\(ref)/{cid}.nii.gz")
                spacing = tuple(float(np.linalg.norm(r_img.affine[:3, k])) for k in range(3))
                p = np.asarray(p_img.dataobj) == row['label']; r = np.asarray(r_img.dataobj) == row['label']
                want = sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(r, p, spacing), row['nsd_tolerance'])
                worst = max(worst, abs(row['nsd'] - want))
                rows.setdefault((cid, row['name']), []).append((row['nsd'], want))
        print('case         class     NSD@1mm attunet  surface-distance   NSD@2mm attunet  surface-distance')
        for (cid, name), v in sorted(rows.items()):
            print(f'{cid:12} {name:9} {v[0][0]:16.12f} {v[0][1]:17.12f}  {v[1][0]:16.12f} {v[1][1]:17.12f}')
        print(f'{len(rows)} case-class pairs x 2 tolerances; largest absolute difference {worst:.3g}')
        assert len(rows) == 15 and worst <= 1e-9, (len(rows), worst)
        assert sum(v[1][1] > v[0][1] + 0.01 for v in rows.values()) >= 10, 'in-plane neighbours (1.65 mm) count at 2 mm only'
        """.write(toFile: script, atomically: true, encoding: .utf8)
        let figures = try TestEnv.run("\(TestEnv.python) \(script)")
        print(figures.stdout)
        XCTAssertEqual(figures.status, 0, figures.stdout + figures.stderr)
    }

    func testHelpDocumentsEmptyMaskRules() throws {
        for command in ["evaluate --help", "help evaluate"] {
            let h = try TestEnv.run("\(TestEnv.attunet) \(command)")
            XCTAssertEqual(h.status, 0, h.stderr)
            let flat = h.stdout.split(whereSeparator: \.isWhitespace).joined(separator: " ")
            XCTAssertTrue(
                flat.contains("When both are empty") && flat.contains("the prediction is empty")
                    && flat.contains("worst case"), h.stdout)
        }
        let p = try TestEnv.run("\(TestEnv.attunet) predict --help")
        XCTAssertEqual(p.status, 0, p.stderr)
        XCTAssertTrue(p.stdout.contains("--save-attention"), p.stdout)
    }
}
