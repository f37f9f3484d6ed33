import Collectives
import DataPipeline
import Evaluation
import Foundation
import HDF5Kit
import Inference
import NN
import Support
import Tensor

/// Set from signal handlers; read once per step. Async-signal-safe (a plain store).
nonisolated(unsafe) private var stopSignal: Int32 = 0

/// Data-parallel training over a `Communicator`: every rank holds a replica (rank 0's initial weights are
/// broadcast), trains on its share of each global batch, and the flat gradient buffer is averaged with an
/// all-reduce in buckets, overlapped with the backward pass; the optimizer step is then identical everywhere. Rank 0 prints, logs and writes
/// checkpoints.
public final class Trainer {
    public let config: TrainConfig
    public let comm: Communicator
    public let outDir: URL
    /// The names of the files in `outDir`.
    public let folder: RunFolder
    public let model: SegmentationModel
    public let optimizer: Optimizer
    let store: CaseStore
    let loss: SegmentationLoss
    let log: TrainingLog?
    /// Rank 0's checkpoint commits and log rows, behind the training steps (`BackgroundWriter`).
    private let writer = BackgroundWriter()
    let fingerprint: String
    /// The settings of this process's part of the run that are not its configuration (bucket, step timeout,
    /// stop budget, console prefix, verbosity).
    public let context: RunContext
    private let classNames: [String]
    /// What prediction needs, saved in every checkpoint.
    public let recipe: PredictionRecipe
    /// Segments whole cases for validation (and the cross-validation's test cases): tiles of the training
    /// patch, overlap 0.5, Gaussian blending, BN in evaluation mode; created on first use.
    private var predictor: SlidingWindowPredictor?

    private var stepTimeouts = StepTimeout()

    /// The gradient all-reduce of every step, overlapped with the backward pass unless
    /// `context.overlapAllReduce` is off.
    let reduction: GradientReduction

    /// Whether the gradient all-reduce overlaps the backward pass: `context.overlapAllReduce` when there are
    /// several ranks (and MPI granted a thread level that allows it). Settable between steps, for
    /// `attunet bench train --overlap both`; the weights do not depend on it.
    public var overlapsAllReduce: Bool {
        get { reduction.overlaps }
        set { reduction.setOverlap(newValue) }
    }

    /// The all-reduce's buckets per step, and their size in floats (the last one may be smaller).
    public var allReduceBuckets: (count: Int, floats: Int) { (reduction.buckets.count, reduction.bucketFloats) }

    /// Whether ``step(_:)`` has settled the recycled-tensor pool (after its first step).
    private var settled = false

    /// The mapping `--init` applied (``initialiseFromCheckpoint()``), or the one the resumed checkpoint
    /// records; nil for a run without `--init`.
    public private(set) var transfer: TransferReport?

    public var latestPath: String { folder.checkpointLatest.path }
    public var bestPath: String { folder.checkpointBest.path }

    /// Opens the store, builds the model from `config.seed` and broadcasts rank 0's weights; `resume()` then
    /// restores the latest checkpoint of `outDir` when continuing a run.
    public init(config: TrainConfig, comm: Communicator, outDir: URL, context: RunContext = RunContext()) throws {
        self.config = config
        self.context = context
        self.comm = comm
        self.outDir = outDir
        folder = RunFolder(outDir)
        guard config.batch % comm.size == 0 else {
            throw AttunetError(
                "--batch \(config.batch) is not divisible by the \(comm.size) MPI ranks (each rank takes batch/ranks patches)"
            )
        }
        for (axis, v) in [("x", config.patch.x), ("y", config.patch.y), ("z", config.patch.z)]
        where v <= 0 || v % 16 != 0 {
            throw AttunetError("--patch \(axis) = \(v) is not a positive multiple of 16 (the network pools four times)")
        }
        store = try CaseStore(path: config.store)
        fingerprint = store.fingerprint
        guard store.classNames.count == config.model.classes else {
            throw AttunetError(
                "\(config.store): the store has \(store.classNames.count) classes (\(store.classNames.joined(separator: ", "))); the model was asked for \(config.model.classes) (--classes)"
            )
        }
        classNames = Array(store.classNames.dropFirst())
        recipe = try PredictionRecipe(store: store, config: config)
        model = SegmentationModel(config.model, seed: config.seed)
        optimizer = Optimizer(
            config.optimizer, parameterCount: model.params.count, learningRate: config.learningRate,
            weightDecay: config.weightDecay)
        loss = SegmentationLoss(config.loss)
        log = comm.isRoot ? TrainingLog(directory: outDir, classNames: classNames) : nil
        let reduction = GradientReduction(
            comm: comm, params: model.params, bucketFloats: context.bucketFloats,
            overlap: context.overlapAllReduce)
        self.reduction = reduction
        try comm.broadcast(model.params.values.data, root: 0)
        try comm.broadcast(model.buffers.values.data, root: 0)
        if config.syncBN {
            // In the order of the step's other collectives: after the buckets queued before it.
            let c = comm
            model.setStatisticsReducer { buffer in try reduction.collective { try c.allReduceSum(buffer) } }
        }
    }

