import Foundation
import Support
import Tensor

/// `attunet train --freeze`: which parameters keep the values they were initialised with.
public enum FreezeKind: String, Codable, Sendable, CaseIterable {
    /// Every parameter trains.
    case none
    /// The encoder: `conv1` … `conv4` and `center`, their convolutions and their BN affine parameters.
    case encoder

    /// The top-level modules it freezes.
    public var modules: [String] { self == .encoder ? ["conv1", "conv2", "conv3", "conv4", "center"] : [] }

    /// Whether it freezes the parameter `name` (a state_dict name).
    public func freezes(_ name: String) -> Bool { modules.contains { name.hasPrefix($0 + ".") } }
}

/// `--label-map SRC:DST,...`: which class of a checkpoint (the source cohort's class ids) becomes which class of
/// the training store (the target cohort's). Written `2:1,1:2` on the command line and in JSON.
public struct LabelMap: Codable, Sendable, Equatable, CustomStringConvertible {
    /// One source class and the target class it becomes.
    public struct Pair: Sendable, Equatable, CustomStringConvertible {
        public var source: Int, target: Int
        public init(source: Int, target: Int) {
            self.source = source
            self.target = target
        }
        public var description: String { "\(source):\(target)" }
    }

    public var pairs: [Pair]

    public init(_ pairs: [Pair]) { self.pairs = pairs }

    /// Parses `SRC:DST,...` (class ids, integers ≥ 0); an error names the item that is not.
    public init(parsing text: String) throws {
        var pairs: [Pair] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let p = item.split(separator: ":", omittingEmptySubsequences: false).map {
                Int($0.trimmingCharacters(in: .whitespaces))
            }
            guard p.count == 2, let s = p[0], let t = p[1], s >= 0, t >= 0 else {
                throw AttunetError(
                    "--label-map: '\(item)' is not SRC:DST (a checkpoint class id and a store class id, integers >= 0)")
            }
            pairs.append(Pair(source: s, target: t))
        }
        guard !pairs.isEmpty else { throw AttunetError("--label-map is empty") }
        self.pairs = pairs
    }

    public var description: String { pairs.map(\.description).joined(separator: ",") }

    /// Every foreground class of `target` mapped from the `source` class of the same name (case-insensitive),
    /// or nil when one has no namesake.
    public static func matchingNames(source: [String], target: [String]) -> LabelMap? {
        var pairs: [Pair] = []
        for (t, name) in target.enumerated().dropFirst() {
            guard let s = source.firstIndex(where: { $0.lowercased() == name.lowercased() }) else { return nil }
            pairs.append(Pair(source: s, target: t))
        }
        return pairs.isEmpty ? nil : LabelMap(pairs)
    }

    /// The map with background to background (`0:0`) added when neither side names class 0.
    public var withBackground: LabelMap {
        pairs.contains { $0.source == 0 || $0.target == 0 } ? self : LabelMap([Pair(source: 0, target: 0)] + pairs)
    }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do { try self.init(parsing: text) } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "\(error)"))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// What `--init` did with one tensor of the network.
public enum TensorTransferAction: String, Codable, Sendable {
    /// Copied from the checkpoint's tensor of the same name.
    case copied
    /// An output layer whose rows (one per class) were copied from the checkpoint's classes through the label map.
    case classRows = "class rows"
    /// Seeded initialisation (not in the checkpoint, or an output layer with `--reset-head`).
    case fresh
    /// An attention-gate tensor initialised to pass the skip connection through unchanged (``WeightTransfer/passThrough(_:)``).
    case passThrough = "pass-through"
    /// A tensor of the checkpoint the network does not have (an attention checkpoint into a U-Net).
    case unused = "not used"
}

/// One tensor (parameter or BN buffer) of the mapping.
public struct TensorTransfer: Codable, Sendable, Equatable {
    public var name: String
    public var action: TensorTransferAction
    /// Trainable values (0 for BN buffers).
    public var parameters: Int
    /// Why, when not simply copied.
    public var why: String?
}

