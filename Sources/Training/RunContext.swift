/// The settings of one process's part of a run that are not the run's configuration: none is saved, each may
/// change between restarts without changing the result. A command builds one from its options and passes it
/// once; a cross-validation derives each fold's from its own (``foldContext(prefix:progressBar:)``).
public struct RunContext: Sendable, Equatable {
    /// All-reduce bucket size in floats (default 16 MiB): how the gradient travels, not what it sums to.
    public var bucketFloats: Int
    /// Reduce each bucket while the backward pass computes the next ones (true, the default), or all of them
    /// after it (`--no-overlap`). The weights are bit-identical either way (``GradientReduction``).
    public var overlapAllReduce: Bool
    /// Seconds one collective of a training step may take before the watchdog ends the job (a dead, hung or
    /// unreachable peer); nil: derived from the measured steps (``StepTimeout``); 0: no watchdog.
    public var stepTimeout: Double?
    /// The stop budget: epochs to train in this process (over every fold of a cross-validation) before
    /// stopping as on a stop request (checkpoint written, exit 75), for batch jobs whose time limit fits a
    /// known number of epochs. nil: no budget.
    public var stopAfterEpochs: Int?
    /// Put before every line rank 0 prints (the cross-validation's fold-parallel groups name their fold).
    public var linePrefix: String
    /// Print progress lines (rank 0 only).
    public var verbose: Bool
    /// Redraw a progress bar during the epoch when this is the only rank and stdout is a terminal (off when
    /// several trainers share one terminal, as fold-parallel groups do).
    public var progressBar: Bool
    /// Print the `--init` mapping table (a cross-validation prints it for its first fold only).
    public var printsTransferTable: Bool
    /// Printed after a stop request: how to continue.
    public var resumeHint: String

    public init(
        bucketFloats: Int = 4 << 20, overlapAllReduce: Bool = true, stepTimeout: Double? = nil,
        stopAfterEpochs: Int? = nil, linePrefix: String = "", verbose: Bool = true, progressBar: Bool = true,
        printsTransferTable: Bool = true, resumeHint: String = "continue with --resume"
    ) {
        self.bucketFloats = bucketFloats
        self.overlapAllReduce = overlapAllReduce
        self.stepTimeout = stepTimeout
        self.stopAfterEpochs = stopAfterEpochs
        self.linePrefix = linePrefix
        self.verbose = verbose
        self.progressBar = progressBar
        self.printsTransferTable = printsTransferTable
        self.resumeHint = resumeHint
    }

    /// A quiet context (no progress output), for benchmarks and tests.
    public static var quiet: RunContext { RunContext(verbose: false, progressBar: false) }

    /// A quiet context with this bucket and overlap (`attunet bench train`).
    public static func quiet(bucketFloats: Int, overlapAllReduce: Bool) -> RunContext {
        RunContext(
            bucketFloats: bucketFloats, overlapAllReduce: overlapAllReduce, verbose: false, progressBar: false)
    }
}
