import ArgumentParser
import Collectives
import DataPipeline
import Foundation
import NN
import Support
import Tensor
import Training
import Workflows

/// `attunet plan`: the layout of a cross-validation that finishes soonest on an allocation, from measured costs.
struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Plan a cross-validation's layout on N nodes from measured step times.",
        discussion: """
            Which layout finishes a cross-validation soonest on an allocation: how many fold groups train side by side (cv --fold-parallel), how many ranks each group has (at most the global batch: each rank takes batch/ranks patches) and how many threads each rank runs (--cpus-per-task). It prints the predicted wall time, the core-hours, the memory per rank and node, and the command lines to submit: sbatch of cluster/cv.sbatch, cluster/submit-cv-array.sh for a job array (one task per fold, with the per-task request), and launch/mpirun-hosts.sh without Slurm. The experiment defaults to the paper's CT-150: 5 folds x 2 models (attention-unet, unet), 150 cases, patch 160x160x96, batch 2, 300 epochs, validation every epoch.

              attunet plan --nodes 4 --cores-per-node 64 --memory-per-node 256
              attunet plan --calibrate --out profile.json      # on a compute node
              attunet plan --profile profile.json --nodes 16 --cores-per-node 64 \\
                  --network ib100
              attunet plan --profile profile.json --table --nodes 1,4,16,64 \\
                  --cores-per-node 64 --network 25gbe,ib100

            The model is calibrated by measurement, on this machine or from a saved profile: --calibrate times one rank's training steps (attunet bench train's) and evaluation-mode forward passes of one patch at each thread count of --calibration-threads, and its peak memory; --out saves them (snake_case JSON) for --profile. Without --calibrate or --profile it measures first (minutes at the paper's patch), then plans. A step of r ranks x T threads is predicted as the rank's patches (batch/r) times the measured time per patch, plus the part that does not grow with patches (optimizer, data), each fitted over threads by Amdahl's law (t(T) = t(1) (s + (1 - s)/T)), plus the all-reduce of the gradients (4 bytes per parameter) by the ring model 2 (p-1)/p x bytes / bandwidth + 2 (p-1) x latency, over shared memory when a group's ranks share a node, else over --network. Validation and test volumes: sliding-window tiles (overlap 0.5) of the store's volumes, or of --volume, times the measured forward pass, spread over a group's ranks. Jobs (every fold of each model) are dealt to groups as cv deals them (job j to group j mod G); the busiest group sets the wall time. Among layouts within 1% of the soonest, the one with the fewest core-hours wins.

            What it assumes: thread counts beyond those measured follow the fitted law (an extrapolation, marked in the output); ranks on one node do not slow each other (memory bandwidth is shared in reality); the all-reduce is not hidden behind the backward pass unless --exposed-allreduce says how much of it stays exposed (attunet bench train measures it); checkpoints, the data loader and start-up are not counted; a larger patch than the calibration's costs in proportion to its voxels.

            --layouts 1x2,2x1 prints only the predicted step time of those layouts (ranks x threads, on one node): launch/check-plan.sh compares them with attunet bench train.

            Exit status:
              0   done
              1   an error, one line each on stderr (an unreadable profile, no layout
                  that fits in memory)
              64  bad command line
            """
    )

    @Option(help: "Comma-separated models, as attunet cv's --models.")
    var models: String = "attention-unet,unet"

    @OptionGroup var architecture: ArchitectureOptions

    @Option(help: "Folds (cv --folds).")
    var folds: Int = 5

    @Option(help: "Cases in the cohort, without --store (the paper's CT-150: 150).")
    var cases: Int = 150

    @Option(
        help:
            "A case store (attunet prepare): the cases, their volume sizes and, when calibrating, the patches come from it (default: --cases and --volume, and phantoms to calibrate on)."
    )
    var store: String?

    @Option(help: "Volume size XxYxZ of a validation or test case at the store's spacing, without --store.")
    var volume = Dim3(z: 150, y: 180, x: 180)

    @Option(help: "Epochs (the paper: 300).")
    var epochs: Int = 300

    @Option(help: "Patch size XxYxZ (the paper: 160x160x96).")
    var patch = Dim3(z: 96, y: 160, x: 160)

    @Option(help: "Global batch (the paper: 2); the ranks of a fold group must divide it.")
    var batch: Int = 2

    @Option(help: "Patches drawn per training case per epoch (cv --samples-per-case).")
    var samplesPerCase: Int = 1

    @Option(help: "Share of each fold's training cases held out for validation (cv --val-fraction).")
    var valFraction: Double = 0.2

    @Option(help: "Validate every N epochs and after the last (cv --val-every).")
    var valEvery: Int = 1

    @OptionGroup(title: "Allocation") var allocation: AllocationOptions

    @OptionGroup(title: "Calibration") var calibration: CalibrationOptions

    @Flag(help: "Measure and stop: print the profile, or write it to --out.")
    var calibrate = false

    @Option(help: "With --calibrate: write the profile (JSON) to this file.")
    var out: String?

    @Option(
        help: ArgumentHelp(
            "Print only the predicted step time of these layouts, ranks x threads on one node (e.g. 1x2,2x1), per model.",
            valueName: "RxT[,RxT...]"))
    var layouts: String?

    @Flag(help: "Print a Markdown table of the soonest layout for every --nodes count and --network.")
    var table = false

    @Flag(help: "Print the plan as one JSON object instead of text.")
    var json = false

    func validate() throws {
        guard folds >= 2 else { throw ValidationError("--folds must be at least 2") }
        guard cases >= folds else { throw ValidationError("--cases must be at least --folds") }
        guard epochs >= 1, batch >= 1, samplesPerCase >= 1, valEvery >= 1 else {
            throw ValidationError("--epochs, --batch, --samples-per-case and --val-every must be at least 1")
        }
        guard (0..<1).contains(valFraction) else { throw ValidationError("--val-fraction must be in [0, 1)") }
        guard [patch, volume].allSatisfy({ $0.x >= 1 && $0.y >= 1 && $0.z >= 1 }) else {
            throw ValidationError("--patch and --volume must be positive sizes XxYxZ")
        }
        guard out == nil || calibrate else { throw ValidationError("--out goes with --calibrate") }
        guard !(calibrate && calibration.profile != nil) else {
            throw ValidationError("--calibrate measures; --profile reads a measurement: give one of them")
        }
        guard allocation.nodeCounts.count == 1 || table else {
            throw ValidationError("several --nodes counts go with --table")
        }
        guard allocation.networks.count == 1 || table else {
            throw ValidationError("several --network presets go with --table")
        }
        if let layouts { _ = try Self.parseLayouts(layouts) }
        _ = try architecture.kinds(models)
    }

    static func parseLayouts(_ text: String) throws -> [(ranks: Int, threads: Int)] {
        try text.split(separator: ",").map { item in
            let p = item.lowercased().split(separator: "x").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard p.count == 2, let r = p[0], let t = p[1], r >= 1, t >= 1 else {
                throw ValidationError("--layouts \(text): each item is RANKSxTHREADS, e.g. 1x2,2x1")
            }
            return (r, t)
        }
    }

    func run() throws {
        let comm = try MPICommunicator()
        guard comm.size == 1 else {
            throw AttunetError("attunet plan runs as one process (it times one rank); start it without mpirun")
        }
        let caseStore = try store.map { try CaseStore(path: $0) }
        let configs = try architecture.kinds(models).map {
            architecture.config($0, storeClasses: caseStore?.classNames.count)
        }
        let profile: CalibrationProfile
        let source: String
        if let path = calibration.profile {
            profile = try CalibrationProfile.read(path)
            source = path
        } else {
            profile = try calibration.measure(
                store: store, models: configs, patch: calibration.patch ?? patch, batch: batch, comm: comm,
                quiet: json && !calibrate)
            source = "the calibration"
        }
        if calibrate {
            let data = try profile.json()
            if let out {
                try AtomicFile.write(data, to: out)
                print("attunet plan: wrote the calibration to \(out) (plan with attunet plan --profile \(out))")
            } else {
                print(String(decoding: data, as: UTF8.self))
            }
            return
        }
        let ids = caseStore.map { $0.cases.map(\.id) } ?? PlannedExperiment.ids(count: cases)
        let request = try PlanRequest(
            configs: configs, profile: profile, source: source,
            folds: try FoldPlan.make(ids: ids, folds: folds, seed: 0), store: caseStore, storePath: store,
            volume: volume, patch: patch, batch: batch, epochs: epochs, samplesPerCase: samplesPerCase,
            validationFraction: valFraction, validateEvery: valEvery,
            cvOptions: ["--folds", "\(folds)"] + cvOptions(configs))
        if let layouts {
            print(try request.stepTable(try Self.parseLayouts(layouts), allocation: allocation, json: json))
        } else if table {
            print(try request.markdownTable(allocation))
        } else {
            print(try request.report(allocation.allocation(), json: json))
        }
    }

    /// The `attunet cv` options of this experiment, as CV_OPTS or after `cv` (those at cv's defaults left out).
    func cvOptions(_ configs: [ModelConfig]) -> [String] {
        var o = ["--models", configs.map(\.kind.rawValue).joined(separator: ","), "--patch", "\(patch)"]
        o += ["--batch", "\(batch)", "--epochs", "\(epochs)"]
        if samplesPerCase != 1 { o += ["--samples-per-case", "\(samplesPerCase)"] }
        if valFraction != 0.2 { o += ["--val-fraction", fmtShort(valFraction)] }
        if valEvery != 1 { o += ["--val-every", "\(valEvery)"] }
        if let f = architecture.featureScale { o += ["--feature-scale", fmtShort(f)] }
        if let c = architecture.classes { o += ["--classes", "\(c)"] }
        return o
    }
}

