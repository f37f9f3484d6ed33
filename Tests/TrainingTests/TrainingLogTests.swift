import Foundation
import Support
import XCTest

@testable import Training

#if canImport(FoundationXML)
    import FoundationXML
#endif

final class TrainingLogTests: XCTestCase {
    let classes = ["spleen", "pancreas", "kidney"]

    private func tempDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("attunet-traininglog-\(UUID().uuidString)", isDirectory: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }

    /// Records whose values are exact at the CSV's precision, some without validation, decaying lr.
    private func sampleRecords(_ n: Int) -> [EpochRecord] {
        (0..<n).map { e in
            let validated = e % 2 == 1 || e == n - 1
            let dice = validated ? [0.5 + 0.01 * Double(e), 0.25 + 0.02 * Double(e), 0.125] : []
            var r = EpochRecord(
                epoch: e, step: 100 * (e + 1), trainLoss: Double(String(format: "%.7f", 1.5 / Double(e + 1) + 0.0625))!,
                learningRate: 1e-3 * pow(0.5, Double(e)), validationDice: dice.map { ($0 * 1e4).rounded() / 1e4 },
                seconds: 12.5 + Double(e), patchesPerSecond: 3.25)
            r.validationLoss = validated ? 0.375 - 0.001 * Double(e) : nil
            r.epochWallSeconds = 14.25 + Double(e)
            r.timeUTC = EpochRecord.utcStamp(Date(timeIntervalSince1970: 1_796_000_000 + 60 * Double(e)))
            return r
        }
    }

    /// Applies the CSV's documented precision, so that expected values compare exactly.
    private func quantized(_ r: EpochRecord) -> EpochRecord {
        func q(_ x: Double, _ spec: String) -> Double { Double(String(format: spec, x))! }
        var out = EpochRecord(
            epoch: r.epoch, step: r.step, trainLoss: q(r.trainLoss, "%.9g"),
            learningRate: q(r.learningRate, "%.6g"), validationDice: r.validationDice.map { q($0, "%.4f") },
            seconds: q(r.seconds, "%.3f"), patchesPerSecond: q(r.patchesPerSecond, "%.2f"))
        out.validationLoss = r.validationLoss.map { q($0, "%.9g") }
        out.epochWallSeconds = r.epochWallSeconds.map { q($0, "%.3f") }
        out.timeUTC = r.timeUTC
        return out
    }

    func testUTCStamp() {
        XCTAssertEqual(EpochRecord.utcStamp(Date(timeIntervalSince1970: 0)), "1970-01-01T00:00:00Z")
        XCTAssertEqual(EpochRecord.utcStamp(Date(timeIntervalSince1970: 1_796_000_059.9)), "2026-11-30T00:54:19Z")
    }

    /// A log written before the val_loss, epoch_wall_s and time_utc columns still loads (for --resume), and the
    /// next append writes the new header with empty cells for the old rows.
    func testLogWithoutTheLaterColumnsLoads() throws {
        let dir = try tempDirectory()
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try "epoch,step,train_loss,lr,dice_x,mean_dice,seconds,patches_per_s\n0,10,0.5,0.001,0.7500,0.7500,2.000,4.00\n"
            .write(to: dir.appendingPathComponent("log.csv"), atomically: true, encoding: .utf8)
        let log = TrainingLog(directory: dir, classNames: ["x"])
        try log.load(keepBefore: Int.max)
        XCTAssertEqual(log.records.count, 1)
        XCTAssertNil(log.records[0].validationLoss)
        XCTAssertNil(log.records[0].epochWallSeconds)
        XCTAssertNil(log.records[0].timeUTC)
        var next = log.records[0]
        next.epoch = 1
        next.validationLoss = 0.25
        next.epochWallSeconds = 3
        next.timeUTC = "2026-12-07T09:30:12Z"
        log.writesTensorBoard = false
        try log.append(next)
        let lines = try String(contentsOf: log.csvURL, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines[1], "0,10,0.5,0.001,0.7500,0.7500,2.000,4.00,,,")
        XCTAssertEqual(lines[2], "1,10,0.5,0.001,0.7500,0.7500,2.000,4.00,0.25,3.000,2026-12-07T09:30:12Z")
    }

