// swift-tools-version:6.0
// attunet: data-parallel 3D Attention U-Net trainer over MPI on CPU clusters.
// Targets, bottom up (see README.md "Layout"): system libraries and C shims, CKernels (the 3x3x3 convolutions),
// CThreadPool (the workers of the parallel loops),
// Support (the error type, atomic writes), Tensor, HDF5Kit, Collectives, NN, DataPipeline, Evaluation (the metrics),
// Inference (sliding-window prediction and NIfTI export), Training, and the `attunet` executable, which depends
// on Swift modules only.
import PackageDescription

let package = Package(
    name: "attunet",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "attunet", targets: ["attunet"]),
        .library(name: "AttuNet", targets: ["Workflows"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // `swift package generate-documentation` (the DocC catalogs under Sources/); a plugin only, never linked.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // System libraries: module maps + static-inline shims for what Swift cannot import (macros).
        .systemLibrary(
            name: "CMPI", path: "Sources/CMPI", pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]),
        .systemLibrary(
            name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(
            name: "CHDF5", path: "Sources/CHDF5", pkgConfig: "hdf5",
            providers: [.apt(["libhdf5-dev"])]),
        // nifticlib ships no pkg-config file and includes its own headers with <...> from /usr/include/nifti:
        // the one target that needs unsafeFlags (an include path). Swift never sees nifticlib's headers.
        .target(
            name: "CNIfTI", path: "Sources/CNIfTI", exclude: ["README.md"],
            cSettings: [.unsafeFlags(["-I/usr/include/nifti"])],
            linkerSettings: [.linkedLibrary("niftiio"), .linkedLibrary("znz"), .linkedLibrary("z")]),
        // OpenSSL's libcrypto for the SHA-256 digests that checkpoints store (the EVP API, no shim code).
        .systemLibrary(
            name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]),
        // libpng for the attention montages (a static-inline shim over its simplified write API).
        .systemLibrary(
            name: "CPNG", path: "Sources/CPNG", pkgConfig: "libpng",
            providers: [.apt(["libpng-dev"])]),
        // The 3x3x3 convolutions: direct AVX2 and AVX-512, Winograd F(2,3), im2col + sgemm; chosen per layer at run time.
        .target(name: "CKernels", dependencies: ["CBLAS"], path: "Sources/CKernels", exclude: ["README.md"]),

        // The persistent worker threads of Tensor's parallel loops.
        .target(name: "CThreadPool", path: "Sources/CThreadPool", exclude: ["README.md"]),

        .target(name: "Support"),
        .target(name: "Tensor", dependencies: ["Support", "CBLAS", "CThreadPool"]),
        .target(name: "HDF5Kit", dependencies: ["Support", "CHDF5"]),
        .target(name: "Collectives", dependencies: ["Support", "CMPI"]),
        .target(
            name: "NN",
            dependencies: [
                "Support", "Tensor", "CKernels", "HDF5Kit", "COpenSSL",
            ]),
        .target(name: "DataPipeline", dependencies: ["Support", "Tensor", "HDF5Kit", "CNIfTI", "Collectives"]),
        // The metrics of the paper's tables; scoring never needs a network, so no NN.
        .target(name: "Evaluation", dependencies: ["Support", "Tensor", "DataPipeline", "Collectives"]),
        .target(name: "Inference", dependencies: ["Support", "Tensor", "NN", "DataPipeline", "CPNG"]),
        .target(
            name: "Training",
            dependencies: [
                "Support", "Tensor", "NN", "DataPipeline", "Evaluation", "Inference", "Collectives", "HDF5Kit",
            ]),
        // The application layer: prediction to files, evaluation and its reports, cross-validation and the
        // experiments; `cv`, `experiment` and the standalone commands share it.
        .target(
            name: "Workflows",
            dependencies: [
                "Support", "Tensor", "NN", "DataPipeline", "Evaluation", "Inference", "Training", "Collectives",
                "HDF5Kit",
            ]),
        .executableTarget(
            name: "attunet",
            dependencies: [
                "Support", "Tensor", "HDF5Kit", "Collectives", "NN", "DataPipeline", "Evaluation", "Inference",
                "Training", "Workflows",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),

        // The readers the fuzz targets drive (Fuzz/; launch/fuzz.sh), shared with the fuzz regression tests.
        .target(
            name: "FuzzSupport",
            dependencies: ["Support", "Tensor", "HDF5Kit", "NN", "DataPipeline", "Training", "Workflows"],
            path: "Fuzz/FuzzSupport"),
        .target(name: "TestSupport", dependencies: ["DataPipeline"], path: "Tests/TestSupport"),
        // One test target per source target, each depending on what it tests (+ TestSupport); attunetTests runs the
        // built command-line tool as a whole. CKernels is tested through NN's Conv3d on every path the CPU runs.
        .testTarget(name: "SupportTests", dependencies: ["Support"]),
        .testTarget(name: "TensorTests", dependencies: ["Tensor"]),
        .testTarget(name: "HDF5KitTests", dependencies: ["HDF5Kit", "Support", "TestSupport"]),
        .testTarget(name: "CollectivesTests", dependencies: ["Collectives", "TestSupport"]),
        .testTarget(name: "NNTests", dependencies: ["NN", "Support", "Tensor", "HDF5Kit", "TestSupport"]),
        .testTarget(name: "DataPipelineTests", dependencies: ["DataPipeline", "Tensor", "TestSupport"]),
        .testTarget(
            name: "EvaluationTests", dependencies: ["Evaluation", "DataPipeline", "Tensor", "Support", "TestSupport"]),
        .testTarget(
            name: "TrainingTests",
            dependencies: [
                "Training", "Evaluation", "Inference", "Support", "NN", "DataPipeline", "Tensor", "HDF5Kit",
                "Collectives", "TestSupport", "FuzzSupport",
            ]),
        .testTarget(
            name: "WorkflowsTests",
            dependencies: [
                "Workflows", "Training", "Evaluation", "Inference", "Support", "NN", "DataPipeline", "Tensor",
                "HDF5Kit", "Collectives", "TestSupport", "FuzzSupport",
            ]),
        .testTarget(
            name: "InferenceTests",
            dependencies: ["Inference", "Support", "NN", "DataPipeline", "Tensor", "TestSupport"]),
        .testTarget(
            name: "attunetTests",
            dependencies: [
                "attunet", "Workflows", "Training", "NN", "DataPipeline", "Evaluation", "Inference", "Tensor",
                "TestSupport",
            ]),
    ]
)

// libFuzzer targets (Fuzz/<Name>/main.swift: the <module>_main that SwiftPM links as the program's main, which
// starts libFuzzer's driver from FuzzDriver over FuzzSupport's reads): in the manifest only when launch/fuzz.sh
// builds them (ATTUNET_FUZZ=1, with -sanitize=fuzzer,address and -parse-as-library, into .build-fuzz), so a
// plain `swift build` or `swift test` never sees them. FuzzSupport (the readers each target drives, and the
// input file) is an ordinary library: the regression tests of what fuzzing found use it too.
if Context.environment["ATTUNET_FUZZ"] == "1" {
    package.targets.append(.target(name: "FuzzDriver", dependencies: ["FuzzSupport"], path: "Fuzz/FuzzDriver"))
    for name in ["NIfTI", "CaseStore", "Checkpoint", "Safetensors", "Splits", "Config"] {
        package.targets.append(
            .executableTarget(
                name: "Fuzz\(name)", dependencies: ["FuzzDriver"],
                path: "Fuzz/\(name)"))
        package.products.append(.executable(name: "fuzz-\(name.lowercased())", targets: ["Fuzz\(name)"]))
    }
}
