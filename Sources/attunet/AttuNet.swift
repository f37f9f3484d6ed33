import ArgumentParser
import Collectives
import Foundation
import HDF5Kit
import NN
import Support

@main
struct AttuNet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attunet",
        abstract: "3D Attention U-Net trainer for abdominal CT, data-parallel over MPI.",
        discussion: """
            Run any subcommand plainly for one process, or under `mpirun -np N` for N data-parallel ranks on CPU clusters; only rank 0 prints and writes files. Start with `attunet doctor` on a new machine or cluster node.

            Errors are printed as one line each, "error: FILE: PROBLEM". Each subcommand's help lists the exit statuses it returns:
              0   done
              1   an error
              3   the loss became NaN/Inf (train, cv, experiment, bench train); a training
                  run keeps its last good checkpoint
              4   a collective waited past --step-timeout (train, cv, experiment): a peer
                  died, hung or is unreachable, and the job was ended
              64  bad command line
              75  stopped on request (train, cv, experiment): rerun the same command
                  (train: with --resume) to continue
            """,
        subcommands: [
            Doctor.self, Synth.self, Prepare.self, Train.self, CV.self, Plan.self, Experiment.self, Postprocess.self,
            Predict.self,
            Evaluate.self,
            Inspect.self,
            ImportWeights.self, ExportWeights.self, Bench.self, ProbeHDF5.self,
        ]
    )

    /// Parses and runs a subcommand. Argument errors are argument-parser's (with usage); every error a
    /// subcommand throws is printed here and only here, one `error: ` line per message line, by rank 0 under
    /// MPI (usually every rank meets the same error). MPI is finalized on every path (mpirun treats a rank that
    /// exits without MPI_Finalize as failed); after an error only one rank met, finalizing would wait for ranks
    /// blocked in a collective, so that rank prints its error itself and ends the job
    /// (`MPIRuntime.finalizeAfterError`).
    static func main() {
        // Every HDF5 file is read in a child process (`attunet probe-hdf5`) before this process opens it: a
        // damaged file that crashes or hangs libhdf5 then gives one error line (HDF5Kit's `H5Probe`). Not where
        // /proc is not mounted (this executable cannot be found to start it).
        if FileManager.default.isExecutableFile(atPath: "/proc/self/exe") {
            H5File.probe = H5Probe.inChildProcess(["/proc/self/exe", ProbeHDF5.configuration.commandName!])
        }
        var command: ParsableCommand
        do { command = try parseAsRoot() } catch { exit(withError: error) }
        do {
            try Conv3d.checkEnvironmentPath()
            try command.run()
            MPIRuntime.finalize()
        } catch {
            let status: Int32
            switch error {
            case let e as ExitCode:
                status = e.rawValue
            case let e as AttunetError:
                report(e.lines)
                status = e.exitCode
                MPIRuntime.finalizeAfterError(lines: e.lines, status: status)
            case _ where exitCode(for: error) != .failure:
                // argument-parser's own (a subcommand's --help reaches run() as an error; a ValidationError
                // thrown by run): its help or usage text and status.
                MPIRuntime.finalize()
                exit(withError: error)
            default:
                report(["\(error)"])
                status = 1
                MPIRuntime.finalizeAfterError(lines: ["\(error)"], status: status)
            }
            MPIRuntime.finalize()
            exit(withError: ExitCode(status))
        }
    }

    static func report(_ lines: [String]) {
        guard MPIRuntime.worldRank == 0 else { return }
        FileHandle.standardError.write(Data(lines.map { "error: \($0)\n" }.joined().utf8))
    }
}
