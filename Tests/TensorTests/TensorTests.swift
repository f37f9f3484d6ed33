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

    /// Recycled tensors: a request takes the smallest free block that holds it and splits off the rest, freed
    /// neighbours merge again, contents are not cleared, and only a request no free block holds allocates.
    func testRecycledTensorsReuseSplitAndMergeBlocks() {
        TensorPool.settle()
        TensorPool.trim()
        XCTAssertEqual(TensorPool.reservedBytes, 0, "a test before this one left recycled tensors alive")
        var big: Tensor? = Tensor.recycled([10, 10])  // 112 floats (64-byte blocks)
        let bigAddress = big!.pointer
        big!.fill(7)
        var small: Tensor? = Tensor.recycled([10])  // 16
        let smallAddress = small!.pointer
        XCTAssertEqual(Int(bitPattern: smallAddress) % 64, 0, "64-byte aligned")
        big = nil
        small = nil
        XCTAssertEqual(TensorPool.cachedBytes, 4 * 128)
        let fresh = TensorPool.freshAllocations
        var a: Tensor? = Tensor.recycled([30])  // 32 of the 112: the 16 is too small
        XCTAssertEqual(a!.pointer, bigAddress)
        XCTAssertEqual(a!.data[29], 7, "a recycled buffer keeps its old contents (the caller overwrites them)")
        let b = Tensor.recycled([8])  // the smallest free block that fits: the 16
        XCTAssertEqual(b.pointer, smallAddress)
        var c: Tensor? = Tensor.recycled([10])  // split off the 80 left of the 112
        XCTAssertEqual(c!.pointer, bigAddress + 32)
        XCTAssertEqual(TensorPool.freshAllocations, fresh)
        var d: Tensor? = Tensor.recycled([100])  // 64 free is not enough: a new segment
        XCTAssertEqual(TensorPool.freshAllocations, fresh + 1)
        let dAddress = d!.pointer
        d = nil
        withExtendedLifetime(d) {}
        let e1 = Tensor.recycled([100])  // a and c still hold big's: d's block again
        XCTAssertEqual(e1.pointer, dAddress)
        a = nil
        c = nil  // a, c and the rest merge into the whole 112 again
        let e = Tensor.recycled([100])
        XCTAssertEqual(e.pointer, bigAddress, "merged blocks must serve a request as large as their segment")
        withExtendedLifetime(e1) {}
        XCTAssertEqual(TensorPool.freshAllocations, fresh + 1)
        withExtendedLifetime((a, c, b, e)) {}
        XCTAssertEqual(TensorPool.reservedBytes, 4 * (112 + 16 + 112))
    }

    /// settle() retires the segments the first step grew (each freed once nothing in it is live) and serves
    /// later requests by splitting one segment of the most that was live at once.
    func testSettleServesRequestsFromOneSegmentAndFreesRetiredOnes() {
        TensorPool.settle()
        TensorPool.trim()
        XCTAssertEqual(TensorPool.reservedBytes, 0, "a test before this one left recycled tensors alive")
        var a: Tensor? = Tensor.recycled([1000])  // 1008 floats
        var b: Tensor? = Tensor.recycled([3000])  // 3008; 4000 live at most
        b = nil
        TensorPool.settle(slack: 1)  // b's segment freed, a's retired, one of 4000 added
        XCTAssertEqual(TensorPool.reservedBytes, 4 * (1008 + 4000))
        let fresh = TensorPool.freshAllocations
        let c = Tensor.recycled([2992])
        let d = Tensor.recycled([992])
        XCTAssertEqual(d.pointer, c.pointer + 2992, "both split from the one segment")
        XCTAssertEqual(TensorPool.freshAllocations, fresh)
        XCTAssertNotNil(a, "a holds the retired segment until here")
        a = nil  // the retired segment goes back to the system
        XCTAssertEqual(TensorPool.reservedBytes, 4 * 4000)
        withExtendedLifetime((b, c, d)) {}
    }

    /// Pinned values of the published SplitMix64 (Steele, Lea, Flood; Vigna's splitmix64.c), from an
    /// independent Python implementation: every seeded stream of attunet starts here.
    func testSplitMix64MatchesTheReference() {
        var a = SplitMix64(0)
        XCTAssertEqual(
            (0..<3).map { _ in a.next() },
            [16_294_208_416_658_607_535, 7_960_286_522_194_355_700, 487_617_019_471_545_679])
        var b = SplitMix64(1_234_567)
        XCTAssertEqual(
            (0..<3).map { _ in b.next() },
            [6_457_827_717_110_365_317, 3_203_168_211_198_807_973, 9_817_491_932_198_370_423])
        XCTAssertEqual(SplitMix64.mix(42), 13_679_457_532_755_275_413)
    }
}

/// The pool's plan for a step that repeats, cutting tensors in place, and the count of tensor memory.
final class TensorPoolPlanTests: XCTestCase {
    override func setUp() {
        TensorPool.settle()
        TensorPool.trim()
        XCTAssertEqual(TensorPool.reservedBytes, 0, "a test before this one left recycled tensors alive")
    }