    /// Restores the latest checkpoint, or `checkpoint` when given (`train --resume-from`: checkpoint_best.h5
    /// or a copy of an earlier latest, when the latest is damaged); all ranks read it, and it is verified
    /// (checksums, stored digests) before anything is written. Returns the state to continue from. Rank 0 first
    /// removes the temporary files a killed checkpoint write left in the run folder (``RunFolder/removeStaleTemporaries()``).
    public func resume(from checkpoint: String? = nil) throws -> TrainingState {
        if comm.isRoot, let removed = folder.removeStaleTemporaries(), context.verbose {
            print(context.linePrefix + "train: " + removed)
        }
        let path = checkpoint ?? latestPath
        guard FileManager.default.fileExists(atPath: path) else {
            if checkpoint != nil { throw AttunetError("\(path): no such file (from --resume-from)") }
            throw AttunetError(
                "\(latestPath): nothing to resume (no \(folder.checkpointLatest.lastPathComponent) in \(outDir.path))")
        }
        let state = try TrainingCheckpoint.load(
            path, model: model, optimizer: optimizer, config: config,
            storeFingerprint: fingerprint)
        if config.transfer != nil {
            // --init is not applied again: the weights are the run's; the record says which parameters are fresh.
            guard let report = try TrainingCheckpoint.transferReport(in: try H5File.open(path)) else {
                throw AttunetError(
                    "\(path): no record of the --init mapping (attribute \(TrainingCheckpoint.transferAttribute)); was this run started with --init?"
                )
            }
            transfer = report
            assignRoles()  // frozen and fresh as the run started
        }
        // Any rank count that divides the global batch continues the same run (init refused the others): the
        // patches of a step, their augmentation and the validation are functions of global sample and case
        // indices, and the gradient is the global batch's mean. Per-rank BatchNorm statistics (no --sync-bn)
        // are the one exception: they cover batch/ranks patches, so they change with the rank count.
        if state.worldSize != comm.size && comm.isRoot && context.verbose {
            let bn =
                config.syncBN
                ? ""
                : "; without --sync-bn each rank's BatchNorm statistics now cover \(config.batch / comm.size) patch(es) instead of \(config.batch / max(1, state.worldSize)), so the run continues differently from one that kept its ranks"
            print(
                context.linePrefix
                    + "train: \(path) was written on \(state.worldSize) rank(s); continuing on \(comm.size) with the same global batch \(config.batch)"
                    + bn)
        }
        try log?.load(keepBefore: state.epoch)
        // The checkpoint is written before the log row: a run stopped between the two has the row in the
        // checkpoint only.
        if let log, state.epoch > 0, (log.records.last?.epoch ?? -1) < state.epoch - 1,
            let record = TrainingCheckpoint.metrics(in: try H5File.open(path)), record.epoch == state.epoch - 1
        {
            try log.append(record)
        }
        return state
    }

