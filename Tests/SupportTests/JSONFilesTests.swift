import Foundation
import Support
import XCTest

/// attunet's JSON spelling: snake_case keys written as Foundation's `.convertToSnakeCase` writes them, read back
/// into Swift names with the acronyms intact, older camelCase files still read, data keys untouched.
final class JSONFilesTests: XCTestCase {
    struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ s: String) { stringValue = s }
        init?(stringValue: String) { self.init(stringValue) }
        init?(intValue: Int) { nil }
    }

    /// An object with one key, `name`, as the encoder spells it.
    struct One: Encodable {
        var name: String
        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: Key.self)
            try c.encode(0, forKey: Key(name))
        }
    }

    static let names = [
        "store", "trainCases", "weightsSHA256", "sourceWeightsSHA256", "syncBN", "caseID", "s2s2d",
        "hd95", "sgemm1024GFlops", "rotation3DDegrees", "stepInEpoch", "avx512", "meanPredictionToReference",
        "s2sIsWorstCase", "HTTPServer", "a", "aB", "ABc", "x1Y2", "_0", "protocol", "inferenceSecondsPerVolume",
    ]

    /// A key with a letter that is both upper- and lower-case (found by fuzzing the config reader: a range of
    /// negative length, a trap) is cut like any other; ASCII keys as before.
    func testSnakeCaseOfALetterBothUpperAndLowerCase() {
        XCTAssertTrue(Character("ˢ").isUppercase && Character("ˢ").isLowercase)
        XCTAssertEqual(JSONFiles.snakeCase("aˢb"), "a_ˢb")
        XCTAssertEqual(JSONFiles.snakeCase("ˢˢ"), "ˢ_ˢ")
        XCTAssertEqual(JSONFiles.snakeCase("weightsSHA256"), "weights_sha256")
        XCTAssertEqual(JSONFiles.snakeCase("trainCases"), "train_cases")
    }

    func testSnakeCaseIsFoundationsConvertToSnakeCase() throws {
        let encoder = JSONFiles.compactEncoder()
        for name in Self.names {
            let json = try JSONSerialization.jsonObject(with: try encoder.encode(One(name: name))) as! [String: Any]
            XCTAssertEqual(JSONFiles.snakeCase(name), json.keys.first, name)
        }
        XCTAssertEqual(JSONFiles.snakeCase("weightsSHA256"), "weights_sha256")
        XCTAssertEqual(JSONFiles.snakeCase("syncBN"), "sync_bn")
        XCTAssertEqual(JSONFiles.snakeCase("caseID"), "case_id")
    }

    func testCamelCaseRestoresTheSwiftNamesOfAttunetsTypes() {
        for name in [
            "trainCases", "weightsSHA256", "sourceWeightsSHA256", "syncBN", "caseID", "stepInEpoch",
            "meanPredictionToReference", "s2sIsWorstCase", "inferenceSecondsPerVolume", "sgemm1024GFlops",
            "store", "hd95", "_0",
        ] {
            XCTAssertEqual(JSONFiles.camelCase(JSONFiles.snakeCase(name)), name)
        }
        XCTAssertEqual(JSONFiles.camelCase("weightsSHA256"), "weightsSHA256", "an older camelCase key reads as it is")
        XCTAssertEqual(JSONFiles.camelCase("_private_key_"), "_privateKey_")
    }

    struct Sample: Codable, Equatable {
        var weightsSHA256: String
        var syncBN: Bool
        var caseID: String
        var trainCases: [String]
        /// Keyed by data: case ids and nnU-Net's metric names stay as they are.
        var perCase: [String: Double]
        var seed: UInt64
    }

    func testRoundTripAndOlderCamelCaseFiles() throws {
        let s = Sample(
            weightsSHA256: "ab/cd", syncBN: true, caseID: "case_001", trainCases: ["a_0000", "b"],
            perCase: ["case_001": 1, "n_pred": 2, "Dice": 3, "IoU": 4, "fooBar": 5], seed: 0xFFFF_FFFF_FFFF_FFFF)
        let data = try JSONFiles.data(s)
        let text = String(decoding: data, as: UTF8.self)
        for key in [
            "\"weights_sha256\"", "\"sync_bn\"", "\"case_id\"", "\"train_cases\"", "\"per_case\"", "\"case_001\"",
            "\"n_pred\"", "\"Dice\"", "\"IoU\"", "\"fooBar\"", "\"ab/cd\"",
        ] {
            XCTAssertTrue(text.contains(key), "\(key) in \(text)")
        }
        XCTAssertTrue(text.contains("\n"), "files are pretty-printed")
        XCTAssertFalse(try JSONFiles.string(s).contains("\n"), "attributes are one line")
        XCTAssertEqual(try JSONFiles.decode(Sample.self, from: data), s)
        XCTAssertEqual(try JSONFiles.decode(Sample.self, from: try JSONFiles.string(s)), s)
        // Written before attunet used snake_case: plain JSONEncoder, camelCase keys.
        XCTAssertEqual(try JSONFiles.decode(Sample.self, from: try JSONEncoder().encode(s)), s)
    }

    func testSnakeCasedKeysNormalisesAnOlderTree() throws {
        let old = try JSONSerialization.jsonObject(
            with: Data(
                #"{"syncBN": true, "model": {"inChannels": 1}, "trainCases": ["caseA"], "schedule": {"step": {"every": 2}}}"#
                    .utf8))
        let new = JSONFiles.snakeCasedKeys(old) as! [String: Any]
        XCTAssertEqual(Set(new.keys), ["sync_bn", "model", "train_cases", "schedule"])
        XCTAssertEqual((new["model"] as! [String: Any]).keys.first, "in_channels")
        XCTAssertEqual(new["train_cases"] as? [String], ["caseA"], "values are left alone")
    }
}