/// `--nodes`, `--cores-per-node`, `--memory-per-node`, `--network`: the allocation a plan is for (attunet plan,
/// and attunet cv --dry-run --nodes).
struct AllocationOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Nodes of the allocation (default 1; with --table a list, e.g. 1,4,16,64).", valueName: "n[,n...]"))
    var nodes: IntList?

    var nodeCounts: [Int] { nodes?.values ?? [1] }

    @Option(help: "Cores per node (default: this machine's CPUs).")
    var coresPerNode: Int?

    @Option(help: "Memory per node in GiB for the ranks (default: this machine's memory).")
    var memoryPerNode: Double?

    @Option(
        help: ArgumentHelp(
            "Network between nodes: 25gbe, 100gbe, ib100 (line rates; with --table a list); ranks of one node all-reduce over shared memory.",
            valueName: "name[,name...]"))
    var network: String = "25gbe"

    @Option(help: "Network bandwidth in GB/s, instead of the preset's.")
    var bandwidth: Double?

    @Option(help: "Network latency per message in microseconds, instead of the preset's.")
    var latency: Double?

    @Option(
        help:
            "Share of the all-reduce left exposed, not hidden behind the backward pass (1: nothing hidden; bench train's exposed time / all-reduce time)."
    )
    var exposedAllreduce: Double = 1

    func validate() throws {
        guard nodeCounts.allSatisfy({ $0 >= 1 }) else { throw ValidationError("--nodes must be at least 1") }
        if let c = coresPerNode, c < 1 { throw ValidationError("--cores-per-node must be at least 1") }
        if let m = memoryPerNode, !(m > 0) { throw ValidationError("--memory-per-node must be positive (GiB)") }
        for n in networks where NetworkLink.preset(n) == nil || n == "shm" {
            throw ValidationError("--network \(n): use 25gbe, 100gbe or ib100 (or --bandwidth and --latency)")
        }
        if let b = bandwidth, !(b > 0) { throw ValidationError("--bandwidth must be positive (GB/s)") }
        if let l = latency, !(l >= 0) { throw ValidationError("--latency must not be negative (microseconds)") }
        guard (0...1).contains(exposedAllreduce) else { throw ValidationError("--exposed-allreduce must be in [0, 1]") }
    }

    var networks: [String] { network.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }

    var cores: Int { coresPerNode ?? CPUAllocation.affinity().count }

    var memoryBytes: Double? {
        memoryPerNode.map { $0 * 1_073_741_824 } ?? Self.machineMemoryBytes
    }

    /// This machine's physical memory (`MemTotal` of /proc/meminfo), in bytes.
    static var machineMemoryBytes: Double? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemTotal:") {
            return line.split(separator: " ").dropFirst().first.flatMap { Double($0) }.map { $0 * 1024 }
        }
        return nil
    }

    func link(_ name: String) -> NetworkLink {
        var l = NetworkLink.preset(name)!
        if let b = bandwidth {
            l.bandwidthBytesPerSecond = b * 1e9
            l.name = "custom"
        }
        if let t = latency {
            l.latencySeconds = t * 1e-6
            l.name = "custom"
        }
        return l
    }

    /// The allocation of the first --nodes count and --network.
    func allocation(nodes n: Int? = nil, network name: String? = nil) -> Allocation {
        Allocation(
            nodes: n ?? nodeCounts[0], coresPerNode: cores, memoryPerNodeBytes: memoryBytes,
            network: link(name ?? networks[0]), exposedAllReduce: exposedAllreduce)
    }
}

