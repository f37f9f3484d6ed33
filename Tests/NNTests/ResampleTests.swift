import Foundation
import Tensor
import XCTest

@testable import NN

/// Direct (non-separable) trilinear interpolation in Double: each output voxel is the weighted sum of its
/// eight corners, with the source coordinate of each axis from the textbook formula:
/// align_corners: src = d·(in−1)/(out−1); otherwise src = (d + ½)·r − ½ clamped at 0, r = 1/scaleFactor when one
/// is given, else in/out.
private func referenceTrilinear(
    _ x: [Float], _ s: [Int], out: Dim3, alignCorners: Bool,
    scaleFactors: [Double]? = nil
) -> [Double] {
    let ins = [s[2], s[3], s[4]]
    let outs = [out.z, out.y, out.x]
    // Per axis: for every output index, (i0, i1, w0, w1).
    var taps: [[(Int, Int, Double, Double)]] = []
    for a in 0..<3 {
        let n = ins[a]
        let m = outs[a]
        taps.append(
            (0..<m).map { d in
                if n == m { return (d, d, 1, 0) }
                var src: Double
                if alignCorners {
                    src = m > 1 ? Double(d) * Double(n - 1) / Double(m - 1) : 0
                } else {
                    let ratio = scaleFactors.map { 1 / $0[a] } ?? Double(n) / Double(m)
                    src = max((Double(d) + 0.5) * ratio - 0.5, 0)
                }
                let i0 = min(Int(src.rounded(.down)), n - 1)
                let i1 = min(i0 + 1, n - 1)
                let l = min(max(src - Double(i0), 0), 1)
                return (i0, i1, 1 - l, l)
            })
    }
    var result: [Double] = []
    for p in 0..<(s[0] * s[1]) {
        for z in 0..<out.z {
            for y in 0..<out.y {
                for xx in 0..<out.x {
                    let tz = taps[0][z]
                    let ty = taps[1][y]
                    let tx = taps[2][xx]
                    var v = 0.0
                    for (iz, wz) in [(tz.0, tz.2), (tz.1, tz.3)] {
                        for (iy, wy) in [(ty.0, ty.2), (ty.1, ty.3)] {
                            for (ix, wx) in [(tx.0, tx.2), (tx.1, tx.3)] {
                                let idx = ((p * s[2] + iz) * s[3] + iy) * s[4] + ix
                                v += wz * wy * wx * Double(x[idx])
                            }
                        }
                    }
                    result.append(v)
                }
            }
        }
    }
    return result
}

private let inShape = [2, 3, 3, 5, 7]

final class ResampleTests: XCTestCase {
    private func assertMatchesReference(
        _ layer: Trilinear, input s: [Int], expectedOut: Dim3,
        scaleFactors: [Double]? = nil, file: StaticString = #filePath,
        line: UInt = #line
    ) {
        let x = Tensor(s, GradCheck.random(s.reduce(1, *), seed: 31, lo: -2, hi: 2))
        let y = layer.forward(x)
        XCTAssertEqual(y.shape, [s[0], s[1], expectedOut.z, expectedOut.y, expectedOut.x], file: file, line: line)
        guard y.shape == [s[0], s[1], expectedOut.z, expectedOut.y, expectedOut.x] else { return }
        let ref = referenceTrilinear(
            x.array, s, out: expectedOut, alignCorners: layer.alignCorners,
            scaleFactors: scaleFactors)
        var worst = 0.0
        for i in 0..<ref.count { worst = max(worst, abs(Double(y.data[i]) - ref[i])) }
        XCTAssertLessThan(worst, 2e-6, "max |trilinear − reference| \(s) → \(expectedOut)", file: file, line: line)
    }

