// libFuzzer target "casestore" (launch/fuzz.sh casestore SECONDS): FuzzReaders.caseStore on each input.
// Built with -parse-as-library: the program starts at FuzzCaseStore_main (SwiftPM's main) or, where a build
// leaves main to libFuzzer, at libFuzzer's main, which calls LLVMFuzzerTestOneInput.
import FuzzDriver
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCaseStore(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FuzzReaders.fuzz("casestore", data, size)
}

@_cdecl("FuzzCaseStore_main")
public func fuzzCaseStoreMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    runLibFuzzer(argc, argv) { data, size in FuzzReaders.fuzz("casestore", data, size) }
}
