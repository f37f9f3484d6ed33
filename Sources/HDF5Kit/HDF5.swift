import CHDF5
import Foundation
import Support

/// Element types attunet stores.
public enum H5ElementType: Sendable {
    case float32, float64, int8, uint8, int16, int32, int64

    var native: hid_t {
        switch self {
        case .float32: chdf5_native_float()
        case .float64: chdf5_native_double()
        case .int8: chdf5_native_int8()
        case .uint8: chdf5_native_uint8()
        case .int16: chdf5_native_int16()
        case .int32: chdf5_native_int32()
        case .int64: chdf5_native_int64()
        }
    }
}

/// Anything that can carry attributes: a file's root group, a group or a dataset.
public protocol H5Object: AnyObject {
    var id: hid_t { get }
    /// "<file>:<object path>", used in error messages.
    var location: String { get }
}

/// HDF5's automatic error printing is per thread: every entry point that can fail turns it off for the calling
/// thread (the patch loader reads on its own thread), so no library diagnostic reaches stderr.
@inline(__always) func silenceHDF5() { chdf5_silence_errors() }

/// What the calling thread's HDF5 error stack says about the call that just failed: a Fletcher-32 checksum
/// that did not match, a system call that failed with an `errno` (a full disk: 28), or something else.
enum H5FailureCause: Equatable {
    case checksum
    case system(errno: Int32)
    case other

    static var current: H5FailureCause {
        var buf = [CChar](repeating: 0, count: 16384)
        chdf5_error_text(&buf, buf.count)
        let text = cString(buf)
        if text.contains("Fletcher32") { return .checksum }
        if let r = text.range(of: "errno = "), let code = Int32(text[r.upperBound...].prefix(while: \.isNumber)),
            code != 0
        {
            return .system(errno: code)
        }
        return .other
    }
}

/// An open HDF5 file. Closed when the last reference goes away.
public final class H5File: @unchecked Sendable {
    public let path: String
    public let id: hid_t

    /// True for a file this process created (a new file whose data can be discarded after a failed write).
    private let isNew: Bool

    private init(path: String, id: hid_t, isNew: Bool = false) {
        self.path = path
        self.id = id
        self.isNew = isNew
    }

    /// Opens an existing file. Errors name the file and say whether it is missing or not HDF5. With a
    /// ``probe`` installed, the file is probed first (once per version of it: device, inode, size and
    /// modification time), and a file the probe refuses is not opened here.
    public static func open(_ path: String, writable: Bool = false) throws -> H5File {
        silenceHDF5()
        guard FileManager.default.fileExists(atPath: path) else { throw AttunetError("\(path): no such file") }
        if H5Fis_hdf5(path) <= 0 {
            throw AttunetError("\(path): not an HDF5 file (or truncated/corrupt)", kind: .corrupt)
        }
        try probeOnce(path)
        let id = H5Fopen(path, writable ? chdf5_acc_rdwr() : chdf5_acc_rdonly(), chdf5_p_default())
        if id < 0 { throw AttunetError("\(path): \(cannotOpenMessage)", kind: .corrupt) }
        return H5File(path: path, id: id)
    }

    static let cannotOpenMessage = "cannot open HDF5 file (corrupt, or written by a newer HDF5 with libver='latest')"

    /// Called with a file's path before ``open(_:writable:)`` opens it in this process; throws to refuse the
    /// file. nil (the default): no probe. The attunet executable installs ``H5Probe/inChildProcess(_:)``, which
    /// reads all of the file's metadata in a child process first, so that a damaged file that would crash, hang
    /// or exhaust memory inside libhdf5 gives one error line instead.
    public static var probe: (@Sendable (String) throws -> Void)? {
        get { probeHook.current }
        set { probeHook.withLock { $0 = newValue } }
    }

    private static let probeHook = Locked<(@Sendable (String) throws -> Void)?>(nil)

    /// A version of a file: what a probe's verdict holds for.
    private struct FileVersion: Hashable {
        var device: UInt64, inode: UInt64, size: Int64, seconds: Int, nanoseconds: Int

