import Collectives
import Foundation
import NN
import Support
import Tensor
import Training

/// What the planner measured on one machine (`attunet plan --calibrate --out profile.json`): for every model,
/// whole training steps of one rank (`TrainingBench`, as `attunet bench train` times them) and evaluation-mode
/// forward passes of one patch at several thread counts, and the rank's memory. A profile made on a compute
/// node plans on a login node (`attunet plan --profile profile.json`). Written as snake_case JSON.
public struct CalibrationProfile: Codable, Sendable, Equatable {
    /// One thread count's measurements (seconds).
    public struct Point: Codable, Sendable, Equatable {
        public var threads: Int
        /// The median training step; its forward, loss and backward (which grow with the patches); the rest
        /// (optimizer, data wait, glue); one evaluation-mode forward pass of one patch (a sliding-window tile).
        public var stepSeconds: Double, batchSeconds: Double, fixedSeconds: Double, tileSeconds: Double
    }
    public struct Model: Codable, Sendable, Equatable {
        public var model: String, featureScale: Double, classes: Int, parameters: Int
        public var points: [Point]
        /// Resident before the first step, and the peak during the timed training steps (bytes).
        public var residentBeforeStepsBytes: Int, peakResidentBytes: Int
    }
    public var cpu: String
    /// The CPUs this process could run on while measuring.
    public var cpus: Int
    /// When it was measured (ISO 8601).
    public var measuredAt: String
    /// X, Y, Z of the timed patches, and the patches of one timed step.
    public var patch: [Int]
    public var batchPerRank: Int
    public var warmupSteps: Int, timedSteps: Int
    public var models: [Model]

    public var patchSize: Dim3 { Dim3(z: patch[2], y: patch[1], x: patch[0]) }

    /// Times every model of `models` on the cases of `store` at `patch` with `batch` patches per step on one
    /// rank (`comm` of size 1), at each of `threads`: `warmup` untimed and `steps` timed training steps, then as
    /// many evaluation-mode forward passes of one patch. `progress` gets a line before each run.
    public static func measure(
        store: String, models: [ModelConfig], patch: Dim3, batch: Int, threads: [Int], warmup: Int, steps: Int,
        comm: Communicator, progress: (String) -> Void = { _ in }
    ) throws -> CalibrationProfile {
        guard comm.size == 1 else {
            throw AttunetError(
                "calibration times one rank: run it as one process (not under mpirun with \(comm.size) ranks)")
        }
        let saved = Parallelism.threads
        defer { Parallelism.threads = saved }
        var measured: [Model] = []
        for config in models {
            let bench = try TrainingBench(store: store, model: config, patch: patch, batch: batch, comm: comm)
            var points: [Point] = []
            var before = 0
            var peak = 0
            for t in threads {
                Parallelism.threads = t
                progress(
                    "calibrating \(config.kind.rawValue): \(t) thread(s), patch \(patch), batch \(batch): \(warmup) warm-up + \(steps) timed training steps, then \(steps) forward passes of one patch ..."
                )
                let train = try bench.run(warmup: warmup, steps: steps, threads: t)
                let infer = try bench.run(warmup: 1, steps: steps, threads: t, inference: true)
                let p = train.phases
                let proportional = p.forward + p.loss + p.backward
                points.append(
                    Point(
                        threads: t, stepSeconds: train.stepSeconds.median, batchSeconds: proportional,
                        fixedSeconds: max(0, train.stepSeconds.median - proportional - p.allReduce),
                        tileSeconds: infer.phases.forward))
                if before == 0 { before = train.residentBeforeStepsBytes[0] }
                peak = max(peak, train.peakResidentBytes[0])
            }
            measured.append(
                Model(
                    model: config.kind.rawValue, featureScale: config.featureScale, classes: config.classes,
                    parameters: bench.trainer.model.parameterCount, points: points,
                    residentBeforeStepsBytes: before, peakResidentBytes: peak))
        }
        let iso = ISO8601DateFormatter()
        return CalibrationProfile(
            cpu: CPUInfo.current.modelName, cpus: CPUAllocation.affinity().count, measuredAt: iso.string(from: Date()),
            patch: [patch.x, patch.y, patch.z], batchPerRank: batch, warmupSteps: warmup, timedSteps: steps,
            models: measured)
    }

