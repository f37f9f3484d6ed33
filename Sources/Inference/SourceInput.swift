import DataPipeline
import Foundation
import Support
import Tensor

/// A NIfTI image made ready for the predictor without a case store: resampled as `attunet prepare` resamples
/// (`CasePreparer.convert`: Gaussian pre-blur of `blurSigma` mm when the spacing changes, trilinear resampling
/// to the isotropic `spacing`, rounding when the source holds integers in the int16 range), z-scored with the
/// resampled volume's mean and population standard deviation as the store's `intensity_stats` and
/// `IntensityNormalization.zscore` do, and with the ``SourceGeometry`` that takes the prediction back to the
/// file's grid.
public struct SourceInput: Sendable {
    /// The normalised image on the resampled grid, `[Z][Y][X]` of ``geometry``'s stored shape.
    public var image: [Float]
    /// What the case's minimum normalises to (pads tiles past the volume, as training pads patches).
    public var padValue: Float
    public var geometry: SourceGeometry
    /// The source file's qform and sform codes (the export writes them back).
    public var codes: XformCodes

    /// Reads and prepares the image at `path`; `id` names the case in messages.
    public init(path: String, id: String, spacing: Double, blurSigma: Double) throws {
        let img = try NIfTIVolume.read(path)
        let sp = img.spacing
        guard [sp.x, sp.y, sp.z].allSatisfy({ $0.isFinite && $0 > 1e-6 }) else {
            throw AttunetError("\(path): invalid voxel spacing \(sp.x) x \(sp.y) x \(sp.z) mm")
        }
        guard spacing.isFinite && spacing > 0 else { throw AttunetError("\(path): target spacing \(spacing) mm is not positive") }
        var lo = Float.infinity, hi = -Float.infinity, integral = true
        for v in img.voxels {
            guard v.isFinite else { throw AttunetError("\(path): NaN or infinite voxels") }
            lo = min(lo, v); hi = max(hi, v)
            if integral && v != v.rounded() { integral = false }
        }
        let dim = Dim3(z: img.nz, y: img.ny, x: img.nx)
        let grid = ResampleGrid(from: dim, spacing: sp, target: (spacing, spacing, spacing))
        var image = img.voxels
        if !grid.isIdentity {
            if blurSigma > 0 {
                Resample.gaussianBlur(&image, dim: dim, sigma: (blurSigma / sp.x, blurSigma / sp.y, blurSigma / sp.z))
            }
            image = Resample.resampleLinear(image, grid: grid)
        }
        if integral && lo >= -32768 && hi <= 32767 { for i in image.indices { image[i] = image[i].rounded() } }
        var sum = 0.0, sum2 = 0.0, mn = Float.infinity
        for v in image { sum += Double(v); sum2 += Double(v) * Double(v); mn = min(mn, v) }
        let n = Double(image.count), mean = sum / n
        let std = max(sum2 / n - mean * mean, 0).squareRoot()
        // IntensityNormalization.zscore's arithmetic, on the statistics the store would hold.
        let m = Float(mean), inv = Float(1 / max(std, 1e-6))
        for i in image.indices { image[i] = (image[i] - m) * inv }
        self.image = image
        padValue = (mn - m) * inv
        let stored = [spacing, spacing, spacing]
        geometry = SourceGeometry(store: path, caseID: id, storedShape: grid.to, storedSpacing: stored,
                                  storedAffine: grid.affine(source: img.affine), sourceShape: dim,
                                  sourceSpacing: [sp.x, sp.y, sp.z], sourceAffine: img.affine, grid: grid)
        codes = XformCodes(qform: img.qformCode, sform: img.sformCode)
    }
}

extension SourceGeometry {
    init(store: String, caseID: String, storedShape: Dim3, storedSpacing: [Double], storedAffine: [Double],
         sourceShape: Dim3, sourceSpacing: [Double], sourceAffine: [Double], grid: ResampleGrid) {
        self.store = store; self.caseID = caseID
        self.storedShape = storedShape; self.storedSpacing = storedSpacing; self.storedAffine = storedAffine
        self.sourceShape = sourceShape; self.sourceSpacing = sourceSpacing; self.sourceAffine = sourceAffine
        self.grid = grid
    }
}