    /// Initialises the model from `config.transfer`'s checkpoint (``WeightTransfer``: by name, the output
    /// layers per `--reset-head` / `--label-map`, exact pass-through gates from a U-Net with
    /// `--pass-through-gates`), on every rank from the same file, and gives the optimizer the parameters' roles:
    /// `--freeze` ones frozen, the ones that start fresh at `--head-lr`. Rank 0 prints the mapping table. Call
    /// it before ``run(from:)`` for a fresh run (``run(from:)`` calls it when nobody did), never for a resumed
    /// one. The optimizer is fresh: zero moments, step 0.
    @discardableResult
    public func initialiseFromCheckpoint() throws -> TransferReport {
        guard let t = config.transfer else { throw AttunetError("no --init checkpoint in this run's configuration") }
        let file = try H5File.open(t.checkpoint)
        let source = try Checkpoint.load(t.checkpoint)  // verifies checksums and the weights digest
        let report = try WeightTransfer.apply(
            from: source, sourcePath: t.checkpoint,
            sourceClassNames: TrainingCheckpoint.classNames(in: file), into: model,
            targetPath: config.store, targetClassNames: store.classNames,
            resetHead: t.resetHead, labelMap: t.labelMap)
        transfer = report
        try comm.broadcast(model.params.values.data, root: 0)
        try comm.broadcast(model.buffers.values.data, root: 0)
        assignRoles()
        if comm.isRoot && context.verbose && context.printsTransferTable {
            for line in report.table(target: config.model) { print(context.linePrefix + line) }
            let frozen = optimizer.count(.frozen)
            let fresh = optimizer.count(.fresh)
            if t.freeze != .none {
                print(
                    context.linePrefix
                        + "  frozen (--freeze \(t.freeze.rawValue)): \(t.freeze.modules.joined(separator: ", ")), \(grouped(frozen)) parameters keep their values (no step, no weight decay, Adam moments stay 0); their BN running statistics keep updating in training mode, as PyTorch's requires_grad=False does"
                )
            }
            let head = t.headLearningRate.map { "--head-lr \($0)" } ?? "--lr \(config.learningRate)"
            print(
                context.linePrefix
                    + "  learning rates: \(grouped(model.parameterCount - frozen - fresh)) copied parameters --lr \(config.learningRate), \(grouped(fresh)) fresh ones \(head); the optimizer starts fresh"
            )
        }
        return report
    }

    /// The optimizer's parameter roles from `config.transfer` and ``transfer``.
    private func assignRoles() {
        let freeze = config.transfer?.freeze ?? FreezeKind.none
        let fresh = transfer?.freshParameters ?? []
        optimizer.setRoles(model.params.entries) {
            freeze.freezes($0) ? .frozen : fresh.contains($0) ? .fresh : .trained
        }
        optimizer.freshLearningRate = config.transfer?.headLearningRate.map { config.schedule.rate(base: $0, epoch: 0) }
    }

    /// Installs SIGTERM/SIGUSR1 handlers that ask every rank to finish the current step and stop.
    public static func installStopHandlers() {
        for sig in [SIGTERM, SIGUSR1] { signal(sig) { _ in stopSignal = 1 } }
    }

