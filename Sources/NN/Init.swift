import Foundation

/// A small seeded generator (SplitMix64) so initial weights are identical on every platform and rank.
public struct SeededRNG: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 random bits.
    public mutating func uniform() -> Double { Double(next() >> 11) * 0x1.0p-53 }
    /// Standard normal (Box-Muller).
    public mutating func normal() -> Double {
        let u1 = max(uniform(), 1e-300), u2 = uniform()
        return (-2 * Foundation.log(u1)).squareRoot() * cos(2 * Double.pi * u2)
    }
}

/// The original code's initialisation (`init_weights(..., 'kaiming')` plus PyTorch's defaults).
public enum Initializer {
    /// Kaiming-normal, fan_in, a = 0: N(0, 2 / fan_in).
    public static func kaimingNormal(_ p: ParameterRef, fanIn: Int, rng: inout SeededRNG) {
        let std = (2.0 / Double(fanIn)).squareRoot()
        for i in 0..<p.count { p.value[i] = Float(rng.normal() * std) }
    }
    /// U(-bound, bound): PyTorch's default for conv biases with bound = 1/sqrt(fan_in).
    public static func uniform(_ p: ParameterRef, bound: Double, rng: inout SeededRNG) {
        for i in 0..<p.count { p.value[i] = Float((rng.uniform() * 2 - 1) * bound) }
    }
    public static func normal(_ p: ParameterRef, mean: Double, std: Double, rng: inout SeededRNG) {
        for i in 0..<p.count { p.value[i] = Float(mean + std * rng.normal()) }
    }
    public static func constant(_ p: ParameterRef, _ v: Float) {
        for i in 0..<p.count { p.value[i] = v }
    }
}
