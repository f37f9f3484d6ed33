import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Test hooks for `launch/fault-inject.sh`, inert unless the environment variable `ATTUNET_FAULT_HOOKS` names
/// a folder. Then each process records the phase of training it is in (`step`, `allreduce`, `validate`,
/// `checkpoint`) in `<folder>/phase.<pid>`, so the script can kill a process inside a chosen phase and report
/// where every kill landed, and two pauses widen the short phases: `ATTUNET_FAULT_CHECKPOINT_MS` inside every
/// atomic HDF5 write (after the temporary file is filled, before it is flushed and renamed into place) and
/// `ATTUNET_FAULT_ALLREDUCE_MS` before rank 1's gradient all-reduce (so rank 0 waits inside it). Neither
/// changes what is computed or written.
public enum FaultHooks {
    /// A phase of training, as the phase file names it.
    public enum Phase: String, Sendable { case step, allreduce, validate, checkpoint }

    private static let settings: (fd: Int32, checkpointPause: UInt32, allReducePause: UInt32)? = {
        let env = ProcessInfo.processInfo.environment
        guard let folder = env["ATTUNET_FAULT_HOOKS"], !folder.isEmpty else { return nil }
        let fd = open(folder + "/phase.\(getpid())", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { return nil }
        func ms(_ key: String) -> UInt32 { UInt32(env[key] ?? "") ?? 0 }
        return (fd, ms("ATTUNET_FAULT_CHECKPOINT_MS"), ms("ATTUNET_FAULT_ALLREDUCE_MS"))
    }()

    /// Records that this process enters `phase` (nothing when the hooks are off).
    public static func enter(_ phase: Phase) {
        guard let s = settings else { return }
        // Fixed width, one pwrite: a reader never sees a mix of two phases.
        let text = Array((phase.rawValue + String(repeating: " ", count: 16 - phase.rawValue.count) + "\n").utf8)
        _ = text.withUnsafeBytes { pwrite(s.fd, $0.baseAddress, $0.count, 0) }
    }

    /// Inside an atomic HDF5 write, between filling the temporary file and renaming it into place.
    public static func pauseInCheckpointWrite() {
        if let s = settings, s.checkpointPause > 0 { usleep(s.checkpointPause * 1000) }
    }

    /// Before the gradient all-reduce, on the rank `rank` (rank 1 pauses, the others wait for it inside).
    public static func enterAllReduce(rank: Int) {
        enter(.allreduce)
        if rank == 1, let s = settings, s.allReducePause > 0 { usleep(s.allReducePause * 1000) }
    }
}