    /// <T x, r> == <x, Tᵀ r> (backward is the exact adjoint) and a finite-difference check.
    private func assertAdjointAndGradient(
        _ layer: Trilinear, input s: [Int], file: StaticString = #filePath,
        line: UInt = #line
    ) {
        let x = Tensor(s, GradCheck.random(s.reduce(1, *), seed: 32))
        let y = layer.forward(x)
        let r = GradCheck.random(y.count, seed: 33)
        let dx = layer.backward(Tensor(y.shape, r)).array
        XCTAssertEqual(dx.count, x.count, file: file, line: line)
        let lhs = GradCheck.dot(y.data, r)
        var rhs = 0.0
        for i in 0..<x.count { rhs += Double(x.data[i]) * Double(dx[i]) }
        XCTAssertEqual(lhs, rhs, accuracy: 1e-4 * max(1, abs(lhs)), "adjoint", file: file, line: line)
        GradCheck.check(
            "trilinear.dx", parameter: x.pointer, count: x.count, analytic: dx, relTol: 1e-3,
            samples: 120, loss: { GradCheck.dot(layer.forward(x).data, r) }, file: file, line: line)
    }

    // MARK: hand-computed values

    func testOneDimensionalKnownValues() {
        let x = Tensor([1, 1, 1, 1, 2], [0, 1])
        let alongX: (z: Double, y: Double, x: Double) = (1, 1, 2)
        XCTAssertEqual(Trilinear(scale: alongX, alignCorners: false).forward(x).array, [0, 0.25, 0.75, 1])
        let t = Trilinear(scale: alongX, alignCorners: true).forward(x).array
        XCTAssertEqual(t.count, 4)
        for (got, want) in zip(t, [0, 1.0 / 3, 2.0 / 3, 1]) { XCTAssertEqual(Double(got), want, accuracy: 1e-6) }

        let x3 = Tensor([1, 1, 1, 1, 3], [0, 1, 4])
        XCTAssertEqual(
            Trilinear(size: Dim3(z: 1, y: 1, x: 5), alignCorners: true).forward(x3).array,
            [0, 0.5, 1, 2.5, 4])
        // Downsizing 4 → 2, align false: src = 2(d + ½) − ½ = 0.5, 2.5.
        let x4 = Tensor([1, 1, 1, 1, 4], [0, 2, 4, 8])
        XCTAssertEqual(Trilinear(size: Dim3(z: 1, y: 1, x: 2), alignCorners: false).forward(x4).array, [1, 6])
        // Downsizing 4 → 2, align true: src = 0, 3.
        XCTAssertEqual(Trilinear(size: Dim3(z: 1, y: 1, x: 2), alignCorners: true).forward(x4).array, [0, 8])
    }

    func testAxesAreNotMixedUp() {
        // A volume that varies along Z only: upsampled ×2 it must vary along Z only, as in 1D.
        let x = Tensor([1, 1, 2, 1, 1], [0, 1])
        let y = Trilinear(factor: 2, alignCorners: false).forward(x)
        XCTAssertEqual(y.shape, [1, 1, 4, 2, 2])
        for z in 0..<4 {
            let want: Float = [0, 0.25, 0.75, 1][z]
            for i in 0..<4 { XCTAssertEqual(y.data[z * 4 + i], want) }
        }
    }

    // MARK: against the direct formula

    func testFactorTwoBothAlignments() {
        for align in [false, true] {
            assertMatchesReference(
                Trilinear(factor: 2, alignCorners: align), input: inShape,
                expectedOut: Dim3(z: 6, y: 10, x: 14), scaleFactors: [2, 2, 2])
        }
    }

    func testFactorsFourAndEight() {
        for align in [false, true] {
            for f in [4, 8] {
                assertMatchesReference(
                    Trilinear(factor: f, alignCorners: align), input: [1, 2, 2, 3, 3],
                    expectedOut: Dim3(z: 2 * f, y: 3 * f, x: 3 * f),
                    scaleFactors: [Double(f), Double(f), Double(f)])
            }
        }
    }

    func testArbitrarySizeUp() {
        for align in [false, true] {
            let out = Dim3(z: 4, y: 9, x: 11)
            assertMatchesReference(Trilinear(size: out, alignCorners: align), input: inShape, expectedOut: out)
        }
    }

    func testArbitrarySizeDown() {
        for align in [false, true] {
            let out = Dim3(z: 2, y: 3, x: 4)
            assertMatchesReference(Trilinear(size: out, alignCorners: align), input: inShape, expectedOut: out)
        }
    }

    func testMixedUpDownAndUnchangedAxes() {
        for align in [false, true] {
            let out = Dim3(z: 3, y: 2, x: 13)
            assertMatchesReference(Trilinear(size: out, alignCorners: align), input: inShape, expectedOut: out)
        }
    }

