import Foundation
import Support
import Tensor

/// One batch for one rank.
public struct PatchBatch: @unchecked Sendable {
    /// `[B, 1, Z, Y, X]`, normalised (and augmented).
    public var image: Tensor
    /// `B * Z * Y * X` class indices, same layout as `image` without the channel axis.
    public var label: [UInt8]
    /// The store case index and global sample index of each item.
    public var cases: [Int]
    public var samples: [Int]
    public var step: Int
    /// Seconds spent preparing this batch (on the loader thread).
    public var loadSeconds: Double
}

/// Draws training patches from a `CaseStore`: a global, seeded order of samples per epoch, sharded by rank
/// (rank r of p takes global samples r, r + p, ...), foreground oversampling, augmentation seeded from
/// (seed, epoch, global sample index), normalisation, and a background thread that prepares the next batches
/// while the caller trains on the current one.
///
///     let loader = try PatchLoader(store: store, cases: trainIDs, patch: Dim3(z: 96, y: 160, x: 160), batch: 2,
///                                  rank: comm.rank, worldSize: comm.size, seed: 1)
///     for epoch in 0..<epochs {
///         loader.startEpoch(epoch)
///         while let b = try loader.next() { ... b.image, b.label ... }
///     }
///
/// An epoch visits every case `samplesPerCase` times in a seeded random order; it has `stepsPerEpoch` steps,
/// the same on every rank (samples that do not fill a global batch are dropped). A sample is a foreground
/// patch (centred on a sampled voxel of a random foreground class present in the case) for a fraction
/// `foregroundFraction` of global indices (exactly: index g when floor((g+1)·f) > floor(g·f)), else a
/// uniformly placed patch; a patch larger than the volume is centred and padded with the volume minimum.
public final class PatchLoader: @unchecked Sendable {
    public let store: CaseStore
    public let cases: [Int]
    public let patch: Dim3
    public let batch: Int, rank: Int, worldSize: Int
    public let seed: UInt64
    public let augment: AugmentOptions
    public let foregroundFraction: Double
    public let normalization: IntensityNormalization
    public let samplesPerCase: Int
    public let prefetch: Int
    /// Threads preparing the samples of one batch (default 1: the loader thread alone).
    public let threads: Int

    private let cond = NSCondition()
    private var queue: [PatchBatch] = []
    private var generation = 0
    private var producing = false
    private var failure: Error?
    private var epoch = 0
    private var consumed = 0
    /// The image and label buffers of the batches handed out lately, reused once their batch is dropped: a
    /// fresh buffer of a batch's size is new memory, a page fault per 4 KiB written (about 600 per step at
    /// 2×96×96×48), every step. At most `prefetch + 3` (the queue, the batch in training, the one before it).
    private let buffers = Locked<[(image: Tensor, label: [UInt8])]>([])
    /// Source-box scratch of augmented samples, one pair per patch thread (`takeBoxScratch`).
    private let boxScratch = Locked<[([Float], [UInt8])]>([])

    /// `cases`: case ids to train on (e.g. a fold's training cases); nil = every case of the store. `patch`,
    /// `batch` (patches per rank per step), `rank`/`worldSize` (this rank's shard), `seed`, `augment`,
    /// `foregroundFraction`, `normalization` and `samplesPerCase` fix the sequence of patches; `prefetch` (batches
    /// prepared ahead) and `threads` (patches prepared in parallel) only how fast it comes.
    public init(
        store: CaseStore, cases: [String]? = nil, patch: Dim3, batch: Int, rank: Int = 0, worldSize: Int = 1,
        seed: UInt64, augment: AugmentOptions = .paper, foregroundFraction: Double = 1.0 / 3.0,
        normalization: IntensityNormalization = .zscore, samplesPerCase: Int = 1, prefetch: Int = 2,
        threads: Int = 1
    ) throws {
        precondition(batch >= 1 && worldSize >= 1 && (0..<worldSize).contains(rank) && samplesPerCase >= 1)
        self.store = store
        if let cases {
            self.cases = try cases.map { id in
                guard let i = store.index(of: id) else {
                    throw AttunetError("\(store.path): no case '\(id)' in the store")
                }
                return i
            }
        } else {
            self.cases = Array(store.cases.indices)
        }
        guard !self.cases.isEmpty else { throw AttunetError("\(store.path): no cases to sample from") }
        self.patch = patch
        self.batch = batch
        self.rank = rank
        self.worldSize = worldSize
        self.seed = seed
        self.augment = augment
        self.foregroundFraction = foregroundFraction
        self.normalization = normalization
        self.samplesPerCase = samplesPerCase
        self.prefetch = max(1, prefetch)
        self.threads = max(1, threads)
    }

