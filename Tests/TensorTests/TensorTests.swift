import Tensor
import XCTest

/// The Tensor type itself and SplitMix64, the seeding generator under SeededRNG.
final class TensorTests: XCTestCase {
    func testTensorStorage() {
        let t = Tensor([2, 3, 4])
        XCTAssertEqual(t.count, 24)
        XCTAssertEqual(t.array, [Float](repeating: 0, count: 24), "a new tensor is zero-filled")
        XCTAssertEqual(Int(bitPattern: t.pointer) % 64, 0, "64-byte aligned")
        let v = (0..<24).map { Float($0) - 11.5 }
        let u = Tensor([2, 3, 4], v)
        XCTAssertEqual(u.array, v)
        XCTAssertEqual(u.maxAbs, 11.5)
        let c = u.clone()
        c.data[0] = 99
        XCTAssertEqual(u.data[0], -11.5, "a clone owns its data")
        XCTAssertEqual(c.shape, u.shape)
        u.reshape([6, 4])
        XCTAssertEqual(u.shape, [6, 4])
        XCTAssertEqual(u.array, v, "reshape keeps the data")
        u.fill(2)
        XCTAssertEqual(u.array, [Float](repeating: 2, count: 24))
        t.copy(from: c)
        XCTAssertEqual(t.array, c.array)
        t.zero()
        XCTAssertEqual(t.maxAbs, 0)
        XCTAssertEqual(Tensor([0]).maxAbs, 0)
    }

    /// Pinned values of the published SplitMix64 (Steele, Lea, Flood; Vigna's splitmix64.c), from an
    /// independent Python implementation: every seeded stream of attunet starts here.
    func testSplitMix64MatchesTheReference() {
        var a = SplitMix64(0)
        XCTAssertEqual((0..<3).map { _ in a.next() }, [16294208416658607535, 7960286522194355700, 487617019471545679])
        var b = SplitMix64(1234567)
        XCTAssertEqual((0..<3).map { _ in b.next() }, [6457827717110365317, 3203168211198807973, 9817491932198370423])
        XCTAssertEqual(SplitMix64.mix(42), 13679457532755275413)
    }
}
