import Foundation
import TestSupport
import XCTest

/// A user's whole path on an nnU-Net raw dataset, with no renaming and no extra flags: `prepare` →
/// `cv` (tiny) → `predict --cv-dir RUN --input imagesTs` → `evaluate --ref labelsTs`; then a checkpoint copied to
/// another folder, its training store out of reach, predicts the same labels as in place.
final class EndToEndTests: XCTestCase {
    func testNNUNetRawDatasetThroughPrepareCVPredictEvaluate() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let d = dir.path
        let raw = "\(d)/Dataset501_Phantom"
        // Six phantoms laid out as nnU-Net v2 raw data: images with the _0000 channel suffix, labels without, a
        // v2 dataset.json (channel_names, labels by name); four for training, two for testing.
        let s = try TestEnv.run("\(TestEnv.attunet) synth --cases 6 --resolution 0.5 --threads 2 --out \(d)/ph")
        XCTAssertEqual(s.status, 0, s.stderr)
        try TestEnv.python(
            """
            import json, os, shutil
            src, raw = r'\(d)/ph', r'\(raw)'
            for sub in ['imagesTr', 'labelsTr', 'imagesTs', 'labelsTs']:
                os.makedirs(os.path.join(raw, sub))
            for i in range(6):
                case = f'phantom_{i:03d}'
                split = 'Tr' if i < 4 else 'Ts'
                shutil.copy(f'{src}/imagesTr/{case}.nii.gz', f'{raw}/images{split}/{case}_0000.nii.gz')
                shutil.copy(f'{src}/labelsTr/{case}.nii.gz', f'{raw}/labels{split}/{case}.nii.gz')
            json.dump({'channel_names': {'0': 'CT'}, 'labels': {'background': 0, 'spleen': 1, 'pancreas': 2, 'kidney': 3},
                       'numTraining': 4, 'file_ending': '.nii.gz'}, open(f'{raw}/dataset.json', 'w'))
            """)
        let store = "\(d)/store.h5"
        let run = "\(d)/run"
        let p = try TestEnv.run("\(TestEnv.attunet) prepare --input \(raw) --out \(store) --spacing 4 --threads 2")
        XCTAssertEqual(p.status, 0, p.stderr)
        let cv = try TestEnv.run(
            "\(TestEnv.attunet) cv --store \(store) --folds 2 --models attention-unet --feature-scale 16 --patch 32x32x16 --batch 2 --epochs 1 --seed 3 --out \(run)"
        )
        XCTAssertEqual(cv.status, 0, cv.stderr)

        // The folds' ensemble on the test images: files named by case id, so evaluate pairs them as they are.
        let pred = "\(d)/pred"
        let pr = try TestEnv.run("\(TestEnv.attunet) predict --cv-dir \(run) --input \(raw)/imagesTs --out \(pred)")
        XCTAssertEqual(pr.status, 0, pr.stderr)
        XCTAssertTrue(pr.stdout.contains("attention-unet folds 0,1 of \(run)"), pr.stdout)
        for c in ["phantom_004", "phantom_005"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(pred)/\(c).nii.gz"), "\(pred)/\(c).nii.gz")
        }
        let ev = try TestEnv.run("\(TestEnv.attunet) evaluate --pred \(pred) --ref \(raw)/labelsTs")
        XCTAssertEqual(ev.status, 0, ev.stderr)
        XCTAssertTrue(ev.stdout.contains("2 case(s)"), ev.stdout)
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(pred)/evaluation/summary.json"))

        // One fold's checkpoint copied elsewhere, with the store moved away, gives the labels it gives in place.
        let inPlace = try TestEnv.run(
            "\(TestEnv.attunet) predict --cv-dir \(run) --folds 1 --input \(raw)/imagesTs --out \(d)/fold1")
        XCTAssertEqual(inPlace.status, 0, inPlace.stderr)
        try FileManager.default.createDirectory(atPath: "\(d)/elsewhere", withIntermediateDirectories: true)
        try FileManager.default.copyItem(
            atPath: "\(run)/fold_1/attention-unet/checkpoint_best.h5", toPath: "\(d)/elsewhere/model.h5")
        try FileManager.default.moveItem(atPath: store, toPath: "\(d)/store-moved.h5")
        let copied = try TestEnv.run(
            "\(TestEnv.attunet) predict --checkpoint \(d)/elsewhere/model.h5 --input \(raw)/imagesTs --out \(d)/copied")
        XCTAssertEqual(copied.status, 0, copied.stderr)
        XCTAssertTrue(
            copied.stdout.contains("resampled to 4 mm") && copied.stdout.contains("(checkpoint)"), copied.stdout)
        try TestEnv.python(
            """
            import nibabel as nib, numpy as np
            for c in ['phantom_004', 'phantom_005']:
                a = nib.load(r'\(d)/fold1/' + c + '.nii.gz'); b = nib.load(r'\(d)/copied/' + c + '.nii.gz')
                src = nib.load(r'\(raw)/imagesTs/' + c + '_0000.nii.gz')
                assert a.shape == src.shape and np.allclose(a.affine, src.affine, atol=1e-4), c
                assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), c
            """)

        // A second input channel is refused by prepare and predict, naming the file.
        try FileManager.default.copyItem(
            atPath: "\(raw)/imagesTs/phantom_004_0000.nii.gz", toPath: "\(raw)/imagesTs/phantom_004_0001.nii.gz")
        let two = try TestEnv.run("\(TestEnv.attunet) predict --cv-dir \(run) --input \(raw)/imagesTs --out \(d)/two")
        XCTAssertEqual(two.status, 1)
        XCTAssertTrue(
            two.stderr.hasPrefix("error: \(raw)/imagesTs/phantom_004_0001.nii.gz: input channel 1"), two.stderr)
        try FileManager.default.copyItem(
            atPath: "\(raw)/imagesTr/phantom_000_0000.nii.gz", toPath: "\(raw)/imagesTr/phantom_000_0001.nii.gz")
        let prep2 = try TestEnv.run("\(TestEnv.attunet) prepare --input \(raw) --out \(d)/store2.h5 --spacing 4")
        XCTAssertEqual(prep2.status, 1)
        XCTAssertTrue(prep2.stderr.contains("\(raw)/imagesTr/phantom_000_0001.nii.gz: input channel 1"), prep2.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(d)/store2.h5"))
    }
}
