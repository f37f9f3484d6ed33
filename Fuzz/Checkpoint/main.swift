// libFuzzer target "checkpoint" (launch/fuzz.sh checkpoint SECONDS): FuzzReaders.checkpoint on each input.
// Built with -parse-as-library: the program starts at FuzzCheckpoint_main (SwiftPM's main) or, where a build
// leaves main to libFuzzer, at libFuzzer's main, which calls LLVMFuzzerTestOneInput.
import FuzzDriver
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCheckpoint(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FuzzReaders.fuzz("checkpoint", data, size)
}

@_cdecl("FuzzCheckpoint_main")
public func fuzzCheckpointMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    runLibFuzzer(argc, argv) { data, size in FuzzReaders.fuzz("checkpoint", data, size) }
}
