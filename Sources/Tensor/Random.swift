import Foundation

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, well-mixed 64-bit generator, used to seed `SeededRNG` and to
/// derive independent streams from (seed, epoch, index) keys. Identical on every platform.
public struct SplitMix64: Sendable {
    public var state: UInt64
    public init(_ seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// The SplitMix64 finaliser of one value (a good 64-bit hash).
    public static func mix(_ x: UInt64) -> UInt64 {
        var s = SplitMix64(x)
        return s.next()
    }
}

/// xoshiro256** (Blackman & Vigna): the generator behind every random choice of attunet (initial weights, splits, phantoms, patch order,
/// sampling, augmentation). Seeded from any list of integers, e.g. `SeededRNG(seed, epoch, globalIndex)`, so a
/// draw depends only on those keys: the same sample whatever rank or thread draws it, on every platform.
public struct SeededRNG: RandomNumberGenerator, Sendable {
    private var s0: UInt64, s1: UInt64, s2: UInt64, s3: UInt64

    /// A generator whose stream is a function of `keys` only (order matters).
    public init(_ keys: UInt64...) { self.init(keys: keys) }

    public init(keys: [UInt64]) {
        var h: UInt64 = 0x243F_6A88_85A3_08D3
        for k in keys { h = SplitMix64.mix(h ^ SplitMix64.mix(k &+ 0x1357_9BDF_2468_ACE0)) }
        var sm = SplitMix64(h)
        s0 = sm.next()
        s1 = sm.next()
        s2 = sm.next()
        s3 = sm.next()
        if s0 | s1 | s2 | s3 == 0 { s0 = 1 }
    }

    public mutating func next() -> UInt64 {
        let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
        let t = s1 << 17
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = (s3 << 45) | (s3 >> 19)
        return result
    }

    /// Uniform in [0, 1) with 53 random bits.
    public mutating func uniform() -> Double { Double(next() >> 11) * 0x1.0p-53 }
    /// Uniform in [a, b).
    public mutating func uniform(_ a: Double, _ b: Double) -> Double { a + (b - a) * uniform() }
    /// Uniform integer in 0..<n (n > 0), without modulo bias (Lemire's method).
    public mutating func below(_ n: Int) -> Int {
        precondition(n > 0)
        let bound = UInt64(n)
        var m = next().multipliedFullWidth(by: bound)
        if m.low < bound {
            let t = (0 &- bound) % bound
            while m.low < t { m = next().multipliedFullWidth(by: bound) }
        }
        return Int(m.high)
    }
    /// True with probability p.
    public mutating func chance(_ p: Double) -> Bool { uniform() < p }
    /// Standard normal (Box-Muller; one value per call, deterministic).
    public mutating func normal() -> Double {
        let u1 = max(uniform(), 0x1.0p-60)
        let u2 = uniform()
        return (-2 * Foundation.log(u1)).squareRoot() * cos(2 * Double.pi * u2)
    }
    /// Two independent standard normals (Box-Muller, both outputs).
    public mutating func normalPair() -> (Double, Double) {
        let u1 = max(uniform(), 0x1.0p-60)
        let u2 = uniform()
        let r = (-2 * Foundation.log(u1)).squareRoot()
        let t = 2 * Double.pi * u2
        return (r * cos(t), r * sin(t))
    }
    /// A seeded Fisher-Yates shuffle of 0..<n.
    public mutating func permutation(_ n: Int) -> [Int] {
        var a = Array(0..<n)
        if n > 1 { for i in stride(from: n - 1, to: 0, by: -1) { a.swapAt(i, below(i + 1)) } }
        return a
    }
}
