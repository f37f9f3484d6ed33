import DataPipeline
import Evaluation
import Foundation
import Inference
import Support
import Tensor
import Training

/// What `attunet postprocess` compares for each class: `--keep`, `--min-volume`, `--connectivity`.
public struct PostprocessingOptions: Sendable, Equatable {
    /// Components kept by the "largest k" variant, per class name (absent: 1, and the variant is the plain
    /// "largest"). `--keep kidney:2`.
    public var keep: [String: Int] = [:]
    /// The "remove small" variant's volume in mm³ per class name (absent: ``defaultMinVolume``).
    public var minVolume: [String: Double] = [:]
    /// 1000 mm³ (1 mL): far below any whole organ the paper segments (a pancreas holds some 70 mL, a kidney or
    /// a spleen 150 mL and more), and above the specks of a few voxels that scatter around a prediction.
    public var defaultMinVolume = 1000.0
    /// 26 by default, as nnU-Net (scikit-image's `label` at full connectivity) and MONAI's
    /// `KeepLargestConnectedComponent` (`connectivity=None`, full) use.
    public var connectivity: Connectivity = .twentySix

    public init() {}

    /// `--keep`: comma-separated `class:k` entries (k ≥ 1), e.g. `kidney:2`.
    public static func keep(parsing text: String) throws -> [String: Int] {
        var out: [String: Int] = [:]
        for entry in text.split(separator: ",") {
            let parts = entry.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, !parts[0].isEmpty, let k = Int(parts[1]), k >= 1 else {
                throw AttunetError("--keep: '\(entry)' is not class:k with k >= 1 (e.g. kidney:2)")
            }
            out[parts[0]] = k
        }
        return out
    }

    /// `--min-volume`: comma-separated entries, each a volume in mm³ for every class, or `class:mm3` for one
    /// (e.g. `500` or `800,pancreas:500`). Returns the default (nil: not given) and the per-class values.
    public static func minVolume(parsing text: String) throws -> (all: Double?, perClass: [String: Double]) {
        var all: Double? = nil
        var per: [String: Double] = [:]
        for entry in text.split(separator: ",") {
            let parts = entry.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard let v = Double(parts.last!), v.isFinite, v >= 0, parts.count == 1 || !parts[0].isEmpty else {
                throw AttunetError("--min-volume: '\(entry)' is not mm3 or class:mm3 with mm3 >= 0 (e.g. pancreas:500)")
            }
            if parts.count == 1 { all = v } else { per[parts[0]] = v }
        }
        return (all, per)
    }

    /// Refuses a class name of `--keep` or `--min-volume` that `classNames` (foreground) lacks, naming the
    /// run's classes.
    public func check(classNames: [String], run: String) throws {
        for (option, names) in [("--keep", keep.keys.sorted()), ("--min-volume", minVolume.keys.sorted())] {
            if let bad = names.first(where: { !classNames.contains($0) }) {
                throw AttunetError(
                    "\(option): no class '\(bad)' in \(run) (its classes: \(classNames.joined(separator: ", ")))")
            }
        }
    }

    /// The variants compared for class `name`, in order: none, largest, largest k (when k > 1), remove small.
    public func variants(for name: String) -> [PostprocessingStep] {
        var v: [PostprocessingStep] = [.none, .largest(1)]
        if let k = keep[name], k > 1 { v.append(.largest(k)) }
        v.append(.removeSmall(minVolume[name] ?? defaultMinVolume))
        return v
    }
}

/// The choice for one class from every test case's metrics under each variant: ``PostprocessingPlan/decisionRule``.
/// Dice and HD95 follow the project's empty-mask rule (``EvaluationSummary/emptyMaskRule``): a class absent
/// from both masks scores Dice 1 and HD95 0; absent from one, Dice 0 and HD95 the worst case (the volume's
/// diagonal in mm), so a variant that deletes a whole organ pays for it in both means. No value is NaN and
/// every case counts.
public enum PostprocessingDecision {
    /// `cases[i][v]`: case i's metrics of the class under `steps[v]` (`steps[0]` is none). Returns the
    /// index chosen and every variant's numbers.
    public static func decide(steps: [PostprocessingStep], cases: [[ClassMetrics]]) -> (
        chosen: Int, variants: [PostprocessingPlan.VariantResult]
    ) {
        precondition(steps.first == PostprocessingStep.none && !cases.isEmpty, "none first, and a case")
        let n = Double(cases.count)
        let dice = steps.indices.map { v in cases.map { $0[v].dice }.reduce(0, +) / n }
        let hd95 = steps.indices.map { v in cases.map { $0[v].hd95 }.reduce(0, +) / n }
        let kept = steps.indices.map { dice[$0] >= dice[0] && hd95[$0] <= hd95[0] }
        var best = 0
        for v in steps.indices.dropFirst() where kept[v] {
            if dice[v] > dice[best] || (dice[v] == dice[best] && hd95[v] < hd95[best]) { best = v }
        }
        let results = steps.indices.map {
            PostprocessingPlan.VariantResult(
                step: steps[$0], diceMean: dice[$0], hd95Mean: hd95[$0], diceChange: dice[$0] - dice[0],
                hd95Change: hd95[$0] - hd95[0], kept: kept[$0])
        }
        return (best, results)
    }

