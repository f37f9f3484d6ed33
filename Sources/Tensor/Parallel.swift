import CBLAS
import CThreadPool
import Foundation
import Support

/// Threads used by `parallelFor` inside one process (one MPI rank). 1 by default: with one rank per core,
/// ranks provide the parallelism; a rank given several cores (`--threads`) spreads every layer over them.
public enum Parallelism {
    /// Setting it also makes OpenBLAS single-threaded: every sgemm attunet calls runs inside its own parallel
    /// loops as one work item, and an OpenBLAS starting threads of its own there would oversubscribe the cores
    /// (T loop threads x T BLAS threads, contending for OpenBLAS's one thread server).
    nonisolated(unsafe) public static var threads: Int = 1 {
        didSet { openblas_set_num_threads(1) }
    }

    /// True on a worker thread of `parallelForEach` or inside an item of `parallelFor`, where `parallelFor` runs
    /// inline: the items already occupy the threads.
    public static var isInsideWorker: Bool { pthread_getspecific(workerKey) != nil || ctp_inside() != 0 }

    /// Inside an item of `parallelFor`: which of its threads runs it, in 0..<threads (for per-thread scratch).
    public static var threadIndex: Int { Int(ctp_thread_index()) }

    fileprivate static let workerKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()
}

/// Runs `body(i)` for i in 0..<n on up to `Parallelism.threads` threads: the calling thread and the persistent
/// workers of CThreadPool, which claim items one at a time (inline when that is 1 thread, when n is 1, or
/// inside an item or a `parallelForEach` worker). For loops over voxels and channels; the body must write
/// disjoint memory per item, and what it computes must not depend on which thread runs it.
@inlinable
public func parallelFor(_ n: Int, _ body: (Int) -> Void) {
    if LoopCount.record(n) { return }
    let t = min(Parallelism.threads, n)
    if t <= 1 || Parallelism.isInsideWorker {
        for i in 0..<n { body(i) }
        return
    }
    withoutActuallyEscaping(body) { body in
        var item = body
        withUnsafeMutablePointer(to: &item) { context in
            ctp_parallel_for(
                n, Int32(t),
                { context, i in
                    context!.assumingMemoryBound(to: ((Int) -> Void).self).pointee(i)
                }, context)
        }
    }
}

/// Elements per piece of `parallelForPieces` (16 KB of floats): the unit of its partition, fixed, so that
/// per-piece partial sums are the same on any number of threads.
public let parallelPieceLength = 4096

/// Runs `body(plane, range)` over `planes` planes of `length` elements each, every plane cut into pieces of at
/// most ``parallelPieceLength`` elements. Runs of consecutive pieces form the work items, about 8 per thread
/// (at most 64 pieces each), so a small tensor still gives every one of 32-64 threads work and a large one
/// does not pay a dispatch per piece. The pieces do not depend on the thread count: per-piece partial sums
/// reduced in piece order give the same result on any number of threads.
@inlinable
public func parallelForPieces(planes: Int, length: Int, _ body: (_ plane: Int, _ range: Range<Int>) -> Void) {
    let pieces = pieceCount(length)
    let total = planes * pieces
    guard total > 0 else { return }
    let perItem = max(1, min(64, total / max(1, 8 * Parallelism.threads)))
    parallelFor((total + perItem - 1) / perItem) { item in
        for j in (item * perItem)..<min(total, (item + 1) * perItem) {
            let lo = (j % pieces) * parallelPieceLength
            body(j / pieces, lo..<min(length, lo + parallelPieceLength))
        }
    }
}

/// The number of pieces `parallelForPieces` cuts a plane of `length` elements into.
@inlinable
public func pieceCount(_ length: Int) -> Int { max(1, (length + parallelPieceLength - 1) / parallelPieceLength) }

/// How the layers cut their work into items for `parallelFor`: from the shape alone, never from the thread count,
/// so that what an item computes (and so every result, partial sums included) is the same on any number of
/// threads. A cut aims at ``targetItems`` items (4 per thread on 32 threads: enough for the threads that finish
/// early to take over the items of a slow one), and stops earlier where an item would get less than
/// ``minimumItemWork`` units of work (a dispatch would then cost more than it saves).
public enum WorkSplit {
    /// 4 items per thread at 32 threads.
    public static let targetItems = 128
    /// The fewest multiply-adds (or element operations) an item is worth.
    public static let minimumItemWork = 1 << 16

    /// Items for `work` units: `targetItems`, fewer when `work / minimumItemWork` is smaller, at least 1.
    public static func wantedItems(work: Double) -> Int {
        max(1, min(targetItems, Int(work / Double(minimumItemWork))))
    }

    /// How many parts to cut each dimension into: dimension d into at most `limits[d]` parts, the earlier
    /// dimensions first (each takes what it can of the rest of the wanted items), until their product reaches
    /// `wantedItems(work:)`.
    public static func parts(work: Double, limits: [Int]) -> [Int] {
        let wanted = wantedItems(work: work)
        var product = 1
        return limits.map { limit in
            let p = max(1, min(limit, (wanted + product - 1) / product))
            product *= p
            return p
        }
    }
}

