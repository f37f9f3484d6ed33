import Foundation
import HDF5Kit
import Tensor
import XCTest

@testable import NN

/// `attunet train --init`'s mapping (``WeightTransfer``): copies by name, the exact pass-through gates from a
/// U-Net, the output layers with another class count (`--reset-head`) or through a label map, and the
/// refusals, each one line naming the file and the class or tensor.
final class TransferTests: XCTestCase {
    static let names4 = ["background", "spleen", "pancreas", "kidney"]

    /// The U-Net of Tests/Fixtures/model_unet.h5 (feature scale 16, BN running statistics from training
    /// passes, then perturbed): a realistic source whose BNs are not the identity.
    func trainedUNet() throws -> SegmentationModel {
        let f = try H5File.open(Fixture.directory.appendingPathComponent("model_unet.h5").path)
        let m = SegmentationModel(ModelConfig(kind: .unet, featureScale: 16))
        try StateDict.read(into: m, from: try f.root.group("state_dict"))
        return m
    }

    func input(_ shape: [Int] = [2, 1, 16, 32, 48]) -> Tensor {
        let x = Tensor(shape)
        for i in 0..<x.count { x.data[i] = sin(Float(i) * 0.37) + 0.3 * cos(Float(i) * 0.011) }
        return x
    }

    func transfer(
        _ source: SegmentationModel, into target: SegmentationModel, classNames: [String] = names4,
        resetHead: Bool = false, labelMap: String? = nil
    ) throws -> TransferReport {
        try WeightTransfer.apply(
            from: source, sourcePath: "src.h5", sourceClassNames: Self.names4, into: target,
            targetPath: "store.h5", targetClassNames: classNames, resetHead: resetHead,
            labelMap: try labelMap.map { try LabelMap(parsing: $0) })
    }

    func values(_ store: ParameterStore, _ name: String) -> [Float] {
        let e = store.entry(named: name)!
        return Array(UnsafeBufferPointer(start: store.values.pointer + e.offset, count: e.count))
    }

    /// The check: a U-Net checkpoint loaded into attention-unet with pass-through gates gives the
    /// U-Net's logits within 1e-5 (evaluation mode). Every U-Net tensor is copied by name, the gates and the
    /// gating signal start fresh, and the gates' ψ/W/combine are the pass-through. Without the pass-through
    /// the logits are another network's.
    func testUNetIntoAttentionUNetWithPassThroughGatesGivesTheUNetsLogits() throws {
        let unet = try trainedUNet()
        unet.training = false
        let x = input()
        let want = try unet.forward(x)
        let att = SegmentationModel(
            ModelConfig(kind: .attentionUNet, featureScale: 16, passThroughGates: true), seed: 9)
        let report = try transfer(unet, into: att)
        for (u, a) in [(unet.params, att.params), (unet.buffers, att.buffers)] {
            for e in u.entries {
                XCTAssertEqual(values(u, e.name), values(a, e.name), "\(e.name) must be copied by name")
                XCTAssertEqual(report.tensors.first { $0.name == e.name }?.action, .copied, e.name)
            }
        }
        let fresh = report.tensors.filter { $0.action == .fresh }.map(\.name)
        let through = report.tensors.filter { $0.action == .passThrough }.map(\.name)
        XCTAssertTrue(
            fresh.contains("gating.conv1.0.weight") && fresh.contains("attentionblock3.gate_block_1.theta.weight")
                && fresh.contains("attentionblock2.gate_block_2.phi.bias"), "\(fresh)")
        XCTAssertTrue(
            through.contains("attentionblock4.gate_block_1.psi.weight")
                && through.contains("attentionblock2.combine_gates.0.weight")
                && through.contains("attentionblock3.gate_block_2.W.1.running_var"), "\(through)")
        XCTAssertEqual(
            Set(fresh + through),
            Set(
                (att.params.entries + att.buffers.entries).map(\.name).filter {
                    $0.hasPrefix("gating.") || $0.hasPrefix("attentionblock")
                }))
        XCTAssertEqual(
            report.freshParameters.count,
            att.params.entries.filter { $0.name.hasPrefix("gating.") || $0.name.hasPrefix("attentionblock") }.count)
        att.training = false
        let got = try att.forward(x)
        var worst: Float = 0
        for i in 0..<got.count { worst = max(worst, abs(got.data[i] - want.data[i])) }
        XCTAssertLessThanOrEqual(
            worst, 1e-5, "attention-unet from the U-Net: max |logit difference| \(worst) (logits up to \(want.maxAbs))")
        XCTAssertGreaterThan(want.maxAbs, 0.1)
        print("pass-through from the U-Net: max |logit difference| \(worst), logits up to \(want.maxAbs)")
        // The gates pass features through but stay trainable: α = σ(3) everywhere.
        for (name, map) in att.attentionMaps {
            XCTAssertEqual(map.data[0], Float(1 / (1 + exp(-3.0))), accuracy: 1e-6, name)
        }
        // Without --pass-through-gates the fresh gates are the seeded initialisation: another network.
        let plain = SegmentationModel(ModelConfig(kind: .attentionUNet, featureScale: 16), seed: 9)
        let plainReport = try transfer(unet, into: plain)
        XCTAssertFalse(plainReport.tensors.contains { $0.action == .passThrough })
        plain.training = false
        let other = try plain.forward(x)
        var far: Float = 0
        for i in 0..<other.count { far = max(far, abs(other.data[i] - want.data[i])) }
        XCTAssertGreaterThan(far, 1e-2, "seeded gates cannot reproduce the U-Net")
        let table = report.table(target: att.config).joined(separator: "\n")
        XCTAssertTrue(
            table.contains("gating") && table.contains("pass-through") && table.contains("not in the unet checkpoint"),
            table)
    }

