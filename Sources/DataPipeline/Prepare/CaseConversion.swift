import Foundation
import Support
import Tensor

/// How `CasePreparer` converts cases.
public struct PrepareOptions: Sendable {
    /// Target isotropic spacing in mm (the paper: 2.0).
    public var spacing: Double = 2.0
    /// Gaussian pre-blur sigma in mm before image resampling (0 = none; the CT-150 script used 0.5, TCIA 0.75).
    public var blurSigma: Double = 0.5
    /// Source label value -> stored label value; values not listed become 0. nil keeps labels as they are.
    public var labelMap: [Int: Int]? = nil
    /// Class names, index = stored label value ("background" first).
    public var classNames: [String] = PhantomCase.classNames
    public var modality: String = "CT"
    /// Image storage: nil = int16 when every source voxel is an integer within int16 range, else float32.
    public var storeFloat: Bool? = nil
    /// Chunk edge (voxels) and deflate level (nil = no compression).
    public var chunk: Int = 32
    public var deflate: Int? = 1
    /// Worker threads converting cases.
    public var threads: Int = ProcessInfo.processInfo.activeProcessorCount
    public init() {}
}

/// One converted case, ready to store.
public struct PreparedCase: Sendable {
    public var id: String
    public var dim: Dim3
    public var image: [Float]
    public var label: [UInt8]
    public var storeFloat: Bool
    public var spacing: (x: Double, y: Double, z: Double)
    public var affine: [Double]
    public var originalShape: [Int]  // x, y, z
    public var originalSpacing: [Double]  // x, y, z
    public var originalAffine: [Double]
    public var sourceImage: String, sourceLabel: String
    /// min, max, mean, std of the whole stored image.
    public var stats: [Double]
    /// Voxels per class.
    public var classVoxels: [Int64]
    /// A deterministic sample of foreground intensities (for the dataset fingerprint).
    public var foregroundSample: [Float]
    /// Up to `maxLocations` voxels per foreground class as (class, z, y, x) rows.
    public var foregroundLocations: [Int32]
}

/// An image resampled as `prepare` resamples it (``CasePreparer/prepareImage(_:path:spacing:blurSigma:modality:storeFloat:)``).
public struct PreparedImage: Sendable {
    /// `[Z][Y][X]` on ``grid``'s target shape.
    public var image: [Float]
    public var grid: ResampleGrid
    /// Whether the values are kept as float32 (else rounded to integers in the int16 range).
    public var storeFloat: Bool
    /// min, max, mean, population std of ``image`` (the store's `intensity_stats`).
    public var stats: [Double]
}

