import Evaluation
import Foundation
import Support
import Tensor

/// The metrics of one label in one case, or their means, under nnU-Net v2's names (`Dice`, `IoU`, `TP`, `FP`,
/// `FN`, `TN`, `n_pred`, `n_ref`), written as nnU-Net's `compute_metrics_on_folder` writes them.
///
/// Dice and IoU follow attunet's empty-mask rule: 1 when neither mask has the label (nnU-Net writes NaN there
/// and leaves it out of its means), so every case counts in every mean. Dice is attunet's one definition,
/// `2·TP / (n_pred + n_ref + 10⁻⁶)`; IoU is `TP / (TP + FP + FN)`.
public struct NNUNetMetrics: Codable, Sendable, Equatable {
    public var dice: Double
    public var iou: Double
    /// Voxels of the label in both masks, only in the prediction, only in the reference.
    public var tp: Double, fp: Double, fn: Double
    /// Voxels in neither mask (nil when a case's voxel count is unknown).
    public var tn: Double?
    /// Voxels of the label in the prediction (TP + FP) and in the reference (TP + FN).
    public var nPred: Double, nRef: Double

    public init(dice: Double, iou: Double, tp: Double, fp: Double, fn: Double, tn: Double?, nPred: Double, nRef: Double)
    {
        self.dice = dice
        self.iou = iou
        self.tp = tp
        self.fp = fp
        self.fn = fn
        self.tn = tn
        self.nPred = nPred
        self.nRef = nRef
    }

    /// One class of one case of `voxels` voxels.
    public init(_ m: ClassMetrics, voxels: Int?) {
        let tp = m.intersection
        let fp = m.predicted - m.intersection
        let fn = m.reference - m.intersection
        self.init(
            dice: m.dice, iou: m.iou, tp: tp, fp: fp, fn: fn,
            tn: voxels.map { Double($0) - tp - fp - fn }, nPred: m.predicted, nRef: m.reference)
    }

    /// The mean of each metric over `all` (at least one); TN only when every one has it.
    public static func mean(_ all: [NNUNetMetrics]) -> NNUNetMetrics {
        precondition(!all.isEmpty)
        func m(_ f: (NNUNetMetrics) -> Double) -> Double { all.map(f).reduce(0, +) / Double(all.count) }
        let tns = all.compactMap(\.tn)
        return NNUNetMetrics(
            dice: m(\.dice), iou: m(\.iou), tp: m(\.tp), fp: m(\.fp), fn: m(\.fn),
            tn: tns.count == all.count ? tns.reduce(0, +) / Double(all.count) : nil,
            nPred: m(\.nPred), nRef: m(\.nRef))
    }

    // nnU-Net's keys are data here, not Swift names: a string-keyed dictionary, which no key strategy touches.
    public init(from decoder: Decoder) throws {
        let d = try decoder.singleValueContainer().decode([String: Double].self)
        func v(_ key: String) throws -> Double {
            guard let x = d[key] else {
                throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "no \(key)"))
            }
            return x
        }
        self.init(
            dice: try v("Dice"), iou: try v("IoU"), tp: try v("TP"), fp: try v("FP"), fn: try v("FN"),
            tn: d["TN"], nPred: try v("n_pred"), nRef: try v("n_ref"))
    }

    public func encode(to encoder: Encoder) throws {
        var d = ["Dice": dice, "IoU": iou, "TP": tp, "FP": fp, "FN": fn, "n_pred": nPred, "n_ref": nRef]
        if let tn { d["TN"] = tn }
        var c = encoder.singleValueContainer()
        try c.encode(d)
    }
}

/// One element of nnU-Net's `metric_per_case`: per label value (as a string) the case's ``NNUNetMetrics``, and
/// the two files; attunet adds the case id.
public struct NNUNetCase: Codable, Sendable, Equatable {
    public var metrics: [String: NNUNetMetrics]
    public var predictionFile: String
    public var referenceFile: String
    public var caseID: String
}

/// One foreground class over a set of cases: per ``Metric`` (keys: their raw values `dice`, `precision`,
/// `recall`, `assd`, `hd95`, `s2s2d`, `iou`, `rvd`, and `nsd` when it was measured) the mean, sample std,
/// median and worst-case count, the empty-mask counts, and the NSD's tolerance.
public struct ClassStatistics: Codable, Sendable, Equatable {
    public var label: Int
    public var name: String
    public var metrics: [String: MetricSummary]
    public var bothEmpty: Int, predictionEmpty: Int, referenceEmpty: Int
    /// The tolerance in mm of `metrics["nsd"]` (nil, and no key: no NSD).
    public var nsdTolerance: Double? = nil

