import Foundation
import Tensor
import TestSupport
import XCTest

@testable import Workflows

/// The planner's arithmetic (`attunet plan`): the ring all-reduce against a simulation of the algorithm, the
/// thread-scaling fit against SciPy's non-negative least squares, the experiment's jobs and tiles against the
/// rules of the run (and NumPy for nnU-Net's tile formula), the dealing of jobs to fold groups, the memory limit,
/// and the choice of the soonest layout in cases whose answer is known.
final class AllocationPlanTests: XCTestCase {
    /// Runs `script` with `input` as JSON in the file `inp` and returns what it wrote as JSON to `out`.
    private func python(_ input: Any, _ script: String) throws -> Any {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let inp = dir.appendingPathComponent("in.json").path
        let out = dir.appendingPathComponent("out.json").path
        try JSONSerialization.data(withJSONObject: input).write(to: URL(fileURLWithPath: inp))
        try TestEnv.python("import json\ninp, out = '\(inp)', '\(out)'\n" + script)
        return try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out)))
    }

    /// A ring all-reduce simulated chunk by chunk (reduce-scatter, then all-gather): each of its 2 (p − 1) rounds
    /// costs one latency plus the largest chunk any rank sends over the bandwidth. The simulation also checks
    /// that every rank ends with the sum. The model's closed form must agree.
    func testRingAllReduceMatchesASimulatedRing() throws {
        let cases: [(bytes: Double, ranks: Int, link: NetworkLink)] = [
            (25_800_000, 2, NetworkLink.preset("25gbe")!), (25_800_000, 8, NetworkLink.preset("ib100")!),
            (1_000_000, 5, NetworkLink.sharedMemory),
            (4_000_000, 64, NetworkLink(name: "slow", bandwidthBytesPerSecond: 1e8, latencySeconds: 1e-3)),
        ]
        let ref =
            try python(
                cases.map { [$0.bytes, Double($0.ranks), $0.link.bandwidthBytesPerSecond, $0.link.latencySeconds] },
                """
                import numpy as np
                res = []
                for nbytes, p, bw, lat in json.load(open(inp)):
                    p = int(p); n = int(nbytes) // 4
                    rng = np.random.default_rng(p)
                    data = [rng.integers(0, 100, n).astype(np.int64) for _ in range(p)]
                    want = sum(data)
                    bounds = np.linspace(0, n, p + 1).astype(int)
                    chunks = [[d[bounds[c]:bounds[c + 1]].copy() for c in range(p)] for d in data]
                    t = 0.0
                    for step in range(p - 1):  # reduce-scatter: rank r sends chunk (r - step) to r + 1
                        sent = [(r, (r - step) % p, chunks[r][(r - step) % p].copy()) for r in range(p)]
                        for r, c, v in sent: chunks[(r + 1) % p][c] += v
                        t += lat + max(v.size * 4 for _, _, v in sent) / bw
                    for step in range(p - 1):  # all-gather: rank r sends its finished chunk (r + 1 - step)
                        sent = [(r, (r + 1 - step) % p, chunks[r][(r + 1 - step) % p].copy()) for r in range(p)]
                        for r, c, v in sent: chunks[(r + 1) % p][c] = v
                        t += lat + max(v.size * 4 for _, _, v in sent) / bw
                    assert all((np.concatenate(chunks[r]) == want).all() for r in range(p))
                    res.append(t)
                json.dump(res, open(out, 'w'))
                """) as! [Double]
        for (c, want) in zip(cases, ref) {
            let got = c.link.ringAllReduceSeconds(bytes: c.bytes, ranks: c.ranks)
            XCTAssertEqual(got, want, accuracy: want * 1e-3, "\(c.ranks) ranks over \(c.link.name)")
        }
        XCTAssertEqual(NetworkLink.sharedMemory.ringAllReduceSeconds(bytes: 1e9, ranks: 1), 0, "one rank sends nothing")
        XCTAssertEqual(NetworkLink.preset("25gbe")!.bandwidthBytesPerSecond, 3.125e9, "25 Gbit/s in bytes")
    }

    /// Amdahl's law in 1/T by least squares with both terms non-negative: SciPy's `nnls` on the design
    /// [1, 1/T], for two exact points, noisy points, better-than-linear points (serial term 0) and points that
    /// slow down with threads (no speed-up).
    func testAmdahlFitMatchesScipyNonNegativeLeastSquares() throws {
        let sets: [[(Int, Double)]] = [
            [(1, 7.4), (2, 5.6)], [(1, 10), (2, 5.6), (4, 3.5)], [(1, 10), (2, 4.5), (4, 2.0)],
            [(1, 5), (2, 5.5), (4, 6)], [(1, 3.83), (2, 2.44), (4, 1.6), (8, 1.3)],
        ]
        let ref =
            try python(
                sets.map { $0.map { [Double($0.0), $0.1] } },
                """
                import numpy as np
                from scipy.optimize import nnls
                res = []
                for pts in json.load(open(inp)):
                    T = np.array([p[0] for p in pts]); t = np.array([p[1] for p in pts])
                    coef, _ = nnls(np.stack([np.ones_like(T), 1 / T], axis=1), t)
                    res.append(list(coef))
                json.dump(res, open(out, 'w'))
                """) as! [[Double]]
        for (points, want) in zip(sets, ref) {
            let fit = AmdahlFit(points.map { (threads: $0.0, seconds: $0.1) })
            XCTAssertEqual(fit.serialSeconds, want[0], accuracy: 1e-9, "\(points)")
            XCTAssertEqual(fit.parallelSeconds, want[1], accuracy: 1e-9, "\(points)")
        }
        // Two points: the line through both, s = 2 t(2)/t(1) − 1.
        let two = AmdahlFit([(threads: 1, seconds: 7.4), (threads: 2, seconds: 5.6)])
        XCTAssertEqual(two.seconds(threads: 1), 7.4, accuracy: 1e-12)
        XCTAssertEqual(two.seconds(threads: 2), 5.6, accuracy: 1e-12)
        XCTAssertEqual(two.serialFraction, 2 * 5.6 / 7.4 - 1, accuracy: 1e-12)
        XCTAssertFalse(two.extrapolates(2))
        XCTAssertTrue(two.extrapolates(3))
        // One thread count says nothing of scaling: no speed-up is assumed.
        XCTAssertEqual(AmdahlFit([(threads: 2, seconds: 4)]).seconds(threads: 64), 4)
    }

    /// The paper's CT-150: 5 folds of 30 test cases; 120 training cases, 24 of them held out (0.2) for
    /// validation, so 96 patches per epoch at batch 2 = 48 steps; 300 validation passes at --val-every 1 and
    /// 100 at 3 (every third epoch and the last). 152 cases: two folds of 31.
    func testJobsFollowTheRunsFoldsSplitAndSteps() throws {
        let ct150 = try PlannedExperiment(
            models: ["attention-unet", "unet"], ids: PlannedExperiment.ids(count: 150), folds: 5, epochs: 300,
            batch: 2, tilesPerVolume: 12)
        XCTAssertEqual(ct150.jobs.count, 10)
        XCTAssertEqual(ct150.jobs.map(\.model), [0, 0, 0, 0, 0, 1, 1, 1, 1, 1], "cv's order: every fold of a model")
        XCTAssertEqual(ct150.jobs.map(\.fold), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
        for j in ct150.jobs {
            XCTAssertEqual([j.stepsPerEpoch, j.validationCases, j.testCases], [48, 24, 30])
        }
        XCTAssertEqual(ct150.validations, 300)
        let other = try PlannedExperiment(
            models: ["unet"], ids: PlannedExperiment.ids(count: 152), folds: 5, epochs: 301, batch: 4,
            samplesPerCase: 2, validateEvery: 3, tilesPerVolume: 1)
        XCTAssertEqual(other.jobs.map(\.testCases).sorted(), [30, 30, 30, 31, 31])
        for j in other.jobs {
            let training = 152 - j.testCases
            let validation = Int((Double(training) * 0.2).rounded())
            XCTAssertEqual(j.validationCases, validation)
            XCTAssertEqual(j.stepsPerEpoch, (training - validation) * 2 / 4)
        }
        XCTAssertEqual(other.validations, 101, "100 every third epoch, and the last")
    }

    /// Tiles of a volume as nnU-Net's `compute_steps_for_sliding_window` counts them (NumPy), padded to the
    /// patch where smaller.
    func testTilesPerVolumeMatchNNUNetsFormula() throws {
        let shapes = [
            (Dim3(z: 150, y: 180, x: 180), Dim3(z: 96, y: 160, x: 160)),
            (Dim3(z: 40, y: 300, x: 97), Dim3(z: 48, y: 96, x: 96)),
            (Dim3(z: 96, y: 160, x: 160), Dim3(z: 96, y: 160, x: 160)),
        ]
        let ref =
            try python(
                shapes.map { [[$0.0.z, $0.0.y, $0.0.x], [$0.1.z, $0.1.y, $0.1.x]] },
                """
                import numpy as np
                res = []
                for shape, patch in json.load(open(inp)):
                    n = 1
                    for s, p in zip(shape, patch):
                        s = max(s, p)
                        n *= int(np.ceil((s - p) / (p * 0.5))) + 1
                    res.append(n)
                json.dump(res, open(out, 'w'))
                """) as! [Int]
        XCTAssertEqual(shapes.map { PlannedExperiment.tiles(volume: $0.0, patch: $0.1) }, ref)
    }

    /// Jobs go to groups as `cv --fold-parallel` deals them: job j to group j mod G.
    func testJobsAreDealtAsCVDealsThem() {
        let jobs = (1...10).map(Double.init)
        XCTAssertEqual(AllocationPlanner.deal(jobs, groups: 1), [55])
        XCTAssertEqual(AllocationPlanner.deal(jobs, groups: 3), [22.0, 15.0, 18.0], "1+4+7+10, 2+5+8, 3+6+9")
        XCTAssertEqual(AllocationPlanner.deal(jobs, groups: 10), jobs)
        XCTAssertEqual(AllocationPlanner.deal([5], groups: 4), [5, 0, 0, 0])
    }

    // MARK: - Layouts

    /// A cost model of known shape: `perPatch` seconds of forward and backward per patch at 1 thread with serial
    /// fraction `serial`, `fixed` seconds of the rest (not threaded), a 1 s forward pass per tile (same scaling),
    /// 1 GiB before the steps and `peakGiB` at 2 patches, 6.5 M parameters.
    private func costs(
        perPatch: Double = 10, serial: Double = 0.2, fixed: Double = 0, peakGiB: Double = 3, model: String = "m"
    ) -> ModelCostModel {
        func fit(_ t1: Double) -> AmdahlFit {
            AmdahlFit(serialSeconds: serial * t1, parallelSeconds: (1 - serial) * t1, measuredThreads: [1, 2])
        }
        return ModelCostModel(
            model: model, parameters: 6_500_000, calibrationBatch: 2, voxelScale: 1, batchFit: fit(2 * perPatch),
            fixedFit: AmdahlFit(serialSeconds: fixed, parallelSeconds: 0, measuredThreads: [1, 2]), tileFit: fit(1),
            residentBeforeBytes: 1_073_741_824, peakBytes: peakGiB * 1_073_741_824)
    }

    private func ct150(models: Int = 2) throws -> PlannedExperiment {
        try PlannedExperiment(
            models: (0..<models).map { "m\($0)" }, ids: PlannedExperiment.ids(count: 150), folds: 5, epochs: 3,
            batch: 2, tilesPerVolume: 8)
    }

    private let fast = NetworkLink(name: "free", bandwidthBytesPerSecond: 1e15, latencySeconds: 0)

    /// Every layout the planner considers can run: its ranks divide the batch, a node's ranks and threads fit
    /// its cores, a node holds whole groups or a whole part of one, no group idles, no more nodes than given.
    func testLayoutsObeyTheRunsRules() throws {
        for (batch, nodes, cores) in [(2, 4, 8), (4, 3, 6), (2, 1, 2)] {
            var e = try ct150()
            e.batch = batch
            let p = AllocationPlanner(
                experiment: e, costs: [costs(), costs()],
                allocation: Allocation(nodes: nodes, coresPerNode: cores, network: fast))
            let all = p.layouts()
            XCTAssertFalse(all.isEmpty)
            XCTAssertEqual(Set(all).count, all.count, "a layout listed twice")
            for l in all {
                XCTAssertEqual(batch % l.ranksPerGroup, 0, "\(l)")
                XCTAssertLessThanOrEqual(l.ranksPerNode * l.threadsPerRank, cores, "\(l)")
                XCTAssertTrue(l.ranksPerNode % l.ranksPerGroup == 0 || l.ranksPerGroup % l.ranksPerNode == 0, "\(l)")
                XCTAssertEqual(l.nodes * l.ranksPerNode, l.groups * l.ranksPerGroup, "\(l)")
                XCTAssertLessThanOrEqual(l.groups, 10, "\(l)")
                XCTAssertLessThanOrEqual(l.nodes, nodes, "\(l)")
            }
            // The all-cores layouts of one node are there: 1 group of batch ranks x cores/batch threads.
            XCTAssertTrue(
                all.contains(
                    Layout(
                        groups: 1, ranksPerGroup: batch, threadsPerRank: cores / batch, nodes: 1, ranksPerNode: batch)))
        }
    }

    /// A rank needs 1 GiB plus 4 GiB per patch: at batch 2 over 2 ranks, 5 GiB each; on one rank, 9 GiB. Nodes of
    /// 12 GiB hold 2 ranks of one patch or 1 of two; with 4 GiB none fits.
    func testMemoryLimitRejectsLayouts() throws {
        let e = try ct150()
        let c = costs(peakGiB: 9)
        XCTAssertEqual(c.memoryBytes(batch: 1), 5 * 1_073_741_824, accuracy: 1)
        let gib = 1_073_741_824.0
        let p = AllocationPlanner(
            experiment: e, costs: [c, c],
            allocation: Allocation(nodes: 4, coresPerNode: 16, memoryPerNodeBytes: 12 * gib, network: fast))
        XCTAssertNil(
            p.predict(
                Layout(groups: 1, ranksPerGroup: 2, threadsPerRank: 1, nodes: 1, ranksPerNode: 2).with(k: 4, g: 2)))
        XCTAssertNotNil(p.predict(Layout(groups: 1, ranksPerGroup: 2, threadsPerRank: 8, nodes: 1, ranksPerNode: 2)))
        XCTAssertNil(p.predict(Layout(groups: 2, ranksPerGroup: 1, threadsPerRank: 8, nodes: 1, ranksPerNode: 2)))
        let all = p.predictions()
        XCTAssertFalse(all.isEmpty)
        for q in all { XCTAssertLessThanOrEqual(q.memoryPerNodeBytes, 12 * gib, "\(q.layout)") }
        XCTAssertTrue(all.contains { $0.layout.ranksPerNode == 2 }, "2 ranks of 1 patch fit")
        XCTAssertFalse(all.contains { $0.layout.ranksPerNode > 2 })
        XCTAssertFalse(all.contains { $0.layout.ranksPerGroup == 1 && $0.layout.ranksPerNode > 1 })
        var small = p
        small.allocation.memoryPerNodeBytes = 4 * gib
        XCTAssertNil(small.plan(), "no rank fits in 4 GiB")
    }

    /// Threads that do not help (serial fraction 1) and free all-reduces: the soonest layout is the most ranks,
    /// one thread each: 10 groups x 2 ranks (4 per node on 5 nodes), each job alone at 1 patch per rank. Its time is the job's steps,
    /// validations and tests, counted here by hand.
    func testWithoutThreadScalingTheMostRanksWin() throws {
        let e = try ct150()
        let c = costs(perPatch: 10, serial: 1)
        let a = Allocation(nodes: 5, coresPerNode: 4, network: fast, sharedMemory: fast)
        let p = AllocationPlanner(experiment: e, costs: [c, c], allocation: a)
        let best = try XCTUnwrap(p.plan())
        XCTAssertEqual(best.layout.groups, 10)
        XCTAssertEqual(best.layout.ranksPerGroup, 2)
        XCTAssertEqual(best.layout.threadsPerRank, 1, "extra threads only cost core-hours")
        // One job: 3 epochs x 48 steps x 10 s (one patch per rank); 3 validations of ceil(24/2) volumes and
        // ceil(30/2) test volumes of 8 tiles at 1 s.
        let job: Double = 3 * 48 * 10 + 3 * 12 * 8 + 15 * 8
        XCTAssertEqual(best.wallSeconds, job, accuracy: 1e-3)
        XCTAssertEqual(best.trainingSeconds, 14_400, accuracy: 1e-3, "10 jobs x 3 epochs x 48 steps x 10 s")
        XCTAssertFalse(best.extrapolated)
    }

    /// A network so slow that an all-reduce between nodes costs more than a step: with one core per node the
    /// soonest layout keeps every group on one rank; with two cores per node a group's two ranks share a node and
    /// all-reduce over shared memory.
    func testASlowNetworkKeepsGroupsWithinNodes() throws {
        let e = try ct150()
        let c = costs(perPatch: 1, serial: 1)
        let slow = NetworkLink(name: "slow", bandwidthBytesPerSecond: 1e6, latencySeconds: 0)
        let one = AllocationPlanner(
            experiment: e, costs: [c, c], allocation: Allocation(nodes: 10, coresPerNode: 1, network: slow))
        let a = try XCTUnwrap(one.plan())
        XCTAssertEqual(a.layout.ranksPerGroup, 1, "\(a.layout)")
        XCTAssertEqual(a.layout.groups, 10)
        let spanning = try XCTUnwrap(
            one.predict(Layout(groups: 5, ranksPerGroup: 2, threadsPerRank: 1, nodes: 10, ranksPerNode: 1)))
        XCTAssertEqual(spanning.allReduceSeconds[0], slow.ringAllReduceSeconds(bytes: 26e6, ranks: 2), accuracy: 1e-9)
        let two = AllocationPlanner(
            experiment: e, costs: [c, c], allocation: Allocation(nodes: 10, coresPerNode: 2, network: slow))
        let b = try XCTUnwrap(two.plan())
        XCTAssertEqual(b.layout.ranksPerGroup, 2, "\(b.layout)")
        XCTAssertTrue(b.layout.groupsWithinNodes)
        XCTAssertEqual(
            b.allReduceSeconds[0], NetworkLink.sharedMemory.ringAllReduceSeconds(bytes: 26e6, ranks: 2), accuracy: 1e-12
        )
        // Half the all-reduce hidden behind the backward pass: half of it is added to the step.
        var hidden = two
        hidden.allocation.exposedAllReduce = 0.5
        XCTAssertEqual(
            try XCTUnwrap(hidden.predict(b.layout)).allReduceSeconds[0], b.allReduceSeconds[0] / 2, accuracy: 1e-12)
    }

    /// The soonest layout is the fastest of every layout the planner lists (within 1%), and threads beyond the
    /// measured counts are marked as extrapolated.
    func testTheChosenLayoutIsTheSoonestAndSaysWhenItExtrapolates() throws {
        let e = try ct150()
        let p = AllocationPlanner(
            experiment: e, costs: [costs(fixed: 0.5), costs(perPatch: 8, fixed: 0.5)],
            allocation: Allocation(nodes: 3, coresPerNode: 16, network: NetworkLink.preset("25gbe")!))
        let best = try XCTUnwrap(p.plan())
        let fastest = p.layouts().compactMap { p.predict($0)?.wallSeconds }.min()!
        XCTAssertLessThanOrEqual(best.wallSeconds, fastest * 1.01)
        XCTAssertTrue(best.extrapolated, "\(best.layout): threads above 2 were not measured")
        XCTAssertEqual(best.extrapolated, best.layout.threadsPerRank > 2)
        let array = try XCTUnwrap(p.planArray())
        XCTAssertLessThanOrEqual(array.task.layout.groups, 2, "a task has the 2 models of one fold")
        XCTAssertLessThanOrEqual(array.concurrentTasks * array.task.layout.nodes, 3)
        XCTAssertGreaterThanOrEqual(array.wallSeconds, array.taskSeconds)
    }
}

extension Layout {
    /// The same ranks per group and threads with `k` ranks per node and `g` groups (nodes follow).
    fileprivate func with(k: Int, g: Int) -> Layout {
        Layout(
            groups: g, ranksPerGroup: ranksPerGroup, threadsPerRank: threadsPerRank,
            nodes: g * ranksPerGroup / k, ranksPerNode: k)
    }
}