    /// Trains from `state` (nil: from scratch) to the configured number of epochs.
    /// Throws an `AttunetError` of kind `.interrupted` after a requested stop (checkpoint_latest.h5 written),
    /// and of kind `.nonFinite` when the loss becomes NaN/Inf (the last good checkpoint kept).
    public func run(from resumed: TrainingState? = nil) throws {
        var state =
            resumed
            ?? TrainingState(
                epoch: 0, stepInEpoch: 0, globalStep: 0, bestDice: -1, bestEpoch: -1,
                worldSize: comm.size, storeFingerprint: fingerprint)
        state.worldSize = comm.size  // a resumed run may continue on another rank count
        // On an error, the last epoch's commit and log row still complete (their own errors are secondary).
        defer { try? writer.wait() }
        // A fresh start into a folder where a killed run's first checkpoint write left its temporary cleans it
        // too (a resume does in resume()).
        if resumed == nil, comm.isRoot, let removed = folder.removeStaleTemporaries(), context.verbose {
            print(context.linePrefix + "train: " + removed)
        }
        if resumed == nil && config.transfer != nil && transfer == nil { try initialiseFromCheckpoint() }
        if config.epochs == 0 {
            // Nothing to train: the initial weights (--init's, mapped: the paper's "before fine-tuning") are the
            // run's result, written as its latest checkpoint so that evaluation reads them like any other.
            if resumed == nil {
                if comm.isRoot {
                    try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)
                    try TrainingCheckpoint.save(
                        latestPath, model: model, optimizer: optimizer, config: config, state: state,
                        metrics: nil, recipe: recipe, transfer: transfer)
                    if context.verbose {
                        print(context.linePrefix + "train: --epochs 0: wrote the initial weights to \(latestPath)")
                    }
                }
                try comm.barrier()
            }
            return
        }
        let loader = try PatchLoader(
            store: store, cases: config.trainCases, patch: config.patch, batch: config.batch / comm.size,
            rank: comm.rank, worldSize: comm.size, seed: config.seed, augment: config.augmentOptions,
            foregroundFraction: config.foregroundFraction, samplesPerCase: config.samplesPerCase)
        let steps = loader.stepsPerEpoch
        if comm.isRoot && context.verbose {
            print(
                context.linePrefix
                    + "train: \(config.model.kind.rawValue) \(grouped(model.parameterCount)) parameters, \(comm.size) rank(s), global batch \(config.batch), patch \(config.patch), \(config.trainCases.count) training / \(config.validationCases.count) validation cases, \(steps) steps per epoch, \(config.epochs) epochs"
            )
        }
        // Under mpirun a rank's stdout can be a pty even when the user pipes mpirun's output, so the bar is
        // drawn only for single-process runs on a terminal.
        let interactive = context.progressBar && comm.size == 1 && context.verbose && isatty(STDOUT_FILENO) != 0
        var lastRecord: EpochRecord?
        var epochsThisRun = 0
        let watchdog = CollectiveWatchdog.shared
        defer {
            watchdog.timeout = stepTimeouts.outsideSteps(fixed: context.stepTimeout)
            watchdog.context = ""
        }
        while state.epoch < config.epochs {
            let epoch = state.epoch
            optimizer.learningRate = config.schedule.rate(base: config.learningRate, epoch: epoch)
            optimizer.freshLearningRate = config.transfer?.headLearningRate.map {
                config.schedule.rate(base: $0, epoch: epoch)
            }
            model.training = true
            loader.startEpoch(epoch, fromStep: state.stepInEpoch)
            let t0 = Date()
            var lossSum = 0.0
            var lossCount = 0
            var loadWait = 0.0
            var phases = StepTimes()
            for stepIndex in state.stepInEpoch..<steps {
                let w0 = Date()
                guard let batch = try loader.next() else { break }
                loadWait += Date().timeIntervalSince(w0)
                watchdog.timeout = stepTimeouts.forSteps(fixed: context.stepTimeout)
                watchdog.context =
                    "global step \(state.globalStep) (epoch \(epoch + 1), step \(stepIndex + 1)/\(steps))"
                let result: StepResult
                do { result = try step(batch) } catch let e as AttunetError where e.kind == .nonFinite {
                    throw AttunetError(
                        "loss is NaN/Inf at epoch \(epoch) step \(stepIndex) (global step \(state.globalStep)); stopped, the last good checkpoint is kept (\(latestPath)); lower --lr or check the data",
                        kind: .nonFinite)
                }
                stepTimeouts.record(result.times.total)
                watchdog.timeout = stepTimeouts.outsideSteps(fixed: context.stepTimeout)
                watchdog.context = "the end of global step \(state.globalStep) (epoch \(epoch + 1))"
                state.globalStep += 1
                lossSum += result.loss
                lossCount += 1
                phases.add(result.times)
                if interactive {
                    drawProgressBar(
                        epoch: epoch, step: stepIndex + 1, of: steps, loss: lossSum / Double(lossCount), since: t0)
                }
                if result.stopRequested {
                    state.stepInEpoch = stepIndex + 1
                    if state.stepInEpoch == steps {
                        state.epoch += 1
                        state.stepInEpoch = 0
                    }
                    if interactive { print("") }
                    try stopAndSave(
                        state, metrics: lastRecord, finished: "epoch \(epoch) step \(stepIndex + 1)/\(steps)")
                }
            }
            if interactive { print("") }
            watchdog.context = "validation and checkpoints after epoch \(epoch + 1)"
            let seconds = Date().timeIntervalSince(t0)
            state.epoch += 1
            state.stepInEpoch = 0
            let (record, validationSeconds) = try endEpoch(
                &state, trainLoss: lossCount > 0 ? lossSum / Double(lossCount) : .nan,
                seconds: seconds, patches: lossCount * config.batch,
                phases: lossCount > 0 ? phases.scaled(by: 1 / Double(lossCount)) : nil, started: t0)
            lastRecord = record
            if comm.isRoot && context.verbose {
                printEpoch(record, loadWait: loadWait, steps: lossCount, validationSeconds: validationSeconds)
            }
            // A stop requested during validation or checkpointing is honoured at the epoch boundary.
            var stop = [Double(stopSignal)]
            try stop.withUnsafeMutableBufferPointer { try comm.allReduceSum($0) }
            epochsThisRun += 1
            let limitReached = context.stopAfterEpochs.map { epochsThisRun >= $0 } ?? false
            if (stop[0] > 0 || limitReached) && state.epoch < config.epochs {
                try stopAndSave(
                    state, metrics: record, finished: "epoch \(epoch)" + (stop[0] > 0 ? "" : " (--stop-after-epochs)"))
            }
        }
        if comm.isRoot && context.verbose {
            if let r = lastRecord, !r.validationDice.isEmpty {
                print(
                    context.linePrefix + "train: done. validation Dice: "
                        + zip(classNames, r.validationDice).map { "\($0) \(fmt($1, 3))" }.joined(separator: ", ")
                        + "; best mean \(fmt(state.bestDice, 3)) at epoch \(state.bestEpoch)")
            }
            print(
                context.linePrefix + "train: outputs in \(outDir.path): "
                    + [folder.checkpointLatest, folder.checkpointBest, folder.log, folder.progress].map(
                        \.lastPathComponent
                    ).joined(separator: ", "))
        }
    }

    /// One optimizer step on this rank's share of the global batch: zero the gradients, forward, loss,
    /// backward with the gradient all-reduce overlapped (``GradientReduction``), optimizer update, at
    /// `optimizer.learningRate`. One small all-reduce
    /// carries every rank's loss and its stop and NaN flags. Throws an `AttunetError` of kind `.nonFinite`
    /// when the loss is NaN/Inf on any rank, before the update.
    public func step(_ batch: PatchBatch) throws -> StepResult {
        var times = StepTimes()
        var clock = DispatchTime.now().uptimeNanoseconds
        func lap() -> Double {
            let now = DispatchTime.now().uptimeNanoseconds
            defer { clock = now }
            return Double(now - clock) / 1e9
        }
        FaultHooks.enter(.step)
        // The first step grows the recycled-tensor pool one request at a time; from then on every step shares one
        // segment laid out for its requests.
        let (flags, gradients) = try TensorPool.settling(after: &settled) {
            model.params.zeroGrads()
            let logits = try model.forward(batch.image)
            times.forward = lap()
            let value = batch.label.withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0) }
            times.loss = lap()
            reduction.beginBackward()
            model.backward(loss.gradient)
            times.backward = lap()
            FaultHooks.enterAllReduce(rank: comm.rank)
            let gradients = try reduction.finishBackward()
            var flags = [value.isFinite ? value : 0, value.isFinite ? 0 : 1, Double(stopSignal)]
            try flags.withUnsafeMutableBufferPointer { try comm.allReduceSum($0) }
            FaultHooks.enter(.step)
            times.allReduce = lap()
            if flags[1] > 0 {
                throw AttunetError("loss is NaN/Inf at global step \(optimizer.step)", kind: .nonFinite)
            }
            optimizer.update(params: model.params.values, grads: model.params.grads)
            times.update = lap()
            return (flags, gradients)
        }
        return StepResult(
            loss: flags[0] / Double(comm.size), stopRequested: flags[2] > 0, times: times,
            gradientAllReduce: gradients.total, exposedAllReduce: gradients.exposed)
    }

    /// Validates when due, then writes the checkpoints and logs the epoch (rank 0). The log row comes last, so
    /// that its wall time and time stamp cover the checkpoints; a run stopped between the two gets the row back
    /// from the checkpoint's record on resume (with the times up to the checkpoint's writing). Except after the
    /// last epoch, the latest checkpoint's fsyncs and rename, and then the log row, run on `writer`'s thread
    /// while the next epoch trains; the next call (or a stop, or the end of the run) waits for them first.
    /// Returns the record and the seconds validation took (0: none).
    private func endEpoch(
        _ state: inout TrainingState, trainLoss: Double, seconds: Double, patches: Int,
        phases: StepTimes?, started t0: Date
    ) throws -> (EpochRecord, Double) {
        let last = state.epoch == config.epochs
        var validation: Validation?
        var validationSeconds = 0.0
        if !config.validationCases.isEmpty && (last || state.epoch % max(config.validateEvery, 1) == 0) {
            FaultHooks.enter(.validate)
            let v0 = Date()
            validation = try validate()
            validationSeconds = Date().timeIntervalSince(v0)
        }
        let dice = validation?.dice ?? []
        var record = EpochRecord(
            epoch: state.epoch - 1, step: state.globalStep, trainLoss: trainLoss,
            learningRate: optimizer.learningRate, validationDice: dice, seconds: seconds,
            patchesPerSecond: Double(patches) / max(seconds, 1e-9))
        record.phases = phases
        record.validationLoss = validation?.loss
        let improved = !dice.isEmpty && record.meanDice! > state.bestDice
        if improved {
            state.bestDice = record.meanDice!
            state.bestEpoch = record.epoch
        }
        // The checkpoints' copy of the record has the times up to their writing; the log's, after it.
        record.epochWallSeconds = Date().timeIntervalSince(t0)
        record.timeUTC = EpochRecord.utcStamp()
        if comm.isRoot {
            FaultHooks.enter(.checkpoint)
            // The previous epoch's commit and log row first: one epoch in flight at most, in order.
            try writer.wait()
            if improved {
                try TrainingCheckpoint.save(
                    bestPath, model: model, optimizer: optimizer, config: config, state: state, metrics: record,
                    recipe: recipe, transfer: transfer)
            }
            if last || state.epoch % max(config.checkpointEvery, 1) == 0 {
                try TrainingCheckpoint.save(
                    latestPath, model: model, optimizer: optimizer, config: config, state: state, metrics: record,
                    recipe: recipe, transfer: transfer, committingOn: last ? nil : writer)
            }
        }
        record.epochWallSeconds = Date().timeIntervalSince(t0)
        record.timeUTC = EpochRecord.utcStamp()
        if let log {
            // After the checkpoint's commit, on the writer's thread: a row in log.csv means its checkpoint is in
            // place (a resume drops the rows after the checkpoint it continues from anyway).
            let box = UncheckedSendable((log, record))
            writer.submit { try box.value.0.append(box.value.1) }
            if last { try writer.wait() }
        }
        return (record, validationSeconds)
    }

    /// After a stop request: rank 0 writes checkpoint_latest.h5 with `state`, every rank waits for it and the
    /// run ends with an `.interrupted` error (exit status 75).
    private func stopAndSave(_ state: TrainingState, metrics: EpochRecord?, finished: String) throws -> Never {
        if comm.isRoot {
            try writer.wait()
            try TrainingCheckpoint.save(
                latestPath, model: model, optimizer: optimizer, config: config, state: state, metrics: metrics,
                recipe: recipe, transfer: transfer)
            print(
                context.linePrefix
                    + "train: stop requested; finished \(finished), wrote \(latestPath); \(context.resumeHint)")
        }
        try comm.barrier()
        throw AttunetError("", kind: .interrupted)
    }

    /// What ``validate()`` measures.
    public struct Validation: Sendable, Equatable {
        /// Dice per foreground class, averaged over the cases that contain the class.
        public var dice: [Double]
        /// The training loss on each whole case's blended probabilities, mean over the cases.
        public var loss: Double
    }

    /// Dice per foreground class on the validation cases (each segmented whole by ``segment(case:)``),
    /// averaged over the cases that contain the class, and the validation loss; the counts are ``DiceScore``'s,
    /// as `attunet evaluate` uses. Case i goes to rank i mod ranks (so a rank may get one case more than
    /// another); every rank's counts and loss land in the case's own row and the rows are summed over ranks, so
    /// each case counts once.
    public func validate() throws -> Validation {
        let ids = config.validationCases
        let k = config.model.classes
        let width = k * DiceScore.columns + 1  // the counts, then the case's loss
        var rows = [Double](repeating: 0, count: ids.count * width)
        for (i, id) in ids.enumerated() where i % comm.size == comm.rank {
            guard let c = store.index(of: id) else { throw AttunetError("\(config.store): no validation case \(id)") }
            let prediction = try segment(case: c)
            let label = try store.label(c)
            rows.withUnsafeMutableBufferPointer { buf in
                DiceScore.accumulate(
                    prediction: prediction.labels, reference: label, classes: k,
                    into: UnsafeMutableBufferPointer(rebasing: buf[(i * width)..<(i * width + width - 1)]))
            }
            let probabilities = prediction.probabilities ?? []
            rows[i * width + width - 1] = probabilities.withUnsafeBufferPointer { p in
                label.withUnsafeBufferPointer { loss.value(probabilities: p, classes: k, labels: $0) }
            }
        }
        try rows.withUnsafeMutableBufferPointer { try comm.allReduceSum($0) }
        var counts = [Double]()
        counts.reserveCapacity(ids.count * (width - 1))
        var lossSum = 0.0
        for i in ids.indices {
            counts += rows[(i * width)..<(i * width + width - 1)]
            lossSum += rows[i * width + width - 1]
        }
        return Validation(
            dice: DiceScore.meanPerClass(counts, cases: ids.count, classes: k), loss: lossSum / Double(ids.count))
    }

    /// Segments case `c` of the store with the model as it is now: the sliding-window predictor at the
    /// training patch size (overlap 0.5, Gaussian blending), BN in evaluation mode (restored afterwards).
    public func segment(case c: Int) throws -> Prediction {
        if predictor == nil {
            // The probabilities are the blending accumulator itself, kept for the validation loss.
            predictor = try SlidingWindowPredictor(
                network: model, options: SlidingWindowOptions(patch: config.patch, keepProbabilities: true))
        }
        return try predictor!.predict(store: store, case: c)
    }

    private func drawProgressBar(epoch: Int, step: Int, of steps: Int, loss: Double, since t0: Date) {
        let width = 30
        let done = width * step / max(steps, 1)
        let bar = String(repeating: "#", count: done) + String(repeating: ".", count: width - done)
        let elapsed = Date().timeIntervalSince(t0)
        print("\repoch \(epoch) [\(bar)] \(step)/\(steps) loss \(fmt(loss, 4)) \(fmt(elapsed, 0)) s", terminator: "")
        fflush(nil)  // all output streams (stdout itself is not concurrency-safe to name in Swift 6)
    }

    private var started = Date()
    /// Epochs finished by this process (a resumed run's log also holds earlier ones).
    private var epochsRun = 0

    /// One line per epoch, starting with the time (UTC) it ended: requeued jobs append to one log file.
    private func printEpoch(_ r: EpochRecord, loadWait: Double, steps: Int, validationSeconds: Double) {
        let remaining = config.epochs - r.epoch - 1
        epochsRun += 1
        let perEpoch = Date().timeIntervalSince(started) / Double(epochsRun)
        var line =
            (r.timeUTC ?? EpochRecord.utcStamp()) + " " + context.linePrefix
            + "epoch \(r.epoch + 1)/\(config.epochs)  loss \(fmt(r.trainLoss, 4))  lr \(String(format: "%.2e", r.learningRate))  \(fmt(r.patchesPerSecond, 2)) patches/s  \(fmt(r.seconds, 1)) s"
        if !r.validationDice.isEmpty {
            line += "  Dice " + zip(classNames, r.validationDice).map { "\($0) \(fmt($1, 3))" }.joined(separator: " ")
            line += "  val loss \(fmt(r.validationLoss ?? .nan, 4)) (\(fmt(validationSeconds, 1)) s)"
        }
        if steps > 0 && loadWait > 0.05 * r.seconds { line += "  (waited \(fmt(loadWait, 1)) s for data)" }
        line += "  ETA \(formatDuration(perEpoch * Double(remaining)))"
        print(line)
        fflush(nil)  // all output streams (stdout itself is not concurrency-safe to name in Swift 6)
    }
}

