import Foundation
import HDF5Kit
import NN
import TestSupport
import Training
import XCTest

/// `attunet train` end to end on a tiny phantom store: MPI against single-process runs, determinism,
/// resume after SIGKILL and after a stop request, refusals, and the NaN stop.
final class TrainerTests: XCTestCase {
    /// A 4-case store at 4 mm (volumes of about 40x40x25), made once for all tests.
    nonisolated(unsafe) static var storeDir: URL?

    static func store() throws -> String {
        if let d = storeDir { return d.appendingPathComponent("store.h5").path }
        let dir = try TestEnv.tempDir()
        let bin = TestEnv.attunet
        var r = try TestEnv.run("\(bin) synth --cases 4 --resolution 0.5 --out \(dir.path)/nii --seed 3")
        guard r.status == 0 else { throw NSError(domain: "synth failed: \(r.stderr)", code: 1) }
        r = try TestEnv.run("\(bin) prepare --input \(dir.path)/nii --out \(dir.path)/store.h5 --spacing 4")
        guard r.status == 0 else { throw NSError(domain: "prepare failed: \(r.stderr)", code: 1) }
        storeDir = dir
        return dir.appendingPathComponent("store.h5").path
    }

    override class func tearDown() {
        if let d = storeDir { try? FileManager.default.removeItem(at: d) }
        super.tearDown()
    }

