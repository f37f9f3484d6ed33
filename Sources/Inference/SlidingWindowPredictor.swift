import DataPipeline
import Foundation
import NN
import Support
import Tensor

/// Axes along which test-time augmentation mirrors the tiles.
public struct MirrorAxes: OptionSet, Sendable, Hashable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }

    public static let x = MirrorAxes(rawValue: 1)
    public static let y = MirrorAxes(rawValue: 2)
    public static let z = MirrorAxes(rawValue: 4)
    /// X and Y, the axes training mirrors (`AugmentOptions`: flips along X and Y, never Z): 4 flips.
    public static let inPlane: MirrorAxes = [.x, .y]
    /// All three axes: nnU-Net's 8 flips.
    public static let all: MirrorAxes = [.x, .y, .z]

    /// Every combination of these axes, the identity first: 2^(number of axes) flips.
    public var flips: [MirrorAxes] { (0..<8).map { MirrorAxes(rawValue: $0) }.filter { isSuperset(of: $0) } }

    static let named: [(MirrorAxes, String)] = [(.x, "x"), (.y, "y"), (.z, "z")]

    /// The axes named `x`, `y`, `z` (as a checkpoint's prediction recipe and `--tta-axes` name them); nil when a
    /// name is none of these.
    public init?(names: [String]) {
        var axes: MirrorAxes = []
        for n in names {
            guard let a = Self.named.first(where: { $0.1 == n.lowercased() }) else { return nil }
            axes.insert(a.0)
        }
        self = axes
    }

    /// The axes' names, x before y before z.
    public var names: [String] { Self.named.filter { contains($0.0) }.map(\.1) }
}

/// How ``SlidingWindowPredictor`` tiles, blends and what it returns.
public struct SlidingWindowOptions: Sendable, Equatable {
    /// Tile size; every side a positive multiple of 16 (the network pools four times).
    public var patch: Dim3
    /// Fraction of a tile that neighbouring tiles share at least, in [0, 1): the step between tiles is at most
    /// `patch · (1 − overlap)` voxels per axis (nnU-Net's `tile_step_size` is `1 − overlap`).
    public var overlap: Double
    /// Mirror test-time augmentation: the softmax outputs of every flip over these axes are averaged
    /// (empty: none).
    public var mirrorAxes: MirrorAxes
    /// Return the blended probabilities `[classes][Z][Y][X]` as well as the labels.
    public var keepProbabilities: Bool
    /// Stitch the networks' attention maps at the volume's resolution.
    public var attentionMaps: Bool
    /// Return the per-voxel sum of Gaussian importance weights (a diagnostic).
    public var keepWeights: Bool

    /// `tta: true` mirrors along ``MirrorAxes/inPlane`` (set ``mirrorAxes`` to ``MirrorAxes/all`` for 8 flips).
    public init(
        patch: Dim3, overlap: Double = 0.5, tta: Bool = false, keepProbabilities: Bool = false,
        attentionMaps: Bool = false, keepWeights: Bool = false
    ) {
        self.patch = patch
        self.overlap = overlap
        mirrorAxes = tta ? .inPlane : []
        self.keepProbabilities = keepProbabilities
        self.attentionMaps = attentionMaps
        self.keepWeights = keepWeights
    }

    /// Whether test-time augmentation is on.
    public var tta: Bool { !mirrorAxes.isEmpty }

    /// Checks the patch size and the overlap; errors name the option.
    public func validate() throws {
        if [patch.z, patch.y, patch.x].contains(where: { $0 <= 0 || $0 % 16 != 0 }) {
            throw AttunetError(
                "sliding window: patch \(patch) (X x Y x Z) is not a positive multiple of 16 on every axis (the network pools four times)"
            )
        }
        guard overlap.isFinite, overlap >= 0, overlap < 1 else {
            throw AttunetError("sliding window: overlap \(overlap) is outside [0, 1)")
        }
        if Double(min(patch.z, patch.y, patch.x)) * (1 - overlap) < 1 {
            throw AttunetError("sliding window: overlap \(overlap) leaves a step under one voxel for patch \(patch)")
        }
    }
}

