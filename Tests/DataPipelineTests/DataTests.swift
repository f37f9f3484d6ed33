import Foundation
import Tensor
import TestSupport
import XCTest

@testable import DataPipeline

final class NIfTIImportTests: XCTestCase {
    /// nibabel writes oblique int16 .nii.gz (sform) and float32 .nii (qform only); we read the same geometry.
    func testNibabelFilesImportWithTheirGeometry() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        try TestEnv.python(
            """
            import numpy as np, nibabel as nib
            from scipy.spatial.transform import Rotation
            rng = np.random.default_rng(0)
            R = Rotation.from_euler('xyz', [10, -20, 30], degrees=True).as_matrix()
            A = np.eye(4); A[:3, :3] = R @ np.diag([0.8, 0.9, 2.5]); A[:3, 3] = [-120.5, 33.25, 400.0]
            a = rng.integers(-1024, 2000, size=(7, 6, 5)).astype(np.int16)
            img = nib.Nifti1Image(a, A); img.set_sform(A, code=1); img.set_qform(None, code=0)
            nib.save(img, '\(dir.path)/obl.nii.gz')
            b = rng.normal(size=(5, 4, 3)).astype(np.float32)
            B = np.diag([1.5, 1.5, 3.0, 1.0]); B[:3, 3] = [1, 2, 3]
            img2 = nib.Nifti1Image(b, None); img2.set_qform(B, code=1); img2.set_sform(None, code=0)
            nib.save(img2, '\(dir.path)/q.nii')
            np.savetxt('\(dir.path)/A.txt', A.ravel()); np.savetxt('\(dir.path)/a.txt', a.ravel(order='F'))
            np.savetxt('\(dir.path)/b.txt', b.ravel(order='F'))
            """)
        func txt(_ n: String) throws -> [Double] {
            try String(contentsOfFile: dir.path + "/" + n, encoding: .utf8).split(separator: "\n").map { Double($0)! }
        }
        let v = try NIfTIVolume.read(dir.path + "/obl.nii.gz")
        XCTAssertEqual([v.nx, v.ny, v.nz], [7, 6, 5])
        XCTAssertEqual(v.datatype, 4)
        for (x, y) in zip(v.affine, try txt("A.txt")) { XCTAssertEqual(x, y, accuracy: 1e-4) }
        XCTAssertEqual(v.spacing.x, 0.8, accuracy: 1e-5)
        XCTAssertEqual(v.spacing.z, 2.5, accuracy: 1e-5)
        XCTAssertEqual(v.voxels.map(Double.init), try txt("a.txt"))  // x fastest == Fortran order
        let w = try NIfTIVolume.read(dir.path + "/q.nii")
        XCTAssertEqual(w.datatype, 16)
        XCTAssertEqual(w.affine[0], 1.5, accuracy: 1e-6)
        XCTAssertEqual(w.affine[10], 3.0, accuracy: 1e-6)
        XCTAssertEqual(w.affine[3], 1, accuracy: 1e-6)
        XCTAssertEqual(w.affine[11], 3, accuracy: 1e-6)
        for (x, y) in zip(w.voxels, try txt("b.txt")) { XCTAssertEqual(Double(x), y, accuracy: 1e-6) }
    }
}

