// libFuzzer target "nifti" (launch/fuzz.sh nifti SECONDS): FuzzReaders.nifti on each input.
// Built with -parse-as-library: the program starts at FuzzNIfTI_main (SwiftPM's main) or, where a build
// leaves main to libFuzzer, at libFuzzer's main, which calls LLVMFuzzerTestOneInput.
import FuzzDriver
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNIfTI(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FuzzReaders.fuzz("nifti", data, size)
}

@_cdecl("FuzzNIfTI_main")
public func fuzzNIfTIMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    runLibFuzzer(argc, argv) { data, size in FuzzReaders.fuzz("nifti", data, size) }
}
