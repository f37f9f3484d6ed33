import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// How every file attunet writes reaches the disk: `body` fills a temporary file in the same folder, which is
/// fsync'ed and renamed over the target, and then the folder is fsync'ed so the rename itself is durable. A
/// crash or an error leaves either the previous file or the complete new one, never a half-written one, and
/// no temporary file (a process killed mid-write leaves its temporary: `removeStaleTemporaries(in:)`, which a
/// resumed run calls). Errors name `path`, never the temporary file, and a full disk is named as such.
public enum AtomicFile {
    /// Writes `path` through `body(temporaryPath)`; the temporary name keeps `path`'s file name as its
    /// suffix (so libraries that choose a format by extension, such as `.nii.gz`, choose the same one) and is
    /// hidden (a leading dot), so folder scans skip it.
    public static func write(_ path: String, _ body: (String) throws -> Void) throws {
        try write(path, committingOn: nil, body)
    }

    /// As ``write(_:_:)``, but with a `writer`, only `body` runs now: the fsyncs and the rename run on the
    /// writer's thread (then `committed`), and `path` holds the new file once they have. The temporary stays
    /// hidden until then; a process that dies first leaves the previous `path` and its temporary, which
    /// `removeStaleTemporaries(in:)` removes. An error of the deferred part names `path` and is thrown by the
    /// writer's `wait()`.
    public static func write(
        _ path: String, committingOn writer: BackgroundWriter?, committed: (@Sendable () -> Void)? = nil,
        _ body: (String) throws -> Void
    ) throws {
        let url = URL(fileURLWithPath: path)
        let folder = url.deletingLastPathComponent().path
        let n = counter.withLock {
            $0 += 1
            return $0
        }
        let tmp = folder + "/.tmp-\(getpid())-\(n)-" + url.lastPathComponent
        do { try body(tmp) } catch {
            throw cleaned(error, tmp: tmp, path: path)
        }
        let commit: @Sendable () throws -> Void = {
            do {
                try sync(tmp, what: "file")
                guard rename(tmp, path) == 0 else {
                    throw AttunetError(
                        "\(path): cannot move the new file into place (\(String(cString: strerror(errno))))")
                }
            } catch {
                throw cleaned(error, tmp: tmp, path: path)
            }
            try sync(folder, what: "folder")
            committed?()
        }
        if let writer { writer.submit(commit) } else { try commit() }
    }

    /// `error` with the temporary file removed and its name replaced by `path`'s.
    private static func cleaned(_ error: any Error, tmp: String, path: String) -> any Error {
        unlink(tmp)
        guard let e = error as? AttunetError else { return error }
        return AttunetError(e.message.replacingOccurrences(of: tmp, with: path), kind: e.kind)
    }

    /// Writes `data` to `path` atomically.
    public static func write(_ data: Data, to path: String) throws {
        try write(path) { tmp in
            errno = 0
            guard FileManager.default.createFile(atPath: tmp, contents: data) else {
                throw AttunetError.writeFailed(path, while: "the file", errno: errno)
            }
        }
    }

    /// Writes `text` (UTF-8) to `path` atomically.
    public static func write(_ text: String, to path: String) throws {
        try write(Data(text.utf8), to: path)
    }

    private static func sync(_ path: String, what: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            throw AttunetError("\(path): cannot open the \(what) to fsync it (\(String(cString: strerror(errno))))")
        }
        defer { close(fd) }
        guard fsync(fd) == 0 else {
            throw AttunetError("\(path): fsync of the \(what) failed (\(String(cString: strerror(errno))))")
        }
    }

    /// Removes the temporary files (`.tmp-<pid>-<n>-<name>`) in `folder` that a writer killed mid-write left
    /// (SIGKILL, a lost node): those whose process `<pid>` is not alive on this host. A temporary of a live
    /// process (a write under way) is kept. Returns the names removed, sorted.
    public static func removeStaleTemporaries(in folder: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        var removed: [String] = []
        for name in names.sorted() where name.hasPrefix(".tmp-") {
            let fields = name.dropFirst(5).split(separator: "-", maxSplits: 2)
            guard fields.count == 3, let pid = pid_t(fields[0]), pid > 0, Int(fields[1]) != nil else { continue }
            guard kill(pid, 0) != 0, errno == ESRCH else { continue }
            if unlink(folder + "/" + name) == 0 { removed.append(name) }
        }
        return removed
    }

    /// Distinguishes the temporary files of concurrent writers in one process.
    private static let counter = Locked(0)
}
