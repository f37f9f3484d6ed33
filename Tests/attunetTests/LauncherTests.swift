import Foundation
import TestSupport
import XCTest

/// The launch scripts' shared environment (`launch/env.sh`, and `cluster/lib.sh` above it) on every kind of CPU
/// and user, whatever the machine the tests run on: the CPU facts come from a stand-in /proc/cpuinfo
/// (`ATTUNET_CPUINFO`) and the user id from `ATTUNET_UID`. The scripts run under `set -euo pipefail`, where a
/// failing last command of a sourced file ends the caller silently, as the README's main command once did on
/// every CPU without AVX-512.
final class LauncherTests: XCTestCase {
    private var dir: URL!
    private var fakeBin: String { dir.appendingPathComponent("attunet").path }

    override func setUpWithError() throws {
        dir = try TestEnv.tempDir()
        // A stand-in for the binary: says it ran, with the variables a launcher is meant to set.
        let script = """
            #!/bin/sh
            echo "stand-in attunet $1 CORETYPE=${OPENBLAS_CORETYPE:-unset} ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-unset}"
            """
        try script.write(toFile: fakeBin, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: fakeBin)
        for (name, flags) in [
            ("avx2", "fpu sse sse2 avx fma avx2 bmi2"), ("avx512", "fpu sse sse2 avx fma avx2 avx512f avx512bw"),
        ] {
            try "processor\t: 0\nflags\t\t: \(flags)\n\nprocessor\t: 1\nflags\t\t: \(flags)\n"
                .write(to: dir.appendingPathComponent("cpuinfo-\(name)"), atomically: true, encoding: .utf8)
        }
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    /// Runs `body` in bash under `set -euo pipefail` with OPENBLAS_CORETYPE unset (in that child shell only, which
    /// runs no computation: the binary is a stand-in), the stand-in binary and the given CPU and user; the body's
    /// last line reports what the sourced environment left behind.
    private func bash(_ body: String, cpu: String, uid: Int) throws -> TestEnv.Result {
        let script = """
            set -euo pipefail
            unset OPENBLAS_CORETYPE OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM ATTUNET_THREADS
            export ATTUNET_BIN=\(fakeBin) ATTUNET_CPUINFO=\(dir.appendingPathComponent("cpuinfo-\(cpu)").path) ATTUNET_UID=\(uid)
            cd \(TestEnv.root.path)
            \(body)
            """
        let file = dir.appendingPathComponent("body.sh")
        try script.write(to: file, atomically: true, encoding: .utf8)
        return try TestEnv.run("bash \(file.path)", timeout: 120)
    }

    private let report =
        #"echo "reached CORETYPE=${OPENBLAS_CORETYPE:-unset} ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-unset} ENV=${MPIRUN_ENV[*]}""#

    func testEnvironmentSourcesCleanlyOnEveryCPUAndUser() throws {
        let avx2 = try bash("source launch/env.sh\n\(report)", cpu: "avx2", uid: 0)
        XCTAssertEqual(avx2.status, 0, "env.sh ended its caller on an AVX2-only CPU:\n\(avx2.stdout)\(avx2.stderr)")
        XCTAssertTrue(avx2.stdout.contains("reached CORETYPE=unset ROOT=1 "), avx2.stdout)
        XCTAssertFalse(avx2.stdout.contains("-x OPENBLAS_CORETYPE"), avx2.stdout)
        XCTAssertTrue(avx2.stdout.contains("-x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"), avx2.stdout)

        let avx512 = try bash("source launch/env.sh\n\(report)", cpu: "avx512", uid: 0)
        XCTAssertEqual(avx512.status, 0, avx512.stdout + avx512.stderr)
        XCTAssertTrue(avx512.stdout.contains("OPENBLAS_CORETYPE was unset; set to SkylakeX"), avx512.stdout)
        XCTAssertTrue(
            avx512.stdout.contains("reached CORETYPE=SkylakeX ROOT=1 ")
                && avx512.stdout.contains("-x OPENBLAS_CORETYPE"),
            avx512.stdout)

        // Another user: no permission to run as root is exported or passed to the ranks.
        let user = try bash("source launch/env.sh\n\(report)", cpu: "avx2", uid: 1000)
        XCTAssertEqual(user.status, 0, user.stdout + user.stderr)
        XCTAssertTrue(
            user.stdout.contains("reached CORETYPE=unset ROOT=unset ENV=-x OPENBLAS_NUM_THREADS\n"), user.stdout)

    }

    /// cluster/lib.sh, which every batch script sources, under the same conditions (inside a stand-in job).
    func testClusterLibrarySourcesCleanlyWithoutAVX512() throws {
        for uid in [0, 1000] {
            let r = try bash(
                """
                export SLURM_JOB_ID=1 LAUNCHER=mpirun MAX_REQUEUES=0 ATTUNET_ROOT=$PWD SLURM_NTASKS=2
                MPIRUN_OPTS=()
                source cluster/lib.sh
                \(report) LAUNCH=${LAUNCH_CMD[*]}
                """, cpu: "avx2", uid: uid)
            XCTAssertEqual(r.status, 0, "cluster/lib.sh ended its caller:\n\(r.stdout)\(r.stderr)")
            XCTAssertTrue(r.stdout.contains("reached CORETYPE=unset ROOT=\(uid == 0 ? "1" : "unset") "), r.stdout)
            XCTAssertTrue(r.stdout.contains("LAUNCH=mpirun -np 2 --bind-to none -x OPENBLAS_NUM_THREADS"), r.stdout)
        }
    }

    /// The README's main command and the local training launcher run to their end on an AVX2-only CPU (the
    /// binary a stand-in, so every step is instant): each step's line is printed and the status is 0.
    func testMainCommandAndTrainLauncherRunToTheEndWithoutAVX512() throws {
        let main = try bash("bash launch/run-default.sh", cpu: "avx2", uid: Int(getuid()))
        XCTAssertEqual(main.status, 0, "run-default.sh:\n\(main.stdout)\(main.stderr)")
        for step in [
            "== 1/5 doctor", "stand-in attunet doctor CORETYPE=unset", "== 4/5 cv", "stand-in attunet cv",
            "== 5/5 postprocess", "stand-in attunet postprocess", "run-default: done in",
        ] {
            XCTAssertTrue(main.stdout.contains(step), "missing '\(step)':\n\(main.stdout)\(main.stderr)")
        }
        let train = try bash("bash launch/train.sh -n 1 --store x.h5", cpu: "avx2", uid: Int(getuid()))
        XCTAssertEqual(train.status, 0, train.stdout + train.stderr)
        XCTAssertTrue(train.stdout.contains("stand-in attunet train CORETYPE=unset"), train.stdout)
    }
}