/// The mapping `attunet train --init` applied: recorded in every checkpoint of the run (root attribute
/// `transfer`), printed as a table at the start.
public struct TransferReport: Codable, Sendable, Equatable {
    /// The checkpoint's path, as given.
    public var source: String
    /// ``Checkpoint/weightsDigest(_:)`` of the checkpoint's weights.
    public var sourceWeightsSHA256: String
    public var sourceModel: ModelConfig
    /// The checkpoint's class names (`class k` when it does not record them).
    public var sourceClassNames: [String]
    /// The training store's class names.
    public var targetClassNames: [String]
    /// The label map applied to the output layers (with `0:0` added), nil when they were copied as they are or
    /// started fresh.
    public var labelMap: LabelMap?
    /// Every tensor of the network, then the checkpoint's unused ones, in state_dict order.
    public var tensors: [TensorTransfer]

    /// The parameters that did not come from the checkpoint (fresh and pass-through): `--head-lr` trains them.
    public var freshParameters: Set<String> {
        Set(tensors.filter { ($0.action == .fresh || $0.action == .passThrough) && $0.parameters > 0 }.map(\.name))
    }

    /// The printed table: one row per module and action (in state_dict order) with its tensor and parameter
    /// counts and why, then the label map.
    public func table(target: ModelConfig) -> [String] {
        let src = sourceModel
        var lines = [
            "init: \(source) (\(src.kind.rawValue), \(src.classes) classes, feature scale \(formatScale(src.featureScale)), weights sha256 \(sourceWeightsSHA256.prefix(16))…) -> \(target.kind.rawValue), \(target.classes) classes"
        ]
        var rows: [(module: String, action: TensorTransferAction, why: String, tensors: Int, parameters: Int)] = []
        for t in tensors {
            let module = String(t.name.split(separator: ".").first!)
            if let i = rows.firstIndex(where: {
                $0.module == module && $0.action == t.action && $0.why == (t.why ?? "")
            }) {
                rows[i].tensors += 1
                rows[i].parameters += t.parameters
            } else {
                rows.append((module, t.action, t.why ?? "", 1, t.parameters))
            }
        }
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
        func left(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }
        lines.append(
            "  " + pad("module", 16) + " " + pad("action", 12) + " " + left("tensors", 7) + " " + left("parameters", 11)
                + "  why")
        for r in rows {
            lines.append(
                ("  " + pad(r.module, 16) + " " + pad(r.action.rawValue, 12) + " " + left("\(r.tensors)", 7) + " "
                    + left(grouped(r.parameters), 11) + "  " + r.why).trimmingTrailingSpaces)
        }
        if tensors.contains(where: { $0.action == .passThrough }) {
            lines.append(
                "  pass-through gates: psi 0 with bias 3 (alpha = sigmoid(3) = 0.953 everywhere), W = I/alpha, combine = the mean of the two gates, their BNs the identity in eval mode: the network computes the \(sourceModel.kind.rawValue)'s logits (eval mode)"
            )
        }
        if let map = labelMap {
            lines.append(
                "  label map (checkpoint class -> store class): "
                    + map.pairs.map { p in
                        "\(p.source) \(sourceClassNames[p.source]) -> \(p.target) \(targetClassNames[p.target])"
                    }.joined(separator: ", "))
        }
        return lines
    }
}

/// `--init`: a network initialised from a checkpoint's tensors by state_dict name.
///
/// - Every tensor (parameter or BN buffer) the checkpoint has under the same name is copied; its shape must be
///   the same (same feature scale and input channels), else an error names the tensor and both shapes.
/// - Tensors the checkpoint lacks keep the seeded initialisation: an attention network from a U-Net checkpoint
///   gets fresh gates (`attentionblock*`) and gating signal (`gating`). With `passThroughGates` in the model
///   configuration the gates' ψ, W and combine convolutions are set by ``passThrough(_:)`` instead, and the
///   network then computes the U-Net's logits in evaluation mode (to float rounding).
/// - The output layers (`dsv1` … `dsv4`, `final`, one row per class) are copied when the class counts agree;
///   with `resetHead` they start fresh; with a label map the row of each store class is copied from its
///   checkpoint class (and in `final` the columns too), so a pancreas-only store can keep a multi-organ
///   network's pancreas output. A class-count mismatch without either is an error naming both counts.
public enum WeightTransfer {
    /// The output layers: the deep-supervision convolutions and `final`, whose rows are the classes.
    public static let headModules = ["dsv1", "dsv2", "dsv3", "dsv4", "final"]

