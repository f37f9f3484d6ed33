import Foundation

/// `x` with `digits` decimals ("%.*f"), for progress lines and tables.
public func fmt(_ x: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", x) }
public func fmt(_ x: Float, _ digits: Int) -> String { fmt(Double(x), digits) }
