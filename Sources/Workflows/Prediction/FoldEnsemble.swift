import Foundation
import Support
import Training

/// The checkpoints of a cross-validation's folds, as `predict --cv-dir` ensembles them (nnU-Net's default:
/// every fold's model, their softmax outputs averaged).
public struct FoldEnsemble: Sendable, Equatable {
    /// Which checkpoint of each fold.
    public enum Which: String, Sendable, CaseIterable {
        /// `checkpoint_best.h5` (the epoch of the best validation Dice), the one `cv` scored; a fold without
        /// validation has only `checkpoint_latest.h5`, which `cv` scored instead.
        case best
        /// `checkpoint_latest.h5`, the end of training.
        case latest
    }

    /// The model's name (a `fold_<k>/<model>` folder).
    public var model: String
    /// The folds taken, ascending.
    public var folds: [Int]
    /// One checkpoint per fold, in the order of ``folds``.
    public var checkpoints: [String]
    /// The model names the run trained, in report order.
    public var models: [String]

    /// The folds of `--folds`: `all` (nil) or comma-separated fold indices ("0,2").
    public static func folds(parsing text: String) throws -> [Int]? {
        if text == "all" { return nil }
        return try text.split(separator: ",").map {
            guard let k = Int($0.trimmingCharacters(in: .whitespaces)), k >= 0 else {
                throw AttunetError("--folds: '\($0)' is not a fold index (all, or e.g. 0,2)")
            }
            return k
        }
    }

    /// Finds the checkpoints of `model` (nil: the run's first model) for `folds` (nil: all) in the CV folder
    /// `run`. Every error names the folder or file and what is missing.
    public init(run: String, model: String?, folds: [Int]?, which: Which) throws {
        let folder = RunFolder(path: run)
        guard let data = FileManager.default.contents(atPath: folder.config.path) else {
            throw AttunetError(
                "\(run): not a cross-validation folder (no \(folder.config.lastPathComponent); attunet cv --out writes one)"
            )
        }
        let config: CrossValidationConfig
        do { config = try JSONFiles.decode(CrossValidationConfig.self, from: data) } catch {
            throw AttunetError("\(folder.config.path): not a cross-validation configuration (\(error))")
        }
        models = config.models.map(\.kind.rawValue)
        let name = model ?? models[0]
        guard models.contains(name) else {
            throw AttunetError("\(run): no model '\(name)' (the run trained \(models.joined(separator: ", ")))")
        }
        let chosen = folds ?? Array(0..<config.folds)
        if let bad = chosen.first(where: { !(0..<config.folds).contains($0) }) {
            throw AttunetError("--folds: \(run) has folds 0 to \(config.folds - 1), not \(bad)")
        }
        self.model = name
        self.folds = chosen
        checkpoints = try chosen.map { k in
            let sub = folder.fold(k, model: name)
            let fm = FileManager.default
            switch which {
            case .best where fm.fileExists(atPath: sub.checkpointBest.path): return sub.checkpointBest.path
            case .best, .latest:
                guard fm.fileExists(atPath: sub.checkpointLatest.path) else {
                    throw AttunetError(
                        "\(sub.path): no checkpoint (fold \(k) of \(name) has not been trained; rerun attunet cv to finish it, or choose --folds)"
                    )
                }
                return sub.checkpointLatest.path
            }
        }
    }
}
