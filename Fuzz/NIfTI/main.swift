// libFuzzer target "nifti" (launch/fuzz.sh nifti SECONDS): FuzzReaders.nifti on each input.
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNIfTI(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FuzzReaders.fuzz("nifti", data, size)
}
