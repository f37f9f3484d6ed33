import Evaluation
import Foundation
import Support
import Tensor
import TestSupport
import XCTest

@testable import Workflows

/// The postprocessing decision on synthetic predictions: where keeping the largest component helps (islands
/// added to an organ), where it hurts (a class that is truly two components, a kidney pair) and the top-k
/// variant that fits it; the numbers checked against scipy.ndimage.label and numpy; the plan file and its
/// refusals; the option parsing.
final class PostprocessingTests: XCTestCase {
    static let dim = Dim3(z: 16, y: 24, x: 32)
    static let spacing = VoxelSpacing(x: 2, y: 2, z: 2)

    /// Sets `value` in the box [z0, z1) x [y0, y1) x [x0, x1) of `map`.
    static func box(
        _ map: inout [UInt8], _ value: UInt8, z: Range<Int>, y: Range<Int>, x: Range<Int>
    ) {
        for k in z { for j in y { for i in x { map[(k * dim.y + j) * dim.x + i] = value } } }
    }

    /// Case `i` of a synthetic cohort: class 1 ("pancreas") one box, predicted a little shifted with two
    /// islands (one touching the box's corner only, so 6- and 26-connectivity differ); class 2 ("kidney") two
    /// boxes of different sizes (left and right), predicted with a 2-voxel island.
    static func synthetic(_ i: Int) -> (prediction: [UInt8], reference: [UInt8]) {
        var r = [UInt8](repeating: 0, count: dim.count)
        var p = r
        box(&r, 1, z: 2..<8, y: 2..<10, x: 2..<10)
        box(&p, 1, z: 2..<8, y: 2 + i % 2..<10, x: 2..<10 + i % 3)
        box(&p, 1, z: 12..<14, y: 18..<20, x: 2..<3 + i)  // an island far away
        box(&p, 1, z: 8..<9, y: 10..<11, x: 10 + i % 3..<11 + i % 3)  // touches a corner of the box
        box(&r, 2, z: 4..<12, y: 12..<20, x: 14..<20)
        box(&r, 2, z: 4..<10, y: 12..<18, x: 24..<29)
        box(&p, 2, z: 4..<12, y: 12..<20, x: 14 + i % 2..<20)
        box(&p, 2, z: 4..<10, y: 12..<18, x: 24..<28 + i % 2)
        box(&p, 2, z: 14..<15, y: 2..<4, x: 28..<29)
        return (p, r)
    }

    func decide(_ options: PostprocessingOptions, cases: Int = 4) -> [(Int, [PostprocessingPlan.VariantResult])] {
        let names = ["pancreas", "kidney"]
        let variants = names.map { options.variants(for: $0) }
        let scores = (0..<cases).map { i -> [[ClassMetrics]] in
            let (p, r) = Self.synthetic(i)
            return PostprocessingDecision.score(
                prediction: p, reference: r, dim: Self.dim, spacing: Self.spacing, variants: variants,
                connectivity: options.connectivity, definition: .pooled)
        }
        return names.indices.map { c in
            PostprocessingDecision.decide(steps: variants[c], cases: scores.map { $0[c] })
        }
    }

    /// scipy's answer for the synthetic cohort: per class and variant (none, largest, largest 2, remove below
    /// `min_voxels`) the mean Dice over the cases, with `structure` the connectivity.
    func scipyMeans(connectivity: Int, minVoxels: Int, cases: Int = 4) throws -> [[Double]] {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        for i in 0..<cases {
            let (p, r) = Self.synthetic(i)
            try Data(p).write(to: dir.appendingPathComponent("p\(i).raw"))
            try Data(r).write(to: dir.appendingPathComponent("r\(i).raw"))
        }
        let out = dir.appendingPathComponent("means.json").path
        try TestEnv.python(
            """
            import json, numpy as np
            from scipy import ndimage
            shape = (\(Self.dim.z), \(Self.dim.y), \(Self.dim.x))
            structure = ndimage.generate_binary_structure(3, \(connectivity == 26 ? 3 : 1))
            def keep(mask, k=None, min_voxels=None):
                lab, n = ndimage.label(mask, structure=structure)
                sizes = np.bincount(lab.ravel())[1:]
                if k is not None:
                    ids = np.argsort(-sizes, kind='stable')[:k] + 1
                else:
                    ids = np.nonzero(sizes >= min_voxels)[0] + 1
                return np.isin(lab, ids) & mask
            def dice(a, b):
                return 2.0 * np.sum(a & b) / (np.sum(a) + np.sum(b) + 1e-6)
            means = []
            for c in (1, 2):
                rows = []
                for i in range(\(cases)):
                    p = np.fromfile(r'\(dir.path)/p%d.raw' % i, dtype=np.uint8).reshape(shape) == c
                    r = np.fromfile(r'\(dir.path)/r%d.raw' % i, dtype=np.uint8).reshape(shape) == c
                    rows.append([dice(p, r), dice(keep(p, k=1), r), dice(keep(p, k=2), r),
                                 dice(keep(p, min_voxels=\(minVoxels)), r)])
                means.append(list(np.mean(rows, axis=0)))
            json.dump(means, open(r'\(out)', 'w'))
            """)
        return try JSONDecoder().decode([[Double]].self, from: Data(contentsOf: URL(fileURLWithPath: out)))
    }

