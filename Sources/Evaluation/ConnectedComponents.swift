import Tensor

/// Which voxels touch: the neighbourhood of 3D connected components.
public enum Connectivity: Int, Sendable, Codable, CaseIterable {
    /// Voxels sharing a face (6 neighbours): `scipy.ndimage.generate_binary_structure(3, 1)`.
    case six = 6
    /// Voxels sharing a face, an edge or a corner (26 neighbours): `generate_binary_structure(3, 3)`.
    case twentySix = 26
}

/// Components of one label's voxels: sizes in voxels, index i is component i+1.
///
/// Components are numbered in the memory order (`[Z][Y][X]`, x fastest) of their first voxel, as
/// `scipy.ndimage.label` numbers them.
public struct Components: Sendable, Equatable {
    /// Voxels of each component; `sizes[i]` is component i+1.
    public let sizes: [Int]
    /// The number of components.
    public var count: Int { sizes.count }

    public init(sizes: [Int]) { self.sizes = sizes }

    /// The voxels of all components together.
    public var voxels: Int { sizes.reduce(0, +) }

    /// Which components ``ConnectedComponents/keepLargest(_:of:in:dim:connectivity:background:)`` keeps:
    /// `true` for the `k` largest (ties: the lower index, i.e. the one met first in memory order).
    public func largest(_ k: Int) -> [Bool] {
        precondition(k >= 0, "keep the k largest components: k = \(k) is negative")
        if k >= count { return [Bool](repeating: true, count: count) }
        var keep = [Bool](repeating: false, count: count)
        let order = sizes.indices.sorted { (sizes[$0], $1) > (sizes[$1], $0) }
        for i in order.prefix(k) { keep[i] = true }
        return keep
    }

    /// Which components ``ConnectedComponents/removeSmaller(than:of:in:dim:connectivity:background:)`` keeps:
    /// `true` for those of `minVoxels` voxels or more.
    public func atLeast(_ minVoxels: Int) -> [Bool] { sizes.map { $0 >= minVoxels } }
}

/// 3D connected components of one label of a label map, in bounded memory, and the postprocessing built on them
/// (keep the k largest components, remove small ones).
///
/// Label maps are `[UInt8]` buffers of `dim` voxels in `[Z][Y][X]` order (x fastest). The algorithm works on
/// runs: the maximal intervals of one row (fixed z and y) whose voxels equal the label. One raster sweep finds each
/// row's runs and joins every run with the overlapping runs of the rows it touches: the previous row of its slice
/// and the same row of the previous slice for 6-connectivity; for 26-connectivity the previous row of its slice
/// and rows y−1, y, y+1 of the previous slice, each interval widened by one voxel in x. A run that touches no
/// earlier run starts a provisional component; joins go through a union-find over those (path halving, the
/// smaller index as the root, so roots come in memory order). A second sweep, where an operation rewrites voxels,
/// repeats the same decisions and maps each run to its component.
///
/// Memory: the runs of two slices, plus 12 bytes per provisional component (a run that touches no earlier run of
/// its label); never a buffer per voxel, except in ``labelVolume(of:in:dim:connectivity:)``, whose result is one.
public enum ConnectedComponents {
    /// Sizes of the connected components of the voxels equal to `label`.
    public static func components(
        of label: UInt8, in map: UnsafeBufferPointer<UInt8>, dim: Dim3, connectivity: Connectivity
    ) -> Components {
        Components(sizes: RunLabeling(label: label, map: map, dim: dim, connectivity: connectivity).sizes)
    }

    /// Per-voxel component ids (0 = not `label`, 1...count), for tests and small maps; memory 4 bytes/voxel.
    public static func labelVolume(
        of label: UInt8, in map: UnsafeBufferPointer<UInt8>, dim: Dim3, connectivity: Connectivity
    ) -> (ids: [Int32], components: Components) {
        let labeling = RunLabeling(label: label, map: map, dim: dim, connectivity: connectivity)
        var ids = [Int32](repeating: 0, count: dim.count)
        ids.withUnsafeMutableBufferPointer { ids in
            guard let out = ids.baseAddress, !ids.isEmpty else { return }
            labeling.forEachRun(in: map) { offset, length, component in
                (out + offset).update(repeating: Int32(component + 1), count: length)
            }
        }
        return (ids, Components(sizes: labeling.sizes))
    }

