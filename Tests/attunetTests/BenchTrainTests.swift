import Foundation
import TestSupport
import XCTest

/// `attunet bench train` as CI runs it: a short smoke run whose JSON must have the report's shape. No figure is
/// judged (speed is measured, never tested); only what the report must contain and what must hold between its
/// parts.
final class BenchTrainTests: XCTestCase {
    private func report(_ command: String) throws -> [String: Any] {
        let r = try TestEnv.run(command, timeout: 600)
        XCTAssertEqual(r.status, 0, r.stderr)
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        return try XCTUnwrap(json, "bench train --json printed no JSON object: \(r.stdout.prefix(300))")
    }

    private let small = "--feature-scale 16 --patch 32x32x16 --steps 2 --warmup 1 --json"

    func testOneProcessAndTwoRanksReportEveryPartOfAStep() throws {
        for (ranks, prefix) in [(1, ""), (2, "mpirun -np 2 --bind-to none --oversubscribe ")] {
            let j = try report("\(prefix)\(TestEnv.attunet) bench train --batch 2 \(small)")
            XCTAssertEqual(j["mode"] as? String, "training")
            XCTAssertEqual(j["ranks"] as? Int, ranks)
            XCTAssertEqual(j["batch_per_rank"] as? Int, 2 / ranks)
            XCTAssertEqual(j["parameters"] as? Int, 406_446, "attention-unet at feature scale 16")
            XCTAssertEqual(j["patch"] as? [Int], [32, 32, 16])
            let step = try XCTUnwrap(j["step_seconds"] as? [String: Double])
            XCTAssertGreaterThan(step["median"] ?? 0, 0)
            XCTAssertEqual(j["patches_per_second"] as? Double ?? 0, 2 / step["median"]!, accuracy: 1e-9)
            let phases = try XCTUnwrap(j["phases"] as? [String: Double])
            XCTAssertEqual(Set(phases.keys), ["data", "forward", "loss", "backward", "all_reduce", "optimizer"])
            for key in ["peak_resident_bytes", "resident_bytes", "resident_before_steps_bytes", "recycled_bytes"] {
                let v = try XCTUnwrap(j[key] as? [Int], key)
                XCTAssertEqual(v.count, ranks, key)
                XCTAssertTrue(v.allSatisfy { $0 > 0 }, "\(key): \(v)")
            }
            XCTAssertEqual((j["minor_faults_per_step"] as? [Double])?.count, ranks)

            // Every layer of the model, once, in the order the forward pass runs them; their times lie within
            // the forward and backward phases.
            let layers = try XCTUnwrap(j["layers"] as? [[String: Any]])
            let names = layers.compactMap { $0["name"] as? String }
            XCTAssertEqual(names.count, Set(names).count, "a layer listed twice")
            XCTAssertEqual(names.first, "conv1.conv1.0")
            XCTAssertEqual(names.last, "final")
            XCTAssertEqual(layers.filter { ($0["kind"] as? String) == "Conv3d 3x3x3" }.count, 18)
            XCTAssertEqual(layers.filter { ($0["kind"] as? String) == "BatchNorm3d" }.count, 28)
            for name in ["maxpool1", "up_concat1.up", "attentionblock2.gate_block_1.multiply", "final.concat"] {
                XCTAssertTrue(names.contains(name), "\(name) missing from \(names)")
            }
            let conv = try XCTUnwrap(layers.first { ($0["name"] as? String) == "conv1.conv2.0" })
            XCTAssertEqual(
                conv["forward_flop"] as? Double, 2 * 4 * 27 * 4 * Double(2 / ranks * 32 * 32 * 16),
                "4 -> 4 channels, 3x3x3, on the rank's patches")
            let layerSeconds = layers.reduce(0.0) {
                $0 + ($1["forward_seconds"] as? Double ?? 0) + ($1["backward_seconds"] as? Double ?? 0)
            }
            XCTAssertGreaterThan(layerSeconds, 0)
            XCTAssertLessThanOrEqual(
                layerSeconds, 1.01 * (phases["forward"]! + phases["backward"]!) + 1e-3,
                "rank 0's layers cannot take longer than the slowest rank's forward and backward")
        }
    }