    /// Islands added to an organ: keeping the largest component raises the mean Dice and does not raise the
    /// mean HD95, so it is kept and chosen. A kidney pair: keeping only the largest drops one kidney (Dice
    /// falls, HD95 grows), so it is rejected; with `--keep kidney:2` the two largest are kept and only the island
    /// goes, which is chosen. Every mean Dice equals scipy.ndimage.label's and numpy's.
    func testLargestHelpsWithIslandsAndTopTwoFitsAKidneyPair() throws {
        var options = PostprocessingOptions()
        options.keep = ["kidney": 2]
        options.defaultMinVolume = 3 * 8  // 3 voxels of 8 mm³: removes the islands of 1-2 voxels only
        let decisions = decide(options)
        let (pancreas, pv) = decisions[0]
        let (kidney, kv) = decisions[1]
        XCTAssertEqual(pv.map(\.step), [.none, .largest(1), .removeSmall(24)])
        XCTAssertEqual(kv.map(\.step), [.none, .largest(1), .largest(2), .removeSmall(24)])

        XCTAssertGreaterThan(pv[1].diceMean, pv[0].diceMean + 0.01, "the islands cost Dice")
        XCTAssertLessThanOrEqual(pv[1].hd95Mean, pv[0].hd95Mean)
        XCTAssertTrue(pv[1].kept)
        XCTAssertEqual(pv[pancreas].step, .largest(1), "\(pv)")

        XCTAssertLessThan(kv[1].diceMean, kv[0].diceMean - 0.1, "one kidney lost")
        XCTAssertGreaterThan(kv[1].hd95Mean, kv[0].hd95Mean)
        XCTAssertFalse(kv[1].kept)
        XCTAssertGreaterThan(kv[2].diceMean, kv[0].diceMean)
        XCTAssertTrue(kv[2].kept)
        XCTAssertEqual(kv[kidney].step, .largest(2), "\(kv)")
        // The remove-small variant does what largest 2 does here: the tie goes to the earlier variant.
        XCTAssertEqual(kv[3].diceMean, kv[2].diceMean, accuracy: 1e-12)
        XCTAssertEqual(kv[3].diceChange, kv[3].diceMean - kv[0].diceMean, accuracy: 1e-15)

        let scipy = try scipyMeans(connectivity: 26, minVoxels: 3)
        for (c, results) in [pv, kv].enumerated() {
            let expected = results.count == 3 ? [scipy[c][0], scipy[c][1], scipy[c][3]] : scipy[c]
            for (v, e) in zip(results, expected) {
                XCTAssertEqual(v.diceMean, e, accuracy: 1e-9, "class \(c + 1) \(v.step)")
            }
        }
    }

    /// With 6-connectivity the island touching the organ's corner is a component of its own, so the largest
    /// component leaves it out: a different (higher) Dice than at 26, equal to scipy's with the cross structure.
    func testConnectivityChangesTheComponents() throws {
        var six = PostprocessingOptions()
        six.connectivity = .six
        six.defaultMinVolume = 24
        let a = decide(six)[0].1
        let b = decide(PostprocessingOptions())[0].1
        XCTAssertNotEqual(a[1].diceMean, b[1].diceMean)
        let scipy = try scipyMeans(connectivity: 6, minVoxels: 3)
        XCTAssertEqual(a[1].diceMean, scipy[0][1], accuracy: 1e-9)
        XCTAssertEqual(a[2].diceMean, scipy[0][3], accuracy: 1e-9)
    }

    /// A prediction without islands: the largest component changes nothing, so none stays (a tie never
    /// displaces it); removing components below the default 1000 mm³ (125 voxels of 8 mm³) deletes this small
    /// organ of 72 voxels (Dice 0, HD95 the volume's diagonal) and is rejected.
    func testNothingToRemoveKeepsNone() {
        var r = [UInt8](repeating: 0, count: Self.dim.count)
        Self.box(&r, 1, z: 2..<5, y: 2..<8, x: 2..<8)
        var p = r
        Self.box(&p, 0, z: 2..<3, y: 2..<8, x: 2..<8)
        let steps = PostprocessingOptions().variants(for: "pancreas")
        XCTAssertEqual(steps, [.none, .largest(1), .removeSmall(1000)])
        let scores = PostprocessingDecision.score(
            prediction: p, reference: r, dim: Self.dim, spacing: Self.spacing, variants: [steps],
            connectivity: .twentySix, definition: .pooled)
        let (chosen, results) = PostprocessingDecision.decide(steps: steps, cases: [scores[0]])
        XCTAssertEqual(chosen, 0)
        XCTAssertTrue(results[1].kept && results[1].diceChange == 0 && results[1].hd95Change == 0, "\(results)")
        XCTAssertEqual(scores[0][0].dice, 2 * 72 / (72 + 108 + 1e-6), accuracy: 1e-12)
        XCTAssertEqual(scores[0][2].dice, 0)
        XCTAssertEqual(scores[0][2].hd95, Self.spacing.diagonal(of: Self.dim), accuracy: 1e-9)
        XCTAssertFalse(results[2].kept)
    }

