import Foundation
import NN
import Tensor
import TestSupport
import XCTest

/// `attunet export-weights` as a user runs it: a training checkpoint exported and imported back, the file
/// read by the Python `safetensors` package and loaded into the original PyTorch class, and the refusals.
final class ExportWeightsTests: XCTestCase {
    /// A checkpoint written by `attunet train` exports to a file that the `safetensors` package reads (every
    /// name, dtype, shape and value of the checkpoint's /state_dict, the metadata), and `import-weights` of
    /// it gives bit-identical weights and BN buffers.
    func testTrainingCheckpointRoundTripsThroughImportWeights() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let d = dir.path
        let bin = TestEnv.attunet
        for command in [
            "synth --cases 2 --resolution 0.5 --threads 2 --out \(d)/ph",
            "prepare --input \(d)/ph --out \(d)/store.h5 --spacing 4 --threads 2",
            "train --store \(d)/store.h5 --feature-scale 16 --patch 32x32x16 --batch 1 --epochs 1 --val-cases phantom_001 --out \(d)/run",
        ] {
            let r = try TestEnv.run("\(bin) \(command)", timeout: 600)
            XCTAssertEqual(r.status, 0, "\(command): \(r.stderr)")
        }
        let ckpt = "\(d)/run/checkpoint_latest.h5"
        let out = "\(d)/model.safetensors"
        let model = try Checkpoint.load(ckpt)
        let r = try TestEnv.run("\(bin) export-weights \(ckpt) --out \(out)")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stderr, "")
        let size = try FileManager.default.attributesOfItem(atPath: out)[.size] as! Int
        let lines = r.stdout.split(separator: "\n")
        XCTAssertEqual(
            lines.first.map(String.init),
            "export-weights: \(ckpt) -> \(out): attention-unet, 236 tensors, 406,446 parameters, \(grouped(size)) bytes"
        )
        XCTAssertTrue(
            r.stdout.contains("model = unet_CT_multi_att_dsv_3D(feature_scale=16, n_classes=4, in_channels=1)"),
            r.stdout)
        XCTAssertTrue(r.stdout.contains("model.load_state_dict(load_file('\(out)'), strict=True)"), r.stdout)
        XCTAssertEqual(TestEnv.hiddenFiles(dir), [], "no temporary file left")

        try TestEnv.python(
            """
            import json, struct, h5py, numpy as np
            from safetensors import safe_open
            with open(r'\(out)', 'rb') as f:
                n = struct.unpack('<Q', f.read(8))[0]
                header = json.loads(f.read(n))
            assert (8 + n) % 8 == 0, n
            with safe_open(r'\(out)', framework='numpy') as st, h5py.File(r'\(ckpt)', 'r') as h:
                meta = st.metadata()
                assert meta['format'] == 'pt', meta
                assert json.loads(meta['attunet_model_config']) == json.loads(h.attrs['model_config']), meta
                assert meta['attunet_weights_sha256'] == h.attrs['weights_sha256'], meta
                sd = h['state_dict']
                assert set(st.keys()) == set(sd) and len(sd) == 236, (len(st.keys()), len(sd))
                for k in sd:
                    a, b = st.get_tensor(k), np.array(sd[k][()])
                    counter = k.endswith('.num_batches_tracked')
                    assert header[k]['dtype'] == ('I64' if counter else 'F32'), (k, header[k])
                    assert a.dtype == (np.int64 if counter else np.float32) and a.dtype == b.dtype, (k, a.dtype, b.dtype)
                    assert a.shape == b.shape == tuple(header[k]['shape']), (k, a.shape, b.shape)
                    assert np.array_equal(a, b), k
                assert int(st.get_tensor('conv1.conv1.1.num_batches_tracked')) > 0
            """)

        let back = "\(d)/back.h5"
        let i = try TestEnv.run("\(bin) import-weights \(out) --out \(back)")
        XCTAssertEqual(i.status, 0, i.stderr)
        XCTAssertEqual(Checkpoint.weightsDigest(try Checkpoint.load(back)), Checkpoint.weightsDigest(model))
    }

    /// The exported file loads into the original class (the repository's re-statement of it) with
    /// `load_state_dict(strict=True)` and gives attunet's logits, for both models; the header's names are in
    /// the class's `state_dict()` order with its dtypes and shapes (Tests/Fixtures/check_checkpoint_in_torch.py
    /// --safetensors). Other input channels, classes and align_corners come from the file's metadata.
    func testExportLoadsIntoPyTorchWithTheSameLogits() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let script = TestEnv.root.appendingPathComponent("Tests/Fixtures/check_checkpoint_in_torch.py").path
        for config in [
            ModelConfig(kind: .attentionUNet, inChannels: 2, classes: 3, featureScale: 16),
            ModelConfig(kind: .unet, classes: 4, featureScale: 16, alignCorners: true),
        ] {
            let m = SegmentationModel(config, seed: 11)
            for e in m.buffers.entries {
                // num_batches_tracked is an integer counter (int64 on disk); the statistics are arbitrary floats.
                for i in 0..<e.count {
                    m.buffers.values.data[e.offset + i] =
                        e.name.hasSuffix("num_batches_tracked") ? 9 : 0.5 + Float(i % 7) * 0.1
                }
            }
            m.training = false
            let x = Tensor([1, config.inChannels, 16, 32, 48])
            for i in 0..<x.count { x.data[i] = sin(Float(i) * 0.37) }
            let logits = try m.forward(x)
            let name = config.kind.rawValue
            let ckpt = "\(dir.path)/\(name).h5"
            let out = "\(dir.path)/\(name).safetensors"
            let io = "\(dir.path)/io-\(name).safetensors"
            try Checkpoint.save(m, to: ckpt)
            try SafetensorsFile.write(
                [
                    SafetensorsTensor(name: "input", shape: x.shape, floats: x.array),
                    SafetensorsTensor(name: "logits", shape: logits.shape, floats: logits.array),
                ], to: io)
            let e = try TestEnv.run("\(TestEnv.attunet) export-weights \(ckpt) --out \(out)")
            XCTAssertEqual(e.status, 0, e.stderr)
            XCTAssertEqual(e.stdout.contains("align_corners=True"), config.alignCorners, e.stdout)
            let r = try TestEnv.run(
                "cd \(dir.path) && \(TestEnv.python) \(script) --safetensors \(out) \(io)", timeout: 600)
            XCTAssertEqual(
                r.status, 0, "\(name): PyTorch refused the file or its logits differ:\n\(r.stdout)\(r.stderr)")
            XCTAssertTrue(r.stdout.contains("max |torch - attunet|"), r.stdout)
        }
    }

    /// Refusals, each one line naming the file, with nothing written: an existing --out without --force, the
    /// input itself as --out, a checkpoint with a flipped bit (Fletcher-32), one with a value rewritten under
    /// a valid checksum (stored SHA-256), a safetensors file, a missing file.
    func testRefusesWithOneLineAndWritesNothing() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let d = dir.path
        let bin = TestEnv.attunet
        let ckpt = "\(d)/ckpt.h5"
        try Checkpoint.save(SegmentationModel(ModelConfig(kind: .unet, featureScale: 16), seed: 4), to: ckpt)
        try Data("keep".utf8).write(to: URL(fileURLWithPath: "\(d)/taken.safetensors"))

        var r = try TestEnv.run("\(bin) export-weights \(ckpt) --out \(d)/taken.safetensors")
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr, "error: \(d)/taken.safetensors exists; pass --force to overwrite it\n")
        XCTAssertEqual(try String(contentsOfFile: "\(d)/taken.safetensors", encoding: .utf8), "keep")
        r = try TestEnv.run("\(bin) export-weights \(ckpt) --out \(d)/taken.safetensors --force")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(
            r.stdout.hasPrefix(
                "export-weights: \(ckpt) -> \(d)/taken.safetensors: unet, 136 tensors, 369,168 parameters"), r.stdout)
        XCTAssertNoThrow(try SafetensorsFile("\(d)/taken.safetensors"))
        r = try TestEnv.run("\(bin) export-weights \(ckpt) --out \(ckpt) --force")
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr, "error: \(ckpt): is the input checkpoint itself; choose another --out\n")
        XCTAssertNoThrow(try Checkpoint.load(ckpt))

        r = try TestEnv.run("\(bin) export-weights \(d)/taken.safetensors --out \(d)/a.safetensors")
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(
            r.stderr,
            "error: \(d)/taken.safetensors: not an attunet checkpoint (not an HDF5 file) (a safetensors file: attunet import-weights converts it into one)\n"
        )
        r = try TestEnv.run("\(bin) export-weights \(d)/none.h5 --out \(d)/a.safetensors")
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr, "error: \(d)/none.h5: no such file\n")

        let rewritten = "\(d)/rewritten.h5"
        try FileManager.default.copyItem(atPath: ckpt, toPath: rewritten)
        try TestEnv.rewriteValue(in: rewritten, dataset: "state_dict/up_concat1.conv.conv2.0.weight")
        r = try TestEnv.run("\(bin) export-weights \(rewritten) --out \(d)/a.safetensors")
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertTrue(
            r.stderr.hasPrefix("error: \(rewritten): SHA-256 mismatch in the weights and BN buffers"), r.stderr)

        try TestEnv.flipByte(in: ckpt, dataset: "state_dict/final.weight", at: 2)
        r = try TestEnv.run("\(bin) export-weights \(ckpt) --out \(d)/a.safetensors")
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr, "error: \(ckpt): checksum mismatch in /state_dict/final.weight\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(d)/a.safetensors"))
        XCTAssertEqual(TestEnv.hiddenFiles(dir), [], "no temporary file left")
    }

    /// `--help` shows how to load the file in PyTorch and the exit statuses.
    func testHelp() throws {
        let r = try TestEnv.run("\(TestEnv.attunet) export-weights --help")
        XCTAssertEqual(r.status, 0, r.stderr)
        for text in [
            "USAGE: attunet export-weights <checkpoint> --out <out> [--force]",
            "load_state_dict(load_file('model.safetensors'), strict=True)",
            "Exit status:", "  64  bad command line",
        ] {
            XCTAssertTrue(r.stdout.contains(text), "\(text) missing from:\n\(r.stdout)")
        }
        let top = try TestEnv.run("\(TestEnv.attunet) --help")
        XCTAssertTrue(top.stdout.contains("export-weights"), top.stdout)
    }
}
