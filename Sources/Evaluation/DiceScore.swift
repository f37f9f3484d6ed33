/// Dice as validation reports it: per case and class, confusion counts [intersection, predicted, reference]
/// (in a flat buffer, so ranks sum the counts of all their cases with one all-reduce), and per foreground class
/// the mean over the cases whose reference contains that class.
///
/// `Trainer.validate` and the per-case metrics of ``CaseMetrics`` count voxels with ``accumulate(prediction:reference:classes:into:)``
/// and turn counts into Dice with ``dice(intersection:predicted:reference:)``, so validation and evaluation
/// report the same number for the same label maps.
public enum DiceScore {
    /// Values per class row in the flat layout: intersection, predicted, reference.
    public static let columns = 3

    /// Adds one case's counts to `counts`, which holds `classes` rows of [intersection, predicted, reference]
    /// voxel counts. Reference values ≥ `classes` count as predicted-elsewhere only.
    public static func accumulate(
        prediction: [UInt8], reference: [UInt8], classes k: Int,
        into counts: UnsafeMutableBufferPointer<Double>
    ) {
        precondition(prediction.count == reference.count && counts.count == k * 3)
        for v in 0..<reference.count {
            let p = Int(prediction[v])
            let t = Int(reference[v])
            if p == t { counts[p * 3] += 1 }
            counts[p * 3 + 1] += 1
            if t < k { counts[t * 3 + 2] += 1 }
        }
    }

    /// `2·intersection / (predicted + reference + 10⁻⁶)`: the Dice of one class in one case from its counts
    /// (0 when both counts are 0; ``CaseMetrics`` defines that case as 1 itself).
    @inlinable
    public static func dice(intersection: Double, predicted: Double, reference: Double) -> Double {
        2 * intersection / (predicted + reference + 1e-6)
    }

    /// Dice per foreground class (1..<classes), 2|P∩R| / (|P| + |R|), averaged over the `cases` blocks of
    /// `counts` (each `classes` rows as `accumulate` writes them) whose reference has the class; a case without
    /// it is skipped, and a class no case has is NaN.
    public static func meanPerClass(_ counts: [Double], cases: Int, classes k: Int) -> [Double] {
        precondition(counts.count == cases * k * 3)
        return (1..<k).map { cls in
            var sum = 0.0
            var n = 0
            for i in 0..<cases {
                let inter = counts[(i * k + cls) * 3]
                let p = counts[(i * k + cls) * 3 + 1]
                let t = counts[(i * k + cls) * 3 + 2]
                guard t > 0 else { continue }  // the class is absent from this case
                sum += dice(intersection: inter, predicted: p, reference: t)
                n += 1
            }
            return n > 0 ? sum / Double(n) : .nan
        }
    }
}