    /// An attention checkpoint into a U-Net: the U-Net's tensors are copied, the gates are listed as not used.
    func testAttentionCheckpointIntoUNetCopiesTheSharedLayers() throws {
        let att = SegmentationModel(ModelConfig(kind: .attentionUNet, featureScale: 16), seed: 4)
        let unet = SegmentationModel(ModelConfig(kind: .unet, featureScale: 16), seed: 5)
        let report = try transfer(att, into: unet)
        XCTAssertTrue(report.freshParameters.isEmpty)
        XCTAssertEqual(
            values(unet.params, "up_concat4.conv.conv1.0.weight"), values(att.params, "up_concat4.conv.conv1.0.weight"))
        XCTAssertEqual(
            report.tensors.filter { $0.action == .unused }.count,
            (att.params.entries + att.buffers.entries).count - (unet.params.entries + unet.buffers.entries).count)
    }

    /// Another class count: refused without --reset-head, naming both counts; with it every layer but the
    /// output layers is copied and those keep the seeded initialisation.
    func testHeadResetWithAnotherClassCount() throws {
        let source = SegmentationModel(ModelConfig(kind: .unet, featureScale: 16), seed: 1)
        let target = SegmentationModel(ModelConfig(kind: .unet, classes: 2, featureScale: 16), seed: 2)
        let seeded = SegmentationModel(ModelConfig(kind: .unet, classes: 2, featureScale: 16), seed: 2)
        let before = target.params.values.array
        XCTAssertThrowsError(try transfer(source, into: target, classNames: ["background", "pancreas"])) { error in
            let m = "\(error)"
            XCTAssertTrue(
                m.hasPrefix("src.h5: ") && m.contains("4 classes") && m.contains("has 2") && m.contains("--reset-head"),
                m)
        }
        XCTAssertTrue(target.params.values.array == before, "a refused mapping changes nothing")
        let report = try transfer(source, into: target, classNames: ["background", "pancreas"], resetHead: true)
        for e in target.params.entries {
            if WeightTransfer.isHead(e.name) {
                XCTAssertEqual(values(target.params, e.name), values(seeded.params, e.name), "\(e.name) starts fresh")
                XCTAssertTrue(report.freshParameters.contains(e.name), e.name)
            } else {
                XCTAssertEqual(values(target.params, e.name), values(source.params, e.name), "\(e.name) is copied")
            }
        }
        XCTAssertEqual(
            Set(report.freshParameters),
            [
                "dsv1.weight", "dsv1.bias", "dsv2.dsv.0.weight", "dsv2.dsv.0.bias",
                "dsv3.dsv.0.weight", "dsv3.dsv.0.bias", "dsv4.dsv.0.weight",
                "dsv4.dsv.0.bias", "final.weight", "final.bias",
            ])
        let table = report.table(target: target.config).joined(separator: "\n")
        XCTAssertTrue(table.contains("--reset-head: the checkpoint has 4 classes, the store 2"), table)
        // Another feature scale cannot be copied: the error names the tensor and both shapes.
        let wide = SegmentationModel(ModelConfig(kind: .unet, featureScale: 8))
        XCTAssertThrowsError(try transfer(source, into: wide)) {
            XCTAssertTrue("\($0)".contains("conv1.conv1.0.weight has shape [4, 1, 3, 3, 3] in the checkpoint"), "\($0)")
        }
    }

