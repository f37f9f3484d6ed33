import Foundation
import Tensor
import TestSupport
import XCTest

@testable import DataPipeline

/// FNV-1a (64-bit) over a phantom's size, affine (the bits of each Double), image (as the int16 written) and label.
func phantomDigest(_ cases: [PhantomCase]) -> String {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    func eat(_ b: UInt8) {
        h ^= UInt64(b)
        h = h &* 0x100_0000_01b3
    }
    func eat64(_ v: UInt64) {
        for s in stride(from: 0, to: 64, by: 8) { eat(UInt8(truncatingIfNeeded: v >> UInt64(s))) }
    }
    for c in cases {
        for n in [c.dim.x, c.dim.y, c.dim.z] { eat64(UInt64(n)) }
        for a in c.affine { eat64(a.bitPattern) }
        for v in c.image {
            let s = UInt16(bitPattern: Int16(v))
            eat(UInt8(s & 0xFF))
            eat(UInt8(s >> 8))
        }
        for l in c.label { eat(l) }
    }
    return String(format: "%016llx", h)
}

final class PhantomKnobTests: XCTestCase {
    /// The arrays of today's generator (before the knobs existed), pinned: with every knob at its default the
    /// phantoms must not change by a bit (the project's regression checks digest `synth` output).
    func testDefaultsUnchanged() {
        let cases = (0..<2).map { Phantom.generate(seed: 3, index: $0, scale: 0.5) }
        XCTAssertEqual(phantomDigest(cases), "ebc53e9568d60cf0")
    }
}

/// World (RAS mm) centroid of the voxels with label `l`.
func worldCentroid(_ c: PhantomCase, _ l: UInt8) -> [Double] {
    var s = [0.0, 0.0, 0.0]
    var n = 0.0
    var t = 0
    for k in 0..<c.dim.z {
        for j in 0..<c.dim.y {
            for i in 0..<c.dim.x {
                if c.label[t] == l {
                    for r in 0..<3 {
                        s[r] +=
                            c.affine[r * 4] * Double(i) + c.affine[r * 4 + 1] * Double(j) + c.affine[r * 4 + 2]
                            * Double(k) + c.affine[r * 4 + 3]
                    }
                    n += 1
                }
                t += 1
            }
        }
    }
    return s.map { $0 / n }
}

func median(_ v: [Float]) -> Double {
    let s = v.sorted()
    return s.isEmpty ? .nan : Double(s[s.count / 2])
}

/// The `q` quantile of `v`.
func quantile(_ v: [Float], _ q: Double) -> Double {
    let s = v.sorted()
    return Double(s[min(s.count - 1, Int(Double(s.count) * q))])
}

extension PhantomKnobTests {
    func testDefaultOptionsAreTheDefaults() throws {
        var o = PhantomOptions()
        o.orientation = try AxisCodes("lps")
        XCTAssertTrue(o.isDefault)
        XCTAssertEqual(o.summary, "defaults")
        XCTAssertEqual(o.problems, [])
        XCTAssertEqual(
            phantomDigest((0..<2).map { Phantom.generate(seed: 3, index: $0, scale: 0.5, options: o) }),
            "ebc53e9568d60cf0")
    }

