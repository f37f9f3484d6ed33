import Foundation
import Inference
import Support
import Tensor
import TestSupport
import XCTest

/// Tile placement, Gaussian blending, padding, mirror TTA and ensembles, with stand-in networks whose outputs
/// are known functions of the tile.
final class StitchingTests: XCTestCase {
    override func tearDown() {
        Parallelism.threads = 1
        super.tearDown()
    }

    /// Asserts that the stitched probabilities and labels equal the pointwise network's whole-volume softmax.
    func assertEqualsWholeVolume(
        _ p: Prediction, _ volume: [Float], nets: [PointwiseNet], flips: Int = 1,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        let k = p.classes
        let nv = p.shape.count
        guard let probs = p.probabilities else { return XCTFail("no probabilities", file: file, line: line) }
        var worst = 0.0
        var labelErrors = 0
        for i in 0..<nv {
            var ref = [Double](repeating: 0, count: k)
            for net in nets {
                let s = softmax((0..<k).map { net.logit($0, volume[i]) })
                for c in 0..<k { ref[c] += s[c] / Double(nets.count) }
            }
            for c in 0..<k { worst = max(worst, abs(ref[c] - Double(probs[c * nv + i]))) }
            let sorted = ref.sorted(by: >)
            let best = ref.firstIndex(of: sorted[0])!
            if sorted[0] - sorted[1] > 1e-5 && Int(p.labels[i]) != best { labelErrors += 1 }
        }
        XCTAssertLessThan(worst, 2e-6, "largest probability error", file: file, line: line)
        XCTAssertEqual(labelErrors, 0, "voxels whose arg-max differs", file: file, line: line)
        XCTAssertEqual(p.forwardPasses, p.tiles * flips * nets.count, file: file, line: line)
    }

    /// nnU-Net's step rule: first tile at 0, last flush with the end, steps evenly spread and at most
    /// patch·(1−overlap).
    func testTileStartsFollowNnUNet() {
        XCTAssertEqual(SlidingWindowPredictor.tileStarts(length: 100, patch: 48, overlap: 0.5), [0, 17, 35, 52])
        XCTAssertEqual(SlidingWindowPredictor.tileStarts(length: 48, patch: 48, overlap: 0.5), [0])
        XCTAssertEqual(SlidingWindowPredictor.tileStarts(length: 96, patch: 32, overlap: 0.5), [0, 16, 32, 48, 64])
        XCTAssertEqual(SlidingWindowPredictor.tileStarts(length: 70, patch: 32, overlap: 0.5), [0, 13, 25, 38])
        XCTAssertEqual(SlidingWindowPredictor.tileStarts(length: 40, patch: 32, overlap: 0.5), [0, 8])
        XCTAssertEqual(SlidingWindowPredictor.tileStarts(length: 100, patch: 32, overlap: 0), [0, 23, 45, 68])
        for (n, p, o) in [(100, 48, 0.5), (333, 64, 0.25), (97, 16, 0.75), (64, 48, 0.1)] {
            let s = SlidingWindowPredictor.tileStarts(length: n, patch: p, overlap: o)
            XCTAssertEqual(s.first, 0)
            XCTAssertEqual(s.last, n - p)
            for (a, b) in zip(s, s.dropFirst()) { XCTAssertLessThanOrEqual(Double(b - a), Double(p) * (1 - o) + 0.5) }
        }
    }

    /// A volume larger than the tile on every axis, with uneven last steps (x: 0, 17, 35, 52): the stitched
    /// softmax equals the whole-volume one, and the weight of each voxel is the sum of the Gaussian maps of the
    /// tiles covering it, against nnU-Net's own step and Gaussian code run in Python.
    func testLargerVolumeEqualsWholeVolumeAndWeightsMatchNnUNet() throws {
        Parallelism.threads = 2
        let n = Dim3(z: 40, y: 70, x: 100)
        let patch = Dim3(z: 32, y: 32, x: 48)
        let volume = testVolume(n, seed: 1)
        let net = PointwiseNet()
        let predictor = try SlidingWindowPredictor(
            network: net,
            options: SlidingWindowOptions(
                patch: patch, keepProbabilities: true, keepWeights: true))
        Memory.resetPeak()
        let p = try predictor.predict(volume: volume, shape: n, padValue: -3)
        print(
            "stitching \(n) (\(n.count) voxels, 3 classes) in \(p.tiles) tiles: \(String(format: "%.2f", p.seconds)) s, \(p.memory)"
        )
        XCTAssertEqual(p.tiles, 2 * 4 * 4)
        assertEqualsWholeVolume(p, volume, nets: [net])
        XCTAssertEqual(net.trainingSeen, [Bool](repeating: false, count: net.calls), "the network runs in eval mode")
        XCTAssertTrue(net.training, "the network's mode is restored")
        try assertWeightsMatchNnUNet(p.weights!, shape: n, patch: patch)
    }