/// Converts input cases into the case store: per-case checks and resampling here, the whole run in
/// `CasePreparer.run`.
public enum CasePreparer {
    /// Reads, checks and resamples one case. Every bad input throws an error whose one line names the file.
    public static func convert(_ c: CaseFiles, options o: PrepareOptions) throws -> PreparedCase {
        guard let labelPath = c.label else {
            throw AttunetError("\(c.image): no label file for this image")
        }
        let img: NIfTIVolume
        let lab: NIfTIVolume
        do { img = try NIfTIVolume.read(c.image) } catch {
            throw problem(c.image, AttunetError.message(of: error, strippingPath: c.image))
        }
        do { lab = try NIfTIVolume.read(labelPath) } catch {
            throw problem(labelPath, AttunetError.message(of: error, strippingPath: labelPath))
        }
        let dims = [img.nx, img.ny, img.nz]
        if img.voxels.isEmpty { throw problem(c.image, "empty volume (no voxels)") }
        if [lab.nx, lab.ny, lab.nz] != dims {
            throw problem(
                labelPath,
                "label shape \(lab.nx)x\(lab.ny)x\(lab.nz) differs from image shape \(img.nx)x\(img.ny)x\(img.nz)")
        }
        let sp = img.spacing
        if ![sp.x, sp.y, sp.z].allSatisfy({ $0.isFinite && $0 > 1e-6 }) {
            throw problem(c.image, "invalid voxel spacing \(fmt(sp.x)) x \(fmt(sp.y)) x \(fmt(sp.z)) mm")
        }
        if let (r, col) = NIfTIVolume.affineMismatch(img.affine, lab.affine) {
            let a = img.affine[r * 4 + col]
            let b = lab.affine[r * 4 + col]
            throw problem(
                labelPath,
                "label geometry differs from the image (affine row \(r) column \(col): \(fmt(b)) vs \(fmt(a)))")
        }
        let range = try checkImage(img, path: c.image, modality: o.modality)
        // Labels: integers, remapped, within the declared classes.
        let nClasses = o.classNames.count
        var counts = [Int: Int]()
        var labels = [UInt8](repeating: 0, count: lab.voxels.count)
        for (i, v) in lab.voxels.enumerated() {
            guard v.isFinite, v == v.rounded(), abs(v) < 1e9 else {
                throw problem(labelPath, "label has a non-integer value (\(v))")
            }
            var k = Int(v)
            if let m = o.labelMap { k = m[k] ?? 0 }
            if k < 0 || k >= nClasses {
                counts[k, default: 0] += 1
                continue
            }
            labels[i] = UInt8(k)
        }
        if !counts.isEmpty {
            let list = counts.keys.sorted().prefix(8).map { "\($0) (\(counts[$0]!) voxels)" }.joined(separator: ", ")
            throw problem(labelPath, "label values outside the declared classes 0-\(nClasses - 1): \(list)")
        }
        if !labels.contains(where: { $0 != 0 }) {
            throw problem(labelPath, "empty label (no foreground voxels)")
        }
        // Resample: the image as prediction resamples it, the label by nearest neighbour on the same grid.
        let prepared = resample(
            img, range: range, spacing: o.spacing, blurSigma: o.blurSigma, storeFloat: o.storeFloat)
        let image = prepared.image
        let grid = prepared.grid
        let storeFloat = prepared.storeFloat
        let label = grid.isIdentity ? labels : Resample.resampleNearest(labels, grid: grid, fill: 0)
        // Class counts, foreground sample and locations.
        var classVoxels = [Int64](repeating: 0, count: nClasses)
        for i in label.indices { classVoxels[Int(label[i])] += 1 }
        let fgCount = image.count - Int(classVoxels[0])
        var sample: [Float] = []
        let strideFG = max(1, fgCount / 20_000)
        var seen = 0
        var locations: [Int32] = []
        var perClassSeen = [Int](repeating: 0, count: nClasses)
        let perClassStride = classVoxels.map { max(1, Int($0) / CaseStoreFormat.maxLocations) }
        let to = grid.to
        for i in image.indices where label[i] != 0 {
            if seen % strideFG == 0 { sample.append(image[i]) }
            seen += 1
            let k = Int(label[i])
            if perClassSeen[k] % perClassStride[k] == 0 {
                locations += [Int32(k), Int32(i / (to.y * to.x)), Int32((i / to.x) % to.y), Int32(i % to.x)]
            }
            perClassSeen[k] += 1
        }
        return PreparedCase(
            id: c.id, dim: to, image: image, label: label, storeFloat: storeFloat,
            spacing: (o.spacing, o.spacing, o.spacing), affine: grid.affine(source: img.affine),
            originalShape: dims, originalSpacing: [sp.x, sp.y, sp.z], originalAffine: img.affine,
            sourceImage: c.image, sourceLabel: labelPath, stats: prepared.stats,
            classVoxels: classVoxels, foregroundSample: sample, foregroundLocations: locations)
    }

    /// The checks of an image's voxels: every value finite, CT within ±``ctLimit`` HU, not constant. Errors
    /// name `path`.
    @discardableResult
    public static func checkImage(_ img: NIfTIVolume, path: String, modality: String) throws -> VoxelRange {
        var bad = 0
        var lo = Float.infinity
        var hi = -Float.infinity
        var integral = true
        for v in img.voxels {
            if !v.isFinite {
                bad += 1
                continue
            }
            lo = min(lo, v)
            hi = max(hi, v)
            if integral && v != v.rounded() { integral = false }
        }
        if bad > 0 { throw problem(path, "\(bad) NaN or infinite voxel(s)") }
        if modality.uppercased() == "CT" && (lo < -Float(ctLimit) || hi > Float(ctLimit)) {
            throw problem(
                path,
                "intensities \(fmt(Double(lo))) to \(fmt(Double(hi))) after the header's scaling (scl_slope, scl_inter) are not CT Hounsfield units (expected within ±\(fmt(ctLimit))); check the header's scaling, or name the modality in dataset.json if this is not CT"
            )
        }
        if !(hi - lo > 1e-6) { throw problem(path, "empty volume (every voxel is \(fmt(Double(lo))))") }
        return VoxelRange(lo: lo, hi: hi, integral: integral)
    }

