import ArgumentParser
import DataPipeline
import Evaluation
import NN
import Tensor

// The library's named choices, parsed by name from the command line; help lists their values and parsing
// refuses anything else.
extension ModelKind: ExpressibleByArgument {}
extension FreezeKind: ExpressibleByArgument {}
extension OptimizerKind: ExpressibleByArgument {}
extension LossKind: ExpressibleByArgument {}
extension ScheduleKind: ExpressibleByArgument {}
extension AugmentPreset: ExpressibleByArgument {}
extension ConvPath: ExpressibleByArgument {}

/// Sizes are written X x Y x Z on the command line ("160x160x96"), the way users read them.
extension Dim3: ExpressibleByArgument {
    public init?(argument: String) {
        let parts = argument.lowercased().split(separator: "x", omittingEmptySubsequences: false).map { Int($0) }
        guard parts.count == 3, let x = parts[0], let y = parts[1], let z = parts[2] else { return nil }
        self.init(z: z, y: y, x: x)
    }
}

/// `--distance-definition pooled|max-directed`.
extension SurfaceDistanceDefinition: ExpressibleByArgument {
    public init?(argument: String) {
        switch argument {
        case "pooled": self = .pooled
        case "max-directed": self = .maxDirected
        default: return nil
        }
    }
    public static var allValueStrings: [String] { ["pooled", "max-directed"] }
    public var defaultValueDescription: String { self == .pooled ? "pooled" : "max-directed" }
    public static var allValueDescriptions: [String: String] { [:] }
}
extension PhantomLabels: ExpressibleByArgument {}

/// `--connectivity 6|26`.
extension Connectivity: ExpressibleByArgument {
    public static var allValueStrings: [String] { allCases.map { String($0.rawValue) } }
    public var defaultValueDescription: String { String(rawValue) }
}
