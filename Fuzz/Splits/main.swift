// libFuzzer target "splits" (launch/fuzz.sh splits SECONDS): FuzzReaders.splits on each input.
// Built with -parse-as-library: the program starts at FuzzSplits_main (SwiftPM's main) or, where a build
// leaves main to libFuzzer, at libFuzzer's main, which calls LLVMFuzzerTestOneInput.
import FuzzDriver
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSplits(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FuzzReaders.fuzz("splits", data, size)
}

@_cdecl("FuzzSplits_main")
public func fuzzSplitsMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    runLibFuzzer(argc, argv) { data, size in FuzzReaders.fuzz("splits", data, size) }
}