    /// The metrics of every class (element c − 1) under each of its variants (`variants[c − 1]`) for one case:
    /// `prediction` and `reference` label maps of `dim` voxels at `spacing` mm. Each class is scored alone (its
    /// mask against the reference's) by ``Evaluator``, so its numbers are those the Evaluator gives that class
    /// of the whole label map; a variant that removes nothing reuses the unprocessed metrics.
    public static func score(
        prediction: [UInt8], reference: [UInt8], dim: Dim3, spacing: VoxelSpacing,
        variants: [[PostprocessingStep]], connectivity: Connectivity, definition: SurfaceDistanceDefinition
    ) -> [[ClassMetrics]] {
        precondition(prediction.count == dim.count && reference.count == dim.count)
        let evaluator = Evaluator(classes: 2, definition: definition)
        var mask = [UInt8](repeating: 0, count: dim.count)
        var ref = mask
        var work = mask
        return variants.enumerated().map { i, steps in
            let c = UInt8(i + 1)
            for v in 0..<dim.count {
                mask[v] = prediction[v] == c ? 1 : 0
                ref[v] = reference[v] == c ? 1 : 0
            }
            let raw = evaluator.metrics(prediction: mask, reference: ref, dim: dim, spacing: spacing)[0]
            return steps.map { step in
                guard step.kind != .none else { return raw }
                let removed = work.withUnsafeMutableBufferPointer { w in
                    mask.withUnsafeBufferPointer { w.baseAddress!.update(from: $0.baseAddress!, count: dim.count) }
                    return step.apply(label: 1, to: w, dim: dim, spacing: spacing, connectivity: connectivity)
                }
                return removed == 0
                    ? raw : evaluator.metrics(prediction: work, reference: ref, dim: dim, spacing: spacing)[0]
            }
        }
    }
}

/// `attunet postprocess --cv-dir RUN`: chooses, per model and foreground class, the postprocessing of the
/// cross-validation's saved test predictions (`fold_<k>/<model>/test/<case>.nii.gz`) that does not lower the
/// mean Dice nor raise the mean HD95 over every test case, and writes `postprocessing.json`
/// (``PostprocessingPlan``) and the paired comparison `summary_postprocessed.md` / `.json`
/// (``PostprocessedSummary``). The CV's own `summary.*` files are left as they are.
///
/// Each prediction is compared with the label map `cv` scored it against, the case store's, taken onto the
/// prediction's grid: the source grid, by the nearest stored voxel of each source voxel (``SourceExport``'s
/// nearest-neighbour mapping, the one that maps the predicted labels there); for a case whose store records no
/// source geometry (`cv` then keeps the prediction on the stored grid), the stored grid itself.
public final class PostprocessingSearch {
    /// The cross-validation folder.
    public let cvDir: String
    public let options: PostprocessingOptions
    /// Print one line per fold and the decisions.
    public var verbose = true

    public init(cvDir: String, options: PostprocessingOptions) {
        self.cvDir = cvDir
        self.options = options
    }

    /// The saved predictions of one fold of one model: `fold_<k>/<model>/test/`.
    public static func testFolder(_ folder: RunFolder, fold k: Int, model: String) -> String {
        folder.fold(k, model: model).testPredictions.path
    }

    func say(_ line: String) {
        guard verbose else { return }
        print(line)
        fflush(nil)
    }