    /// One per foreground class of `cases` (each case's metrics, classes in label order); `names[c − 1]`
    /// names class c.
    public static func summarize(_ cases: [[ClassMetrics]], names: [String]) -> [ClassStatistics] {
        ClassSummary.summarize(cases).map { s in
            ClassStatistics(
                label: s.label, name: names[s.label - 1],
                metrics: Dictionary(uniqueKeysWithValues: s.metrics.map { ($0.key.rawValue, $0.value) }),
                bothEmpty: s.bothEmpty, predictionEmpty: s.predictionEmpty, referenceEmpty: s.referenceEmpty,
                nsdTolerance: s.nsdTolerance)
        }
    }
}

/// One case and class in attunet's part of `summary.json` (`per_case`): every metric of ``ClassMetrics`` under
/// the ``Metric`` names (`nsd` and `nsd_tolerance` only when NSD was measured) and the empty-mask state.
public struct CaseClassMetrics: Codable, Sendable, Equatable {
    public var caseID: String
    public var label: Int
    public var name: String
    public var dice: Double, iou: Double, precision: Double, recall: Double, rvd: Double
    public var assd: Double, hd95: Double, s2s2d: Double
    public var nsd: Double?, nsdTolerance: Double?
    public var empty: EmptyMasks
    public var distancesAreWorstCase: Bool, s2sIsWorstCase: Bool

    /// Class `label` (named `name`) of case `caseID`.
    public init(caseID: String, label: Int, name: String, _ m: ClassMetrics) {
        self.caseID = caseID
        self.label = label
        self.name = name
        dice = m.dice
        iou = m.iou
        precision = m.precision
        recall = m.recall
        rvd = m.rvd
        assd = m.assd
        hd95 = m.hd95
        s2s2d = m.s2s2d
        nsd = m.nsd
        nsdTolerance = m.nsdTolerance
        empty = m.empty
        distancesAreWorstCase = m.distancesAreWorstCase
        s2sIsWorstCase = m.s2sIsWorstCase
    }
}

extension SurfaceDistanceDefinition {
    /// The name `--distance-definition` takes and the reports write: `pooled` or `max-directed`.
    public var optionName: String { self == .pooled ? "pooled" : "max-directed" }

    /// What the definition means, for the reports.
    public var explanation: String {
        self == .pooled
            ? "pooled (medpy 0.5: ASSD and HD95 over both directed distance sets together)"
            : "max-directed (DeepMind surface-distance: HD95 the larger directed 95th percentile, ASSD the mean of the directed means)"
    }
}

/// The summary of an evaluation, the `summary.json` of `attunet evaluate` and, per model, the `evaluation`
/// of `attunet cv`'s `summary.json`. Three of its keys are nnU-Net v2's `summary.json` as
/// `compute_metrics_on_folder` writes it, so that scripts reading nnU-Net's results read attunet's:
///
/// - `metric_per_case`: per case `{"metrics": {"1": {"Dice", "IoU", "FN", "FP", "TP", "TN", "n_pred", "n_ref"},
///   ...}, "prediction_file", "reference_file"}` (and attunet's `case_id`);
/// - `mean`: per label value (a string) the mean over the cases of each of those metrics;
/// - `foreground_mean`: the mean over the labels of `mean`.
///
/// The other keys are attunet's: `cases`, `distance_definition`, `distances`, `std`, `empty_masks`,
/// `classes` (per foreground class ``ClassStatistics``: IoU, RVD and NSD among the metrics), `per_case` (per
/// case and class ``CaseClassMetrics``), `surface_dice` (what NSD means, when it was measured) and, from
/// `attunet evaluate`, `missing_cases` (the references without a prediction, not scored: `--allow-missing`).
public struct EvaluationSummary: Codable, Sendable, Equatable {
    public var metricPerCase: [NNUNetCase]
    public var mean: [String: NNUNetMetrics]
    public var foregroundMean: NNUNetMetrics
    /// The number of cases.
    public var cases: Int
    /// `pooled` or `max-directed` (``SurfaceDistanceDefinition/optionName``).
    public var distanceDefinition: String
    /// What the distance definition means.
    public var distances: String
    /// Which standard deviation the statistics give.
    public var std: String
    /// The empty-mask rule.
    public var emptyMasks: String
    public var classes: [ClassStatistics]
    /// Every case's metrics per class, in case order (nil in files written before attunet added it).
    public var perCase: [CaseClassMetrics]?
    /// What NSD means (nil: not measured).
    public var surfaceDice: String?
    /// The case ids of references without a prediction, not scored (`attunet evaluate --allow-missing`; nil in
    /// a cross-validation, which scores every test case).
    public var missingCases: [String]?

