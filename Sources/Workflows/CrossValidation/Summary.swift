import Evaluation
import Foundation
import NN
import Tensor
import Training

/// The reports of a cross-validation: per model the evaluation over all its test cases (the
/// ``EvaluationSummary`` that `attunet evaluate` writes, nnU-Net's `summary.json` keys included), per
/// fold the class statistics, every case's metrics, and with two or more models the paired comparison of the
/// first with each other. Written as `summary.json` (snake_case keys: `protocol`, `folds`,
/// `distance_definition`, `class_names`, `models`, `per_fold`, `per_case`, `comparisons`); `csv()` and
/// `markdown()` give `summary.csv` and `summary.md`.
public struct CrossValidationSummary: Codable, Sendable, Equatable {
    /// One class's statistics over a set of cases: the shared ``ClassStatistics``.
    public typealias ClassStats = ClassStatistics

    public struct ModelRow: Codable, Sendable, Equatable {
        public var model: String
        public var parameters: Int
        /// Mean wall time of whole-volume inference per test case, in seconds.
        public var inferenceSecondsPerVolume: Double
        /// The evaluation over every test case of every fold, as `attunet evaluate` writes it.
        public var evaluation: EvaluationSummary
        /// Per foreground class, the statistics over every test case (`evaluation.classes`).
        public var classes: [ClassStats] { evaluation.classes }
    }

    public struct FoldRow: Codable, Sendable, Equatable {
        public var model: String
        public var fold: Int
        public var checkpoint: String
        public var weightsSHA256: String
        public var classes: [ClassStats]
    }

    public struct CaseRow: Codable, Sendable, Equatable {
        public var model: String
        public var fold: Int
        public var caseID: String
        public var className: String
        public var dice: Double, precision: Double, recall: Double, assd: Double, hd95: Double, s2s2d: Double
        public var empty: EmptyMasks
        public var distancesAreWorstCase: Bool
        public var s2sIsWorstCase: Bool
        public var seconds: Double
        /// IoU and the relative volume difference (nil in summaries written before attunet added them).
        public var iou: Double? = nil, rvd: Double? = nil
        /// The normalised surface Dice, at the class's `nsd_tolerance` (nil: not measured).
        public var nsd: Double? = nil
        enum CodingKeys: String, CodingKey {
            case model, fold
            case caseID = "case"
            case className = "class"
            case dice, precision, recall, assd, hd95, s2s2d, empty,
                distancesAreWorstCase, s2sIsWorstCase, seconds
            case iou, rvd, nsd
        }
    }

    /// `models[0]` − `models[1]` on the paired test cases of one class and metric.
    public struct Comparison: Codable, Sendable, Equatable {
        public var className: String
        public var metric: String
        public var models: [String]
        public var pairs: Int
        public var meanDifference: Double
        public var wilcoxonStatistic: Double
        public var pValue: Double
        public var method: String
    }

    public var protocolName: String
    public var folds: Int
    /// `pooled` or `max-directed`.
    public var distanceDefinition: String
    public var classNames: [String]
    public var models: [ModelRow]
    public var foldRows: [FoldRow]
    public var cases: [CaseRow]
    public var comparisons: [Comparison]

    enum CodingKeys: String, CodingKey {
        case protocolName = "protocol"
        case folds, distanceDefinition, classNames, models
        case foldRows = "perFold"
        case
            cases = "perCase"
        case comparisons
    }