final class ResampleTests: XCTestCase {
    /// Blur + trilinear and nearest resampling agree with scipy.ndimage on the same grid.
    func testResamplingMatchesScipy() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let src = Dim3(z: 9, y: 11, x: 13)
        let sp = (x: 0.8, y: 1.1, z: 2.5)
        let grid = ResampleGrid(from: src, spacing: sp, target: (2.0, 2.0, 2.0))
        var rng = SeededRNG(3)
        let vol = (0..<src.count).map { _ in Float(rng.uniform(-100, 100)) }
        let lab = (0..<src.count).map { _ in UInt8(rng.below(4)) }
        var blurred = vol
        let sigma = (0.5 / sp.x, 0.5 / sp.y, 0.5 / sp.z)
        Resample.gaussianBlur(&blurred, dim: src, sigma: sigma)
        let lin = Resample.resampleLinear(blurred, grid: grid)
        let near = Resample.resampleNearest(lab, grid: grid, fill: 0)
        func save(_ name: String, _ v: [Float]) throws {
            try v.map { String($0) }.joined(separator: "\n").write(
                toFile: dir.path + "/" + name, atomically: true, encoding: .utf8)
        }
        try save("vol.txt", vol)
        try save("lab.txt", lab.map(Float.init))
        try save("blur.txt", blurred)
        try save("lin.txt", lin)
        try save("near.txt", near.map(Float.init))
        let to = grid.to
        try TestEnv.python(
            """
            import numpy as np
            from scipy import ndimage
            d = '\(dir.path)/'
            src = (\(src.z), \(src.y), \(src.x)); to = (\(to.z), \(to.y), \(to.x))
            vol = np.loadtxt(d + 'vol.txt', dtype=np.float64).reshape(src); lab = np.loadtxt(d + 'lab.txt').reshape(src)
            sig = (\(sigma.2), \(sigma.1), \(sigma.0))
            bl = ndimage.gaussian_filter(vol, sig, mode='reflect', truncate=4.0)
            assert np.abs(bl - np.loadtxt(d + 'blur.txt').reshape(src)).max() < 1e-3, 'blur'
            sc = np.array([\(grid.scale.z), \(grid.scale.y), \(grid.scale.x)]); off = np.array([\(grid.offset.z), \(grid.offset.y), \(grid.offset.x)])
            idx = np.indices(to).reshape(3, -1).astype(np.float64) * sc[:, None] + off[:, None]
            lin = ndimage.map_coordinates(bl, idx, order=1, mode='nearest').reshape(to)
            got = np.loadtxt(d + 'lin.txt').reshape(to)
            assert np.abs(lin - got).max() < 1e-3, ('linear', np.abs(lin - got).max())
            near = ndimage.map_coordinates(lab, idx, order=0, mode='nearest').reshape(to)
            assert (near == np.loadtxt(d + 'near.txt').reshape(to)).all(), 'nearest'
            """)
        // The output grid keeps the source's physical extent centred.
        XCTAssertEqual(to, Dim3(z: 11, y: 6, x: 5))
    }
}

/// A small phantom dataset shared by the store and loader tests.
enum Fixture {
    static let lock = NSLock()
    nonisolated(unsafe) static var dir: URL?
    static func dataset() throws -> URL {
        lock.lock()
        defer { lock.unlock() }
        if let dir { return dir }
        let d = try TestEnv.tempDir()
        try Phantom.writeDataset(to: d.path + "/ds", count: 3, seed: 5, scale: 0.45)
        var o = PrepareOptions()
        o.spacing = 3.0
        _ = try CasePreparer.run(
            input: try DatasetInput.folder(d.path + "/ds"), out: d.path + "/store.h5", options: o, skipBad: false)
        dir = d
        return d
    }
}

final class PhantomTests: XCTestCase {
    func testPhantomsAreDeterministicAndAnatomical() throws {
        let a = Phantom.generate(seed: 11, index: 2, scale: 0.5)
        let b = Phantom.generate(seed: 11, index: 2, scale: 0.5)
        XCTAssertEqual(a.image, b.image)
        XCTAssertEqual(a.label, b.label)
        let c = Phantom.generate(seed: 11, index: 3, scale: 0.5)
        XCTAssertNotEqual(a.dim, c.dim)
        for p in [a, c] {
            XCTAssertTrue(p.dim.x % 16 != 0 && p.dim.y % 16 != 0 && p.dim.z % 16 != 0, "\(p.dim)")
            var n = [Int](repeating: 0, count: 4)
            var mean = [Double](repeating: 0, count: 4)
            for (v, l) in zip(p.image, p.label) {
                n[Int(l)] += 1
                mean[Int(l)] += Double(v)
            }
            XCTAssertTrue(n[1] > 0 && n[2] > 0 && n[3] > 0, "\(n)")
            XCTAssertLessThan(n[2], n[1])
            XCTAssertLessThan(n[2], n[3])  // pancreas: the small one
            for k in 1...3 { mean[k] /= Double(n[k]) }
            XCTAssertTrue((70...115).contains(mean[2]), "pancreas \(mean[2]) HU")
            XCTAssertGreaterThan(mean[3], mean[2] + 20)  // kidneys brighter
            XCTAssertEqual(p.image.min(), -1024)  // air outside the body
        }
    }
}