/// How the planner measures (attunet plan, and attunet cv --dry-run --nodes).
struct CalibrationOptions: ParsableArguments {
    @Option(help: "Plan from this profile (attunet plan --calibrate --out FILE) instead of measuring here.")
    var profile: String?

    @Option(
        help: ArgumentHelp(
            "Thread counts to time one rank at (default: 1, 2, 4, ... up to this machine's CPUs, at most 8).",
            valueName: "n[,n...]"))
    var calibrationThreads: IntList?

    @Option(
        help:
            "Patch XxYxZ to time (default: --patch); a smaller one is faster to measure, and its times are scaled by voxels."
    )
    var calibrationPatch: Dim3?

    @Option(help: "Timed steps (and forward passes) per thread count.")
    var calibrationSteps: Int = 2

    @Option(help: "Untimed training steps before them.")
    var calibrationWarmup: Int = 1

    func validate() throws {
        guard calibrationSteps >= 1, calibrationWarmup >= 0 else {
            throw ValidationError("--calibration-steps must be at least 1 and --calibration-warmup not negative")
        }
        if let t = calibrationThreads, !t.values.allSatisfy({ $0 >= 1 }) {
            throw ValidationError("--calibration-threads must be at least 1")
        }
    }

    var patch: Dim3? { calibrationPatch }

