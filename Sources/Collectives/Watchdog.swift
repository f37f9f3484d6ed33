import Foundation
import Support

/// Ends the job when a collective does not finish in time: a peer that died without the launcher noticing, hung,
/// or sits behind a network partition would otherwise leave every rank waiting forever (mpirun itself does not
/// notice a silent partition for many minutes).
///
/// Every MPI collective of ``MPICommunicator`` runs armed: a monitor thread wakes each second, and when the armed
/// collective has run past ``timeout`` it prints one line naming the rank, the collective and ``context`` (the
/// trainer sets the step), and ends the process with exit status ``exitStatus``, which makes the launcher end the
/// job. The timeout is set by whoever knows how long the work between collectives can take (the trainer:
/// `--step-timeout`); 0 turns the watchdog off.
public final class CollectiveWatchdog: @unchecked Sendable {
    /// The process's watchdog (collectives run one at a time: on the main thread, or on the trainer's
    /// ``CommunicationThread`` while the main thread waits or computes without calling MPI).
    public static let shared = CollectiveWatchdog()

    /// Exit status of a rank the watchdog ended.
    public static let exitStatus: Int32 = 4

    private struct State {
        var timeout = 0.0
        var context = ""
        var armed: (what: String, since: Double)?
        var monitorStarted = false
    }
    private let state = Locked(State())

    /// Seconds one collective may take before the job is ended (0: never).
    public var timeout: Double {
        get { state.current.timeout }
        set { state.withLock { $0.timeout = max(0, newValue) } }
    }

    /// What the job is doing, for the message ("step 120 (epoch 4)", "validation after epoch 4").
    public var context: String {
        get { state.current.context }
        set { state.withLock { $0.context = newValue } }
    }

    /// Runs `body` (one collective, named `what`) under the watchdog.
    public func watch<T>(_ what: String, _ body: () throws -> T) rethrows -> T {
        let start = state.withLock { s -> Bool in
            s.armed = (what, Self.now())
            defer { s.monitorStarted = true }
            return !s.monitorStarted
        }
        if start { startMonitor() }
        defer { state.withLock { $0.armed = nil } }
        return try body()
    }

    private static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    private func startMonitor() {
        let rank = MPIRuntime.worldRank
        let thread = Thread { [state] in
            while true {
                Thread.sleep(forTimeInterval: 1)
                let expired = state.withLock { s -> (String, Double, String)? in
                    guard s.timeout > 0, let a = s.armed, Self.now() - a.since > s.timeout else { return nil }
                    return (a.what, s.timeout, s.context)
                }
                if let (what, timeout, context) = expired {
                    let at = context.isEmpty ? "" : " at \(context)"
                    let line =
                        "error: rank \(rank): MPI \(what) did not finish within \(Int(timeout.rounded())) s\(at): a peer is dead, hung or unreachable (--step-timeout); ending the job\n"
                    FileHandle.standardError.write(Data(line.utf8))
                    _exit(Self.exitStatus)
                }
            }
        }
        thread.start()
    }
}
