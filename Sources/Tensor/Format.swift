import Foundation

/// `x` with `digits` decimals ("%.*f"), for progress lines and tables.
public func fmt(_ x: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", x) }
public func fmt(_ x: Float, _ digits: Int) -> String { fmt(Double(x), digits) }

/// `x` in the shortest of up to 6 significant digits ("%g": 4, 0.5, 1.25), for values users typed, like mm.
public func fmtShort(_ x: Double) -> String { String(format: "%g", x) }
