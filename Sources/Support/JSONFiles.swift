import Foundation

/// How attunet writes and reads its JSON: every JSON file (a run folder's `config.json`, `splits.json`,
/// `results.json`, `summary.json`, the transfer report, `bench --json`) and every JSON attribute of a checkpoint
/// (`model_config`, `train_config`, `training_state`, `metrics`, `transfer`) has snake_case keys, sorted, with
/// slashes unescaped; files are pretty-printed, attributes compact.
///
/// Swift names become keys by Foundation's `.convertToSnakeCase` (`weightsSHA256` → `weights_sha256`,
/// `syncBN` → `sync_bn`, `caseID` → `case_id`). Reading converts back with ``camelCase(_:)``: Foundation's
/// `.convertFromSnakeCase` would give `weightsSha256`, so the words in ``acronyms`` come back upper-case.
/// A key without an underscore is left alone, so files written before attunet used snake_case (camelCase
/// keys) read as they always did. Keys of string-keyed dictionaries (case ids, layer names, label values) are
/// data and neither strategy touches them.
///
/// A type read through ``decoder()`` must not spell a key with an underscore in its `CodingKeys` (a
/// file's `foo_bar` is matched as `fooBar`); name the Swift property and let the encoder write the key.
public enum JSONFiles {
    /// The words that Swift names spell upper-case (`SHA256`, `BN`, `ID`), by their snake_case spelling.
    public static let acronyms: [String: String] = ["sha256": "SHA256", "bn": "BN", "id": "ID"]

    /// The encoder of JSON files: pretty-printed, sorted keys, slashes unescaped, snake_case keys.
    public static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        e.keyEncodingStrategy = .convertToSnakeCase
        return e
    }

    /// The encoder of JSON attributes and other one-line JSON: as ``encoder()``, not pretty-printed.
    public static func compactEncoder() -> JSONEncoder {
        let e = encoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }

    /// The decoder of everything attunet wrote: snake_case keys (and the camelCase keys of older files).
    public static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .custom { path in AnyKey(camelCase(path.last!.stringValue)) }
        return d
    }

    /// `value` as a pretty-printed JSON file's content.
    public static func data<T: Encodable>(_ value: T) throws -> Data { try encoder().encode(value) }

    /// `value` as one line of JSON (a checkpoint attribute).
    public static func string<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try compactEncoder().encode(value), as: UTF8.self)
    }

    /// Decodes `data` (snake_case or older camelCase keys).
    public static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        try decoder().decode(type, from: data)
    }

    /// Decodes a JSON string (a checkpoint attribute).
    public static func decode<T: Decodable>(_ type: T.Type, from string: String) throws -> T {
        try decoder().decode(type, from: Data(string.utf8))
    }

    /// The key ``encoder()`` writes for the Swift name `key` (Foundation's `.convertToSnakeCase`: a word starts
    /// at an upper-case letter, a run of capitals is one word, and every word is lower-cased): `trainCases` →
    /// `train_cases`, `weightsSHA256` → `weights_sha256`; a key without capitals is unchanged.
    public static func snakeCase(_ key: String) -> String {
        let c = Array(key)
        guard c.count > 1 else { return key }
        var words: [ArraySlice<Character>] = []
        var wordStart = 0
        var search = 1
        while let upper = c[search...].firstIndex(where: \.isUppercase) {
            words.append(c[wordStart..<upper])
            // After the capital: a letter such as "ˢ" (U+02E2) is both upper- and lower-case.
            guard let lower = c[(upper + 1)...].firstIndex(where: \.isLowercase) else {
                wordStart = upper
                break
            }
            if lower == upper + 1 {
                wordStart = upper  // one capital starts a word: "trainCases"
            } else {
                words.append(c[upper..<(lower - 1)])  // a run of capitals is a word; its last starts the next
                wordStart = lower - 1
            }
            search = lower + 1
            if search >= c.count { break }
        }
        words.append(c[wordStart...])
        return words.filter { !$0.isEmpty }.map { String($0).lowercased() }.joined(separator: "_")
    }

    /// The Swift name of the key `key`: words after the first capitalised (or spelled as in ``acronyms``)
    /// and joined; leading and trailing underscores kept; a key without an inner underscore unchanged.
    public static func camelCase(_ key: String) -> String {
        guard let first = key.firstIndex(where: { $0 != "_" }) else { return key }
        let last = key.lastIndex(where: { $0 != "_" })!
        let core = key[first...last]
        let words = core.split(separator: "_")
        guard words.count > 1 else { return key }
        let joined =
            words[0].lowercased()
            + words.dropFirst().map { w -> String in
                acronyms[w.lowercased()] ?? w.prefix(1).uppercased() + w.dropFirst().lowercased()
            }.joined()
        return String(key[..<first]) + joined + String(key[key.index(after: last)...])
    }

    /// A JSON tree as `JSONSerialization` reads it with every object key turned into ``snakeCase(_:)``: a file
    /// written before attunet used snake_case, in today's spelling (only for trees whose object keys are all
    /// Swift names, such as a saved configuration).
    public static func snakeCasedKeys(_ tree: Any) -> Any {
        if let object = tree as? [String: Any] {
            var out: [String: Any] = [:]
            for (k, v) in object { out[snakeCase(k)] = snakeCasedKeys(v) }
            return out
        }
        if let array = tree as? [Any] { return array.map(snakeCasedKeys) }
        return tree
    }

    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int?
        init(_ s: String) {
            stringValue = s
            intValue = nil
        }
        init?(stringValue: String) { self.init(stringValue) }
        init?(intValue: Int) {
            stringValue = String(intValue)
            self.intValue = intValue
        }
    }
}
