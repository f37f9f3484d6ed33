import Data
import Evaluation
import Foundation
import NN
import Tensor
import TestSupport
import Training
import XCTest

/// What validation reports: whole-volume prediction (symmetric padding to multiples of 16, cropped back) and
/// the Dice average that skips cases without the class.
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
            ([1, 1, 2, 0], [1, 1, 0, 0]),                          // class 1: 1; class 2 only predicted: skipped
        ]
        var counts = [Double](repeating: 0, count: cases.count * classes * 3)
        counts.withUnsafeMutableBufferPointer { buf in
            for (i, c) in cases.enumerated() {
                DiceScore.accumulate(prediction: c.prediction, reference: c.reference, classes: classes,
                                     into: UnsafeMutableBufferPointer(rebasing: buf[(i * classes * 3)..<((i + 1) * classes * 3)]))
            }
        }
        XCTAssertEqual(Array(counts[3..<9]), [1, 2, 2, 2, 3, 2], "case 0, classes 1-2: [intersection, predicted, reference]")
        let dice = DiceScore.meanPerClass(counts, cases: cases.count, classes: classes)
        XCTAssertEqual(dice.count, 3)
        XCTAssertEqual(dice[0], (0.5 + 1.0) / 2, accuracy: 1e-6)
        XCTAssertEqual(dice[1], 0.8, accuracy: 1e-6, "the case without class 2 in its reference is not averaged in")
        XCTAssertTrue(dice[2].isNaN, "a class no case has is NaN, not 0")
    }

    /// `Inference.predict` on cases whose sides are not multiples of 16 equals a reference written here: pad with
    /// the case minimum, split evenly (the odd voxel after), z-score, forward, arg-max, crop back.
    func testWholeVolumePredictionPadsEvenlyAndCropsBack() throws {
        let store = try CaseStore(path: try PhantomStore.path())
        let model = SegmentationModel(ModelConfig(featureScale: 16), seed: 3)
        model.training = false
        for c in 0..<2 {
            let info = store.cases[c], s = info.shape
            XCTAssertTrue([s.z, s.y, s.x].contains { $0 % 16 != 0 }, "the case must need padding: \(s)")
            let predicted = try Inference.predict(model: model, store: store, case: c)

            let padded = Dim3(z: (s.z + 15) / 16 * 16, y: (s.y + 15) / 16 * 16, x: (s.x + 15) / 16 * 16)
            let bz = (padded.z - s.z) / 2, by = (padded.y - s.y) / 2, bx = (padded.x - s.x) / 2
            let image = try store.image(c)
            let input = Tensor([1, 1, padded.z, padded.y, padded.x])
            input.fill(info.minimum)
            for z in 0..<s.z { for y in 0..<s.y { for x in 0..<s.x {
                input.data[((z + bz) * padded.y + y + by) * padded.x + x + bx] = image[(z * s.y + y) * s.x + x]
            } } }
            IntensityNormalization.zscore.apply(input.pointer, count: input.count, case: info)
            let logits = try model.forward(input)
            let k = logits.shape[1], v = padded.count
            func label(_ z: Int, _ y: Int, _ x: Int, shift: Int = 0) -> UInt8 {
                let at = ((z + bz) * padded.y + y + by) * padded.x + x + bx + shift
                var best = 0
                for cls in 1..<k where logits.data[cls * v + at] > logits.data[best * v + at] { best = cls }
                return UInt8(best)
            }
            var expected = [UInt8](), shifted = [UInt8]()
            for z in 0..<s.z { for y in 0..<s.y { for x in 0..<s.x {
                expected.append(label(z, y, x))
                shifted.append(label(z, y, min(x + 1, s.x - 1)))
            } } }
            XCTAssertEqual(predicted.count, s.count)
            let wrong = zip(predicted, expected).filter { $0 != $1 }.count
            XCTAssertEqual(wrong, 0, "case \(c): \(wrong) of \(s.count) voxels differ from the reference")
            // The comparison can see a one-voxel shift: the arg-max map is not flat.
            XCTAssertGreaterThan(zip(expected, shifted).filter { $0 != $1 }.count, s.count / 200)
        }
    }
}