    /// 1, 2, 4, ... up to the CPUs of this process (at most 8), unless given.
    var threads: [Int] {
        if let t = calibrationThreads { return t.values }
        let cpus = min(CPUAllocation.affinity().count, 8)
        return Array(sequence(first: 1) { $0 * 2 <= cpus ? $0 * 2 : nil })
    }

    /// Measures on `store`, or on two synthesised phantom cases in a temporary folder.
    func measure(
        store: String?, models: [ModelConfig], patch: Dim3, batch: Int, comm: Communicator, quiet: Bool
    ) throws -> CalibrationProfile {
        let say: (String) -> Void = { line in
            if !quiet { FileHandle.standardError.write(Data(("attunet plan: " + line + "\n").utf8)) }
        }
        var scratch: URL?
        defer { if let scratch { try? FileManager.default.removeItem(at: scratch) } }
        let path: String
        if let store {
            path = store
        } else {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("attunet-plan-\(getpid())")
            scratch = dir
            say("synthesising 2 phantom cases at 2 mm to calibrate on ...")
            path = try TrainingBench.phantomStore(in: dir, classes: models[0].classes)
        }
        return try CalibrationProfile.measure(
            store: path, models: models, patch: patch, batch: batch, threads: threads, warmup: calibrationWarmup,
            steps: calibrationSteps, comm: comm, progress: say)
    }
}

/// `1,4,16`: a list of positive counts.
struct IntList: ExpressibleByArgument, Sendable {
    let values: [Int]
    init(_ values: [Int]) { self.values = values }
    init?(argument: String) {
        let parts = argument.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !parts.isEmpty, parts.allSatisfy({ $0 != nil }) else { return nil }
        values = parts.map { $0! }
    }
    var defaultValueDescription: String { values.map(String.init).joined(separator: ",") }
}

/// An experiment, its measured costs, and the plan's printed forms.
struct PlanRequest {
    var experiment: PlannedExperiment
    var costs: [ModelCostModel]
    var profile: CalibrationProfile
    var patch: Dim3
    var store: String?
    /// attunet cv's options of the experiment but --store, --out and --fold-parallel.
    var cvOptions: [String]