/// The watchdog's timeouts when `--step-timeout` is not given: derived from the steps measured so far.
///
/// A step's collectives wait at most for the slowest rank's share of the step, so 20 times the slowest step
/// seen (at least 120 s) leaves room for noisy nodes and still ends a job whose peer died within minutes. The
/// first steps (start-up, first touch of memory) get 600 s. Outside steps (validation, checkpoint writing, a
/// cross-validation's evaluation) ranks can legitimately wait for each other much longer: 10 times the step
/// timeout, at least 30 minutes.
public struct StepTimeout: Sendable {
    public private(set) var steps = 0
    public private(set) var slowest = 0.0
    public init() {}

    public mutating func record(_ seconds: Double) {
        steps += 1
        if steps > 1 { slowest = max(slowest, seconds) }  // the first step includes start-up
    }

    /// The timeout of a step's collectives: `fixed` when given, else derived.
    public func forSteps(fixed: Double?) -> Double {
        if let fixed { return fixed }
        return steps < 3 ? 600 : max(120, 20 * slowest)
    }

    /// The timeout of the collectives between steps.
    public func outsideSteps(fixed: Double?) -> Double {
        let step = forSteps(fixed: fixed)
        return step == 0 ? 0 : max(1800, 10 * step)
    }
}

/// Seconds spent in each phase of one optimizer step.
public struct StepTimes: Sendable, Equatable, Codable {
    public var forward = 0.0, loss = 0.0, backward = 0.0, allReduce = 0.0, update = 0.0
    public init() {}
    public var total: Double { forward + loss + backward + allReduce + update }
    /// Adds `o`'s phases to these.
    public mutating func add(_ o: StepTimes) {
        forward += o.forward
        loss += o.loss
        backward += o.backward
        allReduce += o.allReduce
        update += o.update
    }
    /// These phases times `f`.
    public func scaled(by f: Double) -> StepTimes {
        var s = self
        s.forward *= f
        s.loss *= f
        s.backward *= f
        s.allReduce *= f
        s.update *= f
        return s
    }
}

