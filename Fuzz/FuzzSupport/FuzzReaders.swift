import DataPipeline
import Foundation
import HDF5Kit
import NN
import Support
import Tensor
import Training
import Workflows

/// The readers each fuzz target drives, as attunet's commands drive them; the fuzz targets (Fuzz/<Name>) and
/// the regression tests of the inputs fuzzing found (`FuzzRegressionTests`) both call these. Every function
/// runs all of its reads, even after one fails, and then throws the first error: a damaged input must give
/// errors, never a crash.
public enum FuzzReaders {
    /// The targets by name (launch/fuzz.sh's names, and Tests/Fixtures/fuzz/<name>/), with the file suffix
    /// their input is written under.
    public static let targets: [String: (suffix: String, read: @Sendable (String) throws -> Void)] = [
        "nifti": (".nii", { try nifti($0) }), "casestore": (".h5", { try caseStore($0) }),
        "checkpoint": (".h5", { try checkpoint($0) }), "safetensors": (".safetensors", { try safetensors($0) }),
        "splits": (".json", { try splits($0) }), "config": (".json", { try config($0) }),
    ]

    /// Writes an input to a file with the target's suffix (`.nii.gz` for gzip data of the NIfTI target) and
    /// runs the target's reads on it: what a regression test of an input fuzzing found calls.
    public static func read(_ target: String, _ data: UnsafePointer<UInt8>, _ size: Int) throws {
        guard let t = targets[target] else { preconditionFailure("no fuzz target \(target)") }
        let gzip = size >= 2 && data[0] == 0x1F && data[1] == 0x8B
        try t.read(FuzzFile.write(data, size, suffix: target == "nifti" && gzip ? ".nii.gz" : t.suffix))
    }

    /// ``read(_:_:_:)``, its errors ignored: the body of every fuzz target.
    public static func fuzz(_ target: String, _ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
        try? read(target, data, size)
        return 0
    }

    /// Runs every body, then throws the first error any of them threw.
    static func all(_ bodies: [() throws -> Void]) throws {
        var first: Error?
        for body in bodies {
            do { try body() } catch { first = first ?? error }
        }
        if let first { throw first }
    }

    /// The NIfTI reader: the header alone, then header and voxels (`.nii`, or `.nii.gz` when `path` says so).
    public static func nifti(_ path: String) throws {
        try all([{ _ = try NIfTIVolume.readGeometry(path) }, { _ = try NIfTIVolume.read(path) }])
    }

    /// The case-store reader: open (every attribute and case), then per case (the first four) 8³ boxes
    /// inside, across the edges of and outside its volume, and whole volumes up to 2^20 voxels.
    public static func caseStore(_ path: String) throws {
        let store = try CaseStore(path: path)
        let box = Dim3(z: 8, y: 8, x: 8)
        var image = [Float](repeating: 0, count: box.count)
        var label = [UInt8](repeating: 0, count: box.count)
        var reads: [() throws -> Void] = []
        for c in store.cases.indices.prefix(4) {
            let s = store.cases[c].shape
            for start in [
                (z: 0, y: 0, x: 0), (z: s.z / 2 - 4, y: s.y / 2 - 4, x: s.x / 2 - 4),
                (z: -3, y: s.y - 5, x: -2), (z: s.z + 1, y: 0, x: 0),
            ] {
                reads.append {
                    try image.withUnsafeMutableBufferPointer { i in
                        try label.withUnsafeMutableBufferPointer { l in
                            try store.readBox(c, start: start, size: box, image: i.baseAddress!, label: l.baseAddress!)
                        }
                    }
                }
            }
            if s.count <= 1 << 20 { reads += [{ _ = try store.image(c) }, { _ = try store.label(c) }] }
        }
        try all(reads)
    }

    /// The checkpoint reader as `predict`, `inspect` and `--resume` use it: the model built from
    /// model_config and loaded from /state_dict (checksums and weights digest verified), the optimizer and
    /// training state verified against state_sha256, and the JSON attributes decoded.
    public static func checkpoint(_ path: String) throws {
        try all([
            { _ = try Checkpoint.load(path) },
            {
                let file = try H5File.open(path)
                try all([
                    { _ = try Checkpoint.config(of: file) },
                    { try TrainingCheckpoint.verifyState(in: file) },
                    {
                        _ = try JSONFiles.decode(
                            TrainingState.self, from: try file.root.stringAttribute("training_state"))
                    },
                    { _ = try JSONFiles.decode(TrainConfig.self, from: try file.root.stringAttribute("train_config")) },
                ])
            },
        ])
    }

    /// The safetensors parser, every tensor's values (the first 64 by name), and the architecture inferred
    /// from the names and shapes as `import-weights` infers it.
    public static func safetensors(_ path: String) throws {
        let file = try SafetensorsFile(path)
        var reads: [() throws -> Void] = []
        for name in file.entries.keys.sorted().prefix(64) { reads.append { _ = try file.floats(name) } }
        reads.append {
            _ = try SegmentationModel.inferConfig(names: Set(file.entries.keys), shape: { file.entries[$0]?.shape })
        }
        try all(reads)
    }

    /// The case ids the splits target checks a splits file against: case_00 ... case_09.
    public static let splitCaseIDs = (0..<10).map { "case_0\($0)" }

    /// The splits.json reader (attunet's and nnU-Net's layouts) against a store of ``splitCaseIDs``, 2 and 5
    /// folds, k-fold and inverse, and the case → patient map of `--group-by` (JSON or CSV).
    public static func splits(_ path: String) throws {
        var reads: [() throws -> Void] = []
        for folds in [2, 5] {
            for inverse in [false, true] {
                reads.append { _ = try FoldPlan.load(path, ids: splitCaseIDs, folds: folds, inverse: inverse) }
            }
        }
        try all(reads + [{ _ = try FoldPlan.groups(from: path) }])
    }

    /// The configuration readers: a run's config.json (``TrainConfig``) and a CV folder's
    /// (``CrossValidationConfig``), each decoded and compared with itself and with a fresh configuration as a
    /// restart compares them, and a checkpoint's training state.
    public static func config(_ path: String) throws {
        guard let bytes = FileManager.default.contents(atPath: path) else { throw AttunetError("\(path): unreadable") }
        let decoder = JSONFiles.decoder()
        try all([
            {
                let c = try decoder.decode(TrainConfig.self, from: bytes)
                _ = try ConfigDifference.first(c, old: bytes)
                if let problem = c.model.problem { throw AttunetError("\(path): \(problem)") }
            },
            { _ = try decoder.decode(CrossValidationConfig.self, from: bytes).difference(from: bytes) },
            { _ = try decoder.decode(TrainingState.self, from: bytes) },
            {
                _ = try ConfigDifference.first(
                    TrainConfig(store: "store.h5"), old: bytes, ignoring: ["epochs", "store"])
            },
        ])
    }
}