    /// --label-map 2:1 into a pancreas-only store: every store class's output rows come from its checkpoint
    /// class (background implied), and final's columns follow; the network's pancreas logit keeps the
    /// source's pancreas weights.
    func testLabelMapCopiesTheClassRows() throws {
        let source = SegmentationModel(ModelConfig(kind: .unet, featureScale: 16), seed: 1)
        let target = SegmentationModel(ModelConfig(kind: .unet, classes: 2, featureScale: 16), seed: 2)
        let report = try transfer(source, into: target, classNames: ["background", "pancreas"], labelMap: "2:1")
        XCTAssertEqual(report.labelMap?.description, "0:0,2:1")
        XCTAssertTrue(report.freshParameters.isEmpty)
        for name in ["dsv1", "dsv2.dsv.0", "dsv4.dsv.0"] {
            let s = values(source.params, name + ".weight")
            let t = values(target.params, name + ".weight")
            let cin = s.count / 4
            XCTAssertEqual(Array(t[0..<cin]), Array(s[0..<cin]), "\(name) background row")
            XCTAssertEqual(
                Array(t[cin..<(2 * cin)]), Array(s[(2 * cin)..<(3 * cin)]), "\(name) pancreas row = source class 2")
            XCTAssertEqual(
                values(target.params, name + ".bias"),
                [values(source.params, name + ".bias")[0], values(source.params, name + ".bias")[2]])
        }
        // final: [classes][4 * classes]; target (t, j*2 + k) = source (src(t), j*4 + src(k)).
        let s = values(source.params, "final.weight")
        let t = values(target.params, "final.weight")
        let src = [0, 2]
        for row in 0..<2 {
            for j in 0..<4 {
                for k in 0..<2 {
                    XCTAssertEqual(
                        t[row * 8 + j * 2 + k], s[src[row] * 16 + j * 4 + src[k]], "final (\(row), \(j * 2 + k))")
                }
            }
        }
        let table = report.table(target: target.config).joined(separator: "\n")
        XCTAssertTrue(table.contains("class rows") && table.contains("2 pancreas -> 1 pancreas"), table)
    }

    /// Label maps that name a class the checkpoint or the store does not have, leave a store class without a
    /// source, or name a class twice: one clear error each, naming the file and the class.
    func testLabelMapRefusals() throws {
        let source = SegmentationModel(ModelConfig(kind: .unet, featureScale: 16), seed: 1)
        let target = SegmentationModel(ModelConfig(kind: .unet, classes: 2, featureScale: 16), seed: 2)
        let pancreas = ["background", "pancreas"]
        let cases: [(String, String)] = [
            (
                "5:1",
                "src.h5: --label-map 5:1 names class 5, but the checkpoint has classes 0-3 (background, spleen, pancreas, kidney)"
            ),
            ("2:3", "store.h5: --label-map 2:3 names class 3, but the store has classes 0-1 (background, pancreas)"),
            ("0:0", "store.h5: --label-map 0:0 gives the store's class 1 (pancreas) no checkpoint class"),
            ("2:1,3:1", "the store class 1 appears twice"),
        ]
        for (map, message) in cases {
            XCTAssertThrowsError(try transfer(source, into: target, classNames: pancreas, labelMap: map)) {
                XCTAssertTrue("\($0)".contains(message), "\(map): \($0)")
            }
        }
        XCTAssertThrowsError(try LabelMap(parsing: "2-1")) {
            XCTAssertTrue("\($0)".contains("'2-1' is not SRC:DST"), "\($0)")
        }
        XCTAssertThrowsError(try transfer(source, into: target, classNames: pancreas, resetHead: true, labelMap: "2:1"))
    }

    /// The optimizer's roles: frozen runs are not touched (values, moments), fresh runs step at their own rate.
    func testOptimizerRolesFreezeAndFreshRate() {
        let store = ParameterStore()
        _ = store.add("conv1.w", shape: [3])
        _ = store.add("up.w", shape: [3])
        _ = store.add("final.w", shape: [2])
        store.allocate()
        for i in 0..<8 {
            store.values.data[i] = Float(i) + 1
            store.grads.data[i] = 0.5
        }
        let opt = Optimizer(.adam, parameterCount: 8, learningRate: 1e-3, weightDecay: 1e-2)
        opt.setRoles(store.entries) { $0.hasPrefix("conv1") ? .frozen : $0.hasPrefix("final") ? .fresh : .trained }
        opt.freshLearningRate = 1e-1
        XCTAssertEqual(opt.count(.frozen), 3)
        XCTAssertEqual(opt.count(.fresh), 2)
        let before = store.values.array
        for _ in 0..<3 { opt.update(params: store.values, grads: store.grads) }
        let after = store.values.array
        XCTAssertEqual(Array(after[0..<3]), Array(before[0..<3]), "frozen values are bit-identical")
        XCTAssertEqual(
            Array(opt.moment1.array[0..<3]) + Array(opt.moment2.array[0..<3]), [Float](repeating: 0, count: 6),
            "frozen moments stay 0")
        for i in 3..<8 {
            let rate: Float = i < 6 ? 1e-3 : 1e-1
            XCTAssertEqual(before[i] - after[i], 3 * rate, accuracy: 0.02 * rate, "parameter \(i) steps at its rate")
        }
    }
}
