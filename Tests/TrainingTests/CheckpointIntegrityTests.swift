import Foundation
import TestSupport
import XCTest

/// Damaged and unwritable checkpoints through the tool: a flipped byte (Fletcher-32) and a rewritten value
/// (SHA-256) are refused by inspect, predict and --resume with one line, --resume names --resume-from and
/// never falls back by itself; a full disk keeps the last checkpoint.
extension TrainerTests {
    func path(_ run: String, _ name: String) -> String { "\(work.path)/\(run)/\(name)" }

    func testDamagedCheckpointsAreRefusedAndResumeFromContinues() throws {
        var r = try TestEnv.run(try trainCommand(ranks: 1, out: "run", epochs: 1))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let latest = path("run", "checkpoint_latest.h5")
        let best = path("run", "checkpoint_best.h5")
        r = try TestEnv.run("\(TestEnv.attunet) inspect \(latest)")
        XCTAssertTrue(
            r.stdout.contains("stored digests: weights and BN buffers verified; optimizer and training state verified"),
            r.stdout)

        // A flipped byte in a weight: every reader says so in one line; --resume adds the way out.
        try TestEnv.flipByte(in: latest, dataset: "state_dict/conv1.conv1.0.weight")
        let damaged = try Data(contentsOf: URL(fileURLWithPath: latest))
        let checksum = "error: \(latest): checksum mismatch in /state_dict/conv1.conv1.0.weight"
        for command in [
            "inspect \(latest)",
            "predict --store \(try PhantomStore.path()) --checkpoint \(latest) --out \(work.path)/pred",
        ] {
            r = try TestEnv.run("\(TestEnv.attunet) \(command)")
            XCTAssertEqual(r.status, 1, command + r.stdout + r.stderr)
            XCTAssertEqual(r.stderr, checksum + "\n", command)
        }
        r = try TestEnv.run(try trainCommand(ranks: 1, out: "run", extra: "--resume", epochs: 2))
        XCTAssertEqual(r.status, 1, r.stdout + r.stderr)
        XCTAssertEqual(
            r.stderr,
            checksum + "; to continue from another checkpoint pass --resume-from (e.g. --resume-from \(best))\n")
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: latest)), damaged, "a refused resume must not touch the run")

        // Values rewritten with valid checksums (h5py): the stored SHA-256 digests see them.
        let weights = path("run", "weights.h5")
        let optimizer = path("run", "optimizer.h5")
        try FileManager.default.copyItem(atPath: best, toPath: weights)
        try FileManager.default.copyItem(atPath: best, toPath: optimizer)
        try TestEnv.rewriteValue(in: weights, dataset: "state_dict/final.weight")
        try TestEnv.rewriteValue(in: optimizer, dataset: "optimizer/moment2", index: 100)
        for (file, what) in [
            (weights, "the weights and BN buffers (/state_dict)"),
            (optimizer, "the optimizer and training state (/optimizer, training_state, train_config)"),
        ] {
            for command in [
                "\(TestEnv.attunet) inspect \(file)",
                try trainCommand(ranks: 1, out: "run", extra: "--resume-from \(file)", epochs: 2),
            ] {
                r = try TestEnv.run(command)
                XCTAssertEqual(r.status, 1, command + r.stdout + r.stderr)
                XCTAssertTrue(
                    r.stderr.hasPrefix("error: \(file): SHA-256 mismatch in \(what): the file records "),
                    command + "\n" + r.stderr)
                XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
            }
        }
        r = try TestEnv.run(
            "\(TestEnv.attunet) predict --store \(try PhantomStore.path()) --checkpoint \(weights) --out \(work.path)/pred"
        )
        XCTAssertTrue(
            r.status == 1 && r.stderr.hasPrefix("error: \(weights): SHA-256 mismatch in the weights"), r.stderr)

        // A checkpoint written before digests were stored loads, and inspect says it has none.
        let old = path("run", "old.h5")
        try FileManager.default.copyItem(atPath: best, toPath: old)
        try TestEnv.python(
            """
            import h5py
            with h5py.File(r'\(old)', 'r+') as f:
                del f.attrs['weights_sha256']; del f.attrs['state_sha256']
            """)
        r = try TestEnv.run("\(TestEnv.attunet) inspect \(old)")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("stored digests: none (no stored digest"), r.stdout)

        // --resume-from the best checkpoint continues the run and writes a good latest.
        r = try TestEnv.run(try trainCommand(ranks: 1, out: "run", extra: "--resume-from \(best)", epochs: 2))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertEqual(resumedAt(r.stdout)?.epoch, 1, r.stdout)
        XCTAssertEqual(epochLines(r.stdout), [2], r.stdout)
        r = try TestEnv.run("\(TestEnv.attunet) inspect \(latest)")
        XCTAssertTrue(
            r.status == 0 && r.stdout.contains("next epoch 2")
                && r.stdout.contains("optimizer and training state verified"),
            r.stdout + r.stderr)
    }

    /// A run whose folder is on a small tmpfs that fills up: the checkpoint write fails with one line naming
    /// the checkpoint and that the disk is full (status 1), the checkpoints already there stay as they were and
    /// verify, and no temporary file is left.
    func testFullDiskKeepsTheLastCheckpoint() throws {
        var r = try TestEnv.run(try trainCommand(ranks: 1, out: "run", epochs: 1))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let small = try TestEnv.smallFileSystem(size: "16m")
        defer { TestEnv.unmount(small) }
        let run = small.appendingPathComponent("run")
        try FileManager.default.copyItem(atPath: "\(work.path)/run", toPath: run.path)
        let names = ["checkpoint_latest.h5", "checkpoint_best.h5"]
        let before = try names.map { try Data(contentsOf: run.appendingPathComponent($0)) }
        try TestEnv.fill(small, leavingKiB: 1024)
        r = try TestEnv.run(
            try trainCommand(ranks: 1, out: "run", extra: "--resume", epochs: 2)
                .replacingOccurrences(of: "\(work.path)/run", with: run.path))
        XCTAssertEqual(r.status, 1, r.stdout + r.stderr)
        let lines = r.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, r.stderr)
        XCTAssertTrue(
            lines.first.map {
                $0.hasPrefix("error: \(run.path)/checkpoint_")
                    && $0.contains(".h5: no space left on device while writing ")
            } ?? false, r.stderr)
        XCTAssertEqual(
            try names.map { try Data(contentsOf: run.appendingPathComponent($0)) }, before,
            "the checkpoints must be kept")
        XCTAssertEqual(TestEnv.hiddenFiles(run), [], "no temporary file may be left")
        r = try TestEnv.run("\(TestEnv.attunet) inspect \(run.path)/checkpoint_latest.h5")
        XCTAssertTrue(r.status == 0 && r.stdout.contains("optimizer and training state verified"), r.stdout + r.stderr)
    }
}