/// Attention maps stitched over a volume: `values` holds `names.count` maps `[Z][Y][X]` one after the other.
public struct StitchedMaps: Sendable {
    /// The networks' map names, e.g. `attentionblock2.gate_block_1`.
    public var names: [String]
    public var shape: Dim3
    public var values: [Float]

    /// The map named `name`, `[Z][Y][X]`.
    public func map(_ name: String) -> ArraySlice<Float>? {
        guard let i = names.firstIndex(of: name) else { return nil }
        return values[(i * shape.count)..<((i + 1) * shape.count)]
    }
}

/// A segmented volume and what it took.
public struct Prediction: Sendable {
    /// The volume's size (the input's, padding cropped off).
    public var shape: Dim3
    public var classes: Int
    /// Arg-max class per voxel, `[Z][Y][X]` (the first class on ties).
    public var labels: [UInt8]
    /// Softmax probabilities `[classes][Z][Y][X]`, averaged over networks and flips and blended over tiles
    /// (with ``SlidingWindowOptions/keepProbabilities``).
    public var probabilities: [Float]?
    /// Attention maps (with ``SlidingWindowOptions/attentionMaps``).
    public var attentionMaps: StitchedMaps?
    /// Sum of the Gaussian importance weights of the tiles covering each voxel, `[Z][Y][X]`
    /// (with ``SlidingWindowOptions/keepWeights``).
    public var weights: [Float]?
    /// Tiles, and forward passes (tiles × flips × networks).
    public var tiles: Int
    public var forwardPasses: Int
    public var seconds: Double
    /// Peak resident memory before and after the prediction.
    public var memory: MemoryReport

    public init(
        shape: Dim3, classes: Int, labels: [UInt8], probabilities: [Float]? = nil,
        attentionMaps: StitchedMaps? = nil, weights: [Float]? = nil, tiles: Int = 0, forwardPasses: Int = 0,
        seconds: Double = 0, memory: MemoryReport = MemoryReport(peakBefore: nil, peakAfter: nil)
    ) {
        self.shape = shape
        self.classes = classes
        self.labels = labels
        self.probabilities = probabilities
        self.attentionMaps = attentionMaps
        self.weights = weights
        self.tiles = tiles
        self.forwardPasses = forwardPasses
        self.seconds = seconds
        self.memory = memory
    }
}

/// Sliding-window segmentation of a whole volume, as nnU-Net predicts: tiles of the training patch size placed
/// with a given overlap (first at 0, last flush with the end, steps evenly spread), each tile's softmax weighted
/// by a Gaussian importance map and accumulated into one probability buffer of `classes × volume` floats plus
/// one weight buffer; optional mirror test-time augmentation and an ensemble of networks (softmax outputs
/// averaged). A volume smaller than the tile along an axis is padded, evenly before and after, and cropped back.
///
/// One tile is in flight at a time (batch of 1), so memory is the networks' activations for one tile, the
/// accumulators and the input volume; the working buffers are allocated once per predictor, never per voxel.
/// Not thread-safe: one prediction at a time per predictor (and per network).
public final class SlidingWindowPredictor {
    public let networks: [any SegmentationNetwork]
    public let options: SlidingWindowOptions
    public let classes: Int
    /// The Gaussian importance map of one tile, `[Z][Y][X]` (``gaussianImportanceMap(patch:)``).
    public let importanceMap: [Float]

    private let input: Tensor
    private let softmax = Softmax()
    /// Per tile: softmax outputs summed over flips (undone) and networks, `[classes][tile]`.
    private let tileSum: Tensor
    /// Per tile and attention map: the map up-sampled to the tile, summed likewise.
    private var tileMaps: [Tensor] = []
    private var upsamplers: [Trilinear] = []
    /// Whether the recycled-tensor pool was settled after this predictor's first tile (see `TensorPool.settle`).
    private var poolSettled = false