    public static let standardDeviation = "sample (ddof=1)"
    public static let emptyMaskRule =
        "a class absent from both masks scores Dice, IoU, precision, recall and NSD 1 and RVD and every distance 0 "
        + "(nnU-Net writes Dice and IoU NaN there); absent from one mask, Dice, IoU, precision, recall and NSD 0 and every distance "
        + "the worst case, the volume diagonal in mm (counted in worst_case_count); RVD is (|P| - |R|) / max(|R|, 1): -1 for an "
        + "empty prediction, the predicted voxel count |P| for an empty reference (counted in worst_case_count); no case is dropped"
    public static let surfaceDiceRule =
        "normalised surface Dice at each class's nsd_tolerance in mm: DeepMind surface-distance's "
        + "compute_surface_dice_at_tolerance(compute_surface_distances(reference, prediction, spacing), tolerance), "
        + "surfels on the voxel-corner grid weighted by their marching-cubes area"

    /// The summary of `cases` (at least one, all with the same classes); `classNames[c − 1]` names class c;
    /// `missingCases`: the references without a prediction (`attunet evaluate --allow-missing`).
    public init(
        cases: [CaseEvaluation], classNames: [String], definition: SurfaceDistanceDefinition,
        missingCases: [String]? = nil
    ) {
        precondition(!cases.isEmpty, "a summary needs a case")
        metricPerCase = cases.map { c in
            NNUNetCase(
                metrics: Dictionary(
                    uniqueKeysWithValues: c.classes.enumerated().map {
                        (String($0.offset + 1), NNUNetMetrics($0.element, voxels: c.voxels))
                    }), predictionFile: c.predictionFile, referenceFile: c.referenceFile, caseID: c.id)
        }
        let labels = (1...cases[0].classes.count).map(String.init)
        let nnunetCases = metricPerCase
        let means = Dictionary(
            uniqueKeysWithValues: labels.map { l in (l, NNUNetMetrics.mean(nnunetCases.map { $0.metrics[l]! })) })
        mean = means
        foregroundMean = NNUNetMetrics.mean(labels.map { means[$0]! })
        self.cases = cases.count
        distanceDefinition = definition.optionName
        distances = definition.explanation
        std = Self.standardDeviation
        emptyMasks = Self.emptyMaskRule
        classes = ClassStatistics.summarize(cases.map(\.classes), names: classNames)
        self.perCase = cases.flatMap { c in
            c.classes.enumerated().map {
                CaseClassMetrics(caseID: c.id, label: $0.offset + 1, name: classNames[$0.offset], $0.element)
            }
        }
        surfaceDice = cases.contains { $0.classes.contains { $0.nsd != nil } } ? Self.surfaceDiceRule : nil
        self.missingCases = missingCases
    }
}

/// The report of an evaluation: `metrics.csv` (one row per case and class), `summary.json`
/// (``EvaluationSummary``) and `summary.md` (per class: mean ± sample std, median, worst-case counts,
/// empty-mask counts, the distance definition).
public struct SegmentationReport: Sendable {
    public var cases: [CaseEvaluation]
    /// Foreground class names, in label order.
    public var classNames: [String]
    public var definition: SurfaceDistanceDefinition
    /// The references without a prediction, not scored (`--allow-missing`).
    public var missingCases: [String]
    public var summary: EvaluationSummary

    public init(
        cases: [CaseEvaluation], classNames: [String], definition: SurfaceDistanceDefinition,
        missingCases: [String] = []
    ) {
        self.cases = cases
        self.classNames = classNames
        self.definition = definition
        self.missingCases = missingCases
        summary = EvaluationSummary(
            cases: cases, classNames: classNames, definition: definition, missingCases: missingCases)
    }