    /// Reads the run, scores every saved test prediction under every variant, decides and writes
    /// `postprocessing.json`, `summary_postprocessed.json` and `summary_postprocessed.md` in the run folder.
    /// Every check (configuration, store, every fold's results and predictions present) runs before the first
    /// case is scored; an error names the file and what to do.
    @discardableResult
    public func run() throws -> (plan: PostprocessingPlan, summary: PostprocessedSummary) {
        let folder = RunFolder(path: cvDir)
        guard let data = FileManager.default.contents(atPath: folder.config.path) else {
            throw AttunetError(
                "\(cvDir): not a cross-validation folder (no \(folder.config.lastPathComponent); attunet cv --out writes one)"
            )
        }
        let config: CrossValidationConfig
        do { config = try JSONFiles.decode(CrossValidationConfig.self, from: data) } catch {
            throw AttunetError("\(folder.config.path): not a cross-validation configuration (\(error))")
        }
        let store = try CaseStore(path: config.store)
        guard store.fingerprint == config.storeFingerprint else {
            throw AttunetError(
                "\(config.store): not the store \(cvDir) was cross-validated on (its fingerprint differs from config.json's); the references must be the ones cv scored against"
            )
        }
        let names = Array(store.classNames.dropFirst())
        try options.check(classNames: names, run: cvDir)
        let plan = try FoldPlan.load(
            folder.splits.path, ids: store.cases.map(\.id), folds: config.folds, inverse: config.inverse)
        let models = config.models.map(\.kind.rawValue)
        // Everything present before anything is scored.
        var jobs: [(model: String, fold: Int, id: String, path: String)] = []
        for model in models {
            for k in 0..<plan.count {
                let sub = folder.fold(k, model: model)
                guard FileManager.default.fileExists(atPath: sub.foldResults.path) else {
                    throw AttunetError(
                        "\(sub.path): fold \(k) of \(model) is not finished (no results.json); finish the cross-validation first (rerun the same attunet cv command)"
                    )
                }
                let test = Self.testFolder(folder, fold: k, model: model)
                guard FileManager.default.fileExists(atPath: test) else {
                    throw AttunetError(
                        "\(test): no saved test predictions (the run was made by an attunet that did not keep them); rerun the same attunet cv command with this version: it keeps the finished folds and writes their test predictions"
                    )
                }
                for id in plan.testCases(fold: k) {
                    let path = "\(test)/\(id).nii.gz"
                    guard FileManager.default.fileExists(atPath: path) else {
                        throw AttunetError(
                            "\(path): missing (a test case of fold \(k) of \(model)); rerun the same attunet cv command to write it"
                        )
                    }
                    jobs.append((model, k, id, path))
                }
            }
        }
        let variants = names.map { options.variants(for: $0) }
        say(
            "postprocess: \(models.count) model(s) x \(names.count) class(es) on \(jobs.count / max(models.count, 1)) test case(s) per model; variants: "
                + zip(names, variants).map { "\($0) \($1.map(\.description).joined(separator: " / "))" }.joined(
                    separator: "; ") + " (\(options.connectivity.rawValue)-connected)")
        // scores[model][case][class][variant]
        var scores: [String: [[[ClassMetrics]]]] = [:]
        var started = Date()
        for (i, job) in jobs.enumerated() {
            let c = store.index(of: job.id)!
            let (prediction, reference, dim, spacing) = try Self.read(job.path, store: store, case: c)
            scores[job.model, default: []].append(
                PostprocessingDecision.score(
                    prediction: prediction, reference: reference, dim: dim, spacing: spacing, variants: variants,
                    connectivity: options.connectivity, definition: config.distanceDefinition))
            let last = i + 1 == jobs.count || jobs[i + 1].model != job.model || jobs[i + 1].fold != job.fold
            if last {
                let n = jobs.filter { $0.model == job.model && $0.fold == job.fold }.count
                say(
                    "postprocess: \(job.model) fold \(job.fold + 1)/\(plan.count): \(n) case(s) scored under every variant in \(fmt(Date().timeIntervalSince(started), 1)) s"
                )
                started = Date()
            }
        }
        var decisions: [PostprocessingPlan.ModelDecision] = []
        var chosen: [String: [Int]] = [:]
        for model in models {
            let perCase = scores[model] ?? []
            var classes: [PostprocessingPlan.ClassDecision] = []
            for (ci, name) in names.enumerated() {
                let (best, results) = PostprocessingDecision.decide(
                    steps: variants[ci], cases: perCase.map { $0[ci] })
                chosen[model, default: []].append(best)
                classes.append(
                    PostprocessingPlan.ClassDecision(
                        label: ci + 1, name: name, cases: perCase.count, chosen: variants[ci][best], variants: results))
                say(
                    "postprocess: \(model) \(name): "
                        + results.map {
                            "\($0.step) Dice \(fmt($0.diceMean, 4)) HD95 \(fmt($0.hd95Mean, 2))\($0.kept ? "" : " (rejected)")"
                        }.joined(separator: "; ") + " -> \(variants[ci][best])")
            }
            decisions.append(PostprocessingPlan.ModelDecision(model: model, classes: classes))
        }
        let grid =
            "each saved prediction on its own grid (the source grid; the stored grid for a case whose store records no source geometry), against the case store's label map that cv scored, taken onto that grid by the nearest stored voxel"
        let result = PostprocessingPlan(
            run: cvDir, connectivity: options.connectivity, distanceDefinition: config.distanceDefinition.optionName,
            grid: grid, rule: PostprocessingPlan.decisionRule, emptyMasks: EvaluationSummary.emptyMaskRule,
            models: decisions)
        let summary = PostprocessedSummary(
            plan: result, jobs: jobs.map { ($0.model, $0.fold, $0.id) }, scores: scores, chosen: chosen,
            classNames: names)
        try AtomicFile.write(try JSONFiles.data(result), to: folder.postprocessing.path)
        try AtomicFile.write(try JSONFiles.data(summary), to: folder.summaryPostprocessedJSON.path)
        let md = summary.markdown()
        try AtomicFile.write(md, to: folder.summaryPostprocessedMarkdown.path)
        if verbose {
            print(md, terminator: "")
            say(
                "postprocess: wrote \(folder.postprocessing.path), \(folder.summaryPostprocessedMarkdown.path), \(folder.summaryPostprocessedJSON.path); attunet predict --cv-dir \(cvDir) applies the decision"
            )
        }
        return (result, summary)
    }