    /// Checks the options and that the networks agree (one input channel, the same classes, at most 256 so labels
    /// fit a byte).
    public init(networks: [any SegmentationNetwork], options: SlidingWindowOptions) throws {
        try options.validate()
        guard let first = networks.first else { throw AttunetError("sliding window: no network to predict with") }
        classes = first.outputClasses
        guard (1...256).contains(classes) else {
            throw AttunetError("sliding window: \(classes) classes; labels are bytes (1 to 256 classes)")
        }
        for (i, n) in networks.enumerated() {
            guard n.inputChannels == 1 else {
                throw AttunetError(
                    "sliding window: network \(i + 1) takes \(n.inputChannels) input channels; the predictor feeds one (the CT volume)"
                )
            }
            guard n.outputClasses == classes else {
                throw AttunetError(
                    "sliding window: network \(i + 1) has \(n.outputClasses) classes, network 1 has \(classes); an ensemble must agree"
                )
            }
        }
        self.networks = networks
        self.options = options
        let p = options.patch
        importanceMap = Self.gaussianImportanceMap(patch: p)
        input = Tensor([1, 1, p.z, p.y, p.x])
        tileSum = Tensor([classes, p.z, p.y, p.x])
    }

    /// A predictor for one network.
    public convenience init(network: any SegmentationNetwork, options: SlidingWindowOptions) throws {
        try self.init(networks: [network], options: options)
    }

    // MARK: - Tile placement and weights

    /// Tile origins along one axis of `length` voxels (at least `patch`), as nnU-Net's
    /// `compute_steps_for_sliding_window`: `ceil((length − patch) / (patch · (1 − overlap))) + 1` tiles, the
    /// first at 0, the last at `length − patch`, origins `round(i · (length − patch) / (tiles − 1))` (half to
    /// even, as NumPy).
    public static func tileStarts(length n: Int, patch p: Int, overlap: Double) -> [Int] {
        precondition(p > 0 && n >= p, "tileStarts: length \(n) is shorter than the patch \(p)")
        let target = Double(p) * (1 - overlap)
        let count = Int((Double(n - p) / target).rounded(.up)) + 1
        guard count > 1 else { return [0] }
        let step = Double(n - p) / Double(count - 1)
        return (0..<count).map { Int((step * Double($0)).rounded(.toNearestOrEven)) }
    }

    /// nnU-Net's Gaussian importance map (`compute_gaussian`, σ = patch/8 per axis): a unit impulse at voxel
    /// `patch / 2` (integer division) blurred by a Gaussian truncated at `int(4σ + 0.5)` voxels (SciPy's
    /// `gaussian_filter`), divided by its maximum (1 at the centre), and its zeros, if any, raised to its
    /// smallest positive value so that every voxel of a tile has weight.
    public static func gaussianImportanceMap(patch p: Dim3) -> [Float] {
        func axis(_ n: Int) -> [Double] {
            let sigma = Double(n) / 8
            let c = n / 2
            let radius = Int(4 * sigma + 0.5)
            return (0..<n).map { i in
                let d = i - c
                return abs(d) > radius ? 0 : Foundation.exp(-Double(d * d) / (2 * sigma * sigma))
            }
        }
        let gz = axis(p.z)
        let gy = axis(p.y)
        let gx = axis(p.x)
        var m = [Float](repeating: 0, count: p.count)
        var i = 0
        for z in 0..<p.z {
            for y in 0..<p.y {
                for x in 0..<p.x {
                    m[i] = Float(gz[z] * gy[y] * gx[x])
                    i += 1
                }
            }
        }
        if let floor = m.lazy.filter({ $0 > 0 }).min() {
            for j in m.indices where m[j] == 0 { m[j] = floor }
        }
        return m
    }

    // MARK: - Prediction

