import Evaluation
import Foundation
import Tensor
import TestSupport
import XCTest

/// 3D connected components (6 and 26) against `scipy.ndimage.label`, and keep-largest / remove-small against a
/// numpy reimplementation on scipy's labels.
final class ConnectedComponentsTests: XCTestCase {
    /// A hand-built map where 6- and 26-connectivity differ: an in-plane edge contact and a corner contact
    /// across slices, and a voxel of another label in the gap that must not join anything.
    ///
    ///     slice 0      slice 1
    ///     1 1 0 0      1 0 0 0
    ///     0 2 1 0      0 0 0 0
    ///     0 0 0 0      0 0 0 1
    func testSixAndTwentySixDifferOnDiagonalContacts() {
        let dim = Dim3(z: 2, y: 3, x: 4)
        let map: [UInt8] = [
            1, 1, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0,
            1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        ]
        XCTAssertEqual(ConnectedComponents.components(of: 1, in: map, dim: dim, connectivity: .six).sizes, [3, 1, 1])
        XCTAssertEqual(ConnectedComponents.components(of: 1, in: map, dim: dim, connectivity: .twentySix).sizes, [5])
        XCTAssertEqual(ConnectedComponents.components(of: 2, in: map, dim: dim, connectivity: .twentySix).sizes, [1])
        XCTAssertEqual(ConnectedComponents.components(of: 0, in: map, dim: dim, connectivity: .six).sizes, [18])

        let six = ConnectedComponents.labelVolume(of: 1, in: map, dim: dim, connectivity: .six)
        XCTAssertEqual(six.ids, [1, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3])
        let twentySix = ConnectedComponents.labelVolume(of: 1, in: map, dim: dim, connectivity: .twentySix)
        XCTAssertEqual(twentySix.ids, map.map { $0 == 1 ? 1 : 0 })

        // Keep the largest under 6: the two single voxels go, the other label stays.
        var kept = map
        XCTAssertEqual(ConnectedComponents.keepLargest(1, of: 1, in: &kept, dim: dim, connectivity: .six), 2)
        XCTAssertEqual(kept, [1, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        // Two largest: a tie between the single voxels keeps the one met first in memory order.
        kept = map
        XCTAssertEqual(
            ConnectedComponents.keepLargest(2, of: 1, in: &kept, dim: dim, connectivity: .six, background: 7), 1)
        XCTAssertEqual(kept, [1, 1, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7])
        // Under 26 everything is one component: nothing changes.
        kept = map
        XCTAssertEqual(ConnectedComponents.keepLargest(1, of: 1, in: &kept, dim: dim, connectivity: .twentySix), 0)
        XCTAssertEqual(kept, map)
        kept = map
        XCTAssertEqual(ConnectedComponents.removeSmaller(than: 2, of: 1, in: &kept, dim: dim, connectivity: .six), 2)
        XCTAssertEqual(kept, [1, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        kept = map
        XCTAssertEqual(
            ConnectedComponents.removeSmaller(than: 6, of: 1, in: &kept, dim: dim, connectivity: .twentySix), 5)
        XCTAssertEqual(kept, map.map { $0 == 1 ? 0 : $0 })
    }

    /// Empty grids, a label absent or filling the volume, k = 0, a background equal to the label, and long rows
    /// (the eight-bytes-at-a-time row scan) with runs ending at every offset of a word.
    func testEdgeCases() {
        for c in Connectivity.allCases {
            for dim in [Dim3(z: 0, y: 3, x: 4), Dim3(z: 2, y: 0, x: 4), Dim3(z: 2, y: 3, x: 0)] {
                XCTAssertEqual(ConnectedComponents.components(of: 1, in: [], dim: dim, connectivity: c).count, 0)
                XCTAssertEqual(ConnectedComponents.labelVolume(of: 1, in: [], dim: dim, connectivity: c).ids, [])
                var none: [UInt8] = []
                XCTAssertEqual(ConnectedComponents.keepLargest(0, of: 1, in: &none, dim: dim, connectivity: c), 0)
            }
            let dim = Dim3(z: 3, y: 4, x: 21)
            let full = [UInt8](repeating: 5, count: dim.count)
            XCTAssertEqual(ConnectedComponents.components(of: 5, in: full, dim: dim, connectivity: c).sizes, [252])
            XCTAssertEqual(ConnectedComponents.components(of: 1, in: full, dim: dim, connectivity: c).count, 0)
            var map = full
            XCTAssertEqual(
                ConnectedComponents.keepLargest(1, of: 5, in: &map, dim: dim, connectivity: c, background: 5), 0)
            XCTAssertEqual(ConnectedComponents.keepLargest(0, of: 5, in: &map, dim: dim, connectivity: c), 252)
            XCTAssertEqual(map, [UInt8](repeating: 0, count: dim.count))

            // One row of 40: runs [s, s + len) for every start and length, alone on the row.
            let row = Dim3(z: 1, y: 1, x: 40)
            for s in 0..<40 {
                for len in 1...(40 - s) {
                    var r = [UInt8](repeating: 9, count: 40)
                    for x in s..<(s + len) { r[x] = 3 }
                    let l = ConnectedComponents.labelVolume(of: 3, in: r, dim: row, connectivity: c)
                    XCTAssertEqual(l.components.sizes, [len], "run [\(s), \(s + len))")
                    XCTAssertEqual(l.ids, r.map { $0 == 3 ? 1 : 0 }, "run [\(s), \(s + len))")
                }
            }
        }
    }

    /// Random and structured maps of many shapes against `scipy.ndimage.label` with
    /// `generate_binary_structure(3, 1)` (6) and `(3, 3)` (26): the same partition of the voxels (a one-to-one
    /// map between our ids and scipy's), the same sizes in the order of each component's first voxel, and
    /// keep-the-k-largest / remove-smaller-than equal to numpy applying scipy's labels.
    func testMatchesScipyLabel() throws {
        let dir = try TestEnv.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        struct Case {
            var name: String, dim: Dim3, map: [UInt8], label: UInt8, background: UInt8
        }
        var cases: [Case] = []
        var rng = SeededRNG(23)
        func random(_ dim: Dim3, _ density: Double) -> [UInt8] {
            (0..<dim.count).map { _ in rng.chance(density) ? 1 : 0 }
        }
        let shapes = [
            Dim3(z: 1, y: 1, x: 1), Dim3(z: 1, y: 1, x: 37), Dim3(z: 1, y: 29, x: 1), Dim3(z: 23, y: 1, x: 1),
            Dim3(z: 1, y: 31, x: 45), Dim3(z: 2, y: 40, x: 53), Dim3(z: 3, y: 9, x: 200), Dim3(z: 9, y: 23, x: 31),
            Dim3(z: 16, y: 20, x: 64), Dim3(z: 40, y: 3, x: 2),
        ]
        for dim in shapes {
            for density in [0.08, 0.3, 0.5, 0.75, 0.97] {
                cases.append(
                    Case(
                        name: "random \(dim) p=\(density)", dim: dim, map: random(dim, density), label: 1, background: 0
                    ))
            }
        }
        // Several labels, one analysed; the others are set as background or left alone.
        for dim in [Dim3(z: 11, y: 17, x: 26), Dim3(z: 2, y: 50, x: 50)] {
            let map: [UInt8] = (0..<dim.count).map { _ in UInt8([0, 0, 1, 2, 2, 3][rng.below(6)]) }
            cases.append(Case(name: "labels 0-3 \(dim), label 2", dim: dim, map: map, label: 2, background: 3))
            cases.append(Case(name: "labels 0-3 \(dim), label 0", dim: dim, map: map, label: 0, background: 1))
        }
        // Diagonal contacts only: a 3D checkerboard is one component under 26, single voxels under 6; its
        // in-plane version (every slice the same) too.
        let board = Dim3(z: 7, y: 12, x: 19)
        var checker = [UInt8](repeating: 0, count: board.count)
        var planar = checker
        for z in 0..<board.z {
            for y in 0..<board.y {
                for x in 0..<board.x {
                    checker[(z * board.y + y) * board.x + x] = (x + y + z) % 2 == 0 ? 1 : 0
                    planar[(z * board.y + y) * board.x + x] = (x + y) % 2 == 0 && z % 2 == 0 ? 1 : 0
                }
            }
        }
        cases.append(Case(name: "3D checkerboard", dim: board, map: checker, label: 1, background: 0))
        cases.append(Case(name: "planar checkerboards", dim: board, map: planar, label: 1, background: 0))
        // Structured: ellipsoids with holes and islands, several labels.
        for seed: UInt64 in [3, 8] {
            let maps = Masks.labelMaps(seed: seed)
            let (p, r) = Masks.pair(seed: seed)
            cases.append(
                Case(name: "blobs \(seed), label 1", dim: Masks.dim, map: maps.prediction, label: 1, background: 0))
            cases.append(
                Case(name: "blobs \(seed), label 4", dim: Masks.dim, map: maps.prediction, label: 4, background: 2))
            cases.append(Case(name: "pair \(seed)", dim: Masks.dim, map: p, label: 1, background: 0))
            cases.append(Case(name: "reference \(seed)", dim: Masks.dim, map: r, label: 1, background: 0))
        }
        for (i, c) in cases.enumerated() { try Masks.write(c.map, dir.path + "/m\(i).u8") }
        let keeps = [0, 1, 2, 3]
        let minimums = [2, 5, 40]
        let list = cases.map { "((\($0.dim.z), \($0.dim.y), \($0.dim.x)), \($0.label), \($0.background))" }
            .joined(separator: ",\n    ")
        try TestEnv.python(
            """
            import numpy as np
            from scipy import ndimage
            d = '\(dir.path)/'
            cases = [
                \(list)]
            for i, (shape, label, bg) in enumerate(cases):
                m = np.fromfile(d + f'm{i}.u8', dtype=np.uint8).reshape(shape)
                for conn, rank in ((6, 1), (26, 3)):
                    lab, n = ndimage.label(m == label, structure=ndimage.generate_binary_structure(3, rank))
                    lab.astype(np.int32).tofile(d + f'l{i}_{conn}.i32')
                    flat = lab.ravel()
                    sizes = np.bincount(flat, minlength=n + 1)[1:]
                    ids, first = np.unique(flat, return_index=True)
                    firstOf = np.zeros(n + 1, dtype=np.int64)
                    firstOf[ids] = first
                    # Components in the memory order of their first voxel.
                    order = sorted(range(1, n + 1), key=lambda j: firstOf[j])
                    np.array([sizes[j - 1] for j in order], dtype=np.int64).tofile(d + f's{i}_{conn}.i64')
                    bySize = sorted(range(1, n + 1), key=lambda j: (-sizes[j - 1], firstOf[j]))
                    for k in \(keeps):
                        out = m.copy()
                        out[(lab > 0) & ~np.isin(lab, bySize[:k])] = bg
                        out.tofile(d + f'k{i}_{conn}_{k}.u8')
                    for mv in \(minimums):
                        out = m.copy()
                        out[np.isin(lab, np.flatnonzero(sizes < mv) + 1)] = bg
                        out.tofile(d + f'r{i}_{conn}_{mv}.u8')
            """)
        func bytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }
        func ints<T: FixedWidthInteger>(_ path: String, as: T.Type) throws -> [T] {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            return data.withUnsafeBytes { Array($0.bindMemory(to: T.self)) }
        }
        var differing = 0
        var components = 0
        for (i, c) in cases.enumerated() {
            var counts: [Connectivity: Int] = [:]
            for conn in Connectivity.allCases {
                let what = "\(c.name), \(conn.rawValue)-connectivity"
                let theirs = try ints(dir.path + "/l\(i)_\(conn.rawValue).i32", as: Int32.self)
                let theirSizes = try ints(dir.path + "/s\(i)_\(conn.rawValue).i64", as: Int64.self).map { Int($0) }
                let ours = ConnectedComponents.labelVolume(of: c.label, in: c.map, dim: c.dim, connectivity: conn)
                let sizes = ConnectedComponents.components(of: c.label, in: c.map, dim: c.dim, connectivity: conn)
                XCTAssertEqual(sizes, ours.components, what)
                XCTAssertEqual(ours.components.sizes, theirSizes, "\(what): sizes in first-voxel order")
                XCTAssertEqual(ours.components.sizes.sorted(), theirSizes.sorted(), "\(what): size multiset")
                XCTAssertEqual(ours.ids.count, theirs.count, what)
                // The same partition: one-to-one between our ids and scipy's, background to background.
                var toTheirs: [Int32: Int32] = [:]
                var toOurs: [Int32: Int32] = [:]
                var perId = [Int](repeating: 0, count: ours.components.count + 1)
                var consistent = true
                for (a, b) in zip(ours.ids, theirs) {
                    if (a == 0) != (b == 0) || toTheirs[a, default: b] != b || toOurs[b, default: a] != a {
                        consistent = false
                        break
                    }
                    toTheirs[a] = b
                    toOurs[b] = a
                    if a >= 0 && Int(a) < perId.count { perId[Int(a)] += 1 }
                }
                XCTAssertTrue(consistent, "\(what): a different partition from scipy's")
                XCTAssertEqual(Array(perId.dropFirst()), ours.components.sizes, "\(what): ids against sizes")
                counts[conn] = ours.components.count
                components += ours.components.count

                for k in keeps {
                    var map = c.map
                    let changed = ConnectedComponents.keepLargest(
                        k, of: c.label, in: &map, dim: c.dim, connectivity: conn, background: c.background)
                    let want = try bytes(dir.path + "/k\(i)_\(conn.rawValue)_\(k).u8")
                    XCTAssertEqual(map, want, "\(what): keep the \(k) largest")
                    XCTAssertEqual(changed, zip(want, c.map).filter { $0 != $1 }.count, "\(what): keep \(k), changed")
                }
                for mv in minimums {
                    var map = c.map
                    let changed = ConnectedComponents.removeSmaller(
                        than: mv, of: c.label, in: &map, dim: c.dim, connectivity: conn, background: c.background)
                    let want = try bytes(dir.path + "/r\(i)_\(conn.rawValue)_\(mv).u8")
                    XCTAssertEqual(map, want, "\(what): remove below \(mv)")
                    XCTAssertEqual(
                        changed, zip(want, c.map).filter { $0 != $1 }.count, "\(what): remove \(mv), changed")
                }
            }
            if counts[.six] != counts[.twentySix] { differing += 1 }
        }
        print(
            "connected components vs scipy: \(cases.count) maps, \(components) components, 6 and 26 differ on \(differing)"
        )
        // The 1-voxel-wide and the dense maps cannot tell them apart; the sparse 3D ones, the slabs with several
        // labels and the checkerboards must.
        XCTAssertGreaterThanOrEqual(differing, 20, "the maps must tell 6- from 26-connectivity")
    }
}
