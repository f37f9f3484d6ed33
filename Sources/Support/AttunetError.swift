import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// attunet's one error type: a message naming the file (or option) and the problem, and a `kind` that
/// callers branch on.
///
/// The command-line tool prints it once, at its entry point, one `error: ` line per message line (only rank 0
/// under MPI, where every rank meets the same error), and exits with `exitCode`. Library code never prints
/// errors itself.
public struct AttunetError: Error, CustomStringConvertible, LocalizedError, Sendable {
    /// What went wrong, where a caller acts differently.
    public enum Kind: Sendable, Equatable {
        /// Bad input, a library or I/O failure: exit status 1.
        case failure
        /// Several bad inputs, one line each (`attunet prepare`): exit status 1.
        case badInput
        /// A file is damaged: a checksum (HDF5's Fletcher-32 or a stored SHA-256) does not match, or its data
        /// does not read back. Exit status 1; `train --resume` adds how to continue from another checkpoint.
        case corrupt
        /// A stop was requested (SIGTERM/SIGUSR1) and the state to resume from was written: exit status 75
        /// (EX_TEMPFAIL). The message is empty: the trainer has already said what it wrote.
        case interrupted
        /// The loss or the weights became NaN/Inf; the last good checkpoint is kept: exit status 3.
        case nonFinite
    }

    public let kind: Kind
    /// One or more lines, each naming the file (or option) and the problem.
    public let message: String

    public init(_ message: String, kind: Kind = .failure) {
        self.message = message
        self.kind = kind
    }

    /// One error listing several problems, one line each.
    public init(lines: [String], kind: Kind = .badInput) {
        self.init(lines.joined(separator: "\n"), kind: kind)
    }

    public var lines: [String] { message.isEmpty ? [] : message.components(separatedBy: "\n") }

    public var exitCode: Int32 {
        switch kind {
        case .failure, .badInput, .corrupt: 1
        case .interrupted: 75
        case .nonFinite: 3
        }
    }

    public var description: String { message }
    public var errorDescription: String? { message }

    /// A failed write of `path`, from the C library's `errno` code: a full disk and an exhausted quota are
    /// named as such ("no space left on device while writing `what`"), anything else with the system's text.
    public static func writeFailed(_ path: String, while what: String, errno code: Int32) -> AttunetError {
        switch code {
        case ENOSPC: AttunetError("\(path): no space left on device while writing \(what)")
        case EDQUOT: AttunetError("\(path): disk quota exceeded while writing \(what)")
        default: AttunetError("\(path): cannot write \(what) (\(String(cString: strerror(code))))")
        }
    }

    /// The error's message without a leading "`path`: ", for callers that name the file themselves.
    public static func message(of error: Error, strippingPath path: String) -> String {
        let s = "\(error)"
        return s.hasPrefix(path + ": ") ? String(s.dropFirst(path.count + 2)) : s
    }
}
