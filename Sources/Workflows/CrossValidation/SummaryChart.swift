import Foundation
import Training

/// The quartiles and Tukey whiskers of one box in `summary.svg`.
public struct BoxStatistics: Sendable, Equatable {
    public var count: Int
    /// Quartiles by linear interpolation between order statistics (NumPy's default percentile).
    public var q1: Double, median: Double, q3: Double
    /// The most extreme values within 1.5 IQR of the box.
    public var lowWhisker: Double, highWhisker: Double
    public var mean: Double
    /// Values beyond the whiskers, drawn one by one.
    public var outliers: [Double]

    /// nil for no finite value.
    public init?(_ values: [Double]) {
        let v = values.filter(\.isFinite).sorted()
        guard !v.isEmpty else { return nil }
        func quantile(_ q: Double) -> Double {
            let h = q * Double(v.count - 1)
            let lo = Int(h.rounded(.down))
            let hi = min(lo + 1, v.count - 1)
            return v[lo] + (h - Double(lo)) * (v[hi] - v[lo])
        }
        let a = quantile(0.25)
        let b = quantile(0.75)
        let iqr = b - a
        let low = v.first { $0 >= a - 1.5 * iqr } ?? a
        let high = v.last { $0 <= b + 1.5 * iqr } ?? b
        count = v.count
        q1 = a
        median = quantile(0.5)
        q3 = b
        lowWhisker = low
        highWhisker = high
        mean = v.reduce(0, +) / Double(v.count)
        outliers = v.filter { $0 < low || $0 > high }
    }
}

