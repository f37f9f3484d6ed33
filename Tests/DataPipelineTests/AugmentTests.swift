import Foundation
import Tensor
import TestSupport
import XCTest

@testable import DataPipeline

/// The parameters of one augmented sample, replayed from the loader's seeded streams in the documented order:
/// patch placement from the "SAMP" stream (a uniform start per axis, z/y/x, when the patch is not foreground),
/// then the transform from the "AUGM" stream: flip X, flip Y, rotation (degrees), shift X, shift Y (fractions of
/// the patch size), zoom X, zoom Y (`SampleTransform.draw`).
struct AugmentDraw: Codable {
    var start: [Int]  // z, y, x of the patch box in the volume
    var fx: Double, fy: Double
    var theta: Double  // degrees
    var tx: Double, ty: Double  // voxels
    var zx: Double, zy: Double

    /// Replays sample `g` of `epoch` of a background-only loader (foregroundFraction 0) over a volume `dims`.
    init(_ l: PatchLoader, dims: Dim3, epoch: Int, g: Int) {
        precondition(!l.isForeground(g))
        let a = l.augment
        let p = l.patch
        var r = SeededRNG(l.seed, UInt64(epoch), UInt64(g), 0x5341_4D50)  // "SAMP"
        let d = [dims.z, dims.y, dims.x]
        let ps = [p.z, p.y, p.x]
        start = (0..<3).map { d[$0] >= ps[$0] ? r.below(d[$0] - ps[$0] + 1) : -((ps[$0] - d[$0] + 1) / 2) }
        var q = SeededRNG(l.seed, UInt64(epoch), UInt64(g), 0x4155_474D)  // "AUGM"
        fx = q.chance(a.flipX) ? -1 : 1
        fy = q.chance(a.flipY) ? -1 : 1
        theta = q.uniform(-a.rotationDegrees, a.rotationDegrees)
        tx = q.uniform(-a.shift, a.shift) * Double(p.x)
        ty = q.uniform(-a.shift, a.shift) * Double(p.y)
        zx = q.uniform(a.zoom.lowerBound, a.zoom.upperBound)
        zy = q.uniform(a.zoom.lowerBound, a.zoom.upperBound)
    }
}

/// Augmented patches equal scipy.ndimage's affine_transform on the same parameters.
///
/// The convention, from `SampleTransform` and `PatchLoader.sample`: arrays are [Z][Y][X] with x fastest; the
/// patch box is `start ..< start + p` and its centre `start + (p - 1) / 2` (a voxel centre on odd axes, a corner
/// between voxels on even ones) is the centre of every in-plane operation. Output voxel o has offset
/// d = o - (p - 1) / 2; it reads the source at centre + F·R·(Z·d + t) in (x, y), where F = diag(fx, fy) are the
/// flips, R = [[cos θ, -sin θ], [sin θ, cos θ]] the rotation (x' = x cos θ - y sin θ), Z = diag(zx, zy) the zoom
/// (a pull map: zoom > 1 shows more of the volume) and t = (tx, ty) the shift in voxels, applied before the rotation;
/// z is left alone. The image is trilinear and the label nearest (round half up) and outside the volume both
/// read a constant: the case minimum for the image, 0 for the label (scipy's mode 'grid-constant', which
/// interpolates against the constant, as the loader's padded box read does).
final class AugmentScipyTests: XCTestCase {
    static let dims = Dim3(z: 10, y: 27, x: 24)
    static let patch = Dim3(z: 8, y: 20, x: 17)  // mixed parity: the even axes' centre lies between voxels
    static let seed: UInt64 = 21
    static let lock = NSLock()
    nonisolated(unsafe) static var made: (dir: URL, store: CaseStore)?

    override class func tearDown() {
        lock.lock()
        defer { lock.unlock() }
        if let made { try? FileManager.default.removeItem(at: made.dir) }
        made = nil
    }

    /// An image with ramps along every axis plus noise (range about 900) and a random label in 0...3.
    static func store() throws -> (dir: URL, store: CaseStore) {
        lock.lock()
        defer { lock.unlock() }
        if let made { return made }
        let dir = try TestEnv.tempDir()
        var rng = SeededRNG(77)
        var image = [Float]()
        var label = [UInt8]()
        for z in 0..<dims.z {
            for y in 0..<dims.y {
                for x in 0..<dims.x {
                    image.append(Float(10 * x - 4 * y + 25 * z) + Float(rng.uniform(0, 400)))
                    label.append(UInt8(rng.below(4)))
                }
            }
        }
        let s = try SyntheticStore.make(in: dir, dim: dims, image: image, label: label)
        made = (dir, s)
        return (dir, s)
    }

