import DataPipeline
import Foundation
import Inference
import NN
import Support
import Tensor
import TestSupport
import XCTest

/// The predictor with the real Attention U-Net on a case of a tiny phantom store.
final class ModelPredictionTests: XCTestCase {
    nonisolated(unsafe) static var dir: URL?

    /// One phantom case at 8 mm (about 43x38x25 voxels), made in-process once for the suite.
    static func storePath() throws -> String {
        if let dir { return dir.appendingPathComponent("store.h5").path }
        let d = try TestEnv.tempDir()
        let store = try TestEnv.phantomStore(in: d, count: 1, seed: 11, scale: 0.25, spacing: 8)
        dir = d
        return store
    }

    override class func tearDown() {
        if let dir { try? FileManager.default.removeItem(at: dir) }
        dir = nil
        super.tearDown()
    }

    override func tearDown() {
        Parallelism.threads = 1
        super.tearDown()
    }

    /// A case that fits in one 48x48x32 tile: the predictor's arg-max equals a plain forward pass of the case
    /// padded to the tile (with its minimum, split evenly), z-scored, in eval mode; the attention maps come
    /// back at the case's size, in [0, 1].
    func testOneTileCaseEqualsAPlainForwardOfThePaddedVolume() throws {
        Parallelism.threads = 2
        let store = try CaseStore(path: try Self.storePath())
        let info = store.cases[0]
        let s = info.shape
        let patch = Dim3(z: 32, y: 48, x: 48)
        XCTAssertTrue(s.z <= patch.z && s.y <= patch.y && s.x <= patch.x, "the case must fit in one tile: \(s)")
        let model = SegmentationModel(ModelConfig(featureScale: 16), seed: 5)
        let peakBefore = Memory.peakResidentBytes()
        let reset = Memory.resetPeak()
        let p = try SlidingWindowPredictor(
            network: model, options: SlidingWindowOptions(patch: patch, attentionMaps: true)
        )
        .predict(store: store, case: 0)
        print(
            "prediction of \(s) in one \(patch) tile: \(String(format: "%.2f", p.seconds)) s, \(p.memory)",
            "(peak reset: \(reset); process peak before the reset \(Memory.format(peakBefore)))")
        XCTAssertEqual(p.tiles, 1)
        XCTAssertTrue(model.training, "the model's mode is restored")

        let b = (z: (patch.z - s.z) / 2, y: (patch.y - s.y) / 2, x: (patch.x - s.x) / 2)
        let input = Tensor([1, 1, patch.z, patch.y, patch.x])
        try store.readBox(0, start: (-b.z, -b.y, -b.x), size: patch, image: input.pointer, label: nil)
        IntensityNormalization.zscore.apply(input.pointer, count: input.count, case: info)
        model.training = false
        let logits = try model.forward(input)
        var mismatches = 0
        var nearTies = 0
        for z in 0..<s.z {
            for y in 0..<s.y {
                for x in 0..<s.x {
                    let t = ((z + b.z) * patch.y + y + b.y) * patch.x + x + b.x
                    let l = (0..<4).map { logits.data[$0 * patch.count + t] }
                    let best = l.firstIndex(of: l.max()!)!
                    if Int(p.labels[(z * s.y + y) * s.x + x]) != best {
                        let sorted = l.sorted(by: >)
                        if sorted[0] - sorted[1] < 1e-4 { nearTies += 1 } else { mismatches += 1 }
                    }
                }
            }
        }
        XCTAssertEqual(mismatches, 0)
        XCTAssertLessThan(nearTies, 3)
        XCTAssertGreaterThan(Set(p.labels).count, 1, "a random model still predicts more than one class")

        let maps = try XCTUnwrap(p.attentionMaps)
        XCTAssertEqual(maps.names, model.attentionMaps.map(\.name))
        XCTAssertEqual(maps.values.count, 6 * s.count)
        XCTAssertTrue(maps.values.allSatisfy { $0 >= 0 && $0 <= 1 })
    }

    /// The case in many tiles with in-plane TTA through the real network: every pass is counted, the blended
    /// probabilities sum to 1, and the time and peak memory are reported.
    func testManyTilesWithTTA() throws {
        Parallelism.threads = 2
        let store = try CaseStore(path: try Self.storePath())
        let s = store.cases[0].shape
        let model = SegmentationModel(ModelConfig(featureScale: 16), seed: 5)
        Memory.resetPeak()
        let p = try SlidingWindowPredictor(
            network: model,
            options: SlidingWindowOptions(
                patch: Dim3(z: 16, y: 32, x: 32), tta: true, keepProbabilities: true)
        ).predict(store: store, case: 0)
        print("prediction of \(s) in \(p.tiles) tiles x 4 flips: \(String(format: "%.2f", p.seconds)) s, \(p.memory)")
        XCTAssertGreaterThan(p.tiles, 4)
        XCTAssertEqual(p.forwardPasses, 4 * p.tiles)
        let probs = try XCTUnwrap(p.probabilities)
        for i in stride(from: 0, to: s.count, by: 97) {
            let sum = (0..<4).reduce(Float(0)) { $0 + probs[$1 * s.count + i] }
            XCTAssertEqual(sum, 1, accuracy: 1e-4)
        }
    }
}