extension CrossValidationSummary {
    /// `summary.svg`: a box plot of the test cases' Dice, one group per class and one box per model (median line,
    /// quartile box, Tukey whiskers, outliers as circles, the mean as a diamond), y fixed to 0...1.
    public func boxPlotSVG() -> String {
        let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
        let modelNames = models.map(\.model)
        let boxWidth = 34.0
        let boxGap = 10.0
        let groupGap = 40.0
        let groupWidth = Double(max(modelNames.count, 1)) * (boxWidth + boxGap) - boxGap
        let x0 = 70.0
        let y0 = 50.0
        let plotHeight = 360.0
        let width = x0 + Double(classNames.count) * (groupWidth + groupGap) + 20
        let legendWidth = 190.0
        let total = max(width + legendWidth, 520)
        let height = y0 + plotHeight + 60
        func y(_ v: Double) -> Double { y0 + (1 - min(max(v, 0), 1)) * plotHeight }
        let n = models.first.map { $0.classes.first?.metrics["dice"]?.count ?? 0 } ?? 0
        var s = """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(total))" height="\(Int(height))" \
            viewBox="0 0 \(Int(total)) \(Int(height))" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11">
            <rect x="0" y="0" width="\(Int(total))" height="\(Int(height))" fill="#ffffff"/>
            <text x="\(px(x0))" y="24" font-size="13" font-weight="bold">Test Dice per organ and model (\(folds) folds, \(xmlEscape(protocolName)) protocol, \(n) test cases per box)</text>

            """
        for t in stride(from: 0.0, through: 1.0001, by: 0.1) {
            s +=
                "<line x1=\"\(px(x0))\" y1=\"\(px(y(t)))\" x2=\"\(px(width))\" y2=\"\(px(y(t)))\" stroke=\"#e3e3e3\" stroke-width=\"1\"/>\n"
            s +=
                "<text x=\"\(px(x0 - 7))\" y=\"\(px(y(t) + 4))\" text-anchor=\"end\">\(String(format: "%.1f", t))</text>\n"
        }
        s +=
            "<text x=\"18\" y=\"\(px(y0 + plotHeight / 2))\" transform=\"rotate(-90 18 \(px(y0 + plotHeight / 2)))\" text-anchor=\"middle\">Dice</text>\n"
        for (ci, className) in classNames.enumerated() {
            let gx = x0 + 20 + Double(ci) * (groupWidth + groupGap)
            s +=
                "<text x=\"\(px(gx + groupWidth / 2))\" y=\"\(px(y0 + plotHeight + 22))\" text-anchor=\"middle\" font-size=\"12\">\(xmlEscape(className))</text>\n"
            for (mi, model) in modelNames.enumerated() {
                let values = cases.filter { $0.model == model && $0.className == className }.map(\.dice)
                guard let b = BoxStatistics(values) else { continue }
                let color = palette[mi % palette.count]
                let bx = gx + Double(mi) * (boxWidth + boxGap)
                let mid = bx + boxWidth / 2
                s +=
                    "<g class=\"box\" data-model=\"\(xmlEscape(model))\" data-class=\"\(xmlEscape(className))\" data-median=\"\(String(format: "%.4f", b.median))\">\n"
                s +=
                    "<line x1=\"\(px(mid))\" y1=\"\(px(y(b.lowWhisker)))\" x2=\"\(px(mid))\" y2=\"\(px(y(b.q1)))\" stroke=\"\(color)\" stroke-width=\"1.4\"/>\n"
                s +=
                    "<line x1=\"\(px(mid))\" y1=\"\(px(y(b.q3)))\" x2=\"\(px(mid))\" y2=\"\(px(y(b.highWhisker)))\" stroke=\"\(color)\" stroke-width=\"1.4\"/>\n"
                for w in [b.lowWhisker, b.highWhisker] {
                    s +=
                        "<line x1=\"\(px(mid - 8))\" y1=\"\(px(y(w)))\" x2=\"\(px(mid + 8))\" y2=\"\(px(y(w)))\" stroke=\"\(color)\" stroke-width=\"1.4\"/>\n"
                }
                s +=
                    "<rect x=\"\(px(bx))\" y=\"\(px(y(b.q3)))\" width=\"\(px(boxWidth))\" height=\"\(px(max(y(b.q1) - y(b.q3), 0.5)))\" fill=\"\(color)\" fill-opacity=\"0.25\" stroke=\"\(color)\" stroke-width=\"1.4\"/>\n"
                s +=
                    "<line x1=\"\(px(bx))\" y1=\"\(px(y(b.median)))\" x2=\"\(px(bx + boxWidth))\" y2=\"\(px(y(b.median)))\" stroke=\"\(color)\" stroke-width=\"2.4\"/>\n"
                let my = y(b.mean)
                s +=
                    "<path d=\"M \(px(mid)) \(px(my - 4)) L \(px(mid + 4)) \(px(my)) L \(px(mid)) \(px(my + 4)) L \(px(mid - 4)) \(px(my)) Z\" fill=\"#ffffff\" stroke=\"\(color)\" stroke-width=\"1.2\"/>\n"
                for o in b.outliers {
                    s +=
                        "<circle cx=\"\(px(mid))\" cy=\"\(px(y(o)))\" r=\"2.8\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.2\"/>\n"
                }
                s += "</g>\n"
            }
        }
        let lx = width + 10
        for (mi, model) in modelNames.enumerated() {
            let ly = y0 + 10 + Double(mi) * 20
            s +=
                "<rect x=\"\(px(lx))\" y=\"\(px(ly - 9))\" width=\"14\" height=\"10\" fill=\"\(palette[mi % palette.count])\" fill-opacity=\"0.25\" stroke=\"\(palette[mi % palette.count])\"/>\n"
            s += "<text x=\"\(px(lx + 20))\" y=\"\(px(ly))\">\(xmlEscape(model))</text>\n"
        }
        let ly = y0 + 20 + Double(modelNames.count) * 20
        s += "<text x=\"\(px(lx))\" y=\"\(px(ly))\" fill=\"#444444\">box: quartiles, line: median</text>\n"
        s += "<text x=\"\(px(lx))\" y=\"\(px(ly + 15))\" fill=\"#444444\">whiskers: 1.5 IQR, o: outliers</text>\n"
        s += "<text x=\"\(px(lx))\" y=\"\(px(ly + 30))\" fill=\"#444444\">diamond: mean</text>\n"
        s += "</svg>\n"
        return s
    }
}

/// SVG coordinates with one decimal.
private func px(_ x: Double) -> String { String(format: "%.1f", x) }
