import Foundation
import Support

/// Every name in a run folder, in one place: what `attunet train --out DIR` writes (`config.json`,
/// `splits.json`, the checkpoints, `log.csv`, `progress.svg`) and what `attunet cv --out DIR` adds (nnU-Net's
/// `splits_final.json`, one sub-run folder `fold_<k>/<model>/` per fold and model, each a training run folder
/// with the fold's `results.json` and its test predictions in `test/`, and the reports `summary.md`, `summary.csv`,
/// `summary.json`, `summary.svg`; `attunet postprocess` adds `postprocessing.json` and `summary_postprocessed.*`).
/// Every JSON file has snake_case keys (`JSONFiles`). See `Training.docc/RunFolder.md`.
public struct RunFolder: Sendable, Equatable {
    /// The folder itself.
    public let url: URL

    public init(_ url: URL) { self.url = url }
    public init(path: String) { self.init(URL(fileURLWithPath: path)) }

    public var path: String { url.path }

    func file(_ name: String) -> URL { url.appendingPathComponent(name) }

    /// The run's configuration (`TrainConfig` for a training run, `CrossValidationConfig` for a CV).
    public var config: URL { file("config.json") }
    /// The case ids of each set (a training run's train/validation; a CV's folds).
    public var splits: URL { file("splits.json") }
    /// A CV's folds as nnU-Net's `splits_final.json`: per fold `{"train": [...], "val": [...]}`, `val` being
    /// the fold's test cases (what nnU-Net's fold predicts and evaluates); `cv --splits` reads it back.
    public var splitsFinal: URL { file("splits_final.json") }
    /// The state to resume from.
    public var checkpointLatest: URL { file("checkpoint_latest.h5") }
    /// The epoch with the best mean validation Dice.
    public var checkpointBest: URL { file("checkpoint_best.h5") }
    /// One row per epoch.
    public var log: URL { file("log.csv") }
    /// The chart of `log.csv`.
    public var progress: URL { file("progress.svg") }
    /// A CV fold's per-case, per-class test metrics (in the fold's sub-run folder); its presence marks the fold done.
    public var foldResults: URL { file("results.json") }
    /// The CV's table in the paper's layout.
    public var summaryMarkdown: URL { file("summary.md") }
    /// The CV's summary, per-fold and per-case rows.
    public var summaryCSV: URL { file("summary.csv") }
    /// Per model the evaluation over every test case (with nnU-Net's `summary.json` keys), the per-fold
    /// and per-case rows and the paired comparisons.
    public var summaryJSON: URL { file("summary.json") }
    /// TensorBoard event files (one per process that trained this run), a run of `tensorboard --logdir`.
    public var tensorBoard: URL { file("tensorboard") }
    /// A box plot of the test Dice per class and model.
    public var summarySVG: URL { file("summary.svg") }
    /// A CV fold's test predictions (in the fold's sub-run folder): `<case>.nii.gz`, and with
    /// `--save-probabilities` `probabilities/<case>.nii.gz`, as `attunet predict` writes them.
    public var testPredictions: URL { file("test") }
    /// A CV's postprocessing decision per model and class (`attunet postprocess --cv-dir`).
    public var postprocessing: URL { file("postprocessing.json") }
    /// The CV's test cases before and after the chosen postprocessing, paired, with the Wilcoxon test.
    public var summaryPostprocessedMarkdown: URL { file("summary_postprocessed.md") }
    /// `summary_postprocessed.md`'s numbers, with every case's.
    public var summaryPostprocessedJSON: URL { file("summary_postprocessed.json") }

    /// Removes the temporary files that a write killed mid-way (SIGKILL, a lost node) left here: hidden
    /// `.tmp-<pid>-<n>-<name>` files (`AtomicFile`) whose process is not alive on this host. Rank 0 calls it when
    /// a run is reopened (`train --resume`, `--resume-from`, a CV restart). Returns the line that says what was
    /// removed, or nil when nothing was.
    public func removeStaleTemporaries() -> String? {
        let removed = AtomicFile.removeStaleTemporaries(in: path)
        guard !removed.isEmpty else { return nil }
        return
            "removed \(removed.count) temporary file(s) of a write killed mid-way from \(path): \(removed.joined(separator: ", "))"
    }

    /// The sub-run folder `fold_<k>/<model>/` of a cross-validation, itself a training run folder.
    public func fold(_ k: Int, model: String) -> RunFolder {
        RunFolder(url.appendingPathComponent("fold_\(k)").appendingPathComponent(model))
    }
}
