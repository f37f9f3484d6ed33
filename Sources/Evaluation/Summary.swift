/// One of the per-case metrics of ``ClassMetrics``. The metrics added after the first six (IoU, RVD, NSD) come
/// last, so tables and CSV files that list `allCases` keep their older columns in place.
public enum Metric: String, Sendable, Codable, CaseIterable {
    case dice, precision, recall, assd, hd95, s2s2d, iou, rvd, nsd

    /// The metric's value in `m` (NaN for NSD where ``isMeasured(_:)`` is false).
    public func value(_ m: ClassMetrics) -> Double {
        switch self {
        case .dice: m.dice
        case .precision: m.precision
        case .recall: m.recall
        case .assd: m.assd
        case .hd95: m.hd95
        case .s2s2d: m.s2s2d
        case .iou: m.iou
        case .rvd: m.rvd
        case .nsd: m.nsd ?? .nan
        }
    }

    /// The six metrics attunet reported first (Dice, precision, recall, ASSD, HD95, S2S), in the column order of
    /// the CSV files that list them.
    public static let core: [Metric] = [.dice, .precision, .recall, .assd, .hd95, .s2s2d]

    /// Whether `m` has the metric: every one but NSD always; NSD when a tolerance was given.
    public func isMeasured(_ m: ClassMetrics) -> Bool { self != .nsd || m.nsd != nil }

    /// Whether the value in `m` is the worst-case substitute rather than a measurement.
    public func isWorstCase(_ m: ClassMetrics) -> Bool {
        switch self {
        case .dice, .precision, .recall, .iou, .nsd: false  // 0 is their measured value when one mask is empty
        case .assd, .hd95: m.distancesAreWorstCase
        case .s2s2d: m.s2sIsWorstCase
        case .rvd: m.empty == .reference  // |P| in place of a ratio to an empty reference
        }
    }

    /// Whether a larger value is better (Dice, precision, recall, IoU, NSD) or worse (the distances; RVD is
    /// signed, best at 0).
    public var higherIsBetter: Bool {
        switch self {
        case .dice, .precision, .recall, .iou, .nsd: true
        case .assd, .hd95, .s2s2d, .rvd: false
        }
    }
}

/// Mean, standard deviation and median of one metric of one class over cases, with the count of worst-case
/// substitutions. Every case counts; none is dropped; no field is NaN.
public struct MetricSummary: Sendable, Equatable, Codable {
    /// The number of cases.
    public var count: Int
    public var mean: Double
    /// The sample standard deviation, √(Σ(v − mean)² / (n − 1)) (numpy's `std(ddof=1)`); 0 for one case.
    public var std: Double
    /// The middle value, or the mean of the two middle values for an even count (numpy's `median`).
    public var median: Double
    /// Cases whose value is the worst-case substitute (``Metric/isWorstCase(_:)``).
    public var worstCaseCount: Int

    /// The summary of `values` (at least one; all finite), `worstCaseCount` of them substitutes.
    public init(values: [Double], worstCaseCount: Int) {
        precondition(!values.isEmpty && values.allSatisfy(\.isFinite), "a summary needs finite values")
        count = values.count
        mean = values.reduce(0, +) / Double(count)
        let m = mean
        std = count > 1 ? (values.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(count - 1)).squareRoot() : 0
        let s = values.sorted()
        median = count % 2 == 1 ? s[count / 2] : (s[count / 2 - 1] + s[count / 2]) / 2
        self.worstCaseCount = worstCaseCount
    }
}

/// The summary of one foreground class over cases: one ``MetricSummary`` per ``Metric`` every case has (NSD
/// only when every case was measured at one tolerance) and how many cases had an empty mask.
public struct ClassSummary: Sendable, Equatable, Codable {
    /// The class's label value (1 for the first foreground class).
    public var label: Int
    public var metrics: [Metric: MetricSummary]
    /// Cases where both masks were empty, only the prediction, only the reference.
    public var bothEmpty: Int, predictionEmpty: Int, referenceEmpty: Int
    /// The tolerance in mm of the `nsd` summary (nil: no NSD).
    public var nsdTolerance: Double? = nil

    /// Summaries of `cases` (each the ``CaseMetrics/evaluate(prediction:reference:dim:spacing:classes:definition:)``
    /// result of one case, all with the same classes), one per foreground class.
    public static func summarize(_ cases: [[ClassMetrics]]) -> [ClassSummary] {
        precondition(!cases.isEmpty && cases.allSatisfy { $0.count == cases[0].count }, "cases need the same classes")
        return (0..<cases[0].count).map { c in
            let column = cases.map { $0[c] }
            let tolerances = Set(column.map(\.nsdTolerance))
            let tolerance = tolerances.count == 1 ? tolerances.first! : nil
            var metrics: [Metric: MetricSummary] = [:]
            for metric in Metric.allCases where column.allSatisfy(metric.isMeasured) {
                if metric == .nsd && tolerance == nil { continue }  // NSDs at different tolerances do not average
                metrics[metric] = MetricSummary(
                    values: column.map(metric.value),
                    worstCaseCount: column.filter(metric.isWorstCase).count)
            }
            return ClassSummary(
                label: c + 1, metrics: metrics,
                bothEmpty: column.filter { $0.empty == .both }.count,
                predictionEmpty: column.filter { $0.empty == .prediction }.count,
                referenceEmpty: column.filter { $0.empty == .reference }.count,
                nsdTolerance: metrics[.nsd] != nil ? tolerance : nil)
        }
    }
}
