import DataPipeline
import Evaluation
import Foundation
import NN
import Support
import Tensor
import TestSupport
import Workflows
import XCTest

/// `attunet predict --postprocess FILE` as a user runs it, against scipy: the labels written are the
/// unprocessed labels with the plan applied by `scipy.ndimage.label` (26-connected: the largest component, the
/// two largest, components below a volume removed); a plan of another model or of other classes is refused,
/// naming the file, and writes nothing.
final class PostprocessCLITests: XCTestCase {
    static let tile = "--patch 32x32x16 --spacing 4 --blur-sigma 0.5"

    func testPredictPostprocessEqualsScipyAndRefusesOtherModels() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        var r = try TestEnv.run("\(TestEnv.attunet) synth --cases 1 --resolution 0.5 --threads 2 --out \(dir.path)/ph")
        XCTAssertEqual(r.status, 0, r.stderr)
        // An untrained network: its labels are speckled (seed 1: class 1 in 2 components, class 3 in 4, no class 2).
        let checkpoint = "\(dir.path)/A.h5"
        try Checkpoint.save(SegmentationModel(ModelConfig(classes: 4, featureScale: 16), seed: 1), to: checkpoint)
        let images = "\(dir.path)/ph/imagesTr"
        let predict = "\(TestEnv.attunet) predict --input \(images) --checkpoint \(checkpoint) \(Self.tile)"
        r = try TestEnv.run("\(predict) --out \(dir.path)/raw")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let raw = try NIfTIVolume.read("\(dir.path)/raw/phantom_000.nii.gz")
        let voxel = raw.spacing.x * raw.spacing.y * raw.spacing.z

        func plan(model: String, names: [String], steps: [PostprocessingStep]) -> PostprocessingPlan {
            PostprocessingPlan(
                run: "runs/cv", connectivity: .twentySix, distanceDefinition: "pooled", grid: "source",
                rule: PostprocessingPlan.decisionRule, emptyMasks: EvaluationSummary.emptyMaskRule,
                models: [
                    .init(
                        model: model,
                        classes: zip(names, steps).enumerated().map {
                            PostprocessingPlan.ClassDecision(
                                label: $0.offset + 1, name: $0.element.0, cases: 1, chosen: $0.element.1, variants: [])
                        })
                ])
        }
        let names = ["class1", "class2", "class3"]
        let file = "\(dir.path)/postprocessing.json"
        try JSONFiles.data(
            plan(model: "attention-unet", names: names, steps: [.largest(1), .removeSmall(20 * voxel), .largest(2)])
        ).write(to: URL(fileURLWithPath: file))
        r = try TestEnv.run("\(predict) --postprocess \(file) --out \(dir.path)/post")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(
            r.stdout.contains(
                "predict: postprocessing the labels with \(file): class1: largest, class2: remove < \(fmtShort(20 * voxel)) mm³, class3: largest 2 (26-connected)"
            ), r.stdout)
        try TestEnv.python(
            """
            import math, nibabel as nib, numpy as np
            from scipy import ndimage
            raw = np.asanyarray(nib.load(r'\(dir.path)/raw/phantom_000.nii.gz').dataobj).astype(np.uint8)
            post = np.asanyarray(nib.load(r'\(dir.path)/post/phantom_000.nii.gz').dataobj).astype(np.uint8)
            zooms = nib.load(r'\(dir.path)/raw/phantom_000.nii.gz').header.get_zooms()[:3]
            structure = np.ones((3, 3, 3), bool)
            out = raw.copy()
            counts = []
            for c, keep, min_mm3 in ((1, 1, None), (2, None, 20 * float(np.prod(zooms))), (3, 2, None)):
                lab, n = ndimage.label(raw == c, structure=structure)
                counts.append(n)
                sizes = np.bincount(lab.ravel())[1:]
                if keep is not None:
                    # equal sizes: the component met first in attunet's memory order (z, y, x, x fastest) ranks first
                    zyx = np.transpose(lab, (2, 1, 0)).ravel()
                    ids, idx = np.unique(zyx, return_index=True)
                    first = dict(zip(ids.tolist(), idx.tolist()))
                    order = sorted(range(n), key=lambda i: (-sizes[i], first[i + 1]))
                    drop = [i + 1 for i in order[keep:]]
                else:
                    voxel = float(np.prod(zooms))
                    min_voxels = math.ceil(min_mm3 / voxel * (1 - 1e-12))
                    drop = [i + 1 for i in range(n) if sizes[i] < min_voxels]
                out[np.isin(lab, drop)] = 0
            assert counts[0] >= 2 and counts[2] >= 3, f'components per class {counts}: the untrained labels are speckled'
            assert (out != raw).any(), 'the plan changes nothing'
            assert (post == out).all(), f'{int((post != out).sum())} voxels differ from scipy'
            """)

        // Another model, other classes: refused before anything is written.
        for (other, expected) in [
            (
                plan(model: "unet", names: names, steps: [.none, .none, .none]),
                "decided for unet, not for the attention-unet being applied"
            ),
            (
                plan(model: "attention-unet", names: ["spleen", "pancreas", "kidney"], steps: [.none, .none, .none]),
                "decided for the classes spleen, pancreas, kidney of attention-unet, but the model segments class1, class2, class3"
            ),
        ] {
            try JSONFiles.data(other).write(to: URL(fileURLWithPath: file))
            r = try TestEnv.run("\(predict) --postprocess \(file) --out \(dir.path)/refused")
            XCTAssertEqual(r.status, 1, r.stdout + r.stderr)
            XCTAssertTrue(r.stderr.contains("error: \(file): \(expected)"), r.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir.path)/refused/phantom_000.nii.gz"))
        }
        r = try TestEnv.run("\(predict) --no-postprocess --out \(dir.path)/refused")
        XCTAssertEqual(r.status, 64, r.stdout + r.stderr)
        XCTAssertTrue(r.stderr.contains("--no-postprocess skips the postprocessing.json of --cv-dir"), r.stderr)
    }
}
