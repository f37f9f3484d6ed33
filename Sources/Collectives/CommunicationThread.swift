import Foundation
import Support

/// One dedicated thread that runs collectives in the order they were submitted, while the submitting thread
/// goes on computing: how the trainer overlaps the gradient all-reduce with the backward pass.
///
/// Why a thread calling the blocking collectives rather than non-blocking MPI (`MPI_Iallreduce`): Open MPI's
/// non-blocking collectives (libnbc) pick their own algorithms, which for more than 2 ranks may add the ranks'
/// values in another order than `MPI_Allreduce` does, so the overlapped result would differ in the last bits
/// from the blocking one; and without an asynchronous progress thread they only advance while some thread is
/// inside MPI. This thread calls exactly the `MPI_Allreduce` the blocking path calls, on the same buffers, so
/// every sum is the same bit for bit, and it progresses the transfer by itself.
///
/// MPI must be initialised with at least `MPI_THREAD_SERIALIZED` (``MPIRuntime/initialize()`` asks for it),
/// and only one thread may be inside MPI at a time: while jobs are pending, every collective of the process
/// must go through ``run(_:)`` or ``submit(_:)``; the owner calls ``waitAll()`` before calling MPI itself.
/// Because every rank submits the same collectives in the same order, they match across ranks. The
/// ``CollectiveWatchdog`` still guards each collective (it runs on this thread, one at a time).
///
/// The thread sleeps on a condition variable while the queue is empty; a collective in flight spins inside MPI
/// as the blocking path's does, on this thread instead of the caller's.
public final class CommunicationThread: @unchecked Sendable {
    private let queue = JobQueue()

    /// Starts the thread (named `name` in debuggers and `top -H`).
    public init(name: String = "attunet-comm") {
        let thread = Thread { [queue] in queue.loop() }  // the queue only: deinit ends the thread
        thread.name = name
        thread.start()
    }

    deinit { queue.close() }

    /// Queues `job`; it runs after every job submitted before it. After a job has thrown, the jobs still
    /// queued are skipped and ``waitAll()`` throws the error.
    public func submit(_ job: @escaping () throws -> Void) { queue.submit(job) }

    /// Waits until every submitted job has run; returns the seconds the jobs spent running since the last
    /// wait, or throws the first error one of them threw.
    @discardableResult
    public func waitAll() throws -> Double { try queue.waitAll() }

    /// Runs `body` on the thread after everything queued, and waits for it.
    public func run<T>(_ body: @escaping () throws -> T) throws -> T {
        let result = Locked<T?>(nil)
        submit {
            let v = try body()
            result.withLock { $0 = v }
        }
        try waitAll()
        return result.current!
    }
}

/// The jobs of a ``CommunicationThread`` and the loop its thread runs.
private final class JobQueue: @unchecked Sendable {
    private struct State {
        var jobs: [() throws -> Void] = []
        var head = 0
        var running = false
        var error: Error?
        var closed = false
        /// Seconds spent inside jobs since the last `waitAll()`.
        var busy = 0.0
    }
    private let condition = NSCondition()
    private var state = State()

    func submit(_ job: @escaping () throws -> Void) {
        condition.lock()
        state.jobs.append(job)
        condition.broadcast()
        condition.unlock()
    }

    func waitAll() throws -> Double {
        condition.lock()
        while state.head < state.jobs.count || state.running { condition.wait() }
        state.jobs.removeAll(keepingCapacity: true)
        state.head = 0
        let busy = state.busy
        state.busy = 0
        let error = state.error
        state.error = nil
        condition.unlock()
        if let error { throw error }
        return busy
    }

    /// Lets the loop end once the queue is empty.
    func close() {
        condition.lock()
        state.closed = true
        condition.broadcast()
        condition.unlock()
    }

    func loop() {
        condition.lock()
        while true {
            while state.head == state.jobs.count && !state.closed { condition.wait() }
            if state.head == state.jobs.count { break }  // closed and drained
            let job = state.jobs[state.head]
            state.head += 1
            let skip = state.error != nil
            state.running = true
            condition.unlock()
            var failure: Error?
            let t0 = DispatchTime.now().uptimeNanoseconds
            if !skip {
                do { try job() } catch { failure = error }
            }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            condition.lock()
            state.running = false
            state.busy += seconds
            if let failure, state.error == nil { state.error = failure }
            condition.broadcast()
        }
        condition.unlock()
    }
}