final class StoreTests: XCTestCase {
    func testStoreLayoutInH5pyAndResamplingMatchesScipy() throws {
        let d = try Fixture.dataset()
        try TestEnv.python(
            """
            import h5py, json, numpy as np, nibabel as nib
            from scipy import ndimage
            f = h5py.File('\(d.path)/store.h5', 'r')
            assert f.attrs['format'] == 'attunet-case-store' and int(f.attrs['format_version'][0]) == 1
            assert json.loads(f.attrs['class_names']) == ['background', 'spleen', 'pancreas', 'kidney']
            assert f.attrs['modality'] == 'CT'
            fp = json.loads(f.attrs['fingerprint']); assert fp['num_cases'] == 3, fp
            assert sorted(f['cases']) == ['phantom_000', 'phantom_001', 'phantom_002']
            g = f['cases/phantom_001']
            im, lb = g['image'], g['label']
            assert im.dtype == np.int16 and lb.dtype == np.uint8 and im.shape == lb.shape
            assert im.chunks is not None and im.compression == 'gzip'
            assert list(g.attrs['spacing_mm']) == [3.0, 3.0, 3.0]
            src = nib.load(g.attrs['source']); a = src.get_fdata().astype(np.float64); A = src.affine
            assert tuple(g.attrs['original_shape']) == a.shape
            assert np.allclose(g.attrs['original_affine'].reshape(4, 4), A, atol=1e-4)
            sp = np.sqrt((A[:3, :3] ** 2).sum(0))                     # x, y, z
            vol = np.transpose(a, (2, 1, 0))                           # [Z][Y][X]
            sig = [0.5 / sp[2], 0.5 / sp[1], 0.5 / sp[0]]
            bl = ndimage.gaussian_filter(vol, sig, mode='reflect', truncate=4.0)
            sc = 3.0 / sp[::-1]
            idx = np.indices(im.shape).reshape(3, -1).astype(np.float64) * sc[:, None] + ((sc - 1) / 2)[:, None]
            ref = np.round(ndimage.map_coordinates(bl, idx, order=1, mode='nearest').reshape(im.shape))
            assert np.abs(ref - im[...]).max() <= 1.0, np.abs(ref - im[...]).max()
            lab = np.transpose(nib.load(g.attrs['source_label']).get_fdata(), (2, 1, 0))
            lref = ndimage.map_coordinates(lab, idx, order=0, mode='nearest').reshape(im.shape)
            assert (lref == lb[...]).mean() > 0.999
            # The new affine maps the resampled grid onto the same world points.
            B = g.attrs['affine'].reshape(4, 4)
            ijk = np.array([2, 3, 1, 1.0]); src_ijk = np.array([2 * sc[2] + (sc[2] - 1) / 2, 3 * sc[1] + (sc[1] - 1) / 2, 1 * sc[0] + (sc[0] - 1) / 2, 1])
            assert np.allclose(B @ ijk, A @ src_ijk, atol=1e-3)
            fg = g['foreground'][...]
            assert fg.shape[1] == 4 and (lb[...][fg[:, 1], fg[:, 2], fg[:, 3]] == fg[:, 0]).all()
            """)
        let store = try CaseStore(path: d.path + "/store.h5")
        XCTAssertEqual(store.cases.map(\.id), ["phantom_000", "phantom_001", "phantom_002"])
        // Box reads with padding equal the whole volume cut by hand.
        let c = 1
        let s = store.cases[c].shape
        let whole = try store.image(c)
        let wl = try store.label(c)
        let size = Dim3(z: 7, y: 9, x: 11)
        for start in [(-3, -4, -5), (s.z - 4, s.y - 2, s.x - 6), (1, 2, 3)] {
            var img = [Float](repeating: 0, count: size.count)
            var lab = [UInt8](repeating: 9, count: size.count)
            try img.withUnsafeMutableBufferPointer { ip in
                try lab.withUnsafeMutableBufferPointer { lp in
                    try store.readBox(c, start: start, size: size, image: ip.baseAddress!, label: lp.baseAddress!)
                }
            }
            var o = 0
            for z in 0..<size.z {
                for y in 0..<size.y {
                    for x in 0..<size.x {
                        let (zz, yy, xx) = (start.0 + z, start.1 + y, start.2 + x)
                        let inside = zz >= 0 && zz < s.z && yy >= 0 && yy < s.y && xx >= 0 && xx < s.x
                        let i = (zz * s.y + yy) * s.x + xx
                        XCTAssertEqual(img[o], inside ? whole[i] : store.cases[c].minimum)
                        XCTAssertEqual(lab[o], inside ? wl[i] : 0)
                        o += 1
                    }
                }
            }
        }
    }
}