    /// a and b (300 each) live, a freed, c (900) taken: best fit leaves a's 300 as a hole below c and reaches
    /// 1500; the peak live is 1200.
    private func holeStep() -> [UnsafeMutablePointer<Float>] {
        let unit = 16
        var a: Tensor? = Tensor.recycled([300 * unit])
        let b = Tensor.recycled([300 * unit])
        let aAddress = a!.pointer
        a = nil
        let c = Tensor.recycled([900 * unit])
        return [aAddress, b.pointer, c.pointer]
    }

    /// After beginStep, settle lays the recorded step out so that it needs no more than its peak live (best
    /// fit needs 1500 for 1200), writes to that part once, and every later step goes to the same places without
    /// a new allocation.
    func testSettleLaysOutARecordedStepWithinItsPeak() {
        let bytes = 4 * 16
        TensorPool.beginStep()
        _ = holeStep()
        TensorPool.settle(slack: 1)
        XCTAssertEqual(TensorPool.reservedBytes, 1200 * bytes, "the plan's high-water mark is the step's peak")
        XCTAssertEqual(TensorPool.touchedBytes, 1200 * bytes)
        let fresh = TensorPool.freshAllocations
        let second = holeStep()
        for _ in 0..<3 { XCTAssertEqual(holeStep(), second, "every step in the same places") }
        XCTAssertEqual(TensorPool.freshAllocations, fresh)
        XCTAssertEqual(TensorPool.touchedBytes, 1200 * bytes, "nothing beyond the plan was touched")
        // c below b: a (freed before c comes) shares c's place.
        XCTAssertEqual(second[2] + 900 * 16, second[1])
        XCTAssertEqual(second[0], second[2])
    }

    /// Without beginStep the settle sizes its segment for best fit on the requests since the last settle: here
    /// more than the peak live, because of the hole.
    func testSettleWithoutARecordedStepSizesForBestFit() {
        _ = holeStep()
        TensorPool.settle(slack: 1)
        XCTAssertEqual(TensorPool.reservedBytes, 1500 * 4 * 16)
        let fresh = TensorPool.freshAllocations
        for _ in 0..<3 { _ = holeStep() }
        XCTAssertEqual(TensorPool.freshAllocations, fresh)
    }

    /// A tensor a step keeps into the next one (freed there after its successor is taken) alternates between
    /// two places of the plan: no allocation in the steady state.
    func testBlocksHeldIntoTheNextStepAlternateBetweenTwoPlaces() {
        var held: Tensor?
        func step() -> UnsafeMutablePointer<Float> {
            let kept = Tensor.recycled([64])
            let scratch = Tensor.recycled([128])
            held = kept  // the previous step's is freed here
            return withExtendedLifetime(scratch) { kept.pointer }
        }
        TensorPool.beginStep()
        _ = step()
        TensorPool.settle(slack: 1)
        let fresh = TensorPool.freshAllocations
        let places = (0..<6).map { _ in step() }
        XCTAssertEqual(TensorPool.freshAllocations, fresh)
        XCTAssertNotEqual(places[0], places[1])
        XCTAssertEqual(Array(places[2...]), [places[0], places[1], places[0], places[1]])
        XCTAssertEqual(
            TensorPool.reservedBytes, 4 * (64 + 64 + 128), "two places for the held one, one for the scratch")
        withExtendedLifetime(held) {}
    }

    /// shrink cuts a recycled tensor nobody else holds to its first elements and gives the rest back.
    func testShrinkKeepsThePrefixAndGivesTheRestBack() {
        var t = Tensor.recycled([2, 8, 16])
        for i in 0..<t.count { t.data[i] = Float(i) }
        let p = t.pointer
        XCTAssertTrue(Tensor.isSoleRecycled(&t))
        Tensor.shrink(&t, to: [2, 4, 16])
        XCTAssertEqual(t.shape, [2, 4, 16])
        XCTAssertEqual(t.pointer, p)
        XCTAssertEqual(t.array, (0..<128).map(Float.init))
        let fresh = TensorPool.freshAllocations
        let u = Tensor.recycled([128])
        XCTAssertEqual(u.pointer, p + 128, "the rest went back to the pool")
        XCTAssertEqual(TensorPool.freshAllocations, fresh)
        let other = t
        XCTAssertFalse(Tensor.isSoleRecycled(&t), "held twice")
        var owned = Tensor([4])
        XCTAssertFalse(Tensor.isSoleRecycled(&owned), "not recycled")
        withExtendedLifetime((u, other)) {}
    }

    /// TensorMemory counts every tensor's size, recycled or not, and its peak.
    func testTensorMemoryCountsEveryTensor() {
        TensorMemory.resetPeak()
        let base = TensorMemory.liveBytes
        var a: Tensor? = Tensor([1000])
        XCTAssertEqual(TensorMemory.liveBytes, base + 4000)
        var b: Tensor? = Tensor.recycled([500])
        XCTAssertEqual(TensorMemory.liveBytes, base + 6000)
        a = nil
        b = nil
        XCTAssertEqual(TensorMemory.liveBytes, base)
        XCTAssertEqual(TensorMemory.peakBytes, base + 6000)
        TensorMemory.resetPeak()
        XCTAssertEqual(TensorMemory.peakBytes, base)
        withExtendedLifetime((a, b)) {}
    }
}
