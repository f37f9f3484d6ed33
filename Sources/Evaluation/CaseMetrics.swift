import Tensor

/// Which of a class's two masks are empty in one case.
public enum EmptyMasks: String, Sendable, Codable, Equatable {
    /// Both have voxels: every metric is measured.
    case neither
    /// Neither has voxels: Dice, IoU, precision, recall and NSD 1, RVD and every distance 0 (a correct "absent").
    case both
    /// The prediction is empty, the reference is not: Dice, IoU, precision, recall and NSD 0, RVD −1, every
    /// distance the worst case.
    case prediction
    /// The reference is empty, the prediction is not: Dice, IoU, precision, recall and NSD 0, every distance the
    /// worst case, RVD the substitute |P| (the prediction's voxels, as if the reference had one).
    case reference
}

/// The metrics of one foreground class in one case (`Evaluation.docc/Evaluation.md` defines each).
public struct ClassMetrics: Sendable, Equatable, Codable {
    /// Voxel counts: |P ∩ R|, |P|, |R| (the ``DiceScore`` row of this class).
    public var intersection: Double, predicted: Double, reference: Double
    /// `2·|P∩R| / (|P| + |R| + 10⁻⁶)` (``DiceScore/dice(intersection:predicted:reference:)``).
    public var dice: Double
    /// |P∩R| / |P|.
    public var precision: Double
    /// |P∩R| / |R|.
    public var recall: Double
    /// Average symmetric surface distance in mm under ``definition``.
    public var assd: Double
    /// 95th-percentile Hausdorff distance in mm under ``definition``.
    public var hd95: Double
    /// Mean distance in mm from the prediction's surface voxels to the reference surface, and back.
    public var meanPredictionToReference: Double, meanReferenceToPrediction: Double
    /// The original code's slice-wise 2D contour distance in mm (``SliceContourDistance``).
    public var s2s2d: Double
    public var definition: SurfaceDistanceDefinition
    public var empty: EmptyMasks
    /// ASSD, HD95 and the directed means are the worst case (one mask empty).
    public var distancesAreWorstCase: Bool
    /// `s2s2d` is the worst case: one mask empty, or no axial slice holds both.
    public var s2sIsWorstCase: Bool
    /// Normalised surface Dice at ``nsdTolerance`` (``SurfaceDice``): 1 when both masks are empty, 0 when one
    /// is; nil when no tolerance was given (and in results written before attunet measured it).
    public var nsd: Double? = nil
    /// The tolerance of ``nsd``, in mm.
    public var nsdTolerance: Double? = nil

    /// Intersection over union, |P∩R| / |P∪R| (nnU-Net's `IoU`, TP / (TP + FP + FN)); 1 when both masks are
    /// empty.
    public var iou: Double {
        let union = predicted + reference - intersection
        return union > 0 ? intersection / union : 1
    }

    /// Relative volume difference, signed: (|P| − |R|) / |R| (medpy's `ravd`), negative for an
    /// under-segmentation. An empty reference has no relative volume: the value is (|P| − |R|) / max(|R|, 1),
    /// 0 when both masks are empty and the substitute |P| (the prediction's voxel count) when only the
    /// reference is, counted as a worst case (``Metric/isWorstCase(_:)``).
    public var rvd: Double { (predicted - reference) / max(reference, 1) }
}

/// Per case and class: overlap and surface-distance metrics of a predicted label map against a reference.
public enum CaseMetrics {
    /// The metrics of every foreground class 1..<`classes` (element c − 1 is class c) of one case: label maps
    /// of `dim` voxels (`[Z][Y][X]`, x fastest) with `spacing` in mm. Label values ≥ `classes` belong to no class.
    /// Each class's masks are cropped to the bounding box of their union before surfaces and distances are
    /// computed (the box holds every surface voxel, so distances are those of the whole volume).
    ///
    /// `nsdTolerances` (element c − 1 for class c, in mm; nil: none) adds each class's normalised surface Dice.
    public static func evaluate(
        prediction: [UInt8], reference: [UInt8], dim: Dim3, spacing: VoxelSpacing,
        classes k: Int, definition: SurfaceDistanceDefinition = .pooled, nsdTolerances: [Double]? = nil
    ) -> [ClassMetrics] {
        precondition(prediction.count == dim.count && reference.count == dim.count && k >= 2)
        precondition(nsdTolerances == nil || nsdTolerances!.count == k - 1, "one NSD tolerance per foreground class")
        var counts = [Double](repeating: 0, count: k * DiceScore.columns)
        counts.withUnsafeMutableBufferPointer {
            DiceScore.accumulate(prediction: prediction, reference: reference, classes: k, into: $0)
        }
        // Bounding boxes of P ∪ R per class: (zmin, ymin, xmin, zmax, ymax, xmax).
        var box = [Int](repeating: 0, count: k * 6)
        for c in 0..<k {
            box[c * 6] = .max
            box[c * 6 + 1] = .max
            box[c * 6 + 2] = .max
            box[c * 6 + 3] = -1
        }
        box.withUnsafeMutableBufferPointer { box in
            func grow(_ label: UInt8, _ z: Int, _ y: Int, _ x: Int) {
                guard label > 0 && Int(label) < k else { return }
                let b = Int(label) * 6
                box[b] = min(box[b], z)
                box[b + 1] = min(box[b + 1], y)
                box[b + 2] = min(box[b + 2], x)
                box[b + 3] = max(box[b + 3], z)
                box[b + 4] = max(box[b + 4], y)
                box[b + 5] = max(box[b + 5], x)
            }
            for z in 0..<dim.z {
                for y in 0..<dim.y {
                    for x in 0..<dim.x {
                        let v = (z * dim.y + y) * dim.x + x
                        grow(prediction[v], z, y, x)
                        if reference[v] != prediction[v] { grow(reference[v], z, y, x) }
                    }
                }
            }
        }
        var result: [ClassMetrics] = []
        for c in 1..<k {
            let b = c * 6
            let tolerance = nsdTolerances?[c - 1]
            guard box[b + 3] >= 0 else {
                result.append(
                    binary(
                        counts: (0, 0, 0), masks: nil, dim: dim, spacing: spacing, definition: definition,
                        nsdTolerance: tolerance))
                continue
            }
            let sub = Dim3(z: box[b + 3] - box[b] + 1, y: box[b + 4] - box[b + 1] + 1, x: box[b + 5] - box[b + 2] + 1)
            var p = [UInt8](repeating: 0, count: sub.count)
            var r = p
            for z in 0..<sub.z {
                for y in 0..<sub.y {
                    let from = ((z + box[b]) * dim.y + y + box[b + 1]) * dim.x + box[b + 2]
                    let to = (z * sub.y + y) * sub.x
                    for x in 0..<sub.x {
                        p[to + x] = prediction[from + x] == c ? 1 : 0
                        r[to + x] = reference[from + x] == c ? 1 : 0
                    }
                }
            }
            let row = (counts[c * 3], counts[c * 3 + 1], counts[c * 3 + 2])
            let m = p.withUnsafeBufferPointer { pb in
                r.withUnsafeBufferPointer { rb in
                    binary(
                        counts: row, masks: (pb, rb, sub), dim: dim, spacing: spacing, definition: definition,
                        nsdTolerance: tolerance)
                }
            }
            result.append(m)
        }
        return result
    }

