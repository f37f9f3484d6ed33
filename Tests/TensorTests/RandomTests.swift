import Tensor
import XCTest

/// SeededRNG (xoshiro256** seeded through SplitMix64): keyed, stable streams.
final class RandomTests: XCTestCase {
    func testSeededStreamsAreKeyedAndStable() {
        var a = SeededRNG(1, 2, 3)
        var b = SeededRNG(1, 2, 3)
        var c = SeededRNG(1, 3, 2)
        let xa = (0..<5).map { _ in a.next() }
        let xb = (0..<5).map { _ in b.next() }
        let xc = (0..<5).map { _ in c.next() }
        XCTAssertEqual(xa, xb)
        XCTAssertNotEqual(xa, xc)
        // Pinned values: the generator must give the same stream on every platform and release.
        var p = SeededRNG(42)
        let pinned = (0..<3).map { _ in p.next() }
        // (values from an independent Python implementation of the seeding + xoshiro256**)
        XCTAssertEqual(pinned, [8_975_978_926_199_676_397, 4_692_327_400_128_112_391, 1_129_482_559_164_619_679])
        var r = SeededRNG(7)
        var hist = [Int](repeating: 0, count: 5)
        for _ in 0..<50_000 { hist[r.below(5)] += 1 }
        XCTAssertTrue(hist.allSatisfy { abs($0 - 10_000) < 500 }, "\(hist)")
        var s9 = SeededRNG(9)
        XCTAssertEqual(s9.permutation(10).sorted(), Array(0..<10))
    }
}
