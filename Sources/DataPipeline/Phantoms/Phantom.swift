import Foundation
import Support
import Tensor

/// Synthetic abdominal CT phantoms: one case = an int16-valued HU image and a uint8 label map
/// (0 background, 1 spleen, 2 pancreas, 3 kidney), on a per-case random grid.
///
/// Anatomy, in a body frame (mm; u to the patient's left, v posterior, w superior): air outside the body;
/// skin, subcutaneous fat, a muscle wall with ribs in the upper slices; inside, visceral fat with bowel loops
/// (soft tissue with gas), the liver (right upper), stomach (left upper, fluid and gas), spine (vertebral
/// bodies, discs, canal, posterior elements) with paraspinal muscles, aorta and IVC, and the three labelled
/// organs. The kidneys (cortex ~170 HU, medulla, sinus fat) are bright and easy; the spleen is a curved
/// ellipsoid; the pancreas is a thin, curved, elongated tube (head by the duodenal C-loop, body over the
/// aorta, tail at the splenic hilum), lobulated with fatty texture, at ~90 HU next to the duodenum (~60 HU)
/// and the splenic vein: low contrast, as in real portal-venous CT. Every case draws body size, organ
/// positions/sizes/rotations, a smooth random deformation of the whole anatomy, HU levels, noise level,
/// voxel spacing and volume size from its own seeded generator.
public struct PhantomCase: Sendable {
    public var dim: Dim3
    /// Voxel spacing in mm along the voxel axes i, j, k (x, y, z).
    public var spacing: (x: Double, y: Double, z: Double)
    /// Voxel-to-world (mm, RAS) row-major 4x4 affine; LPS-stored like most CT: diag(-sx, -sy, sz), unless
    /// ``PhantomOptions/orientation`` asks for another voxel order (then its columns are permuted and flipped).
    public var affine: [Double]
    public var image: [Float]
    public var label: [UInt8]

    public static let classNames = ["background", "spleen", "pancreas", "kidney"]

    /// The case with only `labels`' organs labelled, renumbered as that set numbers them.
    func relabelled(_ labels: PhantomLabels) -> PhantomCase {
        guard labels != .all else { return self }
        var c = self
        let table = labels.relabel
        c.label = label.map { table[Int($0)] }
        return c
    }
}

