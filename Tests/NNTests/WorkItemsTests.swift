import Tensor
import XCTest

@testable import NN

/// `WorkItemsReport`: the loops counted without running them are those a real training step runs, and at the
/// paper's patch every kind of layer with work to share has enough items for 32 threads.
final class WorkItemsTests: XCTestCase {
    override func tearDown() {
        Parallelism.threads = 1
        LayerProfile.active = nil
        super.tearDown()
    }

    /// The per-kind item counts of a count-only step equal those a real step records on the same thread count (3:
    /// the partitions made for the thread count, the 3x3x3 ones, then differ from 1 thread's).
    func testCountsAreThoseOfARealStep() throws {
        let config = ModelConfig(kind: .attentionUNet, featureScale: 16)
        let patch = Dim3(z: 16, y: 32, x: 32)
        let dry = try WorkItemsReport.measure(config: config, patch: patch, batch: 2, threads: 3)

        Parallelism.threads = 3
        let model = SegmentationModel(config)
        let x = Tensor(
            [2, 1, patch.z, patch.y, patch.x], GradCheck.random(2 * patch.count, seed: 7, lo: -1, hi: 1))
        let profile = LayerProfile()
        LayerProfile.active = profile
        let logits = try model.forward(x)
        LayerProfile.active = nil
        let loss = SegmentationLoss(.dice)
        let labels = (0..<(2 * patch.count)).map { UInt8($0 % 4) }
        _ = labels.withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0) }
        LayerProfile.active = profile
        model.backward(loss.gradient)
        LayerProfile.active = nil
        let real = WorkItemsReport.kinds(profile.entries, threads: 3)

        XCTAssertEqual(dry.threads, 3)
        XCTAssertEqual(dry.patch, [32, 32, 16])
        let layerKinds = dry.kinds.filter { !$0.kind.hasPrefix("loss") && !$0.kind.hasPrefix("optimizer") }
        XCTAssertEqual(Set(layerKinds.map(\.kind)), Set(real.map(\.kind)))
        XCTAssertGreaterThanOrEqual(real.count, 10, "every kind of the attention U-Net")
        for k in real {
            let d = layerKinds.first { $0.kind == k.kind }
            XCTAssertEqual(d?.layers, k.layers, k.kind)
            XCTAssertEqual(d?.fewestItems, k.fewestItems, k.kind)
            XCTAssertEqual(d?.fewestLayer, k.fewestLayer, k.kind)
            XCTAssertEqual(d?.medianItemsPerThread, k.medianItemsPerThread, k.kind)
        }
        XCTAssertTrue(dry.table().contains("work items per thread at 3 threads"))
    }

    /// At the paper's 160x160x96 patch, batch 2, on 32 threads: BatchNorm, Concat, MaxPool, the 2x2x2 convolutions,
    /// the loss and the optimizer give every thread at least 2 items in every loop of every layer, the 3x3x3
    /// convolutions at least 1, and every kind at least 2.5 at its median layer. What has fewer than 2 (other
    /// than the 3x3x3 convolutions) is a layer with little work: an element count below 32 x 4 items of
    /// `WorkSplit.minimumItemWork`.
    func testEveryKindHasItemsForThirtyTwoThreadsAtThePapersPatch() throws {
        let report = try WorkItemsReport.measure(
            config: ModelConfig(kind: .attentionUNet), patch: Dim3(z: 96, y: 160, x: 160), batch: 2, threads: 32)
        print(report.table())
        func kind(_ k: String) -> WorkItemsReport.Kind? { report.kinds.first { $0.kind == k } }
        for k in ["BatchNorm3d", "Concat", "MaxPool3d", "Conv3d 2x2x2", "loss (Dice)", "optimizer (Adam)"] {
            XCTAssertGreaterThanOrEqual(kind(k)?.fewestItemsPerThread ?? 0, 2, k)
        }
        // A 3x3x3 Winograd backward-weights pass with few output-channel groups and a large dW (384->128 at 20x20x12)
        // gets one z-part per sample (private dW are capped at 16 MB): 1 item per thread there.
        XCTAssertGreaterThanOrEqual(kind("Conv3d 3x3x3")?.fewestItemsPerThread ?? 0, 1)
        for k in ["Conv3d 3x3x3", "Conv3d 1x1x1", "Conv3d 2x2x2", "BatchNorm3d", "Trilinear", "Concat", "ReLU"] {
            XCTAssertGreaterThanOrEqual(kind(k)?.medianItemsPerThread ?? 0, 2.5, k)
        }
        let small = 32 * 4 * WorkSplit.minimumItemWork
        for k in report.kinds where k.fewestItemsPerThread < 2 && k.kind != "Conv3d 3x3x3" {
            XCTAssertLessThan(k.fewestElements, small, "\(k.kind): \(k.fewestLayer) has work for more items")
        }
    }
}
