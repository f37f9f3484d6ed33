import Foundation
import XCTest
@testable import Data
import Tensor
import TestSupport

/// FNV-1a (64-bit) over a phantom's size, affine (the bits of each Double), image (as the int16 written) and label.
func phantomDigest(_ cases: [PhantomCase]) -> String {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    func eat(_ b: UInt8) { h ^= UInt64(b); h = h &* 0x100_0000_01b3 }
    func eat64(_ v: UInt64) { for s in stride(from: 0, to: 64, by: 8) { eat(UInt8(truncatingIfNeeded: v >> UInt64(s))) } }
    for c in cases {
        for n in [c.dim.x, c.dim.y, c.dim.z] { eat64(UInt64(n)) }
        for a in c.affine { eat64(a.bitPattern) }
        for v in c.image { let s = UInt16(bitPattern: Int16(v)); eat(UInt8(s & 0xFF)); eat(UInt8(s >> 8)) }
        for l in c.label { eat(l) }
    }
    return String(format: "%016llx", h)
}

final class PhantomKnobTests: XCTestCase {
    /// The arrays of today's generator (before the knobs existed), pinned: with every knob at its default the
    /// phantoms must not change by a bit (the project's regression checks digest `synth` output).
    func testDefaultsUnchanged() {
        let cases = (0..<2).map { Phantom.generate(seed: 3, index: $0, scale: 0.5) }
        XCTAssertEqual(phantomDigest(cases), "ebc53e9568d60cf0")
    }
}
