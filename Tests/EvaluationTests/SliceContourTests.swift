import Evaluation
import Foundation
import Tensor
import TestSupport
import XCTest

/// The original code's slice-wise contour distance (S2S), against OpenCV's contours and a reference written
/// from its definition (Evaluation.docc, "S2S").
final class SliceContourTests: XCTestCase {
    func testContoursAndS2SMatchOpenCV() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let d = Masks.dim
        let grids = [Masks.spacing, VoxelSpacing(x: 2, y: 2, z: 2)]  // the second: the original's dx = 2 mm
        var ours: [Double] = []
        var points: [[(x: Int, y: Int)]] = []
        let seeds: [UInt64] = [1, 3, 6]
        for (i, seed) in seeds.enumerated() {
            let (p, r) = Masks.pair(seed: seed)
            try Masks.write(p, dir.path + "/p\(i).u8")
            try Masks.write(r, dir.path + "/r\(i).u8")
            p.withUnsafeBufferPointer { pb in
                r.withUnsafeBufferPointer { rb in
                    for sp in grids { ours.append(SliceContourDistance.s2s2d(pb, rb, dim: d, spacing: sp)!) }
                    for z in 0..<d.z { points.append(SliceContourDistance.contourPoints(pb, dim: d, z: z)) }
                }
            }
        }
        // Hand-made slices: a ring with an island in its hole (ignored: not external), a one-pixel-wide line
        // (traced there and back, so its pixels count twice), diagonal neighbours, a lone pixel, pixels on the
        // volume's edge.
        var hand = [UInt8](repeating: 0, count: d.count)
        func set(_ z: Int, _ y: Int, _ x: Int) { hand[(z * d.y + y) * d.x + x] = 1 }
        for y in 2..<14 { for x in 2..<16 where !(5..<11).contains(y) || !(5..<13).contains(x) { set(0, y, x) } }
        set(0, 7, 8)
        set(0, 8, 8)
        set(0, 7, 9)
        for x in 20..<30 { set(0, 20, x) }
        set(1, 3, 3)
        set(1, 4, 4)
        set(1, 5, 5)
        set(1, 5, 3)
        set(1, 10, 30)
        for y in 0..<d.y {
            set(2, y, 0)
            set(2, y, d.x - 1)
        }
        for x in 0..<d.x { set(2, 0, x) }
        try Masks.write(hand, dir.path + "/h.u8")
        hand.withUnsafeBufferPointer { hb in
            for z in 0..<3 { points.append(SliceContourDistance.contourPoints(hb, dim: d, z: z)) }
        }
        try TestEnv.python(
            """
            import numpy as np, cv2
            d = '\(dir.path)/'
            shape = (\(d.z), \(d.y), \(d.x))
            grids = [(\(grids[0].x), \(grids[0].y)), (2.0, 2.0)]
            def contour(sl):  # sl: rows along x, columns along y, as the original's seg[:, :, z]
                cs, _ = cv2.findContours(cv2.inRange(sl.astype(np.uint8), 1, 1), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                return np.array([(int(q[0][1]), int(q[0][0])) for c in cs for q in c], dtype=np.int64).reshape(-1, 2)
            s2s, pts = [], []
            for i in range(\(seeds.count)):
                p = np.fromfile(d + f'p{i}.u8', dtype=np.uint8).reshape(shape)
                r = np.fromfile(d + f'r{i}.u8', dtype=np.uint8).reshape(shape)
                for sx, sy in grids:
                    md = []
                    for z in range(shape[0]):
                        a, b = p[z].T, r[z].T
                        if a.sum() == 0 or b.sum() == 0:
                            continue
                        A, B = contour(a), contour(b)
                        M = np.sqrt((((A[:, None, 0] - B[None, :, 0]) * sx) ** 2) + (((A[:, None, 1] - B[None, :, 1]) * sy) ** 2))
                        md.append(0.5 * (np.mean(M.min(axis=0)) + np.mean(M.min(axis=1))))
                    s2s.append(np.mean(md))
                for z in range(shape[0]):
                    pts.append(sorted(map(tuple, contour(p[z].T).tolist())))
            h = np.fromfile(d + 'h.u8', dtype=np.uint8).reshape(shape)
            for z in range(3):
                pts.append(sorted(map(tuple, contour(h[z].T).tolist())))
            np.array(s2s, dtype=np.float64).tofile(d + 's2s.f64')
            with open(d + 'points.txt', 'w') as f:
                for q in pts:
                    f.write(' '.join(f'{x},{y}' for x, y in q) + '\\n')
            """)
        let ref = try Masks.doubles(dir.path + "/s2s.f64")
        XCTAssertEqual(ref.count, ours.count)
        var worst = 0.0
        for (a, b) in zip(ours, ref) {
            worst = max(worst, Masks.relative(a, b))
            XCTAssertLessThanOrEqual(Masks.relative(a, b), 1e-6, "s2s2d: ours \(a), reference \(b)")
        }
        print("s2s2d vs the OpenCV reference: worst relative difference \(worst)")
        let lines = try String(contentsOfFile: dir.path + "/points.txt", encoding: .utf8)
            .split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        XCTAssertEqual(lines.count, points.count)
        var slicesWithContours = 0
        for (line, ps) in zip(lines, points) {
            let mine = ps.sorted { ($0.x, $0.y) < ($1.x, $1.y) }.map { "\($0.x),\($0.y)" }.joined(separator: " ")
            XCTAssertEqual(mine, String(line), "contour points (with their multiplicity) differ from OpenCV's")
            if !ps.isEmpty { slicesWithContours += 1 }
        }
        XCTAssertGreaterThan(slicesWithContours, 20)
    }
}
