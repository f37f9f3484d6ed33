import Foundation
import Support
import Tensor
import Training

/// Which cases train and which test in each fold of a cross-validation.
///
/// The held-out partition is the heart of it: in the usual protocol (`inverse == false`, e.g. the paper's
/// 5-fold 120/30 on CT-150, or 4-fold 62/20 on TCIA-82) the test sets of the folds are disjoint and cover every
/// case, and a fold trains on all the other cases; in the inverse protocol (the paper's 30/120) a fold trains on
/// one part and tests on all the others.
public struct FoldPlan: Codable, Sendable, Equatable {
    /// The partition of the case ids into parts, each sorted.
    public var parts: [[String]]
    /// Train on one part, test on the others.
    public var inverse: Bool

    public init(parts: [[String]], inverse: Bool) {
        self.parts = parts.map { $0.sorted() }
        self.inverse = inverse
    }

    public var count: Int { parts.count }

    public func testCases(fold k: Int) -> [String] {
        inverse ? parts.enumerated().filter { $0.offset != k }.flatMap(\.element).sorted() : parts[k]
    }

    public func trainingCases(fold k: Int) -> [String] {
        inverse ? parts[k] : parts.enumerated().filter { $0.offset != k }.flatMap(\.element).sorted()
    }

    /// A seeded split of `ids` into `folds` parts whose sizes differ by at most one case (by at most the
    /// largest group when `groups` maps case ids to patients: every scan of one patient stays in one part).
    /// The same ids, seed and groups give the same parts on every machine.
    public static func make(
        ids: [String], folds: Int, seed: UInt64, inverse: Bool = false,
        groups: [String: String]? = nil
    ) throws -> FoldPlan {
        guard folds >= 2 else { throw AttunetError("--folds \(folds): a cross-validation needs at least 2 folds") }
        let sorted = Array(Set(ids)).sorted()
        guard sorted.count == ids.count else { throw AttunetError("case ids are not unique") }
        // Units that must stay together: a patient's cases, or each case alone.
        var units: [[String]]
        if let groups {
            let missing = sorted.filter { groups[$0] == nil }
            guard missing.isEmpty else {
                throw AttunetError("--group-by: no patient for case(s) \(list(missing))")
            }
            units = Dictionary(grouping: sorted, by: { groups[$0]! }).sorted { $0.key < $1.key }.map(\.value)
        } else {
            units = sorted.map { [$0] }
        }
        guard units.count >= folds else {
            throw AttunetError(
                "--folds \(folds): only \(units.count) \(groups == nil ? "case(s)" : "patient(s)") to split")
        }
        var rng = SeededRNG(seed, 0x464F_4C44)  // "FOLD"
        units = rng.permutation(units.count).map { units[$0] }
        // Largest units first (stable), each to the part with the fewest cases so far (lowest index on ties).
        units = units.enumerated().sorted { ($0.element.count, -$0.offset) > ($1.element.count, -$1.offset) }.map(
            \.element)
        var parts = [[String]](repeating: [], count: folds)
        for unit in units {
            let k = parts.indices.min { (parts[$0].count, $0) < (parts[$1].count, $1) }!
            parts[k] += unit
        }
        return FoldPlan(parts: parts, inverse: inverse)
    }

