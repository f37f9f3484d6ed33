import Foundation

/// Resident memory of this process, from Linux's `/proc/self/status` (nil elsewhere).
public enum Memory {
    /// Peak resident set size so far (`VmHWM`), in bytes.
    public static func peakResidentBytes() -> Int? { statusField("VmHWM:") }

    /// Current resident set size (`VmRSS`), in bytes.
    public static func residentBytes() -> Int? { statusField("VmRSS:") }

    /// Resets the peak (`VmHWM`) to the current resident size by writing `5` to `/proc/self/clear_refs`
    /// (Linux ≥ 4.0), so that the next `peakResidentBytes()` is the peak of what ran since; false where that is
    /// not possible (the peak then stays the process's lifetime peak).
    @discardableResult
    public static func resetPeak() -> Bool {
        guard let h = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return false }
        defer { try? h.close() }
        do { try h.write(contentsOf: Data("5".utf8)) } catch { return false }
        return true
    }

    /// `"1.23 GiB"`, `"456.7 MiB"`: bytes for people.
    public static func format(_ bytes: Int?) -> String {
        guard let b = bytes else { return "n/a" }
        let mib = Double(b) / 1_048_576
        return mib >= 1024 ? String(format: "%.2f GiB", mib / 1024) : String(format: "%.1f MiB", mib)
    }

    /// A `kB` field of /proc/self/status, in bytes.
    static func statusField(_ key: String) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(key) {
            let parts = line.dropFirst(key.count).split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let kb = parts.first.flatMap({ Int($0) }) else { return nil }
            return kb * 1024
        }
        return nil
    }
}

/// The process's peak resident memory before and after a piece of work (`VmHWM`, bytes). When the peak was
/// reset first (``Memory/resetPeak()``), `peakAfter` is the peak of that work alone (plus what was resident
/// when it started).
public struct MemoryReport: Sendable, Equatable, CustomStringConvertible {
    public var peakBefore: Int?
    public var peakAfter: Int?

    public init(peakBefore: Int?, peakAfter: Int?) {
        self.peakBefore = peakBefore
        self.peakAfter = peakAfter
    }

    public var description: String {
        "peak resident memory \(Memory.format(peakBefore)) before, \(Memory.format(peakAfter)) after"
    }
}
