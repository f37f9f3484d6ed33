import Foundation
import Support

// MARK: - EpochRecord

/// One row of the training log (one per epoch).
public struct EpochRecord: Codable, Sendable, Equatable {
    /// 0-based epoch index.
    public var epoch: Int
    /// Global optimizer steps done at the end of the epoch.
    public var step: Int
    /// Mean training loss over the epoch.
    public var trainLoss: Double
    /// Learning rate in effect at the end of the epoch.
    public var learningRate: Double
    /// Validation Dice per foreground class, in class order; empty when validation did not run this epoch.
    public var validationDice: [Double]
    /// Wall time of the epoch, in seconds.
    public var seconds: Double
    /// Training throughput over the epoch (patches per second, all ranks together).
    public var patchesPerSecond: Double
    /// The mean seconds of a step's phases on rank 0 over the epoch (nil: not measured). Not in `log.csv`;
    /// written to the TensorBoard events.
    public var phases: StepTimes?
    /// The validation loss: the training loss on the whole validation cases (their blended probabilities), mean
    /// over the cases; nil in epochs without validation.
    public var validationLoss: Double?
    /// Seconds from the epoch's first step to the end of its validation and checkpoint writing; nil in logs
    /// written before this column existed.
    public var epochWallSeconds: Double?
    /// When the epoch ended (validation and checkpoints included), UTC, ISO 8601 to the second
    /// (`2026-12-07T09:30:12Z`); nil in logs written before this column existed.
    public var timeUTC: String?

    /// Memberwise initializer.
    public init(
        epoch: Int, step: Int, trainLoss: Double, learningRate: Double,
        validationDice: [Double], seconds: Double, patchesPerSecond: Double
    ) {
        self.epoch = epoch
        self.step = step
        self.trainLoss = trainLoss
        self.learningRate = learningRate
        self.validationDice = validationDice
        self.seconds = seconds
        self.patchesPerSecond = patchesPerSecond
    }

    // `timeUtc` spells the key so that the snake_case JSON files (`time_utc`) read back into `timeUTC`.
    enum CodingKeys: String, CodingKey {
        case epoch, step, trainLoss, learningRate, validationDice, seconds, patchesPerSecond, phases
        case validationLoss, epochWallSeconds
        case timeUTC = "timeUtc"
    }

    /// `date` as `timeUTC` writes it: ISO 8601, UTC, to the second.
    public static func utcStamp(_ date: Date = Date()) -> String {
        var t = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&t, &parts)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1,
            Int(parts.tm_mday), Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec))
    }

    /// Mean of `validationDice`; `nil` when validation did not run this epoch (NaN entries make it NaN).
    public var meanDice: Double? {
        validationDice.isEmpty ? nil : validationDice.reduce(0, +) / Double(validationDice.count)
    }
}

// MARK: - TrainingLog

/// The training log of a run: one `EpochRecord` per epoch, persisted as `directory/log.csv` and rendered as
/// `directory/progress.svg` after every append.
///
/// CSV columns: `epoch,step,train_loss,lr,dice_<name>...,mean_dice,seconds,patches_per_s,val_loss,epoch_wall_s,
/// time_utc`. Numbers are written with `%.9g` for the losses (exact for any `Float` value), `%.6g` for the
/// learning rate, `%.4f` for Dice, `%.3f` for seconds and `%.2f` for patches/s; `load` reads them back as
/// written. Dice cells (with `mean_dice`) and `val_loss` are empty in epochs without validation; non-finite
/// values are written as `nan`, `inf`, `-inf`. The last three columns came later: `load` reads logs without
/// them (their cells stay empty).
public final class TrainingLog {
    /// The directory holding `log.csv` and `progress.svg`.
    public let directory: URL
    /// Foreground class names, in class order.
    public let classNames: [String]
    /// The rows so far, in append order.
    public private(set) var records: [EpochRecord] = []

    /// `directory/log.csv`.
    public var csvURL: URL { RunFolder(directory).log }
    /// `directory/progress.svg`.
    public var svgURL: URL { RunFolder(directory).progress }
    /// Write every appended record to TensorBoard event files in `directory/tensorboard` as well.
    public var writesTensorBoard = true
    private var events: TensorBoardEvents?
    /// The global step a resumed run continues from (``load(keepBefore:)``): the events an earlier process
    /// wrote from there on are marked for TensorBoard to drop.
    private var resumedAfterStep: Int?