        init?(_ path: String) {
            var st = stat()
            guard stat(path, &st) == 0 else { return nil }
            device = UInt64(st.st_dev)
            inode = UInt64(st.st_ino)
            size = Int64(st.st_size)
            seconds = st.st_mtim.tv_sec
            nanoseconds = st.st_mtim.tv_nsec
        }
    }

    /// The probe's verdicts in this process (nil: passed), and the files this process wrote itself.
    private static let verdicts = Locked<[FileVersion: AttunetError?]>([:])

    /// Runs ``probe`` on `path` unless this version of the file was probed (or written) by this process.
    private static func probeOnce(_ path: String) throws {
        guard let probe, let version = FileVersion(path) else { return }
        if let verdict = verdicts.current[version] {
            if let e = verdict { throw e }
            return
        }
        do {
            try probe(path)
            verdicts.withLock { $0[version] = .some(nil) }
        } catch let e as AttunetError {
            verdicts.withLock { $0[version] = e }
            throw e
        }
    }

    /// Records that this process wrote `path` as it is now (``writeAtomically(_:_:)``): no probe needed.
    private static func wroteSoundFile(_ path: String) {
        guard let version = FileVersion(path) else { return }
        verdicts.withLock { $0[version] = .some(nil) }
    }

    /// True when `path` exists and starts with HDF5's signature.
    public static func isHDF5(_ path: String) -> Bool {
        silenceHDF5()
        return FileManager.default.fileExists(atPath: path) && H5Fis_hdf5(path) > 0
    }

    /// Creates (truncating) a file.
    public static func create(_ path: String) throws -> H5File {
        silenceHDF5()
        let id = H5Fcreate(path, chdf5_acc_trunc(), chdf5_p_default(), chdf5_p_default())
        if id < 0 {
            if case .system(let code) = H5FailureCause.current {
                throw AttunetError.writeFailed(path, while: "the file", errno: code)
            }
            throw AttunetError("\(path): cannot create HDF5 file")
        }
        return H5File(path: path, id: id, isNew: true)
    }

    /// The error for a failed write into this file: a full disk or quota named as such, else `otherwise`.
    /// A new file that met a full disk is given up (`chdf5_discard_file_data`): what HDF5 still writes as its
    /// objects close goes nowhere, so the file closes cleanly; the caller removes it (`writeAtomically` does).
    func writeError(_ what: String, otherwise: String) -> AttunetError {
        guard case .system(let code) = H5FailureCause.current else { return AttunetError(otherwise) }
        if isNew && (code == ENOSPC || code == EDQUOT) { _ = chdf5_discard_file_data(id) }
        return AttunetError.writeFailed(path, while: what, errno: code)
    }

    /// The error for a failed read of the dataset `object`: a failed Fletcher-32 checksum is named as such.
    func readError(_ object: String, otherwise: String) -> AttunetError {
        if H5FailureCause.current == .checksum {
            return AttunetError("\(path): checksum mismatch in \(object)", kind: .corrupt)
        }
        return AttunetError(otherwise, kind: .corrupt)
    }

    /// The root group (a new handle each time: a stored one would form a reference cycle with the file).
    public var root: H5Group { H5Group(id: H5Gopen2(id, "/", chdf5_p_default()), file: self, path: "/") }

    /// Flushes HDF5's buffers to the OS (call before fsync + rename).
    public func flush() throws {
        silenceHDF5()
        // HDF5 1.10 cannot recover from a metadata flush that fails (every later flush, the close's too, then
        // fails): the file's space is reserved first, and a full disk is met here, before the flush.
        if isNew, case let code = chdf5_reserve_file_space(id), code == ENOSPC || code == EDQUOT {
            _ = chdf5_discard_file_data(id)
            throw AttunetError.writeFailed(path, while: "the file", errno: code)
        }
        if H5Fflush(id, H5F_SCOPE_GLOBAL) < 0 { throw writeError("the file", otherwise: "\(path): flush failed") }
    }

