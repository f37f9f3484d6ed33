import CMPI
import Foundation
import Support

/// Collective operations the trainer needs. `MPICommunicator` runs them over MPI; `LocalCommunicator` is the
/// single-process identity, so every code path runs the same with or without mpirun.
public protocol Communicator: AnyObject, Sendable {
    var rank: Int { get }
    var size: Int { get }
    /// In-place element-wise sum over all ranks.
    func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws
    func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws
    func allReduceMax(_ buffer: UnsafeMutableBufferPointer<Double>) throws
    /// Copies `buffer` on `root` into `buffer` on every rank.
    func broadcast(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws
    func broadcast(bytes: UnsafeMutableRawBufferPointer, root: Int) throws
    /// Gathers equal-sized byte blocks from every rank, concatenated in rank order, on every rank.
    func allGather(bytes: UnsafeRawBufferPointer) throws -> [UInt8]
    func barrier() throws
    /// Splits the ranks into groups by `color`, ranked by `key` within a group; every rank calls it. Each group
    /// gets its own communicator, whose collectives involve only the group.
    func subgroup(color: Int, key: Int) throws -> any Communicator
}

extension Communicator {
    public var isRoot: Bool { rank == 0 }

    /// Broadcasts a `Codable` value from `root` (length first, then the JSON bytes).
    public func broadcast<T: Codable>(_ value: T?, root: Int = 0) throws -> T {
        var data = rank == root ? try JSONEncoder().encode(value!) : Data()
        var length = [Double(data.count)]
        try length.withUnsafeMutableBufferPointer { try allReduceMax($0) }
        var bytes = [UInt8](repeating: 0, count: Int(length[0]))
        if rank == root { bytes = [UInt8](data) }
        try bytes.withUnsafeMutableBytes { try broadcast(bytes: $0, root: root) }
        data = Data(bytes)
        return try JSONDecoder().decode(T.self, from: data)
    }

    /// Gathers one variable-length byte string from every rank, in rank order, on every rank.
    public func allGather(data: Data) throws -> [Data] {
        var n = [Double(data.count)]
        try n.withUnsafeMutableBufferPointer { try allReduceMax($0) }
        let width = Int(n[0]) + 8
        var block = [UInt8](repeating: 0, count: width)
        withUnsafeBytes(of: Int64(data.count).littleEndian) { for i in 0..<8 { block[i] = $0[i] } }
        block.replaceSubrange(8..<(8 + data.count), with: data)
        let all = try block.withUnsafeBytes { try allGather(bytes: $0) }
        return (0..<size).map { r in
            let b = all[(r * width)..<((r + 1) * width)]
            let len = b.prefix(8).withUnsafeBytes { Int(Int64(littleEndian: $0.loadUnaligned(as: Int64.self))) }
            return Data(b.dropFirst(8).prefix(len))
        }
    }

    /// Sum of one number over all ranks.
    public func sum(_ x: Double) throws -> Double {
        var v = [x]
        try v.withUnsafeMutableBufferPointer { try allReduceSum($0) }
        return v[0]
    }
}

/// The single-process communicator: rank 0 of 1, every collective is the identity.
public final class LocalCommunicator: Communicator, @unchecked Sendable {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {}
    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {}
    public func allReduceMax(_ buffer: UnsafeMutableBufferPointer<Double>) throws {}
    public func broadcast(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws {}
    public func broadcast(bytes: UnsafeMutableRawBufferPointer, root: Int) throws {}
    public func allGather(bytes: UnsafeRawBufferPointer) throws -> [UInt8] { [UInt8](bytes) }
    public func barrier() throws {}
    public func subgroup(color: Int, key: Int) throws -> any Communicator { LocalCommunicator() }
}

@inline(__always)
func check(_ rc: Int32, _ what: String) throws {
    if rc != cmpi_success() {
        var buf = [CChar](repeating: 0, count: 512)
        _ = cmpi_error_string(rc, &buf, 512)
        throw AttunetError("MPI \(what) failed: \(cString(buf))")
    }
}

/// MPI over a communicator (MPI_COMM_WORLD by default). Counts above Int32.max are sent in pieces.
public final class MPICommunicator: Communicator, @unchecked Sendable {
    public let comm: MPI_Comm
    public let rank: Int
    public let size: Int
    private static let maxCount = 1 << 30

