import DataPipeline
import Evaluation
import Foundation
import Support
import Tensor

/// One case scored: where its label maps came from, its size and the metrics of every foreground class.
public struct CaseEvaluation: Sendable, Equatable {
    /// The case id (the reference's file name without its extension, or the store's).
    public var id: String
    /// The prediction's file, or for a prediction made in memory (`cv`) where it came from.
    public var predictionFile: String
    /// The reference's file, or for a case store's label map `<store>#<case id>`.
    public var referenceFile: String
    /// Voxels of the label maps (nil: unknown, in fold results written before attunet recorded it).
    public var voxels: Int?
    /// Element c − 1 is class c.
    public var classes: [ClassMetrics]

    public init(id: String, predictionFile: String, referenceFile: String, voxels: Int?, classes: [ClassMetrics]) {
        self.id = id
        self.predictionFile = predictionFile
        self.referenceFile = referenceFile
        self.voxels = voxels
        self.classes = classes
    }
}

/// A prediction file and its reference file, paired by case id.
public struct EvaluationPair: Sendable, Equatable {
    public var id: String
    public var prediction: String
    public var reference: String
    public init(id: String, prediction: String, reference: String) {
        self.id = id
        self.prediction = prediction
        self.reference = reference
    }
}

/// Scores predicted label maps against references: the one place `attunet evaluate` (NIfTI files in two
/// folders) and `attunet cv` (a prediction in memory against the case store's label map) turn label maps into
/// per-case metrics. The metrics themselves are `Evaluation`'s ``CaseMetrics``.
public struct Evaluator: Sendable {
    /// Classes including background: label c of 1..<classes is scored; larger labels belong to no class.
    public var classes: Int
    /// How ASSD and HD95 combine the two directed distance sets.
    public var definition: SurfaceDistanceDefinition
    /// The normalised surface Dice's tolerance in mm per foreground class (element c − 1 is class c's; nil: no
    /// NSD).
    public var nsdTolerances: [Double]?

    public init(classes: Int, definition: SurfaceDistanceDefinition = .pooled, nsdTolerances: [Double]? = nil) {
        precondition(classes >= 2, "an evaluation needs background and one class")
        precondition(nsdTolerances == nil || nsdTolerances!.count == classes - 1, "one NSD tolerance per class")
        self.classes = classes
        self.definition = definition
        self.nsdTolerances = nsdTolerances
    }

    /// The metrics of every foreground class of one case: label maps of `dim` voxels (`[Z][Y][X]`, x fastest)
    /// at `spacing` mm.
    public func metrics(prediction: [UInt8], reference: [UInt8], dim: Dim3, spacing: VoxelSpacing) -> [ClassMetrics] {
        CaseMetrics.evaluate(
            prediction: prediction, reference: reference, dim: dim, spacing: spacing,
            classes: classes, definition: definition, nsdTolerances: nsdTolerances)
    }

    /// One case scored, with where its label maps came from.
    public func evaluate(
        id: String, prediction: [UInt8], reference: [UInt8], dim: Dim3, spacing: VoxelSpacing,
        predictionFile: String, referenceFile: String
    ) -> CaseEvaluation {
        CaseEvaluation(
            id: id, predictionFile: predictionFile, referenceFile: referenceFile, voxels: dim.count,
            classes: metrics(prediction: prediction, reference: reference, dim: dim, spacing: spacing))
    }

    /// Reads and checks one pair (``read(_:)``) and scores it at the reference's spacing.
    public func evaluate(_ pair: EvaluationPair) throws -> CaseEvaluation {
        let p = try Self.read(pair)
        return evaluate(
            id: pair.id, prediction: p.prediction, reference: p.reference, dim: p.dim, spacing: p.spacing,
            predictionFile: pair.prediction, referenceFile: pair.reference)
    }

    // MARK: - Files

