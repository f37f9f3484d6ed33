import Foundation
import Tensor

/// Augmentation of image and label jointly (the original's training transform). Defaults are the original's in-plane set:
/// flips along X and along Y (each p = 0.5, never Z), rotation in the axial plane U(-15°, 15°), shift
/// U(-0.1, 0.1) of the patch size per in-plane axis, zoom U(0.7, 1.3) drawn independently per in-plane axis
/// (z > 1 zooms out, as the original's pull map), image bilinear / label nearest; plus optional through-plane
/// rotation, gamma, noise and brightness (off by default). Every parameter is drawn from a `SeededRNG` the
/// caller seeds from (seed, epoch, global sample index), so a sample is the same on any rank.
/// The augmentation presets a run names (`--augment`; stored by name in configs and checkpoints).
public enum AugmentPreset: String, Codable, Sendable, CaseIterable {
    /// In-plane flips, rotation ±15°, shift ±10% and zoom, as the paper's released code.
    case paper
    /// The paper's set plus through-plane rotation, gamma, noise and brightness.
    case extended
    /// Plain crops.
    case none
}

public struct AugmentOptions: Sendable, Equatable {
    public var flipX = 0.5, flipY = 0.5
    /// Maximum in-plane rotation in degrees (0 = none).
    public var rotationDegrees = 15.0
    /// Maximum shift as a fraction of the patch size per in-plane axis.
    public var shift = 0.1
    /// Zoom range per in-plane axis (1...1 = none).
    public var zoom: ClosedRange<Double> = 0.7...1.3
    /// Maximum through-plane rotation (about X and about Y) in degrees; 0 = off (the original has none).
    public var rotation3DDegrees = 0.0
    /// Gamma on the patch rescaled to [0, 1]: probability and range (off by default).
    public var gammaProbability = 0.0
    public var gamma: ClosedRange<Double> = 0.7...1.5
    /// Additive Gaussian noise after normalisation: probability and maximum sigma (normalised units).
    public var noiseProbability = 0.0
    public var noiseSigma = 0.1
    /// Multiplicative brightness after normalisation: probability and range.
    public var brightnessProbability = 0.0
    public var brightness: ClosedRange<Double> = 0.75...1.25

    public init() {}
    /// The original's augmentation (the default).
    public static let paper = AugmentOptions()
    /// No augmentation at all: plain crops.
    public static let none: AugmentOptions = {
        var a = AugmentOptions()
        a.flipX = 0
        a.flipY = 0
        a.rotationDegrees = 0
        a.shift = 0
        a.zoom = 1...1
        return a
    }()
    /// The paper's set plus through-plane rotation ±10°, gamma, noise and brightness (p = 0.15 each).
    public static let extended: AugmentOptions = {
        var a = AugmentOptions()
        a.rotation3DDegrees = 10
        a.gammaProbability = 0.15
        a.noiseProbability = 0.15
        a.brightnessProbability = 0.15
        return a
    }()

    /// The augmentation of a named preset.
    public init(_ preset: AugmentPreset) {
        switch preset {
        case .paper: self = .paper
        case .extended: self = .extended
        case .none: self = .none
        }
    }

    /// True when the geometric part is the identity (a patch is then a plain box read).
    public var isGeometricIdentity: Bool {
        flipX == 0 && flipY == 0 && rotationDegrees == 0 && shift == 0 && zoom == 1...1 && rotation3DDegrees == 0
    }
}

/// The drawn geometric transform of one sample: source offset (voxels, relative to the source centre) of
/// output offset d (relative to the patch centre) is `m · d + t`, in (x, y, z).
public struct SampleTransform: Sendable {
    public var m: [Double]  // 3x3 row-major, rows x, y, z
    public var t: [Double]

    public static let identity = SampleTransform(m: [1, 0, 0, 0, 1, 0, 0, 0, 1], t: [0, 0, 0])

