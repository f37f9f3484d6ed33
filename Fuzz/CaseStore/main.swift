// libFuzzer target "casestore" (launch/fuzz.sh casestore SECONDS): FuzzReaders.caseStore on each input.
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCaseStore(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FuzzReaders.fuzz("casestore", data, size)
}
