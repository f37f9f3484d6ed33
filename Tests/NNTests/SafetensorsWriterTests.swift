import Foundation
import NN
import Support
import TestSupport
import XCTest

/// The safetensors writer (`SafetensorsFile.encode`, `SegmentationModel.save(safetensors:)`): its layout, read
/// back by attunet's reader and by the Python `safetensors` package, and a model's round trip.
final class SafetensorsWriterTests: XCTestCase {
    /// Mixed dtypes and odd sizes: the header is padded to 8 bytes, the int64 data comes first and aligned,
    /// the data is contiguous, the header keeps the order given, and the reader returns every value.
    func testEncodeLayoutReadsBack() throws {
        let tensors = [
            SafetensorsTensor(name: "a.weight", shape: [3, 1], floats: [1.5, -2, 0x1p-126]),
            SafetensorsTensor(name: "a.num_batches_tracked", shape: [], int64s: [7]),
            SafetensorsTensor(name: "b", shape: [0], floats: []),
            SafetensorsTensor(name: "c.\"quoted\"/name", shape: [2], int64s: [-1, 1 << 40]),
        ]
        let meta = ["format": "pt", "config": #"{"k": "v/w"}"#]
        let data = try SafetensorsFile.encode(tensors, metadata: meta)
        XCTAssertEqual(data, try SafetensorsFile.encode(tensors, metadata: meta), "the same input gives the same bytes")
        let n = data.prefix(8).withUnsafeBytes { Int($0.loadUnaligned(as: UInt64.self).littleEndian) }
        XCTAssertEqual(n % 8, 0)
        XCTAssertEqual(data.count, 8 + n + 3 * 4 + 8 + 2 * 8)
        let header = String(decoding: data[8..<(8 + n)], as: UTF8.self)
        XCTAssertTrue(
            header.hasPrefix(
                #"{"__metadata__":{"config":"{\"k\": \"v/w\"}","format":"pt"},"a.weight":{"dtype":"F32","shape":[3,1],"data_offsets":[24,36]},"a.num_batches_tracked":{"dtype":"I64","shape":[],"data_offsets":[0,8]}"#
            ), header)

        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("t.safetensors").path
        XCTAssertEqual(try SafetensorsFile.write(tensors, metadata: meta, to: path), data.count)
        XCTAssertEqual(TestEnv.hiddenFiles(dir), [], "no temporary file left")
        let f = try SafetensorsFile(path)
        XCTAssertEqual(f.metadata, meta)
        XCTAssertEqual(Set(f.entries.keys), Set(tensors.map(\.name)))
        XCTAssertEqual(f.entries["a.num_batches_tracked"]?.shape, [])
        XCTAssertEqual(try f.floats("a.weight"), [1.5, -2, 0x1p-126])
        XCTAssertEqual(try f.floats("a.num_batches_tracked"), [7])
        XCTAssertEqual(try f.floats("c.\"quoted\"/name"), [-1, 0x1p40])
        XCTAssertEqual(try f.floats("b"), [])

        XCTAssertThrowsError(try SafetensorsFile.encode([tensors[0], tensors[0]])) {
            XCTAssertTrue("\($0)".contains("a.weight"), "\($0)")
        }
        XCTAssertThrowsError(
            try SafetensorsFile.encode([SafetensorsTensor(name: "__metadata__", shape: [], int64s: [0])]))
    }

    /// A model written as safetensors reads back (architecture inferred from the tensors, as
    /// `attunet import-weights` does) into bit-identical weights and BN buffers, counters included; the U-Net
    /// preset whose widths conv1's alone does not give (feature scale 3.82) comes back as that preset.
    func testModelRoundTripIsBitIdentical() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        for config in [
            ModelConfig(kind: .attentionUNet, inChannels: 2, classes: 3, featureScale: 16),
            ModelConfig(kind: .unetCapacityMatched, classes: 4),
        ] {
            let m = SegmentationModel(config, seed: 5)
            for e in m.buffers.entries {
                for i in 0..<e.count {
                    m.buffers.values.data[e.offset + i] =
                        e.name.hasSuffix("num_batches_tracked") ? 123_457 : Float(i % 11) * 0.3 + 0.7
                }
            }
            let path = dir.appendingPathComponent("\(config.kind.rawValue).safetensors").path
            let bytes = try m.save(safetensors: path)
            XCTAssertEqual(bytes, try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int)
            let f = try SafetensorsFile(path)
            XCTAssertEqual(f.metadata["format"], "pt")
            XCTAssertEqual(f.metadata["attunet_weights_sha256"], Checkpoint.weightsDigest(m))
            XCTAssertEqual(try JSONFiles.decode(ModelConfig.self, from: f.metadata["attunet_model_config"]!), config)
            let batchNorms = m.buffers.entries.count / 3
            XCTAssertEqual(f.entries.count, m.params.entries.count + m.buffers.entries.count)
            XCTAssertEqual(f.entries.values.filter { $0.dtype == "I64" }.count, batchNorms)
            XCTAssertEqual(f.entries["conv1.conv1.1.num_batches_tracked"]?.shape, [])
            XCTAssertEqual(
                f.entries["attentionblock2.gate_block_1.theta.weight"]?.shape,
                config.kind == .attentionUNet ? [8, 8, 2, 2, 2] : nil)

            let inferred = try SegmentationModel.inferConfig(
                names: Set(f.entries.keys), shape: { f.entries[$0]?.shape })
            XCTAssertEqual(inferred, config)
            let back = SegmentationModel(inferred, seed: 99)
            try back.load(safetensors: f)
            XCTAssertEqual(
                Checkpoint.weightsDigest(back), Checkpoint.weightsDigest(m),
                "\(config.kind.rawValue): weights differ after the round trip")
        }
    }

    /// The header lists the tensors in the original class's state_dict order: each module's parameters,
    /// then its buffers (a BatchNorm's running statistics after its weight and bias).
    func testStateDictOrder() throws {
        let names = StateDict.tensors(of: SegmentationModel(ModelConfig(kind: .unet, featureScale: 16))).map(\.name)
        XCTAssertEqual(
            Array(names.prefix(8)),
            [
                "conv1.conv1.0.weight", "conv1.conv1.0.bias", "conv1.conv1.1.weight", "conv1.conv1.1.bias",
                "conv1.conv1.1.running_mean", "conv1.conv1.1.running_var",
                "conv1.conv1.1.num_batches_tracked", "conv1.conv2.0.weight",
            ])
        XCTAssertEqual(names.count, 136)
        XCTAssertEqual(Set(names).count, 136)
        XCTAssertEqual(names.suffix(2), ["final.weight", "final.bias"])
    }
}
