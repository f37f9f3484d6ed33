import Foundation

/// Facts about the CPU read from /proc/cpuinfo (Linux).
public struct CPUInfo: Sendable {
    public let modelName: String
    public let flags: Set<String>
    public let logicalCores: Int

    public static let current: CPUInfo = {
        let text = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        var model = "unknown", flags = Set<String>()
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