    /// Keeps the `k` largest components of `label` (ties: the one met first in memory order), sets the voxels of every other component to `background`. Returns the number of voxels changed.
    @discardableResult public static func keepLargest(
        _ k: Int, of label: UInt8, in map: UnsafeMutableBufferPointer<UInt8>, dim: Dim3, connectivity: Connectivity,
        background: UInt8 = 0
    ) -> Int {
        precondition(k >= 0, "keep the k largest components: k = \(k) is negative")
        return retain(of: label, in: map, dim: dim, connectivity: connectivity, background: background) {
            $0.largest(k)
        }
    }

    /// Sets to `background` the components of `label` with fewer than `minVoxels` voxels. Returns the number of voxels changed.
    @discardableResult public static func removeSmaller(
        than minVoxels: Int, of label: UInt8, in map: UnsafeMutableBufferPointer<UInt8>, dim: Dim3,
        connectivity: Connectivity, background: UInt8 = 0
    ) -> Int {
        retain(of: label, in: map, dim: dim, connectivity: connectivity, background: background) {
            $0.atLeast(minVoxels)
        }
    }

    /// Keeps the components of `label` that `keep` selects (element i for component i+1, as
    /// ``Components/sizes``) and sets the voxels of the others to `background`. Returns the number of voxels
    /// changed. The general form of ``keepLargest(_:of:in:dim:connectivity:background:)`` and
    /// ``removeSmaller(than:of:in:dim:connectivity:background:)``.
    @discardableResult public static func retain(
        of label: UInt8, in map: UnsafeMutableBufferPointer<UInt8>, dim: Dim3, connectivity: Connectivity,
        background: UInt8 = 0, where keep: (Components) -> [Bool]
    ) -> Int {
        guard background != label else { return 0 }
        let labeling = RunLabeling(
            label: label, map: UnsafeBufferPointer(map), dim: dim, connectivity: connectivity)
        let kept = keep(Components(sizes: labeling.sizes))
        precondition(kept.count == labeling.sizes.count, "one keep flag per component")
        var changed = 0
        for (i, k) in kept.enumerated() where !k { changed += labeling.sizes[i] }
        guard changed > 0 else { return 0 }
        let out = map.baseAddress!
        kept.withUnsafeBufferPointer { kept in
            labeling.forEachRun(in: UnsafeBufferPointer(map)) { offset, length, component in
                if !kept[component] { (out + offset).update(repeating: background, count: length) }
            }
        }
        return changed
    }

    // MARK: [UInt8] conveniences

    /// ``components(of:in:dim:connectivity:)`` of an array.
    public static func components(of label: UInt8, in map: [UInt8], dim: Dim3, connectivity: Connectivity)
        -> Components
    {
        map.withUnsafeBufferPointer { components(of: label, in: $0, dim: dim, connectivity: connectivity) }
    }

    /// ``labelVolume(of:in:dim:connectivity:)`` of an array.
    public static func labelVolume(of label: UInt8, in map: [UInt8], dim: Dim3, connectivity: Connectivity)
        -> (ids: [Int32], components: Components)
    {
        map.withUnsafeBufferPointer { labelVolume(of: label, in: $0, dim: dim, connectivity: connectivity) }
    }

    /// ``keepLargest(_:of:in:dim:connectivity:background:)`` on an array.
    @discardableResult public static func keepLargest(
        _ k: Int, of label: UInt8, in map: inout [UInt8], dim: Dim3, connectivity: Connectivity,
        background: UInt8 = 0
    ) -> Int {
        map.withUnsafeMutableBufferPointer {
            keepLargest(k, of: label, in: $0, dim: dim, connectivity: connectivity, background: background)
        }
    }