    /// World communicator; initialises MPI (thread level SERIALIZED, ``MPIRuntime/initialize()``) on first use.
    public convenience init() throws {
        try MPIRuntime.initialize()
        self.init(comm: cmpi_comm_world())
    }

    public init(comm: MPI_Comm) {
        self.comm = comm
        _ = cmpi_errors_return(comm)
        rank = Int(cmpi_comm_rank(comm))
        size = Int(cmpi_comm_size(comm))
    }

    /// Splits this communicator into groups by `color` (ranks ordered by `key`).
    public func split(color: Int, key: Int) throws -> MPICommunicator {
        var out: MPI_Comm? = cmpi_comm_null()
        try check(cmpi_comm_split(comm, Int32(color), Int32(key), &out), "Comm_split")
        return MPICommunicator(comm: out!)
    }

    public func subgroup(color: Int, key: Int) throws -> any Communicator { try split(color: color, key: key) }

    private func pieces<T>(
        _ buffer: UnsafeMutableBufferPointer<T>, _ body: (UnsafeMutablePointer<T>, Int) throws -> Void
    ) rethrows {
        var offset = 0
        while offset < buffer.count {
            let n = min(Self.maxCount, buffer.count - offset)
            try body(buffer.baseAddress! + offset, n)
            offset += n
        }
    }

    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        guard size > 1 else { return }
        try pieces(buffer) { p, n in try collective("Allreduce") { cmpi_allreduce_sum_f32(comm, p, n) } }
    }
    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {
        guard size > 1 else { return }
        try pieces(buffer) { p, n in try collective("Allreduce") { cmpi_allreduce_sum_f64(comm, p, n) } }
    }
    public func allReduceMax(_ buffer: UnsafeMutableBufferPointer<Double>) throws {
        guard size > 1 else { return }
        try pieces(buffer) { p, n in try collective("Allreduce") { cmpi_allreduce_max_f64(comm, p, n) } }
    }
    public func broadcast(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws {
        guard size > 1 else { return }
        try pieces(buffer) { p, n in try collective("Bcast") { cmpi_bcast_f32(comm, p, n, Int32(root)) } }
    }
    public func broadcast(bytes: UnsafeMutableRawBufferPointer, root: Int) throws {
        guard size > 1, bytes.count > 0 else { return }
        try pieces(bytes.bindMemory(to: UInt8.self)) { p, n in
            try collective("Bcast") { cmpi_bcast_bytes(comm, p, n, Int32(root)) }
        }
    }
    public func allGather(bytes: UnsafeRawBufferPointer) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: bytes.count * size)
        try out.withUnsafeMutableBytes { o in
            try collective("Allgather") { cmpi_allgather_bytes(comm, bytes.baseAddress, bytes.count, o.baseAddress) }
        }
        return out
    }
    public func barrier() throws { try collective("Barrier") { cmpi_barrier(comm) } }

    /// Runs one collective MPI call under the ``CollectiveWatchdog`` and turns its error code into an error.
    private func collective(_ name: String, _ call: () -> Int32) throws {
        try CollectiveWatchdog.shared.watch(name) { try check(call(), name) }
    }

    /// Ends the whole job from any rank (use after printing the error on this rank).
    public func abort(code: Int32) -> Never {
        _ = cmpi_abort(comm, code)
        exit(code)
    }
}

/// Process-wide MPI state: one init, one finalize.
public enum MPIRuntime {
    nonisolated(unsafe) private static var providedLevel: Int32 = -1

