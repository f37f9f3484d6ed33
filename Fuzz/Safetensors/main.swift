// libFuzzer target "safetensors" (launch/fuzz.sh safetensors SECONDS): FuzzReaders.safetensors on each input.
import FuzzDriver

@_cdecl("FuzzSafetensors_main")  // SwiftPM links the program's main to <module>_main
public func start(_ argc: Int32, _ argv: CArguments) -> Int32 { runLibFuzzer(argc, argv, target: "safetensors") }
