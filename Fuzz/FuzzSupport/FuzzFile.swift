#if canImport(Glibc)
    import Glibc
#endif

/// What the fuzz targets share: the fuzz input as a file, for readers that take a path.
public enum FuzzFile {
    /// The folder of this process's input files: `$TMPDIR/attunet-fuzz-<pid>` (launch/fuzz.sh points TMPDIR
    /// at a scratch folder it removes afterwards).
    public static let folder: String = {
        let base = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        let dir = base + "/attunet-fuzz-\(getpid())"
        mkdir(dir, 0o700)
        return dir
    }()

    /// Writes `count` bytes at `data` to `<folder>/input<suffix>` (the same name every run, so a reader's
    /// messages stay comparable) and returns the path.
    public static func write(_ data: UnsafePointer<UInt8>, _ count: Int, suffix: String) -> String {
        let path = folder + "/input" + suffix
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        precondition(fd >= 0, "cannot create \(path)")
        var done = 0
        while done < count {
            let n = Glibc.write(fd, data + done, count - done)
            precondition(n > 0, "cannot write \(path)")
            done += n
        }
        close(fd)
        return path
    }
}
