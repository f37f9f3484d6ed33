import Foundation
import Support
import Tensor
import TestSupport
import XCTest

@testable import DataPipeline

/// `--labels` remapping (`PrepareOptions.labelMap`): listed source values become their targets, every other value 0;
/// without a map, values outside the declared classes are refused with one line naming the label file.
final class LabelMapTests: XCTestCase {
    func testLabelsAreRemappedAndUnmappedValuesRefused() throws {
        let d = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: d) }
        // 2 mm isotropic source prepared at 2 mm: no resampling, so every stored label is a remapped source label.
        try TestEnv.python(
            """
            import numpy as np, nibabel as nib, os
            d = '\(d.path)/'; os.makedirs(d + 'img'); os.makedirs(d + 'lab')
            A = np.diag([2.0, 2.0, 2.0, 1.0]); A[:3, 3] = [5, -3, 10]
            rng = np.random.default_rng(2)
            img = rng.integers(-300, 300, size=(12, 10, 8)).astype(np.int16)
            lab = rng.choice(np.array([0, 4, 7, 8, 9], np.uint8), size=(12, 10, 8))
            assert sorted(np.unique(lab)) == [0, 4, 7, 8, 9]
            nib.save(nib.Nifti1Image(img, A), d + 'img/c.nii.gz'); nib.save(nib.Nifti1Image(lab, A), d + 'lab/c.nii')
            """)
        let input = try DatasetInput.folders(images: d.path + "/img", labels: d.path + "/lab")
        var o = PrepareOptions()
        o.spacing = 2
        o.threads = 1
        o.labelMap = [4: 1, 7: 2, 8: 3]
        _ = try CasePreparer.run(input: input, out: d.path + "/inproc.h5", options: o, skipBad: false)
        let bin = TestEnv.attunet
        let dirs = "--image-dir \(d.path)/img --label-dir \(d.path)/lab --spacing 2"
        var r = try TestEnv.run("\(bin) prepare \(dirs) --out \(d.path)/cli.h5 --labels 4:1,7:2,8:3")
        XCTAssertEqual(r.status, 0, r.stderr)
        // A target past the default classes: the CLI extends the class names.
        r = try TestEnv.run("\(bin) prepare \(dirs) --out \(d.path)/wide.h5 --labels 4:1,7:2,8:3,9:5")
        XCTAssertEqual(r.status, 0, r.stderr)
        try TestEnv.python(
            """
            import h5py, json, numpy as np, nibabel as nib
            d = '\(d.path)/'
            src = np.asarray(nib.load(d + 'lab/c.nii').dataobj).transpose(2, 1, 0)      # [Z][Y][X]
            base = ['background', 'spleen', 'pancreas', 'kidney']
            for store, mapping, names, attr in (('inproc.h5', {4: 1, 7: 2, 8: 3}, base, '4:1,7:2,8:3'),
                                                ('cli.h5', {4: 1, 7: 2, 8: 3}, base, '4:1,7:2,8:3'),
                                                ('wide.h5', {4: 1, 7: 2, 8: 3, 9: 5}, base + ['class4', 'class5'], '4:1,7:2,8:3,9:5')):
                with h5py.File(d + store, 'r') as f:
                    want = np.zeros_like(src)
                    for a, b in mapping.items(): want[src == a] = b
                    got = f['cases/c/label'][...]
                    assert got.shape == src.shape, (store, got.shape)
                    assert (got == want).all(), (store, 'voxels differing from the remapped source', int((got != want).sum()))
                    assert json.loads(f.attrs['class_names']) == names, (store, f.attrs['class_names'])
                    lm = f.attrs['label_map']; lm = lm.decode() if isinstance(lm, bytes) else str(lm)
                    assert lm == attr, (store, lm)
                    cv = list(f['cases/c'].attrs['class_voxels'])
                    assert cv == [int((want == k).sum()) for k in range(len(names))], (store, cv)
            """)
        // Without a map, 4, 7, 8 and 9 are outside the four declared classes: refused, one line naming the label file.
        do {
            _ = try CasePreparer.run(
                input: input, out: d.path + "/refused.h5",
                options: {
                    var p = o
                    p.labelMap = nil
                    return p
                }(),
                skipBad: false)
            XCTFail("labels outside the declared classes were accepted")
        } catch let e as AttunetError {
            XCTAssertEqual(e.kind, .badInput)
            XCTAssertEqual(e.lines.count, 1, e.message)
            let line = e.lines.first ?? ""
            XCTAssertTrue(line.hasPrefix(d.path + "/lab/c.nii: "), line)
            XCTAssertTrue(line.contains("outside the declared classes 0-3"), line)
            for v in ["4", "7", "8", "9"] {
                XCTAssertTrue(line.contains(": \(v) (") || line.contains(", \(v) ("), "\(v) not named: \(line)")
            }
        }
        r = try TestEnv.run("\(bin) prepare \(dirs) --out \(d.path)/refused.h5")
        XCTAssertEqual(r.status, 1, r.stderr)
        let naming = r.stderr.split(separator: "\n").filter { $0.contains("lab/c.nii") }
        XCTAssertEqual(naming.count, 1, r.stderr)
        XCTAssertTrue(
            naming.first?.contains("lab/c.nii: label values outside the declared classes 0-3") ?? false, r.stderr)
        XCTAssertFalse(r.stderr.contains("img/c.nii.gz"), r.stderr)
        let left = try FileManager.default.contentsOfDirectory(atPath: d.path).filter { $0.hasPrefix("refused") }
        XCTAssertEqual(left, [], "no store may be left behind")
    }
}

