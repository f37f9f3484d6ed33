import Foundation
import Support

/// One case of an input dataset: an image file and (normally) its label file.
public struct CaseFiles: Sendable, Equatable {
    public var id: String
    public var image: String
    public var label: String?
    public init(id: String, image: String, label: String?) {
        self.id = id
        self.image = image
        self.label = label
    }
}

/// A bad input of one case, reported as one line naming the file: "<file>: <problem>".
public struct CaseProblem: CustomStringConvertible, Sendable {
    public var caseID: String
    /// "<file>: <problem>".
    public var message: String
    public init(caseID: String, message: String) {
        self.caseID = caseID
        self.message = message
    }
    public var description: String { message }
}

/// The cases of a dataset folder, found and paired by name.
public struct DatasetInput: Sendable {
    public var cases: [CaseFiles]
    /// Class names from dataset.json (index = label value), when it has them.
    public var classNames: [String]?
    public var modality: String?
    /// Files that could not be paired (a label without an image); each is a bad input.
    public var problems: [CaseProblem]

    static let suffixes = [".nii.gz", ".nii"]

    /// The case id of a NIfTI file name: the name without `.nii.gz` or `.nii`, and with `dropChannel` (an
    /// image's name, ``caseID(fileName:)``) also without nnU-Net's channel suffix ("case_0000.nii.gz" ->
    /// "case"); without it (a label's or a prediction's name, as `prepare` pairs labels) the suffix stays
    /// ("case_0001.nii.gz" -> "case_0001"). Nil for files that are not NIfTI or are hidden (macOS "._" files
    /// in the Decathlon archives).
    public static func caseID(_ name: String, dropChannel: Bool) -> String? {
        guard !name.hasPrefix("."), let suf = suffixes.first(where: { name.hasSuffix($0) }) else { return nil }
        var id = String(name.dropLast(suf.count))
        if dropChannel, channel(ofStem: id) != nil { id = String(id.dropLast(5)) }
        return id
    }

    /// The case id of an image file name, by the one rule `prepare`, `predict` and `evaluate` share: the name
    /// without `.nii` / `.nii.gz` and without nnU-Net's 4-digit channel suffix (`case_0000.nii.gz` → `case`);
    /// nil for files that are not NIfTI or are hidden.
    public static func caseID(fileName: String) -> String? { caseID(fileName, dropChannel: true) }

    /// nnU-Net's channel index of an image file name (`case_0001.nii.gz` → 1), nil when it has no suffix.
    public static func channel(fileName name: String) -> Int? {
        guard let suf = suffixes.first(where: { name.hasSuffix($0) }) else { return nil }
        return channel(ofStem: String(name.dropLast(suf.count)))
    }

    static func channel(ofStem id: String) -> Int? {
        guard id.count > 5, id.suffix(5).first == "_", id.suffix(4).allSatisfy(\.isNumber) else { return nil }
        return Int(id.suffix(4))
    }

    /// Refuses an image file of a second or later input channel (`_0001` and up): attunet's models take one
    /// channel, and such a file would otherwise be taken for, or merged with, its case's first channel.
    public static func checkSingleChannel(_ path: String) throws {
        let name = (path as NSString).lastPathComponent
        if let c = channel(fileName: name), c > 0 {
            throw AttunetError(
                "\(path): input channel \(c) (nnU-Net's _\(String(format: "%04d", c)) suffix); attunet's models take one channel (CT, _0000), and multi-channel input is not supported; if the digits belong to the case name, add the channel suffix (\(caseID(name, dropChannel: false) ?? name)_0000.nii.gz)"
            )
        }
    }

