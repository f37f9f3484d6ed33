import Foundation
import Tensor

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
