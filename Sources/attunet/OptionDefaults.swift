import ArgumentParser
import Foundation

// Option values whose default shows in help as users think of it: the rule ("all cores", "ATTUNET_THREADS when
// set, else 1") rather than what this machine or shell gives while help is printed, and a number as people write
// it ("1/3", "1e-6") rather than as Swift prints the Double.

/// `--threads` of prepare and synth: a count, by default every core of the machine the command runs on.
struct CoreCount: ExpressibleByArgument, Sendable {
    /// nil: all cores.
    let count: Int?

    static let allCores = CoreCount(count: nil)

    init(count: Int?) { self.count = count }

    init?(argument: String) {
        guard let n = Int(argument) else { return nil }
        count = n
    }

    var value: Int { count ?? ProcessInfo.processInfo.activeProcessorCount }
    var defaultValueDescription: String { count.map(String.init) ?? "all cores" }
}

/// `--threads` of the training subcommands and predict: a count, by default what the allocation gives this rank
/// (``PerRankThreads``: ATTUNET_THREADS, else SLURM_CPUS_PER_TASK, else its share of its affinity mask).
struct RankThreadCount: ExpressibleByArgument, Sendable {
    /// nil: from the environment.
    let count: Int?

    static let fromEnvironment = RankThreadCount(count: nil)

    init(count: Int?) { self.count = count }

    init?(argument: String) {
        guard let n = Int(argument) else { return nil }
        count = n
    }

    var value: Int { count ?? PerRankThreads.fromEnvironment }
    var defaultValueDescription: String { count.map(String.init) ?? PerRankThreads.defaultDescription }
}

extension PerRankThreads {
    /// How help shows the default.
    static let defaultDescription = "ATTUNET_THREADS, else SLURM_CPUS_PER_TASK, else this rank's share of its CPUs"
}

/// A number option whose default shows as written here; the command line takes a decimal or a ratio such as
/// 1/3 (which gives exactly the Double that 1.0 / 3.0 does).
struct WrittenNumber: ExpressibleByArgument, Sendable {
    let value: Double
    let written: String

    init(_ value: Double, written: String) {
        self.value = value
        self.written = written
    }

    init?(argument: String) {
        if let v = Double(argument) {
            value = v
        } else {
            let parts = argument.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count == 2, let a = Double(parts[0]), let b = Double(parts[1]), b != 0 else { return nil }
            value = a / b
        }
        written = argument
    }

    var defaultValueDescription: String { written }
}