    /// A volume smaller than the tile along z only: padded along z (split evenly), several tiles along x and y.
    func testVolumeSmallerAlongOneAxisEqualsWholeVolume() throws {
        let n = Dim3(z: 11, y: 40, x: 70)
        let patch = Dim3(z: 16, y: 32, x: 32)
        let volume = testVolume(n, seed: 2)
        let net = PointwiseNet()
        let p = try SlidingWindowPredictor(
            network: net,
            options: SlidingWindowOptions(
                patch: patch, keepProbabilities: true, keepWeights: true)
        ).predict(volume: volume, shape: n, padValue: 5)
        XCTAssertEqual(p.tiles, 1 * 2 * 4)
        assertEqualsWholeVolume(p, volume, nets: [net])
        try assertWeightsMatchNnUNet(p.weights!, shape: n, patch: patch)
    }

    /// A volume smaller than the tile on every axis goes through the network once, padded with `padValue`
    /// split evenly before and after (the odd voxel after), and is cropped back: with a local (3x3x3) network
    /// the result equals that padded forward pass exactly.
    func testVolumeSmallerThanTheTileIsPaddedEvenlyAndCroppedBack() throws {
        let n = Dim3(z: 13, y: 27, x: 20)
        let patch = Dim3(z: 16, y: 32, x: 32)
        let pad: Float = -1.7
        let volume = testVolume(n, seed: 3)
        let net = BoxNet()
        let p = try SlidingWindowPredictor(
            network: net,
            options: SlidingWindowOptions(
                patch: patch, keepProbabilities: true)
        ).predict(volume: volume, shape: n, padValue: pad)
        XCTAssertEqual(p.tiles, 1)
        let b = (z: 1, y: 2, x: 6)  // (16-13)/2, (32-27)/2, (32-20)/2
        let input = Tensor([1, 1, patch.z, patch.y, patch.x])
        input.fill(pad)
        for z in 0..<n.z {
            for y in 0..<n.y {
                for x in 0..<n.x {
                    input.data[((z + b.z) * patch.y + y + b.y) * patch.x + x + b.x] = volume[(z * n.y + y) * n.x + x]
                }
            }
        }
        let logits = try BoxNet().forward(input)
        var worst = 0.0
        for z in 0..<n.z {
            for y in 0..<n.y {
                for x in 0..<n.x {
                    let t = ((z + b.z) * patch.y + y + b.y) * patch.x + x + b.x
                    let v = (z * n.y + y) * n.x + x
                    let ref = softmax([logits.data[t], logits.data[patch.count + t]])
                    for c in 0..<2 { worst = max(worst, abs(ref[c] - Double(p.probabilities![c * n.count + v]))) }
                }
            }
        }
        XCTAssertLessThan(worst, 1e-6)
    }

