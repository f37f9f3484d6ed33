import CHDF5
import Foundation
import Support

#if canImport(Glibc)
    import Glibc
#endif

/// The probe of an HDF5 file in a child process before this process opens it (``H5File/probe``).
///
/// Damaged metadata can crash (SIGSEGV in `H5HG_read` through a damaged global-heap reference), hang or
/// exhaust memory inside libhdf5 1.10 itself, where no check of attunet's can come first. So the child reads
/// everything that decodes metadata: it opens the file, visits every object, reads every attribute in full
/// (variable-length strings too), and for every dataset its type, dataspace and filters, when chunked its
/// whole chunk index, and its data (a damaged chunk record crashes libhdf5 in the read). It runs under a memory limit (``memoryLimit``) and a time limit
/// (``timeout(forFileSize:)``). If the child crashes, runs out of time or memory, or meets an error, the file is
/// refused with one line naming it; only a file that passed is opened here.
public enum H5Probe {
    /// The child's address-space limit (RLIMIT_AS): a damaged size that makes HDF5 allocate more fails there.
    /// Reading a sound file's metadata takes tens of MB (35 MB resident for a checkpoint; the child starts under
    /// 256 MiB); a damaged one can make HDF5 fill all it is allowed before it fails, and every MPI rank probes
    /// the same file at once, so the limit is ample but not more: 2 GiB.
    public static let memoryLimit: UInt64 = 2 << 30

    /// How long the parent waits for the child: 20 s plus 1 s per 100 MB of file, or
    /// `ATTUNET_HDF5_PROBE_TIMEOUT` seconds when that is set.
    public static func timeout(forFileSize bytes: UInt64) -> Double {
        if let s = ProcessInfo.processInfo.environment["ATTUNET_HDF5_PROBE_TIMEOUT"], let t = Double(s), t > 0 {
            return t
        }
        return 20 + Double(bytes / 100_000_000)
    }

    /// A hook for ``H5File/probe`` that runs `command + [path]` (an executable that runs ``childMain(_:)``
    /// on its last argument: attunet installs `/proc/self/exe probe-hdf5`) and refuses the file unless it passed.
    public static func inChildProcess(_ command: [String]) -> @Sendable (String) throws -> Void {
        { path in
            var st = stat()
            let size = stat(path, &st) == 0 ? UInt64(st.st_size) : 0
            let timeout = timeout(forFileSize: size)
            if let e = error(for: try ChildProcess.run(command + [path], timeout: timeout), path: path) { throw e }
        }
    }

    /// The child's exit status when it ran out of memory (under ``memoryLimit``).
    static let outOfMemoryStatus: Int32 = 3

    /// What an outcome of the child means for `path`: nil when the file passed, else the one-line error.
    /// The child reports its own clean failures as one line on stderr (exit status 1).
    public static func error(for outcome: ChildProcess.Outcome, path: String) -> AttunetError? {
        let reason: String
        switch outcome {
        case .exited(0, _):
            return nil
        case .exited(1, let text) where !firstLine(text).isEmpty:
            return AttunetError("\(path): \(firstLine(text))", kind: .corrupt)
        case .exited(outOfMemoryStatus, _):
            reason = "needed more than \(memoryLimit >> 30) GiB"
        case .exited(let status, _):
            reason = "the probe reading it exited with status \(status)"
        case .signaled(let signal, _):
            reason = "HDF5 \(hdf5LibraryVersion) crashed reading it: signal \(signal) in the probe"
        case .timedOut(let seconds):
            reason =
                "reading it did not finish within \(String(format: "%g", seconds)) s; "
                + "if the file is sound but slow to read, set ATTUNET_HDF5_PROBE_TIMEOUT to more seconds"
        }
        return AttunetError("\(path): damaged HDF5 metadata (\(reason))", kind: .corrupt)
    }

    private static func firstLine(_ text: String) -> String {
        let line = text.split(separator: "\n", omittingEmptySubsequences: true).first.map(String.init) ?? ""
        return line.hasPrefix("error: ") ? String(line.dropFirst(7)) : line
    }

    /// The child's whole life: limits its memory, runs ``walk(_:)`` on `path` and exits, 0 when the file
    /// passed, else with one line on stderr ("damaged HDF5 metadata (…)") and status 1, or status 3 when it ran
    /// out of memory. Exits with `_exit`: no exit handler of a library that met a damaged file runs.
    public static func childMain(_ path: String) -> Never {
        let resource = __rlimit_resource_t(RLIMIT_AS.rawValue)
        var limit = rlimit()
        if getrlimit(resource, &limit) == 0 {
            let cap = min(rlim_t(memoryLimit), limit.rlim_max)  // RLIM_INFINITY is the largest value
            limit = rlimit(rlim_cur: cap, rlim_max: cap)
            setrlimit(resource, &limit)
        }
        let status: Int32
        do {
            try walk(path)
            status = 0
        } catch let e as ProbeFailure {
            status = e == .outOfMemory ? outOfMemoryStatus : 1
            if case .failed(let message) = e { FileHandle.standardError.write(Data((message + "\n").utf8)) }
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            status = 1
        }
        _exit(status)
    }

