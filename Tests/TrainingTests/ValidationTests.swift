import DataPipeline
import Evaluation
import Foundation
import Inference
import NN
import Tensor
import TestSupport
import Training
import XCTest

/// What validation reports: the Dice average that skips cases without the class, and the same figures on 3
/// ranks as in one process.
final class ValidationTests: XCTestCase {
    override func tearDown() {
        Parallelism.threads = 1
        super.tearDown()
    }

    override class func tearDown() {
        PhantomStore.remove()
        super.tearDown()
    }

    func testDiceCountsAndTheMeanSkipCasesWithoutTheClass() {
        let classes = 4
        let cases: [(prediction: [UInt8], reference: [UInt8])] = [
            ([0, 1, 0, 2, 2, 2, 0, 1], [0, 1, 1, 2, 2, 0, 0, 0]),  // class 1: 2·1/(2+2), class 2: 2·2/(3+2)
            ([1, 1, 2, 0], [1, 1, 0, 0]),  // class 1: 1; class 2 only predicted: skipped
        ]
        var counts = [Double](repeating: 0, count: cases.count * classes * 3)
        counts.withUnsafeMutableBufferPointer { buf in
            for (i, c) in cases.enumerated() {
                DiceScore.accumulate(
                    prediction: c.prediction, reference: c.reference, classes: classes,
                    into: UnsafeMutableBufferPointer(rebasing: buf[(i * classes * 3)..<((i + 1) * classes * 3)]))
            }
        }
        XCTAssertEqual(
            Array(counts[3..<9]), [1, 2, 2, 2, 3, 2], "case 0, classes 1-2: [intersection, predicted, reference]")
        let dice = DiceScore.meanPerClass(counts, cases: cases.count, classes: classes)
        XCTAssertEqual(dice.count, 3)
        XCTAssertEqual(dice[0], (0.5 + 1.0) / 2, accuracy: 1e-6)
        XCTAssertEqual(dice[1], 0.8, accuracy: 1e-6, "the case without class 2 in its reference is not averaged in")
        XCTAssertTrue(dice[2].isNaN, "a class no case has is NaN, not 0")
    }

    /// Validation on 3 MPI ranks of 4 cases (rank 0 takes cases 0 and 3, ranks 1 and 2 one each) reports what
    /// one process computes from the same weights: `attunet train` on 3 ranks validates after its last epoch and
    /// logs the Dice; here the checkpoint it wrote with that validation is loaded and every case segmented in
    /// this process with the sliding-window predictor and scored with `DiceScore`. The per-case Dice values differ
    /// enough that a case dropped or counted twice would move the mean past the log's 4 decimals.
    func testThreeRankValidationOfFourCasesEqualsOneProcess() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let storePath = try TestEnv.phantomStore(in: dir, count: 6, seed: 11, scale: 0.5, spacing: 4)
        let store = try CaseStore(path: storePath)
        let validation = Array(store.cases.map(\.id).sorted().prefix(4))
        let out = dir.appendingPathComponent("run")
        let r = try TestEnv.run(
            "mpirun -np 3 --bind-to none --oversubscribe \(TestEnv.attunet) train --store \(storePath) --feature-scale 16 --patch 48x48x32 --batch 3 --epochs 10 --samples-per-case 24 --lr 5e-3 --sync-bn --foreground-fraction 0.67 --val-every 100 --seed 2 --val-cases \(validation.joined(separator: ",")) --out \(out.path)"
        )
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let log = TrainingLog(directory: out, classNames: Array(store.classNames.dropFirst()))
        try log.load(keepBefore: Int.max)
        let logged = log.records.last!.validationDice
        XCTAssertEqual(logged.count, 3)

        let model = try Checkpoint.load(RunFolder(out).checkpointLatest.path)
        let predictor = try SlidingWindowPredictor(
            network: model, options: SlidingWindowOptions(patch: Dim3(z: 32, y: 48, x: 48)))
        let k = 4
        var counts = [Double](repeating: 0, count: validation.count * k * DiceScore.columns)
        var perCase: [[Double]] = []
        for (i, id) in validation.enumerated() {
            let c = store.index(of: id)!
            let pred = try predictor.predict(store: store, case: c).labels
            let label = try store.label(c)
            counts.withUnsafeMutableBufferPointer { buf in
                DiceScore.accumulate(
                    prediction: pred, reference: label, classes: k,
                    into: UnsafeMutableBufferPointer(rebasing: buf[(i * k * 3)..<((i + 1) * k * 3)]))
            }
            perCase.append(
                (1..<k).map { cls in
                    let row = (i * k + cls) * 3
                    return DiceScore.dice(
                        intersection: counts[row], predicted: counts[row + 1], reference: counts[row + 2])
                })
        }
        let expected = DiceScore.meanPerClass(counts, cases: validation.count, classes: k)
        print("3-rank validation: logged \(logged), one process \(expected), per case \(perCase)")
        for cls in 0..<3 {
            XCTAssertEqual(logged[cls], expected[cls], accuracy: 5.1e-5, "class \(cls + 1)")
        }
        // The test can fail: each case dropped, or counted twice, moves some class's mean by more than 2e-4.
        for i in 0..<validation.count {
            let others = perCase.indices.filter { $0 != i }
            let moved = (0..<3).map { cls in
                let without = others.map { perCase[$0][cls] }.reduce(0, +) / Double(others.count)
                let twice = (perCase.map { $0[cls] }.reduce(0, +) + perCase[i][cls]) / Double(perCase.count + 1)
                return min(abs(without - expected[cls]), abs(twice - expected[cls]))
            }.max()!
            XCTAssertGreaterThan(moved, 2e-4, "case \(i) must matter to the mean")
        }
    }
}
