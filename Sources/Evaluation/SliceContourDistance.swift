import Tensor

/// The original Attention U-Net code's surface-to-surface distance (the paper's "S2S" column): a slice-wise 2D
/// contour distance, restated in `Evaluation.docc/Evaluation.md` ("S2S") and implemented here independently.
///
/// Per axial slice (fixed z) where both masks have foreground: the contour points of each mask are the pixels
/// visited by Suzuki–Abe border following of the outer border of every external 8-connected component (OpenCV's
/// `findContours(..., RETR_EXTERNAL, CHAIN_APPROX_NONE)`: holes and components inside holes are ignored, and a
/// pixel the trace passes twice counts twice); the slice's distance is
/// `½ · (mean over A's points of the distance to the nearest of B's points + the same from B to A)`, in mm.
/// The case's value is the mean over those slices.
public enum SliceContourDistance {
    /// The mean over slices of the symmetric mean contour distance in mm, or nil when no slice has foreground
    /// in both masks. Masks are nonzero = foreground on a `dim` grid; slices are along z, and the 2D image is
    /// read with rows along x and columns along y, as the original read `seg[:, :, z]` of an (x, y, z) array.
    public static func s2s2d(
        _ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>, dim: Dim3,
        spacing: VoxelSpacing
    ) -> Double? {
        precondition(a.count == dim.count && b.count == dim.count)
        var scratch = Scratch(rows: dim.x, cols: dim.y)
        var pointsA = [Int]()
        var pointsB = [Int]()
        var sum = 0.0
        var slices = 0
        for z in 0..<dim.z {
            let base = z * dim.y * dim.x
            guard scratch.contour(of: a, base: base, into: &pointsA),
                scratch.contour(of: b, base: base, into: &pointsB)
            else { continue }
            let ab = meanNearest(pointsA, pointsB, cols: scratch.pcols, spacing: spacing)
            let ba = meanNearest(pointsB, pointsA, cols: scratch.pcols, spacing: spacing)
            sum += 0.5 * (ab + ba)
            slices += 1
        }
        return slices > 0 ? sum / Double(slices) : nil
    }

    /// The contour points of slice `z` of `mask` as (x, y) voxel coordinates, in the order OpenCV lists them
    /// (external contours in raster order of their first pixel, rows along x; each as traced).
    public static func contourPoints(_ mask: UnsafeBufferPointer<UInt8>, dim: Dim3, z: Int) -> [(x: Int, y: Int)] {
        var scratch = Scratch(rows: dim.x, cols: dim.y)
        var points = [Int]()
        _ = scratch.contour(of: mask, base: z * dim.y * dim.x, into: &points)
        return points.map { (x: $0 / scratch.pcols - 1, y: $0 % scratch.pcols - 1) }
    }

    /// Mean over `from` of the distance in mm to the nearest point of `to` (brute force, as the original).
    static func meanNearest(_ from: [Int], _ to: [Int], cols: Int, spacing: VoxelSpacing) -> Double {
        var total = 0.0
        for p in from {
            let pr = p / cols
            let pc = p % cols
            var best = Double.infinity
            for q in to {
                let dr = Double(q / cols - pr) * spacing.x
                let dc = Double(q % cols - pc) * spacing.y
                best = min(best, dr * dr + dc * dc)
            }
            total += best.squareRoot()
        }
        return total / Double(from.count)
    }

    /// Buffers for one slice, padded by one background pixel on every side; reused across slices.
    struct Scratch {
        let rows: Int, cols: Int, pcols: Int
        var image: [UInt8]  // 1 = foreground
        var outer: [Bool]  // background 4-connected to the frame
        var seen: [Bool]  // foreground pixels already assigned to a component
        var stack: [Int] = []
        var component: [Int] = []

        let n4: [Int], n8: [Int]  // neighbour offsets: up, down, left, right; the 8 around a pixel

        init(rows: Int, cols: Int) {
            self.rows = rows
            self.cols = cols
            pcols = cols + 2
            n4 = [-pcols, pcols, -1, 1]
            n8 = [1, -pcols + 1, -pcols, -pcols - 1, -1, pcols - 1, pcols, pcols + 1]
            image = [UInt8](repeating: 0, count: (rows + 2) * (cols + 2))
            outer = [Bool](repeating: false, count: image.count)
            seen = outer
        }

        /// Fills `points` with the slice's contour points; false when the slice has no foreground.
        mutating func contour(of mask: UnsafeBufferPointer<UInt8>, base: Int, into points: inout [Int]) -> Bool {
            points.removeAll(keepingCapacity: true)
            var any = false
            for r in 0..<rows {
                for c in 0..<cols {
                    let on: UInt8 = mask[base + c * rows + r] != 0 ? 1 : 0
                    image[(r + 1) * pcols + c + 1] = on
                    if on != 0 { any = true }
                }
            }
            guard any else { return false }
            for i in 0..<image.count {
                outer[i] = false
                seen[i] = false
            }
            // The outer background: 4-connected to the padding frame (which is background).
            stack.removeAll(keepingCapacity: true)
            outer[0] = true
            stack.append(0)
            let prows = rows + 2
            while let p = stack.popLast() {
                let r = p / pcols
                let c = p % pcols
                for k in 0..<4 {
                    if (k == 0 && r == 0) || (k == 1 && r == prows - 1) || (k == 2 && c == 0)
                        || (k == 3 && c == pcols - 1)
                    {
                        continue
                    }
                    let q = p + n4[k]
                    if image[q] == 0 && !outer[q] {
                        outer[q] = true
                        stack.append(q)
                    }
                }
            }
            // External 8-connected components (4-adjacent to the outer background), each traced from its
            // first pixel in raster order.
            for p in 0..<image.count where image[p] != 0 && !seen[p] {
                component.removeAll(keepingCapacity: true)
                seen[p] = true
                stack.append(p)
                var external = false
                while let q = stack.popLast() {
                    // Foreground pixels are never on the frame, so their 8 neighbours are in the image.
                    for k in 0..<4 where outer[q + n4[k]] { external = true }
                    for k in 0..<8 {
                        let n = q + n8[k]
                        if image[n] != 0 && !seen[n] {
                            seen[n] = true
                            stack.append(n)
                        }
                    }
                }
                if external { trace(from: p, into: &points) }
            }
            return true
        }

        /// Suzuki–Abe outer border following from `start` (its left neighbour is background), every visited
        /// pixel appended. Directions: 0 = +column, then counterclockwise with rows pointing down.
        func trace(from start: Int, into points: inout [Int]) {
            let step = n8  // chain code order
            // Clockwise from the left neighbour for the first foreground neighbour.
            var s = 4
            repeat { s = (s - 1) & 7 } while image[start + step[s]] == 0 && s != 4
            if image[start + step[s]] == 0 {
                points.append(start)
                return
            }  // an isolated pixel
            let second = start + step[s]
            var current = start
            while true {
                // Counterclockwise from the direction after the previous pixel for the next foreground one.
                repeat { s = (s + 1) & 7 } while image[current + step[s]] == 0
                points.append(current)
                let next = current + step[s]
                if next == start && current == second { break }
                current = next
                s = (s + 4) & 7
            }
        }
    }
}