final class BadInputTests: XCTestCase {
    /// Every bad input gets one error line naming its file; no store (or temporary) is left behind;
    /// --skip-bad converts the rest and lists what it skipped.
    func testBadInputsAreReportedAndLeaveNoFile() throws {
        let d = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: d) }
        try TestEnv.python(
            """
            import numpy as np, nibabel as nib, os
            d = '\(d.path)/'; os.makedirs(d + 'img'); os.makedirs(d + 'lab')
            A = np.diag([1.5, 1.5, 2.5, 1.0])
            def img(a, name, aff=A): nib.save(nib.Nifti1Image(a, aff), d + 'img/' + name)
            # Labels as .nii: nifticlib's shim refuses files under 348 bytes, and these tiny labels gzip smaller.
            def lab(a, name, aff=A): nib.save(nib.Nifti1Image(a.astype(np.uint8), aff), d + 'lab/' + name.replace('.nii.gz', '.nii'))
            rng = np.random.default_rng(1)
            good = rng.integers(-200, 200, size=(12, 10, 8)).astype(np.int16); gl = np.zeros((12, 10, 8)); gl[3:6, 3:6, 2:5] = 2
            img(good, 'good.nii.gz'); lab(gl, 'good.nii.gz')
            img(good, 'nolabel.nii.gz')
            img(good, 'shape.nii.gz'); lab(np.zeros((12, 10, 7)) + 1, 'shape.nii.gz')
            B = A.copy(); B[0, 3] = 5.0
            img(good, 'geom.nii.gz'); lab(gl, 'geom.nii.gz', B)
            img(good, 'trunc.nii'); lab(gl, 'trunc.nii')
            raw = open(d + 'img/trunc.nii', 'rb').read(); open(d + 'img/trunc.nii', 'wb').write(raw[:len(raw) - 100])
            open(d + 'img/corrupt.nii.gz', 'wb').write(os.urandom(2000)); lab(gl, 'corrupt.nii.gz')
            n = good.astype(np.float32); n[1, 1, 1] = np.nan; n[2, 2, 2] = np.inf
            img(n, 'nan.nii.gz'); lab(gl, 'nan.nii.gz')
            bad = gl.copy(); bad[0, 0, 0] = 7
            img(good, 'classes.nii.gz'); lab(bad, 'classes.nii.gz')
            img(np.zeros((12, 10, 8), np.int16), 'empty.nii.gz'); lab(gl, 'empty.nii.gz')
            img(good, 'nofg.nii.gz'); lab(np.zeros((12, 10, 8)), 'nofg.nii.gz')
            """)
        let out = d.path + "/store.h5"
        let cmd = "\(TestEnv.attunet) prepare --image-dir \(d.path)/img --label-dir \(d.path)/lab --out \(out)"
        let r = try TestEnv.run(cmd)
        XCTAssertEqual(r.status, 1, r.stderr)
        let lines = r.stderr.split(separator: "\n").map(String.init)
        let expect: [(String, String)] = [
            ("img/nolabel.nii.gz", "no label"), ("lab/shape.nii", "shape"), ("lab/geom.nii", "geometry"),
            ("img/trunc.nii", "truncated"), ("img/corrupt.nii.gz", "NIfTI"), ("img/nan.nii.gz", "NaN"),
            ("lab/classes.nii", "outside the declared classes"), ("img/empty.nii.gz", "empty"),
            ("lab/nofg.nii", "no foreground"),
        ]
        for (file, words) in expect {
            let hits = lines.filter { $0.contains(file + ":") }
            XCTAssertEqual(hits.count, 1, "\(file): \(r.stderr)")
            XCTAssertTrue(hits.first?.contains(words) ?? false, "\(file) should say \(words): \(hits)")
        }
        XCTAssertFalse(lines.contains { $0.contains("good.nii.gz") }, r.stderr)
        let left = try FileManager.default.contentsOfDirectory(atPath: d.path).filter { $0.hasPrefix("store") }
        XCTAssertEqual(left, [], "no store or temporary file may remain")
        let s = try TestEnv.run(cmd + " --skip-bad")
        XCTAssertEqual(s.status, 0, s.stderr)
        XCTAssertEqual(
            s.stdout.split(separator: "\n").filter { $0.hasPrefix("skipped: ") }.count, expect.count, s.stdout)
        let store = try CaseStore(path: out)
        XCTAssertEqual(store.cases.map(\.id), ["good"])
        // Nothing at all readable: exit 1, nothing written.
        let none = try TestEnv.run(
            "\(TestEnv.attunet) prepare --image-dir \(d.path)/lab --label-dir \(d.path)/none --out \(d.path)/x.h5")
        XCTAssertEqual(none.status, 1)
        XCTAssertFalse(FileManager.default.fileExists(atPath: d.path + "/x.h5"))
    }

    /// Under mpirun -np 2 the ranks convert disjoint cases and rank 0 assembles: the store equals a
    /// single-process one (cases, voxels, attributes, fingerprint); bad input fails the same way on both ranks
    /// with each problem reported once, and no part or temporary file is left behind.
    func testTwoRanksBuildTheSameStoreAsOne() throws {
        let d = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: d) }
        let bin = TestEnv.attunet
        var r = try TestEnv.run("\(bin) synth --cases 3 --resolution 0.5 --out \(d.path)/nii --seed 4")
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try TestEnv.run("\(bin) prepare --input \(d.path)/nii --out \(d.path)/one.h5 --spacing 4")
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try TestEnv.run(
            "mpirun -np 2 --bind-to none \(bin) prepare --input \(d.path)/nii --out \(d.path)/two.h5 --spacing 4")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("by 2 ranks"), r.stdout)
        try TestEnv.python(
            """
            import h5py, numpy as np
            with h5py.File(r'\(d.path)/one.h5', 'r') as a, h5py.File(r'\(d.path)/two.h5', 'r') as b:
                assert sorted(a['cases']) == sorted(b['cases']) and len(a['cases']) == 3
                for k in a.attrs: assert np.array_equal(np.asarray(a.attrs[k]), np.asarray(b.attrs[k])), k
                for c in a['cases']:
                    for n in ('image', 'label', 'foreground'):
                        x, y = a['cases'][c][n], b['cases'][c][n]
                        assert x.dtype == y.dtype and x.chunks == y.chunks and x.compression == y.compression, (c, n)
                        assert np.array_equal(x[...], y[...]), (c, n)
                    for k in a['cases'][c].attrs:
                        assert np.array_equal(np.asarray(a['cases'][c].attrs[k]), np.asarray(b['cases'][c].attrs[k])), (c, k)
            """)
        // A case without its label: both ranks fail, the problem is printed once, nothing is left behind.
        try FileManager.default.removeItem(atPath: "\(d.path)/nii/labelsTr/phantom_001.nii.gz")
        r = try TestEnv.run(
            "mpirun -np 2 --bind-to none \(bin) prepare --input \(d.path)/nii --out \(d.path)/bad.h5 --spacing 4")
        XCTAssertNotEqual(r.status, 0)
        XCTAssertEqual(r.stderr.components(separatedBy: "phantom_001.nii.gz:").count - 1, 1, r.stderr)
        let left = try FileManager.default.contentsOfDirectory(atPath: d.path).filter { $0.hasPrefix("bad") }
        XCTAssertEqual(left, [], "no store, part or temporary file may remain")
    }
}

