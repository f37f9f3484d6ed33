import Foundation
import TestSupport
import XCTest

/// `attunet bench components` on a CT-sized label map: connected components and the postprocessing built on them
/// stay within a small bound of memory beyond the map itself.
final class BenchComponentsTests: XCTestCase {
    /// At 512x512x735 (192 MB of labels, one byte a voxel) the operations must need less than 16 MiB beyond the
    /// map, measured as the peak resident memory (VmHWM) while they run above the resident memory with the map
    /// painted. The bound: by design they hold the runs of two slices (at most 512 x 256 runs of 12 bytes each,
    /// 1.5 MiB a slice, for a checkerboard; a few hundred runs here) and 12 bytes per provisional component
    /// (a few thousand here), plus the component tables; any buffer per voxel breaks it, even one bit a voxel
    /// (23 MiB), let alone the 770 MB of an Int32 label map.
    func testCTSizedMapInBoundedMemory() throws {
        let r = try TestEnv.run("\(TestEnv.attunet) bench components --dim 512x512x735 --json", timeout: 600)
        XCTAssertEqual(r.status, 0, r.stderr)
        let parsed = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        let j = try XCTUnwrap(parsed, "bench components --json printed no JSON object: \(r.stdout.prefix(300))")
        let voxels = 512 * 512 * 735
        XCTAssertEqual(j["voxels"] as? Int, voxels)
        XCTAssertEqual(j["dim"] as? [Int], [512, 512, 735])
        let runs = try XCTUnwrap(j["runs"] as? [[String: Any]])
        XCTAssertEqual(runs.map { $0["connectivity"] as? Int }, [6, 6, 6, 26, 26, 26])
        XCTAssertEqual(
            runs.map { $0["operation"] as? String },
            ["components", "remove-smaller", "keep-largest", "components", "remove-smaller", "keep-largest"])
        for run in runs {
            let what = "\(run["connectivity"] ?? "?") \(run["operation"] ?? "?")"
            // The map holds the two blobs kept, a third one and most of its 2000 islands apart.
            XCTAssertGreaterThan(run["components"] as? Int ?? 0, 1000, what)
            XCTAssertGreaterThan(run["seconds"] as? Double ?? 0, 0, what)
            if run["operation"] as? String == "keep-largest" {
                XCTAssertEqual(run["components_after"] as? Int, 2, what)
                XCTAssertGreaterThan(run["changed"] as? Int ?? 0, 0, what)
            }
        }
        let before = try XCTUnwrap(j["resident_before_map_bytes"] as? Int)
        let withMap = try XCTUnwrap(j["resident_with_map_bytes"] as? Int)
        let beyond = try XCTUnwrap(j["peak_beyond_map_bytes"] as? Int)
        // The whole map is resident, so the peak is measured above it, not above pages never touched.
        XCTAssertGreaterThanOrEqual(withMap - before, voxels * 99 / 100, "the map is not resident")
        print(
            "bench components 512x512x735: peak \(beyond) bytes beyond the map (peak reset: \(j["peak_reset"] ?? "?"))")
        XCTAssertLessThan(beyond, 16 << 20, "connected components took \(beyond) bytes beyond the map")
    }

    /// A grid without voxels is refused on the command line, in one line naming the option.
    func testRefusesAnEmptyGrid() throws {
        let r = try TestEnv.run("\(TestEnv.attunet) bench components --dim 0x512x10")
        XCTAssertEqual(r.status, 64)
        XCTAssertTrue(r.stderr.contains("--dim must be at least 1 voxel along each axis, got 0x512x10"), r.stderr)
    }
}
