import Foundation
import Tensor
import TestSupport
import XCTest

@testable import DataPipeline

/// Without augmentation every patch the loader makes is a plain box read of the store, normalised.
///
/// The box is recomputed here from the loader's documented placement, replaying its "SAMP" stream: a foreground
/// sample (class k drawn among the classes present, then one of the case's sampled voxels v of class k) puts v at
/// index p/2 of the patch, moved the least so that the patch lies inside the volume, or covers it where the volume
/// is smaller than the patch; any other sample draws a uniform start per axis (z, y, x), or centres the patch on an
/// axis where the volume is smaller.
final class CropTests: XCTestCase {
    struct Placement {
        var start: [Int]
        var foregroundVoxel: [Int]?
        var foregroundClass: Int?
    }

    static func placement(_ l: PatchLoader, epoch: Int, g: Int, case c: Int) -> Placement {
        let info = l.store.cases[c]
        let p = l.patch
        let dims = [info.shape.z, info.shape.y, info.shape.x]
        let ps = [p.z, p.y, p.x]
        var rng = SeededRNG(l.seed, UInt64(epoch), UInt64(g), 0x5341_4D50)  // "SAMP"
        let present = info.presentClasses
        let rows = info.foreground.count / 4
        if l.isForeground(g), !present.isEmpty, rows > 0 {
            let k = present[rng.below(present.count)]
            let ofK = (0..<rows).filter { Int(info.foreground[$0 * 4]) == k }
            let r = ofK.isEmpty ? rng.below(rows) : ofK[rng.below(ofK.count)]
            let v = (0..<3).map { Int(info.foreground[r * 4 + 1 + $0]) }
            var start = [Int]()
            for a in 0..<3 {
                let lowest = min(0, dims[a] - ps[a])
                let highest = max(0, dims[a] - ps[a])
                start.append(min(max(v[a] - ps[a] / 2, lowest), highest))
            }
            return Placement(start: start, foregroundVoxel: v, foregroundClass: Int(info.foreground[r * 4]))
        }
        var start = [Int]()
        for a in 0..<3 {
            start.append(dims[a] >= ps[a] ? rng.below(dims[a] - ps[a] + 1) : -((ps[a] - dims[a] + 1) / 2))
        }
        return Placement(start: start, foregroundVoxel: nil, foregroundClass: nil)
    }

    /// Exact equality, reported as the count of differing voxels and the first one (not two whole arrays).
    static func assertSame<T: Equatable>(
        _ got: [T], _ want: [T], _ what: String, file: StaticString = #filePath, line: UInt = #line
    ) {
        guard got != want else { return }
        guard got.count == want.count else {
            return XCTFail("\(what): \(got.count) voxels, expected \(want.count)", file: file, line: line)
        }
        let bad = got.indices.filter { got[$0] != want[$0] }
        XCTFail(
            "\(what): \(bad.count) of \(got.count) voxels differ, first at \(bad[0]): \(got[bad[0]]) vs \(want[bad[0]])",
            file: file, line: line)
    }

    /// The box read at `start`, normalised as the loader normalises.
    static func boxRead(
        _ store: CaseStore, _ c: Int, start: [Int], size: Dim3,
        _ norm: IntensityNormalization
    ) throws -> (image: [Float], label: [UInt8]) {
        var img = [Float](repeating: 0, count: size.count)
        var lab = [UInt8](repeating: 0, count: size.count)
        try img.withUnsafeMutableBufferPointer { ip in
            try lab.withUnsafeMutableBufferPointer { lp in
                try store.readBox(
                    c, start: (start[0], start[1], start[2]), size: size, image: ip.baseAddress!, label: lp.baseAddress!
                )
                norm.apply(ip.baseAddress!, count: size.count, case: store.cases[c])
            }
        }
        return (img, lab)
    }