    /// Initialises MPI once per process. Works as a singleton without mpirun.
    ///
    /// It asks for `MPI_THREAD_SERIALIZED`: any thread may call MPI, one at a time. The main thread makes
    /// every call except the gradient all-reduce of a training step, which a ``CommunicationThread`` runs
    /// while the main thread computes the backward pass (the two never call MPI at the same time). Open MPI
    /// treats SERIALIZED like FUNNELED internally (no locks; only MULTIPLE adds them), so it costs nothing.
    public static func initialize() throws {
        if cmpi_initialized() != 0 { return }
        var provided: Int32 = 0
        try check(cmpi_init_thread(cmpi_thread_serialized(), &provided), "Init_thread")
        providedLevel = provided
    }

    /// Whether a thread other than the main one may call MPI (the level granted is SERIALIZED or
    /// MULTIPLE), as a ``CommunicationThread`` does. True while MPI is not initialised (nothing to guard).
    public static var allowsCommunicationThread: Bool {
        guard isInitialized else { return true }
        return cmpi_query_thread() >= cmpi_thread_serialized()
    }

    public static var isInitialized: Bool { cmpi_initialized() != 0 && cmpi_finalized() == 0 }

    /// This process's rank in MPI_COMM_WORLD; 0 while MPI is not initialised.
    public static var worldRank: Int { isInitialized ? Int(cmpi_comm_rank(cmpi_comm_world())) : 0 }

    /// Thread level MPI granted, as text ("FUNNELED", ...).
    public static var threadLevel: String {
        let p = isInitialized ? cmpi_query_thread() : providedLevel
        switch p {
        case cmpi_thread_single(): return "SINGLE"
        case cmpi_thread_funneled(): return "FUNNELED"
        case cmpi_thread_serialized(): return "SERIALIZED"
        case cmpi_thread_multiple(): return "MULTIPLE"
        default: return "unknown"
        }
    }

    /// "Open MPI v4.1.4, ..." (first line only).
    public static var libraryVersion: String {
        var buf = [CChar](repeating: 0, count: 512)
        _ = cmpi_library_version(&buf, 512)
        let s = cString(buf)
        return s.split(separator: ",").first.map(String.init) ?? s
    }

    public static var processorName: String {
        var buf = [CChar](repeating: 0, count: 512)
        _ = cmpi_processor_name(&buf, 512)
        return cString(buf)
    }

    public static func finalize() {
        if isInitialized { _ = cmpi_finalize() }
    }

    /// Finalizes after an error, without hanging when the error was this rank's alone. MPI_Finalize waits for
    /// every rank: when all met the same error it returns at once and the caller exits quietly (rank 0 has
    /// printed). When it has not returned after `seconds`, the other ranks are busy or blocked in a collective
    /// this rank will never join: a rank other than 0 then prints its own error, prefixed with its rank (rank 0
    /// printed it already), and the process ends with `status` without finalizing, which makes mpirun end the
    /// job instead of leaving the others waiting forever.
    public static func finalizeAfterError(lines: [String], status: Int32, within seconds: Double = 5) {
        guard isInitialized else { return }
        let rank = worldRank
        let size = Int(cmpi_comm_size(cmpi_comm_world()))
        guard size > 1 else {
            finalize()
            return
        }
        let done = Locked(false)
        let guardThread = Thread {
            Thread.sleep(forTimeInterval: seconds)
            guard !done.current else { return }
            if rank != 0 {
                let text = lines.map { "error: rank \(rank): \($0)\n" }.joined()
                FileHandle.standardError.write(Data(text.utf8))
            }
            FileHandle.standardError.write(
                Data(
                    "error: rank \(rank): the other ranks did not end with it within \(Int(seconds)) s; ending the job\n"
                        .utf8))
            _exit(status)
        }
        guardThread.start()
        _ = cmpi_finalize()
        done.withLock { $0 = true }
    }

    public static func wtime() -> Double { cmpi_wtime() }
}

/// A Swift string from a NUL-terminated C buffer.
func cString(_ buf: [CChar]) -> String {
    buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
}