    /// ``removeSmaller(than:of:in:dim:connectivity:background:)`` on an array.
    @discardableResult public static func removeSmaller(
        than minVoxels: Int, of label: UInt8, in map: inout [UInt8], dim: Dim3, connectivity: Connectivity,
        background: UInt8 = 0
    ) -> Int {
        map.withUnsafeMutableBufferPointer {
            removeSmaller(
                than: minVoxels, of: label, in: $0, dim: dim, connectivity: connectivity, background: background)
        }
    }
}

// MARK: - Run-length labelling

/// The components of one label after the first sweep: each provisional component's final component, and the
/// final components' sizes.
struct RunLabeling {
    let label: UInt8
    let dim: Dim3
    let connectivity: Connectivity
    /// Provisional component → component index (0-based, memory order of the first voxel).
    let component: [Int32]
    let sizes: [Int]

    init(label: UInt8, map: UnsafeBufferPointer<UInt8>, dim: Dim3, connectivity: Connectivity) {
        precondition(
            dim.z >= 0 && dim.y >= 0 && dim.x >= 0 && map.count == dim.count,
            "connected components: a map of \(map.count) voxels for a \(dim) grid")
        self.label = label
        self.dim = dim
        self.connectivity = connectivity
        var forest = ComponentForest()
        defer { forest.free() }
        RunSweep.sweep(label: label, map: map, dim: dim, connectivity: connectivity, sink: &forest)
        // parent[i] ≤ i always (the smaller index becomes the root), so one forward pass resolves every node.
        let n = forest.count
        var component = [Int32](repeating: 0, count: n)
        var sizes: [Int] = []
        component.withUnsafeMutableBufferPointer { component in
            for i in 0..<n {
                let p = Int(forest.parent[i])
                if p == i {
                    component[i] = Int32(sizes.count)
                    sizes.append(forest.size[i])
                } else {
                    let c = component[p]
                    component[i] = c
                    sizes[Int(c)] += forest.size[i]
                }
            }
        }
        self.component = component
        self.sizes = sizes
    }

    /// Calls `body(offset, length, component)` for every run of the label in `map` (the map the labelling was
    /// made from; `body` may rewrite the voxels of the run it is given), in memory order.
    func forEachRun(
        in map: UnsafeBufferPointer<UInt8>, _ body: (_ offset: Int, _ length: Int, _ component: Int) -> Void
    ) {
        withoutActuallyEscaping(body) { body in
            component.withUnsafeBufferPointer { component in
                var replay = ComponentReplay(component: component, body: body)
                RunSweep.sweep(label: label, map: map, dim: dim, connectivity: connectivity, sink: &replay)
            }
        }
    }
}

/// What a sweep does with the runs it finds.
protocol RunSink {
    /// Whether every touching earlier run must be reported (`join`), or the first is enough.
    static var joinsAll: Bool { get }
    /// A new provisional component for a run that touches no earlier run.
    mutating func newComponent() -> Int32
    /// Runs of provisional components `a` and `b` touch.
    mutating func join(_ a: Int32, _ b: Int32)
    /// A run of `length` voxels at `offset` belongs to provisional component `node`.
    mutating func run(offset: Int, length: Int, node: Int32)
}

/// The first sweep's union-find over provisional components: parents and the voxels counted at each node.
struct ComponentForest: RunSink {
    static var joinsAll: Bool { true }
    var parent: UnsafeMutablePointer<Int32>
    var size: UnsafeMutablePointer<Int>
    var count = 0
    var capacity = 256

    init() {
        parent = .allocate(capacity: capacity)
        size = .allocate(capacity: capacity)
    }

    func free() {
        parent.deallocate()
        size.deallocate()
    }

    mutating func newComponent() -> Int32 {
        if count == capacity {
            precondition(capacity < Int(Int32.max) / 2, "connected components: more than 2^30 components")
            let c = capacity * 2
            let p = UnsafeMutablePointer<Int32>.allocate(capacity: c)
            let s = UnsafeMutablePointer<Int>.allocate(capacity: c)
            p.initialize(from: parent, count: count)
            s.initialize(from: size, count: count)
            free()
            parent = p
            size = s
            capacity = c
        }
        parent[count] = Int32(count)
        size[count] = 0
        count += 1
        return Int32(count - 1)
    }

