import DataPipeline
import Foundation
import Tensor
import TestSupport
import XCTest

/// The README's DICOM walk-through as a user runs it: a CT series written with pydicom, converted by dcm2niix,
/// labelled on the converted grid, prepared with `attunet prepare`; the case store's geometry and intensities
/// are checked against the series' own DICOM tags, not against dcm2niix's or attunet's view of them.
final class DICOMTests: XCTestCase {
    // The series: 24 columns x 20 rows x 12 slices, axial (no obliquity), PixelSpacing 0.8 mm between rows
    // and 0.7 mm between columns, slices 2.5 mm apart but 3.0 mm thick (overlapping, as CT often is: the
    // spacing must come from the positions, not from SliceThickness). Instance 1 is the top (superior) slice
    // and the files are named in reverse, so nothing is right by file order. Stored values are uint16 with
    // RescaleSlope 2 and RescaleIntercept -1024: a slope other than 1 so that a reader ignoring scl_slope is
    // caught. HU: air -1000, a body whose HU is a ramp over row, column and slice (any flip or transposition
    // moves it), and a 300 HU "organ" block.
    static let writeSeries = """
        import os, sys
        import numpy as np, pydicom
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
        out = sys.argv[1]
        os.makedirs(out)
        rows, cols, n = 20, 24, 12
        slope, inter = 2.0, -1024.0
        study, series, frame = generate_uid(), generate_uid(), generate_uid()
        rr, cc = np.mgrid[0:rows, 0:cols]
        for s in range(n):
            hu = np.full((rows, cols), -1000.0)
            body = (rr >= 2) & (rr < 18) & (cc >= 3) & (cc < 21)
            hu[body] = (-100 + 4 * rr + 2 * cc + 10 * s)[body]
            hu[5:12, 8:15] = 300
            raw = ((hu - inter) / slope).astype(np.uint16)
            assert np.array_equal(raw * slope + inter, hu)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.Modality = 'CT'
            ds.PatientName = 'Phantom'
            ds.PatientID = 'attunet'
            ds.ProtocolName = 'abdomen'
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
            ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = 2, s + 1, 1
            ds.ImageType = ['ORIGINAL', 'PRIMARY', 'AXIAL']
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [-120.5, -95.25, -282.5 - 2.5 * s]
            ds.SliceThickness = 3.0
            ds.PixelSpacing = [0.8, 0.7]
            ds.Rows, ds.Columns = rows, cols
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = 'MONOCHROME2'
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, inter, 'HU'
            ds.PixelData = raw.tobytes()
            pydicom.dcmwrite(os.path.join(out, '%03d.dcm' % (n - s)), ds, enforce_file_format=True)
        """

    /// The label, as an annotator would make it: on the converted image's grid and affine, 1 on the organ.
    static let writeLabel = """
        import sys
        import nibabel as nib, numpy as np
        img = nib.load(sys.argv[1])
        lab = nib.Nifti1Image((img.get_fdata() >= 200).astype(np.uint8), img.affine)
        lab.set_qform(img.affine, code=1)
        lab.set_sform(img.affine, code=1)
        nib.save(lab, sys.argv[2])
        """

