// libFuzzer target "splits" (launch/fuzz.sh splits SECONDS): FuzzReaders.splits on each input.
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSplits(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FuzzReaders.fuzz("splits", data, size)
}