    @inline(__always) func find(_ x: Int32) -> Int32 {
        var x = x
        while parent[Int(x)] != x {
            let g = parent[Int(parent[Int(x)])]
            parent[Int(x)] = g
            x = g
        }
        return x
    }

    mutating func join(_ a: Int32, _ b: Int32) {
        let ra = find(a)
        let rb = find(b)
        if ra < rb { parent[Int(rb)] = ra } else if rb < ra { parent[Int(ra)] = rb }
    }

    mutating func run(offset: Int, length: Int, node: Int32) { size[Int(node)] += length }
}

/// The second sweep: the same provisional components in the same order, each run handed over with its final
/// component.
struct ComponentReplay: RunSink {
    static var joinsAll: Bool { false }
    let component: UnsafeBufferPointer<Int32>
    let body: (_ offset: Int, _ length: Int, _ component: Int) -> Void
    var next: Int32 = 0

    mutating func newComponent() -> Int32 {
        next += 1
        return next - 1
    }
    mutating func join(_ a: Int32, _ b: Int32) {}
    mutating func run(offset: Int, length: Int, node: Int32) {
        body(offset, length, Int(component[Int(node)]))
    }
}

/// The runs of one slice: row y's are `start/end/node[rowStart[y]..<rowStart[y + 1]]` (end exclusive).
struct SliceRuns {
    var start: UnsafeMutablePointer<Int32>
    var end: UnsafeMutablePointer<Int32>
    var node: UnsafeMutablePointer<Int32>
    let rowStart: UnsafeMutablePointer<Int>
    var count = 0
    var capacity: Int

    init(rows: Int, capacity: Int) {
        self.capacity = capacity
        start = .allocate(capacity: capacity)
        end = .allocate(capacity: capacity)
        node = .allocate(capacity: capacity)
        rowStart = .allocate(capacity: rows + 1)
        rowStart.initialize(repeating: 0, count: rows + 1)
    }

    func free() {
        start.deallocate()
        end.deallocate()
        node.deallocate()
        rowStart.deallocate()
    }

    /// Room for `more` runs after the current ones (pointers stay valid until the next call).
    mutating func reserve(_ more: Int) {
        guard count + more > capacity else { return }
        let c = max(count + more, capacity * 2)
        for p in [\SliceRuns.start, \.end, \.node] as [WritableKeyPath<SliceRuns, UnsafeMutablePointer<Int32>>] {
            let q = UnsafeMutablePointer<Int32>.allocate(capacity: c)
            q.initialize(from: self[keyPath: p], count: count)
            self[keyPath: p].deallocate()
            self[keyPath: p] = q
        }
        capacity = c
    }
}

/// One row of earlier runs a new run may touch, and how far the sweep along it has got.
struct RowCursor {
    var start: UnsafeMutablePointer<Int32>
    var end: UnsafeMutablePointer<Int32>
    var node: UnsafeMutablePointer<Int32>
    var j: Int
    var hi: Int
}