public enum Phantom {
    /// Generates case `index` of a set seeded by `seed`. `scale` (default 1) multiplies the field of view in
    /// voxels (smaller for tests).
    /// `options` (default: none) change the voxel order, the labelled organs' sizes and tissue HU levels; the
    /// random draws are the same whatever they are, so case `i` of a seed is the same patient with every option.
    public static func generate(
        seed: UInt64, index: Int, scale: Double = 1,
        options: PhantomOptions = PhantomOptions()
    ) -> PhantomCase {
        var rng = SeededRNG(seed, UInt64(index), 0x5048_414E_544F_4D)  // "PHANTOM"
        var a = Anatomy(&rng)
        if options.organScale != 1 { a.scaleOrgans(options.organScale) }
        a.hu.apply(options)
        // Grid: in-plane 1.4-2.2 mm, slices 2.0-3.0 mm; FOV a bit larger than the body.
        let drawnXY = rng.uniform(1.4, 2.2)
        let drawnZ = rng.uniform(2.0, 3.0)
        let sxy = (options.inPlaneSpacing ?? drawnXY) / scale
        let sz = (options.sliceThickness ?? drawnZ) / scale
        let fovX = 2 * a.bodyA + rng.uniform(20, 60)
        let fovY = 2 * a.bodyB + rng.uniform(30, 70)
        let fovZ = rng.uniform(170, 230)
        func notMul16(_ n: Int) -> Int { n % 16 == 0 ? n + 1 : n }
        let nx = notMul16(Int(fovX / sxy))
        let ny = notMul16(Int(fovY / sxy))
        let nz = notMul16(Int(fovZ / sz))
        let dim = Dim3(z: nz, y: ny, x: nx)
        // Body centre in the FOV, a little off-centre; the table under the patient (posterior).
        let cu = rng.uniform(-10, 10)
        let cv = rng.uniform(-15, 5)
        let cw = rng.uniform(-15, 15)
        let drawnNoise = rng.uniform(8, 20)
        let noise = options.noiseHU ?? drawnNoise
        let origin = (
            x: Double(nx - 1) * sxy / 2 + rng.uniform(-50, 50), y: Double(ny - 1) * sxy / 2 + rng.uniform(-50, 50),
            z: -Double(nz - 1) * sz / 2 + rng.uniform(-400, 0)
        )
        let affine: [Double] = [
            -sxy, 0, 0, origin.x,
            0, -sxy, 0, origin.y,
            0, 0, sz, origin.z,
            0, 0, 0, 1,
        ]
        var image = [Float](repeating: 0, count: dim.count)
        var label = [UInt8](repeating: 0, count: dim.count)
        let noiseSeed = rng.next()
        let edge = sxy * 0.7
        if options.obliqueDegrees != 0 {
            let c = obliqueCase(
                a, degrees: options.obliqueDegrees, n: (nx, ny, nz), sxy: sxy, sz: sz, centre: (cu, cv, cw),
                origin: (origin.x, origin.y, origin.z), noise: noise, noiseSeed: noiseSeed)
            return (options.orientation == .lps ? c : c.reoriented(to: options.orientation)).relabelled(options.labels)
        }
        image.withUnsafeMutableBufferPointer { ib in
            label.withUnsafeMutableBufferPointer { lb in
                let ip = UncheckedSendable(ib.baseAddress!)
                let lp = UncheckedSendable(lb.baseAddress!)
                parallelFor(nz) { k in
                    var nrng = SeededRNG(noiseSeed, UInt64(k))
                    let w = (Double(k) - Double(nz - 1) / 2) * sz - cw
                    var spare: Double? = nil
                    for j in 0..<ny {
                        let v = (Double(j) - Double(ny - 1) / 2) * sxy - cv
                        let row = (k * ny + j) * nx
                        // The smooth warp sin(k.p + phase) along the row by angle-addition recurrence.
                        let u0 = -Double(nx - 1) / 2 * sxy - cu
                        var ws = [Double](repeating: 0, count: 3)
                        var wc = [Double](repeating: 0, count: 3)
                        var ds = [Double](repeating: 0, count: 3)
                        var dc = [Double](repeating: 0, count: 3)
                        for (n, (_, kv, ph)) in a.warp.enumerated() {
                            let ph0 = kv.dot(V3(u0, v, w)) + ph
                            ws[n] = sin(ph0)
                            wc[n] = cos(ph0)
                            ds[n] = sin(kv.x * sxy)
                            dc[n] = cos(kv.x * sxy)
                        }
                        for i in 0..<nx {
                            let u = (Double(i) - Double(nx - 1) / 2) * sxy - cu
                            var q = V3(u, v, w)
                            for n in 0..<3 {
                                q = q + a.warp[n].0 * ws[n]
                                let s2 = ws[n] * dc[n] + wc[n] * ds[n]
                                wc[n] = wc[n] * dc[n] - ws[n] * ds[n]
                                ws[n] = s2
                            }
                            (ip.value[row + i], lp.value[row + i]) = a.voxel(
                                q, edge: edge, noise: noise, rng: &nrng, spare: &spare)
                        }
                    }
                }
            }
        }
        let c = PhantomCase(dim: dim, spacing: (sxy, sxy, sz), affine: affine, image: image, label: label)
        return (options.orientation == .lps ? c : c.reoriented(to: options.orientation)).relabelled(options.labels)
    }