    /// The same case in several voxel orders is the same patient: every voxel keeps its world position and value
    /// (organ centroids in world mm agree, and nibabel's canonical reordering gives identical arrays and affines),
    /// the affine's columns flip and permute as asked, and nibabel's aff2axcodes reports the codes asked for.
    func testOrientationKeepsTheWorldAnatomy() throws {
        let lps = Phantom.generate(seed: 3, index: 1, scale: 0.5)
        var o = PhantomOptions()
        o.orientation = try AxisCodes("RAS")
        let ras = Phantom.generate(seed: 3, index: 1, scale: 0.5, options: o)
        XCTAssertEqual(ras.dim, lps.dim)
        for r in 0..<3 {  // x and y columns flipped, z kept
            XCTAssertEqual(ras.affine[r * 4 + 0], -lps.affine[r * 4 + 0])
            XCTAssertEqual(ras.affine[r * 4 + 1], -lps.affine[r * 4 + 1])
            XCTAssertEqual(ras.affine[r * 4 + 2], lps.affine[r * 4 + 2])
        }
        XCTAssertNotEqual(ras.image, lps.image)
        XCTAssertEqual(ras.image.sorted(), lps.image.sorted())
        let voxel = max(lps.spacing.x, lps.spacing.y, lps.spacing.z)
        for l: UInt8 in 1...3 {
            let a = worldCentroid(lps, l)
            let b = worldCentroid(ras, l)
            for r in 0..<3 { XCTAssertEqual(a[r], b[r], accuracy: 0.01 * voxel, "label \(l) axis \(r)") }
        }
        for codes in ["SAR"] {  // a permuted order keeps the world anatomy too (nibabel checks LAS and RPI below)
            o.orientation = try AxisCodes(codes)
            let c = Phantom.generate(seed: 3, index: 1, scale: 0.5, options: o)
            for l: UInt8 in 1...3 {
                let a = worldCentroid(lps, l)
                let b = worldCentroid(c, l)
                for r in 0..<3 { XCTAssertEqual(a[r], b[r], accuracy: 0.01 * voxel, "\(codes) label \(l) axis \(r)") }
            }
        }
        // nibabel: the codes, and the same canonical (RAS) volume and affine from every order.
        let d = try TestEnv.tempDir()
        for codes in ["LPS", "RAS", "LAS", "RPI", "SAR"] {
            o.orientation = try AxisCodes(codes)
            try Phantom.writeDataset(to: "\(d.path)/\(codes)", count: 1, seed: 3, scale: 0.5, options: o, threads: 1)
        }
        let desc =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: d.path + "/RPI/dataset.json")))
            as! [String: Any]
        XCTAssertEqual(
            desc["description"] as? String, "attunet synthetic abdominal CT phantoms (seed 3; orientation RPI)")
        try TestEnv.python(
            """
            import nibabel as nib, numpy as np
            ref = {}
            for codes in ['LPS', 'RAS', 'LAS', 'RPI', 'SAR']:
                for kind in ['imagesTr', 'labelsTr']:
                    img = nib.load('\(d.path)/%s/%s/phantom_000.nii.gz' % (codes, kind))
                    assert ''.join(nib.aff2axcodes(img.affine)) == codes, (codes, nib.aff2axcodes(img.affine))
                    can = nib.as_closest_canonical(img)
                    a = np.asarray(can.dataobj)
                    if kind not in ref: ref[kind] = (a, can.affine)
                    else:
                        assert np.array_equal(a, ref[kind][0]), (codes, kind)
                        assert np.allclose(can.affine, ref[kind][1], atol=1e-3), (codes, can.affine, ref[kind][1])
            """)
    }

    /// An oblique grid (rotated about the superior axis) samples the same world anatomy: organ centroids in
    /// world mm agree with the straight grid's within a voxel and organ volumes within 5% (the voxels sample
    /// other points); nibabel still reads the voxel order asked for, and the affine's in-plane columns are
    /// rotated by the angle.
    func testObliqueGridKeepsTheWorldAnatomy() throws {
        let straight = Phantom.generate(seed: 3, index: 1, scale: 0.5)
        let voxel = max(straight.spacing.x, straight.spacing.y, straight.spacing.z)
        for (deg, codes) in [(20.0, "LPS"), (-30.0, "RAS")] {
            var o = PhantomOptions()
            o.obliqueDegrees = deg
            o.orientation = try AxisCodes(codes)
            let c = Phantom.generate(seed: 3, index: 1, scale: 0.5, options: o)
            XCTAssertEqual(c.dim.z, straight.dim.z)
            XCTAssertGreaterThan(c.dim.x * c.dim.y, straight.dim.x * straight.dim.y)
            // column i vs -x
            let ang = atan2(c.affine[4] * (codes == "LPS" ? 1 : -1), c.affine[0] * (codes == "LPS" ? 1 : -1))
            XCTAssertEqual(abs(ang) * 180 / .pi, 180 - abs(deg), accuracy: 1e-6)
            for l: UInt8 in 1...3 {
                let a = worldCentroid(straight, l)
                let b = worldCentroid(c, l)
                for r in 0..<3 { XCTAssertEqual(a[r], b[r], accuracy: voxel, "\(deg)° label \(l) axis \(r)") }
                let va = Double(straight.label.filter { $0 == l }.count)
                let vb = Double(c.label.filter { $0 == l }.count)
                XCTAssertEqual(vb / va, 1, accuracy: 0.05, "\(deg)° label \(l) volume")
            }
            let d = try TestEnv.tempDir()
            try Phantom.writeDataset(to: d.path, count: 1, seed: 3, scale: 0.5, options: o, threads: 1)
            try TestEnv.python(
                """
                import nibabel as nib
                assert ''.join(nib.aff2axcodes(nib.load('\(d.path)/labelsTr/phantom_000.nii.gz').affine)) == '\(codes)'
                """)
        }
    }

    /// Organ scale 0.5 shrinks each labelled organ's own shape to 1/8 of its volume. Measured on the organs'
    /// shapes (sampled on a grid twice as fine for the half-size organs, so the sampling error is the same):
    /// only the lobulation, whose amplitude scales but whose texture does not, keeps the ratio from being
    /// exact; ±15% allows for it. In the image the labelled volumes scale less exactly: the body wall clips the
    /// full-size spleen and kidneys (not the half-size ones) and the aorta, IVC and splenic vein cut pieces
    /// of fixed size out of the pancreas, so the three organs together are checked to ±50% of 1/8.
    func testOrganScaleHalfGivesAnEighthOfTheVolume() throws {
        for index in 0..<3 {
            var rng = SeededRNG(5, UInt64(index), 0x5048_414E_544F_4D)
            let full = Anatomy(&rng)
            var half = full
            half.scaleOrgans(0.5)
            let a = organShapeVolumes(full, step: 2)
            let b = organShapeVolumes(half, step: 1)
            for n in 0..<3 {
                XCTAssertEqual(
                    b[n] / a[n], 0.125, accuracy: 0.125 * 0.15, "case \(index) organ \(n + 1): \(a[n]) -> \(b[n]) mm3")
            }
            // The rest of the anatomy is where it was.
            XCTAssertEqual(full.hu.liver, half.hu.liver)
            XCTAssertEqual(full.liver.c.x, half.liver.c.x)
            XCTAssertEqual(full.duodenum.pts.map(\.x), half.duodenum.pts.map(\.x))
        }
        var o = PhantomOptions()
        o.organScale = 0.5
        let d = Phantom.generate(seed: 3, index: 0, scale: 1)
        let h = Phantom.generate(seed: 3, index: 0, scale: 1, options: o)
        XCTAssertEqual(d.dim, h.dim)
        XCTAssertEqual(d.affine, h.affine)
        let nd = d.label.filter { $0 != 0 }.count
        let nh = h.label.filter { $0 != 0 }.count
        XCTAssertEqual(Double(nh) / Double(nd), 0.125, accuracy: 0.125 * 0.5, "\(nd) -> \(nh) labelled voxels")
        for l: UInt8 in 1...3 { XCTAssertGreaterThan(h.label.filter { $0 == l }.count, 0, "label \(l)") }
    }

    /// Each fixed HU level moves the organ's median to it, within the noise (8-20 HU): the spleen, the pancreas
    /// (its level at mid-length) and the liver and bowel (unlabelled: the voxels the option changed) within 8
    /// HU. The kidney option sets the cortex; the medulla (a third of the label, 20-110 HU darker) pulls the
    /// label's median down, so the cortex is checked with the label's 75th percentile (within 10 HU) and the
    /// median within 30 HU below.
    func testHULevelsMoveTheOrganMedians() throws {
        var o = PhantomOptions()
        o.spleenHU = 60
        o.pancreasHU = 40
        o.kidneyHU = 300
        o.liverHU = 250
        o.bowelHU = 200
        XCTAssertEqual(o.summary, "spleen 60.0 HU, pancreas 40.0 HU, kidney 300.0 HU, liver 250.0 HU, bowel 200.0 HU")
        for index in 0..<2 {
            let d = Phantom.generate(seed: 3, index: index, scale: 0.5)
            let h = Phantom.generate(seed: 3, index: index, scale: 0.5, options: o)
            XCTAssertEqual(d.label, h.label)
            func organ(_ c: PhantomCase, _ l: UInt8) -> [Float] { zip(c.image, c.label).filter { $0.1 == l }.map(\.0) }
            XCTAssertEqual(median(organ(h, 1)), 60, accuracy: 8)
            XCTAssertGreaterThan(median(organ(d, 1)), 95)
            XCTAssertEqual(median(organ(h, 2)), 40, accuracy: 8)
            XCTAssertGreaterThan(median(organ(d, 2)), 70)
            XCTAssertEqual(quantile(organ(h, 3), 0.75), 300, accuracy: 10)
            XCTAssertTrue((270...300).contains(median(organ(h, 3))), "kidney median \(median(organ(h, 3)))")
            XCTAssertLessThan(median(organ(d, 3)), 210)
            for (name, value, change) in [
                ("liver", 250.0, { (p: inout PhantomOptions) in p.liverHU = 250 }),
                ("bowel", 200.0, { (p: inout PhantomOptions) in p.bowelHU = 200 }),
            ] {
                var one = PhantomOptions()
                change(&one)
                let c = Phantom.generate(seed: 3, index: index, scale: 0.5, options: one)
                let changed = zip(d.image, c.image).filter { $0.0 != $0.1 }.map(\.1)
                XCTAssertGreaterThan(changed.count, 1000, name)
                XCTAssertEqual(median(changed), value, accuracy: 8, name)
            }
        }
    }

    func testKnobValidation() {
        XCTAssertThrowsError(try AxisCodes("RAR")) {
            XCTAssertTrue("\($0)".contains("one each of R/L, A/P and S/I"), "\($0)")
        }
        XCTAssertThrowsError(try AxisCodes("RASX"))
        XCTAssertEqual(try AxisCodes("sar").description, "SAR")
        var o = PhantomOptions()
        o.organScale = 0.1
        o.kidneyHU = .nan
        o.bowelHU = 2000
        o.obliqueDegrees = 60
        XCTAssertEqual(
            o.problems,
            [
                "--organ-scale must be in [0.25, 2] (a linear size factor; 0.5 halves the organs), got 0.1",
                "--oblique-degrees must be in [-45, 45] (a rotation about the superior axis), got 60.0",
                "--kidney-hu must be in [-1000, 1500] HU, got nan",
                "--bowel-hu must be in [-1000, 1500] HU, got 2000.0",
            ])
    }
}