enum RunSweep {
    /// One raster sweep over the runs of `label`: each run is joined with the earlier runs it touches, or starts a
    /// provisional component, then handed to `sink`.
    static func sweep<S: RunSink>(
        label: UInt8, map: UnsafeBufferPointer<UInt8>, dim: Dim3, connectivity: Connectivity, sink: inout S
    ) {
        let nx = dim.x
        let ny = dim.y
        let nz = dim.z
        guard nx > 0 && ny > 0 && nz > 0 else { return }
        precondition(nx < Int(Int32.max), "connected components: rows of \(nx) voxels")
        let perRow = (nx + 1) / 2  // the most runs a row can hold
        let initial = min(perRow * ny, 4096)
        var cur = SliceRuns(rows: ny, capacity: initial)
        var prev = SliceRuns(rows: ny, capacity: initial)
        let cursors = UnsafeMutablePointer<RowCursor>.allocate(capacity: 4)
        defer {
            cur.free()
            prev.free()
            cursors.deallocate()
        }
        let w: Int32 = connectivity == .twentySix ? 1 : 0
        let base = map.baseAddress!
        for z in 0..<nz {
            swap(&cur, &prev)
            cur.count = 0
            for y in 0..<ny {
                cur.reserve(perRow)
                cur.rowStart[y] = cur.count
                // The earlier rows this row touches, each sorted by x.
                var rows = 0
                func add(_ s: SliceRuns, _ row: Int) {
                    let lo = s.rowStart[row]
                    let hi = s.rowStart[row + 1]
                    if hi > lo {
                        cursors[rows] = RowCursor(start: s.start, end: s.end, node: s.node, j: lo, hi: hi)
                        rows += 1
                    }
                }
                if y > 0 { add(cur, y - 1) }
                if z > 0 {
                    if w == 1 && y > 0 { add(prev, y - 1) }
                    add(prev, y)
                    if w == 1 && y + 1 < ny { add(prev, y + 1) }
                }
                let rowOffset = (z * ny + y) * nx
                let row = base + rowOffset
                var x = 0
                while true {
                    x = nextEqual(row, from: x, count: nx, label: label)
                    if x == nx { break }
                    let s = x
                    x = nextDifferent(row, from: x, count: nx, label: label)
                    let s32 = Int32(truncatingIfNeeded: s)
                    let e32 = Int32(truncatingIfNeeded: x)
                    var node: Int32 = -1
                    scan: for c in 0..<rows {
                        let r = cursors[c]
                        var j = r.j
                        while j < r.hi && r.end[j] + w <= s32 { j += 1 }
                        cursors[c].j = j
                        while j < r.hi && r.start[j] < e32 + w {
                            let m = r.node[j]
                            if node < 0 {
                                node = m
                                if !S.joinsAll { break scan }
                            } else if m != node {
                                sink.join(node, m)
                            }
                            j += 1
                        }
                    }
                    if node < 0 { node = sink.newComponent() }
                    sink.run(offset: rowOffset + s, length: x - s, node: node)
                    cur.start[cur.count] = s32
                    cur.end[cur.count] = e32
                    cur.node[cur.count] = node
                    cur.count += 1
                }
                cur.rowStart[y + 1] = cur.count
            }
        }
    }

    /// Eight copies of `label`, one per byte.
    @inline(__always) static func broadcast(_ label: UInt8) -> UInt64 { UInt64(label) &* 0x0101_0101_0101_0101 }

    /// The first index ≥ `x` whose byte equals `label`, or `count`. Eight bytes at a time: a byte of
    /// `word ^ broadcast(label)` is zero exactly where the row holds the label; the lowest flagged byte of the
    /// classic zero-byte test is always a true zero (false flags only occur above one).
    @inline(__always)
    static func nextEqual(_ row: UnsafePointer<UInt8>, from x: Int, count: Int, label: UInt8) -> Int {
        var x = x
        let pattern = broadcast(label)
        let raw = UnsafeRawPointer(row)
        while x + 8 <= count {
            let v = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: x, as: UInt64.self)) ^ pattern
            let zero = (v &- 0x0101_0101_0101_0101) & ~v & 0x8080_8080_8080_8080
            if zero != 0 { return x + zero.trailingZeroBitCount / 8 }
            x += 8
        }
        while x < count && row[x] != label { x += 1 }
        return x
    }

    /// The first index ≥ `x` whose byte differs from `label`, or `count`.
    @inline(__always)
    static func nextDifferent(_ row: UnsafePointer<UInt8>, from x: Int, count: Int, label: UInt8) -> Int {
        var x = x
        let pattern = broadcast(label)
        let raw = UnsafeRawPointer(row)
        while x + 8 <= count {
            let v = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: x, as: UInt64.self)) ^ pattern
            if v != 0 { return x + v.trailingZeroBitCount / 8 }
            x += 8
        }
        while x < count && row[x] == label { x += 1 }
        return x
    }
}
