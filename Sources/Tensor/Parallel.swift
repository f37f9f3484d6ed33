import Foundation

/// Threads used by `parallelFor` inside one process (one MPI rank). 1 by default: with one rank per core,
/// ranks provide the parallelism; a single-rank run may raise it to the core count.
public enum Parallelism {
    nonisolated(unsafe) public static var threads: Int = 1
}

/// Runs `body(i)` for i in 0..<n on up to `Parallelism.threads` threads (inline when 1 or n == 1).
@inlinable
public func parallelFor(_ n: Int, _ body: (Int) -> Void) {
    let t = min(Parallelism.threads, n)
    if t <= 1 {
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