    /// Writes `metrics.csv`, `summary.json` and `summary.md` into `folder` (made when missing; each file
    /// replaced atomically).
    public func write(to folder: String) throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try AtomicFile.write(csv(), to: "\(folder)/metrics.csv")
        try AtomicFile.write(try JSONFiles.data(summary), to: "\(folder)/summary.json")
        try AtomicFile.write(markdown(), to: "\(folder)/summary.md")
    }

    /// `metrics.csv`: one row per case and class (`nsd` and `nsd_tolerance_mm` empty when NSD was not measured).
    public func csv() -> String {
        var csv =
            "case,class,label,dice,precision,recall,assd_mm,hd95_mm,s2s_mm,mean_pred_to_ref_mm,mean_ref_to_pred_mm,"
            + "intersection_voxels,predicted_voxels,reference_voxels,empty,distances_worst_case,s2s_worst_case,"
            + "iou,rvd,nsd,nsd_tolerance_mm\n"
        for c in cases {
            for (i, x) in c.classes.enumerated() {
                let values = [
                    x.dice, x.precision, x.recall, x.assd, x.hd95, x.s2s2d, x.meanPredictionToReference,
                    x.meanReferenceToPrediction,
                ].map { String(format: "%.6g", $0) }
                let counts = [x.intersection, x.predicted, x.reference].map { String(Int($0)) }
                let added = [x.iou, x.rvd, x.nsd, x.nsdTolerance].map { $0.map { String(format: "%.6g", $0) } ?? "" }
                csv +=
                    ([c.id, classNames[i], String(i + 1)] + values + counts
                    + [x.empty.rawValue, String(x.distancesAreWorstCase), String(x.s2sIsWorstCase)] + added).joined(
                        separator: ",") + "\n"
            }
        }
        return csv
    }

    static let columns: [(Metric, String, Int)] = [
        (.dice, "Dice", 3), (.iou, "IoU", 3), (.precision, "precision", 3), (.recall, "recall", 3),
        (.rvd, "RVD", 3), (.assd, "ASSD mm", 2), (.hd95, "HD95 mm", 2), (.s2s2d, "S2S mm", 2), (.nsd, "NSD", 3),
    ]

    /// `summary.md`: per class, mean ± sample std and median of each metric, with the number of worst-case
    /// substitutions in brackets beside each distance and RVD (Dice, IoU, precision, recall and NSD have none);
    /// the NSD column, with each class's tolerance, only when NSD was measured.
    public func markdown() -> String {
        let columns = Self.columns.filter { metric, _, _ in
            summary.classes.contains { $0.metrics[metric.rawValue] != nil }
        }
        var t = "| class | " + columns.map(\.1).joined(separator: " | ") + " | empty (both/pred/ref) |\n"
        t += "|---|" + columns.map { _ in "---|" }.joined() + "---|\n"
        for c in summary.classes {
            let cells = columns.map { metric, _, digits -> String in
                guard let m = c.metrics[metric.rawValue] else { return "–" }
                let worst = metric.higherIsBetter ? "" : " [\(m.worstCaseCount) worst]"
                let tolerance = metric == .nsd ? c.nsdTolerance.map { " at \(fmtShort($0)) mm" } ?? "" : ""
                return
                    "\(fmt(m.mean, digits)) ± \(fmt(m.std, digits)) (median \(fmt(m.median, digits)))\(worst)\(tolerance)"
            }
            t +=
                "| \(c.name) | " + cells.joined(separator: " | ")
                + " | \(c.bothEmpty)/\(c.predictionEmpty)/\(c.referenceEmpty) |\n"
        }
        t +=
            "\n\(cases.count) case(s); mean ± sample std (median); [n worst] = n cases whose value is the worst-case substitute "
            + "(the volume diagonal: one mask empty, or for S2S no axial slice holding both; for RVD, |P| where the reference is empty). "
            + "RVD = (|P| - |R|)/|R|, signed. Surface distances: \(definition.explanation).\n"
        if columns.contains(where: { $0.0 == .nsd }) {
            t += "NSD: normalised surface Dice at the tolerance shown (DeepMind surface-distance's definition).\n"
        }
        if !missingCases.isEmpty {
            t += "\(missingCases.count) reference case(s) without a prediction, not scored: "
            t += missingCases.joined(separator: ", ") + ".\n"
        }
        return t
    }
}
