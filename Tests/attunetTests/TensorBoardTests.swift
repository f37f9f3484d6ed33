import Foundation
import TestSupport
import XCTest

/// The TensorBoard event files `train` writes, read back with the `tensorboard` package's own reader: every
/// epoch's loss and Dice equal `log.csv`'s, and a run resumed from an earlier checkpoint shows each step once.
final class TensorBoardTests: XCTestCase {
    func testEventsMatchTheLogAndAResumeShowsEachStepOnce() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let d = dir.path
        XCTAssertEqual(
            try TestEnv.run("\(TestEnv.attunet) synth --cases 2 --resolution 0.5 --threads 2 --out \(d)/ph").status, 0)
        let p = try TestEnv.run("\(TestEnv.attunet) prepare --input \(d)/ph --out \(d)/s.h5 --spacing 4 --threads 2")
        XCTAssertEqual(p.status, 0, p.stderr)
        let train =
            "\(TestEnv.attunet) train --store \(d)/s.h5 --feature-scale 16 --patch 32x32x16 --batch 1 --epochs 3 --val-cases phantom_001 --out \(d)/run"
        // Two epochs, a copy of that checkpoint, the third epoch; then the third again from the copy.
        let first = try TestEnv.run(train + " --stop-after-epochs 2")
        XCTAssertEqual(first.status, 75, first.stderr)
        // As if stopped after the checkpoint was written and before the log row: resume takes the row from the
        // checkpoint.
        let log = "\(d)/run/log.csv"
        let rows = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(rows.count, 3, "\(rows)")
        try (rows.prefix(2).joined(separator: "\n") + "\n").write(toFile: log, atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(atPath: "\(d)/run/checkpoint_latest.h5", toPath: "\(d)/epoch2.h5")
        let rest = try TestEnv.run(train + " --resume")
        XCTAssertEqual(rest.status, 0, rest.stderr)
        let again = try TestEnv.run(train + " --resume-from \(d)/epoch2.h5")
        XCTAssertEqual(again.status, 0, again.stderr)
        let files = try FileManager.default.contentsOfDirectory(atPath: "\(d)/run/tensorboard").filter {
            $0.hasPrefix("events.out.tfevents.")
        }
        XCTAssertEqual(files.count, 3, "one event file per process: \(files)")
        try TestEnv.python(
            """
            import csv
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
            ea = EventAccumulator(r'\(d)/run/tensorboard', size_guidance={'scalars': 0})
            ea.Reload()
            rows = list(csv.DictReader(open(r'\(d)/run/log.csv')))
            assert [int(r['epoch']) for r in rows] == [0, 1, 2], rows
            def series(tag):
                s = ea.Scalars(tag)
                steps = [e.step for e in s]
                assert len(steps) == len(set(steps)), (tag, steps)   # each step once
                return {e.step: e.value for e in s}
            loss = series('train/loss')
            assert sorted(loss) == [int(r['step']) for r in rows], (sorted(loss), rows)
            for r in rows:
                step = int(r['step'])
                assert abs(loss[step] - float(r['train_loss'])) <= 1e-6 * max(1, abs(float(r['train_loss']))), (step, loss[step], r)
                for name in ['spleen', 'pancreas', 'kidney']:
                    dice = series('validation/dice_' + name)
                    assert abs(dice[step] - float(r['dice_' + name])) <= 5e-5, (name, step, dice[step], r)
            import datetime
            times = [datetime.datetime.strptime(r['time_utc'], '%Y-%m-%dT%H:%M:%SZ') for r in rows]
            assert times == sorted(times), times
            wall = series('time/epoch_wall_s')
            val_loss = series('validation/loss')
            for r in rows:
                step = int(r['step'])
                assert float(r['epoch_wall_s']) >= float(r['seconds']) > 0, r   # validation and checkpoints included
                assert abs(wall[step] - float(r['epoch_wall_s'])) <= 1e-3, (step, wall[step], r)
                assert 0 < float(r['val_loss']) < 1, r   # every epoch validates here; Dice loss in (0, 1)
                assert abs(val_loss[step] - float(r['val_loss'])) <= 1e-6, (step, val_loss[step], r)
            for tag in ['train/learning_rate', 'train/patches_per_s', 'time/epoch_s', 'time/step_forward_s', 'time/step_allreduce_s']:
                assert len(series(tag)) == 3, tag
            """)
    }
}
