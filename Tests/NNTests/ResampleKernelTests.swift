import CKernels
import Foundation
import Tensor
import TestSupport
import XCTest

@testable import NN

/// Trilinear's C kernels (`resample.c`): the AVX2 build against the plain C build, and both against PyTorch's
/// `F.interpolate(mode="trilinear")` and its autograd, on odd shapes that reach every code path: whole and partial
/// blocks of 8 columns, rows shorter than 8 (masked loads and stores), ×2/×4/×8, output slices large enough for
/// streaming stores, non-integer sizes and scale factors, down-sampling along X (the gather blocks), both
/// `align_corners`.
final class ResampleKernelTests: XCTestCase {
    struct Case {
        var name: String
        var input: [Int]
        var layer: () -> Trilinear
        /// The interpolate arguments for PyTorch (`scale_factor=(…)` or `size=(…)`).
        var torchTarget: String
    }

    static func cases(align: Bool) -> [Case] {
        [
            Case(
                name: "x2", input: [2, 3, 5, 7, 21], layer: { Trilinear(factor: 2, alignCorners: align) },
                torchTarget: "scale_factor=(2.0, 2.0, 2.0)"),
            Case(
                name: "x2 slices of 8 KiB (streaming stores)", input: [1, 2, 3, 24, 24],
                layer: { Trilinear(factor: 2, alignCorners: align) }, torchTarget: "scale_factor=(2.0, 2.0, 2.0)"),
            Case(
                name: "x4", input: [1, 2, 3, 5, 3], layer: { Trilinear(factor: 4, alignCorners: align) },
                torchTarget: "scale_factor=(4.0, 4.0, 4.0)"),
            Case(
                name: "x8", input: [1, 2, 2, 3, 5], layer: { Trilinear(factor: 8, alignCorners: align) },
                torchTarget: "scale_factor=(8.0, 8.0, 8.0)"),
            Case(
                name: "size up/down", input: [1, 3, 5, 6, 9],
                layer: { Trilinear(size: Dim3(z: 7, y: 11, x: 4), alignCorners: align) }, torchTarget: "size=(7, 11, 4)"
            ),
            Case(
                name: "size non-integer up", input: [2, 1, 4, 5, 13],
                layer: { Trilinear(size: Dim3(z: 9, y: 3, x: 31), alignCorners: align) }, torchTarget: "size=(9, 3, 31)"
            ),
            Case(
                name: "scale non-integer", input: [1, 2, 3, 7, 10],
                layer: { Trilinear(scale: (z: 2, y: 0.6, x: 1.5), alignCorners: align) },
                torchTarget: "scale_factor=(2.0, 0.6, 1.5)"),
        ]
    }

    /// y = layer(x), dx = layerᵀ(dy), and the same for |x|, |dy| (the magnitudes that bound rounding: every weight is
    /// non-negative, so T|x| bounds the sum of the absolute values of the terms of every output).
    private func run(_ c: Case, _ x: Tensor, _ dy: [Float]) -> (y: [Float], dx: [Float], ya: [Float], dxa: [Float]) {
        let layer = c.layer()
        let y = layer.forward(x).array
        let dx = layer.backward(Tensor(layer.outputShape(for: c.input), dy)).array
        let ya = layer.forward(Tensor(c.input, x.array.map(abs))).array
        let dxa = layer.backward(Tensor(layer.outputShape(for: c.input), dy.map(abs))).array
        return (y, dx, ya, dxa)
    }

    private func inputs(_ c: Case) -> (Tensor, [Float]) {
        let x = Tensor(c.input, GradCheck.random(c.input.reduce(1, *), seed: 51, lo: -2, hi: 2))
        let n = c.layer().outputShape(for: c.input).reduce(1, *)
        return (x, GradCheck.random(n, seed: 52, lo: -1, hi: 1))
    }

    /// Worst |a − b| / (ulps · ε · bound), ≤ 1 when within `ulps` units of the magnitude bound.
    private func worst(_ a: [Float], _ b: [Float], _ bound: [Float], ulps: Float) -> Float {
        var w: Float = 0
        for i in a.indices {
            w = max(w, abs(a[i] - b[i]) / (ulps * Float.ulpOfOne * max(bound[i], Float.leastNormalMagnitude)))
        }
        return w
    }