    /// A Decathlon / nnU-Net folder: `dataset.json` (optional: labels, modality, training list) with
    /// `imagesTr/` and `labelsTr/`. Without a training list in dataset.json the folders are paired by name.
    public static func folder(_ dir: String) throws -> DatasetInput {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw AttunetError("\(dir): no such folder")
        }
        var classNames: [String]? = nil
        var modality: String? = nil
        var listed: [CaseFiles]? = nil
        let jsonPath = dir + "/dataset.json"
        if fm.fileExists(atPath: jsonPath) {
            guard let data = fm.contents(atPath: jsonPath),
                let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
            else {
                throw AttunetError("\(jsonPath): not valid JSON")
            }
            classNames = parseLabels(obj["labels"])
            for key in ["modality", "channel_names"] {
                guard let m = obj[key] as? [String: Any] else { continue }
                if m.count > 1 {
                    throw AttunetError(
                        "\(jsonPath): \(m.count) input channels in \"\(key)\" (\(m.keys.sorted().map { "\($0): \(m[$0]!)" }.joined(separator: ", "))); attunet's models take one channel, and multi-channel input is not supported"
                    )
                }
                modality = m["0"] as? String
            }
            if let training = obj["training"] as? [[String: Any]], !training.isEmpty {
                listed = try training.map { entry in
                    guard let img = entry["image"] as? String else {
                        throw AttunetError("\(jsonPath): a training entry has no \"image\"")
                    }
                    let path = resolve(dir, img)
                    let name = (path as NSString).lastPathComponent
                    let lab = (entry["label"] as? String).map { resolve(dir, $0) }
                    return CaseFiles(id: caseID(name, dropChannel: false) ?? name, image: path, label: lab)
                }
            }
        }
        if let listed {
            // Decathlon lists "./imagesTr/x.nii.gz"; nnU-Net v2 stores x_0000.nii.gz: accept either on disk.
            let fixed = listed.map { c -> CaseFiles in
                var c = c
                if !fm.fileExists(atPath: c.image) {
                    for suf in suffixes where c.image.hasSuffix(suf) {
                        let alt = String(c.image.dropLast(suf.count)) + "_0000" + suf
                        if fm.fileExists(atPath: alt) { c.image = alt }
                    }
                }
                return c
            }
            return DatasetInput(
                cases: fixed.sorted { $0.id < $1.id }, classNames: classNames, modality: modality, problems: [])
        }
        var r = try folders(images: dir + "/imagesTr", labels: dir + "/labelsTr")
        r.classNames = classNames
        r.modality = modality
        return r
    }

    static func resolve(_ dir: String, _ p: String) -> String {
        if p.hasPrefix("/") { return p }
        var rel = p
        while rel.hasPrefix("./") { rel.removeFirst(2) }
        return dir + "/" + rel
    }

    /// dataset.json "labels": {"0": "background", ...} (Decathlon) or {"background": 0, ...} (nnU-Net v2).
    static func parseLabels(_ any: Any?) -> [String]? {
        guard let dict = any as? [String: Any], !dict.isEmpty else { return nil }
        var byIndex: [Int: String] = [:]
        for (k, v) in dict {
            if let i = Int(k), let name = v as? String {
                byIndex[i] = name
            } else if let i = v as? Int {
                byIndex[i] = k
            } else if let a = v as? [Int], let i = a.first {
                byIndex[i] = k
            }
        }
        guard let maxIndex = byIndex.keys.max(), maxIndex < 256 else { return nil }
        return (0...maxIndex).map { byIndex[$0] ?? "class\($0)" }
    }

    /// Two folders of `.nii` / `.nii.gz` files paired by name (an image's nnU-Net `_0000` suffix is ignored).
    /// An image without a label is kept with `label: nil` (reported when converted); a label without an
    /// image is a problem.
    public static func folders(images: String, labels: String) throws -> DatasetInput {
        func list(_ d: String, dropChannel: Bool) throws -> [String: String] {
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: d) else {
                throw AttunetError("\(d): no such folder")
            }
            var out: [String: String] = [:]
            for n in names.sorted() {
                guard let id = caseID(n, dropChannel: dropChannel) else { continue }
                if dropChannel { try checkSingleChannel(d + "/" + n) }
                out[id] = d + "/" + n
            }
            return out
        }
        let imgs = try list(images, dropChannel: true)
        let labs = try list(labels, dropChannel: false)
        let cases = imgs.keys.sorted().map { CaseFiles(id: $0, image: imgs[$0]!, label: labs[$0]) }
        let orphans = labs.keys.filter { imgs[$0] == nil }.sorted().map {
            CaseProblem(caseID: $0, message: "\(labs[$0]!): label has no matching image in \(images)")
        }
        if cases.isEmpty && orphans.isEmpty { throw AttunetError("\(images): no .nii or .nii.gz images") }
        return DatasetInput(cases: cases, classNames: nil, modality: nil, problems: orphans)
    }
}
