import Data
import Foundation
import NN
import Tensor

/// Whole-volume inference: the case is padded (with its minimum, split evenly before/after, as the
/// original's test transform) to multiples of 16, normalised like training patches, run through the model in
/// its current BN mode, and the arg-max label map is cropped back to the case's shape.
public enum Inference {
    public static func predict(model: SegmentationModel, store: CaseStore, case c: Int,
                               normalization: IntensityNormalization = .zscore) throws -> [UInt8] {
        let info = store.cases[c]
        let s = info.shape
        let padded = Dim3(z: roundUp16(s.z), y: roundUp16(s.y), x: roundUp16(s.x))
        let before = (z: (padded.z - s.z) / 2, y: (padded.y - s.y) / 2, x: (padded.x - s.x) / 2)
        let input = Tensor([1, 1, padded.z, padded.y, padded.x])
        try store.readBox(c, start: (-before.z, -before.y, -before.x), size: padded, image: input.pointer, label: nil)
        normalization.apply(input.pointer, count: input.count, case: info)
        let logits = try model.forward(input)
        let k = logits.shape[1], v = padded.count
        var out = [UInt8](repeating: 0, count: s.count)
        let l = logits.pointer
        for z in 0..<s.z {
            for y in 0..<s.y {
                let row = ((z + before.z) * padded.y + y + before.y) * padded.x + before.x
                for x in 0..<s.x {
                    var best = 0, bestValue = l[row + x]
                    for cls in 1..<k where l[cls * v + row + x] > bestValue { best = cls; bestValue = l[cls * v + row + x] }
                    out[(z * s.y + y) * s.x + x] = UInt8(best)
                }
            }
        }
        return out
    }

    static func roundUp16(_ n: Int) -> Int { (n + 15) / 16 * 16 }
}
