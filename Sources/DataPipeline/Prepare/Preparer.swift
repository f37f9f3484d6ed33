import Collectives
import Foundation
import HDF5Kit
import Support
import Tensor

/// Result of a conversion run.
public struct PrepareReport: Sendable {
    public var written: [String]
    public var skipped: [CaseProblem]
    public var fingerprint: [String: Double]
}

extension CasePreparer {
    /// Converts `input` into the store at `out`: checks and resamples every case (`options.threads` at a time)
    /// and writes the store atomically (`AtomicFile`). Without `skipBad`, any bad input makes it throw an
    /// `AttunetError` of kind `.badInput` listing every problem, one line each, and no file is left behind;
    /// with `skipBad`, bad cases are left out and listed in the report.
    ///
    /// Under MPI (`comm` with several ranks) rank r converts cases r, r+p, ... into a part file; the problems of
    /// every rank are gathered, and rank 0 assembles the store from the parts (HDF5 object copies, chunks and
    /// compression kept). Every rank returns the same report or throws the same error.
    public static func run(
        input: DatasetInput, out: String, options o: PrepareOptions, skipBad: Bool,
        comm: Communicator? = nil, progress: (@Sendable (String) -> Void)? = nil
    ) throws -> PrepareReport {
        if let comm, comm.size > 1 {
            return try runDistributed(
                input: input, out: out, options: o, skipBad: skipBad, comm: comm, progress: progress)
        }
        var report: PrepareReport?
        try H5File.writeAtomically(out) { file in
            let problems = Locked(input.problems)
            let contents = try convert(
                input.cases, into: file, options: o, skipBad: skipBad, problems: problems, progress: progress)
            let bad = sorted(problems.current)
            try check(bad, written: contents.written.count, skipBad: skipBad)
            let fp = try CaseStoreWriter.finish(file, contents, options: o)
            report = PrepareReport(written: contents.written.sorted(), skipped: bad, fingerprint: fp)
        }
        return report!
    }

    static func sorted(_ problems: [CaseProblem]) -> [CaseProblem] {
        problems.sorted { ($0.caseID, $0.message) < ($1.caseID, $1.message) }
    }

    /// Throws the bad inputs (unless skipped), or that nothing was usable.
    static func check(_ bad: [CaseProblem], written: Int, skipBad: Bool) throws {
        if !bad.isEmpty && !skipBad { throw AttunetError(lines: bad.map(\.message)) }
        if written == 0 { throw AttunetError(lines: bad.map(\.message) + ["no usable cases"]) }
    }

    /// Converts `cases` (`options.threads` at a time) and writes them under /cases of `file`. A bad case is
    /// added to `problems`; once there is one and `skipBad` is off, no more cases are written (the store will
    /// be discarded).
    static func convert(
        _ cases: [CaseFiles], into file: H5File, options o: PrepareOptions, skipBad: Bool,
        problems: Locked<[CaseProblem]>,
        progress: (@Sendable (String) -> Void)?
    ) throws -> CaseStoreWriter.Contents {
        let contents = Locked(CaseStoreWriter.Contents())
        try parallelForEach(cases.count, threads: o.threads) { i in
            let c = cases[i]
            let prepared: PreparedCase
            do { prepared = try convert(c, options: o) } catch {
                problems.withLock { $0.append(CaseProblem(caseID: c.id, message: "\(error)")) }
                return
            }
            if !skipBad && !problems.current.isEmpty { return }
            try contents.withLock { acc in
                try CaseStoreWriter.write(prepared, to: file, options: o)
                acc.add(prepared)
            }
            progress?(c.id)
        }
        return contents.current
    }

    /// What one rank reports after converting its share.
    struct RankResult: Codable {
        var written: [String]
        var problems: [[String]]  // (case id, message)
        var error: String?
    }

    static func runDistributed(
        input: DatasetInput, out: String, options o: PrepareOptions, skipBad: Bool,
        comm: Communicator, progress: (@Sendable (String) -> Void)?
    ) throws -> PrepareReport {
        let tag: Int = try comm.broadcast(comm.isRoot ? Int(getpid()) : nil)
        func partPath(_ r: Int) -> String { "\(out).part\(r)-\(tag)" }
        defer { unlink(partPath(comm.rank)) }
        // Discovery problems are the same on every rank: rank 0 reports them.
        let problems = Locked(comm.isRoot ? input.problems : [])
        let mine = input.cases.enumerated().filter { $0.offset % comm.size == comm.rank }.map(\.element)
        var result = RankResult(written: [], problems: [], error: nil)
        do {
            let file = try H5File.create(partPath(comm.rank))
            let contents = try convert(
                mine, into: file, options: o, skipBad: skipBad, problems: problems, progress: progress)
            // The fingerprint's foreground samples travel with the part (the store itself does not keep them).
            for id in contents.written {
                let s = contents.samples[id]!
                try file.root.write("fg_sample/\(id)", s, shape: [s.count])
            }
            try file.flush()
            result.written = contents.written
        } catch { result.error = "\(error)" }
        result.problems = problems.current.map { [$0.caseID, $0.message] }
        let results = try comm.allGather(data: try JSONEncoder().encode(result)).map {
            try JSONDecoder().decode(RankResult.self, from: $0)
        }
        if let e = results.compactMap(\.error).first { throw AttunetError(e) }
        let bad = sorted(results.flatMap(\.problems).map { CaseProblem(caseID: $0[0], message: $0[1]) })
        let written = results.flatMap(\.written).sorted()
        try check(bad, written: written.count, skipBad: skipBad)
        // Rank 0 assembles; its verdict reaches every rank.
        var assembled: (fp: [String: Double]?, error: String?) = (nil, nil)
        if comm.isRoot {
            do {
                try H5File.writeAtomically(out) { file in
                    let contents = CaseStoreWriter.Contents()
                    for r in 0..<comm.size where !results[r].written.isEmpty {
                        let part = try H5File.open(partPath(r))
                        for id in results[r].written {
                            try part.root.copy("cases/\(id)", to: file.root, as: "cases/\(id)")
                            let g = try part.root.group("cases/\(id)")
                            contents.written.append(id)
                            contents.samples[id] = try part.root.dataset("fg_sample/\(id)").readFloats()
                            contents.spacings[id] = try g.doublesAttribute("original_spacing_mm")
                            contents.shapes[id] = try g.intsAttribute("original_shape").map { Int($0) }
                        }
                    }
                    assembled.fp = try CaseStoreWriter.finish(file, contents, options: o)
                }
            } catch { assembled.error = "\(error)" }
        }
        try comm.barrier()
        let fp: [String: Double]? = try comm.broadcast(comm.isRoot ? assembled.fp ?? [:] : nil)
        let err: String? = try comm.broadcast(comm.isRoot ? assembled.error ?? "" : nil)
        if let err, !err.isEmpty { throw AttunetError(err) }
        return PrepareReport(written: written, skipped: bad, fingerprint: fp ?? [:])
    }
}
