import DataPipeline
import Foundation
import HDF5Kit
import Support
import Tensor

/// What prediction needs to see images as training saw them, recorded in every training checkpoint (root
/// attribute `prediction_recipe`, JSON with snake_case keys), so a checkpoint copied anywhere predicts
/// correctly without its training store: the isotropic spacing and pre-blur `prepare` applied, the intensity
/// normalisation (and the store's foreground statistics), the class names, the training patch and the axes
/// training mirrored along.
public struct PredictionRecipe: Codable, Sendable, Equatable {
    /// The isotropic spacing in mm images were resampled to.
    public var spacingMM: Double
    /// The Gaussian pre-blur sigma in mm applied before resampling (0: none).
    public var blurSigmaMM: Double
    /// The intensity normalisation: `zscore` (each case by its own whole-volume mean and population standard
    /// deviation, after resampling).
    public var normalization: String
    /// The training store's foreground intensity statistics: p0.5, p50, p99.5, mean, std (a record; `zscore`
    /// computes each case's own statistics).
    public var foregroundIntensity: [Double]
    /// The modality the store declared (`CT`).
    public var modality: String
    /// Class names, background first (index = label value).
    public var classNames: [String]
    /// The training patch (the sliding window's default tile).
    public var patch: Dim3
    /// The axes training augmentation mirrored along (`x`, `y`, `z`); test-time augmentation may flip these.
    public var mirrorAxes: [String]

    enum CodingKeys: String, CodingKey {
        case spacingMM = "spacing_mm"
        case blurSigmaMM = "blur_sigma_mm"
        case normalization
        case
            foregroundIntensity = "foreground_intensity"
        case modality
        case classNames = "class_names"
        case patch
        case
            mirrorAxes = "mirror_axes"
    }

    /// The root attribute of a checkpoint that holds the recipe.
    public static let attribute = "prediction_recipe"
    /// The normalisation training applies (``IntensityNormalization/zscore``).
    public static let zscore = "zscore"

    public init(
        spacingMM: Double, blurSigmaMM: Double, normalization: String = zscore, foregroundIntensity: [Double] = [],
        modality: String = "CT", classNames: [String], patch: Dim3, mirrorAxes: [String]
    ) {
        self.spacingMM = spacingMM
        self.blurSigmaMM = blurSigmaMM
        self.normalization = normalization
        self.foregroundIntensity = foregroundIntensity
        self.modality = modality
        self.classNames = classNames
        self.patch = patch
        self.mirrorAxes = mirrorAxes
    }

    /// The recipe of a run on `store` with `config`. The store must record its spacing (isotropic) and blur.
    public init(store: CaseStore, config: TrainConfig) throws {
        guard let blur = store.blurSigma else {
            throw AttunetError(
                "\(store.path): the store records no blur_sigma_mm (written by an older attunet prepare); prepare it again"
            )
        }
        let a = config.augmentOptions
        self.init(
            spacingMM: store.spacing[0], blurSigmaMM: blur, foregroundIntensity: store.foregroundIntensity,
            modality: store.modality, classNames: store.classNames, patch: config.patch,
            mirrorAxes: Self.mirrorAxes(of: a))
    }

    /// The axes an augmentation flips along (`x`, `y`): what test-time augmentation may flip.
    public static func mirrorAxes(of a: AugmentOptions) -> [String] {
        (a.flipX > 0 ? ["x"] : []) + (a.flipY > 0 ? ["y"] : [])
    }

    /// The recipe `file` records; nil for a checkpoint written before attunet recorded it (or a weights-only
    /// checkpoint made by `import-weights`). An unreadable record is an error naming the file.
    public static func read(from file: H5File) throws -> PredictionRecipe? {
        guard file.root.hasAttribute(attribute) else { return nil }
        do {
            return try JSONDecoder().decode(
                PredictionRecipe.self, from: Data(try file.root.stringAttribute(attribute).utf8))
        } catch {
            throw AttunetError("\(file.path): unreadable \(attribute) attribute (\(error))", kind: .corrupt)
        }
    }

    /// The recipe as the JSON the checkpoint stores.
    public func json() throws -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try enc.encode(self), as: UTF8.self)
    }
}
