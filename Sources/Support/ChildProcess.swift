import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Runs a program as a child process with `posix_spawn` (never `fork`: the caller may be multi-threaded and an
/// MPI rank), stdin and stdout on `/dev/null`, stderr captured, and waits for it at most `timeout` seconds,
/// killing it (SIGKILL) when it runs longer. What HDF5Kit's probe of a file before opening it runs on.
public enum ChildProcess {
    /// How a child ended. `stderr` is what it wrote there (the first `stderrLimit` bytes).
    public enum Outcome: Equatable, Sendable {
        case exited(status: Int32, stderr: String)
        case signaled(signal: Int32, stderr: String)
        /// Still running after `seconds`: killed.
        case timedOut(seconds: Double)
    }

    /// Runs `arguments[0]` (a path: no PATH search) with `arguments` as its argv and the caller's environment.
    /// The child's signal mask is empty and its signal handlers the defaults. Throws only when the child cannot
    /// be started.
    public static func run(_ arguments: [String], timeout: Double, stderrLimit: Int = 4096) throws -> Outcome {
        precondition(!arguments.isEmpty, "ChildProcess.run needs a program")
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw startError(arguments[0], errno) }
        defer { close(fds[0]) }
        // Not inherited by other children (a second thread's spawn between here and there may still take the
        // write end along: the wait below never relies on the pipe's end, only on waitpid).
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        var all = sigset_t()
        sigemptyset(&none)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var pid: pid_t = 0
        let started = posix_spawn(&pid, arguments[0], &actions, &attributes, &argv, environ)
        close(fds[1])
        guard started == 0 else { throw startError(arguments[0], started) }

        // Read stderr as it comes (a chatty child never blocks on a full pipe) until the child ends.
        let deadline = Date().addingTimeInterval(timeout)
        var captured: [UInt8] = []
        var open = true
        var status: Int32 = 0
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            if open {
                var p = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
                if poll(&p, 1, 50) > 0 {
                    let n = read(fds[0], &chunk, chunk.count)
                    if n > 0 { captured += chunk.prefix(min(n, max(0, stderrLimit - captured.count))) }
                    if n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN) { open = false }
                }
            } else {
                usleep(20_000)
            }
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if r < 0 && errno != EINTR {
                throw AttunetError("\(arguments[0]): lost the child process (\(String(cString: strerror(errno))))")
            }
            if Date() >= deadline {
                kill(pid, SIGKILL)
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                return .timedOut(seconds: timeout)
            }
        }
        // What it wrote before ending is in the pipe: drain it (its own children could hold the pipe open,
        // so only what is there now).
        while open {
            var p = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 0) > 0 else { break }
            let n = read(fds[0], &chunk, chunk.count)
            if n <= 0 { break }
            captured += chunk.prefix(min(n, max(0, stderrLimit - captured.count)))
        }
        let text = String(decoding: captured, as: UTF8.self)
        let signal = status & 0x7F
        if signal != 0 && signal != 0x7F { return .signaled(signal: signal, stderr: text) }
        return .exited(status: (status >> 8) & 0xFF, stderr: text)
    }

    private static func startError(_ program: String, _ code: Int32) -> AttunetError {
        AttunetError("\(program): cannot start a child process (\(String(cString: strerror(code))))")
    }
}