    /// --overlap both on 2 ranks: the bench runs with the gradient all-reduce after the backward pass, then
    /// overlapped with it, reports both (buckets of --allreduce-bucket-mib, the all-reduce's time and the part
    /// of it the step waited for) and compares them; the exposed time lies inside the step's all-reduce phase,
    /// and without overlap all of the all-reduce is exposed. The table names it in both runs.
    func testOverlapBothReportsTheExposedAllReduceOffAndOn() throws {
        let mpirun = "mpirun -np 2 --bind-to none --oversubscribe \(TestEnv.attunet) bench train --batch 2"
        let j = try report("\(mpirun) --overlap both --allreduce-bucket-mib 0.1 \(small)")
        let runs = try XCTUnwrap(j["runs"] as? [[String: Any]])
        XCTAssertEqual(runs.count, 2)
        var exposed: [Double] = []
        var steps: [Double] = []
        for (run, overlapped) in zip(runs, [false, true]) {
            let g = try XCTUnwrap(run["gradient_all_reduce"] as? [String: Any])
            XCTAssertEqual(g["overlapped"] as? Bool, overlapped)
            XCTAssertEqual(g["buckets"] as? Int, (406_446 + 26_213) / 26_214, "0.1 MiB = 26,214 floats")
            XCTAssertEqual(g["bucket_bytes"] as? Int, 4 * 26_214)
            let seconds = try XCTUnwrap(g["seconds"] as? Double)
            let e = try XCTUnwrap(g["exposed_seconds"] as? Double)
            XCTAssertGreaterThan(seconds, 0)
            if !overlapped { XCTAssertEqual(e, seconds, "without overlap the whole all-reduce is exposed") }
            let phases = try XCTUnwrap(run["phases"] as? [String: Double])
            XCTAssertLessThanOrEqual(e, phases["all_reduce"]!, "exposed is part of the step's all-reduce phase")
            exposed.append(e)
            steps.append(try XCTUnwrap((run["step_seconds"] as? [String: Double])?["median"]))
        }
        let comparison = try XCTUnwrap((j["overlap"] as? [[String: Any]])?.first)
        XCTAssertEqual(comparison["exposed_seconds_off"] as? Double, exposed[0])
        XCTAssertEqual(comparison["exposed_seconds_on"] as? Double, exposed[1])
        XCTAssertEqual(comparison["exposed_ratio"] as? Double ?? 0, exposed[1] / exposed[0], accuracy: 1e-12)
        XCTAssertEqual(comparison["step_ratio"] as? Double ?? 0, steps[1] / steps[0], accuracy: 1e-12)

        let text = try TestEnv.run("\(mpirun) --overlap both --feature-scale 16 --patch 32x32x16 --steps 1 --warmup 1")
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertTrue(text.stdout.contains("bucket(s) of 16 MiB, exposed "), text.stdout)
        XCTAssertTrue(text.stdout.contains("% of it; after the backward pass: --overlap off)"), text.stdout)
        XCTAssertTrue(text.stdout.contains("% of it; overlapped with the backward pass)"), text.stdout)
        XCTAssertTrue(text.stdout.contains("  exposed on/off "), text.stdout)
        let one = try report("\(TestEnv.attunet) bench train --batch 2 \(small)")
        let g = try XCTUnwrap(one["gradient_all_reduce"] as? [String: Any])
        XCTAssertEqual(g["overlapped"] as? Bool, false, "1 rank: nothing to overlap")
        XCTAssertEqual(g["seconds"] as? Double, 0)
    }

    func testInferenceModeTimesForwardPassesOfOnePatch() throws {
        let j = try report("\(TestEnv.attunet) bench train --inference \(small)")
        XCTAssertEqual(j["mode"] as? String, "inference")
        XCTAssertEqual(j["batch_per_rank"] as? Int, 1)
        let phases = try XCTUnwrap(j["phases"] as? [String: Double])
        XCTAssertGreaterThan(phases["forward"] ?? 0, 0)
        XCTAssertEqual(phases["backward"], 0)
        let layers = try XCTUnwrap(j["layers"] as? [[String: Any]])
        XCTAssertTrue(layers.allSatisfy { ($0["backward_calls"] as? Int) == 0 }, "inference ran a backward pass")
    }

    func testBadOptionsAreClearErrors() throws {
        let r = try TestEnv.run("\(TestEnv.attunet) bench train --steps 0")
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("--steps must be at least 1"), r.stderr)
        let s = try TestEnv.run("\(TestEnv.attunet) bench train --store /nonexistent/store.h5 --steps 1 --warmup 0")
        XCTAssertEqual(s.status, 1)
        XCTAssertTrue(s.stderr.contains("/nonexistent/store.h5"), s.stderr)
        XCTAssertEqual(s.stderr.split(separator: "\n").count, 1, s.stderr)
    }
}