    /// Reads a user's splits (`splits.json` as attunet writes it, or nnU-Net's `splits_final.json`: a list of
    /// `{"train": [...], "val": [...]}`) and checks it against the store's case ids and the fold count asked
    /// for. Refuses, naming the case ids, a file whose held-out parts overlap, miss cases, name unknown cases, or
    /// whose fold count differs: a silent fallback would make results incomparable.
    public static func load(_ path: String, ids: [String], folds: Int, inverse: Bool) throws -> FoldPlan {
        guard let data = FileManager.default.contents(atPath: path) else { throw AttunetError("\(path): no such file") }
        let entries: [[String: [String]]]
        if let plan = try? JSONFiles.decode(SplitsFile.self, from: data) {
            entries = plan.folds.map { ["train": $0.train, "test": $0.test] }
        } else if let list = try? JSONFiles.decode([[String: [String]]].self, from: data) {
            entries = list
        } else {
            throw AttunetError("\(path): not a splits file (a list of {\"train\": [...], \"test\" or \"val\": [...]})")
        }
        guard entries.count == folds else {
            throw AttunetError("\(path): \(entries.count) fold(s), but --folds \(folds) was asked for")
        }
        let known = Set(ids)
        var parts: [[String]] = []
        for (k, e) in entries.enumerated() {
            guard let train = e["train"], let test = e["test"] ?? e["val"] else {
                throw AttunetError("\(path): fold \(k) lacks \"train\" or \"test\"/\"val\"")
            }
            let unknown = (train + test).filter { !known.contains($0) }
            guard unknown.isEmpty else {
                throw AttunetError("\(path): fold \(k) names case(s) not in the store: \(list(unknown))")
            }
            let both = Set(train).intersection(test)
            guard both.isEmpty else {
                throw AttunetError("\(path): fold \(k) both trains and tests on \(list(Array(both)))")
            }
            parts.append(inverse ? train : test)
        }
        let what = inverse ? "training" : "test"
        var seen: [String: Int] = [:]
        for (k, part) in parts.enumerated() {
            for id in part {
                if let other = seen[id] {
                    throw AttunetError("\(path): case \(id) is in the \(what) sets of folds \(other) and \(k)")
                }
                seen[id] = k
            }
        }
        let missing = ids.filter { seen[$0] == nil }
        guard missing.isEmpty else { throw AttunetError("\(path): case(s) in no fold's \(what) set: \(list(missing))") }
        let plan = FoldPlan(parts: parts, inverse: inverse)
        for (k, e) in entries.enumerated() {
            let train = Set(e["train"]!)
            let test = Set(e["test"] ?? e["val"]!)
            guard train == Set(plan.trainingCases(fold: k)), test == Set(plan.testCases(fold: k)) else {
                throw AttunetError(
                    "\(path): fold \(k) does not train on every case the other folds test on (each fold must use all cases)"
                )
            }
        }
        return plan
    }

    /// The file `load` reads and `write` writes.
    struct SplitsFile: Codable {
        struct Fold: Codable {
            var train: [String]
            var test: [String]
        }
        var protocolName: String
        var folds: [Fold]
        enum CodingKeys: String, CodingKey {
            case protocolName = "protocol"
            case folds
        }
    }

    /// `splits.json`: the protocol and each fold's training and test cases.
    public func json() throws -> Data {
        let file = SplitsFile(
            protocolName: inverse ? "inverse" : "k-fold",
            folds: (0..<count).map { .init(train: trainingCases(fold: $0), test: testCases(fold: $0)) })
        return try JSONFiles.data(file)
    }

    /// `splits_final.json` as nnU-Net writes it: per fold `{"train": [...], "val": [...]}`, where nnU-Net's
    /// `val` of fold k is what it predicts and evaluates, so the fold's test cases (the validation cases that
    /// pick attunet's best checkpoint are part of `train`). `--splits` reads it back.
    public func nnUNetJSON() throws -> Data {
        try JSONFiles.data((0..<count).map { ["train": trainingCases(fold: $0), "val": testCases(fold: $0)] })
    }

    /// Reads a case → patient map: a JSON object, or CSV lines `case,patient` (a header line is allowed).
    public static func groups(from path: String) throws -> [String: String] {
        guard let data = FileManager.default.contents(atPath: path) else { throw AttunetError("\(path): no such file") }
        if let map = try? JSONDecoder().decode([String: String].self, from: data) { return map }
        var map: [String: String] = [:]
        for (n, line) in String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).enumerated() {
            let cells = line.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count == 2 else { throw AttunetError("\(path):\(n + 1): expected 'case,patient'") }
            if n == 0 && cells[0].lowercased() == "case" { continue }
            map[cells[0]] = cells[1]
        }
        return map
    }

    static func list(_ ids: [String]) -> String {
        let s = ids.sorted()
        return s.prefix(10).joined(separator: ", ") + (s.count > 10 ? " and \(s.count - 10) more" : "")
    }
}
