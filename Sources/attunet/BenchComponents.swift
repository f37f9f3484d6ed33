import ArgumentParser
import Evaluation
import Foundation
import Support
import Tensor

extension Bench {
    /// `attunet bench components`: 3D connected components and the postprocessing built on them, timed on a
    /// synthetic CT-sized label map, with the memory they need beyond the map.
    struct ComponentsBench: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "components",
            abstract: "Time 3D connected components and their memory on a CT-sized map.",
            discussion: """
                Synthesises a label map like a CT prediction (by default 512x512x735 voxels, one byte each: 192 MB): a large organ of label 2, and of label 1 two large blobs (a kidney pair), a smaller false-positive blob and --islands small islands of 1 to a few hundred voxels at random places (--seed). Then, on label 1 and for each connectivity (both unless --connectivity names one), it times:
                  components      the sizes of the components (best of 3 runs)
                  remove-smaller  removing those below --min-voxels voxels
                  keep-largest    keeping the --keep largest
                Each operation that rewrites the map runs once on a freshly painted map, and is checked: the components left afterwards must be those the operation keeps. Rates are voxels of the whole map per second, on one thread.

                Memory: the operations keep the runs of two slices and 12 bytes per provisional component, never a buffer per voxel. The bench prints the resident memory the map took and the peak resident memory beyond it while the operations ran (VmHWM, reset through /proc/self/clear_refs after the map is painted; where that reset is refused, the process's lifetime peak, said in the output).

                  attunet bench components
                  attunet bench components --dim 256x256x200 --connectivity 6 --json

                Build in release mode first (swift build -c release); a debug build is 10-100x slower.

                Exit status:
                  0   done
                  1   an error or a wrong result, one line on stderr
                  64  bad command line
                """
        )

        @Option(help: "Size of the label map, X x Y x Z voxels.")
        var dim = Dim3(z: 735, y: 512, x: 512)

        @Option(help: "Connectivity: 6 (faces) or 26 (faces, edges and corners). Both when not given.")
        var connectivity: Connectivity?

        @Option(help: "keep-largest keeps this many components.")
        var keep = 2

        @Option(help: "remove-smaller removes the components of fewer voxels than this.")
        var minVoxels = 1000

        @Option(help: "Small islands of label 1 scattered over the map.")
        var islands = 2000

        @Option(help: "Seed for the islands' places and sizes.")
        var seed: UInt64 = 0

        @Flag(help: "Print one JSON object instead of the table.")
        var json = false

        func validate() throws {
            guard dim.x >= 1 && dim.y >= 1 && dim.z >= 1 else {
                throw ValidationError("--dim must be at least 1 voxel along each axis, got \(dim)")
            }
            guard keep >= 0 else { throw ValidationError("--keep must not be negative") }
            guard minVoxels >= 0 else { throw ValidationError("--min-voxels must not be negative") }
            guard islands >= 0 else { throw ValidationError("--islands must not be negative") }
        }

        /// One operation at one connectivity.
        struct Run: Codable {
            var connectivity: Int
            var operation: String
            var seconds: Double
            var voxelsPerSecond: Double
            /// Components of label 1 before the operation.
            var components: Int
            /// Voxels the operation set to the background.
            var changed: Int
            /// Components of label 1 after the operation.
            var componentsAfter: Int
        }

        struct Report: Codable {
            var cpu: String
            /// X, Y, Z.
            var dim: [Int]
            var voxels: Int
            var label: Int
            var islands: Int
            var seed: UInt64
            var keep: Int
            var minVoxels: Int
            var runs: [Run]
            /// Resident memory before the map was allocated, and once it was painted.
            var residentBeforeMapBytes: Int?
            var residentWithMapBytes: Int?
            /// Peak resident memory while the operations ran, and how far it rose above `residentWithMapBytes`.
            var peakResidentBytes: Int?
            var peakBeyondMapBytes: Int?
            /// Whether the peak was reset after painting (else it is the process's lifetime peak).
            var peakReset: Bool
            var seconds: Double
        }

        func run() throws {
            let started = DispatchTime.now().uptimeNanoseconds
            let label: UInt8 = 1
            let log: (String) -> Void = { line in
                if !json { FileHandle.standardError.write((line + "\n").data(using: .utf8)!) }
            }
            let before = Memory.residentBytes()
            let scene = Scene(dim: dim, islands: islands, seed: seed)
            var map = [UInt8](repeating: 0, count: dim.count)
            log("painting a \(dim) label map ...")
            map.withUnsafeMutableBufferPointer { scene.paint(into: $0) }
            let withMap = Memory.residentBytes()
            let reset = Memory.resetPeak()
            var runs: [Run] = []
            let connectivities = connectivity.map { [$0] } ?? Connectivity.allCases
            for c in connectivities {
                func count() -> Int {
                    ConnectedComponents.components(of: label, in: map, dim: dim, connectivity: c).count
                }
                func rate(_ t: Double) -> Double { Double(dim.count) / t }
                log("measuring \(c.rawValue)-connectivity: components ...")
                map.withUnsafeMutableBufferPointer { scene.paint(into: $0) }
                var found = Components(sizes: [])
                let t = map.withUnsafeBufferPointer { m in
                    bestTime(of: 3) {
                        found = ConnectedComponents.components(of: label, in: m, dim: dim, connectivity: c)
                    }
                }
                runs.append(
                    Run(
                        connectivity: c.rawValue, operation: "components", seconds: t, voxelsPerSecond: rate(t),
                        components: found.count, changed: 0, componentsAfter: found.count))
                let operations: [(String, Int, (inout [UInt8]) -> Int)] = [
                    (
                        "remove-smaller", found.atLeast(minVoxels).filter { $0 }.count,
                        {
                            ConnectedComponents.removeSmaller(
                                than: minVoxels, of: label, in: &$0, dim: dim, connectivity: c)
                        }
                    ),
                    (
                        "keep-largest", min(keep, found.count),
                        { ConnectedComponents.keepLargest(keep, of: label, in: &$0, dim: dim, connectivity: c) }
                    ),
                ]
                for (name, expected, operation) in operations {
                    log("measuring \(c.rawValue)-connectivity: \(name) ...")
                    map.withUnsafeMutableBufferPointer { scene.paint(into: $0) }
                    let t0 = DispatchTime.now().uptimeNanoseconds
                    let changed = operation(&map)
                    let t = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                    let after = count()
                    guard after == expected else {
                        throw AttunetError(
                            "bench components: \(name) at \(c.rawValue)-connectivity left \(after) components, expected \(expected)"
                        )
                    }
                    runs.append(
                        Run(
                            connectivity: c.rawValue, operation: name, seconds: t, voxelsPerSecond: rate(t),
                            components: found.count, changed: changed, componentsAfter: after))
                }
            }
            let peak = Memory.peakResidentBytes()
            let report = Report(
                cpu: CPUInfo.current.modelName, dim: [dim.x, dim.y, dim.z], voxels: dim.count, label: Int(label),
                islands: islands, seed: seed, keep: keep, minVoxels: minVoxels, runs: runs,
                residentBeforeMapBytes: before, residentWithMapBytes: withMap, peakResidentBytes: peak,
                peakBeyondMapBytes: peak.flatMap { p in withMap.map { max(0, p - $0) } }, peakReset: reset,
                seconds: Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9)
            if json {
                print(String(decoding: try JSONFiles.data(report), as: UTF8.self))
            } else {
                Self.printTable(report)
            }
        }

        static func printTable(_ r: Report) {
            func pad(_ s: String, _ w: Int, _ left: Bool) -> String { Bench.Layers.pad(s, w, left: left) }
            print(
                "attunet bench components: \(r.dim.map(String.init).joined(separator: "x")) label map (\(Memory.format(r.voxels))), label \(r.label), one thread"
            )
            print("CPU \(r.cpu)")
            print("")
            let head =
                pad("conn", 5, false) + "  " + pad("operation", 15, true) + pad("seconds", 9, false)
                + pad("Gvoxel/s", 10, false) + pad("components", 12, false) + pad("changed", 11, false)
                + pad("left", 7, false)
            print(head)
            print(String(repeating: "-", count: head.count))
            for run in r.runs {
                print(
                    pad(String(run.connectivity), 5, false) + "  " + pad(run.operation, 15, true)
                        + pad(fmt(run.seconds, 3), 9, false) + pad(fmt(run.voxelsPerSecond / 1e9, 2), 10, false)
                        + pad(String(run.components), 12, false) + pad(String(run.changed), 11, false)
                        + pad(String(run.componentsAfter), 7, false))
            }
            print("")
            let mapRise = r.residentWithMapBytes.flatMap { w in r.residentBeforeMapBytes.map { w - $0 } }
            print(
                "resident memory: \(Memory.format(r.residentBeforeMapBytes)) before the map, \(Memory.format(r.residentWithMapBytes)) with it (+\(Memory.format(mapRise)))"
            )
            print(
                "peak beyond the map while the operations ran: \(Memory.format(r.peakBeyondMapBytes))"
                    + (r.peakReset ? "" : " (the peak could not be reset: this is the process's lifetime peak)"))
            print("total bench time \(fmt(r.seconds, 1)) s")
        }
    }
}

