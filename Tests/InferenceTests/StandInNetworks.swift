import Foundation
import Inference
import Tensor

/// Logits a pointwise function of the input voxel, class c: a_c·x + b_c·x² + c_c. Translation- and
/// mirror-equivariant, so a stitched prediction must equal the whole-volume one at every voxel: a misplaced
/// tile, a wrong crop or a flip not undone shows as an exact mismatch. With `maps`, it also returns one
/// "attention map" at the tile's resolution, sigmoid(x), and one at half resolution.
final class PointwiseNet: SegmentationNetwork {
    let inputChannels = 1
    let outputClasses: Int
    var training = true
    private(set) var attentionMaps: [(name: String, map: Tensor)] = []
    let coefficients: [(a: Float, b: Float, c: Float)]
    let maps: Bool
    private(set) var calls = 0
    private(set) var trainingSeen: [Bool] = []
    private var out: Tensor?

    init(classes: Int = 3, seed: Float = 0, maps: Bool = false) {
        outputClasses = classes
        coefficients = (0..<classes).map { c in
            let f = Float(c) + seed
            return (a: 1.3 * sin(f + 0.5), b: 0.7 * cos(2 * f + 0.1), c: 0.25 * Float(c) - seed)
        }
        self.maps = maps
    }

    /// The logit of class `c` at an input value `x`.
    func logit(_ c: Int, _ x: Float) -> Float {
        let k = coefficients[c]
        return k.a * x + k.b * x * x + k.c
    }

    func forward(_ input: Tensor) throws -> Tensor {
        calls += 1
        trainingSeen.append(training)
        let s = input.shape
        let v = s[2] * s[3] * s[4]
        let o = Tensor.reuse(&out, [s[0], outputClasses, s[2], s[3], s[4]])
        for c in 0..<outputClasses {
            for i in 0..<v { o.data[c * v + i] = logit(c, input.data[i]) }
        }
        if maps {
            let full = Tensor([1, 1, s[2], s[3], s[4]])
            for i in 0..<v { full.data[i] = 1 / (1 + exp(-input.data[i])) }
            let half = Tensor([1, 1, s[2] / 2, s[3] / 2, s[4] / 2])
            half.fill(0.25)
            attentionMaps = [("full", full), ("half", half)]
        }
        return o
    }
}

/// Logits that depend on a voxel's position inside the tile only (not on the input): not mirror-equivariant,
/// so mirror TTA must average the flips' outputs put back in place.
final class PositionNet: SegmentationNetwork {
    let inputChannels = 1
    let outputClasses = 3
    var training = true
    let attentionMaps: [(name: String, map: Tensor)] = []
    private var out: Tensor?

    static func logit(_ c: Int, z: Int, y: Int, x: Int) -> Float {
        Float(c + 1) * sin(0.31 * Float(z) + 0.17 * Float(y) * Float(c + 1) + 0.05 * Float(x * x) + Float(c))
    }

    func forward(_ input: Tensor) throws -> Tensor {
        let s = input.shape
        let v = s[2] * s[3] * s[4]
        let o = Tensor.reuse(&out, [s[0], outputClasses, s[2], s[3], s[4]])
        for c in 0..<outputClasses {
            var i = 0
            for z in 0..<s[2] {
                for y in 0..<s[3] {
                    for x in 0..<s[4] {
                        o.data[c * v + i] = Self.logit(c, z: z, y: y, x: x)
                        i += 1
                    }
                }
            }
        }
        return o
    }
}

/// Logits from a 3x3x3 box sum of the input (zeros outside the tile): local, so only a single tile padded
/// exactly as the predictor pads gives the same values; used on volumes smaller than the tile.
final class BoxNet: SegmentationNetwork {
    let inputChannels = 1
    let outputClasses = 2
    var training = true
    let attentionMaps: [(name: String, map: Tensor)] = []
    private var out: Tensor?

    func forward(_ input: Tensor) throws -> Tensor {
        let s = input.shape
        let (nz, ny, nx) = (s[2], s[3], s[4])
        let v = nz * ny * nx
        let o = Tensor.reuse(&out, [s[0], 2, nz, ny, nx])
        var i = 0
        for z in 0..<nz {
            for y in 0..<ny {
                for x in 0..<nx {
                    var sum: Float = 0
                    for dz in -1...1 {
                        for dy in -1...1 {
                            for dx in -1...1 {
                                let zz = z + dz
                                let yy = y + dy
                                let xx = x + dx
                                if zz >= 0 && zz < nz && yy >= 0 && yy < ny && xx >= 0 && xx < nx {
                                    sum += input.data[(zz * ny + yy) * nx + xx]
                                }
                            }
                        }
                    }
                    o.data[i] = 0.1 * sum
                    o.data[v + i] = input.data[i] - 0.05 * sum
                    i += 1
                }
            }
        }
        return o
    }
}

/// Softmax of logits in double precision, as the references compute it.
func softmax(_ logits: [Float]) -> [Double] {
    let m = Double(logits.max()!)
    let e = logits.map { exp(Double($0) - m) }
    let s = e.reduce(0, +)
    return e.map { $0 / s }
}

/// A deterministic volume of `n` voxels in [-2, 2]: every voxel different, so a misplaced tile shows.
func testVolume(_ n: Dim3, seed: UInt64) -> [Float] {
    var rng = SeededRNG(seed)
    return (0..<n.count).map { _ in Float(rng.uniform(-2, 2)) }
}