/// NIfTI intensity scaling: stored int16 values v mean v · scl_slope + scl_inter (HU here).
final class ScaledNIfTITests: XCTestCase {
    func testSlopeAndInterceptGiveHounsfieldUnits() throws {
        let d = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: d) }
        try TestEnv.python(
            """
            import numpy as np, nibabel as nib, os, gzip
            d = '\(d.path)/'; os.makedirs(d + 'img'); os.makedirs(d + 'lab')
            A = np.diag([2.0, 2.0, 2.0, 1.0])
            raw = np.random.default_rng(4).integers(0, 1200, size=(9, 8, 7)).astype(np.int16)
            x = nib.Nifti1Image(raw, A); x.header.set_slope_inter(2.5, -1024)
            nib.save(x, d + 'img/s.nii.gz')
            # The file really stores int16 with the scaling in its header (scl_slope, scl_inter at bytes 112, 116).
            hdr = gzip.open(d + 'img/s.nii.gz').read(348)
            assert np.frombuffer(hdr[70:72], np.int16)[0] == 4, 'datatype'
            assert list(np.frombuffer(hdr[112:120], np.float32)) == [2.5, -1024.0], np.frombuffer(hdr[112:120], np.float32)
            y = nib.load(d + 'img/s.nii.gz')
            assert y.get_data_dtype() == np.int16 and (np.asarray(y.dataobj.get_unscaled()) == raw).all()
            hu = y.get_fdata()
            assert np.array_equal(hu, raw * 2.5 - 1024)
            hu.astype(np.float32).ravel(order='F').tofile(d + 'hu.f32')                # x fastest
            lab = np.zeros(raw.shape, np.uint8); lab[2:5, 2:6, 1:4] = 1
            nib.save(nib.Nifti1Image(lab, A), d + 'lab/s.nii')
            """)
        let v = try NIfTIVolume.read(d.path + "/img/s.nii.gz")
        XCTAssertEqual(v.datatype, 4)
        let hu = try Data(contentsOf: d.appendingPathComponent("hu.f32")).withUnsafeBytes {
            Array($0.bindMemory(to: Float.self))
        }
        XCTAssertEqual(hu.count, v.voxels.count)
        let bad = zip(v.voxels, hu).filter { $0.0 != $0.1 }
        XCTAssertTrue(bad.isEmpty, "\(bad.count) voxels differ from nibabel's get_fdata(), e.g. \(bad.prefix(3))")
        // prepare (2 mm source at 2 mm: no resampling) stores the HU: float32, since 2.5 · odd is not an integer.
        var o = PrepareOptions()
        o.spacing = 2
        o.threads = 1
        _ = try CasePreparer.run(
            input: try DatasetInput.folders(images: d.path + "/img", labels: d.path + "/lab"),
            out: d.path + "/inproc.h5", options: o, skipBad: false)
        let r = try TestEnv.run(
            "\(TestEnv.attunet) prepare --image-dir \(d.path)/img --label-dir \(d.path)/lab --out \(d.path)/cli.h5 --spacing 2"
        )
        XCTAssertEqual(r.status, 0, r.stderr)
        try TestEnv.python(
            """
            import h5py, numpy as np, nibabel as nib
            d = '\(d.path)/'
            hu = nib.load(d + 'img/s.nii.gz').get_fdata().transpose(2, 1, 0)          # [Z][Y][X]
            for store in ('inproc.h5', 'cli.h5'):
                with h5py.File(d + store, 'r') as f:
                    g = f['cases/s']
                    im = g['image']
                    assert im.dtype == np.float32, (store, im.dtype)
                    assert np.array_equal(im[...].astype(np.float64), hu), (store, 'max error', np.abs(im[...] - hu).max())
                    st = g.attrs['intensity_stats']
                    assert st[0] == hu.min() and st[1] == hu.max(), (store, list(st), hu.min(), hu.max())
            """)
    }
}