    /// The NIfTI label maps of two folders paired by case id (`DatasetInput`'s rule, which `attunet prepare`
    /// pairs images and labels by): a reference's id is its name without the extension
    /// (``DatasetInput/caseID(_:dropChannel:)``); a prediction pairs with the reference of its own id, else with
    /// that of its id without nnU-Net's channel suffix (``DatasetInput/caseID(fileName:)``: `case_0000.nii.gz`
    /// with `case.nii.gz`). Hidden files and other
    /// files are ignored. A prediction without a reference, a reference without a prediction, two files of one
    /// case in a folder, or no reference at all is an error naming the file. Sorted by case id.
    public static func pairs(predictions: String, references: String) throws -> [EvaluationPair] {
        try pairs(predictions: predictions, references: references, allowMissing: false).pairs
    }

    /// ``pairs(predictions:references:)``, where with `allowMissing` a reference without a prediction is left
    /// out and its case id listed in `missing` (sorted) instead of being an error; no prediction at all is still
    /// one.
    public static func pairs(
        predictions: String, references: String, allowMissing: Bool
    ) throws -> (pairs: [EvaluationPair], missing: [String]) {
        func ids(_ dir: String) throws -> [(id: String, name: String)] {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
                throw AttunetError("\(dir): no such folder")
            }
            return try FileManager.default.contentsOfDirectory(atPath: dir).sorted().compactMap { name in
                DatasetInput.caseID(name, dropChannel: false).map { ($0, name) }
            }
        }
        var reference: [String: String] = [:]
        for (id, name) in try ids(references) {
            if let other = reference[id] {
                throw AttunetError("\(references)/\(name): a second reference of case \(id) (\(references)/\(other))")
            }
            reference[id] = name
        }
        var prediction: [String: String] = [:]
        for (id, name) in try ids(predictions) {
            let ext = name.hasSuffix(".nii.gz") ? ".nii.gz" : ".nii"
            let stripped = DatasetInput.caseID(fileName: name) ?? id
            let key = reference[id] != nil ? id : stripped
            guard reference[key] != nil else {
                throw AttunetError(
                    "\(predictions)/\(name): no reference \(references)/\(id)\(ext)"
                        + (stripped != id ? " (nor \(references)/\(stripped)\(ext))" : ""))
            }
            if let other = prediction[key] {
                throw AttunetError(
                    "\(predictions)/\(name): a second prediction of case \(key) (\(predictions)/\(other))")
            }
            prediction[key] = name
        }
        let missing = reference.keys.sorted().filter { prediction[$0] == nil }
        if let id = missing.first, !allowMissing {
            let name = reference[id]!
            throw AttunetError(
                "\(predictions)/\(name): missing (the reference \(references)/\(name) has no prediction)")
        }
        if reference.isEmpty { throw AttunetError("\(references): no .nii or .nii.gz files") }
        if prediction.isEmpty {
            throw AttunetError(
                "\(predictions): no prediction of any of the \(reference.count) reference(s) in \(references)")
        }
        let pairs = reference.keys.sorted().filter { prediction[$0] != nil }.map {
            EvaluationPair(
                id: $0, prediction: "\(predictions)/\(prediction[$0]!)", reference: "\(references)/\(reference[$0]!)")
        }
        return (pairs, missing)
    }

    /// A pair read: both label maps as bytes, the grid and the reference's spacing.
    public struct LabelMaps: Sendable {
        public var prediction: [UInt8], reference: [UInt8]
        public var dim: Dim3
        public var spacing: VoxelSpacing
    }

    /// Reads both files of `pair`; refuses, naming the file, a prediction whose shape or affine differ from the
    /// reference's (``GeometryCheck``) and a voxel that is not an integer label in 0...255.
    public static func read(_ pair: EvaluationPair) throws -> LabelMaps {
        let pv = try NIfTIVolume.read(pair.prediction)
        let rv = try NIfTIVolume.read(pair.reference)
        try GeometryCheck.check(pv, path: pair.prediction, against: rv, referencePath: pair.reference)
        let sp = rv.spacing
        return LabelMaps(
            prediction: try labels(pv, pair.prediction), reference: try labels(rv, pair.reference),
            dim: Dim3(z: rv.nz, y: rv.ny, x: rv.nx), spacing: VoxelSpacing(x: sp.x, y: sp.y, z: sp.z))
    }

    /// The voxels of `volume` (read from `path`) as labels.
    static func labels(_ volume: NIfTIVolume, _ path: String) throws -> [UInt8] {
        try volume.voxels.map { x in
            guard x.isFinite, x == x.rounded(), x >= 0, x <= 255 else {
                throw AttunetError("\(path): label value \(x) is not an integer in 0...255")
            }
            return UInt8(x)
        }
    }
}

