import DataPipeline
import TestSupport
import XCTest

/// The qform and sform a written volume carries, and their codes, read back with nibabel and by NIfTIVolume.
final class NIfTIXformCodeTests: XCTestCase {
    /// Both matrices carry the affine whatever the codes (a qform code of 0 included, where nifticlib's own
    /// writer would drop the quaternion); the codes are written as given and read back; an affine with shear
    /// gets qform code 0 and an exact sform.
    func testBothMatricesCarryTheAffineWithTheGivenCodes() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let c = cos(0.4)
        let s = sin(0.4)
        let oblique: [Double] = [0.9 * c, -0.8 * s, 0, -120.5, 0.9 * s, 0.8 * c, 0, 33.25, 0, 0, -2.5, 400, 0, 0, 0, 1]
        let shear: [Double] = [1, 0.3, 0, 1, 0, 1, 0, 2, 0, 0, 2, 3, 0, 0, 0, 1]
        let voxels = (0..<60).map { Float($0 % 4) }
        for (name, affine, q, sf) in [
            ("q0s2", oblique, Int32(0), Int32(2)), ("q1s1", oblique, 1, 1),
            ("q2s4", oblique, 2, 4), ("shear", shear, 1, 1),
        ] {
            var v = NIfTIVolume(nx: 5, ny: 4, nz: 3, affine: affine, voxels: voxels)
            v.qformCode = q
            v.sformCode = sf
            try v.write("\(dir.path)/\(name).nii.gz", as: .uint8)
            let back = try NIfTIVolume.read("\(dir.path)/\(name).nii.gz")
            let header = try NIfTIVolume.readGeometry("\(dir.path)/\(name).nii.gz")
            XCTAssertEqual([back.qformCode, back.sformCode], name == "shear" ? [0, 1] : [q, sf], name)
            XCTAssertEqual(header.qformCode, back.qformCode)
            XCTAssertEqual(header.sformCode, back.sformCode)
            XCTAssertEqual([header.nx, header.ny, header.nz], [5, 4, 3])
            for (a, b) in zip(back.affine, affine) { XCTAssertEqual(a, b, accuracy: 1e-5, name) }
            XCTAssertEqual(back.voxels, voxels)
        }
        XCTAssertThrowsError(
            try NIfTIVolume(nx: 5, ny: 4, nz: 3, affine: oblique, voxels: voxels).write("\(dir.path)/x.hdr")
        ) {
            XCTAssertTrue("\($0)".contains("x.hdr: not a valid NIfTI file name"), "\($0)")
        }
        try TestEnv.python(
            """
            import numpy as np, nibabel as nib
            d = r'\(dir.path)'
            A = np.array(\(oblique)).reshape(4, 4); S = np.array(\(shear)).reshape(4, 4)
            for name, codes in (('q0s2', (0, 2)), ('q1s1', (1, 1)), ('q2s4', (2, 4))):
                im = nib.load(f'{d}/{name}.nii.gz')
                assert (int(im.header['qform_code']), int(im.header['sform_code'])) == codes, name
                assert np.allclose(im.get_qform(), A, atol=1e-5), (name, im.get_qform())
                assert np.allclose(im.get_sform(), A, atol=1e-5), (name, im.get_sform())
                assert np.allclose(im.affine, A, atol=1e-5), name
                assert np.array_equal(np.asanyarray(im.dataobj), (np.arange(60) % 4).reshape(3, 4, 5).T), name
            im = nib.load(f'{d}/shear.nii.gz')
            assert (int(im.header['qform_code']), int(im.header['sform_code'])) == (0, 1)
            assert np.allclose(im.get_sform(), S, atol=1e-6) and np.allclose(im.affine, S, atol=1e-6)
            """)
    }
}
