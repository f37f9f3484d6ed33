import Evaluation
import Foundation
import Tensor
import TestSupport
import XCTest

/// Structured test masks (ellipsoids in physical space, shifted, deformed, with holes and islands) and the
/// files the Python references read.
enum Masks {
    static let dim = Dim3(z: 22, y: 34, x: 40)
    static let spacing = VoxelSpacing(x: 0.8, y: 1.3, z: 2.5)

    /// An ellipsoid of radii `r` (mm) around `c` (mm), its surface pushed in and out by `wobble` mm along a
    /// smooth pattern, optionally with an ellipsoidal hole of `hole` times its radii around `holeShift`.
    struct Blob {
        var c: (x: Double, y: Double, z: Double)
        var r: (x: Double, y: Double, z: Double)
        var wobble = 0.0, phase = 0.0
        var hole = 0.0, holeShift: (x: Double, y: Double, z: Double) = (0, 0, 0)

        func contains(_ px: Double, _ py: Double, _ pz: Double) -> Bool {
            let dx = px - c.x
            let dy = py - c.y
            let dz = pz - c.z
            let rho = ((dx / r.x) * (dx / r.x) + (dy / r.y) * (dy / r.y) + (dz / r.z) * (dz / r.z)).squareRoot()
            let angle = atan2(dy, dx)
            let tilt = atan2(dz, (dx * dx + dy * dy).squareRoot())
            let scale = 1 + wobble * sin(3 * angle + phase) * cos(2 * tilt) / max(r.x, r.y)
            guard rho <= scale else { return false }
            if hole > 0 {
                let hx = (dx - holeShift.x) / (hole * r.x)
                let hy = (dy - holeShift.y) / (hole * r.y)
                let hz = (dz - holeShift.z) / (hole * r.z)
                if hx * hx + hy * hy + hz * hz <= 1 { return false }
            }
            return true
        }
    }

    /// Paints `blobs` with labels into a `dim` label map (later blobs over earlier ones).
    static func paint(_ blobs: [(label: UInt8, blob: Blob)], dim: Dim3 = dim, spacing: VoxelSpacing = spacing)
        -> [UInt8]
    {
        var out = [UInt8](repeating: 0, count: dim.count)
        for z in 0..<dim.z {
            for y in 0..<dim.y {
                for x in 0..<dim.x {
                    let px = Double(x) * spacing.x
                    let py = Double(y) * spacing.y
                    let pz = Double(z) * spacing.z
                    for (label, b) in blobs where b.contains(px, py, pz) { out[(z * dim.y + y) * dim.x + x] = label }
                }
            }
        }
        return out
    }

    /// A reference/prediction pair of binary masks: the prediction shifted, deformed, holed and with a
    /// false-positive island; `seed` varies centres, radii and the deformation.
    static func pair(seed: UInt64) -> (prediction: [UInt8], reference: [UInt8]) {
        var rng = SeededRNG(seed)
        let ext = (x: Double(dim.x) * spacing.x, y: Double(dim.y) * spacing.y, z: Double(dim.z) * spacing.z)
        let c = (x: ext.x * rng.uniform(0.4, 0.6), y: ext.y * rng.uniform(0.4, 0.6), z: ext.z * rng.uniform(0.4, 0.6))
        let r = (x: ext.x * rng.uniform(0.2, 0.3), y: ext.y * rng.uniform(0.2, 0.3), z: ext.z * rng.uniform(0.25, 0.35))
        let reference = Blob(
            c: c, r: r, wobble: rng.uniform(0, 2), phase: rng.uniform(0, 6),
            hole: rng.uniform(0.2, 0.4), holeShift: (1, -1, 0))
        var moved = reference
        moved.c = (c.x + rng.uniform(-3, 3), c.y + rng.uniform(-3, 3), c.z + rng.uniform(-4, 4))
        moved.r = (r.x * rng.uniform(0.85, 1.15), r.y * rng.uniform(0.85, 1.15), r.z * rng.uniform(0.85, 1.15))
        moved.wobble = rng.uniform(0, 3)
        moved.phase = rng.uniform(0, 6)
        moved.hole = rng.uniform(0, 0.3)
        let island = Blob(c: (ext.x * 0.12, ext.y * 0.85, ext.z * 0.5), r: (2.5, 3, 6))
        return (paint([(1, moved), (1, island)]), paint([(1, reference)]))
    }

    /// A multi-class pair: classes 1 and 2 present in both, class 3 only in the reference, class 4 only in the
    /// prediction, class 5 in neither (classes = 6).
    static func labelMaps(seed: UInt64) -> (prediction: [UInt8], reference: [UInt8]) {
        var rng = SeededRNG(seed)
        let ext = (x: Double(dim.x) * spacing.x, y: Double(dim.y) * spacing.y, z: Double(dim.z) * spacing.z)
        func blob(_ fx: Double, _ fy: Double) -> Blob {
            Blob(
                c: (ext.x * fx, ext.y * fy, ext.z * rng.uniform(0.4, 0.6)),
                r: (ext.x * rng.uniform(0.12, 0.18), ext.y * rng.uniform(0.12, 0.18), ext.z * rng.uniform(0.2, 0.3)),
                wobble: rng.uniform(0, 2), phase: rng.uniform(0, 6), hole: rng.uniform(0, 0.4))
        }
        func moved(_ b: Blob) -> Blob {
            var m = b
            m.c = (b.c.x + rng.uniform(-2, 2), b.c.y + rng.uniform(-2, 2), b.c.z + rng.uniform(-3, 3))
            m.wobble = rng.uniform(0, 2.5)
            m.phase = rng.uniform(0, 6)
            return m
        }
        let one = blob(0.3, 0.3)
        let two = blob(0.7, 0.65)
        let three = blob(0.3, 0.75)
        let four = blob(0.72, 0.25)
        let reference = paint([(1, one), (2, two), (3, three)])
        let prediction = paint([(1, moved(one)), (2, moved(two)), (4, four)])
        return (prediction, reference)
    }

    /// Writes raw bytes (uint8 or float64) for numpy's `fromfile`.
    static func write(_ values: [UInt8], _ path: String) throws {
        try Data(values).write(to: URL(fileURLWithPath: path))
    }
    static func write(_ values: [Double], _ path: String) throws {
        try values.withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: path)) }
    }
    /// Reads float64 values numpy's `tofile` wrote.
    static func doubles(_ path: String) throws -> [Double] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        return data.withUnsafeBytes { Array($0.bindMemory(to: Double.self)) }
    }

    /// |a − b| / max(|b|, 1e-300) with both infinite counting as equal.
    static func relative(_ a: Double, _ b: Double) -> Double {
        if a == b { return 0 }
        return abs(a - b) / max(abs(b), 1e-300)
    }
}