    /// classNames: foreground class names in order (e.g. ["spleen", "pancreas", "kidney"]).
    /// Nothing is read or written until `load` or `append`; the directory is created on the first append.
    public init(directory: URL, classNames: [String]) {
        self.directory = directory
        self.classNames = classNames
    }

    // MARK: CSV

    /// The CSV header line (without newline). Class names are sanitized so that they cannot break the CSV.
    public var csvHeader: String {
        (["epoch", "step", "train_loss", "lr"] + classNames.map { "dice_" + Self.sanitize($0) }
            + ["mean_dice", "seconds", "patches_per_s", "val_loss", "epoch_wall_s", "time_utc"]).joined(separator: ",")
    }

    /// Loads existing rows from directory/log.csv (for --resume), tolerating a missing file; rows with
    /// epoch >= keepBefore are dropped (a resumed run rewrites them). Replaces `records`; writes nothing.
    /// Throws an error naming the file and line for unreadable content, and when the file has
    /// a different number of Dice columns than `classNames`.
    public func load(keepBefore epoch: Int) throws {
        defer { resumedAfterStep = records.last?.step ?? 0 }
        let url = csvURL
        guard FileManager.default.fileExists(atPath: url.path) else {
            records = []
            return
        }
        let text: String
        do {
            text = try String(contentsOf: url, encoding: .utf8)
        } catch {
            throw AttunetError("\(url.path): cannot read the training log: \(error)")
        }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.hasSuffix("\r") ? String($0.dropLast()) : String($0) }
        let file = url.lastPathComponent
        guard let headerIndex = lines.firstIndex(where: { !$0.trimmingCharacters(in: .whitespaces).isEmpty }) else {
            records = []  // empty file: as if missing
            return
        }
        let header = lines[headerIndex].split(separator: ",", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        func column(_ name: String) throws -> Int {
            guard let i = header.firstIndex(of: name) else {
                throw AttunetError("\(file):\(headerIndex + 1): malformed training log: no '\(name)' column")
            }
            return i
        }
        let cEpoch = try column("epoch")
        let cStep = try column("step")
        let cLoss = try column("train_loss")
        let cLR = try column("lr")
        let cSeconds = try column("seconds")
        let cRate = try column("patches_per_s")
        let cDice = header.indices.filter { header[$0].hasPrefix("dice_") }
        // Columns added later: absent in older logs.
        let cValLoss = header.firstIndex(of: "val_loss")
        let cWall = header.firstIndex(of: "epoch_wall_s")
        let cTime = header.firstIndex(of: "time_utc")
        guard cDice.count == classNames.count else {
            throw AttunetError(
                "\(url.path): the training log has \(cDice.count) Dice column(s), this run has \(classNames.count) foreground classes"
            )
        }

        var loaded: [EpochRecord] = []
        for lineIndex in lines.indices where lineIndex > headerIndex {
            let line = lines[lineIndex]
            if line.trimmingCharacters(in: .whitespaces).isEmpty { continue }
            let cells = line.split(separator: ",", omittingEmptySubsequences: false)
                .map { $0.trimmingCharacters(in: .whitespaces) }
            func bad(_ reason: String) -> AttunetError {
                AttunetError("\(file):\(lineIndex + 1): malformed training log: \(reason)")
            }
            guard cells.count == header.count else {
                throw bad("\(cells.count) cells, header has \(header.count)")
            }
            func int(_ c: Int) throws -> Int {
                guard let v = Int(cells[c]) else { throw bad("'\(header[c])' is not an integer: '\(cells[c])'") }
                return v
            }
            func double(_ c: Int) throws -> Double {
                guard let v = Double(cells[c]) else { throw bad("'\(header[c])' is not a number: '\(cells[c])'") }
                return v
            }
            var dice: [Double] = []
            if cDice.contains(where: { !cells[$0].isEmpty }) {
                dice = try cDice.map { cells[$0].isEmpty ? .nan : try double($0) }
            }
            func optional(_ c: Int?) throws -> Double? {
                guard let c, !cells[c].isEmpty else { return nil }
                return try double(c)
            }
            var record = EpochRecord(
                epoch: try int(cEpoch), step: try int(cStep), trainLoss: try double(cLoss),
                learningRate: try double(cLR), validationDice: dice,
                seconds: try double(cSeconds), patchesPerSecond: try double(cRate))
            record.validationLoss = try optional(cValLoss)
            record.epochWallSeconds = try optional(cWall)
            if let c = cTime, !cells[c].isEmpty { record.timeUTC = cells[c] }
            if record.epoch < epoch { loaded.append(record) }
        }
        records = loaded
    }