/// Volumes (mm³) of the spleen, the pancreas and the kidneys (without the sinus) as shapes, sampled every
/// `step` mm over their boxes in the body frame (no warp, no neighbours).
func organShapeVolumes(_ a: Anatomy, step: Double) -> [Double] {
    func count(_ lo: V3, _ hi: V3, _ inside: (V3) -> Bool) -> Double {
        var n = 0
        var z = lo.z
        while z <= hi.z {
            var y = lo.y
            while y <= hi.y {
                var x = lo.x
                while x <= hi.x {
                    if inside(V3(x, y, z)) { n += 1 }
                    x += step
                }
                y += step
            }
            z += step
        }
        return Double(n) * step * step * step
    }
    let spleen = count(a.spleen.lo, a.spleen.hi) { p in
        a.spleen.sdf(p) + a.spleenLobe * a.texture(V3(p.x * 0.5, p.y * 0.5, p.z * 0.5)) < 0
    }
    let pancreas = count(a.pancreas.lo, a.pancreas.hi) { p in
        a.pancreas.sdf(p).0 + a.pancreasLobe * a.texture(p * 1.3) < 0
    }
    var kidney = 0.0
    for n in 0..<2 {
        kidney += count(a.kidneys[n].lo, a.kidneys[n].hi) { p in a.kidneys[n].sdf(p) < 0 && !(a.sinus[n].sdf(p) < 0) }
    }
    return [spleen, pancreas, kidney]
}

