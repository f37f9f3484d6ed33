import DataPipeline
import TestSupport
import XCTest

final class NIfTITests: XCTestCase {
    /// Files written by nibabel (oblique affine; int16 .nii.gz and float32 .nii) read with the right voxels,
    /// voxel order (x fastest), affine and spacing.
    func testReadsNibabelFiles() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        try TestEnv.python(
            """
            import nibabel as nib, numpy as np
            th = np.deg2rad(20)
            R = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
            A = np.eye(4); A[:3, :3] = R @ np.diag([0.8, 0.7, 2.5]); A[:3, 3] = [-100, 50, 30]
            i16 = (np.arange(7*6*5).reshape(7, 6, 5) - 100).astype(np.int16)  # indexed [x, y, z]
            nib.save(nib.Nifti1Image(i16, A), r'\(dir.path)/a.nii.gz')
            f32 = (np.arange(4*3*2).reshape(4, 3, 2) * 0.25).astype(np.float32)
            nib.save(nib.Nifti1Image(f32, np.diag([1.5, 1.5, 3.0, 1.0])), r'\(dir.path)/b.nii')
            """)
        let a = try NIfTIVolume.read(dir.path + "/a.nii.gz")
        XCTAssertEqual([a.nx, a.ny, a.nz], [7, 6, 5])
        XCTAssertEqual(a.datatype, 4)
        // value at (x, y, z) = x*30 + y*5 + z - 100, stored x fastest.
        for (x, y, z) in [(0, 0, 0), (6, 5, 4), (3, 2, 1), (1, 4, 3)] {
            XCTAssertEqual(a.voxels[(z * 6 + y) * 7 + x], Float(x * 30 + y * 5 + z - 100))
        }
        XCTAssertEqual(a.spacing.x, 0.8, accuracy: 1e-5)
        XCTAssertEqual(a.spacing.y, 0.7, accuracy: 1e-5)
        XCTAssertEqual(a.spacing.z, 2.5, accuracy: 1e-5)
        XCTAssertEqual(a.affine[3], -100, accuracy: 1e-4)
        XCTAssertEqual(a.affine[1], -sin(20 * Double.pi / 180) * 0.7, accuracy: 1e-5)
        let b = try NIfTIVolume.read(dir.path + "/b.nii")
        XCTAssertEqual([b.nx, b.ny, b.nz], [4, 3, 2])
        XCTAssertEqual(b.voxels[(1 * 3 + 2) * 4 + 3], Float(3 * 6 + 2 * 2 + 1) * 0.25)
        XCTAssertEqual(b.spacing.z, 3.0, accuracy: 1e-6)
    }

    /// A volume written here reads back in nibabel with the same voxels and affine.
    func testWrittenVolumeReadsInNibabel() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let aff: [Double] = [0, -0.9, 0, 10, 0.8, 0, 0, -20, 0, 0, 2.0, 5, 0, 0, 0, 1]
        let v = NIfTIVolume(nx: 5, ny: 4, nz: 3, affine: aff, voxels: (0..<60).map { Float($0 * 3 - 50) })
        try v.write(dir.path + "/c.nii.gz", as: .int16)
        try TestEnv.python(
            """
            import nibabel as nib, numpy as np
            im = nib.load(r'\(dir.path)/c.nii.gz')
            d = np.asanyarray(im.dataobj)
            assert d.dtype == np.int16 and d.shape == (5, 4, 3), (d.dtype, d.shape)
            want = (np.arange(60) * 3 - 50).reshape(3, 4, 5).transpose(2, 1, 0)
            assert np.array_equal(d, want)
            assert np.allclose(im.affine, np.array(\(aff)).reshape(4, 4), atol=1e-5), im.affine
            """)
    }

    /// Truncated and non-NIfTI files give one error line naming the file.
    func testBadFilesGiveClearErrors() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        XCTAssertThrowsError(try NIfTIVolume.read(dir.path + "/missing.nii")) {
            XCTAssertTrue("\($0)".contains("missing.nii: no such file"))
        }
        let v = NIfTIVolume(
            nx: 8, ny: 8, nz: 8, affine: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
            voxels: [Float](repeating: 1, count: 512))
        try v.write(dir.path + "/full.nii")
        let bytes = try Data(contentsOf: URL(fileURLWithPath: dir.path + "/full.nii"))
        try bytes.prefix(1000).write(to: URL(fileURLWithPath: dir.path + "/cut.nii"))
        XCTAssertThrowsError(try NIfTIVolume.read(dir.path + "/cut.nii")) {
            XCTAssertTrue("\($0)".contains("cut.nii"), "\($0)")
        }
        try Data(repeating: 0x41, count: 2000).write(to: URL(fileURLWithPath: dir.path + "/junk.nii"))
        XCTAssertThrowsError(try NIfTIVolume.read(dir.path + "/junk.nii")) {
            XCTAssertTrue("\($0)".contains("junk.nii"), "\($0)")
        }
    }
}