extension Bench.ComponentsBench {
    /// The synthetic prediction: ellipsoids with a wavy surface, painted row by row.
    struct Scene {
        struct Blob {
            var label: UInt8
            var c: (x: Double, y: Double, z: Double)
            var r: (x: Double, y: Double, z: Double)
            var wobble: Double
        }

        let dim: Dim3
        var blobs: [Blob] = []

        init(dim: Dim3, islands: Int, seed: UInt64) {
            self.dim = dim
            let d = (x: Double(dim.x), y: Double(dim.y), z: Double(dim.z))
            func blob(_ label: UInt8, _ c: (Double, Double, Double), _ r: (Double, Double, Double), wobble: Double)
                -> Blob
            {
                Blob(
                    label: label, c: (c.0 * d.x, c.1 * d.y, c.2 * d.z), r: (r.0 * d.x, r.1 * d.y, r.2 * d.z),
                    wobble: wobble)
            }
            // The organ of another label, then label 1's kidney pair and a false-positive blob beside them.
            blobs.append(blob(2, (0.32, 0.42, 0.55), (0.2, 0.16, 0.22), wobble: 0.06))
            blobs.append(blob(1, (0.3, 0.62, 0.45), (0.07, 0.08, 0.12), wobble: 0.08))
            blobs.append(blob(1, (0.7, 0.62, 0.47), (0.065, 0.075, 0.11), wobble: 0.08))
            blobs.append(blob(1, (0.55, 0.35, 0.6), (0.03, 0.02, 0.03), wobble: 0.1))
            var rng = SeededRNG(seed, 0xCC)
            for _ in 0..<islands {
                let r = rng.uniform(0.4, 3)
                blobs.append(
                    Blob(
                        label: 1, c: (rng.uniform(0, d.x), rng.uniform(0, d.y), rng.uniform(0, d.z)),
                        r: (r * rng.uniform(0.7, 1.3), r * rng.uniform(0.7, 1.3), r * rng.uniform(0.7, 1.3)),
                        wobble: 0))
            }
        }