    /// Samples `count` draws of `options` accepted by `pick` and checks each against scipy.
    func check(
        _ name: String, _ options: AugmentOptions, count: Int = 3, epoch: Int = 1,
        file: StaticString = #filePath, line: UInt = #line, pick: (AugmentDraw) -> Bool = { _ in true }
    ) throws {
        let (base, store) = try Self.store()
        let dir = base.appendingPathComponent(name + "-" + UUID().uuidString)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let p = Self.patch
        let l = try PatchLoader(
            store: store, patch: p, batch: 1, seed: Self.seed, augment: options, foregroundFraction: 0,
            normalization: .none)
        let order = l.order(epoch: epoch)
        var draws: [AugmentDraw] = []
        for g in 0..<500 where draws.count < count {
            let draw = AugmentDraw(l, dims: Self.dims, epoch: epoch, g: g)
            guard pick(draw) else { continue }
            var img = [Float](repeating: .nan, count: p.count)
            var lab = [UInt8](repeating: 255, count: p.count)
            _ = try img.withUnsafeMutableBufferPointer { ip in
                try lab.withUnsafeMutableBufferPointer { lp in
                    try l.sample(
                        epoch: epoch, globalIndex: g, order: order, image: ip.baseAddress!, label: lp.baseAddress!)
                }
            }
            try SyntheticStore.save(img, to: dir.path + "/img\(draws.count).f32")
            try SyntheticStore.save(lab, to: dir.path + "/lab\(draws.count).u8")
            draws.append(draw)
        }
        XCTAssertEqual(draws.count, count, "not enough draws matching the selection", file: file, line: line)
        try JSONEncoder().encode(draws).write(to: dir.appendingPathComponent("draws.json"))
        try TestEnv.python(
            """
            import json, numpy as np, h5py
            from scipy import ndimage
            d = '\(dir.path)/'
            with h5py.File('\(base.path)/store.h5', 'r') as f:
                g = f['cases/case']
                vol = g['image'][...].astype(np.float64); lab = g['label'][...]
                pad = float(g.attrs['intensity_stats'][0])
            assert pad == vol.min()
            span = vol.max() - vol.min()
            P = np.array([\(p.z), \(p.y), \(p.x)]); h = (P - 1) / 2.0
            for n, s in enumerate(json.load(open(d + 'draws.json'))):
                th = np.deg2rad(s['theta']); c, sn = np.cos(th), np.sin(th)
                F = np.diag([s['fx'], s['fy']]); R = np.array([[c, -sn], [sn, c]]); Z = np.diag([s['zx'], s['zy']])
                A2 = F @ R @ Z; b2 = F @ R @ np.array([s['tx'], s['ty']])      # (x, y)
                M = np.eye(3); M[1:, 1:] = A2[::-1, ::-1]                       # (z, y, x)
                b = np.array([0.0, b2[1], b2[0]])
                centre = np.array(s['start'], dtype=np.float64) + h
                off = centre + b - M @ h
                img = ndimage.affine_transform(vol, M, offset=off, output_shape=tuple(P), order=1, mode='grid-constant', cval=pad)
                lbl = ndimage.affine_transform(lab, M, offset=off, output_shape=tuple(P), order=0, mode='grid-constant', cval=0)
                got = np.fromfile(d + 'img%d.f32' % n, dtype=np.float32).reshape(P).astype(np.float64)
                glab = np.fromfile(d + 'lab%d.u8' % n, dtype=np.uint8).reshape(P)
                err = np.abs(got - img).max()
                assert err <= 1e-5 * span, ('\(name)', n, s, 'image max error', err, 'allowed', 1e-5 * span)
                # Nearest neighbour may differ only where a source coordinate sits on a tie (x.5), where float rounding
                # decides; these fixed draws have none, so every label voxel is compared.
                src = (M @ np.indices(tuple(P)).reshape(3, -1) + off[:, None]).reshape((3,) + tuple(P))
                tie = (np.abs(src - np.floor(src) - 0.5) < 1e-6).any(0)
                bad = (glab != lbl) & ~tie
                assert bad.sum() == 0, ('\(name)', n, s, 'label voxels differing from scipy', int(bad.sum()), 'ties', int(tie.sum()))
                assert tie.sum() == 0, ('\(name)', n, 'ties (x.5 source coordinates) left uncompared', int(tie.sum()))
                # Not vacuous: the draw really moves the labels compared with the plain crop.
                z0, y0, x0 = s['start']
                plain = lab[z0:z0 + P[0], y0:y0 + P[1], x0:x0 + P[2]]
                assert (glab != plain).mean() > 0.3, ('\(name)', n, 'augmented label equals the plain crop', (glab != plain).mean())
            """, file: file, line: line)
    }

    static func only(_ set: (inout AugmentOptions) -> Void) -> AugmentOptions {
        var a = AugmentOptions.none
        set(&a)
        return a
    }

    func testFlipXMatchesScipy() throws {
        try check("flipx", Self.only { $0.flipX = 1 })
    }

    func testFlipYMatchesScipy() throws {
        try check("flipy", Self.only { $0.flipY = 1 })
    }

    /// Both directions of rotation, each at least 5°.
    func testRotationMatchesScipy() throws {
        try check("rot+", Self.only { $0.rotationDegrees = 15 }, count: 2) { $0.theta > 5 }
        try check("rot-", Self.only { $0.rotationDegrees = 15 }, count: 2) { $0.theta < -5 }
    }

