import Foundation
import Tensor
import TestSupport
import XCTest

@testable import DataPipeline

/// Resampling with oblique affines and anisotropic voxels (0.7 x 1.3 x 2.5 mm) and an image that is not symmetric in
/// x and y, so that a swap of x and y anywhere (spacing, scale, blur sigma, affine columns) shows. Expected values
/// come from nibabel (the source geometry) and scipy.ndimage (the resampled voxels), not from Swift's grid.
final class ObliqueResampleTests: XCTestCase {
    func testObliqueAnisotropicCasesResampleOntoTheSameWorldPoints() throws {
        let d = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: d) }
        // Two cases: rotated 20° about z (mixes x and y) and -25° about y (mixes x and z), with an offset.
        try TestEnv.python(
            """
            import numpy as np, nibabel as nib, os
            from scipy.spatial.transform import Rotation
            d = '\(d.path)/'; os.makedirs(d + 'img'); os.makedirs(d + 'lab')
            sp = np.array([0.7, 1.3, 2.5]); n = (31, 17, 7)
            i, j, k = np.indices(n).astype(np.float64)
            img = 3.0 * i - 5.0 * j + 2.0 * k + 40 * np.sin(0.7 * i + 0.2 * k) * np.cos(0.45 * j) + 0.37
            lab = np.zeros(n, np.uint8)
            lab[((i - 8) / 5) ** 2 + ((j - 11) / 3) ** 2 + ((k - 2) / 2) ** 2 < 1] = 1
            lab[((i - 24) / 3) ** 2 + ((j - 4) / 2.5) ** 2 + ((k - 5) / 1.5) ** 2 < 1] = 2
            for name, axis, deg in (('rz', 'z', 20), ('ry', 'y', -25)):
                A = np.eye(4); A[:3, :3] = Rotation.from_euler(axis, deg, degrees=True).as_matrix() @ np.diag(sp)
                A[:3, 3] = [-40.25, 17.5, 102.0]
                for arr, path in ((img.astype(np.float32), 'img/%s.nii.gz' % name), (lab, 'lab/%s.nii' % name)):
                    x = nib.Nifti1Image(arr, A); x.set_sform(A, code=1); x.set_qform(A, code=1)
                    nib.save(x, d + path)
            """)
        let input = try DatasetInput.folders(images: d.path + "/img", labels: d.path + "/lab")
        var o = PrepareOptions()
        o.spacing = 1.5
        o.blurSigma = 0
        o.threads = 1
        _ = try CasePreparer.run(input: input, out: d.path + "/inproc.h5", options: o, skipBad: false)
        o.blurSigma = 0.8
        _ = try CasePreparer.run(input: input, out: d.path + "/blur.h5", options: o, skipBad: false)
        let r = try TestEnv.run(
            "\(TestEnv.attunet) prepare --image-dir \(d.path)/img --label-dir \(d.path)/lab --out \(d.path)/cli.h5 --spacing 1.5 --blur-sigma 0"
        )
        XCTAssertEqual(r.status, 0, r.stderr)
        try TestEnv.python(
            """
            import h5py, numpy as np, nibabel as nib
            from scipy import ndimage
            d = '\(d.path)/'; T = 1.5
            for store, sigma in (('inproc.h5', 0.0), ('cli.h5', 0.0), ('blur.h5', 0.8)):
                with h5py.File(d + store, 'r') as f:
                    assert abs(np.ravel(f.attrs['blur_sigma_mm'])[0] - sigma) < 1e-12, (store, f.attrs['blur_sigma_mm'])
                    assert sorted(f['cases']) == ['ry', 'rz'], sorted(f['cases'])
                    for case in ('rz', 'ry'):
                        what = (store, case)
                        g = f['cases/' + case]
                        src = nib.load(d + 'img/%s.nii.gz' % case)
                        a = np.asarray(src.dataobj, dtype=np.float64); A = src.affine
                        lab = np.asarray(nib.load(d + 'lab/%s.nii' % case).dataobj)
                        n = np.array(a.shape)
                        sp = np.sqrt((A[:3, :3] ** 2).sum(0))                       # x, y, z
                        assert np.allclose(sp, [0.7, 1.3, 2.5], atol=1e-5), sp
                        # Shape: round(n * s / T) per axis (no .5 ties here, so any rounding rule agrees).
                        m = n * sp / T
                        assert (np.abs(m - np.floor(m) - 0.5) > 0.01).all(), m
                        shape = np.maximum(1, np.floor(m + 0.5)).astype(int)       # x, y, z
                        assert g['image'].shape == tuple(shape[::-1]), (what, g['image'].shape, shape)
                        assert g['label'].shape == tuple(shape[::-1]), (what, g['label'].shape, shape)
                        assert g['image'].dtype == np.float32 and g['label'].dtype == np.uint8, what
                        assert np.allclose(g.attrs['spacing_mm'], [T, T, T]), what
                        assert list(g.attrs['original_shape']) == list(n), (what, g.attrs['original_shape'])
                        assert np.allclose(g.attrs['original_spacing_mm'], sp, atol=1e-6), what
                        assert np.allclose(np.asarray(g.attrs['original_affine']).reshape(4, 4), A, atol=1e-5), what
                        # Stored voxel x' reads source index scale * x' + (scale - 1) / 2 per axis (voxel corners of the
                        # two grids align), scale = T / s.
                        sc = T / sp; off = (sc - 1) / 2
                        S = np.eye(4); S[:3, :3] = np.diag(sc); S[:3, 3] = off
                        B = np.asarray(g.attrs['affine'], dtype=np.float64).reshape(4, 4)
                        assert np.abs(B - A @ S).max() < 1e-4, (what, 'affine', B, A @ S)
                        idx = np.indices(tuple(shape)).reshape(3, -1).astype(np.float64)    # stored (x, y, z)
                        sidx = sc[:, None] * idx + off[:, None]                             # source (i, j, k)
                        wB = B[:3, :3] @ idx + B[:3, 3:]; wA = A[:3, :3] @ sidx + A[:3, 3:]
                        assert np.abs(wB - wA).max() < 1e-3, (what, 'world points differ by', np.abs(wB - wA).max())
                        # Voxels: scipy's trilinear (edges clamped) of the optionally blurred source.
                        base = ndimage.gaussian_filter(a, sigma / sp, mode='reflect', truncate=4.0) if sigma else a
                        ref = ndimage.map_coordinates(base, sidx, order=1, mode='nearest').reshape(shape).transpose(2, 1, 0)
                        got = g['image'][...].astype(np.float64)
                        err = np.abs(ref - got).max()
                        assert err < 2e-4, (what, 'image max error', err, 'of range', np.ptp(ref))
                        lref = ndimage.map_coordinates(lab, sidx, order=0, mode='nearest').reshape(shape).transpose(2, 1, 0)
                        tie = (np.abs(sidx - np.floor(sidx) - 0.5) < 1e-6).any(0).reshape(shape).transpose(2, 1, 0)
                        bad = (lref != g['label'][...]) & ~tie
                        assert bad.sum() == 0, (what, 'label voxels differing from nearest', int(bad.sum()), 'ties', int(tie.sum()))
                        assert tie.sum() == 0, (what, 'unexpected ties', int(tie.sum()))
                        assert (lref == 1).sum() > 20 and (lref == 2).sum() > 5, (what, 'blobs lost')
            """)
    }
}