    /// The experiment of `configs` on `folds`, the cases and volume sizes of `store` (else `volume`), costed by
    /// `profile` (named `source` in errors).
    init(
        configs: [ModelConfig], profile: CalibrationProfile, source: String, folds: FoldPlan, store: CaseStore?,
        storePath: String?, volume: Dim3, patch: Dim3, batch: Int, epochs: Int, samplesPerCase: Int,
        validationFraction: Double, validateEvery: Int, cvOptions: [String]
    ) throws {
        costs = try configs.map { try profile.costModel(model: $0, patch: patch, source: source) }
        let tiles: Double
        if let store {
            let all = store.cases.map { PlannedExperiment.tiles(volume: $0.shape, patch: patch) }
            tiles = Double(all.reduce(0, +)) / Double(max(all.count, 1))
        } else {
            tiles = Double(PlannedExperiment.tiles(volume: volume, patch: patch))
        }
        experiment = PlannedExperiment(
            models: configs.map(\.kind.rawValue), plan: folds, epochs: epochs, batch: batch,
            samplesPerCase: samplesPerCase, validationFraction: validationFraction, validateEvery: validateEvery,
            tilesPerVolume: tiles)
        self.profile = profile
        self.patch = patch
        self.store = storePath
        self.cvOptions = cvOptions
    }

    static func hours(_ s: Double) -> String {
        let h = s / 3600
        return h >= 48 ? "\(fmt(h, 1)) h (\(fmt(h / 24, 1)) days)" : h >= 1 ? "\(fmt(h, 1)) h" : formatDuration(s)
    }

    /// Slurm's --time: the prediction plus a quarter and ten minutes, as D-HH:MM:SS.
    static func slurmTime(_ s: Double) -> String {
        let t = Int((s * 1.25 + 600).rounded(.up) / 60) * 60
        let d = t / 86_400
        let rest = String(format: "%02d:%02d:%02d", (t % 86_400) / 3600, (t % 3600) / 60, t % 60)
        return d > 0 ? "\(d)-\(rest)" : rest
    }

    static func gib(_ b: Double) -> String { fmt(b / 1_073_741_824, 1) + " GiB" }

    var storeArgument: String { store ?? "data/ct150.h5" }

    /// One line per model: the measured points and the fits.
    var calibrationLines: [String] {
        var lines = [
            "calibration: \(profile.cpu), \(profile.cpus) CPU(s), \(profile.measuredAt); patch \(profile.patchSize), \(profile.batchPerRank) patch(es) per step; threads \(profile.models[0].points.map { "\($0.threads)" }.joined(separator: ", ")) measured"
        ]
        if profile.patchSize != patch {
            lines.append(
                "  measured at \(profile.patchSize), scaled by voxels to \(patch) (x\(fmt(Double(patch.count) / Double(profile.patchSize.count), 2)))"
            )
        }
        for m in profile.models where experiment.models.contains(m.model) {
            let steps = m.points.map { "\(fmt($0.stepSeconds, 2)) s at \($0.threads)" }.joined(separator: ", ")
            let tiles = m.points.map { "\(fmt($0.tileSeconds, 2)) s" }.joined(separator: ", ")
            lines.append("  \(m.model): step \(steps) (measured); forward pass of one patch \(tiles)")
        }
        for c in costs {
            lines.append(
                "  \(c.model) fit: serial fraction \(fmt(c.batchFit.serialFraction, 2)) of the per-patch part, \(fmt(c.fixedFit.serialFraction, 2)) of the rest (\(fmt(c.fixedFit.seconds(threads: 1), 2)) s at 1 thread), \(fmt(c.tileFit.serialFraction, 2)) of a forward pass; \(Self.gib(c.memoryBytes(batch: experiment.batch))) per rank at \(experiment.batch) patches, \(Self.gib(c.memoryBytes(batch: 1))) at 1"
            )
        }
        return lines
    }

    var experimentLine: String {
        let j = experiment.jobs[0]
        return
            "experiment: \(experiment.models.count) model(s) (\(experiment.models.joined(separator: ", "))) x \(experiment.folds) folds = \(experiment.jobs.count) jobs; \(experiment.cases) cases (fold 1: \(j.stepsPerEpoch) steps per epoch, \(j.validationCases) validation, \(j.testCases) test cases); \(experiment.epochs) epochs, \(experiment.validations) validation passes; patch \(patch), global batch \(experiment.batch); \(fmt(experiment.tilesPerVolume, 1)) tiles per volume"
    }

