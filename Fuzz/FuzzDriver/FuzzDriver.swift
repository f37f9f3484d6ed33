// libFuzzer's driver for the fuzz targets: only built by launch/fuzz.sh (with -sanitize=fuzzer, which links
// libFuzzer), so the ordinary build and the tests never need the symbol.

/// Runs libFuzzer's driver (command-line options, corpus folders, mutation loop) over `body`: the
/// entry point of a fuzz target. SwiftPM links an executable with `main` pointing at `<module>_main`, so a
/// target's `<module>_main` calls this rather than relying on libFuzzer's own `main`.
public func runLibFuzzer(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>,
                         _ body: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32) -> Int32 {
    var count = argc
    var vector: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv
    return withUnsafeMutablePointer(to: &vector) { v in
        v.withMemoryRebound(to: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.self, capacity: 1) {
            LLVMFuzzerRunDriver(&count, $0, body)
        }
    }
}
}

/// libFuzzer's driver (compiler-rt's libFuzzer, linked by `-sanitize=fuzzer`):
/// `int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *, size_t))`.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32) -> Int32
