// libFuzzer target "checkpoint" (launch/fuzz.sh checkpoint SECONDS): FuzzReaders.checkpoint on each input.
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCheckpoint(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FuzzReaders.fuzz("checkpoint", data, size)
}
