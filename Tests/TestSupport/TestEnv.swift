import Foundation
import XCTest

/// Paths and helpers shared by the test targets (a library target of its own, so no target copies it): the package root, the built `attunet`, a Python with h5py/nibabel,
/// and child processes with a clean MPI environment.
public enum TestEnv {
    public static let root: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent()
        .deletingLastPathComponent()

    /// The `attunet` executable: ATTUNET_BIN when set (launch/test.sh points it at the release build, so
    /// training runs spawned by tests are fast), else the one built next to the test bundle.
    public static var attunet: String {
        if let bin = ProcessInfo.processInfo.environment["ATTUNET_BIN"],
            FileManager.default.isExecutableFile(atPath: bin)
        {
            return bin
        }
        let bundleDir = Bundle.main.bundleURL.deletingLastPathComponent()
        for candidate in [
            bundleDir.appendingPathComponent("attunet").path,
            Bundle.main.bundleURL.appendingPathComponent("attunet").path,
            root.appendingPathComponent(".build/debug/attunet").path,
        ]
        where FileManager.default.isExecutableFile(atPath: candidate) {
            return candidate
        }
        return root.appendingPathComponent(".build/debug/attunet").path
    }

    /// ATTUNET_PYTHON, else the project's .venv (made by launch/test.sh), else python3 on PATH.
    public static var python: String {
        if let p = ProcessInfo.processInfo.environment["ATTUNET_PYTHON"] { return p }
        let venv = root.appendingPathComponent(".venv/bin/python").path
        return FileManager.default.isExecutableFile(atPath: venv) ? venv : "/usr/bin/env python3"
    }

    /// The environment for a child `mpirun`: a test process that ran MPI_Init as a singleton carries
    /// OMPI_/PMIX_/ORTE_/OPAL_ variables that make a child mpirun exit 1 silently, so they are stripped.
    public static var childEnvironment: [String: String] {
        var env = ProcessInfo.processInfo.environment.filter { key, _ in
            !["OMPI_", "PMIX_", "ORTE_", "OPAL_"].contains { key.hasPrefix($0) }
        }
        if getuid() == 0 {  // Open MPI refuses root without them; other users never get them
            env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
            env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        }
        env["OPENBLAS_NUM_THREADS"] = "1"
        // One thread per rank unless a test asks for more: runs on different rank counts are compared bit for
        // bit, and weight gradients are summed per thread (the default would follow each rank's CPUs).
        if env["ATTUNET_THREADS"] == nil { env["ATTUNET_THREADS"] = "1" }
        return env
    }

    public struct Result {
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    /// Runs a command line through /bin/sh with the clean environment; returns status and output.
    @discardableResult
    public static func run(_ command: String, timeout: TimeInterval = 300) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", command]
        p.environment = childEnvironment
        // Output goes to files, not pipes, so a chatty child can never block on a full pipe.
        let base = NSTemporaryDirectory() + "attunet-run-\(UUID().uuidString)"
        _ = FileManager.default.createFile(atPath: base + ".out", contents: nil)
        _ = FileManager.default.createFile(atPath: base + ".err", contents: nil)
        defer {
            try? FileManager.default.removeItem(atPath: base + ".out")
            try? FileManager.default.removeItem(atPath: base + ".err")
        }
        p.standardOutput = FileHandle(forWritingAtPath: base + ".out")
        p.standardError = FileHandle(forWritingAtPath: base + ".err")
        try p.run()
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { usleep(20_000) }
        if p.isRunning {
            p.terminate()
            throw NSError(
                domain: "test", code: 1,
                userInfo: [NSLocalizedDescriptionKey: "timed out after \(timeout) s: \(command)"])
        }
        p.waitUntilExit()
        let outData = FileManager.default.contents(atPath: base + ".out") ?? Data()
        let errData = FileManager.default.contents(atPath: base + ".err") ?? Data()
        return Result(
            status: p.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
            stderr: String(decoding: errData, as: UTF8.self))
    }

