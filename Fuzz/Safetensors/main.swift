// libFuzzer target "safetensors" (launch/fuzz.sh safetensors SECONDS): FuzzReaders.safetensors on each input.
// Built with -parse-as-library: the program starts at FuzzSafetensors_main (SwiftPM's main) or, where a build
// leaves main to libFuzzer, at libFuzzer's main, which calls LLVMFuzzerTestOneInput.
import FuzzDriver
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafetensors(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FuzzReaders.fuzz("safetensors", data, size)
}

@_cdecl("FuzzSafetensors_main")
public func fuzzSafetensorsMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    runLibFuzzer(argc, argv) { data, size in FuzzReaders.fuzz("safetensors", data, size) }
}
