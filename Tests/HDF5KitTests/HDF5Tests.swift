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
        try TestEnv.python(
            """
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
        let start = [1, 5, 17, 3]
        let count = [2, 20, 19, 25]
        var out = [Float](repeating: -1, count: count.reduce(1, *))
        try out.withUnsafeMutableBytes {
            try ds.readHyperslab(start: start, count: count, into: $0.baseAddress!, as: .float32)
        }
        var i = 0
        for a in 0..<count[0] {
            for b in 0..<count[1] {
                for c in 0..<count[2] {
                    for d in 0..<count[3] {
                        let flat = (((start[0] + a) * 40 + start[1] + b) * 36 + start[2] + c) * 28 + start[3] + d
                        if out[i] != Float(flat) {
                            XCTFail("at \(a),\(b),\(c),\(d): \(out[i]) != \(flat)")
                            return
                        }
                        i += 1
                    }
                }
            }
        }
        XCTAssertThrowsError(
            try out.withUnsafeMutableBytes {
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
            try g.write(
                "image", (0..<(6 * 5 * 4)).map { Float($0) * 0.5 }, shape: [6, 5, 4], chunks: [4, 4, 4], deflate: 1)
            try g.setAttribute("spacing_mm", [2.0, 2.0, 2.5])
            try f.root.setAttribute("format", "attunet-store 1")
            try f.root.setAttribute("count", 7)
            try f.flush()
        }
        try TestEnv.python(
            """
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
        XCTAssertThrowsError(try H5File.open(missing)) {
            XCTAssertTrue("\($0)".contains("nope.h5: no such file"), "\($0)")
        }
        let junk = dir.appendingPathComponent("junk.h5").path
        try Data(repeating: 7, count: 4096).write(to: URL(fileURLWithPath: junk))
        XCTAssertThrowsError(try H5File.open(junk)) {
            XCTAssertTrue("\($0)".contains("junk.h5: not an HDF5 file"), "\($0)")
        }
        let ok = dir.appendingPathComponent("ok.h5").path
        _ = try H5File.create(ok)
        XCTAssertThrowsError(try H5File.open(ok).root.dataset("cases/x/image")) {
            XCTAssertTrue("\($0)".contains("ok.h5: missing dataset /cases/x/image"), "\($0)")
        }
    }

    /// The probe hook: called before a file is opened, once per version of the file (a rewritten file is probed
    /// again, a file written here through `writeAtomically` not at all); a refusal is thrown by every open,
    /// before HDF5 opens the file, and the missing/not-HDF5 errors come first, as before.
    func testProbeHookRunsOncePerFileVersionAndItsRefusalIsThrown() throws {
        let dir = try TestEnv.tempDir()
        defer {
            try? FileManager.default.removeItem(at: dir)
            H5File.probe = nil
        }
        let calls = Locked<[String]>([])
        H5File.probe = { path in
            calls.withLock { $0.append(path) }
            if path.hasSuffix("bad.h5") { throw AttunetError("\(path): damaged HDF5 metadata (test)", kind: .corrupt) }
        }
        let ok = dir.appendingPathComponent("ok.h5").path
        let bad = dir.appendingPathComponent("bad.h5").path
        try H5File.writeAtomically(ok) { try $0.root.setAttribute("format", "x") }
        _ = try H5File.open(ok)
        XCTAssertEqual(calls.current, [], "a file written here needs no probe")
        usleep(20_000)  // past the file system's clock tick: a new modification time
        try FileManager.default.removeItem(atPath: ok)
        for path in [ok, bad] { _ = try H5File.create(path) }
        for _ in 0..<3 { _ = try H5File.open(ok) }
        for _ in 0..<2 {
            XCTAssertThrowsError(try H5File.open(bad)) {
                XCTAssertEqual("\($0)", "\(bad): damaged HDF5 metadata (test)")
                XCTAssertEqual(($0 as? AttunetError)?.kind, .corrupt)
            }
        }
        XCTAssertEqual(calls.current, [ok, bad], "one probe per file version")
        usleep(20_000)
        try FileManager.default.removeItem(atPath: ok)
        _ = try H5File.create(ok)
        _ = try H5File.open(ok)
        XCTAssertEqual(calls.current, [ok, bad, ok], "a new version of the file is probed again")
        XCTAssertThrowsError(try H5File.open(dir.appendingPathComponent("nope.h5").path)) {
            XCTAssertTrue("\($0)".hasSuffix("nope.h5: no such file"))
        }
        XCTAssertEqual(calls.current.count, 3, "no probe for a missing file")
    }

    /// The probe's walk passes files attunet and h5py write (variable-length strings, chunked compressed
    /// datasets, scalars, nested groups) and names what it could not read otherwise; how each way the child can
    /// end maps to one line naming the file.
    func testProbeWalkAndOutcomes() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let mine = dir.appendingPathComponent("mine.h5").path
        let theirs = dir.appendingPathComponent("theirs.h5").path
        try H5File.writeAtomically(mine) { f in
            try f.root.setAttribute("format", "attunet-case-store")
            let g = try f.root.createGroup("cases/case_00")
            try g.setAttribute("spacing_mm", [1.0, 2, 3])
            try g.write(
                "image", [Float](repeating: 1, count: 4096), shape: [16, 16, 16], chunks: [8, 8, 8], deflate: 1)
            _ = try g.createDataset("step", type: .int64, shape: [])
        }
        try TestEnv.python(
            """
            import h5py, numpy as np
            with h5py.File(r'\(theirs)', 'w') as f:
                f.attrs['names'] = ['a', 'bb']
                f.attrs['fixed'] = np.bytes_('abc')
                f.create_dataset('g/v', data=np.arange(10.0), chunks=(3,), compression='gzip').attrs['unit'] = 'mm'
                f.create_dataset('empty', shape=(0, 4), maxshape=(None, 4), dtype='f4')
                f['link'] = h5py.SoftLink('/g/v')
            """)
        XCTAssertNoThrow(try H5Probe.walk(mine))
        XCTAssertNoThrow(try H5Probe.walk(theirs))
        let path = "ckpt.h5"
        XCTAssertNil(H5Probe.error(for: .exited(status: 0, stderr: ""), path: path))
        let lines: [(ChildProcess.Outcome, String)] = [
            (
                .exited(status: 1, stderr: "damaged HDF5 metadata (cannot read attribute x of /)\n"),
                "ckpt.h5: damaged HDF5 metadata (cannot read attribute x of /)"
            ),
            (.exited(status: 3, stderr: ""), "ckpt.h5: damaged HDF5 metadata (needed more than 2 GiB)"),
            (
                .exited(status: 1, stderr: ""),
                "ckpt.h5: damaged HDF5 metadata (the probe reading it exited with status 1)"
            ),
            (
                .signaled(signal: 11, stderr: "noise\n"),
                "ckpt.h5: damaged HDF5 metadata (HDF5 \(hdf5LibraryVersion) crashed reading it: signal 11 in the probe)"
            ),
            (
                .timedOut(seconds: 20),
                "ckpt.h5: damaged HDF5 metadata (reading it did not finish within 20 s; if the file is sound but slow to read, set ATTUNET_HDF5_PROBE_TIMEOUT to more seconds)"
            ),
        ]
        for (outcome, line) in lines {
            let e = H5Probe.error(for: outcome, path: path)
            XCTAssertEqual(e?.message, line)
            XCTAssertEqual(e?.kind, .corrupt)
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
        try TestEnv.python(
            """
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
            XCTAssertThrowsError(
                try box.withUnsafeMutableBytes {
                    try d.readHyperslab(start: [1, 1, 1], count: [2, 2, 2], into: $0.baseAddress!, as: .float32)
                }
            ) { XCTAssertEqual("\($0)", "\(path): checksum mismatch in /\(name)") }
        }
        let r = try TestEnv.run("\(TestEnv.python) -c \"import h5py; h5py.File(r'\(path)', 'r')['plain'][...]\"")
        XCTAssertNotEqual(r.status, 0, "h5py must refuse the damaged chunk too")
        let old = dir.appendingPathComponent("old.h5").path
        try TestEnv.python(
            """
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
        try H5File.writeAtomically(path) {
            try $0.root.write("small", [Float](repeating: 1, count: 1000), shape: [1000])
        }
        let previous = try Data(contentsOf: URL(fileURLWithPath: path))
        // A large dataset, whose data do not fit; then metadata only (attributes), which the flush writes.
        let attempts: [(String, String, (H5File) throws -> Void)] = [
            ("large", "/big", { try $0.root.write("big", [Float](repeating: 2, count: 1 << 20), shape: [1 << 20]) }),
            (
                "metadata", "the file",
                { f in
                    let g = try f.root.createGroup("g")
                    for i in 0..<600 { try g.setAttribute("a\(i)", String(repeating: "x", count: 200)) }
                }
            ),
        ]
        for (kind, what, body) in attempts {
            try TestEnv.fill(dir, leavingKiB: 60)
            XCTAssertThrowsError(try H5File.writeAtomically(path, body), kind) {
                XCTAssertEqual("\($0)", "\(path): no space left on device while writing \(what)")
                XCTAssertFalse("\($0)".contains("\n"), "one line: \($0)")
            }
            XCTAssertEqual(
                try Data(contentsOf: URL(fileURLWithPath: path)), previous, "\(kind): the previous file must be kept")
            XCTAssertEqual(TestEnv.hiddenFiles(dir), [], "\(kind): no temporary file may be left")
            XCTAssertEqual(try H5File.open(path).root.dataset("small").readFloats(), [Float](repeating: 1, count: 1000))
            try FileManager.default.removeItem(atPath: dir.path + "/filler")
        }
    }
}
