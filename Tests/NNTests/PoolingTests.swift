import Tensor
import XCTest

@testable import NN

/// Naive 2×2×2 stride-2 max pooling with PyTorch's scan order (first max wins on ties): (values, arg-max
/// flat input index) per output voxel.
private func naivePool(_ x: [Float], _ s: [Int]) -> (values: [Float], argmax: [Int]) {
    let n = s[0]
    let c = s[1]
    let zi = s[2]
    let yi = s[3]
    let xi = s[4]
    let zo = zi / 2
    let yo = yi / 2
    let xo = xi / 2
    var values: [Float] = []
    var argmax: [Int] = []
    for b in 0..<n {
        for ch in 0..<c {
            for z in 0..<zo {
                for y in 0..<yo {
                    for xx in 0..<xo {
                        var best = -Float.infinity
                        var bestIndex = -1
                        for dz in 0..<2 {
                            for dy in 0..<2 {
                                for dx in 0..<2 {
                                    let idx = (((b * c + ch) * zi + 2 * z + dz) * yi + 2 * y + dy) * xi + 2 * xx + dx
                                    if bestIndex < 0 || x[idx] > best {
                                        best = x[idx]
                                        bestIndex = idx
                                    }
                                }
                            }
                        }
                        values.append(best)
                        argmax.append(bestIndex)
                    }
                }
            }
        }
    }
    return (values, argmax)
}

/// Distinct values 0.05 apart in a shuffled order: no ties, and every window's max beats the runner-up by
/// far more than the finite-difference step.
private func distinctValues(_ count: Int, seed: UInt64) -> [Float] {
    let keys = GradCheck.random(count, seed: seed)
    let order = (0..<count).sorted { keys[$0] < keys[$1] }
    var v = [Float](repeating: 0, count: count)
    for (rank, i) in order.enumerated() { v[i] = Float(rank) * 0.05 - Float(count) * 0.025 }
    return v
}

final class PoolingTests: XCTestCase {
    func testForwardMatchesNaiveOnOddSizes() {
        for s in [[2, 3, 5, 7, 9], [1, 2, 4, 6, 8], [2, 3, 3, 5, 7]] {
            let x = Tensor(s, GradCheck.random(s.reduce(1, *), seed: 21))
            let pool = MaxPool3d()
            let y = pool.forward(x)
            XCTAssertEqual(y.shape, [s[0], s[1], s[2] / 2, s[3] / 2, s[4] / 2])
            let ref = naivePool(x.array, s)
            XCTAssertEqual(y.array, ref.values, "shape \(s)")
        }
    }

    func testBackwardRoutesToArgmaxAndZerosElsewhere() {
        let s = [2, 3, 5, 7, 9]
        let x = Tensor(s, distinctValues(s.reduce(1, *), seed: 22))
        let pool = MaxPool3d()
        let y = pool.forward(x)
        let r = GradCheck.random(y.count, seed: 23)
        let dx = pool.backward(Tensor(y.shape, r)).array
        var expected = [Float](repeating: 0, count: x.count)
        for (o, i) in naivePool(x.array, s).argmax.enumerated() { expected[i] = r[o] }
        XCTAssertEqual(dx, expected)
    }

    func testGradientCheck() {
        let s = [2, 3, 3, 5, 7]
        let x = Tensor(s, distinctValues(s.reduce(1, *), seed: 24))
        let pool = MaxPool3d()
        let y = pool.forward(x)
        let r = GradCheck.random(y.count, seed: 25)
        let dx = pool.backward(Tensor(y.shape, r)).array
        GradCheck.check(
            "maxpool.dx", parameter: x.pointer, count: x.count, analytic: dx, relTol: 1e-4,
            samples: x.count
        ) { GradCheck.dot(pool.forward(x).data, r) }
    }

    func testTiesGoToFirstInScanOrder() {
        // All-equal input: every window's winner is its first element (dz = dy = dx = 0).
        let s = [1, 2, 4, 4, 4]
        let pool = MaxPool3d()
        let x = Tensor(s)
        x.fill(3)
        let y = pool.forward(x)
        XCTAssertTrue(y.array.allSatisfy { $0 == 3 })
        let dy = Tensor(y.shape)
        dy.fill(1)
        let dx = pool.backward(dy)
        for b in 0..<2 {
            for z in 0..<4 {
                for yy in 0..<4 {
                    for xx in 0..<4 {
                        let expected: Float = (z % 2 == 0 && yy % 2 == 0 && xx % 2 == 0) ? 1 : 0
                        XCTAssertEqual(dx.data[((b * 4 + z) * 4 + yy) * 4 + xx], expected)
                    }
                }
            }
        }

        // One window with a tie between scan positions 3 (z0,y1,x1) and 5 (z1,y0,x1): 3 wins.
        let w = Tensor([1, 1, 2, 2, 2], [0, 1, 2, 7, 4, 7, 6, 5])
        let p2 = MaxPool3d()
        XCTAssertEqual(p2.forward(w).array, [7])
        XCTAssertEqual(p2.backward(Tensor([1, 1, 1, 1, 1], [9])).array, [0, 0, 0, 9, 0, 0, 0, 0])
    }

    func testNaNPropagates() {
        let pool = MaxPool3d()
        let y = pool.forward(Tensor([1, 1, 2, 2, 2], [0, 1, .nan, 7, 4, 3, 6, 5])).array
        XCTAssertTrue(y[0].isNaN)
    }

    func testReshapeBetweenCalls() {
        let pool = MaxPool3d()
        let a = pool.forward(Tensor([1, 1, 4, 4, 4], GradCheck.random(64, seed: 26)))
        XCTAssertEqual(a.shape, [1, 1, 2, 2, 2])
        let s = [1, 2, 3, 3, 5]
        let x = Tensor(s, distinctValues(s.reduce(1, *), seed: 27))
        let b = pool.forward(x)
        XCTAssertEqual(b.array, naivePool(x.array, s).values)
        let dx = pool.backward(Tensor(b.shape, [Float](repeating: 1, count: b.count)))
        XCTAssertEqual(dx.shape, s)
        XCTAssertEqual(dx.array.reduce(0, +), Float(b.count))
    }

    func testThreadedMatchesNaive() {
        let saved = Parallelism.threads
        defer { Parallelism.threads = saved }
        Parallelism.threads = 3
        let s = [2, 3, 5, 7, 9]
        let x = Tensor(s, distinctValues(s.reduce(1, *), seed: 28))
        let pool = MaxPool3d()
        let y = pool.forward(x)
        let ref = naivePool(x.array, s)
        XCTAssertEqual(y.array, ref.values)
        let r = GradCheck.random(y.count, seed: 29)
        var expected = [Float](repeating: 0, count: x.count)
        for (o, i) in ref.argmax.enumerated() { expected[i] = r[o] }
        XCTAssertEqual(pool.backward(Tensor(y.shape, r)).array, expected)
    }
}