    func allocationLine(_ a: Allocation) -> String {
        let memory = a.memoryPerNodeBytes.map { Self.gib($0) } ?? "memory not checked"
        return
            "allocation: \(a.nodes) node(s) x \(a.coresPerNode) cores, \(memory) each; between nodes \(a.network.name) (\(fmt(a.network.bandwidthBytesPerSecond / 1e9, 2)) GB/s, \(fmtShort(a.network.latencySeconds * 1e6)) us), within a node shared memory (\(fmt(a.sharedMemory.bandwidthBytesPerSecond / 1e9, 1)) GB/s); all-reduce \(fmt(100 * a.exposedAllReduce, 0))% exposed"
    }

    func planner(_ a: Allocation) -> AllocationPlanner {
        AllocationPlanner(experiment: experiment, costs: costs, allocation: a)
    }

    func noFit(_ a: Allocation) -> AttunetError {
        let least = costs.map { $0.memoryBytes(batch: 1) }.max() ?? 0
        return AttunetError(
            "no layout fits: a rank with 1 patch needs \(Self.gib(least)), the node has \(a.memoryPerNodeBytes.map { Self.gib($0) } ?? "?"); give --memory-per-node, or a smaller --patch"
        )
    }

    func describe(_ p: LayoutPrediction, _ a: Allocation) -> [String] {
        let l = p.layout
        let steps = zip(experiment.models, zip(p.stepSeconds, p.allReduceSeconds)).map {
            "\($0.0) \(fmt($0.1.0, 3)) s (all-reduce \(fmt($0.1.1, 4)) s)"
        }.joined(separator: ", ")
        let volumes = zip(experiment.models, p.volumeSeconds).map { "\($0.0) \(fmt($0.1, 2)) s" }.joined(
            separator: ", ")
        let work = p.trainingSeconds + p.validationSeconds + p.testSeconds
        var lines = [
            "  step: \(steps); one volume: \(volumes)",
            "  wall time \(Self.hours(p.wallSeconds)), \(fmt(p.coreHours, 0)) core-hours (\(l.cores) cores); work: training \(fmt(100 * p.trainingSeconds / work, 0))%, validation \(fmt(100 * p.validationSeconds / work, 0))%, testing \(fmt(100 * p.testSeconds / work, 0))%",
            "  memory \(Self.gib(p.memoryPerRankBytes)) per rank, \(Self.gib(p.memoryPerNodeBytes)) per node\(a.memoryPerNodeBytes.map { " of " + Self.gib($0) } ?? "")",
        ]
        if p.extrapolated {
            let measured = costs[0].batchFit.measuredThreads.map(String.init).joined(separator: ", ")
            lines.append(
                "  \(l.threadsPerRank) threads per rank: extrapolated by the Amdahl fit beyond the measured \(measured)"
            )
        }
        return lines
    }

    func cvLine(groups g: Int) -> String {
        (cvOptions + (g > 1 ? ["--fold-parallel", "\(g)"] : [])).joined(separator: " ")
    }

    /// cv-array.sbatch passes --folds itself (FOLDS).
    func arrayCVLine(groups g: Int) -> String {
        var o = cvOptions
        if let i = o.firstIndex(of: "--folds"), i + 1 < o.count { o.removeSubrange(i...(i + 1)) }
        return (o + (g > 1 ? ["--fold-parallel", "\(g)"] : [])).joined(separator: " ")
    }

