import ArgumentParser
import HDF5Kit

/// `attunet probe-hdf5 FILE` (hidden): the child process that HDF5Kit's probe runs before attunet opens an
/// HDF5 file (`H5Probe`; installed in `AttuNet.main`). It reads all of the file's metadata under a memory limit,
/// without MPI, and exits 0 when the file passed, else with one line on stderr: a damaged file that crashes,
/// hangs or exhausts memory inside libhdf5 ends this process, never the one that asked.
struct ProbeHDF5: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe-hdf5",
        abstract: "Read all of an HDF5 file's metadata (attunet's own child process).",
        discussion: """
            attunet runs it before it opens an HDF5 file, under a memory limit and without MPI, so that a damaged file that crashes, hangs or exhausts memory inside libhdf5 ends this process, never the one that asked.

            Exit status:
              0   the metadata read back
              1   it did not: one line on stderr naming the problem
              3   reading it ran out of the memory limit
              64  bad command line
            """,
        shouldDisplay: false
    )

    @Argument(help: "The HDF5 file.")
    var file: String

    func run() throws { H5Probe.childMain(file) }
}