    /// What ``checkImage(_:path:modality:)`` found: the smallest and largest voxel and whether every voxel is an
    /// integer (which decides int16 storage and rounding).
    public struct VoxelRange: Sendable {
        public var lo: Float, hi: Float, integral: Bool
    }

    /// The image path of `prepare`, which prediction shares: the voxel checks (``checkImage(_:path:modality:)``),
    /// a Gaussian pre-blur of `blurSigma` mm when the spacing changes, trilinear resampling to the isotropic
    /// `spacing`, rounding when the values are kept as integers (`storeFloat` nil: when every source voxel is
    /// an integer in the int16 range), and the statistics of the result.
    public static func prepareImage(
        _ img: NIfTIVolume, path: String, spacing target: Double, blurSigma: Double,
        modality: String, storeFloat: Bool? = nil
    ) throws -> PreparedImage {
        if img.voxels.isEmpty { throw problem(path, "empty volume (no voxels)") }
        let sp = img.spacing
        if ![sp.x, sp.y, sp.z].allSatisfy({ $0.isFinite && $0 > 1e-6 }) {
            throw problem(path, "invalid voxel spacing \(fmt(sp.x)) x \(fmt(sp.y)) x \(fmt(sp.z)) mm")
        }
        guard target.isFinite && target > 0 else { throw problem(path, "target spacing \(target) mm is not positive") }
        let range = try checkImage(img, path: path, modality: modality)
        return resample(img, range: range, spacing: target, blurSigma: blurSigma, storeFloat: storeFloat)
    }

    /// The resampling half of ``prepareImage(_:path:spacing:blurSigma:modality:storeFloat:)``, for an image
    /// whose voxels and spacing were checked (`range` is what the check found).
    static func resample(
        _ img: NIfTIVolume, range: VoxelRange, spacing target: Double, blurSigma: Double, storeFloat: Bool?
    ) -> PreparedImage {
        let sp = img.spacing
        let dim = Dim3(z: img.nz, y: img.ny, x: img.nx)
        let grid = ResampleGrid(from: dim, spacing: sp, target: (target, target, target))
        var image = img.voxels
        if !grid.isIdentity {
            if blurSigma > 0 {
                Resample.gaussianBlur(&image, dim: dim, sigma: (blurSigma / sp.x, blurSigma / sp.y, blurSigma / sp.z))
            }
            image = Resample.resampleLinear(image, grid: grid)
        }
        let keepFloat = storeFloat ?? !(range.integral && range.lo >= -32768 && range.hi <= 32767)
        if !keepFloat { for i in image.indices { image[i] = image[i].rounded() } }
        var sum = 0.0
        var sum2 = 0.0
        var mn = Float.infinity
        var mx = -Float.infinity
        for v in image {
            sum += Double(v)
            sum2 += Double(v) * Double(v)
            mn = min(mn, v)
            mx = max(mx, v)
        }
        let n = Double(image.count)
        let mean = sum / n
        let std = max(sum2 / n - mean * mean, 0).squareRoot()
        return PreparedImage(
            image: image, grid: grid, storeFloat: keepFloat, stats: [Double(mn), Double(mx), mean, std])
    }

    /// The largest magnitude a CT voxel may have after scaling, in HU: air is -1000 and dense metal a few
    /// 10,000; beyond this the header's scl_slope/scl_inter (or the data type) is wrong, and the case is refused.
    public static let ctLimit = 1e5

    /// One line naming the file and the problem.
    static func problem(_ file: String, _ text: String) -> AttunetError { AttunetError("\(file): \(text)") }
    static func fmt(_ x: Double) -> String { String(format: "%.6g", x) }
}