    /// The metrics of one pair of binary masks (nonzero = foreground) of `dim` voxels; with `nsdTolerance`
    /// (mm) the normalised surface Dice too.
    public static func evaluate(
        prediction: UnsafeBufferPointer<UInt8>, reference: UnsafeBufferPointer<UInt8>,
        dim: Dim3, spacing: VoxelSpacing,
        definition: SurfaceDistanceDefinition = .pooled, nsdTolerance: Double? = nil
    ) -> ClassMetrics {
        precondition(prediction.count == dim.count && reference.count == dim.count)
        var inter = 0.0
        var np = 0.0
        var nr = 0.0
        for v in 0..<dim.count {
            let a = prediction[v] != 0
            let b = reference[v] != 0
            if a { np += 1 }
            if b { nr += 1 }
            if a && b { inter += 1 }
        }
        return binary(
            counts: (inter, np, nr), masks: (prediction, reference, dim), dim: dim, spacing: spacing,
            definition: definition, nsdTolerance: nsdTolerance)
    }

    /// `masks` (prediction, reference, their grid) may be a crop of the `dim` volume holding both masks;
    /// `dim` sets the worst case.
    static func binary(
        counts: (Double, Double, Double),
        masks: (UnsafeBufferPointer<UInt8>, UnsafeBufferPointer<UInt8>, Dim3)?,
        dim: Dim3, spacing: VoxelSpacing, definition: SurfaceDistanceDefinition, nsdTolerance: Double?
    ) -> ClassMetrics {
        let (inter, np, nr) = counts
        let worst = spacing.diagonal(of: dim)
        var m = ClassMetrics(
            intersection: inter, predicted: np, reference: nr,
            dice: DiceScore.dice(intersection: inter, predicted: np, reference: nr),
            precision: np > 0 ? inter / np : 0, recall: nr > 0 ? inter / nr : 0,
            assd: worst, hd95: worst, meanPredictionToReference: worst, meanReferenceToPrediction: worst,
            s2s2d: worst, definition: definition, empty: .neither,
            distancesAreWorstCase: true, s2sIsWorstCase: true)
        if let nsdTolerance {
            m.nsdTolerance = nsdTolerance
            m.nsd = np > 0 && nr > 0 ? nil : np == 0 && nr == 0 ? 1 : 0
        }
        switch (np > 0, nr > 0) {
        case (false, false):
            m.empty = .both
            m.dice = 1
            m.precision = 1
            m.recall = 1
            m.assd = 0
            m.hd95 = 0
            m.meanPredictionToReference = 0
            m.meanReferenceToPrediction = 0
            m.s2s2d = 0
            m.distancesAreWorstCase = false
            m.s2sIsWorstCase = false
        case (false, true): m.empty = .prediction
        case (true, false): m.empty = .reference
        case (true, true):
            guard let (p, r, grid) = masks else { preconditionFailure("nonempty masks without voxels") }
            let d = SurfaceDistance.directed(p, r, dim: grid, spacing: spacing)
            (m.assd, m.hd95) = SurfaceDistance.assdAndHD95(d.aToB, d.bToA, definition: definition)
            m.meanPredictionToReference = d.aToB.reduce(0, +) / Double(d.aToB.count)
            m.meanReferenceToPrediction = d.bToA.reduce(0, +) / Double(d.bToA.count)
            m.distancesAreWorstCase = false
            if let s = SliceContourDistance.s2s2d(p, r, dim: grid, spacing: spacing) {
                m.s2s2d = s
                m.s2sIsWorstCase = false
            }
            if let nsdTolerance {
                m.nsd =
                    SurfaceDice.overlap(
                        prediction: p, reference: r, dim: grid, spacing: spacing, tolerance: nsdTolerance
                    ).nsd
            }
        }
        return m
    }
}