    var work: URL!
    override func setUpWithError() throws { work = try TestEnv.tempDir() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: work) }

    /// Small but real: feature scale 16, 32x32x16 patches, Adam, paper augmentation.
    func trainCommand(ranks: Int, out: String, extra: String = "", epochs: Int = 2, samples: Int = 4) throws -> String {
        let launcher = ranks > 1 ? "mpirun -np \(ranks) --bind-to none --oversubscribe " : ""
        return "\(launcher)\(TestEnv.attunet) train --store \(try Self.store()) --feature-scale 16 --patch 32x32x16 --batch 2 --epochs \(epochs) --samples-per-case \(samples) --lr 1e-3 --seed 5 --out \(work.path)/\(out) \(extra)"
    }

    func weights(_ run: String, _ name: String = "checkpoint_latest.h5") throws -> SegmentationModel {
        try Checkpoint.load("\(work.path)/\(run)/\(name)")
    }

    /// ‖a − b‖ / ‖b‖ over the flat parameter vector.
    func relativeDifference(_ a: SegmentationModel, _ b: SegmentationModel) -> Double {
        var diff = 0.0, norm = 0.0
        for i in 0..<b.params.count {
            let d = Double(a.params.values.data[i]) - Double(b.params.values.data[i])
            diff += d * d
            norm += Double(b.params.values.data[i]) * Double(b.params.values.data[i])
        }
        return (diff / norm).squareRoot()
    }

    /// Starts a command line in the background with its output in `log` (under the work folder).
    func startInBackground(_ command: String, log: String) throws -> Process {
        let job = Process()
        job.executableURL = URL(fileURLWithPath: "/bin/sh")
        job.arguments = ["-c", "exec \(command) > \(work.path)/\(log) 2>&1"]
        job.environment = TestEnv.childEnvironment
        try job.run()
        return job
    }

    /// Waits until `run` has logged its first epoch (so checkpoint_latest.h5 exists), then a moment more so a
    /// signal lands inside the next epoch.
    func waitForFirstEpoch(_ run: String) {
        let log = "\(work.path)/\(run)/log.csv"
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline && ((try? String(contentsOfFile: log, encoding: .utf8))?.split(separator: "\n").count ?? 0) < 2 {
            usleep(20_000)
        }
        usleep(50_000)
    }

    /// The process id of one rank (not mpirun) of the training run writing to `run`.
    func rankPID(_ run: String) throws -> String {
        let r = try TestEnv.run("pgrep -f 'attunet train .*\(work.path)/\(run)' | while read p; do [ \"$(cat /proc/$p/comm)\" = attunet ] && echo $p; done | tail -1")
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// With SyncBN, 2 ranks x batch 1 follow the same global patch sequence as 1 rank x batch 2 and end with
    /// the same weights after 6 steps across an epoch boundary (the all-reduce averages the per-rank gradients
    /// of the per-sample loss). SGD, because Adam turns the rounding noise in parameters whose true gradient
    /// is 0 (conv biases before BN) into full ±lr steps; tiny BN batches at the bottleneck amplify rounding
    /// differences exponentially over many steps, so the check uses a few.
    func testTwoRanksWithSyncBNMatchOneRank() throws {
        let extra = "--sync-bn --optimizer sgd --lr 3e-3 --val-every 100"
        var r = try TestEnv.run(try trainCommand(ranks: 2, out: "mpi", extra: extra, epochs: 2, samples: 2))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        r = try TestEnv.run(try trainCommand(ranks: 1, out: "single", extra: extra, epochs: 2, samples: 2))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let a = try weights("mpi"), b = try weights("single")
        let start = SegmentationModel(a.config, seed: 5)
        XCTAssertGreaterThan(relativeDifference(b, start), 1e-4, "training must have moved the weights")
        XCTAssertLessThanOrEqual(relativeDifference(a, b), 1e-4)
    }

    /// Same seed, data and rank count: bit-identical checkpoints.
    func testSameSeedGivesBitIdenticalWeights() throws {
        for run in ["a", "b"] {
            let r = try TestEnv.run(try trainCommand(ranks: 2, out: run))
            XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        }
        let a = try weights("a"), b = try weights("b")
        XCTAssertEqual(TrainingCheckpoint.weightsDigest(a), TrainingCheckpoint.weightsDigest(b))
        let inspect = try TestEnv.run("\(TestEnv.attunet) inspect \(work.path)/a/checkpoint_latest.h5")
        XCTAssertTrue(inspect.stdout.contains("weights sha256: \(TrainingCheckpoint.weightsDigest(a))"), inspect.stdout)
        XCTAssertTrue(inspect.stdout.contains("next epoch 2 step 0"), inspect.stdout)
    }

    /// SIGKILL of one rank mid-run, then --resume: the final weights equal an uninterrupted run's, bit for bit.
    func testResumeAfterSigkillIsBitIdentical() throws {
        let epochs = 3, samples = 12  // 18 steps per epoch: the kill lands well inside epoch 1
        var r = try TestEnv.run(try trainCommand(ranks: 2, out: "full", epochs: epochs, samples: samples))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let job = try startInBackground(try trainCommand(ranks: 2, out: "killed", epochs: epochs, samples: samples), log: "killed.log")
        waitForFirstEpoch("killed")
        let pid = try rankPID("killed")
        XCTAssertFalse(pid.isEmpty, "no rank to kill")
        _ = try TestEnv.run("kill -KILL \(pid)")
        job.waitUntilExit()
        XCTAssertNotEqual(job.terminationStatus, 0, "the killed job must fail")
        let before = try weights("killed")
        XCTAssertNotEqual(TrainingCheckpoint.weightsDigest(before), TrainingCheckpoint.weightsDigest(try weights("full")))
        r = try TestEnv.run(try trainCommand(ranks: 2, out: "killed", extra: "--resume", epochs: epochs, samples: samples))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("resuming"), r.stdout)
        XCTAssertEqual(TrainingCheckpoint.weightsDigest(try weights("killed")), TrainingCheckpoint.weightsDigest(try weights("full")))
    }

    /// SIGUSR1 to one rank: every rank finishes its step, rank 0 writes latest, the job exits 75; --resume
    /// completes it bit-identically to an uninterrupted run.
    func testStopRequestOnOneRankCheckpointsAndResumes() throws {
        let epochs = 3, samples = 16  // 24 steps per epoch: the stop lands in epoch 1, never in the last
        var r = try TestEnv.run(try trainCommand(ranks: 2, out: "full", epochs: epochs, samples: samples))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let job = try startInBackground(try trainCommand(ranks: 2, out: "stopped", epochs: epochs, samples: samples), log: "stopped.log")
        waitForFirstEpoch("stopped")
        _ = try TestEnv.run("kill -USR1 \(try rankPID("stopped"))")
        job.waitUntilExit()
        let output = (try? String(contentsOfFile: "\(work.path)/stopped.log", encoding: .utf8)) ?? ""
        XCTAssertEqual(job.terminationStatus, 75, output)
        XCTAssertTrue(output.contains("stop requested"), output)
        r = try TestEnv.run(try trainCommand(ranks: 2, out: "stopped", extra: "--resume", epochs: epochs, samples: samples))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertEqual(TrainingCheckpoint.weightsDigest(try weights("stopped")), TrainingCheckpoint.weightsDigest(try weights("full")))
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
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: latest)), good, "a refused resume must not touch the checkpoint")
        try good.prefix(good.count / 3).write(to: URL(fileURLWithPath: latest))
        r = try TestEnv.run(try trainCommand(ranks: 1, out: "run", extra: "--resume", epochs: 2))
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("checkpoint_latest.h5"), r.stderr)
    }

    /// A loss that turns NaN stops the run with status 3 and a message naming the step; the checkpoint of the
    /// last good epoch is kept.
    func testNonFiniteLossStopsAndKeepsTheLastGoodCheckpoint() throws {
        var r = try TestEnv.run(try trainCommand(ranks: 1, out: "nan", epochs: 1))
        XCTAssertEqual(r.status, 0, r.stderr)
        let good = try TrainingCheckpoint.weightsDigest(weights("nan"))
        r = try TestEnv.run(try trainCommand(ranks: 1, out: "nan", extra: "--resume --lr 1e30 --schedule constant", epochs: 6))
        XCTAssertEqual(r.status, 3, r.stdout + r.stderr)
        XCTAssertTrue(r.stderr.contains("loss is NaN/Inf at epoch"), r.stderr)
        XCTAssertEqual(try TrainingCheckpoint.weightsDigest(weights("nan")), good, "the last good checkpoint must be kept")
    }
}
