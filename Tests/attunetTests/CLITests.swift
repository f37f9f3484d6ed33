import Foundation
import TestSupport
import XCTest

/// The command-line tool as a user runs it.
final class CLITests: XCTestCase {
    func testInspectPrintsThePaperParameterCounts() throws {
        let a = try TestEnv.run("\(TestEnv.attunet) inspect --model attention-unet --classes 4")
        XCTAssertEqual(a.status, 0, a.stderr)
        XCTAssertTrue(a.stdout.contains("total trainable parameters: 6,473,322"), a.stdout)
        XCTAssertTrue(a.stdout.contains("attentionblock4"), a.stdout)
        let u = try TestEnv.run("\(TestEnv.attunet) inspect --model unet --classes 4")
        XCTAssertTrue(u.stdout.contains("total trainable parameters: 5,888,004"), u.stdout)
    }

    /// An unknown or unavailable `ATTUNET_CONV_PATH` is one error line and exit status 1 before any work, not a
    /// crash or a silent fallback to another kernel.
    func testUnknownConvolutionPathIsOneErrorLine() throws {
        let r = try TestEnv.run("ATTUNET_CONV_PATH=fast \(TestEnv.attunet) inspect --model unet --feature-scale 16")
        XCTAssertEqual(r.status, 1, r.stdout + r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertTrue(
            r.stderr.hasPrefix(
                "error: ATTUNET_CONV_PATH=fast: unknown 3x3x3 convolution path; this CPU runs: auto, direct, gemm"),
            r.stderr)
        XCTAssertFalse(r.stdout.contains("total trainable parameters"), r.stdout)
        let gemm = try TestEnv.run("ATTUNET_CONV_PATH=gemm \(TestEnv.attunet) inspect --model unet --feature-scale 16")
        XCTAssertEqual(gemm.status, 0, gemm.stderr)
    }

    /// The U-Net presets: `inspect` prints their count and feature scale; a --feature-scale that contradicts
    /// a preset is refused in inspect, train and cv (whose --models lists them among the known models).
    func testPresetsPrintTheirCountAndFixTheirFeatureScale() throws {
        let c = try TestEnv.run("\(TestEnv.attunet) inspect --model unet-capacity-matched")
        XCTAssertEqual(c.status, 0, c.stderr)
        XCTAssertTrue(c.stdout.contains("total trainable parameters: 6,444,328"), c.stdout)
        XCTAssertTrue(
            c.stdout.contains("feature-scale 3.82 (filters 16,33,67,134,268)") && c.stdout.contains("capacity-matched"),
            c.stdout)
        let b = try TestEnv.run("\(TestEnv.attunet) inspect --model unet-10m --feature-scale 3")
        XCTAssertEqual(b.status, 0, b.stderr)
        XCTAssertTrue(
            b.stdout.contains("total trainable parameters: 10,403,190")
                && b.stdout.contains("feature-scale 3.0 (filters 21,42,85,170,341)"), b.stdout)
        for command in [
            "inspect --model unet-10m --feature-scale 16",
            "train --store none.h5 --model unet-capacity-matched --feature-scale 8",
            "cv --store none.h5 --models unet,unet-capacity-matched --feature-scale 16",
        ] {
            let r = try TestEnv.run("\(TestEnv.attunet) \(command)")
            XCTAssertNotEqual(r.status, 0, command)
            XCTAssertTrue(
                r.stderr.contains("conflicts with unet-") && r.stderr.contains("which fixes feature scale"),
                "\(command): \(r.stderr)")
        }
        let unknown = try TestEnv.run("\(TestEnv.attunet) cv --store none.h5 --models unet,vnet")
        XCTAssertTrue(
            unknown.stderr.contains("unknown model 'vnet' (attention-unet, unet, unet-capacity-matched, unet-10m)"),
            unknown.stderr)
    }

    /// `attunet experiment capacity` is `attunet cv` of attention-unet, unet and unet-capacity-matched (and
    /// unet-10m with --with-10m) on the same folds: the dry run plans the three models with their counts; a
    /// --models of its own is refused; the presets' feature scales hold.
    func testExperimentCapacityIsTheCVOfTheThreeModels() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = try TestEnv.phantomStore(in: dir, count: 4, seed: 3, scale: 0.5, spacing: 4)
        let r = try TestEnv.run(
            "\(TestEnv.attunet) experiment capacity --store \(store) --folds 2 --patch 32x32x16 --epochs 1 --dry-run")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        for line in [
            "attention-unet (6,473,322 parameters)", "unet (5,888,004 parameters)",
            "unet-capacity-matched (6,444,328 parameters)",
        ] {
            XCTAssertTrue(r.stdout.contains(line), "missing '\(line)':\n\(r.stdout)")
        }
        XCTAssertFalse(r.stdout.contains("unet-10m"), r.stdout)
        for (options, message) in [
            ("--models unet", "--models is fixed by experiment capacity"),
            ("--feature-scale 3.82 --with-10m", "conflicts with unet-10m"),
        ] {
            let refused = try TestEnv.run("\(TestEnv.attunet) experiment capacity --store \(store) \(options)")
            XCTAssertNotEqual(refused.status, 0, options)
            XCTAssertTrue(refused.stderr.contains(message), "\(options): \(refused.stderr)")
        }
        let help = try TestEnv.run("\(TestEnv.attunet) experiment capacity --help")
        XCTAssertEqual(help.status, 0, help.stderr)
        XCTAssertTrue(help.stdout.contains("capacity-matched") && help.stdout.contains("--fold-parallel"), help.stdout)
    }