    public static func isHead(_ name: String) -> Bool { headModules.contains { name.hasPrefix($0 + ".") } }

    /// ψ's bias in the exact pass-through: α = σ(3) ≈ 0.953, so the gates can still move both ways.
    public static let passThroughBias: Float = 3

    /// Initialises `target` from `source` (loaded from `sourcePath`) as described above. `targetPath` and
    /// `targetClassNames` name the training store in errors and in the table. Nothing is changed when an
    /// error is thrown.
    public static func apply(
        from source: SegmentationModel, sourcePath: String, sourceClassNames: [String]?,
        into target: SegmentationModel, targetPath: String, targetClassNames: [String],
        resetHead: Bool, labelMap: LabelMap?
    ) throws -> TransferReport {
        let s = source.config
        let t = target.config
        let sNames = sourceClassNames?.count == s.classes ? sourceClassNames! : (0..<s.classes).map { "class \($0)" }
        let tNames = targetClassNames.count == t.classes ? targetClassNames : (0..<t.classes).map { "class \($0)" }
        func describe(_ names: [String]) -> String { names.joined(separator: ", ") }
        if resetHead && labelMap != nil {
            throw AttunetError(
                "--label-map and --reset-head exclude each other: the map copies the output layers' class rows, --reset-head starts them fresh"
            )
        }
        var map: LabelMap?
        if let given = labelMap {
            map = try check(
                given, sourcePath: sourcePath, sourceNames: sNames, targetPath: targetPath, targetNames: tNames)
        } else if s.classes != t.classes && !resetHead {
            throw AttunetError(
                "\(sourcePath): the checkpoint has \(s.classes) classes (\(describe(sNames))), the store \(targetPath) has \(t.classes) (\(describe(tNames))); pass --reset-head to start the output layers (dsv1-dsv4, final) fresh, or --label-map SRC:DST,... to copy the rows of matching classes"
            )
        }
        let identityGates = t.kind.hasAttentionGates && !s.kind.hasAttentionGates && t.passThroughGates
        var rows: [TensorTransfer] = []
        var staged: [(dst: UnsafeMutablePointer<Float>, values: [Float])] = []
        for (tStore, sStore) in [(target.params, source.params), (target.buffers, source.buffers)] {
            let isParam = tStore === target.params
            for e in tStore.entries {
                let params = isParam ? e.count : 0
                if isHead(e.name) {
                    guard let se = sStore.entry(named: e.name) else {
                        throw AttunetError("\(sourcePath): missing tensor \(e.name) (not an attunet network?)")
                    }
                    if resetHead {
                        rows.append(
                            TensorTransfer(
                                name: e.name, action: .fresh, parameters: params,
                                why: "--reset-head: the checkpoint has \(s.classes) classes, the store \(t.classes)"))
                    } else if let map {
                        if e.name != "final.weight" && Array(se.shape.dropFirst()) != Array(e.shape.dropFirst()) {
                            _ = try copy(e, se, of: sStore, sourcePath: sourcePath, s, t)  // throws: other filters
                        }
                        staged.append(
                            (
                                e.pointer(in: tStore),
                                classRows(
                                    e, se, of: sStore, map: map, sourceClasses: s.classes, targetClasses: t.classes)
                            ))
                        rows.append(
                            TensorTransfer(
                                name: e.name, action: .classRows, parameters: params, why: "--label-map \(map)"))
                    } else {
                        staged.append(
                            (e.pointer(in: tStore), try copy(e, se, of: sStore, sourcePath: sourcePath, s, t)))
                        rows.append(TensorTransfer(name: e.name, action: .copied, parameters: params))
                    }
                } else if let se = sStore.entry(named: e.name) {
                    staged.append((e.pointer(in: tStore), try copy(e, se, of: sStore, sourcePath: sourcePath, s, t)))
                    rows.append(TensorTransfer(name: e.name, action: .copied, parameters: params))
                } else if identityGates && isPassThroughTensor(e.name) {
                    rows.append(
                        TensorTransfer(
                            name: e.name, action: .passThrough, parameters: params,
                            why: "not in the \(s.kind.rawValue) checkpoint; --pass-through-gates (below)"))
                } else {
                    let hint =
                        t.kind.hasAttentionGates && !t.passThroughGates
                        ? " (--pass-through-gates: start the gates as a pass-through)" : ""
                    rows.append(
                        TensorTransfer(
                            name: e.name, action: .fresh, parameters: params,
                            why: "not in the \(s.kind.rawValue) checkpoint: seeded initialisation"
                                + (isPassThroughTensor(e.name) ? hint : "")))
                }
            }
        }
        for (sStore, tStore) in [(source.params, target.params), (source.buffers, target.buffers)] {
            for e in sStore.entries where tStore.entry(named: e.name) == nil {
                rows.append(
                    TensorTransfer(name: e.name, action: .unused, parameters: 0, why: "not part of \(t.kind.rawValue)"))
            }
        }
        for (dst, values) in staged { dst.update(from: values, count: values.count) }
        if identityGates { passThrough(target) }
        return TransferReport(
            source: sourcePath, sourceWeightsSHA256: Checkpoint.weightsDigest(source), sourceModel: s,
            sourceClassNames: sNames, targetClassNames: tNames, labelMap: map, tensors: rows)
    }

