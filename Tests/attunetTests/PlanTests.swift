import Foundation
import TestSupport
import XCTest

/// `attunet plan` as a user runs it: a tiny calibration (small patch and network, no timing judged) saved as a
/// profile, plans from it whose layouts obey the run's rules and the memory limit, and printed command lines
/// that the cluster scripts accept and turn into the planned ranks, threads and fold groups (under a stand-in
/// Slurm and mpirun that print what they were asked to start).
final class PlanTests: XCTestCase {
    private var dir: URL!
    private let tiny = "--feature-scale 16 --patch 32x32x16"

    override func setUpWithError() throws { dir = try TestEnv.tempDir() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    private func attunet(_ args: String, timeout: TimeInterval = 600) throws -> TestEnv.Result {
        try TestEnv.run("cd \(dir.path) && \(TestEnv.attunet) \(args)", timeout: timeout)
    }

    private func json(_ text: String) throws -> [String: Any] {
        try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], text)
    }

    /// Calibrates both models at 1 and 2 threads on a 32x32x16 patch; the profile is snake_case JSON with
    /// every measured figure.
    private func calibrate() throws -> String {
        let path = dir.appendingPathComponent("profile.json").path
        let r = try attunet(
            "plan --calibrate --out \(path) \(tiny) --calibration-threads 1,2 --calibration-steps 1 --calibration-warmup 1"
        )
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("wrote the calibration to \(path)"), r.stdout)
        let p = try json(String(decoding: try Data(contentsOf: URL(fileURLWithPath: path)), as: UTF8.self))
        XCTAssertEqual(p["patch"] as? [Int], [32, 32, 16])
        XCTAssertEqual(p["batch_per_rank"] as? Int, 2)
        XCTAssertNotNil(p["measured_at"] as? String)
        let models = try XCTUnwrap(p["models"] as? [[String: Any]])
        XCTAssertEqual(models.compactMap { $0["model"] as? String }, ["attention-unet", "unet"])
        XCTAssertEqual(models[0]["parameters"] as? Int, 406_446, "attention-unet at feature scale 16")
        for m in models {
            let points = try XCTUnwrap(m["points"] as? [[String: Any]])
            XCTAssertEqual(points.compactMap { $0["threads"] as? Int }, [1, 2])
            for q in points {
                for key in ["step_seconds", "batch_seconds", "tile_seconds"] {
                    XCTAssertGreaterThan(q[key] as? Double ?? 0, 0, key)
                }
                XCTAssertLessThanOrEqual(
                    q["batch_seconds"] as! Double, (q["step_seconds"] as! Double) * 1.5, "a part within the step")
            }
            XCTAssertGreaterThan(
                m["peak_resident_bytes"] as? Int ?? 0, m["resident_before_steps_bytes"] as? Int ?? .max)
        }
        return path
    }

    func testCalibratedPlansObeyTheRunsRulesAndTheScriptsTakeThem() throws {
        let profile = try calibrate()

        // The soonest layout on 3 nodes of 8 cores: batch 2 split over at most 2 ranks, cores and memory kept.
        let r = try attunet(
            "plan --profile \(profile) \(tiny) --nodes 3 --cores-per-node 8 --memory-per-node 64 --json")
        XCTAssertEqual(r.status, 0, r.stderr)
        let plan = try json(r.stdout)
        let soonest = try XCTUnwrap(plan["soonest"] as? [String: Any])
        let layout = try XCTUnwrap(soonest["layout"] as? [String: Int])
        let (g, ranks, t, n, k) = (
            layout["groups"]!, layout["ranks_per_group"]!, layout["threads_per_rank"]!, layout["nodes"]!,
            layout["ranks_per_node"]!
        )
        XCTAssertEqual(2 % ranks, 0, "\(layout)")
        XCTAssertLessThanOrEqual(k * t, 8, "\(layout)")
        XCTAssertLessThanOrEqual(n, 3)
        XCTAssertEqual(n * k, g * ranks)
        XCTAssertLessThanOrEqual(g, 10, "no more groups than the 10 jobs")
        XCTAssertLessThanOrEqual((soonest["memory_per_rank_bytes"] as! Double) * Double(k), 64 * 1_073_741_824)
        XCTAssertGreaterThan(soonest["wall_seconds"] as? Double ?? 0, 0)
        let sbatch = try XCTUnwrap(plan["sbatch"] as? String)
        XCTAssertTrue(sbatch.contains("--nodes=\(n) --ntasks-per-node=\(k) --cpus-per-task=\(t) "), sbatch)
        XCTAssertTrue(sbatch.contains("--epochs 300") && sbatch.contains("--patch 32x32x16"), sbatch)
        XCTAssertEqual(sbatch.contains("--fold-parallel \(g)"), g > 1, sbatch)

        // cluster/cv.sbatch under a stand-in sbatch (which runs the script with the Slurm variables of its
        // options) and mpirun (which prints what it would start).
        try stubs()
        let job = try bash(sbatch)
        XCTAssertEqual(job.status, 0, job.stdout + job.stderr)
        let log = try String(contentsOf: dir.appendingPathComponent("job.log"), encoding: .utf8)
        XCTAssertTrue(log.contains("STUB mpirun -np \(n * k) --bind-to none"), log)
        XCTAssertTrue(log.contains("ATTUNET_THREADS=\(t) "), log)
        XCTAssertTrue(
            log.contains(" cv --store data/ct150.h5 --out runs/cv-7 --folds 5 --models attention-unet,unet"), log)
        XCTAssertEqual(log.contains("--fold-parallel \(g)"), g > 1, log)

        // The job array: its per-task request reaches cv-array.sbatch, task 0 runs fold 0, the summary follows.
        let array = try XCTUnwrap(plan["submit_array"] as? String)
        let a = try bash(array)
        XCTAssertEqual(a.status, 0, a.stdout + a.stderr)
        XCTAssertTrue(a.stdout.contains("folds: job array 7"), a.stdout)
        let alog = try String(contentsOf: dir.appendingPathComponent("job.log"), encoding: .utf8)
        XCTAssertTrue(alog.contains("--folds 5 --models attention-unet,unet") && alog.contains("--fold 0"), alog)
        XCTAssertTrue(alog.contains("--summarize"), alog)

        // launch/mpirun-hosts.sh with a hostfile of the planned nodes.
        try (1...n).map { "node\($0)" }.joined(separator: "\n").write(
            to: dir.appendingPathComponent("hosts.txt"), atomically: true, encoding: .utf8)
        let hosts = try bash(try XCTUnwrap(plan["mpirun"] as? String))
        XCTAssertEqual(hosts.status, 0, hosts.stdout + hosts.stderr)
        XCTAssertTrue(hosts.stdout.contains("--map-by ppr:\(k):node -np \(n * k)"), hosts.stdout)
        XCTAssertTrue(hosts.stdout.contains("ATTUNET_THREADS=\(t) ") && hosts.stdout.contains("-x ATTUNET_THREADS"))

        // The text report names the layout and the lines; --layouts predicts steps; --table is Markdown.
        let text = try attunet("plan --profile \(profile) \(tiny) --nodes 2 --cores-per-node 4 --memory-per-node 8")
        XCTAssertEqual(text.status, 0, text.stderr)
        for part in ["soonest layout:", "wall time", "core-hours", "sbatch --nodes=", "cluster/submit-cv-array.sh"] {
            XCTAssertTrue(text.stdout.contains(part), "missing '\(part)':\n\(text.stdout)")
        }
        let steps = try attunet("plan --profile \(profile) \(tiny) --layouts 1x2,2x1 --json")
        XCTAssertEqual(steps.status, 0, steps.stderr)
        let rows = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(steps.stdout.utf8)) as? [[String: Any]])
        XCTAssertEqual(rows.count, 4, "2 layouts x 2 models")
        XCTAssertEqual(rows.compactMap { $0["batch_per_rank"] as? Int }, [2, 2, 1, 1])
        let table = try attunet(
            "plan --profile \(profile) \(tiny) --table --nodes 1,4 --cores-per-node 64 --network 25gbe,ib100")
        XCTAssertEqual(table.status, 0, table.stderr)
        let lines = table.stdout.split(separator: "\n")
        XCTAssertTrue(lines[0].contains("25 Gbit/s Ethernet") && lines[0].contains("100 Gbit/s InfiniBand"))
        XCTAssertTrue(lines[2].hasPrefix("| 1 x ") && lines[2].contains("(calibrated here)"), table.stdout)
        XCTAssertTrue(lines[3].hasPrefix("| 1 x 64 |") && lines[4].hasPrefix("| 4 x 64 |"), table.stdout)
    }

    /// `cv --dry-run --nodes N` plans that cv command: calibrated on its store at its patch, its folds and cases,
    /// and the printed lines carry its options (not the dry run's, the planning ones, --store or --out).
    func testCVDryRunWithNodesPlansThatCommand() throws {
        let store = try PhantomStore.path()
        let plan = "--dry-run --nodes 2 --cores-per-node 4 --memory-per-node 16"
        let calibration = "--calibration-threads 1,2 --calibration-steps 1 --calibration-warmup 0"
        let r = try attunet(
            "cv --store \(store) --out runs/x --folds 2 \(tiny) --epochs 2 --lr 1e-3 \(plan) \(calibration)")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("x 2 folds = 4 jobs; 4 cases"), r.stdout)
        XCTAssertTrue(r.stdout.contains("soonest layout:"), r.stdout)
        let line = try XCTUnwrap(r.stdout.split(separator: "\n").first { $0.contains("sbatch --nodes=") })
        XCTAssertTrue(
            line.contains(
                "STORE=\(store) CV_OPTS=\"--folds 2 --feature-scale 16 --patch 32x32x16 --epochs 2 --lr 1e-3"),
            String(line))
        for gone in ["--dry-run", "--nodes 2", "--calibration", "--out", "--memory-per-node"] {
            XCTAssertFalse(line.contains(gone), "\(gone) in \(line)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("runs/x").path), "wrote")
    }

    /// Bad input: one error line naming the file or the problem, exit 1, nothing written.
    func testBadProfileAndTooLittleMemoryAreRefused() throws {
        let bad = dir.appendingPathComponent("bad.json").path
        try #"{"cpu": "x"}"#.write(toFile: bad, atomically: true, encoding: .utf8)
        let r = try attunet("plan --profile \(bad) --nodes 2")
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.hasPrefix("error: \(bad): not a calibration profile"), r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        let missing = try attunet("plan --profile \(dir.path)/none.json")
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.stderr.contains("none.json: no such file"), missing.stderr)

        let profile = dir.appendingPathComponent("p.json").path
        try Self.profileJSON.write(toFile: profile, atomically: true, encoding: .utf8)
        let small = try attunet("plan --profile \(profile) \(tiny) --memory-per-node 0.5")
        XCTAssertEqual(small.status, 1)
        XCTAssertTrue(small.stderr.contains("no layout fits: a rank with 1 patch needs"), small.stderr)
        let other = try attunet("plan --profile \(profile) --nodes 2")
        XCTAssertEqual(other.status, 1)
        XCTAssertTrue(other.stderr.contains("no calibration of attention-unet at feature scale 4"), other.stderr)
        XCTAssertEqual(try attunet("plan --layouts 3 --profile \(profile)").status, 64)
        XCTAssertEqual(try attunet("plan --nodes 1,2 --profile \(profile)").status, 64, "a list needs --table")
    }

    /// A hand-written profile: both models at feature scale 16, 1 GiB before the steps, 2 GiB at the peak.
    static let profileJSON = """
        {"cpu": "test", "cpus": 2, "measured_at": "2026-01-01T00:00:00Z", "patch": [32, 32, 16], "batch_per_rank": 2,
         "warmup_steps": 1, "timed_steps": 1, "models": [
          {"model": "attention-unet", "feature_scale": 16, "classes": 4, "parameters": 406446,
           "resident_before_steps_bytes": 1073741824, "peak_resident_bytes": 2147483648,
           "points": [{"threads": 1, "step_seconds": 1, "batch_seconds": 0.9, "fixed_seconds": 0.1, "tile_seconds": 0.2}]},
          {"model": "unet", "feature_scale": 16, "classes": 4, "parameters": 400000,
           "resident_before_steps_bytes": 1073741824, "peak_resident_bytes": 2147483648,
           "points": [{"threads": 1, "step_seconds": 1, "batch_seconds": 0.9, "fixed_seconds": 0.1, "tile_seconds": 0.2}]}]}
        """

    /// Stand-ins on PATH: `sbatch` runs the script it is given at once with the Slurm variables its options
    /// ask for (job 7, array task 0), output to job.log; `mpirun` and `srun` print their arguments and
    /// ATTUNET_THREADS; `squeue` knows no time limit.
    private func stubs() throws {
        let bin = dir.appendingPathComponent("bin")
        try FileManager.default.createDirectory(at: bin, withIntermediateDirectories: true)
        let sbatch = """
            #!/bin/bash
            export SLURM_JOB_ID=7 SLURM_JOB_NUM_NODES=1 SLURM_NTASKS_PER_NODE=1 SLURM_CPUS_PER_TASK=1
            script=
            for a in "$@"; do
              case $a in
                --nodes=*) SLURM_JOB_NUM_NODES=${a#*=} ;;
                --ntasks-per-node=*) SLURM_NTASKS_PER_NODE=${a#*=} ;;
                --cpus-per-task=*) SLURM_CPUS_PER_TASK=${a#*=} ;;
                --array=*) export SLURM_ARRAY_JOB_ID=7 SLURM_ARRAY_TASK_ID=${a#*=}; SLURM_ARRAY_TASK_ID=${SLURM_ARRAY_TASK_ID%%-*} ;;
                --time=*) [[ ${a#*=} =~ ^([0-9]+-)?[0-9]{2}:[0-9]{2}:[0-9]{2}$ ]] || { echo "bad --time $a" >&2; exit 1; } ;;
                -*) ;;
                *) script=$a ;;
              esac
            done
            export SLURM_NTASKS=$((SLURM_JOB_NUM_NODES * SLURM_NTASKS_PER_NODE))
            LAUNCHER=mpirun bash "$script" >> "\(dir.path)/job.log" 2>&1 || { cat "\(dir.path)/job.log" >&2; exit 1; }
            echo 7
            """
        let launcher = "#!/bin/bash\necho \"STUB $(basename $0) $* ATTUNET_THREADS=${ATTUNET_THREADS:-unset} \"\n"
        for (name, text) in [
            ("sbatch", sbatch), ("mpirun", launcher), ("srun", launcher), ("squeue", "#!/bin/sh\nexit 0\n"),
            ("scontrol", "#!/bin/sh\nexit 0\n"),
        ] {
            let f = bin.appendingPathComponent(name).path
            try text.write(toFile: f, atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: f)
        }
        let fake = bin.appendingPathComponent("attunet").path
        try "#!/bin/sh\necho \"stand-in attunet $*\"\n".write(toFile: fake, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: fake)
        try FileManager.default.createDirectory(
            at: dir.appendingPathComponent("data"), withIntermediateDirectories: true)
        try Data().write(to: dir.appendingPathComponent("data/ct150.h5"))
    }

    /// A printed command line, run from the test folder with the stand-ins first on PATH and the repository's
    /// scripts found under their relative names.
    private func bash(_ line: String) throws -> TestEnv.Result {
        try? FileManager.default.removeItem(at: dir.appendingPathComponent("job.log"))
        for name in ["cluster", "launch"] {
            let link = dir.appendingPathComponent(name).path
            if !FileManager.default.fileExists(atPath: link) {
                try FileManager.default.createSymbolicLink(
                    atPath: link, withDestinationPath: TestEnv.root.appendingPathComponent(name).path)
            }
        }
        let script = """
            set -euo pipefail
            export PATH=\(dir.path)/bin:$PATH ATTUNET_BIN=\(dir.path)/bin/attunet ATTUNET_ROOT=\(TestEnv.root.path)
            export CHECK_HOSTS=0 MAX_REQUEUES=0
            unset ATTUNET_THREADS
            cd \(dir.path)
            \(line)
            """
        let file = dir.appendingPathComponent("line.sh")
        try script.write(to: file, atomically: true, encoding: .utf8)
        return try TestEnv.run("bash \(file.path)", timeout: 120)
    }
}