    func testNonIntegerScaleFactorUsesReciprocal() {
        // X: 7 · 1.5 = 10.5 → 10 outputs, interpolated with 1/1.5 (not 7/10) as PyTorch does.
        let layer = Trilinear(scale: (z: 2, y: 0.6, x: 1.5), alignCorners: false)
        let out = Dim3(z: 6, y: 3, x: 10)
        XCTAssertEqual(layer.outputSize(for: Dim3(z: 3, y: 5, x: 7)), out)
        assertMatchesReference(layer, input: inShape, expectedOut: out, scaleFactors: [2, 0.6, 1.5])
        // The size-based variant differs on X (7/10 ≠ 1/1.5): the two semantics are really distinct.
        let x = Tensor(inShape, GradCheck.random(inShape.reduce(1, *), seed: 31, lo: -2, hi: 2))
        let a = layer.forward(x).array
        let b = Trilinear(size: out, alignCorners: false).forward(x).array
        XCTAssertGreaterThan(zip(a, b).map { abs($0 - $1) }.max() ?? 0, 1e-3)
    }

    // MARK: backward

    func testBackwardIsAdjointFactorTwo() {
        for align in [false, true] {
            assertAdjointAndGradient(Trilinear(factor: 2, alignCorners: align), input: inShape)
        }
    }

    func testBackwardIsAdjointArbitrarySizes() {
        for align in [false, true] {
            for out in [Dim3(z: 4, y: 9, x: 11), Dim3(z: 2, y: 3, x: 4), Dim3(z: 3, y: 2, x: 13)] {
                assertAdjointAndGradient(Trilinear(size: out, alignCorners: align), input: inShape)
            }
        }
    }

    func testBackwardFactorFourAndParallel() {
        let saved = Parallelism.threads
        defer { Parallelism.threads = saved }
        for threads in [1, 3] {
            Parallelism.threads = threads
            assertAdjointAndGradient(Trilinear(factor: 4, alignCorners: false), input: [1, 2, 2, 3, 3])
            assertMatchesReference(
                Trilinear(factor: 2, alignCorners: false), input: inShape,
                expectedOut: Dim3(z: 6, y: 10, x: 14), scaleFactors: [2, 2, 2])
        }
    }

    /// Enough (plane, slice) tasks for several items: the same bits on 1, 2, 3 and 7 threads (each thread with its
    /// own scratch), and the reference's values on 7.
    func testThreadCountsGiveTheSameBits() {
        let saved = Parallelism.threads
        defer { Parallelism.threads = saved }
        let s = [2, 6, 8, 12, 10]
        let x = Tensor(s, GradCheck.random(s.reduce(1, *), seed: 41, lo: -2, hi: 2))
        let dy = Tensor([2, 6, 16, 24, 20], GradCheck.random(2 * 6 * 16 * 24 * 20, seed: 42))
        var results: [[Float]] = []
        for threads in [1, 2, 3, 7] {
            Parallelism.threads = threads
            let layer = Trilinear(factor: 2, alignCorners: false)
            results.append(layer.forward(x).array + layer.backward(dy).array)
        }
        for r in results.dropFirst() { XCTAssertEqual(r, results[0]) }
        assertMatchesReference(
            Trilinear(factor: 2, alignCorners: false), input: s, expectedOut: Dim3(z: 16, y: 24, x: 20),
            scaleFactors: [2, 2, 2])
        assertAdjointAndGradient(Trilinear(size: Dim3(z: 11, y: 7, x: 13), alignCorners: false), input: s)
    }

    func testInputShapeChangeRebuildsTables() {
        let layer = Trilinear(factor: 2, alignCorners: false)
        assertMatchesReference(layer, input: inShape, expectedOut: Dim3(z: 6, y: 10, x: 14), scaleFactors: [2, 2, 2])
        assertMatchesReference(
            layer, input: [1, 1, 2, 4, 3], expectedOut: Dim3(z: 4, y: 8, x: 6),
            scaleFactors: [2, 2, 2])
        assertAdjointAndGradient(layer, input: [1, 1, 2, 4, 3])
    }
}