    deinit {
        cond.lock()
        generation += 1
        cond.broadcast()
        cond.unlock()
    }

    /// Global samples per epoch (all ranks).
    public var samplesPerEpoch: Int { cases.count * samplesPerCase }
    /// Steps per epoch, identical on every rank: floor(samples / (batch · worldSize)), at least 1.
    public var stepsPerEpoch: Int { Self.stepsPerEpoch(samples: samplesPerEpoch, globalBatch: batch * worldSize) }

    /// Steps of an epoch of `samples` global samples (cases × samples per case) at `globalBatch`:
    /// floor(samples / globalBatch), at least 1.
    public static func stepsPerEpoch(samples: Int, globalBatch: Int) -> Int { max(1, samples / max(globalBatch, 1)) }

    /// The epoch's global order: position -> index into `cases`.
    public func order(epoch: Int) -> [Int] {
        var rng = SeededRNG(seed, UInt64(epoch), 0x4F52_4445_52)  // "ORDER"
        return (0..<samplesPerCase).flatMap { _ in rng.permutation(cases.count) }
    }

    /// Global sample index of item `slot` of `step` on `rank`.
    public func globalIndex(step: Int, slot: Int, rank r: Int? = nil) -> Int {
        (step * batch + slot) * worldSize + (r ?? rank)
    }

    /// Whether global sample `g` is a foreground-centred patch.
    public func isForeground(_ g: Int) -> Bool {
        (Double(g + 1) * foregroundFraction).rounded(.down) > (Double(g) * foregroundFraction).rounded(.down)
    }