    func testShiftMatchesScipy() throws {
        try check("shift", Self.only { $0.shift = 0.1 }) { abs($0.tx) > 0.8 && abs($0.ty) > 0.8 }
    }

    /// Zooming in and out, each axis at least 10% off 1.
    func testZoomMatchesScipy() throws {
        try check("zoom-in", Self.only { $0.zoom = 0.7...1.3 }, count: 2) { $0.zx < 0.9 && $0.zy < 0.9 }
        try check("zoom-out", Self.only { $0.zoom = 0.7...1.3 }, count: 2) { $0.zx > 1.1 && $0.zy > 1.1 }
        try check("zoom-mixed", Self.only { $0.zoom = 0.7...1.3 }, count: 1) { $0.zx < 0.9 && $0.zy > 1.1 }
    }

    /// The paper's preset: every flip pattern with a rotation, shift and zoom.
    func testCombinedPaperAugmentationMatchesScipy() throws {
        for (fx, fy) in [(-1.0, 1.0), (1.0, -1.0), (-1.0, -1.0), (1.0, 1.0)] {
            try check("paper\(fx)\(fy)", .paper, count: 1) { $0.fx == fx && $0.fy == fy && abs($0.theta) > 5 }
        }
    }
}

/// The label moves with the image: a bright cube labelled 2, off the patch centre in x and y, stays under
/// label 2 through seeded augmentations (flips of both axes among them, and tilts out of the plane).
///
/// The bounds are exact, not statistical. The cube (1000) is separable, so the trilinear image at a source point is
/// 1000·w plus at most 100·(1 - w) of background, with w = Π(1 - δ) over the axes where the point lies a distance
/// δ beyond the cube's voxel centres. A voxel labelled 2 reads a source point with every δ ≤ 0.5, so w ≥ 1/8 and
/// the image is at least 125; an image above 550 needs w > 1/2, so every δ < 0.5 and the nearest voxel is in the cube.
final class AugmentLabelTests: XCTestCase {
    func testLabelledVoxelsStayOnTheBrightMarker() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let dims = Dim3(z: 10, y: 24, x: 26)
        var rng = SeededRNG(5)
        var image = [Float]()
        var label = [UInt8]()
        for z in 0..<dims.z {
            for y in 0..<dims.y {
                for x in 0..<dims.x {
                    let inCube = (2..<8).contains(z) && (4..<11).contains(y) && (3..<10).contains(x)
                    image.append(inCube ? 1000 : Float(rng.uniform(0, 100)))
                    label.append(inCube ? 2 : 0)
                }
            }
        }
        let store = try SyntheticStore.make(in: dir, dim: dims, image: image, label: label)
        var geometric3D = AugmentOptions.extended
        geometric3D.gammaProbability = 0
        geometric3D.noiseProbability = 0
        geometric3D.brightnessProbability = 0
        for (name, options) in [("paper", AugmentOptions.paper), ("extended geometry", geometric3D)] {
            // The patch is the whole volume, so the cube sits off the patch centre.
            let l = try PatchLoader(
                store: store, patch: dims, batch: 1, seed: 3, augment: options, foregroundFraction: 0,
                normalization: .none)
            let order = l.order(epoch: 0)
            var flips = Set<[Double]>()
            for g in 0..<12 {
                let draw = AugmentDraw(l, dims: dims, epoch: 0, g: g)
                flips.insert([draw.fx, draw.fy])
                var img = [Float](repeating: 0, count: dims.count)
                var lab = [UInt8](repeating: 0, count: dims.count)
                _ = try img.withUnsafeMutableBufferPointer { ip in
                    try lab.withUnsafeMutableBufferPointer { lp in
                        try l.sample(
                            epoch: 0, globalIndex: g, order: order, image: ip.baseAddress!, label: lp.baseAddress!)
                    }
                }
                let marked = zip(img, lab).filter { $0.1 == 2 }
                let bright = zip(img, lab).filter { $0.0 > 560 }
                XCTAssertGreaterThan(marked.count, 50, "\(name) sample \(g): the marker left the patch")
                XCTAssertGreaterThan(bright.count, 50, "\(name) sample \(g): the marker left the patch")
                let onBright = Double(marked.filter { $0.0 > 120 }.count) / Double(max(marked.count, 1))
                let labelled = Double(bright.filter { $0.1 == 2 }.count) / Double(max(bright.count, 1))
                XCTAssertEqual(onBright, 1, "\(name) sample \(g) \(draw): label-2 voxels off the bright cube")
                XCTAssertEqual(labelled, 1, "\(name) sample \(g) \(draw): bright voxels not labelled 2")
                XCTAssertTrue(lab.allSatisfy { $0 == 0 || $0 == 2 })
            }
            XCTAssertEqual(flips.count, 4, "\(name): the draws should cover every flip pattern: \(flips)")
        }
    }
}
