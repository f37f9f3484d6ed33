import ArgumentParser
import Data
import Foundation
import Tensor

/// `attunet synth`: synthetic abdominal CT phantoms as a Decathlon/nnU-Net folder.
struct Synth: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write synthetic abdominal CT cases (NIfTI, Decathlon layout) to exercise the whole pipeline.",
        discussion: """
        Nobody needs real CT to try attunet: each case is a phantom abdomen in Hounsfield units with air, skin,
        fat, muscle, ribs, spine, bowel with gas, liver, stomach, aorta/IVC and the three organs of the paper's
        CT-150 set, labelled 1 spleen, 2 pancreas, 3 kidney. The pancreas is the hard organ, as in real CT: a
        thin, curved, elongated, lobulated tube at ~90 HU next to the duodenum and the splenic vein. Every case
        draws its own body size, organ shapes and positions, a smooth deformation, HU levels, noise (8-20 HU),
        voxel spacing (1.4-2.2 mm in-plane, 2-3 mm slices) and volume size (never a multiple of 16).

        Output (the layout `attunet prepare` and nnU-Net read):
          OUT/imagesTr/phantom_000.nii.gz   int16 HU
          OUT/labelsTr/phantom_000.nii.gz   uint8 labels
          OUT/dataset.json                  labels, modality, file list

        The same --seed gives byte-identical volumes on every machine. Example:
          attunet synth --cases 20 --out data/phantoms --seed 1
          attunet prepare --input data/phantoms --out data/phantoms.h5
        """
    )

    @Option(help: "Number of cases to write.")
    var cases: Int = 20

    @Option(help: "Output folder (created; existing case files are overwritten).")
    var out: String

    @Option(help: "Seed; case i depends only on (seed, i).")
    var seed: UInt64 = 1

    @Option(help: "Case name prefix (files are <name>_NNN.nii.gz).")
    var name: String = "phantom"

    @Option(help: "Resolution factor: 2 halves the voxel spacing (8x the voxels), 0.5 doubles it (quick tests).")
    var resolution: Double = 1

    @Option(help: "Threads generating cases in parallel (default: all cores).")
    var threads: Int = ProcessInfo.processInfo.activeProcessorCount

    func validate() throws {
        guard cases >= 1 else { throw ValidationError("--cases must be at least 1") }
        guard resolution > 0.1 && resolution <= 4 else { throw ValidationError("--resolution must be in (0.1, 4]") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        let start = Date()
        try Phantom.writeDataset(to: out, count: cases, seed: seed, name: name, scale: resolution, threads: threads)
        print(String(format: "wrote %d phantom cases to %@ in %.1f s (labels: 1 spleen, 2 pancreas, 3 kidney)",
                     cases, out, Date().timeIntervalSince(start)))
    }
}