    /// The case on a grid rotated by `degrees` about the superior axis (right-handed in RAS: from +x towards
    /// +y) about the centre of the straight grid, enlarged in-plane to hold the straight grid's field of view;
    /// the anatomy in world space is that of the straight grid (the same body-frame origin), sampled at the
    /// rotated voxels.
    static func obliqueCase(
        _ a: Anatomy, degrees: Double, n: (Int, Int, Int), sxy: Double, sz: Double,
        centre: (Double, Double, Double), origin: (Double, Double, Double),
        noise: Double, noiseSeed: UInt64
    ) -> PhantomCase {
        let (nx, ny, nz) = n
        let (cu, cv, cw) = centre
        let th = degrees * .pi / 180
        let c = cos(th)
        let s = sin(th)
        // World point of the straight grid's centre voxel; body frame u = -(x - cx) - cu, v = -(y - cy) - cv.
        let cx = origin.0 - sxy * Double(nx - 1) / 2
        let cy = origin.1 - sxy * Double(ny - 1) / 2
        let w0 = Double(nx - 1) * sxy
        let h0 = Double(ny - 1) * sxy
        func notMul16(_ n: Int) -> Int { n % 16 == 0 ? n + 1 : n }
        let mx = notMul16(Int(((abs(c) * w0 + abs(s) * h0) / sxy).rounded(.up)) + 1)
        let my = notMul16(Int(((abs(s) * w0 + abs(c) * h0) / sxy).rounded(.up)) + 1)
        let a0 = (x: -sxy * c, y: -sxy * s)
        let a1 = (x: sxy * s, y: -sxy * c)  // Rz(θ) · (-sxy, 0), Rz(θ) · (0, -sxy)
        let ci = Double(mx - 1) / 2
        let cj = Double(my - 1) / 2
        let tx = cx - a0.x * ci - a1.x * cj
        let ty = cy - a0.y * ci - a1.y * cj
        let affine: [Double] = [
            a0.x, a1.x, 0, tx,
            a0.y, a1.y, 0, ty,
            0, 0, sz, origin.2,
            0, 0, 0, 1,
        ]
        let dim = Dim3(z: nz, y: my, x: mx)
        var image = [Float](repeating: 0, count: dim.count)
        var label = [UInt8](repeating: 0, count: dim.count)
        let edge = sxy * 0.7
        image.withUnsafeMutableBufferPointer { ib in
            label.withUnsafeMutableBufferPointer { lb in
                let ip = UncheckedSendable(ib.baseAddress!)
                let lp = UncheckedSendable(lb.baseAddress!)
                parallelFor(nz) { k in
                    var nrng = SeededRNG(noiseSeed, UInt64(k))
                    let w = (Double(k) - Double(nz - 1) / 2) * sz - cw
                    var spare: Double? = nil
                    for j in 0..<my {
                        let row = (k * my + j) * mx
                        for i in 0..<mx {
                            let x = a0.x * Double(i) + a1.x * Double(j) + tx
                            let y = a0.y * Double(i) + a1.y * Double(j) + ty
                            let q = a.warped(V3(-(x - cx) - cu, -(y - cy) - cv, w))
                            (ip.value[row + i], lp.value[row + i]) = a.voxel(
                                q, edge: edge, noise: noise, rng: &nrng, spare: &spare)
                        }
                    }
                }
            }
        }
        return PhantomCase(dim: dim, spacing: (sxy, sxy, sz), affine: affine, image: image, label: label)
    }

    /// Writes `count` cases as a Decathlon/nnU-Net folder: `imagesTr/<name>_NNN.nii.gz` (int16 HU),
    /// `labelsTr/<name>_NNN.nii.gz` (uint8), `dataset.json`. Cases are made `threads` at a time.
    /// `dataset.json`'s description names the seed and, when any differs from its default, the options.
    public static func writeDataset(
        to dir: String, count: Int, seed: UInt64, name: String = "phantom",
        scale: Double = 1, options: PhantomOptions = PhantomOptions(),
        threads: Int = ProcessInfo.processInfo.activeProcessorCount,
        progress: (@Sendable (Int) -> Void)? = nil
    ) throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: dir + "/imagesTr", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: dir + "/labelsTr", withIntermediateDirectories: true)
        let names = (0..<count).map { String(format: "%@_%03d", name, $0) }
        try parallelForEach(count, threads: threads) { i in
            let c = generate(seed: seed, index: i, scale: scale, options: options)
            try NIfTIVolume(nx: c.dim.x, ny: c.dim.y, nz: c.dim.z, affine: c.affine, voxels: c.image)
                .write("\(dir)/imagesTr/\(names[i]).nii.gz", as: .int16)
            try NIfTIVolume(nx: c.dim.x, ny: c.dim.y, nz: c.dim.z, affine: c.affine, voxels: c.label.map(Float.init))
                .write("\(dir)/labelsTr/\(names[i]).nii.gz", as: .uint8)
            progress?(i)
        }
        let json: [String: Any] = [
            "name": name,
            "description":
                "attunet synthetic abdominal CT phantoms (seed \(seed)\(options.isDefault ? "" : "; " + options.summary))",
            "reference": "attunet synth", "licence": "CC0", "release": "1.0",
            "tensorImageSize": "3D", "modality": ["0": "CT"],
            "labels": Dictionary(
                uniqueKeysWithValues: options.labels.classNames.enumerated().map { ("\($0.offset)", $0.element) }),
            "numTraining": count, "numTest": 0,
            "training": names.map { ["image": "./imagesTr/\($0).nii.gz", "label": "./labelsTr/\($0).nii.gz"] },
            "test": [String](),
        ]
        let data = try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys])
        try AtomicFile.write(data, to: dir + "/dataset.json")
    }
}