    /// Appends a record, rewrites log.csv (header: ``csvHeader``) atomically (temp file + rename) and rewrites progress.svg (also atomically).
    /// Throws `.classCountMismatch` (and appends nothing) when `r.validationDice` is neither empty nor one
    /// value per class.
    public func append(_ r: EpochRecord) throws {
        guard r.validationDice.isEmpty || r.validationDice.count == classNames.count else {
            throw AttunetError(
                "training log: the record for epoch \(r.epoch) has \(r.validationDice.count) Dice value(s), expected \(classNames.count) (one per foreground class)"
            )
        }
        records.append(r)
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw AttunetError("\(directory.path): cannot create the run folder: \(error)")
        }
        try AtomicFile.write(csv(), to: csvURL.path)
        try AtomicFile.write(svg(), to: svgURL.path)
        if writesTensorBoard { try writeEvents(r) }
    }

    /// The record's scalars at its global step: training loss, learning rate, throughput, epoch time, the
    /// step phases and, when validated, the Dice per class and their mean.
    func writeEvents(_ r: EpochRecord) throws {
        if events == nil {
            let e = try TensorBoardEvents(directory: RunFolder(directory).tensorBoard.path)
            // A fresh run starts at 0 (events of an earlier run in this folder are dropped), a resumed one after
            // its last kept epoch.
            try e.start(step: (resumedAfterStep ?? -1) + 1)
            events = e
        }
        var values: [(tag: String, value: Double)] = [
            ("train/loss", r.trainLoss), ("train/learning_rate", r.learningRate),
            ("train/patches_per_s", r.patchesPerSecond), ("time/epoch_s", r.seconds),
        ]
        if let wall = r.epochWallSeconds { values.append(("time/epoch_wall_s", wall)) }
        if let p = r.phases {
            values += [
                ("time/step_forward_s", p.forward), ("time/step_loss_s", p.loss), ("time/step_backward_s", p.backward),
                ("time/step_allreduce_s", p.allReduce), ("time/step_update_s", p.update),
            ]
        }
        if let mean = r.meanDice {
            values += zip(classNames, r.validationDice).map { ("validation/dice_\(Self.sanitize($0))", $1) }
            values.append(("validation/mean_dice", mean))
        }
        if let loss = r.validationLoss { values.append(("validation/loss", loss)) }
        try events!.scalars(values, step: r.step)
    }

    /// The CSV document (header plus one line per record) for the current records.
    public func csv() -> String {
        var out = csvHeader + "\n"
        for r in records {
            var cells = [
                String(r.epoch), String(r.step), Self.format(r.trainLoss, "%.9g"),
                Self.format(r.learningRate, "%.6g"),
            ]
            if r.validationDice.isEmpty {
                cells += Array(repeating: "", count: classNames.count + 1)
            } else {
                cells += r.validationDice.map { Self.format($0, "%.4f") }
                cells.append(Self.format(r.meanDice ?? .nan, "%.4f"))
            }
            cells += [Self.format(r.seconds, "%.3f"), Self.format(r.patchesPerSecond, "%.2f")]
            cells += [
                r.validationLoss.map { Self.format($0, "%.9g") } ?? "",
                r.epochWallSeconds.map { Self.format($0, "%.3f") } ?? "", r.timeUTC ?? "",
            ]
            out += cells.joined(separator: ",") + "\n"
        }
        return out
    }

    /// `progress.svg` for the current records.
    public func svg() -> String { ProgressChart.svg(records: records, classNames: classNames) }

    // MARK: Helpers

    static func format(_ x: Double, _ spec: String) -> String {
        if x.isNaN { return "nan" }
        if x.isInfinite { return x > 0 ? "inf" : "-inf" }
        return String(format: spec, x)
    }

    /// Keeps `[A-Za-z0-9_.-]`, replaces anything else by `_`.
    static func sanitize(_ name: String) -> String {
        let s = String(
            name.unicodeScalars.map { c -> Character in
                let ok =
                    (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9")
                    || c == "_" || c == "-" || c == "."
                return ok ? Character(c) : "_"
            })
        return s.isEmpty ? "_" : s
    }
}