    /// The summary of `results` (every fold of every model, models in report order) measured against the
    /// label maps of the case store `store`. In the evaluations' `metric_per_case`, a case's `reference_file`
    /// is `<store>#<case id>` and its `prediction_file` `fold_<k>/<model>#<case id>` (predicted in memory).
    public init(results: [FoldResults], plan: FoldPlan, definition: SurfaceDistanceDefinition, store: String) {
        protocolName = plan.inverse ? "inverse" : "k-fold"
        folds = plan.count
        distanceDefinition = definition.optionName
        let names = results.first?.classNames ?? []
        classNames = names
        var modelNames: [String] = []
        for r in results where !modelNames.contains(r.model) { modelNames.append(r.model) }
        models = modelNames.map { m in
            let rs = results.filter { $0.model == m }
            let cases = rs.flatMap(\.cases)
            let evaluated = rs.flatMap { r in
                r.cases.map {
                    CaseEvaluation(
                        id: $0.id, predictionFile: "fold_\(r.fold)/\(r.model)#\($0.id)",
                        referenceFile: "\(store)#\($0.id)",
                        voxels: $0.voxels, classes: $0.classes)
                }
            }
            return ModelRow(
                model: m, parameters: rs[0].parameters,
                inferenceSecondsPerVolume: cases.map(\.seconds).reduce(0, +) / Double(max(cases.count, 1)),
                evaluation: EvaluationSummary(cases: evaluated, classNames: names, definition: definition))
        }
        foldRows = results.map {
            FoldRow(
                model: $0.model, fold: $0.fold, checkpoint: $0.checkpoint, weightsSHA256: $0.weightsSHA256,
                classes: ClassStatistics.summarize($0.cases.map(\.classes), names: names))
        }
        let rows = results.flatMap { r in
            r.cases.flatMap { c in
                c.classes.enumerated().map { i, m in
                    CaseRow(
                        model: r.model, fold: r.fold, caseID: c.id, className: names[i], dice: m.dice,
                        precision: m.precision, recall: m.recall, assd: m.assd, hd95: m.hd95, s2s2d: m.s2s2d,
                        empty: m.empty, distancesAreWorstCase: m.distancesAreWorstCase,
                        s2sIsWorstCase: m.s2sIsWorstCase, seconds: c.seconds, iou: m.iou, rvd: m.rvd, nsd: m.nsd)
                }
            }
        }
        cases = rows
        var comparisons: [Comparison] = []
        if let first = modelNames.first {
            for other in modelNames.dropFirst() {
                for name in names {
                    for metric in [Metric.dice, .s2s2d] {
                        func values(_ model: String) -> [String: Double] {
                            var v: [String: Double] = [:]
                            for row in rows where row.model == model && row.className == name {
                                v[row.caseID] = row.value(metric)
                            }
                            return v
                        }
                        let a = values(first)
                        let b = values(other)
                        let ids = a.keys.filter { b[$0] != nil }.sorted()
                        guard !ids.isEmpty else { continue }
                        let x = ids.map { a[$0]! }
                        let y = ids.map { b[$0]! }
                        let w = Wilcoxon.signedRank(x, y)
                        comparisons.append(
                            Comparison(
                                className: name, metric: metric.rawValue, models: [first, other],
                                pairs: ids.count,
                                meanDifference: zip(x, y).map { $0 - $1 }.reduce(0, +) / Double(ids.count),
                                wilcoxonStatistic: w.statistic, pValue: w.pValue, method: w.method.rawValue))
                    }
                }
            }
        }
        self.comparisons = comparisons
    }

    /// The class the paper's table details (precision, recall, S2S): pancreas when the store has it, else the
    /// first foreground class.
    public var primaryClass: String {
        classNames.first { $0.lowercased() == "pancreas" } ?? classNames.first ?? ""
    }

    static func grouped(_ n: Int) -> String {
        var digits = Array(String(n))
        var out = ""
        while digits.count > 3 {
            out = "," + String(digits.suffix(3)) + out
            digits.removeLast(3)
        }
        return String(digits) + out
    }

