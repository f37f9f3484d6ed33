import Foundation
import Support
import Tensor

/// The voxel order of a volume as three axis codes, nibabel's `aff2axcodes` convention: the code of voxel axis
/// i, j, k is the world direction in which that index increases (`R`ight/`L`eft, `A`nterior/`P`osterior,
/// `S`uperior/`I`nferior), e.g. `RAS` or `LPS`; one code of each pair, in any order: 48 orders.
public struct AxisCodes: Sendable, Equatable, CustomStringConvertible {
    /// For each voxel axis, the world (RAS) axis it runs along (0 x, 1 y, 2 z) and its sign (+1 towards R, A, S).
    public let worldAxis: [Int], sign: [Int]

    /// attunet's phantoms' own order (i to the patient's left, j posterior, k superior; affine diag(-sx, -sy, sz)).
    public static let lps = try! AxisCodes("LPS")

    /// Parses three codes (case-insensitive); the error says what is wrong.
    public init(_ text: String) throws {
        let codes = Array(text.uppercased())
        let table: [Character: (Int, Int)] = [
            "R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1),
        ]
        let parsed = codes.compactMap { table[$0] }
        guard codes.count == 3, parsed.count == 3, Set(parsed.map(\.0)).count == 3 else {
            throw AttunetError(
                "'\(text)' is not a voxel order: expected three axis codes, one each of R/L, A/P and S/I, in any order (e.g. RAS, LPS, LAS, RPI, SAR)"
            )
        }
        worldAxis = parsed.map(\.0)
        sign = parsed.map(\.1)
    }

    public var description: String {
        zip(worldAxis, sign).map { a, s in ["LR", "PA", "IS"][a].map { $0 }[s > 0 ? 1 : 0] }.map(String.init).joined()
    }
}

/// The organs a phantom cohort labels: all three of the paper's CT-150 set, or only the pancreas (as TCIA's
/// Pancreas-CT, whose other organs are in the image but unlabelled).
public enum PhantomLabels: String, Sendable, Equatable, CaseIterable {
    /// 1 spleen, 2 pancreas, 3 kidney.
    case all
    /// 1 pancreas; the spleen and kidneys are background.
    case pancreas

    /// The class names in label order, background first.
    public var classNames: [String] {
        switch self {
        case .all: PhantomCase.classNames
        case .pancreas: ["background", "pancreas"]
        }
    }

    /// The label value of each of `PhantomCase.classNames`' labels in this set (0: unlabelled).
    var relabel: [UInt8] {
        switch self {
        case .all: [0, 1, 2, 3]
        case .pancreas: [0, 0, 1, 0]
        }
    }
}

/// The knobs of `attunet synth`: a phantom cohort unlike attunet's own. Each is at its default in a plain
/// `PhantomOptions()`, and then the phantoms are bit for bit those attunet has always made.
public struct PhantomOptions: Sendable, Equatable {
    /// The voxel order of the written volumes (default LPS, attunet's own). The anatomy in world space does not
    /// change: the volume and its affine are reordered together, voxel for voxel.
    public var orientation: AxisCodes = .lps
    /// Rotation of the voxel grid about the superior axis in degrees (right-handed in RAS world coordinates,
    /// from +x towards +y), |N| ≤ 45; the grid grows in-plane to keep the whole field of view, the anatomy in
    /// world space stays (resampled at the rotated voxels, so not voxel for voxel). Default 0.
    public var obliqueDegrees: Double = 0
    /// Linear size factor of the three labelled organs (spleen, pancreas, kidneys; volumes scale by its cube),
    /// each about its own centre; the rest of the anatomy is unchanged. Default 1.
    public var organScale: Double = 1
    /// Fixed tissue levels in HU instead of each case's draw (nil: drawn, the default). Texture and noise
    /// still vary around them. Defaults as drawn: spleen 105-130, pancreas 75-95 (its mid-length level; it
    /// falls 10 HU from head to tail, 80-100 at the head), kidney cortex 150-200 (the medulla 20-110 HU below it keeps its drawn
    /// offset), liver 95-120, bowel loops 25-55 (the duodenum, 45-70, keeps its drawn offset from them).
    public var spleenHU: Double? = nil, pancreasHU: Double? = nil, kidneyHU: Double? = nil
    public var liverHU: Double? = nil, bowelHU: Double? = nil
    /// In-plane voxel spacing in mm for every case instead of the 1.4-2.2 mm draw (nil: drawn).
    public var inPlaneSpacing: Double? = nil
    /// Slice spacing (thickness) in mm for every case instead of the 2.0-3.0 mm draw (nil: drawn).
    public var sliceThickness: Double? = nil
    /// Image noise (standard deviation in HU) for every case instead of the 8-20 HU draw (nil: drawn).
    public var noiseHU: Double? = nil
    /// The organs labelled in the label maps (default all three). The image is the same whatever is labelled.
    public var labels: PhantomLabels = .all

    public init() {}

