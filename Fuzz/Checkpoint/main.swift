// libFuzzer target "checkpoint" (launch/fuzz.sh checkpoint SECONDS): FuzzReaders.checkpoint on each input.
import FuzzDriver

@_cdecl("FuzzCheckpoint_main")  // SwiftPM links the program's main to <module>_main
public func start(_ argc: Int32, _ argv: CArguments) -> Int32 { runLibFuzzer(argc, argv, target: "checkpoint") }