    /// Reads the DICOM files again with pydicom and checks the NIfTI file and the case store against them.
    static let check = """
        import glob, sys
        import h5py, nibabel as nib, numpy as np
        import pydicom
        from scipy.ndimage import map_coordinates
        dicom, nifti, store, case = sys.argv[1:5]
        sl = [pydicom.dcmread(p) for p in glob.glob(dicom + '/*.dcm')]
        iop = np.array(sl[0].ImageOrientationPatient, float)
        rdir, cdir = iop[:3], iop[3:]              # LPS directions of a row (along columns) and of a column
        normal = np.cross(rdir, cdir)
        first = min(sl, key=lambda d: int(d.InstanceNumber))
        sl.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))
        ipp = np.array([d.ImagePositionPatient for d in sl], float)
        dr, dc = (float(v) for v in sl[0].PixelSpacing)   # between rows, between columns
        rows, cols, n = int(sl[0].Rows), int(sl[0].Columns), len(sl)
        dz = np.diff(ipp @ normal)
        # The slice distance from the positions (SliceThickness is 3.0: it must not be used).
        assert np.allclose(dz, dz[0], atol=1e-6), dz
        dz = float(dz[0])
        hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in sl])

        with h5py.File(store, 'r') as f:
            g = f['cases/' + case]
            A = g.attrs['original_affine'].reshape(4, 4)
            shape = [int(v) for v in g.attrs['original_shape']]
            spacing = g.attrs['original_spacing_mm']
            B = g.attrs['affine'].reshape(4, 4)
            target = g.attrs['spacing_mm']
            image = g['image'][...].astype(float)
            label = g['label'][...]

        # NIfTI's voxel i runs along DICOM columns, j along rows, k across slices.
        assert shape == [cols, rows, n], (shape, cols, rows, n)
        # 1e-4 mm: the header stores float32 (0.8 reads back as 0.80000001); rows and columns swapped would be
        # 0.1 mm off, the slice thickness for the distance 0.5 mm.
        assert np.allclose(spacing, [dc, dr, dz], rtol=0, atol=1e-4), (list(spacing), [dc, dr, dz])

        # Every DICOM pixel centre (LPS, mm), mapped through the inverse of original_affine after LPS -> RAS
        # (x and y negated), must land on a voxel centre of the original grid, each voxel once. 0.01 voxel:
        # float32 rounding of coordinates of a few hundred mm is 1e-4 voxel; a corner-for-centre convention is
        # half a voxel off, a flip or an LPS/RAS sign error many voxels.
        s, r, c = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing='ij')
        lps = ipp[s] + (c * dc)[..., None] * rdir + (r * dr)[..., None] * cdir
        ras = lps * np.array([-1.0, -1.0, 1.0])
        ijk = (np.linalg.inv(A) @ np.concatenate([ras, np.ones(ras.shape[:-1] + (1,))], axis=-1)[..., None])[..., :3, 0]
        near = np.rint(ijk)
        assert np.abs(ijk - near).max() < 0.01, np.abs(ijk - near).max()
        near = near.astype(int)
        assert (near >= 0).all() and (near < np.array(shape)).all(), (near.min(), near.max())
        assert len({tuple(v) for v in near.reshape(-1, 3)}) == near[..., 0].size, 'two DICOM pixels share a voxel'

        # The first slice (InstanceNumber 1), pixel (row 0, column 0) is at its ImagePositionPatient: the voxel
        # holding it maps there, in RAS. 0.01 mm, as above (dcm2niix stores rows bottom-up and slices
        # inferior-first, so this is not voxel 0).
        k0 = [d.SOPInstanceUID for d in sl].index(first.SOPInstanceUID)
        v0 = near[k0, 0, 0]
        want = np.array(first.ImagePositionPatient, float) * np.array([-1.0, -1.0, 1.0])
        got = (A @ np.append(v0, 1.0))[:3]
        assert np.abs(got - want).max() < 0.01, (v0, got, want)

        # The source grid's HU in the store's [z][y][x] order, put there by the DICOM geometry alone.
        src = np.empty((shape[2], shape[1], shape[0]))
        src[near[..., 2], near[..., 1], near[..., 0]] = hu
        # dcm2niix's file holds exactly these values after its scl_slope and scl_inter (integers times an
        # exact slope: no tolerance).
        nii = np.asarray(nib.load(nifti).get_fdata()).transpose(2, 1, 0)
        assert np.array_equal(nii, src), np.abs(nii - src).max()

        # The store: at the target spacing, each stored voxel samples the source at (s'/s) i' + (s'/s - 1)/2
        # per axis (CaseStoreFormat), trilinearly with clamped edges, no blur here. 0.5 HU + 1e-3: the int16
        # rounding of an interpolated value plus float32 arithmetic; a lost intercept is 1024 HU off, a lost
        # slope hundreds, a flipped axis or a half-voxel shift tens to hundreds on the ramp and the block.
        ratio = np.asarray(target, float) / spacing
        grids = [ratio[a] * np.arange(image.shape[2 - a]) + (ratio[a] - 1) / 2 for a in range(3)]
        zz, yy, xx = np.meshgrid(grids[2], grids[1], grids[0], indexing='ij')
        want_image = map_coordinates(src, [zz, yy, xx], order=1, mode='nearest')
        err = np.abs(image - want_image)
        assert err.max() <= 0.5 + 1e-3, (err.max(), np.unravel_index(err.argmax(), err.shape))
        assert image.min() == -1000 and image.max() == 300, (image.min(), image.max())
        # The stored grid's affine maps a stored voxel where original_affine maps the source point it sampled.
        # 0.01 mm, as above.
        idx = np.array([[0, 0, 0], [image.shape[2] - 1, image.shape[1] - 1, image.shape[0] - 1], [3, 5, 7]], float)
        src_idx = ratio * idx + (ratio - 1) / 2
        for a, b in zip(idx, src_idx):
            assert np.abs((B @ np.append(a, 1.0))[:3] - (A @ np.append(b, 1.0))[:3]).max() < 0.01, (a, B, A)
        assert label.max() == 1 and label.shape == image.shape
        """

