// libFuzzer target "config" (launch/fuzz.sh config SECONDS): FuzzReaders.config on each input.
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FuzzReaders.fuzz("config", data, size)
}