// MARK: - Geometry

struct V3 {
    var x, y, z: Double
    init(_ x: Double, _ y: Double, _ z: Double) {
        self.x = x
        self.y = y
        self.z = z
    }
    static func + (a: V3, b: V3) -> V3 { V3(a.x + b.x, a.y + b.y, a.z + b.z) }
    static func - (a: V3, b: V3) -> V3 { V3(a.x - b.x, a.y - b.y, a.z - b.z) }
    static func * (a: V3, s: Double) -> V3 { V3(a.x * s, a.y * s, a.z * s) }
    func dot(_ b: V3) -> Double { x * b.x + y * b.y + z * b.z }
    var norm: Double { dot(self).squareRoot() }
}

/// Partial-volume coverage of a signed distance (negative inside) over an edge of width `w` mm.
@inline(__always) func cover(_ d: Double, _ w: Double) -> Double { min(max(0.5 - d / w, 0), 1) }

/// An ellipsoid rotated about the w (cranio-caudal) axis and then tilted about u, with an approximate SDF.
struct Ellipsoid {
    var c: V3, r: V3, cosA: Double, sinA: Double, cosT: Double, sinT: Double
    var lo: V3, hi: V3
    init(c: V3, r: V3, angle: Double, tilt: Double = 0) {
        self.c = c
        self.r = r
        cosA = cos(angle)
        sinA = sin(angle)
        cosT = cos(tilt)
        sinT = sin(tilt)
        let m = max(r.x, r.y, r.z) + 3
        lo = c - V3(m, m, m)
        hi = c + V3(m, m, m)
    }
    /// The same ellipsoid with radii times `f`, its centre moved towards `o` by the same factor.
    func scaled(_ f: Double, about o: V3) -> Ellipsoid {
        var e = self
        e.c = o + (c - o) * f
        e.r = r * f
        let m = max(e.r.x, e.r.y, e.r.z) + 3
        e.lo = e.c - V3(m, m, m)
        e.hi = e.c + V3(m, m, m)
        return e
    }
    @inline(__always) func inBox(_ p: V3) -> Bool {
        p.x >= lo.x && p.x <= hi.x && p.y >= lo.y && p.y <= hi.y && p.z >= lo.z && p.z <= hi.z
    }
    @inline(__always) func local(_ p: V3) -> V3 {
        let d = p - c
        let x = cosA * d.x + sinA * d.y
        let y = -sinA * d.x + cosA * d.y
        return V3(x, cosT * y + sinT * d.z, -sinT * y + cosT * d.z)
    }
    /// Inigo Quilez's ellipsoid distance bound (exact on the surface, good near it).
    @inline(__always) func sdf(_ p: V3) -> Double {
        let q = local(p)
        let k0 = V3(q.x / r.x, q.y / r.y, q.z / r.z).norm
        let k1 = V3(q.x / (r.x * r.x), q.y / (r.y * r.y), q.z / (r.z * r.z)).norm
        return k1 > 0 ? k0 * (k0 - 1) / k1 : -min(r.x, r.y, r.z)
    }
}

/// A tube along a polyline with a radius per point, flattened in v (antero-posterior) by `flat`.
struct Tube {
    var pts: [V3], rad: [Double], flat: Double
    var lo: V3, hi: V3
    init(pts: [V3], rad: [Double], flat: Double = 1) {
        self.pts = pts
        self.rad = rad
        self.flat = flat
        let m = (rad.max() ?? 0) + 3
        lo = V3(pts.map(\.x).min()! - m, pts.map(\.y).min()! - m, pts.map(\.z).min()! - m)
        hi = V3(pts.map(\.x).max()! + m, pts.map(\.y).max()! + m, pts.map(\.z).max()! + m)
    }
    @inline(__always) func inBox(_ p: V3) -> Bool {
        p.x >= lo.x && p.x <= hi.x && p.y >= lo.y && p.y <= hi.y && p.z >= lo.z && p.z <= hi.z
    }
    /// Distance to the tube surface (approximate where flattened) and the curve parameter of the nearest point.
    func sdf(_ p: V3) -> (Double, Double) {
        var best = Double.infinity
        var bestT = 0.0
        var bestR = 0.0
        for s in 0..<(pts.count - 1) {
            let a = pts[s]
            let ab = pts[s + 1] - a
            let t = min(max((p - a).dot(ab) / max(ab.dot(ab), 1e-9), 0), 1)
            var d = p - (a + ab * t)
            d.y /= flat
            let dd = d.dot(d)
            if dd < best {
                best = dd
                bestT = (Double(s) + t) / Double(pts.count - 1)
                bestR = rad[s] + (rad[s + 1] - rad[s]) * t
            }
        }
        return (best.squareRoot() * (flat < 1 ? (1 + flat) / 2 : 1) - bestR, bestT)
    }
}