    /// The allowed ranges: organ scale 0.25-2, HU levels -1000-1500, spacings 0.3-6 mm, noise 0-200 HU.
    public static let organScaleRange = 0.25...2.0, huRange = -1000.0...1500.0
    public static let spacingRange = 0.3...6.0, noiseRange = 0.0...200.0

    /// One line per option out of range, naming the command-line option.
    public var problems: [String] {
        var p: [String] = []
        if !(organScale.isFinite && Self.organScaleRange.contains(organScale)) {
            p.append(
                "--organ-scale must be in [0.25, 2] (a linear size factor; 0.5 halves the organs), got \(organScale)")
        }
        if !(obliqueDegrees.isFinite && abs(obliqueDegrees) <= 45) {
            p.append(
                "--oblique-degrees must be in [-45, 45] (a rotation about the superior axis), got \(obliqueDegrees)")
        }
        for (name, v) in huLevels where !(v.isFinite && Self.huRange.contains(v)) {
            p.append("--\(name)-hu must be in [-1000, 1500] HU, got \(v)")
        }
        for (name, v) in [("in-plane-spacing", inPlaneSpacing), ("slice-thickness", sliceThickness)] {
            if let v, !(v.isFinite && Self.spacingRange.contains(v)) {
                p.append("--\(name) must be in [0.3, 6] mm, got \(v)")
            }
        }
        if let v = noiseHU, !(v.isFinite && Self.noiseRange.contains(v)) {
            p.append("--noise-hu must be in [0, 200] HU (a standard deviation), got \(v)")
        }
        return p
    }

    /// The fixed HU levels given, in a fixed order.
    var huLevels: [(String, Double)] {
        [("spleen", spleenHU), ("pancreas", pancreasHU), ("kidney", kidneyHU), ("liver", liverHU), ("bowel", bowelHU)]
            .compactMap { n, v in v.map { (n, $0) } }
    }

    public var isDefault: Bool { self == PhantomOptions() }

    /// The options that differ from their defaults, e.g. `orientation RAS, organ scale 0.5, spleen 110 HU`
    /// (`dataset.json` records it), or `defaults`.
    public var summary: String {
        var parts: [String] = []
        if orientation != .lps { parts.append("orientation \(orientation)") }
        if obliqueDegrees != 0 { parts.append("oblique \(obliqueDegrees) degrees") }
        if organScale != 1 { parts.append("organ scale \(organScale)") }
        for (n, v) in huLevels { parts.append("\(n) \(v) HU") }
        if let v = inPlaneSpacing { parts.append("in-plane spacing \(v) mm") }
        if let v = sliceThickness { parts.append("slice thickness \(v) mm") }
        if let v = noiseHU { parts.append("noise \(v) HU") }
        if labels != .all { parts.append("labels \(labels.rawValue)") }
        return parts.isEmpty ? "defaults" : parts.joined(separator: ", ")
    }
}

extension PhantomCase {
    /// The same case in another voxel order: voxels and affine reordered together, so every voxel keeps its
    /// world position and value. For a case as `Phantom.generate` makes it (LPS, or LPS rotated about z by
    /// at most 45°: voxel axes i, j, k closest to L, P, S).
    func reoriented(to o: AxisCodes) -> PhantomCase {
        let old = [dim.x, dim.y, dim.z]
        let oldStride = [1, dim.x, dim.x * dim.y]
        let oldSpacing = [spacing.x, spacing.y, spacing.z]
        var src = [0, 0, 0]
        var flip = [false, false, false]
        for n in 0..<3 {
            src[n] = o.worldAxis[n]
            flip[n] = o.sign[n] != AxisCodes.lps.sign[src[n]]
        }
        let nd = src.map { old[$0] }
        var aff = affine
        var base = 0
        var stride = [0, 0, 0]
        for n in 0..<3 {
            let m = src[n]
            let f = flip[n] ? -1.0 : 1.0
            for r in 0..<3 { aff[r * 4 + n] = affine[r * 4 + m] * f }
            stride[n] = oldStride[m] * (flip[n] ? -1 : 1)
            if flip[n] {
                base += (old[m] - 1) * oldStride[m]
                for r in 0..<3 { aff[r * 4 + 3] += affine[r * 4 + m] * Double(old[m] - 1) }
            }
        }
        let newDim = Dim3(z: nd[2], y: nd[1], x: nd[0])
        var img = [Float](repeating: 0, count: image.count)
        var lab = [UInt8](repeating: 0, count: label.count)
        var t = 0
        for c in 0..<nd[2] {
            for b in 0..<nd[1] {
                var s = base + b * stride[1] + c * stride[2]
                for _ in 0..<nd[0] {
                    img[t] = image[s]
                    lab[t] = label[s]
                    t += 1
                    s += stride[0]
                }
            }
        }
        return PhantomCase(
            dim: newDim, spacing: (oldSpacing[src[0]], oldSpacing[src[1]], oldSpacing[src[2]]),
            affine: aff, image: img, label: lab)
    }
}
