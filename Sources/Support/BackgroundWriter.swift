import Foundation

/// A serial queue for the slow, waiting end of file writes (fsync, rename, the folder's fsync) and for the
/// work that must follow them in order, run on one background thread while the caller goes on computing.
///
/// The training loop hands it each epoch's `checkpoint_latest.h5` commit and then the epoch's log row: the
/// fsyncs and the rename of a few-MiB checkpoint wait 30-50 ms on the disk, as long as half a training step
/// of the main job, and overlap the next epoch's steps instead. Work runs in submission order. The first
/// error is kept, the work submitted after it is skipped (it would land out of order), and ``wait()`` throws
/// it; call ``wait()`` before writing a path again and before the results are read.
public final class BackgroundWriter: @unchecked Sendable {
    private let queue = DispatchQueue(label: "attunet.background-writer")
    private let failure = Locked<(any Error)?>(nil)

    public init() {}

    /// Runs `work` after everything submitted before it, unless an earlier work failed.
    public func submit(_ work: @escaping @Sendable () throws -> Void) {
        queue.async { [failure] in
            if failure.withLock({ $0 != nil }) { return }
            do { try work() } catch { failure.withLock { $0 = error } }
        }
    }

    /// Waits until everything submitted has run; throws the first error of that work (once).
    public func wait() throws {
        queue.sync {}
        if let error = failure.withLock({ e -> (any Error)? in
            defer { e = nil }
            return e
        }) {
            throw error
        }
    }
}
