import DataPipeline
import Foundation
import Support
import Tensor

/// A NIfTI image made ready for the predictor without a case store: resampled by `prepare`'s own image path
/// (`CasePreparer.prepareImage`: the voxel checks, the pre-blur, trilinear resampling, int16 rounding), z-scored
/// with the resampled volume's statistics as `IntensityNormalization.zscore` normalises a stored case, and with
/// the ``SourceGeometry`` that takes the prediction back to the file's grid.
public struct SourceInput: Sendable {
    /// The normalised image on the resampled grid, `[Z][Y][X]` of ``geometry``'s stored shape.
    public var image: [Float]
    /// What the case's minimum normalises to (pads tiles past the volume, as training pads patches).
    public var padValue: Float
    public var geometry: SourceGeometry
    /// The source file's qform and sform codes (the export writes them back).
    public var codes: XformCodes

    /// Reads and prepares the image at `path`; `id` names the case in messages.
    public init(path: String, id: String, spacing: Double, blurSigma: Double, modality: String = "CT") throws {
        let img: NIfTIVolume
        do { img = try NIfTIVolume.read(path) } catch {
            throw AttunetError("\(path): \(AttunetError.message(of: error, strippingPath: path))")
        }
        let prepared = try CasePreparer.prepareImage(
            img, path: path, spacing: spacing, blurSigma: blurSigma, modality: modality)
        var image = prepared.image
        let normalization = IntensityNormalization.zscore
        let stats = prepared.stats
        image.withUnsafeMutableBufferPointer { normalization.apply($0.baseAddress!, count: $0.count, stats: stats) }
        self.image = image
        padValue = normalization.padValue(stats: stats)
        let sp = img.spacing
        let grid = prepared.grid
        geometry = SourceGeometry(
            store: path, caseID: id, storedShape: grid.to, storedSpacing: [spacing, spacing, spacing],
            storedAffine: grid.affine(source: img.affine), sourceShape: Dim3(z: img.nz, y: img.ny, x: img.nx),
            sourceSpacing: [sp.x, sp.y, sp.z], sourceAffine: img.affine, grid: grid)
        codes = XformCodes(qform: img.qformCode, sform: img.sformCode)
    }
}

extension SourceGeometry {
    init(
        store: String, caseID: String, storedShape: Dim3, storedSpacing: [Double], storedAffine: [Double],
        sourceShape: Dim3, sourceSpacing: [Double], sourceAffine: [Double], grid: ResampleGrid
    ) {
        self.store = store
        self.caseID = caseID
        self.storedShape = storedShape
        self.storedSpacing = storedSpacing
        self.storedAffine = storedAffine
        self.sourceShape = sourceShape
        self.sourceSpacing = sourceSpacing
        self.sourceAffine = sourceAffine
        self.grid = grid
    }
}