/// 0..<count cut into `parts` near-equal ranges whose inner boundaries are multiples of `align` (16 floats: items
/// then write different cache lines of a row that starts on one), fewer when `count` has fewer aligned units.
public func alignedRanges(_ count: Int, parts: Int, align: Int) -> [Range<Int>] {
    let a = max(1, align)
    let units = (count + a - 1) / a
    return splitRange(units, parts: max(1, parts)).map { r in
        min(count, r.lowerBound * a)..<min(count, r.upperBound * a)
    }.filter { !$0.isEmpty }
}

/// Runs `body(i)` for i in 0..<n on `threads` threads (worker w takes items w, w + threads, ...), for coarse
/// items such as whole cases or patches; `parallelFor` inside `body` runs inline. Every item runs even when
/// some throw; then the error of the lowest failing item is rethrown.
public func parallelForEach(_ n: Int, threads: Int, _ body: (Int) throws -> Void) throws {
    let workers = max(1, min(threads, n))
    if workers == 1 {
        let outer = pthread_getspecific(Parallelism.workerKey)
        pthread_setspecific(Parallelism.workerKey, UnsafeRawPointer(bitPattern: 1))
        defer { pthread_setspecific(Parallelism.workerKey, outer) }
        var first: Error?
        for i in 0..<n {
            do { try body(i) } catch { if first == nil { first = error } }
        }
        if let first { throw first }
        return
    }
    let failures = Locked([(Int, Error)]())
    withoutActuallyEscaping(body) { body in
        let box = UncheckedSendable(body)
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            pthread_setspecific(Parallelism.workerKey, UnsafeRawPointer(bitPattern: 1))
            defer { pthread_setspecific(Parallelism.workerKey, nil) }
            for i in stride(from: w, to: n, by: workers) {
                do { try box.value(i) } catch { failures.withLock { $0.append((i, error)) } }
            }
        }
    }
    if let first = failures.current.min(by: { $0.0 < $1.0 }) { throw first.1 }
}

/// How finely the parallel loops run on one thread split their work: the number of loops and the fewest items
/// any of them had, counted between ``start()`` and ``stop()`` on that thread (the per-layer profile counts a
/// layer's passes; `attunet bench train` prints items per thread). Counting costs one thread-local read per loop.
public enum LoopCount {
    public struct Counts: Sendable, Codable, Equatable {
        public var loops = 0
        public var fewestItems = Int.max
        public init() {}
    }

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    /// Starts counting the loops this thread runs (the counts of an unfinished count are dropped).
    public static func start() {
        let p =
            pthread_getspecific(key).map { $0.assumingMemoryBound(to: Counts.self) }
            ?? {
                let p = UnsafeMutablePointer<Counts>.allocate(capacity: 1)  // one per counting thread, kept
                pthread_setspecific(key, p)
                return p
            }()
        p.pointee = Counts()
        active = true
    }

    /// The counts since ``start()`` on this thread.
    public static func stop() -> Counts {
        guard let p = pthread_getspecific(key)?.assumingMemoryBound(to: Counts.self) else { return Counts() }
        return p.pointee
    }

    /// Whether any thread ever counted: until then a loop pays one load and a branch.
    nonisolated(unsafe) private static var active = false

    /// Whether loops are only counted, not run (``countOnly(_:)``).
    nonisolated(unsafe) public private(set) static var isDryRun = false

    /// Runs `body` with every `parallelFor` (and the loops built on it) counted as partitioned for
    /// `Parallelism.threads` but its items not run, on any thread, and new tensors not zero-filled: a model's
    /// passes at any size then cost next to nothing in time and touch next to no memory, and tell how their
    /// loops cut the work (`WorkItemsReport`). What the passes compute meanwhile is meaningless; nothing else
    /// may run parallel loops during it.
    public static func countOnly<R>(_ body: () throws -> R) rethrows -> R {
        active = true
        isDryRun = true
        defer { isDryRun = false }
        return try body()
    }

    /// Loops inside ``notCounting(_:)`` (nesting depth).
    nonisolated(unsafe) private static var paused = 0

    /// Runs `body` without counting its loops (they still do not run inside ``countOnly(_:)``): for a layer's
    /// bookkeeping loops (zeroing and adding up private gradients), whose item counts would stand in for the
    /// layer's own.
    public static func notCounting<R>(_ body: () throws -> R) rethrows -> R {
        paused += 1
        defer { paused -= 1 }
        return try body()
    }

    /// Counts a loop of `items` items on this thread; true when it must not run (``countOnly(_:)``).
    @usableFromInline
    static func record(_ items: Int) -> Bool {
        guard active else { return false }
        if paused == 0, let p = pthread_getspecific(key)?.assumingMemoryBound(to: Counts.self) {
            p.pointee.loops += 1
            p.pointee.fewestItems = min(p.pointee.fewestItems, items)
        }
        return isDryRun
    }
}

/// Wraps a value that is safe to share by construction (e.g. a closure over disjoint raw-pointer ranges).
public struct UncheckedSendable<T>: @unchecked Sendable {
    public let value: T
    public init(_ value: T) { self.value = value }
}

/// Splits 0..<n into `parts` contiguous ranges of near-equal size.
public func splitRange(_ n: Int, parts: Int) -> [Range<Int>] {
    let p = max(1, min(parts, n))
    return (0..<p).map { i in (n * i / p)..<(n * (i + 1) / p) }
}