    /// A saved prediction (checked: integer labels, on the grid expected) and the store's label map of case
    /// `c` on that grid, with the grid's size and spacing.
    static func read(_ path: String, store: CaseStore, case c: Int) throws -> (
        prediction: [UInt8], reference: [UInt8], dim: Dim3, spacing: VoxelSpacing
    ) {
        let volume = try NIfTIVolume.read(path)
        let prediction = try Evaluator.labels(volume, path)
        let stored = try store.label(c)
        let info = store.cases[c]
        let place = "\(store.path)#\(info.id)"
        if let g = try? SourceGeometry(store: store, case: c) {
            let s = g.sourceShape
            try GeometryCheck.check(
                shape: [volume.nx, volume.ny, volume.nz], affine: volume.affine, path: path,
                referenceShape: [s.x, s.y, s.z], referenceAffine: g.sourceAffine,
                referencePath: "\(place) (source grid)")
            let reference = try SourceExport.labels(
                Prediction(shape: info.shape, classes: store.classNames.count, labels: stored), geometry: g,
                resampling: .nearestLabels)
            return (prediction, reference, s, VoxelSpacing(g.sourceSpacing))
        }
        let s = info.shape
        try GeometryCheck.check(
            shape: [volume.nx, volume.ny, volume.nz], affine: volume.affine, path: path,
            referenceShape: [s.x, s.y, s.z], referenceAffine: info.affine, referencePath: "\(place) (stored grid)")
        return (prediction, stored, s, VoxelSpacing(info.spacing))
    }
}

/// `summary_postprocessed.json` / `.md`: per model and class, the CV's test cases before (raw: the saved
/// predictions) and after the chosen postprocessing, paired per case, with the two-sided Wilcoxon signed-rank
/// test (scipy's defaults, ``Wilcoxon``) of postprocessed − raw for Dice and HD95; every variant's means; and
/// every case's values. Raw and postprocessed are scored on the same grid (``PostprocessingSearch``), so the
/// raw values may differ slightly from `summary.md`'s, which `cv` scored on the stored grid.
public struct PostprocessedSummary: Codable, Sendable, Equatable {
    /// Means of one metric before and after, and the paired test of after − before.
    public struct Paired: Codable, Sendable, Equatable {
        public var raw: Double
        public var postprocessed: Double
        public var meanDifference: Double
        public var wilcoxonStatistic: Double
        public var pValue: Double
        public var method: String
    }

    public struct Row: Codable, Sendable, Equatable {
        public var model: String
        public var className: String
        public var postprocessing: PostprocessingStep
        public var pairs: Int
        public var dice: Paired
        public var hd95: Paired
    }

    public struct CaseRow: Codable, Sendable, Equatable {
        public var model: String
        public var fold: Int
        public var caseID: String
        public var className: String
        public var diceRaw: Double, dicePostprocessed: Double
        public var hd95Raw: Double, hd95Postprocessed: Double
    }

