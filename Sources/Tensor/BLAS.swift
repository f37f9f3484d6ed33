import CBLAS
import Foundation

/// Row-major single-precision GEMM through OpenBLAS: C = alpha * op(A) * op(B) + beta * C.
@inline(__always)
public func sgemm(
    transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
    alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int,
    beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
) {
    cblas_sgemm(
        CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
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
    public static let slowCores: Set<String> = [
        "Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom",
        "Bobcat", "Opteron", "Opteron(SSE3)", "Barcelona", "Katmai", "Coppermine",
        "Northwood", "Banias", "Athlon", "Sandybridge", "Bulldozer", "Piledriver",
    ]
}

extension BLASInfo {
    /// The sgemm rate in GFLOP/s on an n x n x n product with OpenBLAS's current thread count: the best of
    /// `reps` timed runs after one warm-up. On one thread, the practical single-core ceiling that convolution
    /// rates are judged against (`attunet bench`, `attunet doctor`).
    public static func sgemmRate(n: Int, reps: Int) -> Double {
        let a = Tensor([n, n])
        let b = Tensor([n, n])
        let c = Tensor([n, n])
        Tensor.fillDeterministic(a.pointer, count: n * n, seed: 1, scale: 1)
        Tensor.fillDeterministic(b.pointer, count: n * n, seed: 2, scale: 1)
        let t = bestTime(of: reps) {
            sgemm(m: n, n: n, k: n, a: a.pointer, lda: n, b: b.pointer, ldb: n, c: c.pointer, ldc: n)
        }
        return 2 * Double(n * n * n) / t / 1e9
    }
}

/// The best wall time in seconds of `reps` runs of `body` after one untimed warm-up (first touch of buffers).
public func bestTime(of reps: Int, _ body: () -> Void) -> Double {
    body()
    var t = Double.infinity
    for _ in 0..<max(1, reps) {
        let t0 = DispatchTime.now().uptimeNanoseconds
        body()
        t = min(t, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
    }
    return t
}