/// Hash-based smooth value noise in [-1, 1] with feature size `cell` mm.
struct ValueNoise {
    var seed: UInt64, cell: Double
    @inline(__always) func lattice(_ i: Int, _ j: Int, _ k: Int) -> Double {
        var h = seed ^ (UInt64(bitPattern: Int64(i)) &* 0x9E37_79B9_7F4A_7C15)
        h ^= UInt64(bitPattern: Int64(j)) &* 0xC2B2_AE3D_27D4_EB4F
        h ^= UInt64(bitPattern: Int64(k)) &* 0x1656_67B1_9E37_79F9
        h = (h ^ (h >> 31)) &* 0xBF58_476D_1CE4_E5B9
        h ^= h >> 29
        return Double(h >> 11) * 0x1.0p-52 - 1
    }
    func callAsFunction(_ p: V3) -> Double {
        let x = p.x / cell
        let y = p.y / cell
        let z = p.z / cell
        let fx = x.rounded(.down)
        let fy = y.rounded(.down)
        let fz = z.rounded(.down)
        let i = Int(fx)
        let j = Int(fy)
        let k = Int(fz)
        func s(_ t: Double) -> Double { t * t * (3 - 2 * t) }
        let tx = s(x - fx)
        let ty = s(y - fy)
        let tz = s(z - fz)
        func l(_ a: Double, _ b: Double, _ t: Double) -> Double { a + (b - a) * t }
        let c00 = l(lattice(i, j, k), lattice(i + 1, j, k), tx)
        let c10 = l(lattice(i, j + 1, k), lattice(i + 1, j + 1, k), tx)
        let c01 = l(lattice(i, j, k + 1), lattice(i + 1, j, k + 1), tx)
        let c11 = l(lattice(i, j + 1, k + 1), lattice(i + 1, j + 1, k + 1), tx)
        return l(l(c00, c10, ty), l(c01, c11, ty), tz)
    }
}

/// Tissue HU levels of one case.
struct HU {
    var fat, muscle, liver, spleen, pancreas, duodenum, cortex, medulla, vessel, vein, bone, cortical, bowel,
        fluid: Double

    /// Replaces the drawn levels by the options' fixed ones (see ``PhantomOptions``).
    mutating func apply(_ o: PhantomOptions) {
        if let v = o.liverHU { liver = v }
        if let v = o.spleenHU { spleen = v }
        // The pancreas falls 10 HU from head to tail: the level asked for is its mid-length level.
        if let v = o.pancreasHU { pancreas = v + 5 }
        if let v = o.kidneyHU {
            medulla = v - (cortex - medulla)
            cortex = v
        }
        if let v = o.bowelHU {
            duodenum = v + (duodenum - bowel)
            bowel = v
        }
    }
}

/// One patient's anatomy, drawn from the case generator.
struct Anatomy {
    var bodyA: Double, bodyB: Double, harm: [(Double, Double)], fatThick: Double, muscleThick: Double
    var warp: [(V3, V3, Double)]  // (amplitude, wave vector, phase)
    var liver: Ellipsoid, liverCut: Ellipsoid, spleen: Ellipsoid, kidneys: [Ellipsoid], sinus: [Ellipsoid],
        medulla: [Ellipsoid]
    var stomach: Ellipsoid, pancreas: Tube, duodenum: Tube, splenicVein: Tube
    var aorta: (Double, Double, Double), ivc: (Double, Double, Double)
    var spine: (u: Double, v: Double, r: Double, disc: Double, phase: Double)
    var hu: HU
    var texture: ValueNoise, bowel: ValueNoise, gas: ValueNoise
    /// Amplitudes (mm) of the spleen's and the pancreas's lobulated outlines; they scale with the organs.
    var spleenLobe = 4.0, pancreasLobe = 2.5