    func testDICOMSeriesThroughDcm2niixAndPrepareKeepsGeometryAndHU() throws {
        guard try TestEnv.run("command -v dcm2niix").status == 0 else {
            throw XCTSkip("dcm2niix is not installed (apt-get install dcm2niix; launch/setup.sh installs it)")
        }
        guard try TestEnv.run("\(TestEnv.python) -c 'import pydicom'").status == 0 else {
            throw XCTSkip("pydicom is missing from \(TestEnv.python) (pip install -r launch/requirements-test.txt)")
        }
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let dicom = dir.path + "/dicom"
        let ds = dir.path + "/pancreas"
        try FileManager.default.createDirectory(atPath: ds + "/imagesTr", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: ds + "/labelsTr", withIntermediateDirectories: true)
        try runPython(Self.writeSeries, [dicom])

        // The README's command (with -b n: no JSON sidecar).
        let conv = try TestEnv.run("dcm2niix -z y -b n -f pancreas_001_0000 -o \(ds)/imagesTr \(dicom)")
        XCTAssertEqual(conv.status, 0, conv.stdout + conv.stderr)
        let image = ds + "/imagesTr/pancreas_001_0000.nii.gz"
        XCTAssertEqual(
            try FileManager.default.contentsOfDirectory(atPath: ds + "/imagesTr"), ["pancreas_001_0000.nii.gz"],
            "one series, one file:\n" + conv.stdout)
        try runPython(Self.writeLabel, [image, ds + "/labelsTr/pancreas_001.nii.gz"])

        let store = dir.path + "/pancreas_1mm.h5"
        let prep = try TestEnv.run(
            "\(TestEnv.attunet) prepare --input \(ds) --out \(store) --spacing 1 --blur-sigma 0 --class-names background,pancreas --threads 1"
        )
        XCTAssertEqual(prep.status, 0, prep.stdout + prep.stderr)
        try runPython(Self.check, [dicom, image, store, "pancreas_001"])

        // attunet's own reader sees the same source geometry (what predict's export maps back onto).
        let s = try CaseStore(path: store)
        XCTAssertEqual(s.classNames, ["background", "pancreas"])
        XCTAssertEqual(s.cases.map(\.id), ["pancreas_001"])
        let c = s.cases[0]
        XCTAssertEqual(c.originalShape, Dim3(z: 12, y: 20, x: 24))
        // float32 header rounding only (see the Python check).
        for (got, want) in zip(c.originalSpacing ?? [], [0.7, 0.8, 2.5]) { XCTAssertEqual(got, want, accuracy: 1e-4) }
        XCTAssertEqual(c.originalSpacing?.count, 3)
    }

    /// Runs a Python script file with arguments (TestEnv.python takes none); fails with its stderr.
    private func runPython(_ script: String, _ args: [String], file: StaticString = #filePath, line: UInt = #line)
        throws
    {
        let path = NSTemporaryDirectory() + "attunet-dicom-\(UUID().uuidString).py"
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try TestEnv.run(([TestEnv.python, path] + args).joined(separator: " "))
        if r.status != 0 {
            XCTFail("python failed:\n\(r.stderr)", file: file, line: line)
            throw NSError(domain: "test", code: 2)
        }
    }
}