final class LoaderTests: XCTestCase {
    func testSamplesAreIndependentOfRankAndTheLoaderThreadMatchesSynchronousBatches() throws {
        let d = try Fixture.dataset()
        let store = try CaseStore(path: d.path + "/store.h5")
        let patch = Dim3(z: 16, y: 24, x: 20)
        let one = try PatchLoader(
            store: store, patch: patch, batch: 2, rank: 0, worldSize: 1, seed: 9, samplesPerCase: 4)
        let r0 = try PatchLoader(
            store: store, patch: patch, batch: 1, rank: 0, worldSize: 2, seed: 9, samplesPerCase: 4)
        let r1 = try PatchLoader(
            store: store, patch: patch, batch: 1, rank: 1, worldSize: 2, seed: 9, samplesPerCase: 4)
        XCTAssertEqual(one.stepsPerEpoch, 6)
        XCTAssertEqual(r0.stepsPerEpoch, 6)
        // Global batch s of the 1-rank run = rank 0's and rank 1's step s.
        let a = try one.makeBatch(epoch: 3, step: 2)
        let b0 = try r0.makeBatch(epoch: 3, step: 2)
        let b1 = try r1.makeBatch(epoch: 3, step: 2)
        XCTAssertEqual(a.samples, [4, 5])
        XCTAssertEqual(b0.samples, [4])
        XCTAssertEqual(b1.samples, [5])
        XCTAssertEqual(a.image.array, b0.image.array + b1.image.array)
        XCTAssertEqual(a.label, b0.label + b1.label)
        XCTAssertEqual(a.image.shape, [2, 1, 16, 24, 20])
        // Epochs differ; the z-scored patch is finite.
        XCTAssertNotEqual(try one.makeBatch(epoch: 4, step: 2).image.array, a.image.array)
        XCTAssertTrue(a.image.array.allSatisfy(\.isFinite))
        // The background loader yields exactly the synchronous batches, then nil.
        one.startEpoch(3)
        var n = 0
        while let b = try one.next() {
            let ref = try one.makeBatch(epoch: 3, step: n)
            XCTAssertEqual(b.step, n)
            XCTAssertEqual(b.image.array, ref.image.array)
            XCTAssertEqual(b.label, ref.label)
            n += 1
        }
        XCTAssertEqual(n, one.stepsPerEpoch)
        // Restarting mid-epoch abandons the old one cleanly.
        one.startEpoch(5)
        _ = try one.next()
        one.startEpoch(6)
        var m = 0
        while try one.next() != nil { m += 1 }
        XCTAssertEqual(m, one.stepsPerEpoch)
    }

