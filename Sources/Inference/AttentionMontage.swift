import CPNG
import Foundation
import Support
import Tensor

/// PNG montages of axial slices with an attention map overlaid, like the paper's figures of the gates'
/// coefficients: the image in grey, α in a jet colour map blended in with weight α/2, so that the image shows
/// where the gate attends little.
public enum AttentionMontage {
    /// Writes a montage of `slices` evenly spaced axial slices (z) of `image` (`[Z][Y][X]`, any intensity
    /// scale: it is windowed to its 1st–99th percentile) with `attention` (same shape, values in [0, 1])
    /// overlaid, in rows of 4, each slice enlarged by a whole factor to about 256 pixels and shown in the
    /// radiological convention when `affine` (the grid's voxel-to-world matrix, RAS+) is given: anterior up,
    /// the patient's right on the left. The file is written atomically through libpng.
    public static func write(
        image: [Float], attention: ArraySlice<Float>, shape n: Dim3, affine: [Double]? = nil,
        to path: String, slices: Int = 12
    ) throws {
        precondition(image.count == n.count && attention.count == n.count && slices >= 1)
        let count = min(slices, n.z)
        let cols = min(4, count)
        let rows = (count + cols - 1) / cols
        let f = max(1, min(4, 256 / max(n.x, n.y)))
        let gap = 2
        let tw = n.x * f
        let th = n.y * f
        let width = cols * tw + (cols - 1) * gap
        let height = rows * th + (rows - 1) * gap
        // Window: 1st and 99th percentiles of a sample of the image.
        let step = max(1, image.count / 100_000)
        let sample = stride(from: 0, to: image.count, by: step).map { image[$0] }.sorted()
        let lo = sample[sample.count / 100]
        let hi = sample[min(sample.count - 1, sample.count * 99 / 100)]
        let scale = hi > lo ? 1 / (hi - lo) : 0
        var rgb = [UInt8](repeating: 0, count: width * height * 3)
        let a0 = attention.startIndex
        // NIfTI's world is RAS+: voxels towards the patient's right (+x) are drawn leftwards, anterior (+y) up.
        let flipX = (affine?[0] ?? -1) > 0
        let yUp = (affine?[5] ?? 1) > 0
        for i in 0..<count {
            let z = min(n.z - 1, Int((Double(i) + 0.5) * Double(n.z) / Double(count)))
            let ox = (i % cols) * (tw + gap)
            let oy = (i / cols) * (th + gap)
            for py in 0..<th {
                let y = yUp ? n.y - 1 - py / f : py / f
                for px in 0..<tw {
                    let x = flipX ? n.x - 1 - px / f : px / f
                    let v = (z * n.y + y) * n.x + x
                    let g = min(max((image[v] - lo) * scale, 0), 1)
                    let a = min(max(attention[a0 + v], 0), 1)
                    let (r, gr, b) = jet(a)
                    let w = a / 2
                    let o = ((oy + py) * width + ox + px) * 3
                    rgb[o] = UInt8(((1 - w) * g + w * r) * 255 + 0.5)
                    rgb[o + 1] = UInt8(((1 - w) * g + w * gr) * 255 + 0.5)
                    rgb[o + 2] = UInt8(((1 - w) * g + w * b) * 255 + 0.5)
                }
            }
        }
        try AtomicFile.write(path) { tmp in
            var err = [CChar](repeating: 0, count: 256)
            let rc = rgb.withUnsafeBufferPointer {
                cpng_write_rgb(tmp, UInt32(width), UInt32(height), $0.baseAddress, &err, err.count)
            }
            if rc != 0 {
                throw AttunetError(
                    "\(path): libpng could not write the montage (\(err.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }))"
                )
            }
        }
    }

    /// Matplotlib's classic jet colour map at t in [0, 1].
    static func jet(_ t: Float) -> (Float, Float, Float) {
        func ramp(_ x: Float) -> Float { min(max(x, 0), 1) }
        return (ramp(1.5 - abs(4 * t - 3)), ramp(1.5 - abs(4 * t - 2)), ramp(1.5 - abs(4 * t - 1)))
    }
}
