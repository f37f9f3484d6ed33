import CBLAS

/// Row-major single-precision GEMM through OpenBLAS: C = alpha * op(A) * op(B) + beta * C.
@inline(__always)
public func sgemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                  alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                  b: UnsafePointer<Float>, ldb: Int,
                  beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// What OpenBLAS reports about itself.
public enum BLASInfo {
    /// The kernel family OpenBLAS picked ("SkylakeX", "Haswell", "Prescott", ...).
    public static var coreName: String { String(cString: openblas_get_corename()) }
    public static var config: String { String(cString: openblas_get_config()) }
    public static var threads: Int { Int(openblas_get_num_threads()) }
    public static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(n)) }

    /// Kernels that use neither AVX2 nor AVX-512: a 2-5x loss on a CPU that has them.
    public static let slowCores: Set<String> = ["Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom",
                                                "Bobcat", "Opteron", "Opteron(SSE3)", "Barcelona", "Katmai", "Coppermine",
                                                "Northwood", "Banias", "Athlon", "Sandybridge", "Bulldozer", "Piledriver"]
}