    /// A state_dict saved by the original code as safetensors imports into a checkpoint whose tensors equal
    /// the originals in PyTorch's axis order; a wrong file is refused with one line naming it.
    func testImportWeightsFromSafetensors() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let fixture = TestEnv.root.appendingPathComponent("Tests/Fixtures/model_attention_unet.h5").path
        try TestEnv.python(
            """
            import h5py, numpy as np
            from safetensors.numpy import save_file
            with h5py.File(r'\(fixture)', 'r') as f:
                sd = {k: np.ascontiguousarray(f['state_dict'][k][()]) for k in f['state_dict']}
            save_file(sd, r'\(dir.path)/w.safetensors')
            sd.pop('final.bias'); save_file(sd, r'\(dir.path)/broken.safetensors')
            """)
        let out = dir.appendingPathComponent("ckpt.h5").path
        let r = try TestEnv.run("\(TestEnv.attunet) import-weights \(dir.path)/w.safetensors --out \(out)")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("attention-unet"), r.stdout)
        try TestEnv.python(
            """
            import h5py, numpy as np
            with h5py.File(r'\(fixture)', 'r') as a, h5py.File(r'\(out)', 'r') as b:
                assert set(a['state_dict']) == set(b['state_dict'])
                for k in a['state_dict']:
                    x, y = a['state_dict'][k][()], b['state_dict'][k][()]
                    assert x.shape == y.shape and np.array_equal(x, y), k
            """)
        let again = try TestEnv.run("\(TestEnv.attunet) import-weights \(dir.path)/w.safetensors --out \(out)")
        XCTAssertNotEqual(again.status, 0, "must not overwrite an existing checkpoint without --force")
        let bad = try TestEnv.run(
            "\(TestEnv.attunet) import-weights \(dir.path)/broken.safetensors --out \(dir.path)/b.h5")
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("broken.safetensors: missing tensor final.bias"), bad.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir.path)/b.h5"))
    }

    func testUnknownFlagIsAClearError() throws {
        let r = try TestEnv.run("\(TestEnv.attunet) inspect --no-such-flag")
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("--no-such-flag"), r.stderr)
    }

    /// `--help` prints the subcommand's help (argument-parser hands it to run() as an error) and exits 0.
    func testHelpPrintsHelpAndExitsZero() throws {
        let r = try TestEnv.run("\(TestEnv.attunet) cv --help")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(
            r.stdout.contains("USAGE: attunet cv") && r.stdout.contains("Protocols")
                && r.stdout.contains("--stop-after-epochs"), r.stdout)
        XCTAssertTrue(r.stderr.isEmpty, r.stderr)
        let t = try TestEnv.run("\(TestEnv.attunet) train --help")
        XCTAssertEqual(t.status, 0, t.stdout + t.stderr)
        XCTAssertTrue(t.stdout.contains("--val-cases") && t.stdout.contains("--lr <lr>"), t.stdout)
    }

    /// `synth`'s knobs: a bad value is refused before anything is written, naming the option; the knobs
    /// used are recorded in dataset.json, and the voxel order asked for is the one written.
    func testSynthKnobs() throws {
        for (args, expect) in [
            ("--orientation RAR", "--orientation 'RAR' is not a voxel order"),
            ("--organ-scale 0", "--organ-scale must be in [0.25, 2]"),
            ("--oblique-degrees 90", "--oblique-degrees must be in [-45, 45]"),
            ("--pancreas-hu 9000", "--pancreas-hu must be in [-1000, 1500] HU"),
        ] {
            let r = try TestEnv.run("\(TestEnv.attunet) synth --out /nonexistent/x \(args)")
            XCTAssertEqual(r.status, 64, args)
            XCTAssertTrue(r.stderr.contains(expect), r.stderr)
        }
        let d = try TestEnv.tempDir().path
        let r = try TestEnv.run(
            "\(TestEnv.attunet) synth --out \(d)/hard --cases 1 --resolution 0.5 --threads 1 --orientation RAS --organ-scale 0.5 --spleen-hu 115 --liver-hu 110 --pancreas-hu 55 --bowel-hu 45"
        )
        XCTAssertEqual(r.status, 0, r.stderr)
        try TestEnv.python(
            """
            import json, nibabel as nib
            j = json.load(open('\(d)/hard/dataset.json'))
            assert j['description'] == 'attunet synthetic abdominal CT phantoms (seed 1; orientation RAS, organ scale 0.5, spleen 115.0 HU, pancreas 55.0 HU, liver 110.0 HU, bowel 45.0 HU)', j['description']
            assert nib.aff2axcodes(nib.load('\(d)/hard/imagesTr/phantom_000.nii.gz').affine) == ('R', 'A', 'S')
            """)
    }
}
