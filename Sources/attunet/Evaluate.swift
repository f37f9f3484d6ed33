import ArgumentParser
import Evaluation
import Foundation
import Support
import Workflows

/// `attunet evaluate`: per-case, per-class metrics of predicted label maps against references.
struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Score predictions against references: Dice, IoU, RVD, HD95, S2S, NSD.",
        discussion: """
            --pred and --ref are folders of NIfTI label maps (.nii/.nii.gz) paired by case id, the rule of attunet prepare: the file name without .nii.gz or .nii, so a prediction case.nii.gz pairs with the reference case.nii.gz; a prediction named with nnU-Net's channel suffix, case_0000.nii.gz, pairs with case.nii.gz when no reference case_0000.nii.gz exists. Hidden files are ignored. A prediction without a reference is an error naming the file; so is a reference without a prediction, unless --allow-missing is given: then the predicted cases are scored, one warning line on stderr names the references left out (the first 10 and a count), and summary.json lists them all in missing_cases. Each pair must have the same shape and affine (the tolerance attunet prepare applies between an image and its label).

            Metrics are computed per case and foreground class on the label maps in physical space (the spacing is the affine's column norms; see Evaluation.docc for every definition):
              - Dice 2|P∩R|/(|P|+|R|) and IoU |P∩R|/|P∪R|;
              - precision |P∩R|/|P|, recall |P∩R|/|R|;
              - RVD (|P|-|R|)/|R|, the relative volume difference, signed;
              - the voxel counts TP, FP, FN, TN (in summary.json);
              - ASSD and HD95 over the 6-connected voxel surfaces;
              - S2S, the original code's slice-wise 2D contour distance;
              - NSD, the normalised surface Dice at the --nsd-tolerance in mm.
            --distance-definition pooled (medpy 0.5, the default) takes ASSD and HD95 over one set of both directed distances; max-directed (DeepMind's surface-distance) takes HD95 as the larger directed 95th percentile and ASSD as the mean of the two directed means. S2S runs over the axial slices holding both masks.

            NSD is DeepMind surface-distance's compute_surface_dice_at_tolerance: the share of both surfaces, weighted by area, that lies within the tolerance of the other surface, in 0...1. Its surface elements sit on the voxel corners, each weighted by the area of its marching-cubes triangles. NSD is off unless --nsd-tolerance is given: there is no tolerance that fits every organ (MONAI's SurfaceDiceMetric also needs one, and nnU-Net has no NSD). Give one value for every class (--nsd-tolerance 2), one per class by name or label (pancreas:1,spleen:2 or 1:1,2:2), or a default and exceptions (2,pancreas:1). A common choice is the inter-rater variation of the organ, or one or two voxels.

            Empty masks: no case is dropped and no NaN reaches a summary (nnU-Net writes NaN for Dice where both masks are empty). When both are empty, Dice, IoU, precision, recall and NSD are 1, RVD and every distance 0 (a correct "absent"). When the prediction is empty, or the reference is empty, Dice, IoU, precision, recall and NSD are 0 and the distances the worst case: the volume's diagonal in mm, larger than any distance in it. RVD is -1 for an empty prediction; for an empty reference it has no ratio and is the substitute |P|, the predicted voxel count (as if the reference had one voxel), counted as a worst case. S2S is also the worst case when both masks have voxels but no axial slice holds both. The summaries count these substitutions beside each mean.

            Classes: --classes (background included), else the number of --class-names, else the --store's class names, else 1 + the largest label found. Names default to the store's, else class1, class2, ...

            Output in --out (default <pred>/evaluation; existing files are replaced): metrics.csv (one row per case and class); summary.json, whose metric_per_case, mean and foreground_mean are nnU-Net v2's summary.json (per label value Dice, IoU, TP, FP, FN, TN, n_pred, n_ref), so scripts that read nnU-Net's results read it too, beside attunet's per-class statistics (classes: mean ± sample std, median, worst-case counts, empty-mask counts of every metric, IoU, RVD and NSD included, and nsd_tolerance), every case's metrics per class (per_case), the references without a prediction (missing_cases) and the distance definition; summary.md, the same statistics as a table, which is printed.

              attunet evaluate --pred runs/pred --ref data/labelsTs
              attunet evaluate --pred runs/pred --ref data/labelsTs \\
                  --nsd-tolerance 2,pancreas:1 --allow-missing

            Exit status:
              0   the report was written
              1   an error, one line naming the file: a missing folder, an unpaired
                  or unreadable file, a geometry mismatch, a label that is not an
                  integer in 0...255, class names that do not fit the classes, an
                  --nsd-tolerance class that is not one of them
              64  the command line itself is wrong (an unknown option, an invalid value)
            """
    )

    @Option(help: "Folder of predicted label maps.")
    var pred: String

    @Option(help: "Folder of reference label maps (paired with the predictions by case id).")
    var ref: String

    @Option(help: "Output folder (default: <pred>/evaluation).")
    var out: String?

    @Option(help: "Surface distances: pooled (medpy) or max-directed (DeepMind's surface-distance).")
    var distanceDefinition: SurfaceDistanceDefinition = .pooled

    @Option(
        help: "Classes including background (default: from --class-names, the --store, else 1 + the largest label).")
    var classes: Int?

    @Option(help: "Comma-separated class names, background first.")
    var classNames: String?

    @Option(help: "A case store whose class names (and count) to use.")
    var store: String?

    @Option(
        help: ArgumentHelp(
            "Normalised surface Dice tolerance in mm: one value, or per class (pancreas:1,spleen:2; 2,pancreas:1). Default: no NSD.",
            valueName: "MM"))
    var nsdTolerance: String?

    @Flag(help: "Score the predicted cases when some references have no prediction, and list the others.")
    var allowMissing = false

    func validate() throws {
        if let classes, !(2...256).contains(classes) { throw ValidationError("--classes must be in 2...256") }
        if let classNames, classNames.split(separator: ",").count < 2 {
            throw ValidationError("--class-names needs the background and at least one class")
        }
        if let nsdTolerance {
            do { _ = try NSDTolerance(parsing: nsdTolerance) } catch let e as AttunetError {
                throw ValidationError(e.message)
            }
        }
    }

    func run() throws {
        let evaluation = FolderEvaluation(
            predictions: pred, references: ref, output: out, definition: distanceDefinition, classes: classes,
            classNames: classNames?.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }, store: store,
            nsdTolerance: try nsdTolerance.map(NSDTolerance.init(parsing:)), allowMissing: allowMissing)
        let report = try evaluation.run()
        if !report.missingCases.isEmpty {
            FileHandle.standardError.write(Data((Self.missingLine(report) + "\n").utf8))
        }
        print(report.markdown(), terminator: "")
        print(
            "evaluate: \(report.cases.count) case(s); \(evaluation.outputFolder)/metrics.csv, summary.json, summary.md")
    }

    /// The warning of --allow-missing: how many references have no prediction, and the first 10 of them.
    static func missingLine(_ report: SegmentationReport) -> String {
        let m = report.missingCases
        let shown = m.prefix(10).joined(separator: ", ")
        return
            "warning: \(m.count) of \(m.count + report.cases.count) reference(s) have no prediction and are not scored: "
            + shown + (m.count > 10 ? ", … (\(m.count - 10) more; all in summary.json's missing_cases)" : "")
    }
}