    /// The record a checkpoint stores (`metrics`) reads back whole from its snake_case JSON, times included.
    func testRecordJSONRoundTrip() throws {
        let r = sampleRecords(3)[1]
        let json = try JSONFiles.string(r)
        XCTAssertTrue(json.contains("\"time_utc\""), json)
        XCTAssertTrue(json.contains("\"epoch_wall_seconds\""), json)
        XCTAssertTrue(json.contains("\"validation_loss\""), json)
        XCTAssertEqual(try JSONFiles.decode(EpochRecord.self, from: json), r)
    }

    func testMeanDice() {
        var r = EpochRecord(
            epoch: 0, step: 1, trainLoss: 1, learningRate: 1e-3, validationDice: [],
            seconds: 1, patchesPerSecond: 1)
        XCTAssertNil(r.meanDice)
        r.validationDice = [0.5, 0.75, 1.0]
        XCTAssertEqual(r.meanDice!, 0.75, accuracy: 1e-15)
    }

    func testCSVRoundTripAndKeepBefore() throws {
        let dir = try tempDirectory()
        let log = TrainingLog(directory: dir, classNames: classes)
        let records = sampleRecords(7)
        for r in records { try log.append(r) }
        XCTAssertEqual(log.records, records)

        let csv = try String(contentsOf: dir.appendingPathComponent("log.csv"), encoding: .utf8)
        let lines = csv.split(separator: "\n").map(String.init)
        XCTAssertEqual(
            lines.first,
            "epoch,step,train_loss,lr,dice_spleen,dice_pancreas,dice_kidney,mean_dice,seconds,patches_per_s,val_loss,epoch_wall_s,time_utc"
        )
        XCTAssertTrue(lines[1].hasSuffix(",,14.250,2026-11-30T00:53:20Z"), lines[1])  // no validation: no val_loss
        XCTAssertEqual(lines.count, 8)
        // Epoch 0 ran no validation: four empty Dice cells (three classes + mean).
        XCTAssertTrue(lines[1].contains(",,,,"), lines[1])
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir.appendingPathComponent("progress.svg").path))
        // No temp files left behind.
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".tmp") }
        XCTAssertEqual(leftovers, [])

        let all = TrainingLog(directory: dir, classNames: classes)
        try all.load(keepBefore: Int.max)
        XCTAssertEqual(all.records, records.map(quantized))
        XCTAssertEqual(all.records, records)  // sample values are exact at the CSV's precision

        let resumed = TrainingLog(directory: dir, classNames: classes)
        try resumed.load(keepBefore: 4)
        XCTAssertEqual(resumed.records, Array(records.prefix(4)))
        // A resumed run rewrites the dropped epochs.
        try resumed.append(records[4])
        let again = TrainingLog(directory: dir, classNames: classes)
        try again.load(keepBefore: 100)
        XCTAssertEqual(again.records, Array(records.prefix(5)))
    }

    func testFloatLossIsExactAsFloatAndNaNSurvives() throws {
        let dir = try tempDirectory()
        let log = TrainingLog(directory: dir, classNames: ["a", "b"])
        let loss = Double(Float(0.3141592))
        try log.append(
            EpochRecord(
                epoch: 0, step: 10, trainLoss: loss, learningRate: 3.3e-5,
                validationDice: [.nan, 0.9], seconds: 1, patchesPerSecond: 2))
        let back = TrainingLog(directory: dir, classNames: ["a", "b"])
        try back.load(keepBefore: 1)
        XCTAssertEqual(back.records.count, 1)
        XCTAssertEqual(Float(back.records[0].trainLoss), Float(loss))
        XCTAssertEqual(back.records[0].learningRate, 3.3e-5)
        XCTAssertTrue(back.records[0].validationDice[0].isNaN)
        XCTAssertEqual(back.records[0].validationDice[1], 0.9)
    }

    func testLoadToleratesMissingFileAndRejectsMismatches() throws {
        let dir = try tempDirectory()
        let log = TrainingLog(directory: dir, classNames: classes)
        try log.load(keepBefore: 3)
        XCTAssertEqual(log.records, [])

        // Wrong number of Dice values in a record.
        XCTAssertThrowsError(
            try log.append(
                EpochRecord(
                    epoch: 0, step: 1, trainLoss: 1, learningRate: 1,
                    validationDice: [0.5], seconds: 1, patchesPerSecond: 1)))
        XCTAssertEqual(log.records, [])

        try log.append(sampleRecords(1)[0])
        // Different class count on resume.
        XCTAssertThrowsError(try TrainingLog(directory: dir, classNames: ["spleen"]).load(keepBefore: 10))
        // Garbage row.
        try "epoch,step,train_loss,lr,dice_x,mean_dice,seconds,patches_per_s\n0,1,abc,1e-3,,,1,1\n"
            .write(to: dir.appendingPathComponent("log.csv"), atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try TrainingLog(directory: dir, classNames: ["x"]).load(keepBefore: 10))
    }

    // MARK: SVG

    /// Parses `svg` as XML and returns the number of elements named `name`.
    private func count(_ name: String, in svg: String, file: StaticString = #filePath, line: UInt = #line) throws -> Int
    {
        #if canImport(FoundationXML) || os(macOS)
            let doc = try XMLDocument(xmlString: svg, options: [])
            XCTAssertEqual(doc.rootElement()?.name, "svg", file: file, line: line)
            func walk(_ node: XMLNode) -> Int {
                (node.kind == .element && (node.localName ?? node.name) == name ? 1 : 0)
                    + (node.children ?? []).reduce(0) { $0 + walk($1) }
            }
            return walk(doc.rootElement()!)
        #else
            XCTAssertTrue(Self.wellFormed(svg), "SVG is not well-formed", file: file, line: line)
            return svg.components(separatedBy: "<\(name) ").count - 1
        #endif
    }

    /// Minimal well-formedness check (balanced tags) for platforms without XMLDocument.
    static func wellFormed(_ s: String) -> Bool {
        var stack: [String] = []
        var rest = Substring(s)
        while let open = rest.firstIndex(of: "<") {
            guard let close = rest[open...].firstIndex(of: ">") else { return false }
            let tag = rest[rest.index(after: open)..<close]
            rest = rest[rest.index(after: close)...]
            if tag.hasPrefix("?") || tag.hasPrefix("!") || tag.hasSuffix("/") { continue }
            let name = String(tag.split(separator: " ").first ?? "")
            if name.hasPrefix("/") {
                guard stack.popLast() == String(name.dropFirst()) else { return false }
            } else {
                stack.append(name)
            }
        }
        return stack.isEmpty
    }

    func testSVGHasOnePolylinePerSeries() throws {
        let dir = try tempDirectory()
        let log = TrainingLog(directory: dir, classNames: classes + ["a & <b>"])
        // Zero records.
        XCTAssertEqual(try count("polyline", in: log.svg()), classes.count + 1 + 1 + 1 + 1)
        // One record, without and with validation.
        try log.append(
            EpochRecord(
                epoch: 0, step: 5, trainLoss: 0.9, learningRate: 1e-3, validationDice: [],
                seconds: 2, patchesPerSecond: 1))
        XCTAssertEqual(try count("polyline", in: log.svg()), classes.count + 1 + 1 + 1 + 1)
        let dir2 = try tempDirectory()
        let one = TrainingLog(directory: dir2, classNames: classes)
        try one.append(
            EpochRecord(
                epoch: 0, step: 5, trainLoss: 0.9, learningRate: 1e-3,
                validationDice: [0.1, 0.2, 0.3], seconds: 2, patchesPerSecond: 1))
        XCTAssertEqual(try count("polyline", in: one.svg()), classes.count + 1 + 1 + 1)
        // Many records with NaNs and a wide lr range (log scale).
        var records = sampleRecords(60)
        records[10].trainLoss = .nan
        records[11].validationDice = [.nan, 0.5, .infinity]
        records[12].learningRate = .nan
        records[13].learningRate = 0
        let many = TrainingLog(directory: try tempDirectory(), classNames: classes)
        for r in records { try many.append(r) }
        let svg = many.svg()
        XCTAssertEqual(try count("polyline", in: svg), classes.count + 1 + 1 + 1)
        XCTAssertFalse(svg.lowercased().contains("nan"))
        XCTAssertFalse(svg.contains("inf"))
        XCTAssertTrue(svg.contains("log scale"))
        XCTAssertTrue(svg.contains(">spleen"))
        XCTAssertFalse(svg.contains("href"))  // self-contained
        let onDisk = try String(contentsOf: many.svgURL, encoding: .utf8)
        XCTAssertEqual(onDisk, svg)
    }

    func testWellFormedHelper() {
        XCTAssertTrue(Self.wellFormed("<?xml version=\"1.0\"?><a><b x=\"1\"/><c></c></a>"))
        XCTAssertFalse(Self.wellFormed("<a><b></a>"))
    }
}
