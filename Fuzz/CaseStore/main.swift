// libFuzzer target "casestore" (launch/fuzz.sh casestore SECONDS): FuzzReaders.caseStore on each input.
import FuzzDriver

@_cdecl("FuzzCaseStore_main")  // SwiftPM links the program's main to <module>_main
public func start(_ argc: Int32, _ argv: CArguments) -> Int32 { runLibFuzzer(argc, argv, target: "casestore") }
