import Foundation
import Support
import TestSupport
import Training
import Workflows
import XCTest

/// Cross-validation folds: disjoint, covering, balanced and seeded; the inverse protocol; a user's splits
/// reused verbatim, and refused with the case ids named when they overlap, miss cases, name unknown ones or
/// have another fold count; patients kept in one fold.
final class FoldTests: XCTestCase {
    let ids = (0..<23).map { String(format: "case_%03d", $0) }

    func testFoldsAreDisjointCoveringBalancedAndSeeded() throws {
        let plan = try FoldPlan.make(ids: ids, folds: 5, seed: 1)
        XCTAssertEqual(plan.count, 5)
        XCTAssertEqual(plan.parts.flatMap { $0 }.sorted(), ids, "every case tests exactly once")
        XCTAssertEqual(Set(plan.parts.map(\.count)), [4, 5], "sizes differ by at most one")
        for k in 0..<5 {
            XCTAssertTrue(Set(plan.trainingCases(fold: k)).isDisjoint(with: plan.testCases(fold: k)))
            XCTAssertEqual((plan.trainingCases(fold: k) + plan.testCases(fold: k)).sorted(), ids)
        }
        XCTAssertEqual(
            try FoldPlan.make(ids: ids.reversed(), folds: 5, seed: 1), plan, "the order of the ids does not matter")
        XCTAssertNotEqual(try FoldPlan.make(ids: ids, folds: 5, seed: 2), plan, "another seed, other folds")
        // A pinned draw: the split must not change silently between versions (runs stay comparable).
        print("fold 0 of seed 1: \(plan.parts[0])")
        XCTAssertEqual(plan.parts[0], ["case_000", "case_003", "case_004", "case_005", "case_022"])
    }

    func testInverseTrainsOnOnePartAndTestsOnTheOthers() throws {
        let plan = try FoldPlan.make(ids: ids, folds: 5, seed: 1, inverse: true)
        for k in 0..<5 {
            XCTAssertEqual(plan.trainingCases(fold: k), plan.parts[k])
            XCTAssertEqual(plan.testCases(fold: k).count, ids.count - plan.parts[k].count)
            XCTAssertTrue(Set(plan.trainingCases(fold: k)).isDisjoint(with: plan.testCases(fold: k)))
        }
    }

    func testPatientsStayInOneFold() throws {
        // Three scans for every fourth patient, one for the others.
        var groups: [String: String] = [:]
        for (i, id) in ids.enumerated() { groups[id] = "patient_\(i / 3)" }
        let plan = try FoldPlan.make(ids: ids, folds: 4, seed: 3, groups: groups)
        for patient in Set(groups.values) {
            let folds = Set(plan.parts.indices.filter { k in plan.parts[k].contains { groups[$0] == patient } })
            XCTAssertEqual(folds.count, 1, "\(patient) is split over folds \(folds.sorted())")
        }
        XCTAssertEqual(plan.parts.flatMap { $0 }.sorted(), ids)
        XCTAssertLessThanOrEqual(plan.parts.map(\.count).max()! - plan.parts.map(\.count).min()!, 3)
        groups.removeValue(forKey: "case_007")
        XCTAssertThrowsError(try FoldPlan.make(ids: ids, folds: 4, seed: 3, groups: groups)) {
            XCTAssertTrue("\($0)".contains("case_007"), "\($0)")
        }
    }

    func testWrittenSplitsAreReusedVerbatimAndNnUNetsAreRead() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        for inverse in [false, true] {
            let plan = try FoldPlan.make(ids: ids, folds: 5, seed: 9, inverse: inverse)
            let path = dir.appendingPathComponent("splits-\(inverse).json").path
            try plan.json().write(to: URL(fileURLWithPath: path))
            XCTAssertEqual(try FoldPlan.load(path, ids: ids, folds: 5, inverse: inverse), plan)
        }
        let plan = try FoldPlan.make(ids: ids, folds: 5, seed: 9)
        let nnunet = (0..<5).map { ["train": plan.trainingCases(fold: $0), "val": plan.testCases(fold: $0)] }
        let path = dir.appendingPathComponent("splits_final.json").path
        try JSONEncoder().encode(nnunet).write(to: URL(fileURLWithPath: path))
        XCTAssertEqual(try FoldPlan.load(path, ids: ids, folds: 5, inverse: false), plan)
    }

    func testBadSplitsAreRefusedNamingTheCases() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let plan = try FoldPlan.make(ids: ids, folds: 3, seed: 4)
        func folds(_ edit: (inout [[String: [String]]]) -> Void) -> [[String: [String]]] {
            var f = (0..<3).map { ["train": plan.trainingCases(fold: $0), "test": plan.testCases(fold: $0)] }
            edit(&f)
            return f
        }
        let a = plan.parts[0][0]
        let b = plan.parts[1][0]
        let bad: [(String, [[String: [String]]], Int, String)] = [
            (
                "overlap",
                folds {
                    $0[1]["test"]!.append(a)
                    $0[1]["train"]!.removeAll { $0 == a }
                }, 3, a
            ),
            ("missing", folds { $0[0]["test"]!.removeAll { $0 == a } }, 3, a),
            ("unknown", folds { $0[2]["test"]!.append("case_999") }, 3, "case_999"),
            ("train-and-test", folds { $0[1]["train"]!.append(b) }, 3, b),
            ("fold count", folds { _ in }, 5, "3 fold(s), but --folds 5"),
        ]
        for (what, content, k, named) in bad {
            let path = dir.appendingPathComponent("\(what).json").path
            try JSONEncoder().encode(content).write(to: URL(fileURLWithPath: path))
            XCTAssertThrowsError(try FoldPlan.load(path, ids: ids, folds: k, inverse: false), what) { error in
                XCTAssertTrue("\(error)".contains(named), "\(what): \(error)")
                XCTAssertTrue("\(error)".hasPrefix(path), "\(what): the error names the file: \(error)")
            }
        }
        XCTAssertThrowsError(try FoldPlan.make(ids: Array(ids.prefix(3)), folds: 5, seed: 1))
    }

    func testGroupsReadFromJSONOrCSV() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let csv = dir.appendingPathComponent("g.csv").path
        let json = dir.appendingPathComponent("g.json").path
        try "case,patient\ncase_000,p1\ncase_001, p1\ncase_002,p2\n".write(
            toFile: csv, atomically: true, encoding: .utf8)
        try #"{"case_000": "p1", "case_001": "p1", "case_002": "p2"}"#.write(
            toFile: json, atomically: true, encoding: .utf8)
        let expected = ["case_000": "p1", "case_001": "p1", "case_002": "p2"]
        XCTAssertEqual(try FoldPlan.groups(from: csv), expected)
        XCTAssertEqual(try FoldPlan.groups(from: json), expected)
    }
}
