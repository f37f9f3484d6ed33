import ArgumentParser
import DataPipeline
import Evaluation
import Foundation
import Support
import Tensor

/// The surface-distance definitions by their command-line names.
enum DistanceDefinitionChoice: String, ExpressibleByArgument, CaseIterable {
    case pooled
    case maxDirected = "max-directed"

    var definition: SurfaceDistanceDefinition { self == .pooled ? .pooled : .maxDirected }
}

/// `attunet evaluate`: per-case, per-class metrics of predicted label maps against references.
struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Score predicted label maps against reference labels: Dice, precision, recall, ASSD, HD95, S2S.",
        discussion: """
        --pred and --ref are folders of NIfTI label maps (.nii/.nii.gz) paired by file name; a prediction
        without a reference, or a reference without a prediction, is an error naming the file. Each pair must
        have the same shape and affine (the tolerance `attunet prepare` applies between an image and its
        label). Metrics are computed per case and foreground class on the label maps in physical space (the
        spacing is the affine's column norms; see Evaluation.docc for every definition):
          Dice 2|P∩R|/(|P|+|R|), precision |P∩R|/|P|, recall |P∩R|/|R|;
          ASSD and HD95 over the 6-connected voxel surfaces, --distance-definition pooled (medpy 0.5: one
          set of both directed distances; the default) or max-directed (DeepMind's surface-distance: HD95
          the larger directed 95th percentile, ASSD the mean of the two directed means);
          S2S, the original code's slice-wise 2D contour distance over the axial slices holding both masks.
        Empty masks (no case is dropped, no NaN reaches a summary):
          both empty          Dice, precision, recall 1; every distance 0 (a correct "absent");
          prediction empty    Dice, precision, recall 0; distances the worst case;
          reference empty     Dice, precision, recall 0; distances the worst case;
        the worst case is the volume's diagonal in mm, larger than any distance in it. S2S is also the worst
        case when both masks have voxels but no axial slice holds both. The summaries count these
        substitutions beside each mean.
        Classes: --classes (background included), else the number of --class-names, else the --store's
        class names, else 1 + the largest label found. Names default to the store's, else class1, class2, ...
        Output in --out (default <pred>/evaluation; existing files are replaced): metrics.csv (one row per
        case and class), summary.json and summary.md (per class: mean ± sample std, median, worst-case
        counts, empty-mask counts, the distance definition). The summary table is printed.
          attunet evaluate --pred pred --ref phantoms/labelsTr
        """
    )

    @Option(help: "Folder of predicted label maps.")
    var pred: String

    @Option(help: "Folder of reference label maps with the same file names.")
    var ref: String

    @Option(help: "Output folder (default: <pred>/evaluation).")
    var out: String?

    @Option(help: "Surface distances: pooled (medpy) or max-directed (DeepMind's surface-distance).")
    var distanceDefinition: DistanceDefinitionChoice = .pooled

    @Option(help: "Classes including background (default: from --class-names, the --store, else 1 + the largest label).")
    var classes: Int?

    @Option(help: "Comma-separated class names, background first.")
    var classNames: String?

    @Option(help: "A case store whose class names (and count) to use.")
    var store: String?

    func validate() throws {
        if let classes, !(2...256).contains(classes) { throw ValidationError("--classes must be in 2...256") }
        if let classNames, classNames.split(separator: ",").count < 2 {
            throw ValidationError("--class-names needs the background and at least one class")
        }
    }

    func run() throws {
        let fm = FileManager.default
        func niftiFiles(_ dir: String) throws -> [String] {
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else { throw AttunetError("\(dir): no such folder") }
            return try fm.contentsOfDirectory(atPath: dir).filter { DatasetInput.caseID(fileName: $0) != nil }.sorted()
        }
        let predFiles = try niftiFiles(pred), refFiles = try niftiFiles(ref)
        if let extra = predFiles.first(where: { !refFiles.contains($0) }) {
            throw AttunetError("\(pred)/\(extra): no reference \(ref)/\(extra)")
        }
        if let missing = refFiles.first(where: { !predFiles.contains($0) }) {
            throw AttunetError("\(pred)/\(missing): missing (the reference \(ref)/\(missing) has no prediction)")
        }
        if refFiles.isEmpty { throw AttunetError("\(ref): no .nii or .nii.gz files") }

        var names: [String]? = classNames?.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        if names == nil, let store { names = try CaseStore(path: store).classNames }
        let definition = distanceDefinition.definition

        // Read every pair once (labels as bytes), checked; the class count may need the largest label.
        struct Pair { var id: String; var p: [UInt8]; var r: [UInt8]; var dim: Dim3; var spacing: VoxelSpacing }
        func labels(_ v: NIfTIVolume, _ path: String) throws -> [UInt8] {
            try v.voxels.map { x in
                guard x.isFinite, x == x.rounded(), x >= 0, x <= 255 else {
                    throw AttunetError("\(path): label value \(x) is not an integer in 0...255")
                }
                return UInt8(x)
            }
        }
        func load(_ f: String) throws -> Pair {
            let pp = "\(pred)/\(f)", rp = "\(ref)/\(f)"
            let pv = try NIfTIVolume.read(pp), rv = try NIfTIVolume.read(rp)
            try GeometryCheck.check(pv, path: pp, against: rv, referencePath: rp)
            let sp = rv.spacing
            return Pair(id: DatasetInput.caseID(fileName: f) ?? f, p: try labels(pv, pp), r: try labels(rv, rp),
                        dim: Dim3(z: rv.nz, y: rv.ny, x: rv.nx), spacing: VoxelSpacing(x: sp.x, y: sp.y, z: sp.z))
        }
        // Every pair is read and checked before any is scored; one pair is in memory at a time.
        var maxLabel: UInt8 = 0
        for f in refFiles {
            let pair = try load(f)
            maxLabel = max(maxLabel, pair.p.max() ?? 0, pair.r.max() ?? 0)
        }
        let k = classes ?? names?.count ?? max(2, Int(maxLabel) + 1)
        if let n = names, n.count != k {
            throw AttunetError("\(classNames != nil ? "--class-names" : store!): \(n.count) class names for \(k) classes")
        }
        let classLabels = names.map { Array($0[1...]) } ?? (1..<k).map { "class\($0)" }

        var results: [[ClassMetrics]] = []
        var csv = "case,class,label,dice,precision,recall,assd_mm,hd95_mm,s2s_mm,mean_pred_to_ref_mm,mean_ref_to_pred_mm,"
            + "intersection_voxels,predicted_voxels,reference_voxels,empty,distances_worst_case,s2s_worst_case\n"
        for f in refFiles {
            let pair = try load(f)
            let m = CaseMetrics.evaluate(prediction: pair.p, reference: pair.r, dim: pair.dim, spacing: pair.spacing,
                                         classes: k, definition: definition)
            results.append(m)
            for (c, x) in m.enumerated() {
                let values = [x.dice, x.precision, x.recall, x.assd, x.hd95, x.s2s2d, x.meanPredictionToReference,
                              x.meanReferenceToPrediction].map { String(format: "%.6g", $0) }
                let counts = [x.intersection, x.predicted, x.reference].map { String(Int($0)) }
                csv += ([pair.id, classLabels[c], String(c + 1)] + values + counts
                        + [x.empty.rawValue, String(x.distancesAreWorstCase), String(x.s2sIsWorstCase)]).joined(separator: ",") + "\n"
            }
        }
        let summaries = ClassSummary.summarize(results)
        let outDir = out ?? "\(pred)/evaluation"
        try fm.createDirectory(atPath: outDir, withIntermediateDirectories: true)
        try AtomicFile.write(csv, to: "\(outDir)/metrics.csv")
        try AtomicFile.write(try Self.json(summaries, names: classLabels, cases: refFiles.count, definition: definition),
                             to: "\(outDir)/summary.json")
        let table = Self.markdown(summaries, names: classLabels, cases: refFiles.count, definition: definition)
        try AtomicFile.write(table, to: "\(outDir)/summary.md")
        print(table, terminator: "")
        print("evaluate: \(refFiles.count) case(s); \(outDir)/metrics.csv, summary.json, summary.md")
    }

    static let columns: [(Metric, String, Int)] = [(.dice, "Dice", 3), (.precision, "precision", 3), (.recall, "recall", 3),
                                                   (.assd, "ASSD mm", 2), (.hd95, "HD95 mm", 2), (.s2s2d, "S2S mm", 2)]

    static func definitionText(_ d: SurfaceDistanceDefinition) -> String {
        d == .pooled ? "pooled (medpy 0.5: ASSD and HD95 over both directed distance sets together)"
            : "max-directed (DeepMind surface-distance: HD95 the larger directed 95th percentile, ASSD the mean of the directed means)"
    }

    /// The summary as a Markdown table: per class, mean ± sample std and median of each metric, with the
    /// number of worst-case substitutions in brackets beside each distance (Dice, precision and recall have none).
    static func markdown(_ s: [ClassSummary], names: [String], cases: Int, definition: SurfaceDistanceDefinition) -> String {
        var t = "| class | " + columns.map(\.1).joined(separator: " | ") + " | empty (both/pred/ref) |\n"
        t += "|---|" + columns.map { _ in "---|" }.joined() + "---|\n"
        for c in s {
            let cells = columns.map { metric, _, digits -> String in
                let m = c.metrics[metric]!
                let worst = metric.higherIsBetter ? "" : " [\(m.worstCaseCount) worst]"
                return "\(fmt(m.mean, digits)) ± \(fmt(m.std, digits)) (median \(fmt(m.median, digits)))\(worst)"
            }
            t += "| \(names[c.label - 1]) | " + cells.joined(separator: " | ") + " | \(c.bothEmpty)/\(c.predictionEmpty)/\(c.referenceEmpty) |\n"
        }
        t += "\n\(cases) case(s); mean ± sample std (median); [n worst] = n cases whose value is the worst-case substitute "
            + "(the volume diagonal: one mask empty, or for S2S no axial slice holding both). Surface distances: \(definitionText(definition)).\n"
        return t
    }

    static func json(_ s: [ClassSummary], names: [String], cases: Int, definition: SurfaceDistanceDefinition) throws -> String {
        var classes: [[String: Any]] = []
        for c in s {
            var metrics: [String: Any] = [:]
            for m in Metric.allCases {
                let x = c.metrics[m]!
                metrics[m.rawValue] = ["mean": x.mean, "std": x.std, "median": x.median, "count": x.count,
                                       "worst_case_count": x.worstCaseCount]
            }
            classes.append(["label": c.label, "name": names[c.label - 1], "both_empty": c.bothEmpty,
                            "prediction_empty": c.predictionEmpty, "reference_empty": c.referenceEmpty, "metrics": metrics])
        }
        let doc: [String: Any] = ["cases": cases,
                                  "distance_definition": definition == .pooled ? "pooled" : "max-directed",
                                  "std": "sample (ddof=1)", "classes": classes]
        let data = try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys])
        return String(decoding: data, as: UTF8.self) + "\n"
    }
}
