import DataPipeline
import Foundation
import Support
import Tensor

/// Whether a prediction and its reference lie on the same voxel grid, before any voxel is compared.
public enum GeometryCheck {
    /// Throws one ``AttunetError`` line naming `path` (the volume checked, usually the prediction) when its
    /// shape differs from `reference`'s, or its voxel-to-world affine differs beyond the tolerance
    /// `attunet prepare` uses between an image and its label (`NIfTIVolume.affineMismatch`: 0.05 mm on the
    /// translation, 10⁻³·max(1, |a|) on the other entries).
    public static func check(
        _ volume: NIfTIVolume, path: String, against reference: NIfTIVolume,
        referencePath: String
    ) throws {
        try check(
            shape: [volume.nx, volume.ny, volume.nz], affine: volume.affine, path: path,
            referenceShape: [reference.nx, reference.ny, reference.nz], referenceAffine: reference.affine,
            referencePath: referencePath)
    }

    /// The same check on shapes (`[nx, ny, nz]`) and row-major 4x4 affines.
    public static func check(
        shape: [Int], affine: [Double], path: String,
        referenceShape: [Int], referenceAffine: [Double], referencePath: String
    ) throws {
        if shape != referenceShape {
            throw AttunetError(
                "\(path): shape \(shape.map(String.init).joined(separator: "x")) differs from "
                    + "the reference \(referencePath) (\(referenceShape.map(String.init).joined(separator: "x")))")
        }
        guard affine.count == 16, referenceAffine.count == 16 else {
            throw AttunetError("\(path): an affine needs 16 values (got \(affine.count) and \(referenceAffine.count))")
        }
        if let (r, c) = NIfTIVolume.affineMismatch(referenceAffine, affine) {
            throw AttunetError(
                "\(path): geometry differs from the reference \(referencePath) (affine row \(r) "
                    + "column \(c): \(fmt(affine[r * 4 + c])) vs \(fmt(referenceAffine[r * 4 + c])))")
        }
    }

    static func fmt(_ x: Double) -> String { String(format: "%.6g", x) }
}
