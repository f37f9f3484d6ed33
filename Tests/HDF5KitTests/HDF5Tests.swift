import HDF5Kit
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
}
