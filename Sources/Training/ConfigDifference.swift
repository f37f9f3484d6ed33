import Foundation
import Support

/// The first difference between a configuration and the JSON it was saved as, for the refusals of a restart
/// with other settings (`attunet cv` against its `config.json`, `train --resume` against the checkpoint's
/// `train_config`): "key.path: new (was old)", keys in sorted order and in the files' snake_case spelling
/// (`training.weight_decay: 1e-05 (was 1e-06)`).
///
/// A configuration saved before attunet wrote snake_case keys (camelCase: `weightDecay`, `syncBN`) compares
/// as the same configuration in today's spelling: its object keys are turned into snake_case first.
public enum ConfigDifference {
    /// nil when `value` encodes to what `old` holds, ignoring the top-level keys in `ignoring` (Swift names or
    /// snake_case keys).
    public static func first<T: Encodable>(_ value: T, old: Data, ignoring: Set<String> = []) throws -> String? {
        guard
            var new = try JSONSerialization.jsonObject(with: try JSONFiles.compactEncoder().encode(value))
                as? [String: Any]
        else {
            return "not an object"
        }
        guard let saved = try? JSONSerialization.jsonObject(with: old) as? [String: Any],
            var was = JSONFiles.snakeCasedKeys(saved) as? [String: Any]
        else {
            return "not a saved configuration"
        }
        for key in ignoring.map(JSONFiles.snakeCase) {
            new[key] = nil
            was[key] = nil
        }
        return firstDifference(new, was, path: "")
    }

    static func firstDifference(_ a: Any, _ b: Any, path: String) -> String? {
        if let a = a as? [String: Any], let b = b as? [String: Any] {
            for key in Set(a.keys).union(b.keys).sorted() {
                let p = path.isEmpty ? key : path + "." + key
                guard let x = a[key] else { return "\(p): absent (was \(render(b[key]!)))" }
                guard let y = b[key] else { return "\(p): \(render(x)) (absent before)" }
                if let d = firstDifference(x, y, path: p) { return d }
            }
            return nil
        }
        return render(a) == render(b) ? nil : "\(path): \(render(a)) (was \(render(b)))"
    }

    static func render(_ v: Any) -> String {
        if v is NSNull { return "none" }
        // A boolean read back by JSONSerialization is an NSNumber: "true", not "1".
        if let n = v as? NSNumber, let d = try? JSONSerialization.data(withJSONObject: [n]) {
            let s = String(decoding: d, as: UTF8.self)
            if s == "[true]" || s == "[false]" { return String(s.dropFirst().dropLast()) }
        }
        if JSONSerialization.isValidJSONObject(v),
            let d = try? JSONSerialization.data(withJSONObject: v, options: [.sortedKeys, .withoutEscapingSlashes])
        {
            return String(decoding: d, as: UTF8.self)
        }
        return "\(v)"
    }
}