    /// Reads a profile file; errors name the file and the problem.
    public static func read(_ path: String) throws -> CalibrationProfile {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw AttunetError("\(path): no such file (make one with attunet plan --calibrate --out \(path))")
        }
        let profile: CalibrationProfile
        do {
            profile = try JSONFiles.decode(CalibrationProfile.self, from: data)
        } catch {
            throw AttunetError(
                "\(path): not a calibration profile of attunet plan --calibrate (\(Self.describe(error)))")
        }
        guard profile.patch.count == 3, profile.patch.allSatisfy({ $0 >= 1 }), profile.batchPerRank >= 1,
            !profile.models.isEmpty,
            profile.models.allSatisfy({ m in
                !m.points.isEmpty
                    && m.points.allSatisfy {
                        $0.threads >= 1 && $0.stepSeconds > 0 && $0.batchSeconds > 0 && $0.fixedSeconds >= 0
                            && $0.tileSeconds > 0
                    }
            })
        else {
            throw AttunetError(
                "\(path): a calibration profile needs a patch of 3 sizes, a batch, and for every model positive times at one or more thread counts"
            )
        }
        return profile
    }

    /// A decoding error in a user's words: the key at fault, snake_case as the file spells it.
    static func describe(_ error: Error) -> String {
        func key(_ path: [CodingKey]) -> String {
            path.map { $0.intValue.map { "[\($0)]" } ?? JSONFiles.snakeCase($0.stringValue) }.joined(separator: ".")
        }
        switch error {
        case DecodingError.keyNotFound(let k, let c): return "no key \(key(c.codingPath + [k]))"
        case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c):
            return "key \(key(c.codingPath)) has the wrong type"
        case DecodingError.dataCorrupted(let c) where c.codingPath.isEmpty: return "not JSON"
        case DecodingError.dataCorrupted(let c): return "key \(key(c.codingPath)): \(c.debugDescription)"
        default: return "\(error)"
        }
    }

    /// The file's content (`JSONFiles`).
    public func json() throws -> Data { try JSONFiles.data(self) }

    /// The planner's cost model of `model` (its kind's name and feature scale must have been measured) for an
    /// experiment at `patch`: times fitted over threads (``AmdahlFit``), per-patch parts scaled by voxels.
    /// `source` names the profile in errors.
    public func costModel(model: ModelConfig, patch: Dim3, source: String) throws -> ModelCostModel {
        guard
            let m = models.first(where: {
                $0.model == model.kind.rawValue && $0.featureScale == model.featureScale
            })
        else {
            let has = models.map { "\($0.model) (feature scale \(fmtShort($0.featureScale)))" }.joined(separator: ", ")
            throw AttunetError(
                "\(source): no calibration of \(model.kind.rawValue) at feature scale \(fmtShort(model.featureScale)) (it has \(has)); calibrate with the experiment's --models and --feature-scale"
            )
        }
        return ModelCostModel(
            model: m.model, parameters: m.parameters, calibrationBatch: batchPerRank,
            voxelScale: Double(patch.count) / Double(patchSize.count),
            batchFit: AmdahlFit(m.points.map { ($0.threads, $0.batchSeconds) }),
            fixedFit: AmdahlFit(m.points.map { ($0.threads, $0.fixedSeconds) }),
            tileFit: AmdahlFit(m.points.map { ($0.threads, $0.tileSeconds) }),
            residentBeforeBytes: Double(m.residentBeforeStepsBytes), peakBytes: Double(m.peakResidentBytes))
    }
}
