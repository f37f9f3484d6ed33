import ArgumentParser
import Evaluation
import Foundation
import Support
import Tensor
import Workflows

/// `attunet postprocess`: choose per class, on a cross-validation's saved test predictions, whether removing
/// connected components helps.
struct Postprocess: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Choose per class the postprocessing that helps on a CV's test cases.",
        discussion: """
            Reads the test predictions attunet cv keeps (fold_<k>/<model>/test/<case>.nii.gz) and, for each model and foreground class, compares on every test case of every fold:
              - none: the predictions as they are;
              - largest: keep the largest connected component;
              - largest k: keep the k largest (--keep kidney:2; paired organs);
              - remove small: remove the components below a volume (--min-volume).

            Each prediction is scored against the label map cv scored it against (the case store's), taken onto the prediction's grid, with the Dice and HD95 of attunet evaluate (empty masks: Dice 1 and HD95 0 when both are empty, Dice 0 and HD95 the volume's diagonal when one is; every case counts).

            A variant is kept for a class only when its mean Dice over all test cases is not lower than that of no postprocessing and its mean HD95 not higher; among the kept ones (none always is) the largest mean Dice wins, ties going to the smaller HD95, then to the simpler variant. Components are 26-connected by default, as in nnU-Net and MONAI (--connectivity 6 for face neighbours only). --min-volume defaults to 1000 mm3 (1 mL): far below any whole organ (a pancreas holds some 70 mL, a kidney or a spleen 150 mL), above the specks of a few voxels around a prediction.

            Output in --cv-dir (replaced when they exist): postprocessing.json, the decision per model and class with every variant's mean Dice and HD95 and the number of cases; summary_postprocessed.md and .json, the test cases before and after the chosen postprocessing paired per case, with the Wilcoxon signed-rank test (the run's summary.md stays as cv wrote it). attunet predict --cv-dir applies the decision, and --postprocess FILE applies it with any checkpoint of the same model and classes.

              attunet postprocess --cv-dir runs/cv
              attunet postprocess --cv-dir runs/cv --keep kidney:2 \\
                  --min-volume 800,pancreas:500
              attunet predict --cv-dir runs/cv --input imagesTs --out pred

            A run made before cv kept its test predictions has none: rerun the same attunet cv command with this version, which keeps the finished folds and writes their predictions.

            Exit status:
              0   postprocessing.json was written
              1   an error, one line naming the file: not a CV folder, a fold not
                  finished, a missing prediction, a prediction on another grid
              64  the command line itself is wrong (an unknown option, an invalid value)
            """
    )

    @Option(help: "A cross-validation folder (attunet cv --out) whose test predictions to postprocess.")
    var cvDir: String

    @Option(help: "Components kept by the largest-k variant, per class: class:k, comma-separated (e.g. kidney:2).")
    var keep: String?

    @Option(
        help:
            "Volume in mm3 below which the remove-small variant removes a component: for every class, and/or class:mm3 (e.g. 800,pancreas:500; default 1000)."
    )
    var minVolume: String?

    @Option(help: "Voxel neighbourhood of a component: 26 (faces, edges, corners) or 6 (faces).")
    var connectivity: Connectivity = .twentySix

    func options() throws -> PostprocessingOptions {
        var o = PostprocessingOptions()
        o.connectivity = connectivity
        do {
            if let keep { o.keep = try PostprocessingOptions.keep(parsing: keep) }
            if let minVolume {
                let (all, per) = try PostprocessingOptions.minVolume(parsing: minVolume)
                if let all { o.defaultMinVolume = all }
                o.minVolume = per
            }
        } catch let e as AttunetError {
            throw ValidationError(e.message)
        }
        return o
    }

    func validate() throws { _ = try options() }

    func run() throws {
        try PostprocessingSearch(cvDir: cvDir, options: try options()).run()
    }
}