    /// The plan applied to a label map is keepLargest / removeSmaller applied by hand, class by class; its JSON
    /// has snake_case keys and reads back; another model or other classes are refused, naming the file.
    func testPlanAppliesAsConnectedComponentsAndRefusesOtherModels() throws {
        let (p, _) = Self.synthetic(1)
        let post = LabelPostprocessing(
            model: "unet", classNames: ["pancreas", "kidney"], steps: [.largest(1), .removeSmall(24)],
            connectivity: .twentySix)
        var applied = p
        post.apply(to: &applied, dim: Self.dim, spacing: Self.spacing)
        var byHand = p
        byHand.withUnsafeMutableBufferPointer { m in
            ConnectedComponents.keepLargest(1, of: 1, in: m, dim: Self.dim, connectivity: .twentySix)
            ConnectedComponents.removeSmaller(than: 3, of: 2, in: m, dim: Self.dim, connectivity: .twentySix)
        }
        XCTAssertEqual(applied, byHand)
        XCTAssertNotEqual(applied, p, "the synthetic map has islands to remove")

        let plan = PostprocessingPlan(
            run: "runs/cv", connectivity: .twentySix, distanceDefinition: "pooled", grid: "source",
            rule: PostprocessingPlan.decisionRule, emptyMasks: EvaluationSummary.emptyMaskRule,
            models: [
                .init(
                    model: "unet",
                    classes: [
                        .init(
                            label: 1, name: "pancreas", cases: 4, chosen: .largest(1),
                            variants: [
                                .init(
                                    step: .largest(1), diceMean: 0.9, hd95Mean: 3, diceChange: 0.1, hd95Change: -1,
                                    kept: true)
                            ]),
                        .init(label: 2, name: "kidney", cases: 4, chosen: .removeSmall(24), variants: []),
                    ])
            ])
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("postprocessing.json").path
        try JSONFiles.data(plan).write(to: URL(fileURLWithPath: file))
        let text = try String(contentsOfFile: file, encoding: .utf8)
        for key in [
            "\"keep_largest\"", "\"remove_small\"", "\"min_volume\"", "\"dice_mean\"", "\"hd95_mean\"",
            "\"hd95_change\"", "\"distance_definition\"", "\"connectivity\" : 26",
        ] {
            XCTAssertTrue(text.contains(key), key)
        }
        let read = try PostprocessingPlan.load(file)
        XCTAssertEqual(read, plan)
        XCTAssertEqual(
            try read.postprocessing(model: "unet", classNames: ["pancreas", "kidney"], file: file), post)
        XCTAssertThrowsError(
            try read.postprocessing(model: "attention-unet", classNames: ["pancreas", "kidney"], file: file)
        ) {
            XCTAssertEqual(
                ($0 as! AttunetError).message,
                "\(file): decided for unet, not for the attention-unet being applied; choose the file of a run that trained attention-unet"
            )
        }
        XCTAssertThrowsError(try read.postprocessing(model: "unet", classNames: ["spleen", "kidney"], file: file)) {
            XCTAssertTrue(
                ($0 as! AttunetError).message.hasPrefix("\(file): decided for the classes pancreas, kidney of unet"),
                "\($0)")
        }
        try Data("{\"run\": 1}".utf8).write(to: URL(fileURLWithPath: file))
        XCTAssertThrowsError(try PostprocessingPlan.load(file)) {
            XCTAssertTrue(($0 as! AttunetError).message.hasPrefix("\(file): not a postprocessing.json"), "\($0)")
        }
    }

    /// --keep and --min-volume: per-class entries and a value for every class; malformed entries and unknown
    /// classes refused, naming them.
    func testOptionParsing() throws {
        XCTAssertEqual(try PostprocessingOptions.keep(parsing: "kidney:2, spleen:1"), ["kidney": 2, "spleen": 1])
        XCTAssertThrowsError(try PostprocessingOptions.keep(parsing: "kidney:0"))
        XCTAssertThrowsError(try PostprocessingOptions.keep(parsing: "kidney"))
        let (all, per) = try PostprocessingOptions.minVolume(parsing: "800,pancreas:500")
        XCTAssertEqual(all, 800)
        XCTAssertEqual(per, ["pancreas": 500])
        XCTAssertThrowsError(try PostprocessingOptions.minVolume(parsing: "pancreas:-1"))
        var o = PostprocessingOptions()
        o.keep = ["kidneys": 2]
        XCTAssertThrowsError(try o.check(classNames: ["spleen", "kidney"], run: "runs/cv")) {
            XCTAssertEqual(
                ($0 as! AttunetError).message, "--keep: no class 'kidneys' in runs/cv (its classes: spleen, kidney)")
        }
        XCTAssertEqual(PostprocessingStep.removeSmall(1000).minVoxels(spacing: Self.spacing), 125)
        XCTAssertEqual(PostprocessingStep.removeSmall(1001).minVoxels(spacing: Self.spacing), 126)
    }
}
