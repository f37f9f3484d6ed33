import Foundation
import HDF5Kit
import Tensor
import XCTest

/// Reads the PyTorch fixtures in Tests/Fixtures (written by Tests/Fixtures/make_fixtures.py; activations in
/// our [N][C][Z][Y][X] layout, model weights in PyTorch's axis order under /state_dict).
struct Fixture {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    let file: H5File

    init(_ name: String) throws { file = try H5File.open(Fixture.directory.appendingPathComponent(name).path) }

    func tensor(_ path: String) throws -> Tensor {
        let d = try file.root.dataset(path)
        let t = Tensor(d.shape.isEmpty ? [1] : d.shape)
        try d.read(into: t.pointer, as: .float32)
        return t
    }

    /// A scalar dataset (e.g. a loss value).
    func scalar(_ path: String) throws -> Double {
        let d = try file.root.dataset(path)
        var v = 0.0
        try d.read(into: &v, as: .float64)
        return v
    }

    func labels(_ path: String) throws -> [UInt8] {
        let d = try file.root.dataset(path)
        var v = [Int64](repeating: 0, count: d.count)
        try v.withUnsafeMutableBytes { try d.read(into: $0.baseAddress!, as: .int64) }
        return v.map { UInt8($0) }
    }

    func config(_ group: String) throws -> [String: Any] {
        let s = try file.root.group(group).stringAttribute("config")
        return try JSONSerialization.jsonObject(with: Data(s.utf8)) as! [String: Any]
    }
}

/// max |a − b| ≤ tol · max(|b|, tiny): the "max abs error ≤ 1e-4 relative to the output's scale".
/// `scaleFloor` sets the scale for tensors whose true value is 0 (e.g. the gradient of a conv bias that a
/// BatchNorm follows: both implementations give rounding noise there), normally the scale of a sibling tensor.
func assertClose(
    _ a: Tensor, _ b: Tensor, tol: Float = 1e-4, scaleFloor: Float = 1e-6, _ what: String,
    file: StaticString = #filePath, line: UInt = #line
) {
    XCTAssertEqual(a.count, b.count, "\(what): \(a.shape) vs \(b.shape)", file: file, line: line)
    guard a.count == b.count else { return }
    var worst: Float = 0
    var scale: Float = scaleFloor
    for i in 0..<a.count {
        worst = max(worst, abs(a.data[i] - b.data[i]))
        scale = max(scale, abs(b.data[i]))
    }
    XCTAssertLessThanOrEqual(
        worst, tol * scale, "\(what): max abs error \(worst) vs scale \(scale)", file: file, line: line)
}

func assertClose(
    _ a: UnsafeMutablePointer<Float>, _ b: Tensor, tol: Float = 1e-4, _ what: String, file: StaticString = #filePath,
    line: UInt = #line
) {
    let t = Tensor(b.shape)
    t.pointer.update(from: a, count: b.count)
    assertClose(t, b, tol: tol, what, file: file, line: line)
}
