// libFuzzer target "safetensors" (launch/fuzz.sh safetensors SECONDS): FuzzReaders.safetensors on each input.
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafetensors(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FuzzReaders.fuzz("safetensors", data, size)
}
