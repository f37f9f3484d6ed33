import Foundation
import Support

/// The value of `--nsd-tolerance` (`attunet evaluate`, `attunet cv`): the tolerance in mm of the normalised
/// surface Dice, one for every class (`2`), one per class by name or label value (`pancreas:1,spleen:2`,
/// `1:1,2:2`), or a default and exceptions (`2,pancreas:1`: pancreas 1 mm, every other class 2 mm).
public struct NSDTolerance: Sendable, Equatable {
    /// The text as given.
    public var text: String
    /// The tolerance of every class not named (nil: every class must be named).
    public var everyClass: Double?
    /// The named tolerances in the order given: a class name or a label value (1 for the first foreground class).
    public var named: [Named]

    /// One `CLASS:MM` item.
    public struct Named: Sendable, Equatable {
        public var key: String
        public var mm: Double
    }

    /// Parses `text`; a malformed item, a tolerance that is not a finite number ≥ 0 mm, two defaults or a class
    /// named twice is an error naming the item.
    public init(parsing text: String) throws {
        self.text = text
        named = []
        func mm(_ s: Substring, _ item: Substring) throws -> Double {
            guard let v = Double(s.trimmingCharacters(in: .whitespaces)), v.isFinite, v >= 0 else {
                throw AttunetError(
                    "--nsd-tolerance \(text): \(item.isEmpty ? "an empty item" : String(item)) is not a tolerance in mm "
                        + "(a number ≥ 0, e.g. 2 or pancreas:1)")
            }
            return v
        }
        let items = text.split(separator: ",", omittingEmptySubsequences: false)
        for item in items {
            let parts = item.split(separator: ":", omittingEmptySubsequences: false)
            switch parts.count {
            case 1:
                let v = try mm(parts[0], item)
                guard everyClass == nil else {
                    throw AttunetError("--nsd-tolerance \(text): two tolerances for every class (give one)")
                }
                everyClass = v
            case 2:
                let key = parts[0].trimmingCharacters(in: .whitespaces)
                guard !key.isEmpty else {
                    throw AttunetError("--nsd-tolerance \(text): \(item) names no class (CLASS:MM)")
                }
                guard !named.contains(where: { $0.key == key }) else {
                    throw AttunetError("--nsd-tolerance \(text): class \(key) is given twice")
                }
                named.append(Named(key: key, mm: try mm(parts[1], item)))
            default:
                throw AttunetError("--nsd-tolerance \(text): \(item) is not MM or CLASS:MM")
            }
        }
    }

    /// The tolerance of each foreground class (`classNames[c − 1]` names class c; element c − 1 is class c's).
    /// A name or label value that is no foreground class, a class named both ways, or a class left without a
    /// tolerance is an error naming it.
    public func resolve(classNames: [String]) throws -> [Double] {
        var byClass = [Double?](repeating: everyClass, count: classNames.count)
        var set = [String?](repeating: nil, count: classNames.count)
        for n in named {
            let c: Int
            if let i = classNames.firstIndex(of: n.key) {
                c = i
            } else if let label = Int(n.key), (1...classNames.count).contains(label) {
                c = label - 1
            } else {
                throw AttunetError(
                    "--nsd-tolerance \(text): \(n.key) is no foreground class (the classes: "
                        + classNames.enumerated().map { "\($0.offset + 1) \($0.element)" }.joined(separator: ", ")
                        + ")")
            }
            if let first = set[c] {
                throw AttunetError(
                    "--nsd-tolerance \(text): class \(classNames[c]) (label \(c + 1)) is given twice (\(first) and \(n.key))"
                )
            }
            set[c] = n.key
            byClass[c] = n.mm
        }
        let missing = classNames.indices.filter { byClass[$0] == nil }
        if !missing.isEmpty {
            throw AttunetError(
                "--nsd-tolerance \(text): no tolerance for "
                    + missing.map { "\(classNames[$0]) (label \($0 + 1))" }.joined(separator: ", ")
                    + "; name every class or give a default first, e.g. 2,\(classNames[missing[0]]):1")
        }
        return byClass.map { $0! }
    }
}