/// What one optimizer step did.
public struct StepResult: Sendable {
    /// The loss averaged over ranks (each rank's loss on its share of the batch).
    public var loss: Double
    /// Some rank received SIGTERM/SIGUSR1 during the step.
    public var stopRequested: Bool
    public var times: StepTimes
    /// Seconds the buckets of the gradient all-reduce took, summed (overlapped or not; 0 on one rank).
    public var gradientAllReduce: Double
    /// Seconds the step waited for them after the backward pass: all of ``gradientAllReduce`` without overlap,
    /// only what the backward pass did not hide with it.
    public var exposedAllReduce: Double

    public init(
        loss: Double, stopRequested: Bool, times: StepTimes, gradientAllReduce: Double = 0,
        exposedAllReduce: Double = 0
    ) {
        self.loss = loss
        self.stopRequested = stopRequested
        self.times = times
        self.gradientAllReduce = gradientAllReduce
        self.exposedAllReduce = exposedAllReduce
    }
}

/// 42 s → "42s", 125 s → "2m05s", 3,725 s → "1h02m": durations in progress lines and estimates.
public func formatDuration(_ s: Double) -> String {
    let t = Int(s.rounded())
    return t >= 3600
        ? "\(t / 3600)h\(String(format: "%02d", (t % 3600) / 60))m"
        : t >= 60 ? "\(t / 60)m\(String(format: "%02d", t % 60))s" : "\(t)s"
}