    /// Scales the three labelled organs by `f` (linear size; volumes by f³), each about its own centre (the
    /// pancreas about the mean of its centre line), with their lobulation; the rest of the anatomy, duodenum
    /// and splenic vein included, stays where it was drawn.
    mutating func scaleOrgans(_ f: Double) {
        spleen = spleen.scaled(f, about: spleen.c)
        for n in kidneys.indices {
            let c = kidneys[n].c
            kidneys[n] = kidneys[n].scaled(f, about: c)
            medulla[n] = medulla[n].scaled(f, about: c)
            sinus[n] = sinus[n].scaled(f, about: c)
        }
        let pts = pancreas.pts
        let m = pts.reduce(V3(0, 0, 0), +) * (1 / Double(pts.count))
        pancreas = Tube(pts: pts.map { m + ($0 - m) * f }, rad: pancreas.rad.map { $0 * f }, flat: pancreas.flat)
        spleenLobe *= f
        pancreasLobe *= f
    }

    init(_ g: inout SeededRNG) {
        func U(_ a: Double, _ b: Double) -> Double { g.uniform(a, b) }
        bodyA = U(135, 175)
        bodyB = U(95, 125)
        harm = (2...4).map { _ in (U(-0.04, 0.04), U(0, 2 * .pi)) }
        fatThick = U(8, 30)
        muscleThick = U(8, 14)
        warp = (0..<3).map { _ in
            let dir = V3(U(-1, 1), U(-1, 1), U(-1, 1))
            let l = max(dir.norm, 1e-3)
            return (V3(U(-6, 6), U(-6, 6), U(-5, 5)), dir * (2 * .pi / U(140, 260) / l), U(0, 2 * .pi))
        }
        let s = bodyA / 155  // organs scale with the body
        liver = Ellipsoid(
            c: V3(U(-75, -55) * s, U(-15, 5), U(35, 60)), r: V3(U(70, 85) * s, U(65, 80), U(60, 75)),
            angle: U(-0.25, 0.1), tilt: U(-0.15, 0.15))
        liverCut = Ellipsoid(c: V3(U(5, 25) * s, U(-10, 10), U(0, 20)), r: V3(45, 60, 40), angle: 0)
        spleen = Ellipsoid(
            c: V3(U(75, 90) * s, U(25, 40), U(15, 35)), r: V3(U(20, 28), U(42, 55), U(42, 55)),
            angle: U(0.5, 0.9), tilt: U(-0.3, 0.3))
        let kw = U(-20, -5)
        kidneys = []
        sinus = []
        medulla = []
        for side in [-1.0, 1.0] {
            let c = V3(side * U(60, 75) * s, U(40, 55), kw + (side > 0 ? U(5, 20) : 0))
            let r = V3(U(22, 30), U(25, 32), U(45, 60))
            let ang = side * U(0.3, 0.6)
            kidneys.append(Ellipsoid(c: c, r: r, angle: ang, tilt: U(-0.2, 0.2)))
            medulla.append(Ellipsoid(c: c, r: r * 0.7, angle: ang))
            sinus.append(
                Ellipsoid(c: c + V3(-side * r.x * 0.55, -8, 0), r: V3(r.x * 0.45, r.y * 0.45, r.z * 0.45), angle: ang))
        }
        stomach = Ellipsoid(
            c: V3(U(35, 55) * s, U(-50, -35), U(45, 65)), r: V3(U(40, 55), U(30, 40), U(35, 50)),
            angle: U(-0.4, 0.2))
        // Pancreas: a cubic Bezier from the head (right of midline, inferior) over the aorta to the tail at the
        // splenic hilum (left, posterior, superior), wavy, radius shrinking head -> tail.
        let head = V3(U(-35, -20) * s, U(-10, 5), U(-25, -10))
        let neck = V3(U(-5, 10), U(-35, -20), U(-10, 5))
        let body = V3(U(30, 50) * s, U(-20, -5), U(5, 15))
        let tail = V3(U(70, 85) * s, U(10, 25), U(15, 30))
        var pp: [V3] = []
        for q in 0...40 {
            let t = Double(q) / 40
            let m = 1 - t
            var p = head * (m * m * m) + neck * (3 * m * m * t) + body * (3 * m * t * t) + tail * (t * t * t)
            p = p + V3(0, 4 * sin(3 * .pi * t), 3 * sin(2 * .pi * t))
            pp.append(p)
        }
        let rHead = U(14, 18)
        let rTail = U(6.5, 9)
        let prad = (0...40).map { q -> Double in
            let t = Double(q) / 40
            return t < 0.2
                ? rHead - (rHead - rHead * 0.75) * t / 0.2 : rHead * 0.75 + (rTail - rHead * 0.75) * (t - 0.2) / 0.8
        }
        pancreas = Tube(pts: pp, rad: prad, flat: U(0.55, 0.75))
        // Splenic vein runs along the back of the pancreas body and tail.
        splenicVein = Tube(
            pts: pp[12...].map { $0 + V3(0, 9, 0) }, rad: Array(repeating: U(3.5, 5), count: pp.count - 12))
        // Duodenal C-loop around the head.
        let h = pp[0]
        duodenum = Tube(
            pts: (0...12).map { q in
                let t = Double(q) / 12
                let a = -0.5 * .pi + .pi * t
                return h + V3(-cos(a - .pi / 2) * 24 - 4, -6, sin(a - .pi / 2 + .pi / 2) * 0 + 30 - 60 * t)
            }, rad: Array(repeating: U(8, 11), count: 13))
        aorta = (U(10, 22), U(10, 22), U(9, 12))
        ivc = (U(-30, -18), U(10, 22), U(9, 13))
        spine = (U(-4, 4), bodyB - U(50, 62), U(15, 19), U(28, 34), U(0, 30))
        hu = HU(
            fat: U(-115, -85), muscle: U(40, 60), liver: U(95, 120), spleen: U(105, 130),
            pancreas: U(80, 100), duodenum: U(45, 70), cortex: U(150, 200), medulla: U(90, 130),
            vessel: U(150, 200), vein: U(130, 170), bone: U(180, 260), cortical: U(450, 700),
            bowel: U(25, 55), fluid: U(0, 20))
        texture = ValueNoise(seed: g.next(), cell: 4)
        bowel = ValueNoise(seed: g.next(), cell: 22)
        gas = ValueNoise(seed: g.next(), cell: 9)
    }