    /// The label map checked against the checkpoint's and the store's classes, with `0:0` added: every id
    /// must exist on its side, no class may appear twice, and every store class needs a checkpoint class.
    public static func check(
        _ given: LabelMap, sourcePath: String, sourceNames: [String], targetPath: String,
        targetNames: [String], sourceKind: String = "checkpoint"
    ) throws -> LabelMap {
        func classes(_ names: [String]) -> String { "0-\(names.count - 1) (\(names.joined(separator: ", ")))" }
        for p in given.pairs {
            guard p.source < sourceNames.count else {
                throw AttunetError(
                    "\(sourcePath): --label-map \(p) names class \(p.source), but the \(sourceKind) has classes \(classes(sourceNames))"
                )
            }
            guard p.target < targetNames.count else {
                throw AttunetError(
                    "\(targetPath): --label-map \(p) names class \(p.target), but the store has classes \(classes(targetNames))"
                )
            }
        }
        let map = given.withBackground
        for side in [\LabelMap.Pair.source, \LabelMap.Pair.target] {
            let ids = map.pairs.map { $0[keyPath: side] }
            if let twice = ids.first(where: { id in ids.filter { $0 == id }.count > 1 }) {
                let which = side == \LabelMap.Pair.source ? "checkpoint" : "store"
                throw AttunetError(
                    "--label-map \(given): the \(which) class \(twice) appears twice (each class maps once)")
            }
        }
        if let missing = (0..<targetNames.count).first(where: { t in !map.pairs.contains { $0.target == t } }) {
            throw AttunetError(
                "\(targetPath): --label-map \(given) gives the store's class \(missing) (\(targetNames[missing])) no checkpoint class; map one to it, or pass --reset-head instead to start the output layers fresh"
            )
        }
        return map
    }

    /// The source tensor's values in our layout, after checking its shape against the target's.
    static func copy(
        _ e: ParameterEntry, _ se: ParameterEntry, of store: ParameterStore, sourcePath: String,
        _ s: ModelConfig, _ t: ModelConfig
    ) throws -> [Float] {
        guard se.shape == e.shape else {
            throw AttunetError(
                "\(sourcePath): tensor \(e.name) has shape \(StateDict.torchShape(se.shape)) in the checkpoint (\(s.kind.rawValue), feature scale \(formatScale(s.featureScale)), \(s.inChannels) input channel(s)) but \(StateDict.torchShape(e.shape)) here (\(t.kind.rawValue), feature scale \(formatScale(t.featureScale)), \(t.inChannels) input channel(s)); --init needs the same filters and input channels"
            )
        }
        return Array(UnsafeBufferPointer(start: se.pointer(in: store), count: se.count))
    }