    func testAVX2MatchesPlainC() throws {
        guard ck_cpu_has_avx2() != 0 else { throw XCTSkip("no AVX2 on this CPU: only the plain C build runs") }
        defer { ck_tri_set_portable(0) }
        for align in [false, true] {
            for c in Self.cases(align: align) {
                let (x, dy) = inputs(c)
                ck_tri_set_portable(1)
                let plain = run(c, x, dy)
                ck_tri_set_portable(0)
                let avx = run(c, x, dy)
                // FMA against separate products and sums, in the same order: measured within 1.9 ε of the magnitude
                // forward, 1.3 ε backward (AMD EPYC Zen 3).
                let f = worst(avx.y, plain.y, plain.ya, ulps: 4)
                let b = worst(avx.dx, plain.dx, plain.dxa, ulps: 4)
                XCTAssertLessThanOrEqual(f, 1, "\(c.name) align \(align): forward AVX2 vs plain C")
                XCTAssertLessThanOrEqual(b, 1, "\(c.name) align \(align): backward AVX2 vs plain C")
                // Adjoint: <T x, dy> == <x, Tᵀ dy> on both builds.
                for (name, r) in [("plain C", plain), ("AVX2", avx)] {
                    var lhs = 0.0
                    for i in dy.indices { lhs += Double(r.y[i]) * Double(dy[i]) }
                    var rhs = 0.0
                    var mag = 0.0
                    for i in 0..<x.count {
                        rhs += Double(x.data[i]) * Double(r.dx[i])
                        mag += Double(abs(x.data[i])) * Double(r.dxa[i])
                    }
                    XCTAssertEqual(lhs, rhs, accuracy: 1e-6 * mag, "\(c.name) align \(align) \(name): adjoint")
                }
            }
        }
    }

    /// Forward and backward on whichever build this CPU runs, against PyTorch's trilinear interpolation and autograd.
    func testMatchesPyTorch() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        var script = "import numpy as np, torch, torch.nn.functional as F\n"
        var all: [(name: String, base: String, ours: (y: [Float], dx: [Float], ya: [Float], dxa: [Float]))] = []
        for align in [false, true] {
            for (k, c) in Self.cases(align: align).enumerated() {
                let (x, dy) = inputs(c)
                let outShape = c.layer().outputShape(for: c.input)
                let base = dir.appendingPathComponent("\(align)-\(k)").path
                try Data(buffer: UnsafeBufferPointer(start: x.pointer, count: x.count)).write(
                    to: URL(fileURLWithPath: base + ".x"))
                try dy.withUnsafeBufferPointer { try Data(buffer: $0).write(to: URL(fileURLWithPath: base + ".dy")) }
                script += """
                    x = torch.from_numpy(np.fromfile(r'\(base).x', dtype=np.float32).reshape(\(c.input)))
                    x.requires_grad_(True)
                    y = F.interpolate(x, \(c.torchTarget), mode='trilinear', align_corners=\(align ? "True" : "False"))
                    assert list(y.shape) == \(outShape), y.shape
                    dy = torch.from_numpy(np.fromfile(r'\(base).dy', dtype=np.float32).reshape(\(outShape)))
                    y.backward(dy)
                    y.detach().numpy().astype(np.float32).tofile(r'\(base).y')
                    x.grad.numpy().astype(np.float32).tofile(r'\(base).dx')

                    """
                all.append(("\(c.name) align \(align)", base, run(c, x, dy)))
            }
        }
        try TestEnv.python(script)
        for (name, base, ours) in all {
            func load(_ ext: String) throws -> [Float] {
                let d = try Data(contentsOf: URL(fileURLWithPath: base + ext))
                return d.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            }
            let ty = try load(".y")
            let tdx = try load(".dx")
            XCTAssertEqual(ty.count, ours.y.count, name)
            XCTAssertEqual(tdx.count, ours.dx.count, name)
            guard ty.count == ours.y.count, tdx.count == ours.dx.count else { continue }
            // PyTorch sums the 8 corners with products of 3 weights, we blend axis by axis: different rounding (measured
            // within 11 ε of the magnitude forward, 4 ε backward on AMD EPYC Zen 3).
            let f = worst(ours.y, ty, ours.ya, ulps: 32)
            let b = worst(ours.dx, tdx, ours.dxa, ulps: 32)
            XCTAssertLessThanOrEqual(f, 1, "\(name): forward vs PyTorch")
            XCTAssertLessThanOrEqual(b, 1, "\(name): backward vs PyTorch")
        }
    }
}