    /// Why a walk stopped.
    enum ProbeFailure: Error, Equatable {
        /// The message of the error line, without the file.
        case failed(String)
        case outOfMemory
    }

    /// Reads all of `path`'s metadata in this process (what the child runs): every object, every attribute in
    /// full, every dataset's type, dataspace, filters and chunk index. Throws ``ProbeFailure``.
    public static func walk(_ path: String) throws {
        silenceHDF5()
        let file = H5Fopen(path, chdf5_acc_rdonly(), chdf5_p_default())
        guard file >= 0 else { throw ProbeFailure.failed(H5File.cannotOpenMessage) }
        defer { H5Fclose(file) }
        let walker = Walker()
        let visited = withExtendedLifetime(walker) {
            H5Ovisit2(
                file, H5_INDEX_NAME, H5_ITER_NATIVE,
                { obj, name, _, data in
                    let walker = Unmanaged<Walker>.fromOpaque(data!).takeUnretainedValue()
                    let name = name.map { String(cString: $0) } ?? "."
                    do { try walker.visit(obj, name) } catch {
                        walker.failure = error as? ProbeFailure
                        return -1
                    }
                    return 0
                }, Unmanaged.passUnretained(walker).toOpaque(), UInt32(H5O_INFO_BASIC))
        }
        if let f = walker.failure { throw f }
        if visited < 0 { throw Walker.failure("cannot list the objects", at: "/") }
    }

    /// One walk's state: the first failure, kept while HDF5's visit unwinds.
    private final class Walker {
        var failure: ProbeFailure?

        static func failure(_ what: String, at object: String) -> ProbeFailure {
            chdf5_error_is_allocation_failure() != 0
                ? .outOfMemory : .failed("damaged HDF5 metadata (\(what) of \(object))")
        }

        func visit(_ parent: hid_t, _ name: String) throws {
            let object = name == "." ? "/" : "/" + name
            let o = H5Oopen(parent, name, chdf5_p_default())
            guard o >= 0 else { throw Self.failure("cannot open the object", at: object) }
            defer { H5Oclose(o) }
            var info = H5O_info_t()
            guard H5Oget_info2(o, &info, UInt32(H5O_INFO_BASIC | H5O_INFO_NUM_ATTRS)) >= 0 else {
                throw Self.failure("cannot read the object header", at: object)
            }
            for i in 0..<hsize_t(info.num_attrs) { try readAttribute(o, i, of: object) }
            switch info.type {
            case H5O_TYPE_DATASET: try checkDataset(o, object)
            case H5O_TYPE_GROUP:
                var g = H5G_info_t()
                guard H5Gget_info(o, &g) >= 0 else { throw Self.failure("cannot read the group's links", at: object) }
            default: break
            }
        }

        /// Reads attribute `i` of `o` whole, in its native memory type; variable-length data is reclaimed.
        private func readAttribute(_ o: hid_t, _ i: hsize_t, of object: String) throws {
            let a = H5Aopen_by_idx(o, ".", H5_INDEX_NAME, H5_ITER_INC, i, chdf5_p_default(), chdf5_p_default())
            guard a >= 0 else { throw Self.failure("cannot open attribute \(i)", at: object) }
            defer { H5Aclose(a) }
            var nameBuffer = [CChar](repeating: 0, count: 256)
            let attribute =
                H5Aget_name(a, nameBuffer.count, &nameBuffer) >= 0
                ? "attribute " + cString(nameBuffer) : "attribute \(i)"
            let fileType = H5Aget_type(a)
            guard fileType >= 0 else { throw Self.failure("cannot read the type of \(attribute)", at: object) }
            defer { H5Tclose(fileType) }
            let native = H5Tget_native_type(fileType, H5T_DIR_ASCEND)
            let memoryType = native >= 0 ? native : H5Tcopy(fileType)
            guard memoryType >= 0 else { throw Self.failure("cannot read the type of \(attribute)", at: object) }
            defer { H5Tclose(memoryType) }
            let space = H5Aget_space(a)
            guard space >= 0 else { throw Self.failure("cannot read the dataspace of \(attribute)", at: object) }
            defer { H5Sclose(space) }
            let count = H5Sget_simple_extent_npoints(space)
            let size = H5Tget_size(memoryType)
            guard count >= 0, size > 0 else { throw Self.failure("cannot read the size of \(attribute)", at: object) }
            let (bytes, overflow) = Int(count).multipliedReportingOverflow(by: size)
            guard !overflow, UInt64(bytes) < memoryLimit, let buffer = calloc(max(bytes, 1), 1) else {
                throw ProbeFailure.outOfMemory
            }
            defer { free(buffer) }
            guard H5Aread(a, memoryType, buffer) >= 0 else {
                throw Self.failure("cannot read \(attribute)", at: object)
            }
            if H5Tdetect_class(memoryType, H5T_VLEN) > 0 || H5Tis_variable_str(memoryType) > 0 {
                H5Dvlen_reclaim(memoryType, space, chdf5_p_default(), buffer)
            }
        }

