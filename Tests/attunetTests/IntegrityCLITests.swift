import Foundation
import NN
import TestSupport
import XCTest

/// import-weights on damaged input: a safetensors header that does not parse, and an attunet checkpoint
/// (verified, written weights-only) with a flipped byte.
final class IntegrityCLITests: XCTestCase {
    func testImportWeightsRefusesDamagedInputWithOneLine() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        // safetensors: a flipped bit in the JSON header.
        let header = #"{"final.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#
        var bytes = Data()
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: Array(header.utf8) + [0, 0, 128, 63])
        bytes[8] ^= 0x01   // '{' becomes 'z'
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
        XCTAssertEqual(Checkpoint.weightsDigest(try Checkpoint.load("\(dir.path)/copy.h5")), Checkpoint.weightsDigest(model))
        try TestEnv.flipByte(in: ckpt, dataset: "state_dict/final.weight", at: 2)
        r = try TestEnv.run("\(TestEnv.attunet) import-weights \(ckpt) --out \(dir.path)/b.h5")
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr, "error: \(ckpt): checksum mismatch in /state_dict/final.weight\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir.path)/b.h5"))
    }
}
