// libFuzzer target "nifti" (launch/fuzz.sh nifti SECONDS): FuzzReaders.nifti on each input.
import FuzzDriver

@_cdecl("FuzzNIfTI_main")  // SwiftPM links the program's main to <module>_main
public func start(_ argc: Int32, _ argv: CArguments) -> Int32 { runLibFuzzer(argc, argv, target: "nifti") }
