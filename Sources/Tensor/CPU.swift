import Foundation

/// Facts about the CPU read from /proc/cpuinfo (Linux).
public struct CPUInfo: Sendable {
    public let modelName: String
    public let flags: Set<String>
    public let logicalCores: Int

    public static let current: CPUInfo = {
        let text = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        var model = "unknown"
        var flags = Set<String>()
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2 else { continue }
            if parts[0] == "model name", model == "unknown" { model = parts[1] }
            if parts[0] == "flags", flags.isEmpty { flags = Set(parts[1].split(separator: " ").map(String.init)) }
        }
        return CPUInfo(modelName: model, flags: flags, logicalCores: ProcessInfo.processInfo.activeProcessorCount)
    }()

    public var hasAVX512F: Bool { flags.contains("avx512f") }
    public var hasAVX2: Bool { flags.contains("avx2") && flags.contains("fma") }
}

/// The CPUs this process may run on, and how many threads a rank uses by default (`--threads`).
public enum CPUAllocation {
    /// The CPUs in this process's affinity mask (`sched_getaffinity`), ascending: what Slurm's binding, a
    /// cgroup's cpuset, `taskset` or mpirun's `--bind-to` left it. All online CPUs when the call is unavailable.
    public static func affinity() -> [Int] {
        typealias GetAffinity = @convention(c) (pid_t, Int, UnsafeMutableRawPointer) -> Int32
        guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "sched_getaffinity") else { return fallback }
        let getAffinity = unsafeBitCast(symbol, to: GetAffinity.self)
        var mask = [UInt8](repeating: 0, count: 1024)  // 8192 CPUs
        guard mask.withUnsafeMutableBytes({ getAffinity(0, $0.count, $0.baseAddress!) }) == 0 else { return fallback }
        var cpus: [Int] = []
        for (i, byte) in mask.enumerated() where byte != 0 {
            for bit in 0..<8 where byte & (1 << bit) != 0 { cpus.append(i * 8 + bit) }
        }
        return cpus.isEmpty ? fallback : cpus
    }

    private static var fallback: [Int] { Array(0..<ProcessInfo.processInfo.activeProcessorCount) }

    /// A CPU list in the kernel's notation: ranges of consecutive CPUs, e.g. "0-3,8,10-11".
    public static func listString(_ cpus: [Int]) -> String {
        var parts: [String] = []
        var i = 0
        let s = cpus.sorted()
        while i < s.count {
            var j = i
            while j + 1 < s.count && s[j + 1] == s[j] + 1 { j += 1 }
            parts.append(j == i ? "\(s[i])" : "\(s[i])-\(s[j])")
            i = j + 1
        }
        return parts.joined(separator: ",")
    }

    /// A thread count and where it came from (for `attunet doctor` and the logs).
    public struct ThreadChoice: Sendable, Equatable {
        public var threads: Int
        public var source: String
        public init(threads: Int, source: String) {
            self.threads = threads
            self.source = source
        }
    }

    /// The default thread count of one rank, from its environment and the size of its affinity mask:
    /// 1. `ATTUNET_THREADS`, when it holds a positive count (set by hand or by the launch scripts);
    /// 2. `SLURM_CPUS_PER_TASK` (the CPUs Slurm gave each rank);
    /// 3. the affinity mask's CPUs divided among the ranks of this node that share it: under mpirun with
    ///    `--bind-to none` (no `OMPI_MCA_orte_bound_at_launch=1`) every one of the `OMPI_COMM_WORLD_LOCAL_SIZE`
    ///    local ranks sees the whole mask; a rank bound at launch sees its own CPUs only.
    /// Always at least 1. Values that are not positive integers are ignored.
    public static func defaultThreads(environment env: [String: String], affinityCount: Int) -> ThreadChoice {
        func count(_ name: String) -> Int? {
            guard let text = env[name]?.trimmingCharacters(in: .whitespaces), let n = Int(text), n >= 1 else {
                return nil
            }
            return n
        }
        if let n = count("ATTUNET_THREADS") { return ThreadChoice(threads: n, source: "ATTUNET_THREADS") }
        if let n = count("SLURM_CPUS_PER_TASK") { return ThreadChoice(threads: n, source: "SLURM_CPUS_PER_TASK") }
        let cpus = max(1, affinityCount)
        let bound = env["OMPI_MCA_orte_bound_at_launch"] == "1"
        if !bound, let local = count("OMPI_COMM_WORLD_LOCAL_SIZE"), local > 1 {
            return ThreadChoice(
                threads: max(1, cpus / local),
                source: "affinity mask of \(cpus) CPU(s) shared by \(local) ranks on this node")
        }
        return ThreadChoice(threads: cpus, source: "affinity mask of \(cpus) CPU(s)")
    }

    /// ``defaultThreads(environment:affinityCount:)`` for this process.
    public static var defaultThreads: ThreadChoice {
        defaultThreads(environment: ProcessInfo.processInfo.environment, affinityCount: affinity().count)
    }
}