    private var isOpen = true

    /// Closes the file now, reporting what the close writes failing (a full disk); otherwise it is closed
    /// when the last reference goes. Groups and datasets still open keep HDF5's file open until they go.
    public func close() throws {
        guard isOpen else { return }
        isOpen = false
        silenceHDF5()
        if H5Fclose(id) < 0 { throw writeError("the file", otherwise: "\(path): close failed") }
    }

    deinit { if isOpen { H5Fclose(id) } }

    /// Writes a file so that a crash never leaves a half-written `path` (`AtomicFile`): `body` fills a new file
    /// in the same folder, which is flushed, closed, fsync'ed and renamed over `path` only when all of that
    /// succeeded. On a full disk the error says so, naming `path`, the previous file is kept and no temporary
    /// file is left. With a `writer`, the fsyncs and the rename run on its thread
    /// (`AtomicFile.write(_:committingOn:committed:_:)`): `path` is the new file once the writer has run them.
    public static func writeAtomically(
        _ path: String, committingOn writer: BackgroundWriter? = nil, _ body: (H5File) throws -> Void
    ) throws {
        let committed: @Sendable () -> Void = { wroteSoundFile(path) }
        try AtomicFile.write(path, committingOn: writer, committed: committed) { tmp in
            let f = try H5File.create(tmp)
            try body(f)
            FaultHooks.pauseInCheckpointWrite()
            try f.flush()
            try f.close()
        }
    }
}

/// A group; the root group of a file is `file.root`.
public final class H5Group: H5Object, @unchecked Sendable {
    public let id: hid_t
    public let file: H5File
    public let path: String
    public var location: String { "\(file.path):\(path)" }

    init(id: hid_t, file: H5File, path: String) {
        self.id = id
        self.file = file
        self.path = path
    }
    deinit { if id >= 0 { H5Gclose(id) } }

    private func child(_ name: String) -> String { path == "/" ? "/\(name)" : "\(path)/\(name)" }

    /// True when a link of this name exists (intermediate groups of a path must exist too).
    public func exists(_ name: String) -> Bool {
        var partial = ""
        for comp in name.split(separator: "/") {
            partial = partial.isEmpty ? String(comp) : partial + "/" + comp
            if H5Lexists(id, partial, chdf5_p_default()) <= 0 { return false }
        }
        return true
    }

    public func group(_ name: String) throws -> H5Group {
        guard exists(name) else { throw AttunetError("\(file.path): missing group \(child(name))") }
        let g = H5Gopen2(id, name, chdf5_p_default())
        if g < 0 { throw AttunetError("\(file.path): \(child(name)) is not a group") }
        return H5Group(id: g, file: file, path: child(name))
    }

    /// Creates a group (and missing intermediate groups), or opens it if it exists.
    public func createGroup(_ name: String) throws -> H5Group {
        if exists(name) { return try group(name) }
        let lcpl = H5Pcreate(chdf5_p_link_create())
        defer { H5Pclose(lcpl) }
        H5Pset_create_intermediate_group(lcpl, 1)
        let g = H5Gcreate2(id, name, lcpl, chdf5_p_default(), chdf5_p_default())
        if g < 0 { throw AttunetError("\(file.path): cannot create group \(child(name))") }
        return H5Group(id: g, file: file, path: child(name))
    }

    /// Copies the object `name` (a group with everything below it, or a dataset; chunking and compression kept)
    /// into `destination` as `newName`, creating intermediate groups.
    public func copy(_ name: String, to destination: H5Group, as newName: String) throws {
        let lcpl = H5Pcreate(chdf5_p_link_create())
        defer { H5Pclose(lcpl) }
        H5Pset_create_intermediate_group(lcpl, 1)
        silenceHDF5()
        if H5Ocopy(id, name, destination.id, newName, chdf5_p_default(), lcpl) < 0 {
            if H5FailureCause.current == .checksum {
                throw AttunetError("\(file.path): checksum mismatch in \(child(name))", kind: .corrupt)
            }
            throw destination.file.writeError(
                newName, otherwise: "\(file.path): cannot copy \(child(name)) into \(destination.file.path)")
        }
    }