/// The knobs `attunet experiment transfer`'s target cohort uses: fixed spacing, fixed noise, and a label set
/// with only the pancreas.
final class PhantomSiteKnobTests: XCTestCase {
    /// Only the pancreas labelled: the label map is the default's with pancreas (2) as 1 and every other organ
    /// 0, voxel for voxel, and the image is the same; dataset.json names the two classes.
    func testPancreasOnlyLabelsRelabelTheSamePatient() throws {
        var o = PhantomOptions()
        o.labels = .pancreas
        let plain = Phantom.generate(seed: 5, index: 1, scale: 0.4)
        let site = Phantom.generate(seed: 5, index: 1, scale: 0.4, options: o)
        XCTAssertEqual(site.image, plain.image)
        XCTAssertEqual(site.label, plain.label.map { $0 == 2 ? 1 : 0 })
        XCTAssertGreaterThan(site.label.filter { $0 == 1 }.count, 100)
        XCTAssertEqual(PhantomLabels.pancreas.classNames, ["background", "pancreas"])
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        try Phantom.writeDataset(to: dir.path, count: 1, seed: 5, scale: 0.3, options: o, threads: 1)
        let json =
            try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("dataset.json")))
            as! [String: Any]
        XCTAssertEqual(json["labels"] as? [String: String], ["0": "background", "1": "pancreas"])
        XCTAssertTrue((json["description"] as! String).contains("labels pancreas"), "\(json["description"]!)")
    }

    /// A fixed spacing replaces the draw (the grid and affine follow it, the field of view stays), and a fixed
    /// noise level scales the same noise draws: the difference of two noise levels is noise of their difference.
    func testFixedSpacingAndNoise() {
        var o = PhantomOptions()
        o.inPlaneSpacing = 1.2
        o.sliceThickness = 5
        let plain = Phantom.generate(seed: 5, index: 0, scale: 0.5)
        let site = Phantom.generate(seed: 5, index: 0, scale: 0.5, options: o)
        XCTAssertEqual(site.spacing.x, 2.4, accuracy: 1e-12)
        XCTAssertEqual(site.spacing.z, 10, accuracy: 1e-12)
        XCTAssertEqual(abs(site.affine[0]), 2.4, accuracy: 1e-12)
        XCTAssertEqual(site.affine[10], 10, accuracy: 1e-12)
        // The same field of view in mm, within a voxel.
        XCTAssertEqual(
            Double(site.dim.x) * site.spacing.x, Double(plain.dim.x) * plain.spacing.x,
            accuracy: 2 * max(site.spacing.x, plain.spacing.x))
        XCTAssertEqual(
            Double(site.dim.z) * site.spacing.z, Double(plain.dim.z) * plain.spacing.z, accuracy: 2 * site.spacing.z)
        var quiet = PhantomOptions()
        var loud = PhantomOptions()
        quiet.noiseHU = 0
        loud.noiseHU = 40
        let a = Phantom.generate(seed: 5, index: 0, scale: 0.4, options: quiet)
        let b = Phantom.generate(seed: 5, index: 0, scale: 0.4, options: loud)
        // Inside the body (air is clipped at -1024 HU, which would hide part of the noise).
        let d = zip(b.image, a.image).filter { $0.1 > -900 && $0.1 < 1000 }.map { Double($0.0 - $0.1) }
        let mean = d.reduce(0, +) / Double(d.count)
        let std = (d.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(d.count)).squareRoot()
        XCTAssertEqual(std, 40, accuracy: 2, "noise 40 HU minus noise 0: the noise itself")
        XCTAssertEqual(mean, 0, accuracy: 1)
        var bad = PhantomOptions()
        bad.sliceThickness = 0.1
        bad.noiseHU = -3
        bad.inPlaneSpacing = .nan
        XCTAssertEqual(bad.problems.count, 3, "\(bad.problems)")
        XCTAssertTrue(
            bad.problems.contains { $0.contains("--slice-thickness must be in [0.3, 6] mm, got 0.1") },
            "\(bad.problems)")
        XCTAssertTrue(bad.problems.contains { $0.contains("--noise-hu must be in [0, 200] HU") }, "\(bad.problems)")
    }
}