    /// Segments a normalised volume `[Z][Y][X]` of `shape` (normalised as training patches are; see
    /// `CaseStore.normalizedImage(_:normalization:)`). `padValue` fills whatever a tile covers outside the
    /// volume: the value the case's minimum normalises to, as training patches are padded.
    public func predict(volume: [Float], shape n: Dim3, padValue: Float) throws -> Prediction {
        guard n.z > 0, n.y > 0, n.x > 0, volume.count == n.count else {
            throw AttunetError(
                "sliding window: volume of \(volume.count) voxels does not match its shape \(n) (\(n.count) voxels)")
        }
        let peakBefore = Memory.peakResidentBytes()
        let started = Date()
        let p = options.patch
        let k = classes
        let nv = n.count
        // The padded extent (only where the volume is smaller than the tile), centred as the original's test
        // transform pads: half before, the odd voxel after.
        let padded = Dim3(z: max(n.z, p.z), y: max(n.y, p.y), x: max(n.x, p.x))
        let before = Dim3(z: (padded.z - n.z) / 2, y: (padded.y - n.y) / 2, x: (padded.x - n.x) / 2)
        let zs = Self.tileStarts(length: padded.z, patch: p.z, overlap: options.overlap)
        let ys = Self.tileStarts(length: padded.y, patch: p.y, overlap: options.overlap)
        let xs = Self.tileStarts(length: padded.x, patch: p.x, overlap: options.overlap)
        let flips = options.mirrorAxes.flips
        let scale = 1 / Float(flips.count * networks.count)

        var acc = [Float](repeating: 0, count: k * nv)
        var weights = [Float](repeating: 0, count: nv)
        var mapNames: [String]? = nil
        var maps: [Float] = []

        let modes = networks.map(\.training)
        for net in networks { net.training = false }
        defer { for (net, mode) in zip(networks, modes) { net.training = mode } }

        var tiles = 0
        var passes = 0
        try volume.withUnsafeBufferPointer { vol in
            for tz in zs {
                for ty in ys {
                    for tx in xs {
                        // The tile's origin in volume coordinates (negative where it starts in the padding).
                        let origin = (z: tz - before.z, y: ty - before.y, x: tx - before.x)
                        tileSum.zero()
                        for t in tileMaps { t.zero() }
                        for flip in flips {
                            Self.extract(
                                vol.baseAddress!, n, origin: origin, patch: p, flip: flip, pad: padValue,
                                into: input.pointer)
                            for (i, net) in networks.enumerated() {
                                // Keeping nothing for a backward pass: a tile needs a few activations at a time.
                                // The first tile grows the pool one request at a time; every later tile shares one
                                // segment laid out for its requests.
                                let logits = try TensorPool.settling(after: &poolSettled) {
                                    try GradientMode.withoutGradients { try net.forward(input) }
                                }
                                guard logits.shape == [1, k, p.z, p.y, p.x] else {
                                    throw AttunetError(
                                        "sliding window: network \(i + 1) returned logits of shape \(logits.shape) for a tile \(input.shape); expected [1, \(k), \(p.z), \(p.y), \(p.x)]"
                                    )
                                }
                                let prob = softmax.forward(logits)
                                Self.addUnflipped(
                                    prob.pointer, channels: k, patch: p, flip: flip, into: tileSum.pointer)
                                if options.attentionMaps {
                                    let names = try collectMaps(net, index: i, flip: flip)
                                    if mapNames == nil {
                                        mapNames = names
                                        maps = [Float](repeating: 0, count: names.count * nv)
                                    }
                                }
                                passes += 1
                            }
                        }
                        acc.withUnsafeMutableBufferPointer { a in
                            weights.withUnsafeMutableBufferPointer { w in
                                maps.withUnsafeMutableBufferPointer { m in
                                    blend(
                                        origin: origin, volume: n, scale: scale, probabilities: a.baseAddress!,
                                        weights: w.baseAddress!, maps: m.baseAddress)
                                }
                            }
                        }
                        tiles += 1
                    }
                }
            }
        }

        // Normalise by the summed weights and take the arg-max.
        var labels = [UInt8](repeating: 0, count: nv)
        let keep = options.keepProbabilities
        let mapCount = mapNames?.count ?? 0
        acc.withUnsafeMutableBufferPointer { a in
            weights.withUnsafeBufferPointer { w in
                labels.withUnsafeMutableBufferPointer { l in
                    maps.withUnsafeMutableBufferPointer { m in
                        let ap = a.baseAddress!
                        let wp = w.baseAddress!
                        let lp = l.baseAddress!
                        let mp = m.baseAddress
                        parallelFor(n.z) { z in
                            for i in (z * n.y * n.x)..<((z + 1) * n.y * n.x) {
                                let inv = 1 / wp[i]
                                var best = 0
                                var bestValue = ap[i]
                                for c in 1..<max(k, 1) where ap[c * nv + i] > bestValue {
                                    best = c
                                    bestValue = ap[c * nv + i]
                                }
                                lp[i] = UInt8(best)
                                if keep { for c in 0..<k { ap[c * nv + i] *= inv } }
                                if let mp { for j in 0..<mapCount { mp[j * nv + i] *= inv } }
                            }
                        }
                    }
                }
            }
        }
        if !keep { acc = [] }
        return Prediction(
            shape: n, classes: k, labels: labels, probabilities: keep ? acc : nil,
            attentionMaps: mapNames.map { StitchedMaps(names: $0, shape: n, values: maps) },
            weights: options.keepWeights ? weights : nil, tiles: tiles, forwardPasses: passes,
            seconds: Date().timeIntervalSince(started),
            memory: MemoryReport(peakBefore: peakBefore, peakAfter: Memory.peakResidentBytes()))
    }

