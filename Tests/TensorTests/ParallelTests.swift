import Foundation
import Tensor
import XCTest

/// `parallelFor` on the CThreadPool workers: every item exactly once on any thread count, loops of every size
/// back to back (the workers spin between them, then sleep), nested loops inline inside a parallel loop's items,
/// per-thread indices in range, and `parallelForPieces` covering every element with a partition that does not
/// depend on the thread count.
final class ParallelTests: XCTestCase {
    override func tearDown() { Parallelism.threads = 1 }

    func testEveryItemRunsOnceOnAnyThreadCount() {
        for threads in [1, 2, 3, 5] {
            Parallelism.threads = threads
            for round in 0..<400 {
                let n = 1 + (round * 37) % 113
                let hits = UnsafeMutablePointer<Int>.allocate(capacity: n)
                hits.initialize(repeating: 0, count: n)
                defer { hits.deallocate() }
                let counts = UncheckedSendable(hits)
                let badIndex = UnsafeMutablePointer<Int>.allocate(capacity: 1)
                badIndex.pointee = 0
                defer { badIndex.deallocate() }
                let bad = UncheckedSendable(badIndex)
                parallelFor(n) { i in
                    counts.value[i] += 1  // one item per slot: no two threads write the same one
                    let t = Parallelism.threadIndex
                    if t < 0 || t >= min(threads, n) { bad.value.pointee = 1 }
                    // A nested loop runs inline on this thread inside an item of a parallel loop. A loop of one
                    // item runs inline itself, not as a pool's item, so its nested loop may take the workers.
                    let inner = UnsafeMutablePointer<Int>.allocate(capacity: 3)
                    inner.initialize(repeating: -1, count: 3)
                    defer { inner.deallocate() }
                    let ran = UncheckedSendable(inner)
                    parallelFor(3) { j in ran.value[j] = Parallelism.threadIndex }
                    for j in 0..<3 where inner[j] < 0 || (min(threads, n) > 1 && inner[j] != t) {
                        bad.value.pointee = 1
                    }
                }
                XCTAssertEqual((0..<n).filter { hits[$0] != 1 }, [], "threads \(threads), n \(n)")
                XCTAssertEqual(badIndex.pointee, 0, "threads \(threads), n \(n): thread index or nested loop")
            }
            usleep(2000)  // workers fall asleep between some loops, then wake for the next
            var total = 0
            let sum = UnsafeMutablePointer<Int>.allocate(capacity: 64)
            defer { sum.deallocate() }
            sum.initialize(repeating: 0, count: 64)
            let s = UncheckedSendable(sum)
            parallelFor(64) { i in s.value[i] = i }
            for i in 0..<64 { total += sum[i] }
            XCTAssertEqual(total, 64 * 63 / 2, "after sleeping, threads \(threads)")
        }
    }

    func testPiecesCoverEveryElementWithTheSamePartitionOnAnyThreadCount() {
        let length = 3 * parallelPieceLength + 17
        let planes = 5
        var seen: [[Range<Int>]] = []
        for threads in [1, 2, 7] {
            Parallelism.threads = threads
            let marks = UnsafeMutablePointer<UInt8>.allocate(capacity: planes * length)
            marks.initialize(repeating: 0, count: planes * length)
            defer { marks.deallocate() }
            let m = UncheckedSendable(marks)
            let ranges = UnsafeMutablePointer<Range<Int>>.allocate(capacity: planes * 4)
            defer { ranges.deallocate() }
            let r = UncheckedSendable(ranges)
            parallelForPieces(planes: planes, length: length) { plane, range in
                for i in range { m.value[plane * length + i] += 1 }
                r.value[plane * 4 + range.lowerBound / parallelPieceLength] = range
            }
            XCTAssertTrue((0..<(planes * length)).allSatisfy { marks[$0] == 1 }, "threads \(threads)")
            seen.append((0..<(planes * 4)).map { ranges[$0] })
        }
        XCTAssertEqual(seen[0], seen[1])
        XCTAssertEqual(seen[0], seen[2])
        XCTAssertEqual(pieceCount(length), 4)
    }

    func testWorkSplitCutsTheWantedItemsEarlierDimensionsFirst() {
        let m = Double(WorkSplit.minimumItemWork)
        // Plenty of work: 128 items, the first dimension takes all it can, the next the rest.
        XCTAssertEqual(WorkSplit.parts(work: 1e12, limits: [2, 9, 16]), [2, 9, 8])
        XCTAssertEqual(WorkSplit.parts(work: 1e12, limits: [200, 4]), [128, 1])
        // Limits below the target: every dimension at its limit.
        XCTAssertEqual(WorkSplit.parts(work: 1e12, limits: [2, 3, 4]), [2, 3, 4])
        // Little work: no item below the minimum, and at least one item.
        XCTAssertEqual(WorkSplit.wantedItems(work: 10 * m), 10)
        XCTAssertEqual(WorkSplit.parts(work: 10 * m, limits: [2, 64]), [2, 5])
        XCTAssertEqual(WorkSplit.parts(work: 0.5 * m, limits: [2, 64]), [1, 1])
        XCTAssertEqual(WorkSplit.parts(work: 1e12, limits: [0, 1]), [1, 1])
    }

    func testAlignedRangesCoverOnceOnAlignedBoundaries() {
        for (count, parts) in [(600, 9), (1000, 7), (17, 4), (5, 3), (16, 1), (0, 3)] {
            let r = alignedRanges(count, parts: parts, align: 16)
            XCTAssertEqual(r.flatMap { Array($0) }, Array(0..<count), "\(count) / \(parts)")
            XCTAssertTrue(r.allSatisfy { $0.lowerBound % 16 == 0 && !$0.isEmpty }, "\(count) / \(parts)")
            XCTAssertEqual(r.count, min(parts, (count + 15) / 16), "\(count) / \(parts)")
        }
    }

    func testCountOnlyCountsLoopsAsPartitionedWithoutRunningThem() {
        Parallelism.threads = 32
        var ran = 0
        LoopCount.start()
        LoopCount.countOnly {
            parallelFor(100) { _ in ran += 1 }
            parallelForPieces(planes: 3, length: 10 * parallelPieceLength) { _, _ in ran += 1 }
            let t = Tensor([1000])
            t.fill(2)
        }
        let counts = LoopCount.stop()
        XCTAssertEqual(ran, 0, "no item runs")
        XCTAssertEqual(counts.loops, 3)
        // 30 pieces, at 32 threads one per item.
        XCTAssertEqual(counts.fewestItems, 1)
        XCTAssertFalse(LoopCount.isDryRun)
        // Outside, loops run again and tensors are zero-filled.
        parallelFor(4) { _ in ran += 1 }
        XCTAssertEqual(ran, 4)
        XCTAssertEqual(Tensor([5]).array, [0, 0, 0, 0, 0])
    }

    func testAddAndFillInPiecesOnAnyThreadCount() {
        let n = 5 * parallelPieceLength + 3
        for threads in [1, 2, 7] {
            Parallelism.threads = threads
            let a = Tensor([n], (0..<n).map { Float($0 % 97) })
            let b = Tensor([n], (0..<n).map { Float($0 % 13) * 0.5 })
            a.add(b)
            XCTAssertEqual(a.array, (0..<n).map { Float($0 % 97) + Float($0 % 13) * 0.5 }, "threads \(threads)")
            a.fill(3)
            XCTAssertTrue(a.array.allSatisfy { $0 == 3 }, "threads \(threads)")
        }
    }
}