    /// Draws the transform for a patch of size `patch` (same order of draws on every platform).
    public static func draw(_ a: AugmentOptions, patch: Dim3, rng: inout SeededRNG) -> SampleTransform {
        let fx = rng.chance(a.flipX) ? -1.0 : 1.0
        let fy = rng.chance(a.flipY) ? -1.0 : 1.0
        let th = rng.uniform(-a.rotationDegrees, a.rotationDegrees) * .pi / 180
        let tx = rng.uniform(-a.shift, a.shift) * Double(patch.x)
        let ty = rng.uniform(-a.shift, a.shift) * Double(patch.y)
        let zx = rng.uniform(a.zoom.lowerBound, a.zoom.upperBound)
        let zy = rng.uniform(a.zoom.lowerBound, a.zoom.upperBound)
        let ax = rng.uniform(-a.rotation3DDegrees, a.rotation3DDegrees) * .pi / 180
        let ay = rng.uniform(-a.rotation3DDegrees, a.rotation3DDegrees) * .pi / 180
        // In-plane: q = F · R · (Z d + t) (pull map, as the original); then optional tilts about X and Y.
        let c = cos(th)
        let s = sin(th)
        var m: [Double] = [
            fx * c * zx, -fx * s * zy, 0,
            fy * s * zx, fy * c * zy, 0,
            0, 0, 1,
        ]
        var t: [Double] = [fx * (c * tx - s * ty), fy * (s * tx + c * ty), 0]
        if ax != 0 || ay != 0 {
            let rx: [Double] = [1, 0, 0, 0, cos(ax), -sin(ax), 0, sin(ax), cos(ax)]
            let ry: [Double] = [cos(ay), 0, sin(ay), 0, 1, 0, -sin(ay), 0, cos(ay)]
            let r = mul(ry, rx)
            m = mul(r, m)
            t = (0..<3).map { i in (0..<3).reduce(0.0) { $0 + r[i * 3 + $1] * t[$1] } }
        }
        return SampleTransform(m: m, t: t)
    }

    static func mul(_ a: [Double], _ b: [Double]) -> [Double] {
        (0..<9).map { k in
            let i = k / 3
            let j = k % 3
            return (0..<3).reduce(0.0) { $0 + a[i * 3 + $1] * b[$1 * 3 + j] }
        }
    }

    /// Source offsets of the patch corners: the box the transform reads (x, y, z lower and upper).
    func bounds(patch: Dim3) -> (lo: [Double], hi: [Double]) {
        let h = [(Double(patch.x) - 1) / 2, (Double(patch.y) - 1) / 2, (Double(patch.z) - 1) / 2]
        var lo = [Double](repeating: .infinity, count: 3)
        var hi = [Double](repeating: -.infinity, count: 3)
        for corner in 0..<8 {
            let d = [
                (corner & 1 == 0 ? -1.0 : 1.0) * h[0], (corner & 2 == 0 ? -1.0 : 1.0) * h[1],
                (corner & 4 == 0 ? -1.0 : 1.0) * h[2],
            ]
            for i in 0..<3 {
                let v = m[i * 3] * d[0] + m[i * 3 + 1] * d[1] + m[i * 3 + 2] * d[2] + t[i]
                lo[i] = min(lo[i], v)
                hi[i] = max(hi[i], v)
            }
        }
        return (lo, hi)
    }
}

/// Intensity augmentations after normalisation (gamma, noise, brightness), in that order.
func intensityAugment(_ p: UnsafeMutablePointer<Float>, count: Int, _ a: AugmentOptions, rng: inout SeededRNG) {
    if rng.chance(a.gammaProbability) {
        let g = Float(rng.uniform(a.gamma.lowerBound, a.gamma.upperBound))
        var lo = Float.infinity
        var hi = -Float.infinity
        for i in 0..<count {
            lo = min(lo, p[i])
            hi = max(hi, p[i])
        }
        let range = max(hi - lo, 1e-6)
        for i in 0..<count { p[i] = lo + range * powf((p[i] - lo) / range, g) }
    }
    if rng.chance(a.noiseProbability) {
        let sigma = rng.uniform(0, a.noiseSigma)
        var nrng = SeededRNG(rng.next())
        for i in 0..<count { p[i] += Float(sigma * nrng.normal()) }
    }
    if rng.chance(a.brightnessProbability) {
        let b = Float(rng.uniform(a.brightness.lowerBound, a.brightness.upperBound))
        for i in 0..<count { p[i] *= b }
    }
}
