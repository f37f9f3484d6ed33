import CNIfTI
import Foundation
import Support

/// A 3D NIfTI volume in memory, voxels as float32, x fastest (our [Z][Y][X] layout).
public struct NIfTIVolume: Sendable {
    /// Voxel counts along x, y, z (NIfTI's i, j, k).
    public var nx: Int, ny: Int, nz: Int
    /// Voxel spacing in mm (x, y, z), from the voxel-to-world matrix's column norms.
    public var spacing: (x: Double, y: Double, z: Double)
    /// Voxel (i, j, k, 1) to world (mm), row-major 4x4: sform if present, else qform, else pixdim scaling.
    public var affine: [Double]
    /// The NIfTI datatype code the file stored (4 int16, 16 float32, 2 uint8, ...).
    public var datatype: Int32
    public var voxels: [Float]
    /// The qform and sform codes (NIfTI's `NIFTI_XFORM_*`: 0 unknown, 1 scanner anatomy, 2 aligned, 3 Talairach,
    /// 4 MNI): as read from a file, 1 and 1 for a new volume. `write` stores `affine` as both the qform and the
    /// sform, with these codes.
    public var qformCode: Int32 = 1, sformCode: Int32 = 1

    public init(nx: Int, ny: Int, nz: Int, affine: [Double], voxels: [Float], datatype: Int32 = 16) {
        precondition(voxels.count == nx * ny * nz && affine.count == 16)
        self.nx = nx
        self.ny = ny
        self.nz = nz
        self.affine = affine
        self.voxels = voxels
        self.datatype = datatype
        spacing = NIfTIVolume.columnNorms(affine)
    }

    static func columnNorms(_ a: [Double]) -> (x: Double, y: Double, z: Double) {
        func norm(_ c: Int) -> Double { (0..<3).map { a[$0 * 4 + c] * a[$0 * 4 + c] }.reduce(0, +).squareRoot() }
        return (norm(0), norm(1), norm(2))
    }

    /// The first entry (row, column) of the top three rows of two row-major 4x4 voxel-to-world matrices that
    /// differ by more than the tolerance of one geometry, or nil: 0.05 mm on the translation column, and
    /// 10⁻³·max(1, |a|) on the rotation/scale entries (`attunet prepare` compares an image's and its label's
    /// affines with it; `Evaluation`'s geometry check a prediction's and its reference's).
    public static func affineMismatch(_ a: [Double], _ b: [Double]) -> (row: Int, column: Int)? {
        precondition(a.count == 16 && b.count == 16)
        for r in 0..<3 {
            for col in 0..<4 {
                let x = a[r * 4 + col]
                let y = b[r * 4 + col]
                let tol = col == 3 ? 0.05 : 1e-3 * max(1, abs(x))
                if !(abs(x - y) <= tol) { return (r, col) }
            }
        }
        return nil
    }

    /// Whether nifticlib is linked and answers (`attunet doctor`).
    public static var isLibraryUsable: Bool { cnifti_datatype_size(16) == 4 }

