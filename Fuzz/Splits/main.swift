// libFuzzer target "splits" (launch/fuzz.sh splits SECONDS): FuzzReaders.splits on each input.
import FuzzDriver

@_cdecl("FuzzSplits_main")  // SwiftPM links the program's main to <module>_main
public func start(_ argc: Int32, _ argv: CArguments) -> Int32 { runLibFuzzer(argc, argv, target: "splits") }