        /// Clears `map` (every page written, so the whole map is resident) and paints the blobs in order.
        func paint(into map: UnsafeMutableBufferPointer<UInt8>) {
            precondition(map.count == dim.count)
            let out = map.baseAddress!
            out.update(repeating: 0, count: map.count)
            for b in blobs {
                let z0 = max(0, Int((b.c.z - b.r.z).rounded(.up)))
                let z1 = min(dim.z - 1, Int((b.c.z + b.r.z).rounded(.down)))
                let y0 = max(0, Int((b.c.y - b.r.y).rounded(.up)))
                let y1 = min(dim.y - 1, Int((b.c.y + b.r.y).rounded(.down)))
                guard z0 <= z1 && y0 <= y1 else { continue }
                for z in z0...z1 {
                    let dz = (Double(z) - b.c.z) / b.r.z
                    for y in y0...y1 {
                        let dy = (Double(y) - b.c.y) / b.r.y
                        let q = 1 - dz * dz - dy * dy
                        guard q >= 0 else { continue }
                        let half = b.r.x * q.squareRoot() * (1 + b.wobble * sin(0.19 * Double(y) + 0.11 * Double(z)))
                        let x0 = max(0, Int((b.c.x - half).rounded(.up)))
                        let x1 = min(dim.x - 1, Int((b.c.x + half).rounded(.down)))
                        guard x0 <= x1 else { continue }
                        (out + (z * dim.y + y) * dim.x + x0).update(repeating: b.label, count: x1 - x0 + 1)
                    }
                }
            }
        }
    }
}
