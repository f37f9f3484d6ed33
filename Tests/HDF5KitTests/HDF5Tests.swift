import HDF5Kit
import Support
import TestSupport
import XCTest

final class HDF5Tests: XCTestCase {
    /// A chunked, shuffled, gzip-compressed 4D file written by h5py (default libver): a hyperslab read returns
    /// exactly the values of that box, and layout metadata is visible.
    func testHyperslabOfChunkedCompressedFileFromH5py() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("vol.h5").path
        try TestEnv.python("""
            import h5py, numpy as np
            with h5py.File(r'\(path)', 'w') as f:
                a = np.arange(3*40*36*28, dtype=np.float32).reshape(3, 40, 36, 28)
                f.create_dataset('vol', data=a, chunks=(1, 16, 16, 16), compression='gzip', compression_opts=4, shuffle=True)
                f['vol'].attrs['spacing_mm'] = np.array([0.8, 0.8, 2.5])
                f.attrs['format'] = 'test-1'
            """)
        let file = try H5File.open(path)
        let ds = try file.root.dataset("vol")
        XCTAssertEqual(ds.shape, [3, 40, 36, 28])
        XCTAssertEqual(ds.chunks, [1, 16, 16, 16])
        XCTAssertEqual(try file.root.stringAttribute("format"), "test-1")
        XCTAssertEqual(try ds.doublesAttribute("spacing_mm"), [0.8, 0.8, 2.5])
        let start = [1, 5, 17, 3], count = [2, 20, 19, 25]
        var out = [Float](repeating: -1, count: count.reduce(1, *))
        try out.withUnsafeMutableBytes { try ds.readHyperslab(start: start, count: count, into: $0.baseAddress!, as: .float32) }
        var i = 0
        for a in 0..<count[0] { for b in 0..<count[1] { for c in 0..<count[2] { for d in 0..<count[3] {
            let flat = (((start[0] + a) * 40 + start[1] + b) * 36 + start[2] + c) * 28 + start[3] + d
            if out[i] != Float(flat) { XCTFail("at \(a),\(b),\(c),\(d): \(out[i]) != \(flat)"); return }
            i += 1
        } } } }
        XCTAssertThrowsError(try out.withUnsafeMutableBytes {
            try ds.readHyperslab(start: [2, 30, 30, 20], count: count, into: $0.baseAddress!, as: .float32)
        })
    }

    /// What attunet writes opens in h5py with the same values, shapes, chunks and attributes.
    func testFileWrittenHereReadsInH5py() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("ours.h5").path
        do {
            let f = try H5File.create(path)
            let g = try f.root.createGroup("cases/case_001")
            try g.write("image", (0..<(6 * 5 * 4)).map { Float($0) * 0.5 }, shape: [6, 5, 4], chunks: [4, 4, 4], deflate: 1)
            try g.setAttribute("spacing_mm", [2.0, 2.0, 2.5])
            try f.root.setAttribute("format", "attunet-store 1")
            try f.root.setAttribute("count", 7)
            try f.flush()
        }
        try TestEnv.python("""
            import h5py, numpy as np
            with h5py.File(r'\(path)', 'r') as f:
                d = f['cases/case_001/image']
                assert d.shape == (6, 5, 4), d.shape
                assert d.chunks == (4, 4, 4), d.chunks
                assert d.fletcher32, 'every dataset written carries the Fletcher-32 checksum'
                assert np.array_equal(d[...], (np.arange(120, dtype=np.float32) * 0.5).reshape(6, 5, 4))
                assert list(f['cases/case_001'].attrs['spacing_mm']) == [2.0, 2.0, 2.5]
                assert f.attrs['format'] == 'attunet-store 1', f.attrs['format']
                assert int(f.attrs['count'][0]) == 7
            """)
        let f = try H5File.open(path)
        XCTAssertEqual(try f.root.group("cases").members(), ["case_001"])
        XCTAssertEqual(try f.root.intAttribute("count"), 7)
    }

    /// Missing files, non-HDF5 files and missing datasets each give one error naming the file.
    func testErrorsNameTheFile() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let missing = dir.appendingPathComponent("nope.h5").path
        XCTAssertThrowsError(try H5File.open(missing)) { XCTAssertTrue("\($0)".contains("nope.h5: no such file"), "\($0)") }
        let junk = dir.appendingPathComponent("junk.h5").path
        try Data(repeating: 7, count: 4096).write(to: URL(fileURLWithPath: junk))
        XCTAssertThrowsError(try H5File.open(junk)) { XCTAssertTrue("\($0)".contains("junk.h5: not an HDF5 file"), "\($0)") }
        let ok = dir.appendingPathComponent("ok.h5").path
        _ = try H5File.create(ok)
        XCTAssertThrowsError(try H5File.open(ok).root.dataset("cases/x/image")) {
            XCTAssertTrue("\($0)".contains("ok.h5: missing dataset /cases/x/image"), "\($0)")
        }
    }

    /// Every non-scalar dataset written here carries HDF5's Fletcher-32 filter (h5py sees it, unchunked requests
    /// become one chunk); a flipped byte in a plain or a compressed chunk fails the read, whole or hyperslab,
    /// with one line naming the file and the dataset, and h5py refuses it too. A file written without the
    /// filter (h5py's default, as before) still reads.
    func testFletcher32ChecksumsDetectAFlippedByte() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("sums.h5").path
        let values = (0..<(8 * 6 * 5)).map { Float($0) * 0.25 }
        do {
            let f = try H5File.create(path)
            try f.root.write("plain", values, shape: [8, 6, 5])
            try f.root.write("packed", values, shape: [8, 6, 5], chunks: [4, 6, 5], deflate: 1)
            let s = try f.root.createDataset("scalar", type: .int64, shape: [])
            var v: Int64 = 7
            try s.write(from: &v, as: .int64)
            try f.flush()
        }
        try TestEnv.python("""
            import h5py
            with h5py.File(r'\(path)', 'r') as f:
                assert f['plain'].fletcher32 and f['plain'].chunks == (8, 6, 5), f['plain'].chunks
                assert f['packed'].fletcher32 and f['packed'].compression == 'gzip'
                assert f['scalar'][()] == 7 and not f['scalar'].fletcher32   # HDF5 cannot chunk a scalar
            """)
        let file = try H5File.open(path)
        XCTAssertEqual(try file.root.dataset("plain").readFloats(), values)
        try TestEnv.flipByte(in: path, dataset: "plain")
        try TestEnv.flipByte(in: path, dataset: "packed", at: 20)
        for name in ["plain", "packed"] {
            let d = try H5File.open(path).root.dataset(name)
            XCTAssertThrowsError(try d.readFloats()) {
                XCTAssertEqual("\($0)", "\(path): checksum mismatch in /\(name)")
                XCTAssertEqual(($0 as? AttunetError)?.kind, .corrupt)
            }
            var box = [Float](repeating: 0, count: 2 * 2 * 2)
            XCTAssertThrowsError(try box.withUnsafeMutableBytes {
                try d.readHyperslab(start: [1, 1, 1], count: [2, 2, 2], into: $0.baseAddress!, as: .float32)
            }) { XCTAssertEqual("\($0)", "\(path): checksum mismatch in /\(name)") }
        }
        let r = try TestEnv.run("\(TestEnv.python) -c \"import h5py; h5py.File(r'\(path)', 'r')['plain'][...]\"")
        XCTAssertNotEqual(r.status, 0, "h5py must refuse the damaged chunk too")
        let old = dir.appendingPathComponent("old.h5").path
        try TestEnv.python("""
            import h5py, numpy as np
            with h5py.File(r'\(old)', 'w') as f:
                f['plain'] = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
            """)
        XCTAssertEqual(try H5File.open(old).root.dataset("plain").readFloats(), (0..<24).map(Float.init))
    }

    /// A file written atomically to a small tmpfs that fills up: the write fails with one line naming the
    /// target and what was being written (a dataset's data, or the file's metadata at the flush), the
    /// previous file is kept as it was, no temporary file is left, and the process goes on (HDF5 1.10 would
    /// crash at exit on a file whose close failed).
    func testFullDiskKeepsThePreviousFileAndLeavesNoTemporary() throws {
        let dir = try TestEnv.smallFileSystem(size: "2m")
        defer { TestEnv.unmount(dir) }
        let path = dir.appendingPathComponent("data.h5").path
        try H5File.writeAtomically(path) { try $0.root.write("small", [Float](repeating: 1, count: 1000), shape: [1000]) }
        let previous = try Data(contentsOf: URL(fileURLWithPath: path))
        // A large dataset, whose data do not fit; then metadata only (attributes), which the flush writes.
        let attempts: [(String, String, (H5File) throws -> Void)] = [
            ("large", "/big", { try $0.root.write("big", [Float](repeating: 2, count: 1 << 20), shape: [1 << 20]) }),
            ("metadata", "the file", { f in
                let g = try f.root.createGroup("g")
                for i in 0..<600 { try g.setAttribute("a\(i)", String(repeating: "x", count: 200)) }
            }),
        ]
        for (kind, what, body) in attempts {
            try TestEnv.fill(dir, leavingKiB: 60)
            XCTAssertThrowsError(try H5File.writeAtomically(path, body), kind) {
                XCTAssertEqual("\($0)", "\(path): no space left on device while writing \(what)")
                XCTAssertFalse("\($0)".contains("\n"), "one line: \($0)")
            }
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), previous, "\(kind): the previous file must be kept")
            XCTAssertEqual(TestEnv.hiddenFiles(dir), [], "\(kind): no temporary file may be left")
            XCTAssertEqual(try H5File.open(path).root.dataset("small").readFloats(), [Float](repeating: 1, count: 1000))
            try FileManager.default.removeItem(atPath: dir.path + "/filler")
        }
    }
}