    /// Names of the direct members, in the order HDF5 keeps them (name order).
    public func members() throws -> [String] {
        var info = H5G_info_t()
        if H5Gget_info(id, &info) < 0 { throw AttunetError("\(location): cannot list members") }
        var names: [String] = []
        for i in 0..<info.nlinks {
            let len = H5Lget_name_by_idx(id, ".", H5_INDEX_NAME, H5_ITER_INC, i, nil, 0, chdf5_p_default())
            if len < 0 { throw AttunetError("\(location): cannot read member name \(i)") }
            var buf = [CChar](repeating: 0, count: Int(len) + 1)
            H5Lget_name_by_idx(id, ".", H5_INDEX_NAME, H5_ITER_INC, i, &buf, Int(len) + 1, chdf5_p_default())
            names.append(cString(buf))
        }
        return names
    }

    public func dataset(_ name: String) throws -> H5Dataset {
        silenceHDF5()
        guard exists(name) else { throw AttunetError("\(file.path): missing dataset \(child(name))") }
        let d = H5Dopen2(id, name, chdf5_p_default())
        if d < 0 {
            throw AttunetError("\(file.path): cannot open dataset \(child(name)) (not a dataset, or unreadable)")
        }
        return try H5Dataset(id: d, file: file, path: child(name))
    }

    /// Creates a dataset. Every dataset but a scalar is chunked and carries HDF5's Fletcher-32 checksum
    /// filter (applied last on write, first on read: h5py and h5dump verify it too, and a read of a damaged
    /// chunk fails with "checksum mismatch"); `chunks` (same rank as shape) sets the chunk shape, by default
    /// the whole dataset in one chunk (split along the first axis past 64 MiB). `deflate` (1-9) adds
    /// shuffle + gzip. Scalars cannot be chunked in HDF5 and so carry no checksum.
    public func createDataset(
        _ name: String, type: H5ElementType, shape: [Int], chunks: [Int]? = nil,
        deflate: Int? = nil
    ) throws -> H5Dataset {
        silenceHDF5()
        var dims = shape.map { hsize_t($0) }
        // Rank 0 is a scalar (PyTorch's 0-dim tensors such as BN's num_batches_tracked).
        let space = dims.isEmpty ? H5Screate(H5S_SCALAR) : H5Screate_simple(Int32(dims.count), &dims, nil)
        defer { H5Sclose(space) }
        let dcpl = H5Pcreate(chdf5_p_dataset_create())
        defer { H5Pclose(dcpl) }
        if !shape.isEmpty {
            let chunks = chunks ?? H5Group.wholeChunks(shape, elementSize: H5Tget_size(type.native))
            precondition(chunks.count == shape.count, "chunk rank must equal dataset rank")
            var c = zip(chunks, shape).map { hsize_t(max(1, min($0, max($1, 1)))) }
            H5Pset_chunk(dcpl, Int32(c.count), &c)
            if let level = deflate {
                H5Pset_shuffle(dcpl)
                H5Pset_deflate(dcpl, UInt32(level))
            }
            H5Pset_fletcher32(dcpl)
        }
        let lcpl = H5Pcreate(chdf5_p_link_create())
        defer { H5Pclose(lcpl) }
        H5Pset_create_intermediate_group(lcpl, 1)
        // No chunk cache for a dataset being written: every chunk reaches the file in `write`, where a full disk
        // is reported, and none waits for the dataset's close (whose failure nobody would see).
        let dapl = H5Pcreate(chdf5_p_dataset_access())
        defer { H5Pclose(dapl) }
        H5Pset_chunk_cache(dapl, 0, 0, 1.0)
        let d = H5Dcreate2(id, name, type.native, space, lcpl, dcpl, dapl)
        if d < 0 { throw file.writeError(child(name), otherwise: "\(file.path): cannot create dataset \(child(name))") }
        return try H5Dataset(id: d, file: file, path: child(name))
    }

