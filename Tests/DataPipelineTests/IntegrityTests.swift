import Foundation
import HDF5Kit
import Support
import Tensor
import TestSupport
import XCTest

@testable import DataPipeline

/// A case store's checksums, prepare on a full disk, and intensities no CT can have.
final class StoreIntegrityTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try TestEnv.tempDir() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    /// A one-case store of noise (float32, so deflate cannot shrink it), 48x40x36: several 32^3 chunks.
    func noiseStore() throws -> CaseStore {
        let dim = Dim3(z: 36, y: 40, x: 48)
        var rng = SplitMix64(4)
        let image = (0..<dim.count).map { _ in Float(rng.next() % 2000) - 1000 + 0.5 }
        let label = (0..<dim.count).map { UInt8($0 % 7 == 0 ? 1 : 0) }
        return try SyntheticStore.make(in: dir, dim: dim, image: image, label: label)
    }

    /// Every dataset of a store carries Fletcher-32 (h5py sees it); a flipped byte in one image chunk makes
    /// every read that touches the chunk (the whole image, a patch) fail with one line naming the store and
    /// the dataset, while patches elsewhere still read.
    func testAFlippedByteInAnImageChunkIsDetected() throws {
        let path = try noiseStore().path
        try TestEnv.python(
            """
            import h5py
            with h5py.File(r'\(path)', 'r') as f:
                g = f['cases/case']
                for name in ('image', 'label', 'foreground'):
                    assert g[name].fletcher32, name
            """)
        try TestEnv.flipByte(in: path, dataset: "cases/case/image", at: 100)
        let store = try CaseStore(path: path)
        let message = "\(path): checksum mismatch in /cases/case/image"
        XCTAssertThrowsError(try store.image(0)) { XCTAssertEqual("\($0)", message) }
        let size = Dim3(z: 8, y: 8, x: 8)
        var image = [Float](repeating: 0, count: size.count)
        XCTAssertThrowsError(
            try image.withUnsafeMutableBufferPointer {
                try store.readBox(0, start: (0, 0, 0), size: size, image: $0.baseAddress!, label: nil)
            }
        ) { XCTAssertEqual("\($0)", message) }
        XCTAssertNoThrow(
            try image.withUnsafeMutableBufferPointer {
                try store.readBox(0, start: (33, 33, 33), size: size, image: $0.baseAddress!, label: nil)
            }, "a chunk the damage does not touch still reads")
    }

    /// prepare into a small tmpfs that fills up: one line naming the store and that the disk is full, the
    /// previous store kept as it was, no temporary file left.
    func testPrepareOnAFullDiskKeepsThePreviousStore() throws {
        _ = try noiseStore()  // its NIfTI files are the input
        let small = try TestEnv.smallFileSystem(size: "2m")
        defer { TestEnv.unmount(small) }
        let out = small.appendingPathComponent("store.h5").path
        var o = PrepareOptions()
        o.spacing = 1
        o.blurSigma = 0
        o.storeFloat = true
        o.threads = 1
        let input = try DatasetInput.folders(images: dir.path + "/img", labels: dir.path + "/lab")
        _ = try CasePreparer.run(input: input, out: out, options: o, skipBad: false)
        let previous = try Data(contentsOf: URL(fileURLWithPath: out))
        try TestEnv.fill(small, leavingKiB: 150)
        XCTAssertThrowsError(try CasePreparer.run(input: input, out: out, options: o, skipBad: false)) {
            XCTAssertTrue("\($0)".hasPrefix("\(out): no space left on device while writing "), "\($0)")
            XCTAssertFalse("\($0)".contains("\n"), "\($0)")
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: out)), previous, "the previous store must be kept")
        XCTAssertEqual(TestEnv.hiddenFiles(small), [], "no temporary file may be left")
        XCTAssertEqual(try CaseStore(path: out).cases.map(\.id), ["case"])
    }

    /// A CT whose header scales it absurdly (scl_slope 1e30, and a float image at 2e5 HU) is refused by
    /// prepare with one line naming the file and the value range, and nothing is stored; the same volumes
    /// declared as another modality (dataset.json) are not CT and are converted.
    func testAbsurdCTIntensitiesAreRefused() throws {
        try TestEnv.python(
            """
            import numpy as np, nibabel as nib, os
            d = r'\(dir.path)/'
            for sub in ('img', 'lab'): os.makedirs(d + sub, exist_ok=True)
            A = np.diag([2.0, 2.0, 2.0, 1.0])
            raw = (np.arange(12 * 10 * 8).reshape(12, 10, 8) % 40).astype(np.int16)
            x = nib.Nifti1Image(raw, A); x.header.set_slope_inter(1e30, 0)
            nib.save(x, d + 'img/slope.nii.gz')
            hot = raw.astype(np.float32); hot[3, 3, 3] = 2e5
            nib.save(nib.Nifti1Image(hot, A), d + 'img/hot.nii.gz')
            lab = np.zeros(raw.shape, np.uint8); lab[2:5, 2:5, 2:5] = 1
            for name in ('slope', 'hot'): nib.save(nib.Nifti1Image(lab, A), d + 'lab/' + name + '.nii')
            """)
        let out = dir.path + "/store.h5"
        let r = try TestEnv.run(
            "\(TestEnv.attunet) prepare --image-dir \(dir.path)/img --label-dir \(dir.path)/lab --out \(out) --spacing 2"
        )
        XCTAssertEqual(r.status, 1, r.stdout + r.stderr)
        let scaling =
            "after the header's scaling (scl_slope, scl_inter) are not CT Hounsfield units (expected within ±100000); check the header's scaling, or name the modality in dataset.json if this is not CT"
        XCTAssertEqual(
            r.stderr,
            """
            error: \(dir.path)/img/hot.nii.gz: intensities 0 to 200000 \(scaling)
            error: \(dir.path)/img/slope.nii.gz: intensities 0 to 3.9e+31 \(scaling)
            error: \(out): not written (2 bad input(s); --skip-bad converts the rest)

            """)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        var o = PrepareOptions()
        o.spacing = 2
        o.threads = 1
        o.modality = "MR"
        let report = try CasePreparer.run(
            input: try DatasetInput.folders(images: dir.path + "/img", labels: dir.path + "/lab"),
            out: out, options: o, skipBad: false)
        XCTAssertEqual(report.written, ["hot", "slope"])
    }
}
