import DataPipeline
import Foundation

extension TestEnv {
    /// Writes `count` phantom cases (seed, size `scale`) as NIfTI under `dir`/nii and prepares them into the case
    /// store `dir`/store.h5 at `spacing` mm, in-process; returns the store's path.
    /// `phantom` changes the cohort (`attunet synth`'s knobs); the store's classes are those it labels.
    public static func phantomStore(
        in dir: URL, count: Int, seed: UInt64, scale: Double, spacing: Double,
        phantom: PhantomOptions = PhantomOptions()
    ) throws -> String {
        try Phantom.writeDataset(to: dir.path + "/nii", count: count, seed: seed, scale: scale, options: phantom)
        var options = PrepareOptions()
        options.spacing = spacing
        options.classNames = phantom.labels.classNames
        let store = dir.path + "/store.h5"
        _ = try CasePreparer.run(
            input: try DatasetInput.folder(dir.path + "/nii"), out: store, options: options, skipBad: false)
        return store
    }
}