    /// The loader reuses a batch's buffers once nobody holds the batch: batches dropped as they are trained
    /// on come back in the same few buffers, every element rewritten (they equal a fresh loader's batches,
    /// with the paper's augmentation, whose source boxes also reuse their scratch); batches a caller keeps
    /// are never written over.
    func testBatchBuffersAreReusedOnlyOnceDropped() throws {
        let d = try Fixture.dataset()
        let store = try CaseStore(path: d.path + "/store.h5")
        let patch = Dim3(z: 16, y: 24, x: 20)
        func loader() throws -> PatchLoader {
            try PatchLoader(store: store, patch: patch, batch: 2, seed: 4, augment: .paper, samplesPerCase: 4)
        }
        let reference = try loader()
        let refs = try (0..<3).map { e in
            try (0..<reference.stepsPerEpoch).map { try reference.makeBatch(epoch: e, step: $0) }
        }
        let l = try loader()
        var buffers = Set<UnsafeMutablePointer<Float>>()
        for e in 0..<2 {
            l.startEpoch(e)
            var n = 0
            while let b = try l.next() {
                XCTAssertEqual(b.image.array, refs[e][n].image.array, "epoch \(e) step \(n)")
                XCTAssertEqual(b.label, refs[e][n].label, "epoch \(e) step \(n)")
                buffers.insert(b.image.pointer)
                n += 1
            }
        }
        XCTAssertLessThanOrEqual(buffers.count, l.prefetch + 3, "dropped batches' buffers must be reused")
        l.startEpoch(2)
        var kept: [PatchBatch] = []
        while let b = try l.next() { kept.append(b) }
        XCTAssertEqual(Set(kept.map(\.image.pointer)).count, kept.count, "kept batches never share a buffer")
        for (n, b) in kept.enumerated() {
            XCTAssertEqual(b.image.array, refs[2][n].image.array, "kept step \(n)")
            XCTAssertEqual(b.label, refs[2][n].label, "kept step \(n)")
        }
    }