    public var run: String
    public var grid: String
    public var distanceDefinition: String
    public var connectivity: Connectivity
    public var rows: [Row]
    /// Every variant's means, as `postprocessing.json` has them.
    public var decisions: [PostprocessingPlan.ModelDecision]
    public var perCase: [CaseRow]

    init(
        plan: PostprocessingPlan, jobs: [(String, Int, String)], scores: [String: [[[ClassMetrics]]]],
        chosen: [String: [Int]], classNames: [String]
    ) {
        run = plan.run
        grid = plan.grid
        distanceDefinition = plan.distanceDefinition
        connectivity = plan.connectivity
        decisions = plan.models
        var rows: [Row] = []
        var cases: [CaseRow] = []
        for m in plan.models {
            let perCase = scores[m.model] ?? []
            let ids = jobs.filter { $0.0 == m.model }
            for (ci, c) in m.classes.enumerated() {
                let best = chosen[m.model]![ci]
                let raw = perCase.map { $0[ci][0] }
                let post = perCase.map { $0[ci][best] }
                func paired(_ f: (ClassMetrics) -> Double) -> Paired {
                    let x = post.map(f)
                    let y = raw.map(f)
                    let w = Wilcoxon.signedRank(x, y)
                    let n = Double(x.count)
                    return Paired(
                        raw: y.reduce(0, +) / n, postprocessed: x.reduce(0, +) / n,
                        meanDifference: zip(x, y).map { $0 - $1 }.reduce(0, +) / n, wilcoxonStatistic: w.statistic,
                        pValue: w.pValue, method: w.method.rawValue)
                }
                guard !raw.isEmpty else { continue }
                rows.append(
                    Row(
                        model: m.model, className: c.name, postprocessing: c.chosen, pairs: raw.count,
                        dice: paired(\.dice), hd95: paired(\.hd95)))
                for (i, job) in ids.enumerated() {
                    cases.append(
                        CaseRow(
                            model: m.model, fold: job.1, caseID: job.2, className: c.name, diceRaw: raw[i].dice,
                            dicePostprocessed: post[i].dice, hd95Raw: raw[i].hd95, hd95Postprocessed: post[i].hd95))
                }
            }
        }
        self.rows = rows
        perCase = cases
    }

    /// The paired table (one row per model and class) and every variant's means.
    public func markdown() -> String {
        var s = "# Postprocessing of the cross-validation's test predictions\n\n"
        s +=
            "Per model and class, the postprocessing chosen by attunet postprocess (\(connectivity.rawValue)-connected components) against none, over every test case of every fold, paired per case: mean raw, mean postprocessed, the mean difference (postprocessed − raw) and the two-sided Wilcoxon signed-rank p-value (scipy's defaults). Scored \(grid); HD95 under the \(distanceDefinition) definition; so the raw means may differ slightly from summary.md's (scored on the stored grid).\n\n"
        s +=
            "| model | class | postprocessing | cases | DSC raw | DSC post | Δ DSC | p | HD95 raw (mm) | HD95 post (mm) | Δ HD95 | p |\n"
        s += "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        for r in rows {
            s += "| \(r.model) | \(r.className) | \(r.postprocessing) | \(r.pairs) | "
            s += "\(fmt(r.dice.raw, 4)) | \(fmt(r.dice.postprocessed, 4)) | \(fmt(r.dice.meanDifference, 4)) | "
            s += "\(fmt(r.dice.pValue, 4)) | \(fmt(r.hd95.raw, 2)) | \(fmt(r.hd95.postprocessed, 2)) | "
            s += "\(fmt(r.hd95.meanDifference, 2)) | \(fmt(r.hd95.pValue, 4)) |\n"
        }
        s += "\nEvery variant (kept: mean Dice not lower and mean HD95 not higher than none's)\n\n"
        s += "| model | class | variant | mean DSC | mean HD95 (mm) | kept | chosen |\n|---|---|---|---|---|---|---|\n"
        for m in decisions {
            for c in m.classes {
                for v in c.variants {
                    s += "| \(m.model) | \(c.name) | \(v.step) | \(fmt(v.diceMean, 4)) | \(fmt(v.hd95Mean, 2)) | "
                    s += "\(v.kept ? "yes" : "no") | \(v.step == c.chosen ? "yes" : "") |\n"
                }
            }
        }
        return s
    }
}
