import DataPipeline
import Foundation
import NN
import TestSupport
import XCTest

/// import-weights on damaged input: a safetensors header that does not parse, and an attunet checkpoint
/// (verified, written weights-only) with a flipped byte; prepare on corrupt NIfTI headers that nifticlib itself
/// would print about.
final class IntegrityCLITests: XCTestCase {
    func testImportWeightsRefusesDamagedInputWithOneLine() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        // safetensors: a flipped bit in the JSON header.
        let header = #"{"final.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#
        var bytes = Data()
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: Array(header.utf8) + [0, 0, 128, 63])
        bytes[8] ^= 0x01  // '{' becomes 'z'
        let st = dir.appendingPathComponent("w.safetensors").path
        try bytes.write(to: URL(fileURLWithPath: st))
        var r = try TestEnv.run("\(TestEnv.attunet) import-weights \(st) --out \(dir.path)/a.h5")
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr, "error: \(st): header is not valid JSON\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir.path)/a.h5"))

        // An attunet checkpoint as input: verified, and written as a weights-only checkpoint.
        let model = SegmentationModel(ModelConfig(featureScale: 16), seed: 2)
        let ckpt = dir.appendingPathComponent("ckpt.h5").path
        try Checkpoint.save(model, to: ckpt)
        r = try TestEnv.run("\(TestEnv.attunet) import-weights \(ckpt) --out \(dir.path)/copy.h5")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(
            Checkpoint.weightsDigest(try Checkpoint.load("\(dir.path)/copy.h5")), Checkpoint.weightsDigest(model))
        try TestEnv.flipByte(in: ckpt, dataset: "state_dict/final.weight", at: 2)
        r = try TestEnv.run("\(TestEnv.attunet) import-weights \(ckpt) --out \(dir.path)/b.h5")
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr, "error: \(ckpt): checksum mismatch in /state_dict/final.weight\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir.path)/b.h5"))
    }

    /// Corrupt .nii.gz headers that make nifticlib print its own "** ERROR" lines whatever its debug level
    /// (dim[0] out of range in both byte orders, datatype 0, a two-file "ni1" header in a .nii.gz), read by
    /// prepare's worker threads next to a good case: exactly one line for the file, attunet's, naming it and
    /// the reason (then prepare's line that the store was not written), and no library text.
    func testCorruptNIfTIThroughPrepareGivesOneLineAndNoLibraryNoise() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let affine: [Double] = [2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1]
        let voxels = (0..<(16 * 16 * 8)).map { Float($0 % 200) - 100 }
        let labels = (0..<(16 * 16 * 8)).map { Float($0 % 7 == 0 ? 1 : 0) }
        for (offset, bytes, what) in [
            (40, [0x09, 0x09], "dim[0]"), (70, [0, 0], "datatype"), (344, [0x6E, 0x69, 0x31], "magic"),
        ] {
            let images = dir.appendingPathComponent("images-\(offset)")
            let labs = dir.appendingPathComponent("labels-\(offset)")
            for d in [images, labs] {
                try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
            }
            for name in ["good", "bad"] {
                try NIfTIVolume(nx: 16, ny: 16, nz: 8, affine: affine, voxels: voxels).write(
                    images.path + "/\(name).nii.gz", as: .int16)
                try NIfTIVolume(nx: 16, ny: 16, nz: 8, affine: affine, voxels: labels).write(
                    labs.path + "/\(name).nii.gz", as: .uint8)
            }
            // The bad image: its header changed, compressed again.
            let bad = images.path + "/bad.nii.gz"
            XCTAssertEqual(try TestEnv.run("gzip -dc \(bad) > \(dir.path)/raw.nii").status, 0)
            var header = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir.path + "/raw.nii")))
            for (i, b) in bytes.enumerated() { header[offset + i] = UInt8(b) }
            try Data(header).write(to: URL(fileURLWithPath: dir.path + "/raw.nii"))
            XCTAssertEqual(try TestEnv.run("gzip -c \(dir.path)/raw.nii > \(bad)").status, 0)

            let r = try TestEnv.run(
                "\(TestEnv.attunet) prepare --image-dir \(images.path) --label-dir \(labs.path) --out \(dir.path)/store-\(offset).h5 --spacing 4 --threads 2"
            )
            XCTAssertEqual(r.status, 1, "\(what): \(r.stdout)\(r.stderr)")
            // prepare's own lines only: one for the bad file, naming it and the reason, then the store's.
            let lines = r.stderr.split(separator: "\n")
            XCTAssertTrue(
                lines.allSatisfy { $0.hasPrefix("error: ") }, "\(what): only attunet's error lines, got:\n\(r.stderr)")
            XCTAssertEqual(lines.filter { $0.contains("bad.nii.gz") }.count, 1, "\(what): \(r.stderr)")
            XCTAssertTrue(
                lines.first { $0.contains("bad.nii.gz") }?.contains(what == "magic" ? "magic" : what) ?? false,
                "\(what): \(r.stderr)")
            XCTAssertEqual(lines.count, 2, "\(what): the bad file's line and the store's, got:\n\(r.stderr)")
            XCTAssertFalse(
                r.stderr.contains("**") || r.stderr.contains("nifti_") || r.stdout.contains("**"),
                "\(what): library text:\n\(r.stdout)\(r.stderr)")
            XCTAssertFalse(
                FileManager.default.fileExists(atPath: "\(dir.path)/store-\(offset).h5"),
                "\(what): no store from a failed prepare")
        }
    }
}