        /// A dataset's type, dataspace, creation properties (layout, filters) and, when chunked, its chunk
        /// index, every record of it (`H5Dget_num_chunks` walks the index).
        private func checkDataset(_ d: hid_t, _ object: String) throws {
            let type = H5Dget_type(d)
            guard type >= 0, H5Tget_size(type) > 0 else {
                if type >= 0 { H5Tclose(type) }
                throw Self.failure("cannot read the datatype", at: object)
            }
            H5Tclose(type)
            let space = H5Dget_space(d)
            guard space >= 0 else { throw Self.failure("cannot read the dataspace", at: object) }
            defer { H5Sclose(space) }
            guard H5Sget_simple_extent_ndims(space) >= 0, H5Sget_simple_extent_npoints(space) >= 0 else {
                throw Self.failure("cannot read the dataspace", at: object)
            }
            let plist = H5Dget_create_plist(d)
            guard plist >= 0 else { throw Self.failure("cannot read the creation properties", at: object) }
            defer { H5Pclose(plist) }
            let filters = H5Pget_nfilters(plist)
            guard filters >= 0 else { throw Self.failure("cannot read the filters", at: object) }
            for f in 0..<UInt32(filters) {
                var flags: UInt32 = 0
                var values = [UInt32](repeating: 0, count: 16)
                var valueCount = values.count
                var filterName = [CChar](repeating: 0, count: 64)
                var config: UInt32 = 0
                guard
                    H5Pget_filter2(plist, f, &flags, &valueCount, &values, filterName.count, &filterName, &config) >= 0
                else {
                    throw Self.failure("cannot read filter \(f)", at: object)
                }
            }
            if H5Pget_layout(plist) == H5D_CHUNKED {
                var chunks: hsize_t = 0
                guard H5Dget_num_chunks(d, space, &chunks) >= 0 else {
                    throw Self.failure("cannot read the chunk index", at: object)
                }
            }
            try readData(d, space: space, object)
        }

        /// Reads the dataset's data in its native type, in slabs of at most 64 MB along its first axis: a damaged
        /// chunk record (a size or address) makes libhdf5 copy from wild addresses while reading or inflating,
        /// which only a read finds. A read that fails cleanly is not the probe's to report (see below).
        private func readData(_ d: hid_t, space: hid_t, _ object: String) throws {
            let type = H5Dget_type(d)
            guard type >= 0 else { throw Self.failure("cannot read the datatype", at: object) }
            defer { H5Tclose(type) }
            let native = H5Tget_native_type(type, H5T_DIR_ASCEND)
            guard native >= 0 else { throw Self.failure("cannot read the datatype", at: object) }
            defer { H5Tclose(native) }
            // Variable-length data (strings) has no fixed size to read into; its heap references were read with
            // the attributes' kind of checks, and attunet writes none in datasets.
            guard H5Tdetect_class(native, H5T_VLEN) <= 0, H5Tis_variable_str(native) <= 0 else { return }
            let rank = Int(H5Sget_simple_extent_ndims(space))
            let size = H5Tget_size(native)
            guard rank >= 0, size > 0 else { throw Self.failure("cannot read the dataspace", at: object) }
            if rank == 0 {
                guard let buffer = calloc(max(size, 1), 1) else { throw ProbeFailure.outOfMemory }
                defer { free(buffer) }
                // a clean failure: as below
                _ = H5Dread(d, native, chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), buffer)
                return
            }
            var dims = [hsize_t](repeating: 0, count: rank)
            guard H5Sget_simple_extent_dims(space, &dims, nil) == rank else {
                throw Self.failure("cannot read the dataspace", at: object)
            }
            guard dims.allSatisfy({ $0 > 0 }) else { return }
            var rowBytes = UInt64(size)
            for n in dims.dropFirst() {
                let (r, overflow) = rowBytes.multipliedReportingOverflow(by: UInt64(n))
                guard !overflow, r < memoryLimit / 2 else { throw ProbeFailure.outOfMemory }
                rowBytes = r
            }
            let rowsPerSlab = max(1, (64 << 20) / rowBytes)
            guard let buffer = malloc(Int(rowBytes * min(rowsPerSlab, UInt64(dims[0])))) else {
                throw ProbeFailure.outOfMemory
            }
            defer { free(buffer) }
            var first: hsize_t = 0
            while first < dims[0] {
                var start = [hsize_t](repeating: 0, count: rank)
                var count = dims
                start[0] = first
                count[0] = min(hsize_t(rowsPerSlab), dims[0] - first)
                let fileSpace = H5Scopy(space)
                let memorySpace = H5Screate_simple(Int32(rank), &count, nil)
                defer {
                    H5Sclose(fileSpace)
                    H5Sclose(memorySpace)
                }
                // A read that fails cleanly (a checksum mismatch, a damaged deflate stream) is left to the reader
                // in the parent, which names what failed; the probe is after crashes and hangs.
                guard fileSpace >= 0, memorySpace >= 0,
                    H5Sselect_hyperslab(fileSpace, H5S_SELECT_SET, &start, nil, &count, nil) >= 0,
                    H5Dread(d, native, memorySpace, fileSpace, chdf5_p_default(), buffer) >= 0
                else { return }
                first += count[0]
            }
        }
    }
}