    /// Prepares global sample `g` of `epoch` into `image`/`label` (patch.count each). Deterministic.
    public func sample(
        epoch: Int, globalIndex g: Int, order: [Int], image: UnsafeMutablePointer<Float>,
        label: UnsafeMutablePointer<UInt8>
    ) throws -> Int {
        let c = cases[order[g % order.count]]
        let info = store.cases[c]
        var rng = SeededRNG(seed, UInt64(epoch), UInt64(g), 0x5341_4D50)  // "SAMP"
        let s = info.shape
        // Patch centre (voxel, z/y/x).
        var centre = [0, 0, 0]
        let dims = [s.z, s.y, s.x]
        let ps = [patch.z, patch.y, patch.x]
        let present = info.presentClasses
        let nfg = info.foreground.count / 4
        if isForeground(g), !present.isEmpty, nfg > 0 {
            let k = present[rng.below(present.count)]
            // Rows of class k (rows are grouped by voxel order, so scan; cheap for <= 10^4 rows per class).
            var rows: [Int] = []
            for r in 0..<nfg where Int(info.foreground[r * 4]) == k { rows.append(r) }
            let r = rows.isEmpty ? rng.below(nfg) : rows[rng.below(rows.count)]
            for a in 0..<3 {
                let v = Int(info.foreground[r * 4 + 1 + a])
                // Keep the patch inside the volume where the volume is large enough.
                let start = min(max(v - ps[a] / 2, min(0, dims[a] - ps[a])), max(0, dims[a] - ps[a]))
                centre[a] = start + ps[a] / 2
            }
        } else {
            for a in 0..<3 {
                let start = dims[a] >= ps[a] ? rng.below(dims[a] - ps[a] + 1) : -((ps[a] - dims[a] + 1) / 2)
                centre[a] = start + ps[a] / 2
            }
        }
        var arng = SeededRNG(seed, UInt64(epoch), UInt64(g), 0x4155_474D)  // "AUGM"
        let tf =
            augment.isGeometricIdentity
            ? SampleTransform.identity : SampleTransform.draw(augment, patch: patch, rng: &arng)
        // Output voxel o (z,y,x) has offset d = o - (p - 1)/2 from the patch centre; its source is
        // centre' + m d + t with centre' = centre - 1/2 on even axes, so the identity reads the box exactly.
        let cx = Double(centre[2]) - (patch.x % 2 == 0 ? 0.5 : 0)
        let cy = Double(centre[1]) - (patch.y % 2 == 0 ? 0.5 : 0)
        let cz = Double(centre[0]) - (patch.z % 2 == 0 ? 0.5 : 0)
        if augment.isGeometricIdentity {
            try store.readBox(
                c, start: (centre[0] - ps[0] / 2, centre[1] - ps[1] / 2, centre[2] - ps[2] / 2), size: patch,
                image: image, label: label)
        } else {
            let (lo, hi) = tf.bounds(patch: patch)
            let b0 = [
                Int((cx + lo[0]).rounded(.down)) - 1, Int((cy + lo[1]).rounded(.down)) - 1,
                Int((cz + lo[2]).rounded(.down)) - 1,
            ]
            let b1 = [
                Int((cx + hi[0]).rounded(.up)) + 1, Int((cy + hi[1]).rounded(.up)) + 1,
                Int((cz + hi[2]).rounded(.up)) + 1,
            ]
            let box = Dim3(z: b1[2] - b0[2] + 1, y: b1[1] - b0[1] + 1, x: b1[0] - b0[0] + 1)
            var (src, lsrc) = takeBoxScratch(box.count)
            defer { boxScratch.withLock { $0.append((src, lsrc)) } }
            try src.withUnsafeMutableBufferPointer { sp in
                try lsrc.withUnsafeMutableBufferPointer { lp in
                    try store.readBox(
                        c, start: (b0[2], b0[1], b0[0]), size: box, image: sp.baseAddress!, label: lp.baseAddress!)
                }
            }
            let m = tf.m
            let t = tf.t
            let hx = (Double(patch.x) - 1) / 2
            let hy = (Double(patch.y) - 1) / 2
            let hz = (Double(patch.z) - 1) / 2
            // Box-relative source origin.
            let ox = cx + t[0] - Double(b0[0])
            let oy = cy + t[1] - Double(b0[1])
            let oz = cz + t[2] - Double(b0[2])
            src.withUnsafeBufferPointer { sp in
                lsrc.withUnsafeBufferPointer { lp in
                    let S = sp.baseAddress!
                    let L = lp.baseAddress!
                    var o = 0
                    for k in 0..<patch.z {
                        let dz = Double(k) - hz
                        for j in 0..<patch.y {
                            let dy = Double(j) - hy
                            var x = ox + m[1] * dy + m[2] * dz - m[0] * hx
                            var y = oy + m[4] * dy + m[5] * dz - m[3] * hx
                            var z = oz + m[7] * dy + m[8] * dz - m[6] * hx
                            for _ in 0..<patch.x {
                                // Clamp to the box (edge replication), trilinear image, nearest label.
                                let xc = min(max(x, 0), Double(box.x - 1))
                                let yc = min(max(y, 0), Double(box.y - 1))
                                let zc = min(max(z, 0), Double(box.z - 1))
                                let x0 = min(Int(xc), box.x - 2 < 0 ? 0 : box.x - 2)
                                let y0 = min(Int(yc), max(box.y - 2, 0))
                                let z0 = min(Int(zc), max(box.z - 2, 0))
                                let wx = Float(xc - Double(x0))
                                let wy = Float(yc - Double(y0))
                                let wz = Float(zc - Double(z0))
                                let x1 = min(x0 + 1, box.x - 1)
                                let y1 = min(y0 + 1, box.y - 1)
                                let z1 = min(z0 + 1, box.z - 1)
                                @inline(__always) func at(_ zz: Int, _ yy: Int, _ xx: Int) -> Float {
                                    S[(zz * box.y + yy) * box.x + xx]
                                }
                                let a = at(z0, y0, x0) + wx * (at(z0, y0, x1) - at(z0, y0, x0))
                                let b = at(z0, y1, x0) + wx * (at(z0, y1, x1) - at(z0, y1, x0))
                                let cc = at(z1, y0, x0) + wx * (at(z1, y0, x1) - at(z1, y0, x0))
                                let d = at(z1, y1, x0) + wx * (at(z1, y1, x1) - at(z1, y1, x0))
                                let ab = a + wy * (b - a)
                                let cd = cc + wy * (d - cc)
                                image[o] = ab + wz * (cd - ab)
                                let nx = Int(xc + 0.5)
                                let ny = Int(yc + 0.5)
                                let nz = Int(zc + 0.5)
                                label[o] =
                                    L[(min(nz, box.z - 1) * box.y + min(ny, box.y - 1)) * box.x + min(nx, box.x - 1)]
                                o += 1
                                x += m[0]
                                y += m[3]
                                z += m[6]
                            }
                        }
                    }
                }
            }
        }
        normalization.apply(image, count: patch.count, case: info)
        intensityAugment(image, count: patch.count, augment, rng: &arng)
        return c
    }

