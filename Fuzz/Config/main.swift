// libFuzzer target "config" (launch/fuzz.sh config SECONDS): FuzzReaders.config on each input.
import FuzzDriver

@_cdecl("FuzzConfig_main")  // SwiftPM links the program's main to <module>_main
public func start(_ argc: Int32, _ argv: CArguments) -> Int32 { runLibFuzzer(argc, argv, target: "config") }
