import Foundation
import HDF5Kit
import NN
import TestSupport
import Training
import XCTest

/// `attunet train` end to end on a tiny phantom store: MPI against single-process runs, determinism,
/// resume after SIGKILL and after a stop request, refusals, and the NaN stop.
final class TrainerTests: PhantomRunTestCase {
    /// Small but real: feature scale 16, 32x32x16 patches, Adam, paper augmentation.
    func trainCommand(ranks: Int, out: String, extra: String = "", epochs: Int = 2, samples: Int = 4) throws -> String {
        let launcher = ranks > 1 ? "mpirun -np \(ranks) --bind-to none --oversubscribe " : ""
        return
            "\(launcher)\(TestEnv.attunet) train --store \(try PhantomStore.path()) --feature-scale 16 --patch 32x32x16 --batch 2 --epochs \(epochs) --samples-per-case \(samples) --lr 1e-3 --seed 5 --out \(work.path)/\(out) \(extra)"
    }

    func weights(_ run: String, _ name: String = "checkpoint_latest.h5") throws -> SegmentationModel {
        try Checkpoint.load("\(work.path)/\(run)/\(name)")
    }

    /// ‖a − b‖ / ‖b‖ over the flat parameter vector.
    func relativeDifference(_ a: SegmentationModel, _ b: SegmentationModel) -> Double {
        var diff = 0.0
        var norm = 0.0
        for i in 0..<b.params.count {
            let d = Double(a.params.values.data[i]) - Double(b.params.values.data[i])
            diff += d * d
            norm += Double(b.params.values.data[i]) * Double(b.params.values.data[i])
        }
        return (diff / norm).squareRoot()
    }

    /// Starts a command line in the background with its output in `log` (under the work folder).
    func startInBackground(_ command: String, log: String) throws -> Process {
        try TestEnv.start(command, log: "\(work.path)/\(log)")
    }

    /// Waits until `run` has logged its first epoch (so checkpoint_latest.h5 exists), then a moment more so a
    /// signal lands inside the next epoch.
    func waitForFirstEpoch(_ run: String) {
        let log = "\(work.path)/\(run)/log.csv"
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline
            && ((try? String(contentsOfFile: log, encoding: .utf8))?.split(separator: "\n").count ?? 0) < 2
        {
            usleep(20_000)
        }
        usleep(50_000)
    }

