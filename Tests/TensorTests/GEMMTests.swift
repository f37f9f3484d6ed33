import Tensor
import XCTest

final class GEMMTests: XCTestCase {
    /// OpenBLAS sgemm against a naive double-precision triple loop, for every transpose combination and odd
    /// sizes, with alpha/beta and leading dimensions larger than the matrix width.
    func testSgemmMatchesNaiveLoop() {
        var rng = SystemRandomNumberGenerator()
        for (m, n, k) in [(1, 1, 1), (3, 5, 7), (17, 33, 9), (64, 31, 129), (16, 257, 27)] {
            for transA in [false, true] {
                for transB in [false, true] {
                    let lda = (transA ? m : k) + 3
                    let ldb = (transB ? k : n) + 1
                    let ldc = n + 2
                    let a = (0..<((transA ? k : m) * lda)).map { _ in Float.random(in: -1...1, using: &rng) }
                    let b = (0..<((transB ? n : k) * ldb)).map { _ in Float.random(in: -1...1, using: &rng) }
                    var c = (0..<(m * ldc)).map { _ in Float.random(in: -1...1, using: &rng) }
                    let c0 = c
                    let alpha: Float = 0.75
                    let beta: Float = -0.5
                    sgemm(
                        transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                        beta: beta, c: &c, ldc: ldc)
                    for i in 0..<m {
                        for j in 0..<n {
                            var acc = 0.0
                            for p in 0..<k {
                                let av = transA ? a[p * lda + i] : a[i * lda + p]
                                let bv = transB ? b[j * ldb + p] : b[p * ldb + j]
                                acc += Double(av) * Double(bv)
                            }
                            let want = Double(alpha) * acc + Double(beta) * Double(c0[i * ldc + j])
                            XCTAssertEqual(
                                Double(c[i * ldc + j]), want, accuracy: 1e-5 * Double(k).squareRoot() + 1e-6,
                                "m\(m) n\(n) k\(k) tA\(transA) tB\(transB) at (\(i),\(j))")
                        }
                        // Padding columns beyond n are never written.
                        for j in n..<ldc { XCTAssertEqual(c[i * ldc + j], c0[i * ldc + j]) }
                    }
                }
            }
        }
    }

    func testBLASReportsItsKernel() {
        XCTAssertFalse(BLASInfo.coreName.isEmpty)
        XCTAssertGreaterThanOrEqual(BLASInfo.threads, 1)
    }

    func testParallelForVisitsEveryIndexOnce() {
        let saved = Parallelism.threads
        defer { Parallelism.threads = saved }
        for threads in [1, 2, 3] {
            Parallelism.threads = threads
            let t = Tensor([1000])
            let p = UncheckedSendable(t.pointer)
            parallelFor(1000) { i in p.value[i] += Float(i) }
            XCTAssertEqual(t.array, (0..<1000).map(Float.init))
        }
    }
}