    /// Builds batch `step` of `epoch` for this rank synchronously (what the background thread runs).
    public func makeBatch(epoch: Int, step: Int, order: [Int]? = nil) throws -> PatchBatch {
        let t0 = Date()
        let ord = order ?? self.order(epoch: epoch)
        var (img, lab) = takeBuffers()
        var cs = [Int](repeating: 0, count: batch)
        let gs = (0..<batch).map { globalIndex(step: step, slot: $0) }
        try lab.withUnsafeMutableBufferPointer { lb in
            let lp = UncheckedSendable(lb.baseAddress!)
            let ip = UncheckedSendable(img.pointer)
            try cs.withUnsafeMutableBufferPointer { cb in
                let out = UncheckedSendable(cb.baseAddress!)
                try parallelForEach(batch, threads: threads) { b in
                    out.value[b] = try self.sample(
                        epoch: epoch, globalIndex: gs[b], order: ord,
                        image: ip.value + b * self.patch.count, label: lp.value + b * self.patch.count)
                }
            }
        }
        buffers.withLock { ring in
            if ring.count < prefetch + 3 { ring.append((img, lab)) }
        }
        return PatchBatch(
            image: img, label: lab, cases: cs, samples: gs, step: step, loadSeconds: Date().timeIntervalSince(t0))
    }

    /// Scratch arrays of at least `count` elements for an augmented sample's source box (each patch thread
    /// takes its own pair and puts it back): allocated when a box outgrows them, not once per sample.
    /// `readBox` overwrites the first `count` elements, the only ones read.
    private func takeBoxScratch(_ count: Int) -> ([Float], [UInt8]) {
        var pair = boxScratch.withLock { $0.popLast() } ?? ([], [])
        if pair.0.count < count {
            // A quarter more: boxes vary with the drawn rotation and scale, so growth stops after a few.
            let grown = count + count / 4
            pair = ([Float](repeating: 0, count: grown), [UInt8](repeating: 0, count: grown))
        }
        return pair
    }

    /// A batch's image and label buffers: those of a batch nobody holds any more (its image tensor referenced
    /// by the ring alone), taken out of the ring so that writing the label array does not copy it, or new ones.
    /// Every element is overwritten by `sample`. A label array still shared (a caller kept a batch's labels)
    /// is copied on write, as any Swift array: correct, only not free.
    private func takeBuffers() -> (Tensor, [UInt8]) {
        let reused = buffers.withLock { ring -> (Tensor, [UInt8])? in
            for i in ring.indices where isKnownUniquelyReferenced(&ring[i].image) {
                return ring.remove(at: i)
            }
            return nil
        }
        return reused
            ?? (Tensor([batch, 1, patch.z, patch.y, patch.x]), [UInt8](repeating: 0, count: batch * patch.count))
    }

    /// Starts preparing `epoch` on the background thread (abandoning any epoch in progress), from step
    /// `first` (a run resumed mid-epoch continues exactly where it stopped).
    public func startEpoch(_ e: Int, fromStep first: Int = 0) {
        cond.lock()
        generation += 1
        let gen = generation
        queue.removeAll()
        failure = nil
        epoch = e
        consumed = 0
        producing = true
        cond.broadcast()
        cond.unlock()
        let steps = stepsPerEpoch
        let ord = order(epoch: e)
        let thread = Thread { [weak self] in
            for step in min(first, steps)..<steps {
                guard let self else { return }
                let result: Result<PatchBatch, Error> = Result { try self.makeBatch(epoch: e, step: step, order: ord) }
                self.cond.lock()
                while self.generation == gen && self.queue.count >= self.prefetch { self.cond.wait() }
                if self.generation != gen {
                    self.cond.unlock()
                    return
                }
                switch result {
                case .success(let b): self.queue.append(b)
                case .failure(let err):
                    self.failure = err
                    self.producing = false
                }
                self.cond.broadcast()
                self.cond.unlock()
                if case .failure = result { return }
            }
            guard let self else { return }
            self.cond.lock()
            if self.generation == gen {
                self.producing = false
                self.cond.broadcast()
            }
            self.cond.unlock()
        }
        thread.name = "attunet-patch-loader"
        thread.start()
    }

    /// The next batch of the current epoch (waits for the loader thread), or nil when the epoch is done.
    /// Throws the store error that stopped the loader, if any.
    public func next() throws -> PatchBatch? {
        cond.lock()
        defer { cond.unlock() }
        while queue.isEmpty && producing && failure == nil { cond.wait() }
        if let f = failure {
            failure = nil
            throw f
        }
        guard !queue.isEmpty else { return nil }
        let b = queue.removeFirst()
        consumed += 1
        cond.broadcast()
        return b
    }
}
