/// One of the per-case metrics of ``ClassMetrics``.
public enum Metric: String, Sendable, Codable, CaseIterable {
    case dice, precision, recall, assd, hd95, s2s2d

    /// The metric's value in `m`.
    public func value(_ m: ClassMetrics) -> Double {
        switch self {
        case .dice: m.dice
        case .precision: m.precision
        case .recall: m.recall
        case .assd: m.assd
        case .hd95: m.hd95
        case .s2s2d: m.s2s2d
        }
    }

    /// Whether the value in `m` is the worst-case substitute rather than a measurement.
    public func isWorstCase(_ m: ClassMetrics) -> Bool {
        switch self {
        case .dice, .precision, .recall: false  // 0 is their measured value when one mask is empty
        case .assd, .hd95: m.distancesAreWorstCase
        case .s2s2d: m.s2sIsWorstCase
        }
    }

    /// Whether a larger value is better (Dice, precision, recall) or worse (the distances).
    public var higherIsBetter: Bool { self == .dice || self == .precision || self == .recall }
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

/// The summary of one foreground class over cases: one ``MetricSummary`` per ``Metric`` and how many cases
/// had an empty mask.
public struct ClassSummary: Sendable, Equatable, Codable {
    /// The class's label value (1 for the first foreground class).
    public var label: Int
    public var metrics: [Metric: MetricSummary]
    /// Cases where both masks were empty, only the prediction, only the reference.
    public var bothEmpty: Int, predictionEmpty: Int, referenceEmpty: Int

    /// Summaries of `cases` (each the ``CaseMetrics/evaluate(prediction:reference:dim:spacing:classes:definition:)``
    /// result of one case, all with the same classes), one per foreground class.
    public static func summarize(_ cases: [[ClassMetrics]]) -> [ClassSummary] {
        precondition(!cases.isEmpty && cases.allSatisfy { $0.count == cases[0].count }, "cases need the same classes")
        return (0..<cases[0].count).map { c in
            let column = cases.map { $0[c] }
            var metrics: [Metric: MetricSummary] = [:]
            for metric in Metric.allCases {
                metrics[metric] = MetricSummary(
                    values: column.map(metric.value),
                    worstCaseCount: column.filter(metric.isWorstCase).count)
            }
            return ClassSummary(
                label: c + 1, metrics: metrics,
                bothEmpty: column.filter { $0.empty == .both }.count,
                predictionEmpty: column.filter { $0.empty == .prediction }.count,
                referenceEmpty: column.filter { $0.empty == .reference }.count)
        }
    }
}