    /// The process id of one rank (not mpirun) of the training run writing to `run`.
    func rankPID(_ run: String) throws -> String {
        let r = try TestEnv.run(
            "pgrep -f 'attunet train .*\(work.path)/\(run)' | while read p; do [ \"$(cat /proc/$p/comm)\" = attunet ] && echo $p; done | tail -1"
        )
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Per tensor of `a`'s store (parameters or buffers): ‖Δa − Δb‖ / ‖Δb‖, with Δ the change from `start`;
    /// ‖Δb‖ / √count (how far the tensor moved per value); and ‖ulp(b)‖ / ‖Δb‖, the float spacing of `b`'s final
    /// values against its move (the relative difference that one rounding of each final value makes).
    func tensorDifferences(_ a: ParameterStore, _ b: ParameterStore, start: ParameterStore)
        -> [(name: String, relative: Double, moved: Double, ulps: Double)]
    {
        a.entries.map { e in
            var diff = 0.0
            var norm = 0.0
            var spacing = 0.0
            for i in e.offset..<(e.offset + e.count) {
                let s = Double(start.values.data[i])
                let da = Double(a.values.data[i]) - s
                let db = Double(b.values.data[i]) - s
                diff += (da - db) * (da - db)
                norm += db * db
                let u = Double(b.values.data[i].magnitude.ulp)
                spacing += u * u
            }
            let n = max(norm, 1e-300)
            return (
                e.name, (diff / n).squareRoot(), (norm / Double(e.count)).squareRoot(), (spacing / n).squareRoot()
            )
        }
    }

    /// With SyncBN, 2 ranks x batch 1 follow the same global patch sequence as 1 rank x batch 2 and end with
    /// the same weights after 2 steps, one per epoch (3 training cases, 1 patch each) (the all-reduce averages the per-rank gradients
    /// of the per-sample loss). Compared tensor by tensor on the update Δ from the initial weights, so a wrong
    /// small tensor (a bias, a BN β) cannot hide in the total, and the BN running statistics too. SGD, because
    /// Adam turns the rounding noise in parameters whose true gradient is 0 (conv biases before BN) into full
    /// ±lr steps; flipped ReLU masks and max-pool winners amplify rounding differences over many steps, so the
    /// check uses two (`assertRankEquivalent`). A third run all-reduces in ~2,600-float buckets (about 160 of them, the last one partial)
    /// and must equal the one-bucket run bit for bit.
    func testTwoRanksWithSyncBNMatchOneRank() throws {
        let extra = "--sync-bn --optimizer sgd --lr 3e-3 --val-every 100"
        var r = try TestEnv.run(try trainCommand(ranks: 2, out: "mpi", extra: extra, epochs: 2, samples: 1))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        r = try TestEnv.run(try trainCommand(ranks: 1, out: "single", extra: extra, epochs: 2, samples: 1))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        r = try TestEnv.run(
            try trainCommand(
                ranks: 2, out: "buckets", extra: extra + " --allreduce-bucket-mib 0.01", epochs: 2, samples: 1))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let a = try weights("mpi")
        let b = try weights("single")
        let worst = assertRankEquivalent(a, b, "2 ranks and 1 rank", steps: 2)
        XCTAssertEqual(
            TrainingCheckpoint.weightsDigest(try weights("buckets")), TrainingCheckpoint.weightsDigest(a),
            "the bucketed all-reduce must give exactly the one-bucket result")
        print("rank equivalence, worst relative Δ difference: params \(worst)")
    }

    /// The gradient all-reduce overlapped with the backward pass (the default) against the blocking one
    /// (--no-overlap): the same weights bit for bit on 2 ranks and on 3 (where Open MPI's reduction order
    /// matters), with buckets of ~2,600 floats (about 160, so most leave while the backward pass runs). On 2 ranks the overlapped run is also stopped after its first epoch and resumed,
    /// and ends equal to the blocking run; with --sync-bn the statistics reductions inside the backward pass
    /// go through the same thread, in the same order, and the weights are equal again.
    func testOverlappedAllReduceGivesBitIdenticalWeights() throws {
        let small = "--allreduce-bucket-mib 0.01"
        func digest(_ run: String) throws -> String { TrainingCheckpoint.weightsDigest(try weights(run)) }
        for (ranks, batch) in [(2, 2), (3, 3)] {
            var digests: [String] = []
            for overlap in ["", "--no-overlap"] {
                let out = "r\(ranks)\(overlap.isEmpty ? "-overlap" : "-blocking")"
                let r = try TestEnv.run(
                    try trainCommand(ranks: ranks, out: out, extra: "--batch \(batch) \(small) \(overlap)"))
                XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
                digests.append(try digest(out))
            }
            XCTAssertEqual(digests[0], digests[1], "\(ranks) ranks: overlapped != blocking")
        }
        XCTAssertNotEqual(try digest("r2-overlap"), try digest("r3-overlap"), "3 ranks train on another global batch")

        var r = try TestEnv.run(
            try trainCommand(ranks: 2, out: "resumed", extra: "\(small) --stop-after-epochs 1"))
        XCTAssertEqual(r.status, 75, r.stdout + r.stderr)
        r = try TestEnv.run(try trainCommand(ranks: 2, out: "resumed", extra: "\(small) --resume"))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertEqual(try digest("resumed"), try digest("r2-blocking"), "overlapped and resumed != blocking")

        let syncBN = "--sync-bn --optimizer sgd --lr 3e-3 --val-every 100 \(small)"
        for overlap in ["", "--no-overlap"] {
            r = try TestEnv.run(
                try trainCommand(ranks: 3, out: "sync\(overlap)", extra: "--batch 3 \(syncBN) \(overlap)"))
            XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        }
        XCTAssertEqual(try digest("sync"), try digest("sync--no-overlap"), "--sync-bn, 3 ranks: overlapped != blocking")
    }

    /// The tolerance of the rank-equivalence tests: `a` and `b`, trained `steps` optimizer steps from the seeded
    /// initial weights (seed 5), moved every tensor alike: ‖Δa − Δb‖ / ‖Δb‖ ≤ 1e-2 + √steps · ‖ulp(b)‖ / ‖Δb‖ per
    /// tensor that really moves, rounding noise only in the others, BN running statistics within 1e-4. Returns
    /// the worst relative difference of the parameters beyond the rounding term.
    ///
    /// What the two terms allow, measured on 2 ranks × batch 1 against 1 rank × batch 2 (`--sync-bn`, SGD, feature
    /// scale 16, 32×32×16, seeds 5-11, with and without the AVX2 BatchNorm, 1×1×1 and loss kernels):
    /// - Rounding of the final values: a BN γ near 1 moved by a few hundred ulps, so the last update rounding
    ///   the other way is 1e-3 to 1e-2 of its move. Each step rounds once, hence √steps ulps.
    /// - Beyond that, the ranks sum in another order, and after the first update a ReLU mask or a max-pool winner
    ///   can flip: up to 1.7e-3 after 2 steps, and up to 1e-1 after 6 on some seeds (the runs diverge), so the
    ///   tests use 2 steps.
    /// - A wrong reduction is far above the bound: no SyncBN on 2 ranks gives 4.3, a doubled gradient 1.25.
    @discardableResult
    func assertRankEquivalent(
        _ a: SegmentationModel, _ b: SegmentationModel, _ what: String, steps: Int,
        file: StaticString = #filePath, line: UInt = #line
    ) -> Double {
        let start = SegmentationModel(a.config, seed: 5)
        XCTAssertGreaterThan(
            relativeDifference(b, start), 1e-4, "training must have moved the weights", file: file, line: line)
        // Largest per-value move of any tensor: the scale below which a tensor's Δ is rounding noise (the conv
        // biases in front of a BN have a true gradient of 0).
        let params = tensorDifferences(a.params, b.params, start: start.params)
        let scale = params.map(\.moved).max()!
        for t in params {
            if t.moved > 1e-3 * scale {
                XCTAssertLessThanOrEqual(
                    t.relative - Double(steps).squareRoot() * t.ulps, 1e-2,
                    "\(t.name): \(what) moved it differently (\(t.relative), float spacing \(t.ulps) of the move)",
                    file: file, line: line)
            } else {
                // A tensor whose true gradient is 0 (a conv bias in front of a BN) moves in both runs by rounding
                // noise only: the float rounding of the BN backward's output, summed over every voxel, which
                // depends on the kernel path's summation order (3e-6 of the largest move on direct AVX2 and
                // Winograd, below 1e-6 on direct AVX-512). The bound keeps that noise negligible; a wrong
                // average across ranks shows in the tensors that really move, checked above.
                XCTAssertLessThanOrEqual(t.relative * t.moved, 1e-5 * scale, "\(t.name)", file: file, line: line)
            }
        }
        for t in tensorDifferences(a.buffers, b.buffers, start: start.buffers) {
            XCTAssertLessThanOrEqual(
                t.relative, 1e-4, "\(t.name): BN running statistics differ (\(what))", file: file, line: line)
            XCTAssertGreaterThan(t.moved, 0, "\(t.name) must have moved", file: file, line: line)
        }
        return params.filter { $0.moved > 1e-3 * scale }.map { $0.relative - Double(steps).squareRoot() * $0.ulps }
            .max() ?? 0
    }

    /// Elastic resume: a run stopped on 2 ranks (--stop-after-epochs 1) continues on 1 rank with the same global
    /// batch, says so, and ends where the uninterrupted 1-rank run ends, within the rank-equivalence tolerance.
    /// A rank count that does not divide the global batch is refused with one line.
    func testResumeOnAnotherRankCountContinuesTheSameRun() throws {
        let extra = "--sync-bn --optimizer sgd --lr 3e-3 --val-every 100"
        var r = try TestEnv.run(try trainCommand(ranks: 1, out: "single", extra: extra, epochs: 2, samples: 1))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        r = try TestEnv.run(
            try trainCommand(ranks: 2, out: "elastic", extra: extra + " --stop-after-epochs 1", epochs: 2, samples: 1))
        XCTAssertEqual(r.status, 75, r.stdout + r.stderr)
        r = try TestEnv.run(
            try trainCommand(ranks: 3, out: "elastic", extra: extra + " --resume", epochs: 2, samples: 1))
        XCTAssertEqual(r.status, 1, r.stdout + r.stderr)
        XCTAssertTrue(r.stderr.contains("error: --batch 2 is not divisible by the 3 MPI ranks"), r.stderr)
        r = try TestEnv.run(
            try trainCommand(ranks: 1, out: "elastic", extra: extra + " --resume", epochs: 2, samples: 1))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(
            r.stdout.contains(
                "checkpoint_latest.h5 was written on 2 rank(s); continuing on 1 with the same global batch 2\n"),
            r.stdout)
        XCTAssertEqual(resumedAt(r.stdout)?.epoch, 1, r.stdout)
        XCTAssertEqual(epochLines(r.stdout), [2], r.stdout)
        let inspect = try TestEnv.run("\(TestEnv.attunet) inspect \(work.path)/elastic/checkpoint_latest.h5")
        XCTAssertTrue(
            inspect.stdout.contains("optimizer steps, 1 rank(s)"),
            "the checkpoint records the rank count that wrote it: " + inspect.stdout)
        let worst = assertRankEquivalent(
            try weights("elastic"), try weights("single"), "2 ranks then 1 and 1 rank throughout", steps: 2)
        print("elastic resume 2 -> 1 rank, worst relative Δ difference: params \(worst)")
    }

    /// Same seed, data and rank count: bit-identical checkpoints.
    func testSameSeedGivesBitIdenticalWeights() throws {
        for run in ["a", "b"] {
            let r = try TestEnv.run(try trainCommand(ranks: 2, out: run))
            XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        }
        let a = try weights("a")
        let b = try weights("b")
        XCTAssertEqual(TrainingCheckpoint.weightsDigest(a), TrainingCheckpoint.weightsDigest(b))
        let inspect = try TestEnv.run("\(TestEnv.attunet) inspect \(work.path)/a/checkpoint_latest.h5")
        XCTAssertTrue(inspect.stdout.contains("weights sha256: \(TrainingCheckpoint.weightsDigest(a))"), inspect.stdout)
        XCTAssertTrue(inspect.stdout.contains("next epoch 2 step 0"), inspect.stdout)
    }

    /// The epochs a run printed ("2026-12-07T09:30:12Z epoch 2/3 ..." -> 2), in order. Every epoch line must
    /// start with its UTC time stamp.
    func epochLines(_ output: String) -> [Int] {
        output.split(separator: "\n").compactMap { line in
            guard let m = line.prefixMatch(of: /(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z )?epoch (\d+)\//) else {
                return nil
            }
            XCTAssertNotNil(m.output.1, "epoch line without its time: \(line)")
            return Int(m.output.2)
        }
    }

    /// The "(epoch, step)" of a "train: resuming ... at epoch E step S" line.
    func resumedAt(_ output: String) -> (epoch: Int, step: Int)? {
        guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("train: resuming") }) else {
            return nil
        }
        let words = line.split(separator: " ")
        guard let e = words.firstIndex(of: "epoch"), let s = words.firstIndex(of: "step"),
            let epoch = Int(words[e + 1]), let step = Int(words[s + 1])
        else { return nil }
        return (epoch, step)
    }

    /// SIGKILL of one rank mid-run, then --resume: the resumed run starts from the last checkpoint (the end of
    /// epoch 0: it runs only epochs 2 and 3), and its final weights equal an uninterrupted run's, bit for bit.
    func testResumeAfterSigkillIsBitIdentical() throws {
        let epochs = 3
        let samples = 12  // 18 steps per epoch: the kill lands well inside epoch 1
        var r = try TestEnv.run(try trainCommand(ranks: 2, out: "full", epochs: epochs, samples: samples))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let job = try startInBackground(
            try trainCommand(ranks: 2, out: "killed", epochs: epochs, samples: samples), log: "killed.log")
        waitForFirstEpoch("killed")
        let pid = try rankPID("killed")
        XCTAssertFalse(pid.isEmpty, "no rank to kill")
        _ = try TestEnv.run("kill -KILL \(pid)")
        job.waitUntilExit()
        XCTAssertNotEqual(job.terminationStatus, 0, "the killed job must fail")
        let before = TrainingCheckpoint.weightsDigest(try weights("killed"))
        XCTAssertNotEqual(before, TrainingCheckpoint.weightsDigest(try weights("full")))
        r = try TestEnv.run(
            try trainCommand(ranks: 2, out: "killed", extra: "--resume", epochs: epochs, samples: samples))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertEqual(resumedAt(r.stdout)?.epoch, 1, r.stdout)
        XCTAssertEqual(resumedAt(r.stdout)?.step, 0, r.stdout)
        XCTAssertEqual(epochLines(r.stdout), [2, 3], "a resumed run trains only the epochs that are left\n" + r.stdout)
        let after = TrainingCheckpoint.weightsDigest(try weights("killed"))
        XCTAssertNotEqual(after, before, "the resumed run must have trained on")
        XCTAssertEqual(after, TrainingCheckpoint.weightsDigest(try weights("full")))
    }

    /// SIGSTOP of one rank mid-run (a hung peer: alive, so mpirun notices nothing): with --step-timeout 5 the
    /// other rank's watchdog ends the job within seconds, naming the rank, the collective and the step, with
    /// exit status 4; the last checkpoint is intact and resumable.
    func testStepWatchdogEndsAJobWhosePeerHangs() throws {
        let job = try startInBackground(
            try trainCommand(ranks: 2, out: "hung", extra: "--step-timeout 5", epochs: 50, samples: 12), log: "hung.log"
        )
        waitForFirstEpoch("hung")
        let pid = try rankPID("hung")
        XCTAssertFalse(pid.isEmpty, "no rank to stop")
        _ = try TestEnv.run("kill -STOP \(pid)")
        let stopped = Date()
        let deadline = stopped.addingTimeInterval(90)
        while job.isRunning && Date() < deadline { usleep(100_000) }
        if job.isRunning { _ = try TestEnv.run("kill -KILL \(pid); kill -KILL \(job.processIdentifier)") }
        job.waitUntilExit()
        let seconds = Date().timeIntervalSince(stopped)
        _ = try? TestEnv.run("kill -KILL \(pid) 2>/dev/null")
        let log = (try? String(contentsOfFile: "\(work.path)/hung.log", encoding: .utf8)) ?? ""
        XCTAssertLessThan(seconds, 40, "the watchdog must end the job soon after its 5 s timeout\n" + log)
        XCTAssertEqual(job.terminationStatus, 4, log)
        XCTAssertNotNil(
            log.range(
                of:
                    #"error: rank 0: MPI (Allreduce|Bcast|Allgather|Barrier) did not finish within 5 s at (the end of )?global step \d+"#,
                options: .regularExpression), log)
        XCTAssertNoThrow(try weights("hung"), "the last checkpoint must be intact")
        let r = try TestEnv.run(try trainCommand(ranks: 2, out: "hung", extra: "--resume", epochs: 2, samples: 12))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
    }

    /// SIGUSR1 to one rank: every rank finishes its step, rank 0 writes latest mid-epoch (epoch 1, step k) and
    /// the job exits 75; --resume continues at exactly that step and completes it bit-identically to an
    /// uninterrupted run.
    func testStopRequestOnOneRankCheckpointsAndResumes() throws {
        let epochs = 3
        let samples = 16  // 24 steps per epoch: the stop lands in epoch 1, never in the last
        var r = try TestEnv.run(try trainCommand(ranks: 2, out: "full", epochs: epochs, samples: samples))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let job = try startInBackground(
            try trainCommand(ranks: 2, out: "stopped", epochs: epochs, samples: samples), log: "stopped.log")
        waitForFirstEpoch("stopped")
        _ = try TestEnv.run("kill -USR1 \(try rankPID("stopped"))")
        job.waitUntilExit()
        let output = (try? String(contentsOfFile: "\(work.path)/stopped.log", encoding: .utf8)) ?? ""
        XCTAssertEqual(job.terminationStatus, 75, output)
        // The mid-epoch path: "finished epoch 1 step k/24".
        let stopLine = output.split(separator: "\n").first { $0.contains("stop requested; finished epoch 1 step ") }
        let k = stopLine.flatMap { line in
            line.split(separator: " ").first { $0.contains("/24") }.flatMap { Int($0.split(separator: "/")[0]) }
        }
        XCTAssertNotNil(k, "expected a mid-epoch stop in epoch 1:\n" + output)
        guard let k else { return }
        XCTAssertTrue((1..<24).contains(k), output)
        let interrupted = TrainingCheckpoint.weightsDigest(try weights("stopped"))
        let inspect = try TestEnv.run("\(TestEnv.attunet) inspect \(work.path)/stopped/checkpoint_latest.h5")
        XCTAssertTrue(inspect.stdout.contains("next epoch 1 step \(k)"), inspect.stdout)
        r = try TestEnv.run(
            try trainCommand(ranks: 2, out: "stopped", extra: "--resume", epochs: epochs, samples: samples))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertEqual(resumedAt(r.stdout)?.epoch, 1, r.stdout)
        XCTAssertEqual(resumedAt(r.stdout)?.step, k, r.stdout)
        XCTAssertEqual(epochLines(r.stdout), [2, 3], r.stdout)
        let final = TrainingCheckpoint.weightsDigest(try weights("stopped"))
        XCTAssertNotEqual(final, interrupted, "the resumed run must have trained on")
        XCTAssertEqual(final, TrainingCheckpoint.weightsDigest(try weights("full")))
    }

    /// The epoch-boundary stop path (--stop-after-epochs, the same path as a signal that arrives during
    /// validation or checkpointing): exit 75 after epoch 0 with the boundary message, resume at epoch 1 step 0,
    /// and the same final weights as an uninterrupted run.
    func testStopAtTheEpochBoundaryResumesBitIdentically() throws {
        var r = try TestEnv.run(try trainCommand(ranks: 2, out: "full", epochs: 2, samples: 4))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        r = try TestEnv.run(
            try trainCommand(ranks: 2, out: "chunked", extra: "--stop-after-epochs 1", epochs: 2, samples: 4))
        XCTAssertEqual(r.status, 75, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("stop requested; finished epoch 0 (--stop-after-epochs)"), r.stdout)
        XCTAssertEqual(epochLines(r.stdout), [1], r.stdout)
        let interrupted = TrainingCheckpoint.weightsDigest(try weights("chunked"))
        r = try TestEnv.run(try trainCommand(ranks: 2, out: "chunked", extra: "--resume", epochs: 2, samples: 4))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertEqual(resumedAt(r.stdout)?.epoch, 1, r.stdout)
        XCTAssertEqual(resumedAt(r.stdout)?.step, 0, r.stdout)
        XCTAssertEqual(epochLines(r.stdout), [2], r.stdout)
        let final = TrainingCheckpoint.weightsDigest(try weights("chunked"))
        XCTAssertNotEqual(final, interrupted)
        XCTAssertEqual(final, TrainingCheckpoint.weightsDigest(try weights("full")))
    }

    /// A checkpoint of another model, a truncated one and a fresh run over an existing one are refused with
    /// one line naming the file; nothing is overwritten.
    func testMismatchedOrCorruptCheckpointsAreRefused() throws {
        var r = try TestEnv.run(try trainCommand(ranks: 1, out: "run", epochs: 1))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let latest = "\(work.path)/run/checkpoint_latest.h5"
        let good = try Data(contentsOf: URL(fileURLWithPath: latest))
        r = try TestEnv.run(try trainCommand(ranks: 1, out: "run", epochs: 1))
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("checkpoint_latest.h5 exists"), r.stderr)
        r = try TestEnv.run(try trainCommand(ranks: 1, out: "run", extra: "--resume --model unet", epochs: 2))
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("checkpoint is for attention-unet"), r.stderr)
        // Other settings than the run's are refused, naming the first difference; more epochs are not.
        r = try TestEnv.run(try trainCommand(ranks: 1, out: "run", extra: "--resume --weight-decay 1e-5", epochs: 2))
        XCTAssertEqual(r.status, 1, r.stdout + r.stderr)
        XCTAssertEqual(
            r.stderr,
            "error: \(latest): this command's settings differ from the run's: weight_decay: 1e-05 (was 1e-06); resume with the run's options (its config.json) or start afresh with --force\n"
        )
        r = try TestEnv.run(
            try trainCommand(ranks: 1, out: "run", extra: "--resume --foreground-fraction 0.5", epochs: 2))
        XCTAssertTrue(r.stderr.contains("foreground_fraction: 0.5 (was 0.3333333333333333)"), r.stderr)
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: latest)), good, "a refused resume must not touch the checkpoint")
        try good.prefix(good.count / 3).write(to: URL(fileURLWithPath: latest))
        r = try TestEnv.run(try trainCommand(ranks: 1, out: "run", extra: "--resume", epochs: 2))
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("checkpoint_latest.h5"), r.stderr)
    }

    /// A checkpoint write killed mid-way leaves its hidden temporary (`.tmp-<pid>-<n>-<name>`): `--resume`
    /// removes it when its process is dead, with one line saying so, and keeps one of a live process.
    func testResumeRemovesTemporariesOfADeadWriterOnly() throws {
        var r = try TestEnv.run(try trainCommand(ranks: 1, out: "stale", epochs: 1))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let stale = ".tmp-\(try TestEnv.deadPID())-3-checkpoint_latest.h5"
        let live = ".tmp-\(getpid())-1-checkpoint_latest.h5"
        for name in [stale, live] {
            try Data(repeating: 1, count: 4096).write(to: work.appendingPathComponent("stale/\(name)"))
        }
        r = try TestEnv.run(try trainCommand(ranks: 1, out: "stale", extra: "--resume", epochs: 2))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let files = try FileManager.default.contentsOfDirectory(atPath: work.appendingPathComponent("stale").path)
        XCTAssertFalse(files.contains(stale), "the dead writer's temporary must be removed: \(files)")
        XCTAssertTrue(files.contains(live), "a live process's temporary must be kept: \(files)")
        let lines = r.stdout.split(separator: "\n").filter { $0.contains("temporary file") }
        XCTAssertEqual(
            lines, ["train: removed 1 temporary file(s) of a write killed mid-way from \(work.path)/stale: \(stale)"],
            r.stdout)
    }

    /// Every image chunk of a copy of the store overwritten with garbage (so deflate fails): the patch loader's
    /// thread meets the corrupt data first. Training fails with one error line naming the store and the
    /// dataset, and no HDF5 diagnostic (its automatic error printing is per thread) reaches stderr.
    func testCorruptChunksGiveOneLineAndNoLibraryNoiseFromTheLoaderThread() throws {
        let store = work.appendingPathComponent("corrupt.h5").path
        try FileManager.default.copyItem(atPath: try PhantomStore.path(), toPath: store)
        try TestEnv.python(
            """
            import h5py
            spans = []
            with h5py.File('\(store)', "r") as f:
                for name in f["cases"]:
                    d = f["cases"][name]["image"]
                    assert d.compression == "gzip", d.compression
                    for i in range(d.id.get_num_chunks()):
                        info = d.id.get_chunk_info(i)
                        spans.append((info.byte_offset, info.size))
            with open('\(store)', "r+b") as f:
                for offset, size in spans:
                    f.seek(offset + 2)   # keep the zlib header: the inflate fails inside the stream
                    f.write(bytes((i * 37 + 11) % 256 for i in range(size - 2)))
            """)
        let r = try TestEnv.run(
            try trainCommand(ranks: 1, out: "corrupt", epochs: 1).replacingOccurrences(
                of: try PhantomStore.path(), with: store))
        XCTAssertEqual(r.status, 1, r.stdout + r.stderr)
        let lines = r.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "one error line, nothing from HDF5:\n" + r.stderr)
        XCTAssertTrue(r.stderr.hasPrefix("error: \(store)") && r.stderr.contains("/image"), r.stderr)
        XCTAssertFalse(r.stderr.contains("HDF5-DIAG"), r.stderr)
    }

    /// A loss that turns NaN stops the run with status 3 and a message naming the step; the checkpoint already
    /// in the run folder (a good one) is kept.
    func testNonFiniteLossStopsAndKeepsTheLastGoodCheckpoint() throws {
        var r = try TestEnv.run(try trainCommand(ranks: 1, out: "nan", epochs: 1))
        XCTAssertEqual(r.status, 0, r.stderr)
        let good = try TrainingCheckpoint.weightsDigest(weights("nan"))
        r = try TestEnv.run(
            try trainCommand(ranks: 1, out: "nan", extra: "--force --lr 1e30 --schedule constant", epochs: 6))
        XCTAssertEqual(r.status, 3, r.stdout + r.stderr)
        XCTAssertTrue(r.stderr.contains("loss is NaN/Inf at epoch"), r.stderr)
        XCTAssertEqual(
            try TrainingCheckpoint.weightsDigest(weights("nan")), good, "the last good checkpoint must be kept")
    }

    /// The learning rate each epoch ran at, from log.csv.
    func loggedRates(_ run: String) throws -> [Double] {
        let csv = try String(contentsOfFile: "\(work.path)/\(run)/log.csv", encoding: .utf8)
        let rows = csv.split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false) }
        let column = rows[0].firstIndex(of: "lr")!
        return rows.dropFirst().map { Double($0[column])! }
    }

    /// --schedule reaches the optimizer epoch by epoch: step (x0.5 every --lr-step epochs), poly
    /// (x(1 - e/E)^0.9) and constant, as log.csv records the rate each epoch ran at.
    func testLearningRateSchedulesReachTheOptimizer() throws {
        let base = 1e-3
        let epochs = 3
        let expected: [String: [Double]] = [
            "step --lr-step 2": (0..<epochs).map { base * pow(0.5, Double($0 / 2)) },
            "poly": (0..<epochs).map { base * pow(1 - Double($0) / Double(epochs), 0.9) },
            "constant": Array(repeating: base, count: epochs),
        ]
        for (i, (schedule, rates)) in expected.sorted(by: { $0.key < $1.key }).enumerated() {
            let r = try TestEnv.run(
                try trainCommand(
                    ranks: 1, out: "lr\(i)", extra: "--schedule \(schedule) --val-every 100", epochs: epochs, samples: 1
                ))
            XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
            let logged = try loggedRates("lr\(i)")
            XCTAssertEqual(logged.count, epochs, schedule)
            for (a, b) in zip(logged, rates) {
                XCTAssertEqual(a, b, accuracy: 1e-5 * b, "--schedule \(schedule): \(logged)")
            }
        }
    }

    /// Every BN `num_batches_tracked` is written as PyTorch keeps it, an int64 scalar, equal to the number of
    /// optimizer steps (read back with h5py).
    func testNumBatchesTrackedIsAnInt64ScalarInTheCheckpoint() throws {
        let r = try TestEnv.run(try trainCommand(ranks: 1, out: "nbt", epochs: 2, samples: 2))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let script = """
            import h5py, sys
            f = h5py.File(sys.argv[1], "r")
            names = [k for k in f["state_dict"] if k.endswith("num_batches_tracked")]
            kinds = {(str(f["state_dict"][k].dtype), f["state_dict"][k].shape, int(f["state_dict"][k][()])) for k in names}
            print(len(names), sorted(kinds))
            """
        let py = try TestEnv.run("\(TestEnv.python) -c '\(script)' \(work.path)/nbt/checkpoint_latest.h5")
        XCTAssertEqual(py.status, 0, py.stderr)
        let model = try weights("nbt")
        let counters = model.buffers.entries.filter { $0.name.hasSuffix("num_batches_tracked") }
        let steps = Int(model.buffers.values.data[counters[0].offset])
        XCTAssertGreaterThan(steps, 0)
        XCTAssertEqual(
            py.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "\(counters.count) [('int64', (), \(steps))]")
    }

    /// Settings that cannot run are refused before anything is written, with one error line (rank 0's) naming
    /// the problem, and exit status 1 (64 for a malformed command line).
    func testTrainRefusesBadSettingsWithOneLine() throws {
        let cases: [(ranks: Int, extra: String, status: Int32, says: String)] = [
            (2, "--batch 3", 1, "--batch 3 is not divisible by the 2 MPI ranks"),
            (1, "--patch 30x32x16", 1, "--patch x = 30 is not a positive multiple of 16"),
            (1, "--patch 32x32", 64, "--patch"),
            (1, "--classes 3", 1, "the store has 4 classes"),
            (1, "--schedule cosine", 64, "--schedule"),
            (1, "--val-cases nosuchcase", 1, "no case 'nosuchcase'"),
        ]
        for (i, c) in cases.enumerated() {
            let r = try TestEnv.run(try trainCommand(ranks: c.ranks, out: "bad\(i)", extra: c.extra, epochs: 1))
            XCTAssertEqual(r.status, c.status, "\(c.extra): \(r.stdout + r.stderr)")
            XCTAssertTrue(r.stderr.contains(c.says), "\(c.extra): \(r.stderr)")
            if c.status == 1 {
                let errors = r.stderr.split(separator: "\n").filter { $0.hasPrefix("error: ") }
                XCTAssertEqual(errors.count, 1, "\(c.extra): one error line, from rank 0 only: \(r.stderr)")
            }
            XCTAssertFalse(
                FileManager.default.fileExists(atPath: "\(work.path)/bad\(i)"), "\(c.extra): nothing written")
        }
        let missing = try TestEnv.run("\(TestEnv.attunet) train --store \(work.path)/none.h5 --out \(work.path)/x")
        XCTAssertEqual(missing.status, 1)
        XCTAssertEqual(missing.stderr, "error: \(work.path)/none.h5: no such file\n")
    }
}