    @inline(__always) func warped(_ p: V3) -> V3 {
        var q = p
        for (a, k, ph) in warp {
            let s = sin(k.dot(p) + ph)
            q = q + a * s
        }
        return q
    }

    /// One voxel at body point `q`: the painted HU plus noise (normals drawn in pairs from the slice's stream,
    /// the second kept in `spare` for the next voxel), clamped to int16 CT range and rounded, and its label.
    @inline(__always)
    func voxel(_ q: V3, edge: Double, noise: Double, rng: inout SeededRNG, spare: inout Double?) -> (Float, UInt8) {
        var hu = -1000.0
        var lab: UInt8 = 0
        paint(q, edge: edge, hu: &hu, label: &lab)
        if let z = spare {
            hu += noise * z
            spare = nil
        } else {
            let (z0, z1) = rng.normalPair()
            hu += noise * z0
            spare = z1
        }
        return (Float(min(max(hu, -1024), 3071).rounded()), lab)
    }

    /// Paints the tissue stack at the warped body-frame point p onto `hu`/`label`; `edge` is the partial-volume width.
    @inline(__always)
    func paint(_ p: V3, edge: Double, hu out: inout Double, label: inout UInt8) {
        // Body outline: ellipse with a few harmonics, slightly larger in the lower abdomen.
        let ang = atan2(p.y / bodyB, p.x / bodyA)
        var rr = 1.0
        for (n, (amp, ph)) in harm.enumerated() { rr += amp * cos(Double(n + 2) * ang + ph) }
        rr *= 1 + 0.0006 * max(0, -p.z)
        let e = (p.x * p.x / (bodyA * bodyA) + p.y * p.y / (bodyB * bodyB)).squareRoot()
        let dBody = (e - rr) * min(bodyA, bodyB)  // mm outside the skin (approx.)
        if dBody > edge { return }
        func lay(_ d: Double, _ value: Double) {
            let c = cover(d, edge)
            out += (value - out) * c
        }
        lay(dBody, hu.muscle - 10)  // skin
        lay(dBody + 2.5, hu.fat)  // subcutaneous fat
        let dWall = dBody + fatThick
        lay(dWall, hu.muscle)  // abdominal wall muscle
        let dCav = dWall + muscleThick
        // Ribs in the upper abdomen, inside the muscle wall.
        if p.z > -30 && dCav > -3 && dCav < muscleThick + 3 {
            let ribPhase = (p.z + 400).truncatingRemainder(dividingBy: 26)
            if ribPhase < 7 && abs(ang + .pi / 2) > 0.6 {
                lay(max(abs(dCav - muscleThick / 2) - 3, abs(ribPhase - 3.5) - 3.5), hu.cortical * 0.7)
            }
        }
        if dCav > edge { return }
        // Visceral cavity: fat with bowel loops and gas.
        let b = bowel(p)
        var cavity = hu.fat
        if b > 0.05 {
            cavity = hu.bowel + 15 * texture(p)
            if b > 0.3 && gas(p) > 0.55 { cavity = -850 }
        }
        lay(dCav, cavity)

        // Paraspinal muscles and the spine.
        for sgn in [-1.0, 1.0] {
            let du = (p.x - (spine.u + sgn * 38)) / 30
            let dv = (p.y - (spine.v + 42)) / 26
            lay(((du * du + dv * dv).squareRoot() - 1) * 26, hu.muscle)
        }
        let sp = V3(p.x - spine.u, p.y - spine.v, 0)
        let dVert = sp.norm - spine.r
        let inDisc = (p.z + 400 + spine.phase).truncatingRemainder(dividingBy: spine.disc) < 6
        lay(dVert, inDisc ? 90 : hu.cortical)
        if !inDisc { lay(dVert + 2, hu.bone) }
        let dCanal = V3(p.x - spine.u, p.y - spine.v - spine.r - 10, 0).norm - 8
        let dArch = dCanal - 5
        if !inDisc { lay(dArch, hu.cortical) }
        let dProc = max(abs(p.x - spine.u) - 5, abs(p.y - spine.v - spine.r - 32) - 14)
        if !inDisc { lay(dProc, hu.cortical * 0.8) }
        lay(dCanal, 20)

        // Liver (with the gallbladder-ish notch cut away medially), stomach.
        if liver.inBox(p) { lay(max(liver.sdf(p), -liverCut.sdf(p)), hu.liver + 6 * texture(p)) }
        if stomach.inBox(p) {
            let ds = stomach.sdf(p)
            lay(ds, hu.muscle)
            lay(ds + 4, p.y < stomach.c.y - stomach.r.y * 0.35 ? -900 : hu.fluid)
        }

        // Labelled organs (later ones win). Kidneys: cortex, medulla, unlabelled sinus fat.
        for (n, kid) in kidneys.enumerated() where kid.inBox(p) {
            let dk = kid.sdf(p)
            lay(dk, hu.cortex)
            lay(medulla[n].sdf(p), hu.medulla)
            if dk < 0 { label = 3 }
            let dsn = sinus[n].sdf(p)
            lay(dsn, hu.fat + 40)
            if dsn < 0 && dk < 0 { label = 0 }
        }
        if spleen.inBox(p) {
            let d = spleen.sdf(p) + spleenLobe * texture(V3(p.x * 0.5, p.y * 0.5, p.z * 0.5))
            lay(d, hu.spleen + 5 * texture(p))
            if d < 0 { label = 1 }
        }
        if duodenum.inBox(p) {
            let (d, _) = duodenum.sdf(p)
            lay(d, hu.duodenum)
            lay(d + 3, hu.fluid + 10)
            if d < 0 && label == 2 { label = 0 }
        }
        if pancreas.inBox(p) {
            // Lobulated outline and fatty texture: the low-contrast organ.
            let (d0, t) = pancreas.sdf(p)
            let d = d0 + pancreasLobe * texture(p * 1.3)
            lay(d, hu.pancreas + 18 * texture(p * 2.2) - 10 * t)
            if d < 0 { label = 2 }
        }
        if splenicVein.inBox(p) {
            let (d, _) = splenicVein.sdf(p)
            lay(d, hu.vein)
            if d < 0 { label = 0 }
        }
        // Aorta and IVC run cranio-caudally in front of the spine.
        let da = V3(p.x - (spine.u + aorta.0), p.y - (spine.v - spine.r - aorta.1), 0).norm - aorta.2
        lay(da, hu.vessel)
        let di = V3((p.x - (spine.u + ivc.0)) / 1.3, p.y - (spine.v - spine.r - ivc.1), 0).norm - ivc.2
        lay(di, hu.vein - 20)
        if da < 0 || di < 0 { label = 0 }
    }
}