/// `attunet evaluate`: the label maps of a predictions folder against a references folder, scored and written
/// as a ``SegmentationReport``.
public struct FolderEvaluation: Sendable {
    public var predictions: String
    public var references: String
    /// The report's folder (nil: `<predictions>/evaluation`).
    public var output: String?
    public var definition: SurfaceDistanceDefinition
    /// Classes including background (nil: the names' count, else 1 + the largest label found).
    public var classes: Int?
    /// Class names, background first (nil: the store's, else class1, class2, ...).
    public var classNames: [String]?
    /// A case store whose class names (and count) to use when `classNames` is nil.
    public var store: String?
    /// The normalised surface Dice's tolerance (nil: no NSD).
    public var nsdTolerance: NSDTolerance?
    /// Score the predicted subset when some references have no prediction (listed in the report's
    /// `missingCases`) instead of failing.
    public var allowMissing: Bool

    public init(
        predictions: String, references: String, output: String? = nil,
        definition: SurfaceDistanceDefinition = .pooled, classes: Int? = nil, classNames: [String]? = nil,
        store: String? = nil, nsdTolerance: NSDTolerance? = nil, allowMissing: Bool = false
    ) {
        self.predictions = predictions
        self.references = references
        self.output = output
        self.definition = definition
        self.classes = classes
        self.classNames = classNames
        self.store = store
        self.nsdTolerance = nsdTolerance
        self.allowMissing = allowMissing
    }

    /// Where the report goes.
    public var outputFolder: String { output ?? "\(predictions)/evaluation" }

    /// Pairs the folders, reads and checks every pair before any is scored (one pair in memory at a time),
    /// settles the classes and the NSD tolerances, scores every case and writes `metrics.csv`, `summary.json`
    /// and `summary.md` in ``outputFolder`` (replacing existing ones). Returns the report.
    @discardableResult
    public func run() throws -> SegmentationReport {
        let (pairs, missing) = try Evaluator.pairs(
            predictions: predictions, references: references, allowMissing: allowMissing)
        var names = classNames
        if names == nil, let store { names = try CaseStore(path: store).classNames }
        var largest: UInt8 = 0
        for pair in pairs {
            let maps = try Evaluator.read(pair)
            largest = max(largest, maps.prediction.max() ?? 0, maps.reference.max() ?? 0)
        }
        let k = classes ?? names?.count ?? max(2, Int(largest) + 1)
        if let n = names, n.count != k {
            throw AttunetError(
                "\(classNames != nil ? "--class-names" : store!): \(n.count) class names for \(k) classes")
        }
        let foreground = names.map { Array($0.dropFirst()) } ?? (1..<k).map { "class\($0)" }
        let tolerances = try nsdTolerance?.resolve(classNames: foreground)
        let evaluator = Evaluator(classes: k, definition: definition, nsdTolerances: tolerances)
        let cases = try pairs.map { try evaluator.evaluate($0) }
        let report = SegmentationReport(
            cases: cases, classNames: foreground, definition: definition, missingCases: missing)
        try report.write(to: outputFolder)
        return report
    }
}
