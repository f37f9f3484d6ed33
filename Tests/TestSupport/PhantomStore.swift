import DataPipeline
import Foundation
import XCTest

/// The small phantom case store the training tests share: 4 cases at 4 mm (volumes of about 90x70x50, X x Y x Z; four
/// classes), made in-process once and removed by the suites' class tear-down.
public enum PhantomStore {
    nonisolated(unsafe) private static var dir: URL?

    public static func path() throws -> String {
        if let dir { return dir.appendingPathComponent("store.h5").path }
        let d = try TestEnv.tempDir()
        let store = try TestEnv.phantomStore(in: d, count: 4, seed: 3, scale: 0.5, spacing: 4)
        dir = d
        return store
    }

    public static func remove() {
        if let dir { try? FileManager.default.removeItem(at: dir) }
        dir = nil
    }
}

/// The suites that train on the shared phantom store: a fresh folder `work` per test (removed after it), and the
/// store removed after the suite.
open class PhantomRunTestCase: XCTestCase {
    override open class func tearDown() {
        PhantomStore.remove()
        super.tearDown()
    }

    public var work: URL!
    override open func setUpWithError() throws { work = try TestEnv.tempDir() }
    override open func tearDownWithError() throws { try? FileManager.default.removeItem(at: work) }
}
