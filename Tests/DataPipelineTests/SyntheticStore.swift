import Foundation
import Tensor
import TestSupport
import XCTest

@testable import DataPipeline

/// One-case stores made from arrays, for tests that need to know every voxel: the volume is written as NIfTI
/// (1 mm isotropic, identity affine) and prepared at 1 mm, so the store holds exactly these voxels (no
/// resampling, float32 storage).
enum SyntheticStore {
    /// Writes `image` / `label` ([Z][Y][X], x fastest) as case `id` under `dir` and prepares `dir/store.h5`.
    static func make(in dir: URL, id: String = "case", dim: Dim3, image: [Float], label: [UInt8]) throws -> CaseStore {
        precondition(image.count == dim.count && label.count == dim.count)
        let img = dir.appendingPathComponent("img")
        let lab = dir.appendingPathComponent("lab")
        try FileManager.default.createDirectory(at: img, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: lab, withIntermediateDirectories: true)
        let eye: [Double] = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
        try NIfTIVolume(nx: dim.x, ny: dim.y, nz: dim.z, affine: eye, voxels: image).write(img.path + "/\(id).nii")
        try NIfTIVolume(nx: dim.x, ny: dim.y, nz: dim.z, affine: eye, voxels: label.map(Float.init))
            .write(lab.path + "/\(id).nii", as: .uint8)
        var o = PrepareOptions()
        o.spacing = 1
        o.blurSigma = 0
        o.storeFloat = true
        o.threads = 1
        let out = dir.path + "/store.h5"
        _ = try CasePreparer.run(
            input: try DatasetInput.folders(images: img.path, labels: lab.path), out: out, options: o,
            skipBad: false)
        let store = try CaseStore(path: out)
        XCTAssertEqual(store.cases.first?.shape, dim)
        XCTAssertEqual(try store.image(0), image, "the store must hold the voxels unchanged")
        return store
    }

    /// Raw little-endian bytes of an array, for numpy's fromfile.
    static func save<T>(_ v: [T], to path: String) throws {
        try v.withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: path)) }
    }
}