    /// Starts a command line through /bin/sh with the clean environment, its stdout and stderr in the file `log`,
    /// and returns at once (for tests that signal or kill a running job).
    public static func start(_ command: String, log: String) throws -> Process {
        let job = Process()
        job.executableURL = URL(fileURLWithPath: "/bin/sh")
        job.arguments = ["-c", "exec \(command) > \(log) 2>&1"]
        job.environment = childEnvironment
        try job.run()
        return job
    }

    /// The process id of a process that has ended (a shell that printed its own id): what a writer killed
    /// mid-write leaves in its temporary file's name (`.tmp-<pid>-<n>-<name>`).
    public static func deadPID() throws -> Int32 {
        let r = try run("sh -c 'echo $$'")
        guard let pid = Int32(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw NSError(domain: "test", code: 3, userInfo: [NSLocalizedDescriptionKey: "no pid from sh: \(r.stdout)"])
        }
        return pid
    }

    /// Runs a Python snippet with the test Python; fails the test with the script's stderr if it fails.
    public static func python(_ script: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let path = NSTemporaryDirectory() + "attunet-test-\(UUID().uuidString).py"
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try run("\(python) \(path)")
        if r.status != 0 {
            XCTFail(
                "python failed (needs h5py/nibabel: run launch/test.sh or pip install -r launch/requirements-test.txt):\n\(r.stderr)",
                file: file, line: line)
            throw NSError(domain: "test", code: 2)
        }
    }

    /// A tmpfs of `size` (mount's notation: "2m") mounted on a fresh temporary folder, for full-disk tests;
    /// where mounting is not permitted (not root, a container without CAP_SYS_ADMIN) the test is skipped with
    /// that reason. The caller's defer passes it to `unmount(_:)`.
    public static func smallFileSystem(size: String) throws -> URL {
        let dir = try tempDir()
        let r = try run("mount -t tmpfs -o size=\(size) tmpfs \(dir.path)")
        guard r.status == 0 else {
            try? FileManager.default.removeItem(at: dir)
            throw XCTSkip(
                "full-disk test skipped: mount -t tmpfs is not permitted here (\(r.stderr.trimmingCharacters(in: .whitespacesAndNewlines)))"
            )
        }
        return dir
    }

    /// Unmounts and removes a folder of `smallFileSystem(size:)`.
    public static func unmount(_ dir: URL) {
        _ = try? run("umount \(dir.path)")
        try? FileManager.default.removeItem(at: dir)
    }

    /// Fills the file system holding `dir` with a file `dir/filler`, leaving about `kib` KiB free.
    public static func fill(_ dir: URL, leavingKiB kib: Int) throws {
        let r = try run(
            "avail=$(df -k --output=avail \(dir.path) | tail -1); dd if=/dev/zero of=\(dir.path)/filler bs=1k count=$((avail - \(kib))) 2>&1"
        )
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
    }

    /// The names in `dir` that start with a dot (an atomic write's temporary files), for leftover checks.
    public static func hiddenFiles(_ dir: URL) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).filter { $0.hasPrefix(".") }
    }

    /// Flips one bit of byte `offset` of the first stored chunk of `dataset` in the HDF5 file `file` (h5py
    /// says where the chunk lies), as bit rot would.
    public static func flipByte(in file: String, dataset: String, at offset: Int = 10) throws {
        try python(
            """
            import h5py
            with h5py.File(r'\(file)', 'r') as f:
                d = f[r'\(dataset)']
                start = d.id.get_offset() if d.chunks is None else d.id.get_chunk_info(0).byte_offset
            with open(r'\(file)', 'r+b') as f:
                f.seek(start + \(offset)); b = f.read(1)
                f.seek(start + \(offset)); f.write(bytes([b[0] ^ 0x10]))
            """)
    }

    /// Changes element `index` of `dataset` through h5py, which writes a valid checksum for the new value:
    /// damage that only a stored digest can see.
    public static func rewriteValue(in file: String, dataset: String, index: Int = 3) throws {
        try python(
            """
            import h5py
            with h5py.File(r'\(file)', 'r+') as f:
                d = f[r'\(dataset)']
                a = d[...]
                a.flat[\(index)] = a.flat[\(index)] * 2 + 1
                d[...] = a
            """)
    }

    /// A fresh temporary directory, removed by the caller's defer.
    public static func tempDir() throws -> URL {
        let url = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("attunet-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}
