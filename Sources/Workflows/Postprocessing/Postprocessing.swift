import Evaluation
import Foundation
import Support
import Tensor

/// One way to clean one class of a label map, on its connected components (``ConnectedComponents``): keep it
/// as it is, keep its k largest components, or remove its components below a volume. Removed voxels become
/// background; other classes are untouched, so each class's step changes only that class's metrics.
///
/// In `postprocessing.json`: `{"kind": "none"}`, `{"kind": "keep_largest", "keep": 2}` or
/// `{"kind": "remove_small", "min_volume": 1000}` (`min_volume` in mm³).
public struct PostprocessingStep: Codable, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Codable, Sendable {
        case none
        case keepLargest = "keep_largest"
        case removeSmall = "remove_small"
    }

    public var kind: Kind
    /// ``Kind/keepLargest``: how many components to keep, largest first (ties: the first in memory order).
    public var keep: Int?
    /// ``Kind/removeSmall``: components whose volume (voxels × the voxel volume) is below this, in mm³, are removed.
    public var minVolume: Double?

    public init(kind: Kind, keep: Int? = nil, minVolume: Double? = nil) {
        self.kind = kind
        self.keep = keep
        self.minVolume = minVolume
    }

    /// No postprocessing.
    public static let none = PostprocessingStep(kind: .none)
    /// Keep the `k` largest components.
    public static func largest(_ k: Int) -> PostprocessingStep { PostprocessingStep(kind: .keepLargest, keep: k) }
    /// Remove the components below `mm3` mm³.
    public static func removeSmall(_ mm3: Double) -> PostprocessingStep {
        PostprocessingStep(kind: .removeSmall, minVolume: mm3)
    }

    /// "none", "largest", "largest 2", "remove < 1000 mm³".
    public var description: String {
        switch kind {
        case .none: "none"
        case .keepLargest: (keep ?? 1) == 1 ? "largest" : "largest \(keep ?? 1)"
        case .removeSmall: "remove < \(fmtShort(minVolume ?? 0)) mm³"
        }
    }

    /// Refuses a step that cannot be applied (read from a file): one line naming `file`.
    public func validate(file: String) throws {
        switch kind {
        case .none: return
        case .keepLargest:
            guard let k = keep, k >= 1 else { throw AttunetError("\(file): keep_largest needs keep >= 1") }
        case .removeSmall:
            guard let v = minVolume, v.isFinite, v >= 0 else {
                throw AttunetError("\(file): remove_small needs min_volume >= 0 (mm³)")
            }
        }
    }

    /// The voxel count below which ``Kind/removeSmall`` removes a component at `spacing`: ⌈min_volume / voxel
    /// volume⌉, so a component is kept exactly when its volume reaches `min_volume` (up to rounding).
    public func minVoxels(spacing: VoxelSpacing) -> Int {
        let voxel = spacing.x * spacing.y * spacing.z
        return Int(((minVolume ?? 0) / voxel * (1 - 1e-12)).rounded(.up))
    }

    /// Applies the step to the voxels of `label` in `map` (`dim` voxels, `[Z][Y][X]`, at `spacing` mm); returns
    /// the number of voxels set to background.
    @discardableResult
    public func apply(
        label: UInt8, to map: UnsafeMutableBufferPointer<UInt8>, dim: Dim3, spacing: VoxelSpacing,
        connectivity: Connectivity
    ) -> Int {
        switch kind {
        case .none: 0
        case .keepLargest:
            ConnectedComponents.keepLargest(keep ?? 1, of: label, in: map, dim: dim, connectivity: connectivity)
        case .removeSmall:
            ConnectedComponents.removeSmaller(
                than: minVoxels(spacing: spacing), of: label, in: map, dim: dim, connectivity: connectivity)
        }
    }
}

/// The postprocessing of one model's label maps: one ``PostprocessingStep`` per foreground class, applied
/// class by class. What ``Predictor`` applies to each label map before writing it (`predict --postprocess`).
public struct LabelPostprocessing: Sendable, Equatable {
    /// The model it was chosen for (a `--models` name).
    public var model: String
    /// Foreground class names, in label order.
    public var classNames: [String]
    /// Element c − 1 is class c's step.
    public var steps: [PostprocessingStep]
    public var connectivity: Connectivity

    public init(model: String, classNames: [String], steps: [PostprocessingStep], connectivity: Connectivity) {
        precondition(classNames.count == steps.count, "one step per class")
        self.model = model
        self.classNames = classNames
        self.steps = steps
        self.connectivity = connectivity
    }

    /// Whether every class is left as it is.
    public var isIdentity: Bool { steps.allSatisfy { $0.kind == .none } }

    /// "pancreas: largest, kidney: none" (with the connectivity).
    public var summary: String {
        zip(classNames, steps).map { "\($0): \($1)" }.joined(separator: ", ")
            + " (\(connectivity.rawValue)-connected)"
    }