    /// Segments case `c` of a store: its image normalised as training patches are, padded with its normalised
    /// minimum.
    public func predict(store: CaseStore, case c: Int, normalization: IntensityNormalization = .zscore) throws
        -> Prediction
    {
        let (image, pad) = try store.normalizedImage(c, normalization: normalization)
        return try predict(volume: image, shape: store.cases[c].shape, padValue: pad)
    }

    // MARK: - Tile loops

    /// Copies the tile at `origin` (volume coordinates) into `dst` `[Z][Y][X]`, mirrored along `flip`, with
    /// `pad` outside the volume.
    static func extract(
        _ vol: UnsafePointer<Float>, _ n: Dim3, origin: (z: Int, y: Int, x: Int), patch p: Dim3,
        flip: MirrorAxes, pad: Float, into dst: UnsafeMutablePointer<Float>
    ) {
        let fx = flip.contains(.x)
        let fy = flip.contains(.y)
        let fz = flip.contains(.z)
        parallelFor(p.z) { z in
            let vz = origin.z + (fz ? p.z - 1 - z : z)
            for y in 0..<p.y {
                let vy = origin.y + (fy ? p.y - 1 - y : y)
                let out = dst + (z * p.y + y) * p.x
                if vz < 0 || vz >= n.z || vy < 0 || vy >= n.y {
                    out.update(repeating: pad, count: p.x)
                    continue
                }
                let row = vol + (vz * n.y + vy) * n.x
                for x in 0..<p.x {
                    let vx = origin.x + (fx ? p.x - 1 - x : x)
                    out[x] = vx >= 0 && vx < n.x ? row[vx] : pad
                }
            }
        }
    }

    /// dst[c][z][y][x] += src[c][flip(z)][flip(y)][flip(x)]: a flipped tile's output put back in place.
    static func addUnflipped(
        _ src: UnsafePointer<Float>, channels: Int, patch p: Dim3, flip: MirrorAxes,
        into dst: UnsafeMutablePointer<Float>
    ) {
        let fx = flip.contains(.x)
        let fy = flip.contains(.y)
        let fz = flip.contains(.z)
        let v = p.count
        parallelFor(channels * p.z) { task in
            let c = task / p.z
            let z = task % p.z
            let sz = fz ? p.z - 1 - z : z
            for y in 0..<p.y {
                let sy = fy ? p.y - 1 - y : y
                let s = src + c * v + (sz * p.y + sy) * p.x
                let d = dst + c * v + (z * p.y + y) * p.x
                if fx {
                    for x in 0..<p.x { d[x] += s[p.x - 1 - x] }
                } else {
                    for x in 0..<p.x { d[x] += s[x] }
                }
            }
        }
    }

