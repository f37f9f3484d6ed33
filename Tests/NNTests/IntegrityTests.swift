import Foundation
import HDF5Kit
import Support
import TestSupport
import XCTest

@testable import NN

/// Damage to a checkpoint and to a safetensors file: what each format can detect is detected with one line
/// naming the file and what failed, and nothing else crashes.
final class IntegrityTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try TestEnv.tempDir() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func checkpoint(_ name: String) throws -> (path: String, model: SegmentationModel) {
        let path = dir.appendingPathComponent(name).path
        let m = SegmentationModel(ModelConfig(featureScale: 16), seed: 5)
        for e in m.buffers.entries {
            // num_batches_tracked is an integer counter (int64 on disk); the statistics are arbitrary floats.
            for i in 0..<e.count {
                m.buffers.values.data[e.offset + i] =
                    e.name.hasSuffix("num_batches_tracked") ? 17 : 1 + Float(i % 5) * 0.5
            }
        }
        try Checkpoint.save(m, to: path)
        return (path, m)
    }

    /// `StoredDigest` is SHA-256: FIPS 180-2's vectors, fed in one piece and in many; an integer is its 8 bytes
    /// little-endian; a copy hashes on from where the original was, without changing it.
    func testStoredDigestIsSHA256AndAValue() {
        func hex(_ chunks: [String]) -> String {
            var d = StoredDigest()
            for c in chunks { Array(c.utf8).withUnsafeBytes { d.add($0) } }
            return d.hex
        }
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        let twoBlocks = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        let message = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
        XCTAssertEqual(hex(["abc"]), abc)
        XCTAssertEqual(hex([""]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(hex([message]), twoBlocks)
        XCTAssertEqual(hex(message.map { String($0) }), twoBlocks, "fed a byte at a time")

        var a = StoredDigest()
        Array("ab".utf8).withUnsafeBytes { a.add($0) }
        var b = a
        Array("c".utf8).withUnsafeBytes { b.add($0) }
        XCTAssertEqual(b.hex, abc)
        XCTAssertEqual(a.hex, hex(["ab"]), "the copy's update leaves the original as it was")
        XCTAssertEqual(a.hex, a.hex, "reading the digest does not end it")
        Array("c".utf8).withUnsafeBytes { a.add($0) }
        XCTAssertEqual(a.hex, abc)

        var n = StoredDigest()
        n.add(Int64(0x0102_0304_0506_0708))
        XCTAssertEqual(n.hex, hex(["\u{08}\u{07}\u{06}\u{05}\u{04}\u{03}\u{02}\u{01}"]))
    }

    /// The stored digest is the weights' SHA-256; a flipped byte in a weight's chunk fails its Fletcher-32
    /// checksum, a value rewritten with a valid checksum (h5py) fails the digest, each with one line and kind
    /// `.corrupt`, and `load(_:into:)` leaves the model as it was. Without the digest (a checkpoint written
    /// before it existed) and without the filter (h5py's plain datasets) the checkpoint still loads.
    func testCheckpointDamageIsDetectedByChecksumOrDigest() throws {
        let (path, m) = try checkpoint("c.h5")
        XCTAssertEqual(
            try H5File.open(path).root.stringAttribute(Checkpoint.weightsDigestAttribute), Checkpoint.weightsDigest(m))
        XCTAssertTrue(try Checkpoint.verifyWeights(try Checkpoint.load(path), in: H5File.open(path)))

        let flipped = dir.appendingPathComponent("flipped.h5").path
        try FileManager.default.copyItem(atPath: path, toPath: flipped)
        try TestEnv.flipByte(in: flipped, dataset: "state_dict/conv1.conv1.0.weight")
        XCTAssertThrowsError(try Checkpoint.load(flipped)) {
            XCTAssertEqual("\($0)", "\(flipped): checksum mismatch in /state_dict/conv1.conv1.0.weight")
            XCTAssertEqual(($0 as? AttunetError)?.kind, .corrupt)
        }

        let rewritten = dir.appendingPathComponent("rewritten.h5").path
        try FileManager.default.copyItem(atPath: path, toPath: rewritten)
        try TestEnv.rewriteValue(in: rewritten, dataset: "state_dict/up_concat1.conv.conv1.0.weight")
        let target = SegmentationModel(ModelConfig(featureScale: 16), seed: 9)
        let before = target.params.values.array
        XCTAssertThrowsError(try Checkpoint.load(rewritten, into: target)) {
            XCTAssertTrue(
                "\($0)".hasPrefix(
                    "\(rewritten): SHA-256 mismatch in the weights and BN buffers (/state_dict): the file records \(Checkpoint.weightsDigest(m).prefix(16))…"
                ), "\($0)")
            XCTAssertFalse("\($0)".contains("\n"), "\($0)")
            XCTAssertEqual(($0 as? AttunetError)?.kind, .corrupt)
        }
        XCTAssertTrue(target.params.values.array == before, "a refused checkpoint must not change the model")

        // A BN running statistic (a buffer, not a parameter) is covered too.
        let buffer = dir.appendingPathComponent("buffer.h5").path
        try FileManager.default.copyItem(atPath: path, toPath: buffer)
        try TestEnv.rewriteValue(in: buffer, dataset: "state_dict/conv1.conv1.1.running_var", index: 1)
        XCTAssertThrowsError(try Checkpoint.load(buffer)) {
            XCTAssertTrue("\($0)".contains("SHA-256 mismatch"), "\($0)")
        }

        // Before digests and checksums: attributes removed, datasets rewritten plainly by h5py.
        let old = dir.appendingPathComponent("old.h5").path
        try TestEnv.python(
            """
            import h5py
            with h5py.File(r'\(path)', 'r') as a, h5py.File(r'\(old)', 'w') as b:
                for k, v in a.attrs.items():
                    if k != 'weights_sha256': b.attrs[k] = v
                for k in a['state_dict']:
                    b['state_dict/' + k] = a['state_dict'][k][()]
                assert not b['state_dict/final.weight'].fletcher32
            """)
        let back = try Checkpoint.load(old)
        XCTAssertFalse(try Checkpoint.verifyWeights(back, in: H5File.open(old)))
        XCTAssertEqual(Checkpoint.weightsDigest(back), Checkpoint.weightsDigest(m))
    }

    /// A small safetensors file written byte by byte: header length, JSON header, data.
    func safetensors(header: String, data: [UInt8]) -> Data {
        var out = Data()
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: Array(header.utf8))
        out.append(contentsOf: data)
        return out
    }

    /// safetensors has no checksum. Every single-bit flip in the length and header of a small file either
    /// parses or gives one line naming the file (never a crash: shapes and offsets are checked without
    /// overflow); damaged shapes, dtypes and offsets are named; a flipped bit inside the data is not
    /// detectable by the format and loads with a changed value (the documented limit).
    func testDamagedSafetensorsGiveOneLineAndNeverCrash() throws {
        let header =
            #"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"I64","shape":[2],"data_offsets":[24,40]}}"#
        let data = (0..<40).map { UInt8($0) }
        let good = safetensors(header: header, data: data)
        let path = dir.appendingPathComponent("w.safetensors").path
        try good.write(to: URL(fileURLWithPath: path))
        let f = try SafetensorsFile(path)
        XCTAssertEqual(f.entries["a"]?.shape, [2, 3])
        let a = try f.floats("a")

        var parsed = 0
        var refused = 0
        for byte in 0..<(8 + header.utf8.count) {
            for bit in [0, 3, 6] {
                var bad = good
                bad[byte] ^= UInt8(1 << bit)
                try bad.write(to: URL(fileURLWithPath: path))
                do {
                    let g = try SafetensorsFile(path)
                    for name in g.entries.keys { _ = try? g.floats(name) }
                    parsed += 1
                } catch {
                    refused += 1
                    XCTAssertTrue(
                        "\(error)".hasPrefix("\(path): ") && !"\(error)".contains("\n"),
                        "byte \(byte) bit \(bit): \(error)")
                }
            }
        }
        XCTAssertGreaterThan(refused, 0)

        let cases: [(String, String)] = [
            (
                #"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,9223372036854775807]}}"#,
                "tensor a lies outside the file (truncated?)"
            ),
            (
                #"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,24]}}"#,
                "tensor a has an impossible shape [4611686018427387904, 4]"
            ),
            (
                #"{"a":{"dtype":"F32","shape":[-2,-3],"data_offsets":[0,24]}}"#,
                "tensor a has an impossible shape [-2, -3]"
            ),
            (
                #"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,24]}}"#,
                "tensor a has 24 bytes for shape [2, 2] of F32"
            ),
            (#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]"#, "header is not valid JSON"),
        ]
        for (h, message) in cases {
            try safetensors(header: h, data: data).write(to: URL(fileURLWithPath: path))
            XCTAssertThrowsError(try SafetensorsFile(path)) { XCTAssertEqual("\($0)", "\(path): \(message)") }
        }
        var flipped = good
        flipped[8 + header.utf8.count + 5] ^= 0x10
        try flipped.write(to: URL(fileURLWithPath: path))
        XCTAssertNotEqual(
            try SafetensorsFile(path).floats("a"), a, "a flipped data byte loads: safetensors cannot detect it")
    }
}