    /// An output layer's values with the rows (and, for `final`, whose inputs are the four deep-supervision
    /// maps of every class, the columns) of each store class taken from its checkpoint class.
    static func classRows(
        _ e: ParameterEntry, _ se: ParameterEntry, of store: ParameterStore, map: LabelMap,
        sourceClasses sc: Int, targetClasses tc: Int
    ) -> [Float] {
        let src = se.pointer(in: store)
        var sourceOf = [Int](repeating: 0, count: tc)
        for p in map.pairs { sourceOf[p.target] = p.source }
        var out = [Float](repeating: 0, count: e.count)
        let columns = e.count / tc  // a bias has one column; a 1x1x1 conv weight has its input channels
        let isFinalWeight = e.name == "final.weight"
        for t in 0..<tc {
            let s = sourceOf[t]
            for c in 0..<columns {
                // final's input channel j*classes + k is deep-supervision map j (dsv1..dsv4) of class k.
                let sc2 = isFinalWeight ? (c / tc) * sc + sourceOf[c % tc] : c
                out[t * columns + c] = src[s * (se.count / sc) + sc2]
            }
        }
        return out
    }

    /// Whether `name` is set by ``passThrough(_:)``: an attention gate's ψ and W, and the combine convolution.
    static func isPassThroughTensor(_ name: String) -> Bool {
        name.hasPrefix("attentionblock") && [".psi.", ".W.", ".combine_gates."].contains { name.contains($0) }
    }

    /// Makes every attention block pass its skip input through unchanged in evaluation mode: ψ's weights 0 and
    /// its bias 3, so α = σ(3) ≈ 0.953 at every voxel (the gates can still learn both ways: ψ gets gradients
    /// at once, θ and φ once ψ moves); W = I/α (1x1x1 conv, bias 0), so W(α·x) = x; the combine convolution
    /// averages the two gates ([I/2, I/2], bias 0); every BN of the blocks has γ = √(1 + eps), β = 0 and
    /// running mean 0 / variance 1, the identity in evaluation mode; the combine's ReLU passes the skip
    /// (already a ReLU output) unchanged. θ, φ and the gating signal keep their seeded values. In training mode
    /// the BNs normalise with batch statistics, so only evaluation mode reproduces the U-Net exactly.
    public static func passThrough(_ model: SegmentationModel) {
        let alpha = 1 / (1 + Foundation.exp(-Double(passThroughBias)))
        for block in model.attentionBlocks {
            for gate in [block.gate1, block.gate2] {
                gate.psi.weight.value.update(repeating: 0, count: gate.psi.weight.count)
                gate.psi.bias!.value.pointee = passThroughBias
                diagonal(gate.wConv, Float(1 / alpha), blocks: 1)
                identity(gate.wBN)
            }
            diagonal(block.combine.conv, 0.5, blocks: 2)
            identity(block.combine.bn)
        }
    }

    /// A 1x1x1 convolution whose output channel o is `value` × the sum of input channels o, o + C, …
    /// (`blocks` of them), bias 0.
    static func diagonal(_ conv: Conv3d, _ value: Float, blocks: Int) {
        let w = conv.weight.value
        let cout = conv.outChannels
        let cin = conv.inChannels
        w.update(repeating: 0, count: cout * cin)
        for o in 0..<cout { for b in 0..<blocks { w[o * cin + b * cout + o] = value } }
        conv.bias?.value.update(repeating: 0, count: cout)
    }

    /// BN as the identity in evaluation mode: γ = √(1 + eps), β = 0, running mean 0 and variance 1.
    static func identity(_ bn: BatchNorm3d) {
        bn.weight.value.update(repeating: Float((1 + bn.eps).squareRoot()), count: bn.channels)
        bn.bias.value.update(repeating: 0, count: bn.channels)
        bn.runningMean.value.update(repeating: 0, count: bn.channels)
        bn.runningVar.value.update(repeating: 1, count: bn.channels)
    }
}

extension ParameterEntry {
    /// Where this entry's values live in `store`.
    func pointer(in store: ParameterStore) -> UnsafeMutablePointer<Float> { store.values.pointer + offset }
}

/// 3.82 → "3.82", 4 → "4".
func formatScale(_ v: Double) -> String { v == v.rounded() ? String(Int(v)) : String(v) }

/// 6473322 → "6,473,322": parameter counts in tables and progress lines.
public func grouped(_ n: Int) -> String {
    let s = String(n)
    var out = ""
    for (i, ch) in s.enumerated() {
        if i > 0 && (s.count - i) % 3 == 0 { out.append(",") }
        out.append(ch)
    }
    return out
}

extension String {
    var trimmingTrailingSpaces: String {
        var s = self
        while s.last == " " { s.removeLast() }
        return s
    }
}