    /// Up-samples the network's attention maps to the tile and adds them, unflipped, to `tileMaps`; returns
    /// their names (checked equal across networks and passes).
    private func collectMaps(_ net: any SegmentationNetwork, index: Int, flip: MirrorAxes) throws -> [String] {
        let found = net.attentionMaps
        guard !found.isEmpty else {
            throw AttunetError(
                "sliding window: attention maps asked for, but network \(index + 1) has none (a U-Net without attention gates)"
            )
        }
        let p = options.patch
        if tileMaps.isEmpty {
            tileMaps = found.map { _ in Tensor([1, p.z, p.y, p.x]) }
            // align_corners false: PyTorch's default for F.interpolate, and what the gates' own α up-sampling
            // uses at the default model setting.
            upsamplers = found.map { _ in Trilinear(size: p, alignCorners: false) }
            mapNamesSeen = found.map(\.name)
        }
        guard found.map(\.name) == mapNamesSeen else {
            throw AttunetError(
                "sliding window: network \(index + 1) has attention maps \(found.map(\.name)), network 1 \(mapNamesSeen); an ensemble must agree"
            )
        }
        for (j, entry) in found.enumerated() {
            guard entry.map.shape.count == 5, entry.map.shape[0] == 1, entry.map.shape[1] == 1 else {
                throw AttunetError(
                    "sliding window: attention map \(entry.name) has shape \(entry.map.shape); expected [1, 1, Z, Y, X]"
                )
            }
            let up = upsamplers[j].forward(entry.map)
            Self.addUnflipped(up.pointer, channels: 1, patch: p, flip: flip, into: tileMaps[j].pointer)
        }
        return mapNamesSeen
    }
    private var mapNamesSeen: [String] = []

    /// Adds the tile's summed outputs, weighted by the importance map and `scale` (1 / passes per tile), into
    /// the volume accumulators, and its importance map into `weights`, over the part of the tile inside the
    /// volume (the padding is cropped here).
    private func blend(
        origin: (z: Int, y: Int, x: Int), volume n: Dim3, scale: Float,
        probabilities acc: UnsafeMutablePointer<Float>, weights w: UnsafeMutablePointer<Float>,
        maps: UnsafeMutablePointer<Float>?
    ) {
        let p = options.patch
        let k = classes
        let nv = n.count
        let tv = p.count
        let z0 = max(0, -origin.z)
        let z1 = min(p.z, n.z - origin.z)
        let y0 = max(0, -origin.y)
        let y1 = min(p.y, n.y - origin.y)
        let x0 = max(0, -origin.x)
        let x1 = min(p.x, n.x - origin.x)
        guard z0 < z1, y0 < y1, x0 < x1 else { return }
        let tile = tileSum.pointer
        let mapTiles = tileMaps.map(\.pointer)
        importanceMap.withUnsafeBufferPointer { gb in
            let g = gb.baseAddress!
            parallelFor(z1 - z0) { dz in
                let z = z0 + dz
                for y in y0..<y1 {
                    let t = (z * p.y + y) * p.x
                    let v = ((origin.z + z) * n.y + origin.y + y) * n.x + origin.x
                    for x in x0..<x1 { w[v + x] += g[t + x] }
                    for c in 0..<k {
                        let src = tile + c * tv + t
                        let dst = acc + c * nv + v
                        for x in x0..<x1 { dst[x] += g[t + x] * scale * src[x] }
                    }
                    if let maps {
                        for (j, m) in mapTiles.enumerated() {
                            let src = m + t
                            let dst = maps + j * nv + v
                            for x in x0..<x1 { dst[x] += g[t + x] * scale * src[x] }
                        }
                    }
                }
            }
        }
    }
}

extension IntensityNormalization {
    /// The value the case's minimum normalises to: what pads a volume (as `CaseStore.readBox` pads training
    /// patches with the minimum before they are normalised).
    public func padValue(for info: CaseInfo) -> Float { padValue(stats: info.stats) }

    /// The value the minimum of an image with these statistics (min, max, mean, std) normalises to.
    public func padValue(stats: [Double]) -> Float {
        var m = Float(stats[0])
        apply(&m, count: 1, stats: stats)
        return m
    }
}

extension CaseStore {
    /// The whole image of case `c`, normalised as training patches are, and the value that pads it.
    public func normalizedImage(_ c: Int, normalization: IntensityNormalization) throws -> (
        image: [Float], padValue: Float
    ) {
        var image = try self.image(c)
        image.withUnsafeMutableBufferPointer { normalization.apply($0.baseAddress!, count: $0.count, case: cases[c]) }
        return (image, normalization.padValue(for: cases[c]))
    }
}