    /// The default chunk shape: the whole dataset, split along the first axis when larger than 64 MiB.
    static func wholeChunks(_ shape: [Int], elementSize: Int) -> [Int] {
        let rowBytes = shape.dropFirst().reduce(max(elementSize, 1)) { $0 * max($1, 1) }
        return [max(1, min(shape[0], (64 << 20) / rowBytes))] + shape.dropFirst()
    }

    /// Writes a whole float32 array as a new dataset.
    @discardableResult
    public func write(
        _ name: String, _ values: [Float], shape: [Int], chunks: [Int]? = nil,
        deflate: Int? = nil
    ) throws -> H5Dataset {
        precondition(values.count == shape.reduce(1, *), "write \(name): \(values.count) values for shape \(shape)")
        let d = try createDataset(name, type: .float32, shape: shape, chunks: chunks, deflate: deflate)
        try values.withUnsafeBytes { try d.write(from: $0.baseAddress!, as: .float32) }
        return d
    }
}

/// A dataset: shape, whole reads/writes and hyperslab reads.
public final class H5Dataset: H5Object, @unchecked Sendable {
    public let id: hid_t
    public let file: H5File
    public let path: String
    public let shape: [Int]
    public var location: String { "\(file.path):\(path)" }
    public var count: Int { shape.reduce(1, *) }

    init(id: hid_t, file: H5File, path: String) throws {
        self.id = id
        self.file = file
        self.path = path
        let space = H5Dget_space(id)
        defer { H5Sclose(space) }
        let rank = Int(H5Sget_simple_extent_ndims(space))
        if rank < 0 {
            H5Dclose(id)
            throw AttunetError("\(file.path):\(path): unreadable dataspace")
        }
        var dims = [hsize_t](repeating: 0, count: max(rank, 1))
        if H5Sget_simple_extent_dims(space, &dims, nil) < 0 {
            H5Dclose(id)
            throw AttunetError("\(file.path):\(path): unreadable dataspace", kind: .corrupt)
        }
        // A damaged file can claim any extent: refuse one whose element count does not fit a process (2^48),
        // so `count` and every buffer sized from the shape stay finite.
        var total: UInt64 = 1
        for d in dims.prefix(rank) {
            let (t, overflow) = total.multipliedReportingOverflow(by: d)
            guard !overflow, t <= H5Dataset.maximumCount else {
                H5Dclose(id)
                throw AttunetError(
                    "\(file.path):\(path): implausible dataset extent \(dims.prefix(rank).map(String.init).joined(separator: "x")) (corrupt file?)",
                    kind: .corrupt)
            }
            total = t
        }
        shape = rank == 0 ? [] : dims.prefix(rank).map { Int($0) }
    }

    /// The largest element count a dataset may claim (2^48).
    static let maximumCount: UInt64 = 1 << 48
    deinit { H5Dclose(id) }

    /// True for floating-point storage (float32/float64).
    public var isFloat: Bool {
        let t = H5Dget_type(id)
        defer { H5Tclose(t) }
        return H5Tget_class(t) == H5T_FLOAT
    }