    /// Every patch of every batch of an epoch (makeBatch), for z-score and CT-window normalisation, foreground and
    /// uniform samples, patches inside the volume and patches padded past its edge.
    func testUnaugmentedPatchesEqualNormalisedBoxReads() throws {
        let d = try Fixture.dataset()
        let store = try CaseStore(path: d.path + "/store.h5")
        // Taller than the smallest volume along z (padded there), smaller in-plane; odd and even edges.
        let minZ = store.cases.map(\.shape.z).min()!
        let patch = Dim3(z: minZ + 3, y: 14, x: 11)
        XCTAssertTrue(
            store.cases.allSatisfy { $0.shape.y > patch.y && $0.shape.x > patch.x }, "\(store.cases.map(\.shape))")
        var foreground = 0
        var clamped = 0
        var padded = 0
        var uniform = 0
        for norm in [IntensityNormalization.zscore, .ctWindow(store)] {
            let l = try PatchLoader(
                store: store, patch: patch, batch: 2, seed: 13, augment: .none, foregroundFraction: 0.5,
                normalization: norm, samplesPerCase: 6)
            let epoch = 2
            for step in 0..<l.stepsPerEpoch {
                let b = try l.makeBatch(epoch: epoch, step: step)
                let order = l.order(epoch: epoch)
                for slot in 0..<l.batch {
                    let g = b.samples[slot]
                    let c = b.cases[slot]
                    XCTAssertEqual(g, l.globalIndex(step: step, slot: slot))
                    XCTAssertEqual(c, l.cases[order[g % order.count]])
                    let pl = Self.placement(l, epoch: epoch, g: g, case: c)
                    let ref = try Self.boxRead(store, c, start: pl.start, size: patch, norm)
                    let img = Array(b.image.array[slot * patch.count..<(slot + 1) * patch.count])
                    let lab = Array(b.label[slot * patch.count..<(slot + 1) * patch.count])
                    Self.assertSame(
                        img, ref.image, "\(norm) sample \(g) of case \(c) at \(pl.start): image vs box read")
                    Self.assertSame(
                        lab, ref.label, "\(norm) sample \(g) of case \(c) at \(pl.start): label vs box read")
                    let s = store.cases[c].shape
                    let dims = [s.z, s.y, s.x]
                    let ps = [patch.z, patch.y, patch.x]
                    if pl.start.indices.contains(where: { pl.start[$0] < 0 || pl.start[$0] + ps[$0] > dims[$0] }) {
                        padded += 1
                    }
                    if let v = pl.foregroundVoxel, let k = pl.foregroundClass {
                        foreground += 1
                        // The drawn voxel is in the patch, at its centre index unless the patch had to move.
                        let at = (0..<3).map { v[$0] - pl.start[$0] }
                        XCTAssertTrue(
                            (0..<3).allSatisfy { (0..<ps[$0]).contains(at[$0]) },
                            "\(v) outside the patch at \(pl.start)")
                        XCTAssertEqual(Int(lab[(at[0] * patch.y + at[1]) * patch.x + at[2]]), k)
                        if at != ps.map({ $0 / 2 }) { clamped += 1 }
                    } else {
                        uniform += 1
                    }
                }
            }
        }
        // Not vacuous: every kind of placement occurred.
        XCTAssertGreaterThan(foreground, 4)
        XCTAssertGreaterThan(uniform, 4)
        XCTAssertGreaterThan(padded, 4)
        XCTAssertGreaterThan(clamped, 0)
    }

    /// The warping path with an identity draw (augmentation on, every parameter at its identity: a flip probability of
    /// 1e-300 keeps `isGeometricIdentity` false) reads exactly the plain crop: the transform is centred on the patch
    /// box, including the half-voxel centre of even edges.
    func testIdentityWarpEqualsThePlainCrop() throws {
        let d = try Fixture.dataset()
        let store = try CaseStore(path: d.path + "/store.h5")
        var warp = AugmentOptions.none
        warp.flipX = 1e-300
        XCTAssertFalse(warp.isGeometricIdentity)
        for patch in [Dim3(z: 8, y: 12, x: 10), Dim3(z: 7, y: 13, x: 9)] {
            let plain = try PatchLoader(
                store: store, patch: patch, batch: 3, seed: 8, augment: .none, samplesPerCase: 4)
            let warped = try PatchLoader(
                store: store, patch: patch, batch: 3, seed: 8, augment: warp, samplesPerCase: 4)
            for step in 0..<plain.stepsPerEpoch {
                let a = try plain.makeBatch(epoch: 1, step: step)
                let b = try warped.makeBatch(epoch: 1, step: step)
                XCTAssertEqual(a.cases, b.cases)
                Self.assertSame(b.label, a.label, "patch \(patch) step \(step): warped vs plain label")
                Self.assertSame(b.image.array, a.image.array, "patch \(patch) step \(step): warped vs plain image")
            }
        }
    }
}