    /// Applies every class's step to `labels` (`dim` voxels, `[Z][Y][X]`, at `spacing` mm).
    public func apply(to labels: inout [UInt8], dim: Dim3, spacing: VoxelSpacing) {
        precondition(labels.count == dim.count, "a label map of \(dim)")
        labels.withUnsafeMutableBufferPointer { map in
            for (i, step) in steps.enumerated() {
                step.apply(label: UInt8(i + 1), to: map, dim: dim, spacing: spacing, connectivity: connectivity)
            }
        }
    }
}

/// `postprocessing.json`, what `attunet postprocess --cv-dir RUN` decides: per model and foreground class,
/// every variant compared on the cross-validation's saved test predictions (mean Dice and mean HD95 over every
/// test case of every fold), whether it was kept, and the step chosen. `predict --postprocess FILE` and
/// `predict --cv-dir RUN` apply it.
public struct PostprocessingPlan: Codable, Sendable, Equatable {
    /// The cross-validation folder it was decided on.
    public var run: String
    public var connectivity: Connectivity
    /// How HD95 combines the directed distances (the run's `--distance-definition`).
    public var distanceDefinition: String
    /// Where the predictions and references were compared.
    public var grid: String
    /// The rule that keeps a variant and chooses among the kept ones.
    public var rule: String
    /// How empty masks count in the means.
    public var emptyMasks: String
    public var models: [ModelDecision]

    public init(
        run: String, connectivity: Connectivity, distanceDefinition: String, grid: String, rule: String,
        emptyMasks: String, models: [ModelDecision]
    ) {
        self.run = run
        self.connectivity = connectivity
        self.distanceDefinition = distanceDefinition
        self.grid = grid
        self.rule = rule
        self.emptyMasks = emptyMasks
        self.models = models
    }

    /// The decisions for one model.
    public struct ModelDecision: Codable, Sendable, Equatable {
        public var model: String
        /// Per foreground class, in label order.
        public var classes: [ClassDecision]

        public init(model: String, classes: [ClassDecision]) {
            self.model = model
            self.classes = classes
        }
    }

    /// One class of one model: every variant's numbers and the step chosen.
    public struct ClassDecision: Codable, Sendable, Equatable {
        public var label: Int
        public var name: String
        /// The test cases averaged over.
        public var cases: Int
        public var chosen: PostprocessingStep
        /// In the order compared; the first is ``PostprocessingStep/none``.
        public var variants: [VariantResult]

        public init(
            label: Int, name: String, cases: Int, chosen: PostprocessingStep, variants: [VariantResult]
        ) {
            self.label = label
            self.name = name
            self.cases = cases
            self.chosen = chosen
            self.variants = variants
        }
    }

    /// One variant of one class over every test case.
    public struct VariantResult: Codable, Sendable, Equatable {
        public var step: PostprocessingStep
        public var diceMean: Double
        public var hd95Mean: Double
        /// Mean Dice and mean HD95 minus those of no postprocessing.
        public var diceChange: Double
        public var hd95Change: Double
        /// The mean Dice does not drop and the mean HD95 does not grow.
        public var kept: Bool

        public init(
            step: PostprocessingStep, diceMean: Double, hd95Mean: Double, diceChange: Double, hd95Change: Double,
            kept: Bool
        ) {
            self.step = step
            self.diceMean = diceMean
            self.hd95Mean = hd95Mean
            self.diceChange = diceChange
            self.hd95Change = hd95Change
            self.kept = kept
        }
    }

    public static let decisionRule =
        "a variant is kept when its mean Dice over all test cases is not below that of no postprocessing and its mean HD95 not above; among the kept variants (none always is) the largest mean Dice is chosen, ties going to the smaller mean HD95, then to the earlier variant (none, largest, largest k, remove small)"

    /// Reads `path`; a missing, unreadable or invalid file is one line naming it.
    public static func load(_ path: String) throws -> PostprocessingPlan {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw AttunetError(
                "\(path): no such file (attunet postprocess --cv-dir RUN writes RUN/postprocessing.json)")
        }
        let plan: PostprocessingPlan
        do { plan = try JSONFiles.decode(PostprocessingPlan.self, from: data) } catch {
            throw AttunetError("\(path): not a postprocessing.json of attunet postprocess (\(error))")
        }
        for m in plan.models { for c in m.classes { try c.chosen.validate(file: path) } }
        return plan
    }

    /// The postprocessing chosen for `model` with foreground classes `classNames` (label order); refused,
    /// naming `file`, when the plan has no such model or its classes differ.
    public func postprocessing(model: String, classNames: [String], file: String) throws -> LabelPostprocessing {
        guard let m = models.first(where: { $0.model == model }) else {
            throw AttunetError(
                "\(file): decided for \(models.map(\.model).joined(separator: ", ")), not for the \(model) being applied; choose the file of a run that trained \(model)"
            )
        }
        let names = m.classes.map(\.name)
        guard names == classNames else {
            throw AttunetError(
                "\(file): decided for the classes \(names.joined(separator: ", ")) of \(model), but the model segments \(classNames.joined(separator: ", "))"
            )
        }
        return LabelPostprocessing(
            model: model, classNames: names, steps: m.classes.map(\.chosen), connectivity: connectivity)
    }
}
