// libFuzzer target "config" (launch/fuzz.sh config SECONDS): FuzzReaders.config on each input.
// Built with -parse-as-library: the program starts at FuzzConfig_main (SwiftPM's main) or, where a build
// leaves main to libFuzzer, at libFuzzer's main, which calls LLVMFuzzerTestOneInput.
import FuzzDriver
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FuzzReaders.fuzz("config", data, size)
}

@_cdecl("FuzzConfig_main")
public func fuzzConfigMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    runLibFuzzer(argc, argv) { data, size in FuzzReaders.fuzz("config", data, size) }
}
