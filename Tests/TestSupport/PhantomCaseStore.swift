import Data
import Foundation

extension TestEnv {
    /// Writes `count` phantom cases (seed, size `scale`) as NIfTI under `dir`/nii and prepares them into the case
    /// store `dir`/store.h5 at `spacing` mm, in-process; returns the store's path.
    public static func phantomStore(in dir: URL, count: Int, seed: UInt64, scale: Double, spacing: Double) throws -> String {
        try Phantom.writeDataset(to: dir.path + "/nii", count: count, seed: seed, scale: scale)
        var options = PrepareOptions()
        options.spacing = spacing
        let store = dir.path + "/store.h5"
        _ = try CasePreparer.run(input: try DatasetInput.folder(dir.path + "/nii"), out: store, options: options, skipBad: false)
        return store
    }
}
