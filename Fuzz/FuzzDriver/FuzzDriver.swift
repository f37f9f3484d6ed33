// libFuzzer's driver for the fuzz targets: only built by launch/fuzz.sh (with -sanitize=fuzzer, which links
// libFuzzer), so the ordinary build and the tests never need its symbol.
import FuzzSupport

/// A C program's argument vector (`char **argv`).
public typealias CArguments = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>

/// The target this process fuzzes (one per process, set once before the driver starts).
nonisolated(unsafe) private var fuzzTarget = ""

/// Runs libFuzzer's driver (command-line options, corpus folders, mutation loop) over
/// `FuzzReaders.fuzz(target, ...)`: the entry point of a fuzz target. SwiftPM links an executable's `main` to
/// its `<module>_main`, which each target defines to call this.
public func runLibFuzzer(_ argc: Int32, _ argv: CArguments, target: String) -> Int32 {
    fuzzTarget = target
    var count = argc
    var vector: CArguments? = argv
    return withUnsafeMutablePointer(to: &vector) { v in
        v.withMemoryRebound(to: CArguments.self, capacity: 1) {
            LLVMFuzzerRunDriver(&count, $0, fuzzOneInput)
        }
    }
}

/// libFuzzer's callback for one input, under the name libFuzzer's runtime links against.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FuzzReaders.fuzz(fuzzTarget, data, size)
}

/// libFuzzer's driver (compiler-rt's libFuzzer, linked by `-sanitize=fuzzer`):
/// `int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *, size_t))`.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<CArguments>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32
) -> Int32