    /// Mirror TTA with a mirror-equivariant network equals no TTA (in-plane and all 8 flips); with a network that
    /// is not, it is the mean of the flips' outputs put back in place.
    func testMirrorTTA() throws {
        let n = Dim3(z: 21, y: 37, x: 50)
        let patch = Dim3(z: 16, y: 32, x: 32)
        let volume = testVolume(n, seed: 4)
        let net = PointwiseNet()
        let plain = try SlidingWindowPredictor(
            network: net, options: SlidingWindowOptions(patch: patch, keepProbabilities: true)
        )
        .predict(volume: volume, shape: n, padValue: 0)
        for axes in [MirrorAxes.inPlane, .all] {
            var o = SlidingWindowOptions(patch: patch, tta: true, keepProbabilities: true)
            o.mirrorAxes = axes
            let tta = try SlidingWindowPredictor(network: net, options: o).predict(
                volume: volume, shape: n, padValue: 0)
            XCTAssertEqual(tta.forwardPasses, plain.tiles * axes.flips.count)
            XCTAssertEqual(tta.labels, plain.labels)
            let worst = zip(tta.probabilities!, plain.probabilities!).map { abs($0 - $1) }.max()!
            XCTAssertLessThan(worst, 1e-6, "\(axes)")
            assertEqualsWholeVolume(tta, volume, nets: [net], flips: axes.flips.count)
        }
        // One tile, a position-dependent network: p(v) = mean over flips f of softmax(h(f(v))).
        let one = Dim3(z: 16, y: 16, x: 32)
        var o = SlidingWindowOptions(patch: one, keepProbabilities: true)
        o.mirrorAxes = .all
        let p = try SlidingWindowPredictor(network: PositionNet(), options: o)
            .predict(volume: testVolume(one, seed: 5), shape: one, padValue: 0)
        var worst = 0.0
        var i = 0
        for z in 0..<one.z {
            for y in 0..<one.y {
                for x in 0..<one.x {
                    var ref = [Double](repeating: 0, count: 3)
                    for f in MirrorAxes.all.flips {
                        let fz = f.contains(.z) ? one.z - 1 - z : z
                        let fy = f.contains(.y) ? one.y - 1 - y : y
                        let fx = f.contains(.x) ? one.x - 1 - x : x
                        let s = softmax((0..<3).map { PositionNet.logit($0, z: fz, y: fy, x: fx) })
                        for c in 0..<3 { ref[c] += s[c] / 8 }
                    }
                    for c in 0..<3 { worst = max(worst, abs(ref[c] - Double(p.probabilities![c * one.count + i]))) }
                    i += 1
                }
            }
        }
        XCTAssertLessThan(worst, 1e-6)
    }

    /// An ensemble averages the networks' softmax outputs.
    func testEnsembleAveragesSoftmax() throws {
        let n = Dim3(z: 20, y: 40, x: 45)
        let patch = Dim3(z: 16, y: 32, x: 32)
        let volume = testVolume(n, seed: 6)
        let nets = [PointwiseNet(seed: 0), PointwiseNet(seed: 0.6), PointwiseNet(seed: 1.9)]
        let p = try SlidingWindowPredictor(
            networks: nets, options: SlidingWindowOptions(patch: patch, keepProbabilities: true)
        )
        .predict(volume: volume, shape: n, padValue: 0)
        assertEqualsWholeVolume(p, volume, nets: nets)
    }

    /// Attention maps are stitched like the probabilities: a map at the tile's resolution that is a pointwise
    /// function of the input comes out as that function of the whole volume; a constant half-resolution map
    /// stays constant.
    func testAttentionMapsAreStitched() throws {
        let n = Dim3(z: 20, y: 40, x: 45)
        let patch = Dim3(z: 16, y: 32, x: 32)
        let volume = testVolume(n, seed: 7)
        let p = try SlidingWindowPredictor(
            network: PointwiseNet(maps: true),
            options: SlidingWindowOptions(
                patch: patch, tta: true, attentionMaps: true)
        ).predict(volume: volume, shape: n, padValue: 0)
        let maps = try XCTUnwrap(p.attentionMaps)
        XCTAssertEqual(maps.names, ["full", "half"])
        let full = Array(maps.map("full")!)
        let half = Array(maps.map("half")!)
        var worst: Float = 0
        for i in 0..<n.count { worst = max(worst, abs(full[i] - 1 / (1 + exp(-volume[i])))) }
        XCTAssertLessThan(worst, 1e-6)
        XCTAssertLessThan(half.map { abs($0 - 0.25) }.max()!, 1e-6)
        XCTAssertThrowsError(
            try SlidingWindowPredictor(
                network: PointwiseNet(),
                options: SlidingWindowOptions(
                    patch: patch, attentionMaps: true)
            ).predict(volume: volume, shape: n, padValue: 0)
        ) {
            XCTAssertTrue("\($0)".contains("has none"), "\($0)")
        }
    }

