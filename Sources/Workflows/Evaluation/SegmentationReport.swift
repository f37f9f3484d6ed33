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
            dice: m.dice, iou: tp + fp + fn > 0 ? tp / (tp + fp + fn) : 1, tp: tp, fp: fp, fn: fn,
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
/// `recall`, `assd`, `hd95`, `s2s2d`) the mean, sample std, median and worst-case count, and the empty-mask
/// counts.
public struct ClassStatistics: Codable, Sendable, Equatable {
    public var label: Int
    public var name: String
    public var metrics: [String: MetricSummary]
    public var bothEmpty: Int, predictionEmpty: Int, referenceEmpty: Int

    /// One per foreground class of `cases` (each case's metrics, classes in label order); `names[c − 1]`
    /// names class c.
    public static func summarize(_ cases: [[ClassMetrics]], names: [String]) -> [ClassStatistics] {
        ClassSummary.summarize(cases).map { s in
            ClassStatistics(
                label: s.label, name: names[s.label - 1],
                metrics: Dictionary(uniqueKeysWithValues: s.metrics.map { ($0.key.rawValue, $0.value) }),
                bothEmpty: s.bothEmpty, predictionEmpty: s.predictionEmpty, referenceEmpty: s.referenceEmpty)
        }
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
/// The other keys are attunet's: `cases`, `distance_definition`, `distances`, `std`, `empty_masks`, and
/// `classes` (per foreground class ``ClassStatistics``).
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

    public static let standardDeviation = "sample (ddof=1)"
    public static let emptyMaskRule =
        "a class absent from both masks scores Dice, IoU, precision and recall 1 and every distance 0 "
        + "(nnU-Net writes Dice and IoU NaN there); absent from one mask, Dice, IoU, precision and recall 0 and every distance "
        + "the worst case, the volume diagonal in mm (counted in worst_case_count); no case is dropped"

    /// The summary of `cases` (at least one, all with the same classes); `classNames[c − 1]` names class c.
    public init(cases: [CaseEvaluation], classNames: [String], definition: SurfaceDistanceDefinition) {
        precondition(!cases.isEmpty, "a summary needs a case")
        metricPerCase = cases.map { c in
            NNUNetCase(
                metrics: Dictionary(
                    uniqueKeysWithValues: c.classes.enumerated().map {
                        (String($0.offset + 1), NNUNetMetrics($0.element, voxels: c.voxels))
                    }), predictionFile: c.predictionFile, referenceFile: c.referenceFile, caseID: c.id)
        }
        let labels = (1...cases[0].classes.count).map(String.init)
        let perCase = metricPerCase
        let means = Dictionary(
            uniqueKeysWithValues: labels.map { l in (l, NNUNetMetrics.mean(perCase.map { $0.metrics[l]! })) })
        mean = means
        foregroundMean = NNUNetMetrics.mean(labels.map { means[$0]! })
        self.cases = cases.count
        distanceDefinition = definition.optionName
        distances = definition.explanation
        std = Self.standardDeviation
        emptyMasks = Self.emptyMaskRule
        classes = ClassStatistics.summarize(cases.map(\.classes), names: classNames)
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
    public var summary: EvaluationSummary

    public init(cases: [CaseEvaluation], classNames: [String], definition: SurfaceDistanceDefinition) {
        self.cases = cases
        self.classNames = classNames
        self.definition = definition
        summary = EvaluationSummary(cases: cases, classNames: classNames, definition: definition)
    }

    /// Writes `metrics.csv`, `summary.json` and `summary.md` into `folder` (made when missing; each file
    /// replaced atomically).
    public func write(to folder: String) throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try AtomicFile.write(csv(), to: "\(folder)/metrics.csv")
        try AtomicFile.write(try JSONFiles.data(summary), to: "\(folder)/summary.json")
        try AtomicFile.write(markdown(), to: "\(folder)/summary.md")
    }

    /// `metrics.csv`: one row per case and class.
    public func csv() -> String {
        var csv =
            "case,class,label,dice,precision,recall,assd_mm,hd95_mm,s2s_mm,mean_pred_to_ref_mm,mean_ref_to_pred_mm,"
            + "intersection_voxels,predicted_voxels,reference_voxels,empty,distances_worst_case,s2s_worst_case\n"
        for c in cases {
            for (i, x) in c.classes.enumerated() {
                let values = [
                    x.dice, x.precision, x.recall, x.assd, x.hd95, x.s2s2d, x.meanPredictionToReference,
                    x.meanReferenceToPrediction,
                ].map { String(format: "%.6g", $0) }
                let counts = [x.intersection, x.predicted, x.reference].map { String(Int($0)) }
                csv +=
                    ([c.id, classNames[i], String(i + 1)] + values + counts
                    + [x.empty.rawValue, String(x.distancesAreWorstCase), String(x.s2sIsWorstCase)]).joined(
                        separator: ",") + "\n"
            }
        }
        return csv
    }

    static let columns: [(Metric, String, Int)] = [
        (.dice, "Dice", 3), (.precision, "precision", 3), (.recall, "recall", 3),
        (.assd, "ASSD mm", 2), (.hd95, "HD95 mm", 2), (.s2s2d, "S2S mm", 2),
    ]

    /// `summary.md`: per class, mean ± sample std and median of each metric, with the number of worst-case
    /// substitutions in brackets beside each distance (Dice, precision and recall have none).
    public func markdown() -> String {
        var t = "| class | " + Self.columns.map(\.1).joined(separator: " | ") + " | empty (both/pred/ref) |\n"
        t += "|---|" + Self.columns.map { _ in "---|" }.joined() + "---|\n"
        for c in summary.classes {
            let cells = Self.columns.map { metric, _, digits -> String in
                let m = c.metrics[metric.rawValue]!
                let worst = metric.higherIsBetter ? "" : " [\(m.worstCaseCount) worst]"
                return "\(fmt(m.mean, digits)) ± \(fmt(m.std, digits)) (median \(fmt(m.median, digits)))\(worst)"
            }
            t +=
                "| \(c.name) | " + cells.joined(separator: " | ")
                + " | \(c.bothEmpty)/\(c.predictionEmpty)/\(c.referenceEmpty) |\n"
        }
        t +=
            "\n\(cases.count) case(s); mean ± sample std (median); [n worst] = n cases whose value is the worst-case substitute "
            + "(the volume diagonal: one mask empty, or for S2S no axial slice holding both). Surface distances: \(definition.explanation).\n"
        return t
    }
}
