import ArgumentParser

/// `attunet experiment`: the paper's experiments beyond the CT-150 cross-validation, as presets of other
/// subcommands.
struct Experiment: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The paper's other experiments, as ready-made runs of train and cv.",
        subcommands: [Capacity.self, Transfer.self]
    )
}

/// `attunet experiment capacity`: the paper's capacity comparison, `attunet cv` of the Attention U-Net, the
/// U-Net and the capacity-matched U-Net on the same folds.
struct Capacity: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Cross-validate the Attention U-Net against capacity-matched U-Nets.",
        discussion: """
            The paper's second CT-150 table: does the Attention U-Net's gain come from its extra parameters? This runs attunet cv, a paired cross-validation on the same folds, with --models attention-unet,unet,unet-capacity-matched (the authors' capacity-matched U-Net: unet_CT_dsv_3D at feature scale 3.82, 6,444,328 parameters with 4 classes); --with-10m adds unet-10m (feature scale 3, 10,403,190 parameters, the paper's 10.40 M row). summary.md then lists every model's Dice, precision, recall and S2S with its parameter count and inference time per volume, and the paired Wilcoxon tests of the Attention U-Net against each U-Net. Every other option is attunet cv's (attunet cv --help), passed on as given; the presets fix their feature scale, so --feature-scale is refused when it differs.

              mpirun -np 2 --bind-to none -x OPENBLAS_NUM_THREADS=1 \\
                  attunet experiment capacity --store phantoms.h5 --patch 64x64x32 \\
                  --epochs 20 --out runs/capacity

            Exit status (attunet cv's):
              0   done
              1   an error, one line each on stderr
              3   the loss became NaN/Inf; the last good checkpoint is kept
              4   a collective waited past --step-timeout: a peer died, hung or is
                  unreachable, and the job was ended
              64  bad command line
              75  stopped on request (SIGTERM/SIGUSR1, --stop-after-epochs) after
                  checkpointing the folds in progress: rerun the same command to continue
            """
    )

    @Flag(name: .customLong("with-10m"), help: "Add unet-10m (the paper's 10.40 M U-Net) to the models.")
    var with10m = false

    @Argument(
        parsing: .captureForPassthrough,
        help: ArgumentHelp(
            "attunet cv's options (--store, --out, --folds, ...), except --models.", valueName: "cv options"))
    var cvOptions: [String] = []

    /// The models, in report order: the Attention U-Net first, compared with each U-Net. (`--with-10m` after
    /// the first cv option lands among the passed-on ones, and counts the same.)
    var models: String {
        "attention-unet,unet,unet-capacity-matched" + (with10m || cvOptions.contains("--with-10m") ? ",unet-10m" : "")
    }

    func validate() throws {
        if cvOptions.contains(where: { $0 == "--models" || $0.hasPrefix("--models=") }) {
            throw ValidationError(
                "--models is fixed by experiment capacity (\(models)); run attunet cv for other models")
        }
    }

    func run() throws {
        if cvOptions.contains("--help") || cvOptions.contains("-h") {
            print(
                Capacity.helpMessage(columns: nil) + "\n\nattunet cv's options, all passed on:\n\n"
                    + CV.helpMessage(columns: nil))
            return
        }
        let cv: CV
        do { cv = try CV.parse(["--models", models] + cvOptions.filter { $0 != "--with-10m" }) } catch {
            throw ValidationError(CV.message(for: error))
        }
        try cv.run()
    }
}
