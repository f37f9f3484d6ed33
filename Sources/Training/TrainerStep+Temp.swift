// TEMPORARY, tests branch only: a stand-in for the step API that Sources/Training/Trainer.swift gains on main
// (`StepTimes`, `StepResult`, `Trainer.step(_:)`), so that Tests/TrainingTests/TrainerStepTests.swift builds and
// runs here. Built from the body of `Trainer.run`. Drop this file (its commit starts with "TEMP:") at the merge.
import Data
import Foundation

/// Seconds spent in each phase of one optimizer step.
public struct StepTimes: Sendable, Equatable {
    public var forward = 0.0, loss = 0.0, backward = 0.0, allReduce = 0.0, update = 0.0
    public var total: Double { forward + loss + backward + allReduce + update }
}

/// What one optimizer step did.
public struct StepResult: Sendable {
    /// The loss averaged over ranks (each rank's loss on its share of the batch).
    public var loss: Double
    /// Some rank received SIGTERM/SIGUSR1 during the step.
    public var stopRequested: Bool
    public var times: StepTimes
}

extension Trainer {
    /// One optimizer step on this rank's share of the global batch: zero the gradients, forward, loss,
    /// backward, gradient all-reduce, optimizer update, at `optimizer.learningRate`.
    /// Throws (exit status 3 error) when the loss is NaN/Inf on any rank, before the update.
    public func step(_ batch: PatchBatch) throws -> StepResult {
        var times = StepTimes()
        var mark = Date()
        func lap() -> Double {
            let now = Date()
            defer { mark = now }
            return now.timeIntervalSince(mark)
        }
        model.params.zeroGrads()
        let logits = try model.forward(batch.image)
        times.forward = lap()
        let value = batch.label.withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0) }
        times.loss = lap()
        model.backward(loss.gradient)
        times.backward = lap()
        try averageGradients()
        // One small all-reduce carries the loss and the stop/NaN flags of every rank. (The stop flag is private
        // to Trainer.swift; this stand-in never reports a stop.)
        var flags = [value.isFinite ? value : 0, value.isFinite ? 0 : 1, 0]
        try flags.withUnsafeMutableBufferPointer { try comm.allReduceSum($0) }
        times.allReduce = lap()
        if flags[1] > 0 {
            throw TrainError("loss is NaN/Inf; lower --lr or check the data", exitCode: TrainExit.nonFiniteLoss)
        }
        optimizer.update(params: model.params.values, grads: model.params.grads)
        times.update = lap()
        return StepResult(loss: flags[0] / Double(comm.size), stopRequested: flags[2] > 0, times: times)
    }
}
