import DataPipeline
import Foundation
import Inference
import NN
import Tensor
import TestSupport
import XCTest

/// A NIfTI image prepared in memory is what `attunet prepare` stores and training normalises: the same voxels,
/// pad value and geometry as the store case made from it, on the oblique and LPS sources of ``ExportTests``.
final class SourceInputTests: XCTestCase {
    /// The sources are ExportTests' (made again by whichever suite runs first): removed after this suite too.
    override class func tearDown() {
        if let dir = ExportTests.dir { try? FileManager.default.removeItem(at: dir) }
        ExportTests.dir = nil
        super.tearDown()
    }

    func testSourceInputEqualsItsStoreCase() throws {
        let d = try ExportTests.prepared()
        let store = try CaseStore(path: "\(d.path)/store.h5")
        for (c, info) in store.cases.enumerated() {
            let path = "\(d.path)/img/\(info.id).nii.gz"
            let input = try SourceInput(path: path, id: info.id, spacing: 2, blurSigma: 0.5)
            let (image, pad) = try store.normalizedImage(c, normalization: .zscore)
            let stored = try SourceGeometry(store: store, case: c)
            XCTAssertEqual(input.geometry.storedShape, info.shape, info.id)
            XCTAssertEqual(input.image, image, "\(info.id): the normalised voxels differ from the store's")
            XCTAssertEqual(input.padValue, pad, info.id)
            XCTAssertEqual(input.geometry.sourceShape, stored.sourceShape, info.id)
            XCTAssertEqual(input.geometry.grid, stored.grid, info.id)
            for i in 0..<16 {
                XCTAssertEqual(
                    input.geometry.storedAffine[i], stored.storedAffine[i], accuracy: 1e-5, "\(info.id) affine \(i)")
                XCTAssertEqual(
                    input.geometry.sourceAffine[i], stored.sourceAffine[i], accuracy: 1e-5,
                    "\(info.id) source affine \(i)")
            }
            let h = try NIfTIVolume.readGeometry(path)
            XCTAssertEqual(input.codes, XformCodes(qform: h.qformCode, sform: h.sformCode), info.id)
        }
    }

    /// `attunet predict` on those sources (nibabel's oblique one has qform code 0 and sform code 2) writes labels
    /// whose shape, qform and sform, matrices and codes, are the source's.
    func testPredictKeepsTheSourcesQformAndSform() throws {
        let d = try ExportTests.prepared()
        let tmp = try TestEnv.tempDir()
        let out = tmp.path + "/pred"
        defer { try? FileManager.default.removeItem(at: tmp) }
        let ckpt = "\(d.path)/untrained.h5"
        try Checkpoint.save(SegmentationModel(ModelConfig(classes: 4, featureScale: 16)), to: ckpt)
        let r = try TestEnv.run(
            "\(TestEnv.attunet) predict --input \(d.path)/img --checkpoint \(ckpt) --patch 32x32x16 --spacing 2 --blur-sigma 0.5 --out \(out)"
        )
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        try TestEnv.python(
            """
            import nibabel as nib, numpy as np
            for c in ['oblique', 'lps']:
                a = nib.load(r'\(d.path)/img/' + c + '.nii.gz'); b = nib.load(r'\(out)/' + c + '.nii.gz')
                assert a.shape == b.shape
                for get in ('get_qform', 'get_sform'):
                    (ma, ca), (mb, cb) = getattr(a, get)(coded=True), getattr(b, get)(coded=True)
                    assert ca == cb, (c, get, ca, cb)
                    assert np.allclose(getattr(a, get)(), getattr(b, get)(), atol=1e-4), (c, get)
                assert np.allclose(a.affine, b.affine, atol=1e-4), c
            """)
    }
}
