import ArgumentParser
import Distributed
import Foundation

@main
struct AttuNet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attunet",
        abstract: "Data-parallel 3D Attention U-Net trainer for abdominal CT, over MPI on CPU clusters.",
        discussion: """
        Run any subcommand plainly for one process, or under `mpirun -np N` for N data-parallel ranks;
        only rank 0 prints and writes files. Start with `attunet doctor` on a new machine or cluster node.
        """,
        subcommands: [Doctor.self, Synth.self, Prepare.self, Train.self, Inspect.self, ImportWeights.self, Bench.self]
    )

    /// Parses, runs, and finalizes MPI when a subcommand initialised it (mpirun treats a rank that exits
    /// without MPI_Finalize as failed).
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
            MPIRuntime.finalize()
        } catch {
            MPIRuntime.finalize()
            exit(withError: error)
        }
    }
}
