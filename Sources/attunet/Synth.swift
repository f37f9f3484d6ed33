import ArgumentParser
import DataPipeline
import Foundation
import Support
import Tensor

/// `attunet synth`: synthetic abdominal CT phantoms as a Decathlon/nnU-Net folder.
struct Synth: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write synthetic abdominal CT phantoms (NIfTI, Decathlon layout).",
        discussion: """
            Nobody needs real CT to try attunet: each case is a phantom abdomen in Hounsfield units with air, skin, fat, muscle, ribs, spine, bowel with gas, liver, stomach, aorta/IVC and the three organs of the paper's CT-150 set, labelled 1 spleen, 2 pancreas, 3 kidney. The pancreas is the hard organ, as in real CT: a thin, curved, elongated, lobulated tube at ~90 HU next to the duodenum and the splenic vein. Every case draws its own body size, organ shapes and positions, a smooth deformation, HU levels, noise (8-20 HU), voxel spacing (1.4-2.2 mm in-plane, 2-3 mm slices) and volume size (never a multiple of 16).

            Output (the layout `attunet prepare` and nnU-Net read):
              OUT/imagesTr/phantom_000.nii.gz   int16 HU
              OUT/labelsTr/phantom_000.nii.gz   uint8 labels
              OUT/dataset.json                  labels, modality, file list

            The same --seed gives byte-identical volumes on every machine. Example:
              attunet synth --cases 20 --out data/phantoms --seed 1
              attunet prepare --input data/phantoms --out data/phantoms.h5

            Another cohort, to check settings on more than attunet's own phantoms: the knobs below change the voxel order, the labelled organs' size and the tissue contrast. With none given the cases are byte-identical to those above; with any, case i of a seed is still the same patient (the same random draws), and dataset.json's description lists the knobs used. Defaults:
              --orientation LPS     voxel i to the patient's left, j posterior, k superior
                                    (affine diag(-s, -s, s))
              --oblique-degrees 0   a straight grid
              --organ-scale 1       spleen, pancreas and kidneys at their drawn size

            HU levels are drawn per case: spleen 105-130, pancreas 75-95 (mid-length), kidney cortex 150-200, liver 95-120, bowel loops 25-55 (noise 8-20 HU and organ texture on top). A fixed --*-hu level replaces the draw in every case.

            A hard cohort (half-size organs, spleen close to the liver, pancreas close to the bowel, the other voxel order), on which launch/run-default.sh's CV settings give test Dice 0.78/0.47/0.82 (spleen/pancreas/kidney, Attention U-Net) against 0.91/0.76-0.81/0.89-0.91 on the default cohort:
              attunet synth --cases 20 --out data/hard --seed 1 --orientation RAS \\
                --organ-scale 0.5 --liver-hu 110 --spleen-hu 115 --bowel-hu 45 \\
                --pancreas-hu 55

            Another site (attunet experiment transfer's target cohort): thick slices, finer in-plane spacing, more noise, the pancreatic contrast phase, smaller organs, and only the pancreas labelled:
              attunet synth --cases 16 --out data/site-b --seed 2 --in-plane-spacing 1.2 \\
                --slice-thickness 5 --noise-hu 40 --pancreas-hu 125 --liver-hu 80 \\
                --kidney-hu 230 --organ-scale 0.75 --labels pancreas

            Exit status:
              0   done
              1   an error, one line each on stderr
              64  bad command line
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

    @Option(name: .customLong("threads"), help: "Threads generating cases in parallel.")
    var threadCount = CoreCount.allCores
    var threads: Int { threadCount.value }

    @Option(
        help: ArgumentHelp(
            "Voxel order of the written volumes as nibabel's aff2axcodes reports it: one code of each pair R/L, A/P, S/I per voxel axis i, j, k, in any order (RAS, LPS, LAS, RPI, SAR, ...: 48 orders). Volume and affine are reordered together, so the anatomy in world space is the same in every order.",
            valueName: "codes"))
    var orientation: String = "LPS"

    @Option(
        help: ArgumentHelp(
            "Rotates the voxel grid by N degrees about the superior axis (right-handed in RAS world coordinates), |N| <= 45: an oblique in-plane grid, grown to keep the whole field of view. The anatomy in world space stays, sampled at the rotated voxels; 0 is a straight grid.",
            valueName: "N"))
    var obliqueDegrees: Double = 0

    @Option(
        help: ArgumentHelp(
            "Linear size factor of the three labelled organs (spleen, pancreas, kidneys), each about its own centre; volumes scale by its cube (0.5: half-size organs, 1/8 the volume). The rest of the anatomy is unchanged. In [0.25, 2].",
            valueName: "factor"))
    var organScale: Double = 1

    @Option(
        name: .customLong("spleen-hu"),
        help: ArgumentHelp("Spleen level in HU for every case (default: drawn from 105-130).", valueName: "HU"))
    var spleenHU: Double?

    @Option(
        name: .customLong("pancreas-hu"),
        help: ArgumentHelp(
            "Pancreas level in HU at mid-length for every case (it falls 10 HU from head to tail; default: drawn, 80-100 at the head, 75-95 at mid-length).",
            valueName: "HU"))
    var pancreasHU: Double?

    @Option(
        name: .customLong("kidney-hu"),
        help: ArgumentHelp(
            "Kidney cortex level in HU for every case; the medulla keeps its drawn offset below it (default: drawn from 150-200).",
            valueName: "HU"))
    var kidneyHU: Double?

    @Option(
        name: .customLong("liver-hu"),
        help: ArgumentHelp(
            "Liver level in HU for every case (unlabelled; default: drawn from 95-120).", valueName: "HU"))
    var liverHU: Double?

    @Option(
        name: .customLong("bowel-hu"),
        help: ArgumentHelp(
            "Bowel loop level in HU for every case; the duodenum next to the pancreas keeps its drawn offset above it (unlabelled; default: drawn from 25-55, duodenum 45-70).",
            valueName: "HU"))
    var bowelHU: Double?

    @Option(
        name: .customLong("in-plane-spacing"),
        help: ArgumentHelp(
            "In-plane voxel spacing in mm for every case (default: drawn from 1.4-2.2).", valueName: "mm"))
    var inPlaneSpacing: Double?

    @Option(
        name: .customLong("slice-thickness"),
        help: ArgumentHelp("Slice spacing in mm for every case (default: drawn from 2.0-3.0).", valueName: "mm"))
    var sliceThickness: Double?

    @Option(
        name: .customLong("noise-hu"),
        help: ArgumentHelp(
            "Image noise, a standard deviation in HU, for every case (default: drawn from 8-20).", valueName: "HU"))
    var noiseHU: Double?

    @Option(
        help: ArgumentHelp(
            "Organs labelled: all (1 spleen, 2 pancreas, 3 kidney) or pancreas (1 pancreas; spleen and kidneys stay in the image, unlabelled, as in TCIA's Pancreas-CT).",
            valueName: "set"))
    var labels: PhantomLabels = .all

    /// The knobs as the generator takes them; the error names the option.
    func phantomOptions() throws -> PhantomOptions {
        var o = PhantomOptions()
        do { o.orientation = try AxisCodes(orientation) } catch let e as AttunetError {
            throw ValidationError("--orientation \(e.message)")
        }
        o.obliqueDegrees = obliqueDegrees
        o.organScale = organScale
        o.spleenHU = spleenHU
        o.pancreasHU = pancreasHU
        o.kidneyHU = kidneyHU
        o.liverHU = liverHU
        o.bowelHU = bowelHU
        o.inPlaneSpacing = inPlaneSpacing
        o.sliceThickness = sliceThickness
        o.noiseHU = noiseHU
        o.labels = labels
        if let problem = o.problems.first { throw ValidationError(problem) }
        return o
    }

    func validate() throws {
        guard cases >= 1 else { throw ValidationError("--cases must be at least 1") }
        guard resolution > 0.1 && resolution <= 4 else { throw ValidationError("--resolution must be in (0.1, 4]") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        _ = try phantomOptions()
    }

    func run() throws {
        let start = Date()
        try Phantom.writeDataset(
            to: out, count: cases, seed: seed, name: name, scale: resolution,
            options: try phantomOptions(), threads: threads)
        let names = labels.classNames.enumerated().dropFirst().map { "\($0.offset) \($0.element)" }.joined(
            separator: ", ")
        print(
            String(
                format: "wrote %d phantom cases to %@ in %.1f s (labels: %@)", cases, out,
                Date().timeIntervalSince(start), names))
    }
}