    static func f(_ x: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", x) }

    /// "mean ± std", with " (wc N)" for a distance: N cases hold the worst-case substitute.
    static func cell(_ s: MetricSummary, digits: Int, worstCase: Bool) -> String {
        f(s.mean, digits) + " ± " + f(s.std, digits) + (worstCase ? " (wc \(s.worstCaseCount))" : "")
    }

    /// `summary.md`: the paper's table (per model: the primary class's DSC, precision, recall, S2S; every other
    /// class's DSC; parameters; inference time), surface distances under the run's definition, and the paired
    /// comparison.
    public func markdown() -> String {
        let p = primaryClass
        let others = classNames.filter { $0 != p }
        let n = models.first.map { $0.classes.first?.metrics["dice"]?.count ?? 0 } ?? 0
        var s = "# Cross-validation: \(folds)-fold, \(protocolName) protocol, \(n) test cases per model\n\n"
        s += "Mean ± std over the test cases of all folds (each case tested once per model). "
        s +=
            "S2S: the original code's slice-wise contour distance in mm. (wc N): N cases whose distance is the worst-case substitute (an empty mask; see Evaluation.docc).\n\n"
        var header = ["Method", "\(p) DSC", "\(p) precision", "\(p) recall", "\(p) S2S (mm)"]
        header += others.map { "\($0) DSC" } + ["parameters", "inference (s/volume)"]
        s += "| " + header.joined(separator: " | ") + " |\n|" + header.map { _ in "---|" }.joined() + "\n"
        for m in models {
            func stat(_ c: String, _ metric: String) -> MetricSummary {
                m.classes.first { $0.name == c }!.metrics[metric]!
            }
            var row = [
                m.model, Self.cell(stat(p, "dice"), digits: 3, worstCase: false),
                Self.cell(stat(p, "precision"), digits: 3, worstCase: false),
                Self.cell(stat(p, "recall"), digits: 3, worstCase: false),
                Self.cell(stat(p, "s2s2d"), digits: 2, worstCase: true),
            ]
            row += others.map { Self.cell(stat($0, "dice"), digits: 3, worstCase: false) }
            row += [Self.grouped(m.parameters), Self.f(m.inferenceSecondsPerVolume, 2)]
            s += "| " + row.joined(separator: " | ") + " |\n"
        }
        s +=
            "\nSurface distances (mm), distance definition: \(distanceDefinition == "pooled" ? "pooled" : "maxDirected") ("
        s +=
            distanceDefinition == "pooled"
            ? "medpy: both directed sets pooled"
            : "DeepMind surface-distance: HD95 the larger directed percentile, ASSD the mean of the directed means"
        s +=
            ")\n\n| Method | " + classNames.flatMap { ["\($0) ASSD", "\($0) HD95"] }.joined(separator: " | ")
            + " |\n|---|"
        s += classNames.map { _ in "---|---|" }.joined() + "\n"
        for m in models {
            s +=
                "| \(m.model) | "
                + m.classes.flatMap {
                    [
                        Self.cell($0.metrics["assd"]!, digits: 2, worstCase: true),
                        Self.cell($0.metrics["hd95"]!, digits: 2, worstCase: true),
                    ]
                }.joined(separator: " | ") + " |\n"
        }
        s += overlapTable()
        if !comparisons.isEmpty {
            s += "\nPaired comparison over the same test cases (Wilcoxon signed-rank, two-sided, scipy's defaults)\n\n"
            s += Self.comparisonTable(
                comparisons.map {
                    (
                        $0.className, $0.metric, "\($0.models[0]) − \($0.models[1])", $0.meanDifference, $0.pValue,
                        $0.pairs
                    )
                })
        }
        return s
    }

    /// The markdown table of IoU, RVD and (when the run measured it) NSD per model and class, mean ± std, with
    /// the RVD's substitutes counted as (wc N) and each class's NSD tolerance in its header.
    func overlapTable() -> String {
        guard let first = models.first else { return "" }
        // One tolerance per class for the whole run (the config's), so the first model's names every column.
        let nsd = first.classes.map { c in c.metrics["nsd"] != nil ? c.nsdTolerance : nil }
        var header = ["Method"]
        for (c, t) in zip(first.classes, nsd) {
            header += ["\(c.name) IoU", "\(c.name) RVD"] + (t.map { ["\(c.name) NSD \(fmtShort($0)) mm"] } ?? [])
        }
        var s = "\nIoU |P∩R|/|P∪R|; RVD (|P| − |R|)/|R|, signed ((wc N): N cases with an empty reference, scored |P|)"
        if nsd.contains(where: { $0 != nil }) {
            s += "; NSD: normalised surface Dice at the tolerance (DeepMind surface-distance's definition)"
        }
        s += "\n\n| " + header.joined(separator: " | ") + " |\n|" + header.map { _ in "---|" }.joined() + "\n"
        for m in models {
            var row = [m.model]
            for (c, t) in zip(m.classes, nsd) {
                let cells: [(String, Bool)] = [("iou", false), ("rvd", true)] + (t != nil ? [("nsd", false)] : [])
                row += cells.map { key, wc in c.metrics[key].map { Self.cell($0, digits: 3, worstCase: wc) } ?? "–" }
            }
            s += "| " + row.joined(separator: " | ") + " |\n"
        }
        return s
    }

    /// A markdown table of paired comparisons, one row each: class, metric (DSC or S2S), "a − b", the mean
    /// difference, the p-value and the number of pairs.
    static func comparisonTable(
        _ rows: [(className: String, metric: String, difference: String, mean: Double, p: Double, pairs: Int)]
    ) -> String {
        var s = "| organ | metric | difference | mean difference | p-value | pairs |\n|---|---|---|---|---|---|\n"
        for c in rows {
            s += "| \(c.className) | \(c.metric == "dice" ? "DSC" : "S2S (mm)") | \(c.difference) | "
            s += "\(f(c.mean, c.metric == "dice" ? 4 : 3)) | \(f(c.p, 4)) | \(c.pairs) |\n"
        }
        return s
    }

    /// `summary.csv`: one row per model and class (`level` model, the mean and std of each metric), per fold
    /// and class (`level` fold, means), and per case and class (`level` case, values). IoU, RVD and NSD are
    /// the last columns (NSD empty when it was not measured).
    public func csv() -> String {
        let metrics = Metric.core.map(\.rawValue)
        let added = [Metric.iou, .rvd, .nsd].map(\.rawValue)
        var s =
            "level,model,fold,case,class,statistic," + metrics.joined(separator: ",")
            + ",distances_worst_case,s2s_worst_case,empty,seconds," + added.joined(separator: ",") + "\n"
        func g(_ x: Double) -> String { String(format: "%.9g", x) }
        func g(_ x: Double?) -> String { x.map { g($0) } ?? "" }
        func more(_ c: ClassStats, _ stat: String) -> String {
            "," + added.map { g(stat == "mean" ? c.metrics[$0]?.mean : c.metrics[$0]?.std) }.joined(separator: ",")
        }
        for m in models {
            for c in m.classes {
                for stat in ["mean", "std"] {
                    s += "model,\(m.model),,,\(c.name),\(stat),"
                    s += metrics.map { g(stat == "mean" ? c.metrics[$0]!.mean : c.metrics[$0]!.std) }.joined(
                        separator: ",")
                    s +=
                        ",\(c.metrics["assd"]!.worstCaseCount),\(c.metrics["s2s2d"]!.worstCaseCount),,\(g(m.inferenceSecondsPerVolume))"
                    s += more(c, stat) + "\n"
                }
            }
        }
        for r in foldRows {
            for c in r.classes {
                s +=
                    "fold,\(r.model),\(r.fold),,\(c.name),mean,"
                    + metrics.map { g(c.metrics[$0]!.mean) }.joined(separator: ",")
                s +=
                    ",\(c.metrics["assd"]!.worstCaseCount),\(c.metrics["s2s2d"]!.worstCaseCount),," + more(c, "mean")
                    + "\n"
            }
        }
        for c in cases {
            s += "case,\(c.model),\(c.fold),\(c.caseID),\(c.className),value,"
            s += [c.dice, c.precision, c.recall, c.assd, c.hd95, c.s2s2d].map(g).joined(separator: ",")
            s += ",\(c.distancesAreWorstCase ? 1 : 0),\(c.s2sIsWorstCase ? 1 : 0),\(c.empty.rawValue),\(g(c.seconds))"
            s += "," + [c.iou, c.rvd, c.nsd].map(g).joined(separator: ",") + "\n"
        }
        return s
    }
}

extension CrossValidationSummary.CaseRow {
    func value(_ metric: Metric) -> Double {
        switch metric {
        case .dice: dice
        case .precision: precision
        case .recall: recall
        case .assd: assd
        case .hd95: hd95
        case .s2s2d: s2s2d
        case .iou: iou ?? .nan
        case .rvd: rvd ?? .nan
        case .nsd: nsd ?? .nan
        }
    }
}