    /// The plan as text (or JSON).
    func report(_ a: Allocation, json: Bool) throws -> String {
        let planner = planner(a)
        guard let best = planner.plan() else { throw noFit(a) }
        let array = planner.planArray()
        if json {
            struct Out: Encodable {
                var experiment: PlannedExperiment
                var profile: CalibrationProfile
                var soonest: LayoutPrediction
                var array: ArrayPrediction?
                var sbatch: String, submitArray: String?, mpirun: String
            }
            let lines = commands(best, array)
            return String(
                decoding: try JSONFiles.data(
                    Out(
                        experiment: experiment, profile: profile, soonest: best, array: array, sbatch: lines.sbatch,
                        submitArray: lines.array, mpirun: lines.mpirun)), as: UTF8.self)
        }
        let l = best.layout
        var out = [experimentLine] + calibrationLines + [allocationLine(a), ""]
        out.append(
            "soonest layout: \(l.groups) fold group(s) x \(l.ranksPerGroup) rank(s) x \(l.threadsPerRank) thread(s): \(l.ranksPerNode) rank(s) per node on \(l.nodes) of \(a.nodes) node(s)\(l.groupsWithinNodes ? "" : ", each group across \(l.ranksPerGroup / l.ranksPerNode) nodes")"
        )
        out += describe(best, a)
        let lines = commands(best, array)
        out.append("")
        out.append("one job, cluster/cv.sbatch (STORE: your case store):")
        out.append("  " + lines.sbatch)
        out.append("without Slurm, launch/mpirun-hosts.sh (hosts.txt: \(l.nodes) host(s), one per line):")
        out.append("  " + lines.mpirun)
        if let array, let line = lines.array {
            let t = array.task.layout
            out.append(
                "job array, cluster/submit-cv-array.sh: one task per fold (every model), each task \(t.nodes) node(s) x \(t.ranksPerNode) rank(s) x \(t.threadsPerRank) thread(s)\(t.groups > 1 ? " (the models side by side)" : ""); \(array.concurrentTasks) task(s) at once, \(Self.hours(array.taskSeconds)) per task, wall time \(Self.hours(array.wallSeconds)), \(fmt(array.coreHours, 0)) core-hours:"
            )
            out.append("  " + line)
        }
        // The next layouts, for a user who wants fewer nodes or cores.
        let others = planner.predictions().sorted { $0.wallSeconds < $1.wallSeconds }.filter { $0.layout != l }
        var shown: [LayoutPrediction] = []
        for p in others where !shown.contains(where: { $0.layout.nodes == p.layout.nodes }) && p.layout.nodes < l.nodes
        {
            shown.append(p)
        }
        if !shown.isEmpty {
            out.append("")
            out.append("on fewer nodes (the soonest layout on each):")
            for p in shown.sorted(by: { $0.layout.nodes > $1.layout.nodes }).prefix(6) {
                let q = p.layout
                out.append(
                    "  \(q.nodes) node(s): \(q.groups) x \(q.ranksPerGroup) x \(q.threadsPerRank) (\(q.ranksPerNode) per node): \(Self.hours(p.wallSeconds)), \(fmt(p.coreHours, 0)) core-hours"
                )
            }
        }
        return out.joined(separator: "\n")
    }

    /// The command lines of a plan.
    func commands(_ p: LayoutPrediction, _ array: ArrayPrediction?) -> (sbatch: String, array: String?, mpirun: String)
    {
        let l = p.layout
        let sbatch =
            "STORE=\(storeArgument) CV_OPTS=\"\(cvLine(groups: l.groups))\" sbatch --nodes=\(l.nodes) --ntasks-per-node=\(l.ranksPerNode) --cpus-per-task=\(l.threadsPerRank) --time=\(Self.slurmTime(p.wallSeconds)) cluster/cv.sbatch"
        let mpirun =
            "ATTUNET_THREADS=\(l.threadsPerRank) launch/mpirun-hosts.sh -f hosts.txt -r \(l.ranksPerNode) cv --store \(storeArgument) --out runs/cv \(cvLine(groups: l.groups))"
        let arrayLine = array.map { a in
            let t = a.task.layout
            return
                "STORE=\(storeArgument) FOLDS=\(experiment.folds) CV_OPTS=\"\(arrayCVLine(groups: t.groups))\" cluster/submit-cv-array.sh --nodes=\(t.nodes) --ntasks-per-node=\(t.ranksPerNode) --cpus-per-task=\(t.threadsPerRank) --time=\(Self.slurmTime(a.taskSeconds))"
        }
        return (sbatch, arrayLine, mpirun)
    }