    func testForegroundFractionOrderAndIdentityCrops() throws {
        let d = try Fixture.dataset()
        let store = try CaseStore(path: d.path + "/store.h5")
        let patch = Dim3(z: 8, y: 12, x: 10)
        let l = try PatchLoader(
            store: store, patch: patch, batch: 3, seed: 1, augment: .none, foregroundFraction: 1.0 / 3.0,
            normalization: .none, samplesPerCase: 10)
        XCTAssertEqual((0..<300).filter { l.isForeground($0) }.count, 100)
        let ord = l.order(epoch: 0)
        XCTAssertEqual(ord.count, 30)
        XCTAssertEqual((0..<3).map { c in ord.filter { $0 == c }.count }, [10, 10, 10])
        // Foreground patches contain their class at the centre; unaugmented crops equal box reads.
        var fgHits = 0
        for g in 0..<30 {
            var img = [Float](repeating: 0, count: patch.count)
            var lab = [UInt8](repeating: 0, count: patch.count)
            let c = try img.withUnsafeMutableBufferPointer { ip in
                try lab.withUnsafeMutableBufferPointer { lp in
                    try l.sample(epoch: 0, globalIndex: g, order: ord, image: ip.baseAddress!, label: lp.baseAddress!)
                }
            }
            if l.isForeground(g) && lab.contains(where: { $0 != 0 }) { fgHits += 1 }
            XCTAssertTrue(img.allSatisfy { $0 >= store.cases[c].minimum && $0 <= Float(store.cases[c].stats[1]) })
        }
        XCTAssertEqual(fgHits, 10)
        // Augmented samples: labels stay in the class set, images stay within the case's range before
        // normalisation (bilinear never overshoots).
        let aug = try PatchLoader(store: store, patch: patch, batch: 1, seed: 1, augment: .paper, normalization: .none)
        for g in 0..<6 {
            var img = [Float](repeating: 0, count: patch.count)
            var lab = [UInt8](repeating: 0, count: patch.count)
            let c = try img.withUnsafeMutableBufferPointer { ip in
                try lab.withUnsafeMutableBufferPointer { lp in
                    try aug.sample(
                        epoch: 1, globalIndex: g, order: aug.order(epoch: 1), image: ip.baseAddress!,
                        label: lp.baseAddress!)
                }
            }
            XCTAssertTrue(lab.allSatisfy { $0 < 4 })
            XCTAssertTrue(
                img.allSatisfy { $0 >= store.cases[c].minimum - 1e-3 && $0 <= Float(store.cases[c].stats[1]) + 1e-3 })
        }
    }
}
