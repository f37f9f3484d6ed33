import Foundation
import Support

/// Threads used by `parallelFor` inside one process (one MPI rank). 1 by default: with one rank per core,
/// ranks provide the parallelism; a single-rank run may raise it to the core count.
public enum Parallelism {
    nonisolated(unsafe) public static var threads: Int = 1

    /// True on a worker thread of `parallelForEach`, where `parallelFor` runs inline: the coarse items
    /// already occupy the threads.
    public static var isInsideWorker: Bool { pthread_getspecific(workerKey) != nil }

    fileprivate static let workerKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()
}

/// Runs `body(i)` for i in 0..<n on up to `Parallelism.threads` threads, each taking a contiguous range (inline
/// when that is 1, when n is 1, or inside a `parallelForEach` worker). For loops over voxels and channels.
@inlinable
public func parallelFor(_ n: Int, _ body: (Int) -> Void) {
    let t = min(Parallelism.threads, n)
    if t <= 1 || Parallelism.isInsideWorker {
        for i in 0..<n { body(i) }
        return
    }
    withoutActuallyEscaping(body) { body in
        let box = UncheckedSendable(body)
        let ranges = splitRange(n, parts: t)
        DispatchQueue.concurrentPerform(iterations: ranges.count) { part in
            for i in ranges[part] { box.value(i) }
        }
    }
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