    /// Bad settings are errors naming the problem.
    func testBadSettingsAreErrors() {
        let net = PointwiseNet()
        func message(_ body: () throws -> Void) -> String {
            do {
                try body()
                return ""
            } catch { return "\(error)" }
        }
        XCTAssertTrue(
            message {
                _ = try SlidingWindowPredictor(
                    network: net, options: SlidingWindowOptions(patch: Dim3(z: 16, y: 40, x: 32)))
            }
            .contains("not a positive multiple of 16"))
        XCTAssertTrue(
            message {
                _ = try SlidingWindowPredictor(
                    network: net, options: SlidingWindowOptions(patch: Dim3(z: 16, y: 16, x: 16), overlap: 1))
            }
            .contains("overlap"))
        XCTAssertTrue(
            message {
                _ = try SlidingWindowPredictor(
                    networks: [net, PointwiseNet(classes: 4)],
                    options: SlidingWindowOptions(patch: Dim3(z: 16, y: 16, x: 16)))
            }
            .contains("must agree"))
        XCTAssertTrue(
            message {
                _ = try SlidingWindowPredictor(
                    network: net, options: SlidingWindowOptions(patch: Dim3(z: 16, y: 16, x: 16))
                )
                .predict(volume: [0, 1], shape: Dim3(z: 1, y: 1, x: 3), padValue: 0)
            }.contains("does not match its shape"))
    }

    /// The predictor's weights against nnU-Net's `compute_steps_for_sliding_window` and `compute_gaussian`
    /// (transcribed from nnunetv2.inference.sliding_window_prediction), summed over the padded volume and cropped.
    func assertWeightsMatchNnUNet(
        _ weights: [Float], shape n: Dim3, patch: Dim3,
        file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        try weights.withUnsafeBytes { try Data($0).write(to: dir.appendingPathComponent("w.bin")) }
        try TestEnv.python(
            """
            import numpy as np
            from scipy.ndimage import gaussian_filter
            def compute_gaussian(tile_size, sigma_scale=1. / 8, value_scaling_factor=1):
                tmp = np.zeros(tile_size)
                center_coords = [i // 2 for i in tile_size]
                sigmas = [i * sigma_scale for i in tile_size]
                tmp[tuple(center_coords)] = 1
                g = gaussian_filter(tmp, sigmas, 0, mode='constant', cval=0)
                g /= (np.max(g) / value_scaling_factor)
                mask = g == 0
                g[mask] = np.min(g[~mask])
                return g
            def compute_steps_for_sliding_window(image_size, tile_size, tile_step_size):
                target = [i * tile_step_size for i in tile_size]
                num_steps = [int(np.ceil((i - k) / j)) + 1 for i, j, k in zip(image_size, target, tile_size)]
                steps = []
                for d in range(len(tile_size)):
                    max_step_value = image_size[d] - tile_size[d]
                    actual = max_step_value / (num_steps[d] - 1) if num_steps[d] > 1 else 99999999999
                    steps.append([int(np.round(actual * i)) for i in range(num_steps[d])])
                return steps
            shape = (\(n.z), \(n.y), \(n.x)); tile = (\(patch.z), \(patch.y), \(patch.x))
            padded = [max(s, t) for s, t in zip(shape, tile)]
            before = [(p - s) // 2 for p, s in zip(padded, shape)]
            g = compute_gaussian(tile)
            w = np.zeros(padded)
            sz, sy, sx = compute_steps_for_sliding_window(padded, tile, 0.5)
            for z in sz:
                for y in sy:
                    for x in sx:
                        w[z:z + tile[0], y:y + tile[1], x:x + tile[2]] += g
            w = w[before[0]:before[0] + shape[0], before[1]:before[1] + shape[1], before[2]:before[2] + shape[2]]
            got = np.fromfile(r'\(dir.path)/w.bin', dtype=np.float32).reshape(shape)
            err = np.abs(got - w).max() / w.max()
            assert err < 1e-5, ('weights differ', err)
            assert w.min() > 0
            """, file: file, line: line)
    }
}