    /// Reads the whole dataset, converted to `type`, into `buffer` (which must hold `count` elements).
    public func read(into buffer: UnsafeMutableRawPointer, as type: H5ElementType) throws {
        silenceHDF5()
        if H5Dread(id, type.native, chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), buffer) < 0 {
            throw file.readError(path, otherwise: "\(location): read failed (corrupt or truncated data)")
        }
    }

    public func write(from buffer: UnsafeRawPointer, as type: H5ElementType) throws {
        silenceHDF5()
        if H5Dwrite(id, type.native, chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), buffer) < 0 {
            throw file.writeError(path, otherwise: "\(location): write failed")
        }
    }

    /// Reads the box `start ..< start+count` (one entry per axis, clipped by the caller to the dataset) into
    /// a contiguous buffer of `count.product` elements. Touches only the chunks the box intersects.
    public func readHyperslab(
        start: [Int], count cnt: [Int], into buffer: UnsafeMutableRawPointer,
        as type: H5ElementType
    ) throws {
        silenceHDF5()
        guard start.count == shape.count, cnt.count == shape.count else {
            throw AttunetError("\(location): hyperslab rank \(start.count) for dataset of rank \(shape.count)")
        }
        for a in 0..<shape.count where start[a] < 0 || cnt[a] < 0 || start[a] + cnt[a] > shape[a] {
            throw AttunetError("\(location): hyperslab \(start)+\(cnt) outside shape \(shape)")
        }
        let fspace = H5Dget_space(id)
        defer { H5Sclose(fspace) }
        var s = start.map { hsize_t($0) }
        var c = cnt.map { hsize_t($0) }
        H5Sselect_hyperslab(fspace, H5S_SELECT_SET, &s, nil, &c, nil)
        let mspace = H5Screate_simple(Int32(c.count), &c, nil)
        defer { H5Sclose(mspace) }
        if H5Dread(id, type.native, mspace, fspace, chdf5_p_default(), buffer) < 0 {
            throw file.readError(path, otherwise: "\(location): hyperslab read failed (corrupt or truncated data)")
        }
    }

    /// Reads the whole dataset as Float.
    public func readFloats() throws -> [Float] {
        var out = [Float](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(into: $0.baseAddress!, as: .float32) }
        return out
    }

    /// Chunk shape, or nil for contiguous layout.
    public var chunks: [Int]? {
        let p = H5Dget_create_plist(id)
        defer { H5Pclose(p) }
        guard H5Pget_layout(p) == H5D_CHUNKED else { return nil }
        var dims = [hsize_t](repeating: 0, count: max(shape.count, 1))
        let n = H5Pget_chunk(p, Int32(dims.count), &dims)
        return n > 0 ? dims.prefix(Int(n)).map { Int($0) } : nil
    }
}

// MARK: - Attributes

extension H5Object {
    public func hasAttribute(_ name: String) -> Bool { H5Aexists(id, name) > 0 }

    private func replaceAttribute(_ name: String, type: hid_t, space: hid_t) throws -> hid_t {
        if H5Aexists(id, name) > 0 { H5Adelete(id, name) }
        let a = H5Acreate2(id, name, type, space, chdf5_p_default(), chdf5_p_default())
        if a < 0 { throw AttunetError("\(location): cannot create attribute \(name)") }
        return a
    }

    /// Stores a variable-length UTF-8 string (what h5py writes for `str`).
    public func setAttribute(_ name: String, _ value: String) throws {
        let t = H5Tcopy(chdf5_c_s1())
        defer { H5Tclose(t) }
        H5Tset_size(t, chdf5_variable())
        H5Tset_cset(t, H5T_CSET_UTF8)
        let space = H5Screate(H5S_SCALAR)
        defer { H5Sclose(space) }
        let a = try replaceAttribute(name, type: t, space: space)
        defer { H5Aclose(a) }
        try value.withCString { cs in
            var p: UnsafePointer<CChar>? = cs
            if H5Awrite(a, t, &p) < 0 { throw AttunetError("\(location): cannot write attribute \(name)") }
        }
    }

    public func setAttribute(_ name: String, _ values: [Double]) throws {
        var dims = [hsize_t(values.count)]
        let space = H5Screate_simple(1, &dims, nil)
        defer { H5Sclose(space) }
        let a = try replaceAttribute(name, type: chdf5_native_double(), space: space)
        defer { H5Aclose(a) }
        if H5Awrite(a, chdf5_native_double(), values) < 0 {
            throw AttunetError("\(location): cannot write attribute \(name)")
        }
    }

    public func setAttribute(_ name: String, _ values: [Int64]) throws {
        var dims = [hsize_t(values.count)]
        let space = H5Screate_simple(1, &dims, nil)
        defer { H5Sclose(space) }
        let a = try replaceAttribute(name, type: chdf5_native_int64(), space: space)
        defer { H5Aclose(a) }
        if H5Awrite(a, chdf5_native_int64(), values) < 0 {
            throw AttunetError("\(location): cannot write attribute \(name)")
        }
    }