    /// Reads a `.nii` / `.nii.gz` file; 4D files with a single volume are accepted, other 4D files are refused.
    public static func read(_ path: String) throws -> NIfTIVolume {
        try precheck(path)
        var hdr = cnifti_header()
        var ptr: UnsafeMutablePointer<Float>? = nil
        var err = [CChar](repeating: 0, count: 1024)
        if cnifti_read_f32(path, &hdr, &ptr, &err, err.count) != 0 {
            throw AttunetError(err.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
        }
        defer { cnifti_free(ptr) }
        let d = withUnsafeBytes(of: hdr.dim) { Array($0.bindMemory(to: Int64.self)) }
        if d[3...].contains(where: { $0 > 1 }) {
            throw AttunetError(
                "\(path): expected a 3D volume, got dimensions \(d.prefix(Int(hdr.ndim)).map(String.init).joined(separator: "x"))"
            )
        }
        let (nx, ny, nz) = (Int(d[0]), Int(d[1]), Int(d[2]))
        let aff = withUnsafeBytes(of: hdr.affine) { Array($0.bindMemory(to: Float.self)).map(Double.init) }
        let voxels = Array(UnsafeBufferPointer(start: ptr, count: nx * ny * nz))
        var v = NIfTIVolume(nx: nx, ny: ny, nz: nz, affine: aff, voxels: voxels, datatype: Int32(hdr.datatype))
        v.qformCode = Int32(hdr.qform_code)
        v.sformCode = Int32(hdr.sform_code)
        return v
    }

    /// The geometry of a NIfTI file, from its header alone.
    public struct Geometry: Sendable, Equatable {
        /// Voxel counts along x, y, z.
        public var nx: Int, ny: Int, nz: Int
        /// Voxel-to-world affine, row-major 4x4, chosen as `read` chooses it (sform, else qform, else pixdim).
        public var affine: [Double]
        public var qformCode: Int32, sformCode: Int32
    }

    /// Reads only the header of a `.nii` / `.nii.gz` file (cheap: no voxels are read).
    public static func readGeometry(_ path: String) throws -> Geometry {
        try precheck(path)
        var hdr = cnifti_header()
        var err = [CChar](repeating: 0, count: 1024)
        if cnifti_read_header(path, &hdr, &err, err.count) != 0 {
            throw AttunetError(err.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
        }
        let d = withUnsafeBytes(of: hdr.dim) { Array($0.bindMemory(to: Int64.self)) }
        let aff = withUnsafeBytes(of: hdr.affine) { Array($0.bindMemory(to: Float.self)).map(Double.init) }
        return Geometry(
            nx: Int(d[0]), ny: Int(d[1]), nz: Int(d[2]), affine: aff,
            qformCode: Int32(hdr.qform_code), sformCode: Int32(hdr.sform_code))
    }

    /// Cheap checks before nifticlib sees the file (it prints its own "** ERROR" lines for some corrupt
    /// headers): `.gz` files must start with the gzip magic, `.nii` files must carry a NIfTI-1 header
    /// (sizeof_hdr 348 in either byte order, magic "n+1" or "ni1", dim[0] in 1...7).
    static func precheck(_ path: String) throws {
        guard let h = FileHandle(forReadingAtPath: path) else { return }  // nifticlib reports missing files
        defer { try? h.close() }
        let head = [UInt8]((try? h.read(upToCount: 348)) ?? Data())
        if path.hasSuffix(".gz") {
            if head.count >= 2 && !(head[0] == 0x1F && head[1] == 0x8B) {
                throw AttunetError("\(path): not a gzip-compressed file (corrupt, or not NIfTI)")
            }
            return
        }
        guard head.count == 348 else { return }  // nifticlib reports short files
        let le = head[0] == 0x5C && head[1] == 0x01 && head[2] == 0 && head[3] == 0
        let be = head[0] == 0 && head[1] == 0 && head[2] == 0x01 && head[3] == 0x5C
        let magic = (head[344] == 0x6E && (head[345] == 0x2B || head[345] == 0x69) && head[346] == 0x31)
        let dim0 = le ? Int(head[40]) | Int(head[41]) << 8 : Int(head[40]) << 8 | Int(head[41])
        if !(le || be) || !magic || !(1...7).contains(dim0) {
            throw AttunetError("\(path): not a NIfTI-1 file (bad header)")
        }
    }

    /// Writes `channels` float32 volumes of `nx`·`ny`·`nz` voxels, one after the other in `voxels` (x fastest,
    /// then y, z, channel), as one 4-D NIfTI image: dim = (nx, ny, nz, channels), the channel the 4th axis (as
    /// nibabel reads it: `img.get_fdata()[x, y, z, c]`), with `affine` and the codes as ``write(_:as:)``.
    public static func write4D(
        _ path: String, nx: Int, ny: Int, nz: Int, channels: Int, affine: [Double],
        voxels: [Float], qformCode: Int32 = 1, sformCode: Int32 = 1
    ) throws {
        precondition(voxels.count == nx * ny * nz * channels && affine.count == 16)
        try AtomicFile.write(path) { tmp in
            var err = [CChar](repeating: 0, count: 1024)
            let aff = affine.map(Float.init)
            let rc = voxels.withUnsafeBytes {
                cnifti_write4d(
                    tmp, Int64(nx), Int64(ny), Int64(nz), Int64(channels), StorageType.float32.rawValue,
                    $0.baseAddress, aff, qformCode, sformCode, &err, err.count)
            }
            if rc != 0 {
                let message = err.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
                throw AttunetError(message.replacingOccurrences(of: tmp, with: path))
            }
        }
    }

    /// Datatypes `write` can store.
    public enum StorageType: Int32, Sendable {
        case uint8 = 2
        case int16 = 4
        case float32 = 16
    }

    /// Writes the volume (`.nii` or `.nii.gz`), converting voxels to `type` (rounded and clamped for integers).
    public func write(_ path: String, as type: StorageType = .float32) throws {
        try AtomicFile.write(path) { tmp in
            var err = [CChar](repeating: 0, count: 1024)
            let aff = affine.map(Float.init)
            let rc: Int32
            switch type {
            case .float32:
                rc = voxels.withUnsafeBytes {
                    cnifti_write3d(
                        tmp, Int64(nx), Int64(ny), Int64(nz), type.rawValue, $0.baseAddress, aff, qformCode, sformCode,
                        &err, err.count)
                }
            case .int16:
                let v = voxels.map { Int16(clamping: Int(($0).rounded())) }
                rc = v.withUnsafeBytes {
                    cnifti_write3d(
                        tmp, Int64(nx), Int64(ny), Int64(nz), type.rawValue, $0.baseAddress, aff, qformCode, sformCode,
                        &err, err.count)
                }
            case .uint8:
                let v = voxels.map { UInt8(clamping: Int(($0).rounded())) }
                rc = v.withUnsafeBytes {
                    cnifti_write3d(
                        tmp, Int64(nx), Int64(ny), Int64(nz), type.rawValue, $0.baseAddress, aff, qformCode, sformCode,
                        &err, err.count)
                }
            }
            if rc != 0 {
                let message = err.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
                throw AttunetError(message.replacingOccurrences(of: tmp, with: path))
            }
        }
    }
}