    /// `--layouts`: the predicted step of each layout (ranks on one node, shared memory), per model.
    func stepTable(_ layouts: [(ranks: Int, threads: Int)], allocation options: AllocationOptions, json: Bool) throws
        -> String
    {
        var a = options.allocation()
        a.memoryPerNodeBytes = nil
        a.coresPerNode = max(a.coresPerNode, layouts.map { $0.ranks * $0.threads }.max() ?? 1)
        let planner = planner(a)
        struct Row: Encodable {
            var model: String, ranks: Int, threads: Int, batchPerRank: Int
            var stepSeconds: Double, computeSeconds: Double, allReduceSeconds: Double, extrapolated: Bool
        }
        var rows: [Row] = []
        for (r, t) in layouts {
            guard experiment.batch % r == 0 else {
                throw AttunetError("--layouts \(r)x\(t): \(r) ranks do not divide the global batch \(experiment.batch)")
            }
            let p = planner.predict(
                Layout(groups: 1, ranksPerGroup: r, threadsPerRank: t, nodes: 1, ranksPerNode: r))!
            for (i, m) in experiment.models.enumerated() {
                rows.append(
                    Row(
                        model: m, ranks: r, threads: t, batchPerRank: experiment.batch / r,
                        stepSeconds: p.stepSeconds[i],
                        computeSeconds: p.stepSeconds[i] - p.allReduceSeconds[i],
                        allReduceSeconds: p.allReduceSeconds[i],
                        extrapolated: p.extrapolated))
            }
        }
        if json { return String(decoding: try JSONFiles.data(rows), as: UTF8.self) }
        var out = calibrationLines
        out.append("predicted step, patch \(patch), global batch \(experiment.batch), the ranks on one node:")
        for r in rows {
            out.append(
                "  \(r.model) \(r.ranks) rank(s) x \(r.threads) thread(s), \(r.batchPerRank) patch(es) per rank: \(fmt(r.stepSeconds, 3)) s (compute \(fmt(r.computeSeconds, 3)), all-reduce \(fmt(r.allReduceSeconds, 4)))\(r.extrapolated ? ", extrapolated" : "")"
            )
        }
        return out.joined(separator: "\n")
    }

    /// `--table`: the soonest layout and its wall time for every node count and network, as Markdown; the first
    /// row is the calibration machine itself (one node of the profile's CPUs), where every thread count was timed.
    func markdownTable(_ options: AllocationOptions) throws -> String {
        let networks = options.networks
        var out = [
            "| nodes x cores | "
                + networks.map { "\(label($0)): groups x ranks x threads | wall time | core-hours" }
                .joined(separator: " | ") + " |",
            "|---|" + networks.map { _ in "---|---|---" }.joined(separator: "|") + "|",
        ]
        var rows: [(String, [Allocation])] = []
        var here = options.allocation(nodes: 1, network: networks[0])
        here.coresPerNode = profile.cpus
        here.memoryPerNodeBytes = nil
        rows.append(("1 x \(profile.cpus) (calibrated here)", networks.map { _ in here }))
        for n in options.nodeCounts {
            rows.append(("\(n) x \(options.cores)", networks.map { options.allocation(nodes: n, network: $0) }))
        }
        for (name, allocations) in rows {
            var cells: [String] = []
            for a in allocations {
                guard let p = planner(a).plan() else { throw noFit(a) }
                let l = p.layout
                cells.append(
                    "\(l.groups) x \(l.ranksPerGroup) x \(l.threadsPerRank)\(p.extrapolated ? "" : " (measured)") | \(Self.hours(p.wallSeconds)) | \(fmt(p.coreHours, 0))"
                )
            }
            out.append("| \(name) | " + cells.joined(separator: " | ") + " |")
        }
        out.append("")
        out.append(
            "Calibrated on \(profile.cpu) (\(profile.cpus) CPUs, \(profile.measuredAt)) at \(profile.patchSize), \(profile.batchPerRank) patch(es) per step, threads \(costs[0].batchFit.measuredThreads.map(String.init).joined(separator: ", ")) timed. (measured): every thread count of the layout was timed; the other rows extrapolate the Amdahl fit to more threads."
        )
        return out.joined(separator: "\n")
    }

    func label(_ network: String) -> String {
        ["25gbe": "25 Gbit/s Ethernet", "100gbe": "100 Gbit/s Ethernet", "ib100": "100 Gbit/s InfiniBand"][network]
            ?? network
    }
}