    public func setAttribute(_ name: String, _ value: Double) throws { try setAttribute(name, [value]) }
    public func setAttribute(_ name: String, _ value: Int) throws { try setAttribute(name, [Int64(value)]) }

    private func openAttribute(_ name: String) throws -> hid_t {
        silenceHDF5()
        guard H5Aexists(id, name) > 0 else { throw AttunetError("\(location): missing attribute \(name)") }
        let a = H5Aopen(id, name, chdf5_p_default())
        if a < 0 { throw AttunetError("\(location): cannot open attribute \(name)") }
        return a
    }

    /// The number of values of attribute `a` (of `name`); a damaged file's negative or huge count is refused.
    private func attributeCount(_ a: hid_t, _ name: String) throws -> Int {
        let s = H5Aget_space(a)
        defer { H5Sclose(s) }
        let n = Int(H5Sget_simple_extent_npoints(s))
        guard n >= 0, n <= 1 << 24 else {
            throw AttunetError(
                "\(location): attribute \(name) has an unreadable or implausible size (\(n) values)", kind: .corrupt)
        }
        return n
    }

    public func stringAttribute(_ name: String) throws -> String {
        let a = try openAttribute(name)
        defer { H5Aclose(a) }
        let ft = H5Aget_type(a)
        defer { H5Tclose(ft) }
        guard H5Tget_class(ft) == H5T_STRING else {
            throw AttunetError("\(location): attribute \(name) is not a string")
        }
        if H5Tis_variable_str(ft) > 0 {
            let mt = H5Tcopy(chdf5_c_s1())
            defer { H5Tclose(mt) }
            H5Tset_size(mt, chdf5_variable())
            H5Tset_cset(mt, H5Tget_cset(ft))
            var p: UnsafeMutablePointer<CChar>? = nil
            if H5Aread(a, mt, &p) < 0 { throw AttunetError("\(location): cannot read attribute \(name)") }
            defer { if let p { H5free_memory(p) } }
            return p.map { String(cString: $0) } ?? ""
        }
        let size = H5Tget_size(ft)
        var buf = [CChar](repeating: 0, count: size + 1)
        if H5Aread(a, ft, &buf) < 0 { throw AttunetError("\(location): cannot read attribute \(name)") }
        return cString(buf)
    }

    public func doublesAttribute(_ name: String) throws -> [Double] {
        let a = try openAttribute(name)
        defer { H5Aclose(a) }
        var out = [Double](repeating: 0, count: try attributeCount(a, name))
        if H5Aread(a, chdf5_native_double(), &out) < 0 {
            throw AttunetError("\(location): attribute \(name) is not numeric")
        }
        return out
    }

    public func intsAttribute(_ name: String) throws -> [Int64] {
        let a = try openAttribute(name)
        defer { H5Aclose(a) }
        var out = [Int64](repeating: 0, count: try attributeCount(a, name))
        if H5Aread(a, chdf5_native_int64(), &out) < 0 {
            throw AttunetError("\(location): attribute \(name) is not an integer")
        }
        return out
    }

    public func doubleAttribute(_ name: String) throws -> Double {
        let v = try doublesAttribute(name)
        guard let f = v.first else { throw AttunetError("\(location): attribute \(name) is empty") }
        return f
    }

    public func intAttribute(_ name: String) throws -> Int {
        let v = try intsAttribute(name)
        guard let f = v.first else { throw AttunetError("\(location): attribute \(name) is empty") }
        return Int(f)
    }
}

/// Version of the HDF5 library linked in, e.g. "1.10.8".
public var hdf5LibraryVersion: String {
    var a: UInt32 = 0
    var b: UInt32 = 0
    var c: UInt32 = 0
    _ = chdf5_version(&a, &b, &c)
    return "\(a).\(b).\(c)"
}

/// A Swift string from a NUL-terminated C buffer.
func cString(_ buf: [CChar]) -> String {
    buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
}
