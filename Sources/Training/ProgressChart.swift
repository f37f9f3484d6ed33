import Foundation

/// The training progress chart, `progress.svg`, drawn from the records of a `TrainingLog`.
public enum ProgressChart {
    /// The SVG document for `records` (foreground `classNames` in class order).
    ///
    /// 900x600, self-contained, three panels sharing the epoch axis: training loss; validation Dice per class
    /// plus the mean (y fixed to 0...1, with a legend); learning rate (log scale when it spans more than a
    /// factor of 10). Every series is exactly one `<polyline>` through its finite points (so NaN values and
    /// epochs without validation are skipped, and the line joins the epochs that have values); points also get
    /// markers while a series has at most 40 of them. Works with zero records (empty panels).
    public static func svg(records: [EpochRecord], classNames: [String]) -> String {
        let width = 900.0
        let height = 600.0
        let plotX0 = 78.0
        let plotX1 = 722.0
        let panelStride = 190.0
        let panelTop0 = 8.0
        let titleOffset = 15.0
        let plotOffset = 26.0
        let plotHeight = 138.0

        // Shared x axis (epochs).
        let epochs = records.map { Double($0.epoch) }
        var xLo = epochs.min() ?? 0
        var xHi = epochs.max() ?? 1
        if xHi - xLo < 1 {
            xLo -= 0.5
            xHi = xLo + 1
        }  // a single epoch sits in the middle
        let xTicks = SVGAxis.linearTicks(xLo, xHi, target: 10, integer: true).filter {
            $0 >= xLo - 1e-9 && $0 <= xHi + 1e-9
        }
        let xMap = { (e: Double) -> Double in plotX0 + (e - xLo) / (xHi - xLo) * (plotX1 - plotX0) }

        var svg = """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" \
            viewBox="0 0 \(Int(width)) \(Int(height))" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11">
            <rect x="0" y="0" width="\(Int(width))" height="\(Int(height))" fill="#ffffff"/>

            """

        struct Series {
            var name: String
            var color: String
            var values: [(x: Double, y: Double)]  // x in epochs, y in data units (already filtered)
            var dashed = false
            var strokeWidth = 1.6
        }

        func panel(
            index: Int, title: String, note: String, yTicks: [(value: Double, label: String)],
            yLo: Double, yHi: Double, yTransform: @escaping (Double) -> Double,
            series: [Series], legend: Bool
        ) {
            let top = panelTop0 + Double(index) * panelStride
            let py0 = top + plotOffset
            let py1 = py0 + plotHeight
            let tLo = yTransform(yLo)
            let tHi = yTransform(yHi)
            let yMap = { (v: Double) -> Double in
                let t = (yTransform(v) - tLo) / (tHi - tLo)
                return py1 - min(max(t, 0), 1) * plotHeight
            }
            svg += "<g class=\"panel\" id=\"panel\(index)\">\n"
            svg +=
                "<text x=\"\(f(plotX0))\" y=\"\(f(top + titleOffset))\" font-size=\"13\" font-weight=\"bold\">\(xmlEscape(title))</text>\n"
            if !note.isEmpty {
                svg +=
                    "<text x=\"\(f(plotX1))\" y=\"\(f(top + titleOffset))\" text-anchor=\"end\" fill=\"#444444\">\(xmlEscape(note))</text>\n"
            }
            // Grid and ticks.
            for t in yTicks {
                let y = yMap(t.value)
                svg +=
                    "<line x1=\"\(f(plotX0))\" y1=\"\(f(y))\" x2=\"\(f(plotX1))\" y2=\"\(f(y))\" stroke=\"#e3e3e3\" stroke-width=\"1\"/>\n"
                svg +=
                    "<line x1=\"\(f(plotX0 - 4))\" y1=\"\(f(y))\" x2=\"\(f(plotX0))\" y2=\"\(f(y))\" stroke=\"#333333\" stroke-width=\"1\"/>\n"
                svg +=
                    "<text x=\"\(f(plotX0 - 7))\" y=\"\(f(y + 4))\" text-anchor=\"end\">\(xmlEscape(t.label))</text>\n"
            }
            for e in xTicks {
                let x = xMap(e)
                svg +=
                    "<line x1=\"\(f(x))\" y1=\"\(f(py0))\" x2=\"\(f(x))\" y2=\"\(f(py1))\" stroke=\"#eeeeee\" stroke-width=\"1\"/>\n"
                svg +=
                    "<line x1=\"\(f(x))\" y1=\"\(f(py1))\" x2=\"\(f(x))\" y2=\"\(f(py1 + 4))\" stroke=\"#333333\" stroke-width=\"1\"/>\n"
                if index == 2 {
                    svg +=
                        "<text x=\"\(f(x))\" y=\"\(f(py1 + 16))\" text-anchor=\"middle\">\(SVGAxis.label(e, step: 1))</text>\n"
                }
            }
            svg +=
                "<rect x=\"\(f(plotX0))\" y=\"\(f(py0))\" width=\"\(f(plotX1 - plotX0))\" height=\"\(f(plotHeight))\" fill=\"none\" stroke=\"#333333\" stroke-width=\"1\"/>\n"
            // Series: one polyline each, markers when sparse.
            for s in series {
                let pts = s.values.map { (xMap($0.x), yMap($0.y)) }
                let dash = s.dashed ? " stroke-dasharray=\"6,3\"" : ""
                svg +=
                    "<polyline class=\"series\" data-name=\"\(xmlEscape(s.name))\" fill=\"none\" stroke=\"\(s.color)\" "
                    + "stroke-width=\"\(s.strokeWidth)\" stroke-linejoin=\"round\"\(dash) points=\""
                    + pts.map { "\(f($0.0)),\(f($0.1))" }.joined(separator: " ") + "\"/>\n"
                if pts.count <= 40 {
                    for p in pts {
                        svg += "<circle cx=\"\(f(p.0))\" cy=\"\(f(p.1))\" r=\"2.5\" fill=\"\(s.color)\"/>\n"
                    }
                }
            }
            if records.isEmpty {
                svg +=
                    "<text x=\"\(f((plotX0 + plotX1) / 2))\" y=\"\(f((py0 + py1) / 2 + 4))\" text-anchor=\"middle\" fill=\"#999999\">no data yet</text>\n"
            }
            // Legend (right of the plot): swatch, name, last value.
            if legend {
                var y = py0 + 10
                let rowHeight = min(16.0, (plotHeight - 4) / Double(max(series.count, 1)))
                for s in series {
                    let dash = s.dashed ? " stroke-dasharray=\"6,3\"" : ""
                    svg +=
                        "<line x1=\"\(f(plotX1 + 12))\" y1=\"\(f(y - 4))\" x2=\"\(f(plotX1 + 34))\" y2=\"\(f(y - 4))\" stroke=\"\(s.color)\" stroke-width=\"\(s.strokeWidth)\"\(dash)/>\n"
                    var text = s.name.count > 16 ? String(s.name.prefix(15)) + "…" : s.name
                    if let last = s.values.last { text += "  " + String(format: "%.3f", last.y) }
                    svg += "<text x=\"\(f(plotX1 + 40))\" y=\"\(f(y))\">\(xmlEscape(text))</text>\n"
                    y += rowHeight
                }
            }
            svg += "</g>\n"
        }

        // Panel 1: training loss.
        let losses = records.filter { $0.trainLoss.isFinite }.map { (x: Double($0.epoch), y: $0.trainLoss) }
        var lossLo = losses.map(\.y).min() ?? 0
        var lossHi = losses.map(\.y).max() ?? 1
        if lossHi - lossLo <= abs(lossHi) * 1e-9 {
            let pad = lossHi == 0 ? 1 : abs(lossHi) * 0.1
            lossLo -= pad
            lossHi += pad
        }
        let lossPad = 0.04 * (lossHi - lossLo)  // keep the line off the frame
        lossLo = lossLo >= 0 ? max(0, lossLo - lossPad) : lossLo - lossPad
        lossHi += lossPad
        let lossTickValues = SVGAxis.linearTicks(lossLo, lossHi, target: 5, integer: false)
        let lossStep = lossTickValues.count > 1 ? lossTickValues[1] - lossTickValues[0] : 1
        var note = ""
        if let last = records.last {
            note =
                "epoch \(last.epoch) · step \(last.step) · loss \(String(format: "%.4g", last.trainLoss))"
                + " · \(String(format: "%.1f", last.seconds)) s/epoch · \(String(format: "%.1f", last.patchesPerSecond)) patches/s"
        }
        panel(
            index: 0, title: "Training loss", note: note,
            yTicks: lossTickValues.map { ($0, SVGAxis.label($0, step: lossStep)) },
            yLo: lossTickValues.first ?? lossLo, yHi: lossTickValues.last ?? lossHi, yTransform: { $0 },
            series: [Series(name: "train loss", color: "#1f77b4", values: losses)], legend: false)

        // Panel 2: validation Dice per class + mean.
        let palette = [
            "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
            "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f",
        ]
        var diceSeries: [Series] = classNames.indices.map { c in
            Series(
                name: classNames[c], color: palette[c % palette.count],
                values: records.compactMap { r in
                    c < r.validationDice.count && r.validationDice[c].isFinite
                        ? (x: Double(r.epoch), y: r.validationDice[c]) : nil
                })
        }
        let means = records.compactMap { r in r.meanDice.flatMap { $0.isFinite ? (x: Double(r.epoch), y: $0) : nil } }
        diceSeries.append(Series(name: "mean", color: "#000000", values: means, dashed: true, strokeWidth: 2.2))
        var diceNote = ""
        if let best = means.max(by: { $0.y < $1.y }) {
            diceNote = "best mean \(String(format: "%.4f", best.y)) at epoch \(Int(best.x))"
        }
        let diceTicks = stride(from: 0.0, through: 1.0001, by: 0.2).map { ($0, String(format: "%.1f", $0)) }
        panel(
            index: 1, title: "Validation Dice", note: diceNote, yTicks: diceTicks, yLo: 0, yHi: 1,
            yTransform: { $0 }, series: diceSeries, legend: true)

        // Panel 3: learning rate, log scale when it spans more than a factor of 10.
        let lrs = records.filter { $0.learningRate.isFinite }.map { (x: Double($0.epoch), y: $0.learningRate) }
        let positive = lrs.map(\.y).filter { $0 > 0 }
        let useLog = (positive.max() ?? 0) > 10 * (positive.min() ?? .infinity)
        if useLog {
            let kLo = Int(floor(log10(positive.min()!) + 1e-9))
            let kHi = Int(ceil(log10(positive.max()!) - 1e-9))
            let kTop = max(kHi, kLo + 1)
            let every = max(1, (kTop - kLo + 5) / 6)
            let ticks = stride(from: kLo, through: kTop, by: every).map { k in (pow(10, Double(k)), "1e\(k)") }
            panel(
                index: 2, title: "Learning rate (log scale)", note: "", yTicks: ticks,
                yLo: pow(10, Double(kLo)), yHi: pow(10, Double(kTop)), yTransform: { log10($0) },
                series: [Series(name: "lr", color: "#9467bd", values: lrs.filter { $0.y > 0 })], legend: false)
        } else {
            let lo = min(lrs.map(\.y).min() ?? 0, 0)
            var hi = lrs.map(\.y).max() ?? 1
            if hi - lo <= abs(hi) * 1e-9 { hi = hi == 0 ? 1 : hi + abs(hi) * 0.1 }
            if hi <= 0 {
                hi = max(hi, 0) + 1e-12
                if hi - lo <= 0 { hi = lo + 1 }
            }
            hi += 0.04 * (hi - lo)
            let ticks = SVGAxis.linearTicks(lo, hi, target: 5, integer: false)
            let step = ticks.count > 1 ? ticks[1] - ticks[0] : 1
            panel(
                index: 2, title: "Learning rate", note: "", yTicks: ticks.map { ($0, SVGAxis.label($0, step: step)) },
                yLo: ticks.first ?? lo, yHi: ticks.last ?? hi, yTransform: { $0 },
                series: [Series(name: "lr", color: "#9467bd", values: lrs)], legend: false)
        }
        svg +=
            "<text x=\"\(f((plotX0 + plotX1) / 2))\" y=\"\(f(height - 8))\" text-anchor=\"middle\" font-size=\"12\">epoch</text>\n"
        svg += "</svg>\n"
        return svg
    }
}

/// Coordinates with one decimal.
private func f(_ x: Double) -> String { String(format: "%.1f", x) }

/// `s` with the five XML special characters escaped, for text and attribute values in the SVG charts.
public func xmlEscape(_ s: String) -> String {
    var out = ""
    for c in s {
        switch c {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&apos;"
        default: out.append(c)
        }
    }
    return out
}

/// Tick placement and labels for the SVG axes.
enum SVGAxis {
    /// "Nice" ticks (1, 2, 5 x 10^k steps) covering lo...hi, about `target` of them.
    static func linearTicks(_ lo: Double, _ hi: Double, target: Int, integer: Bool) -> [Double] {
        guard lo.isFinite, hi.isFinite, hi > lo else { return [lo] }
        var step = niceStep((hi - lo) / Double(max(target - 1, 1)))
        if integer { step = max(1, step.rounded()) }
        let first = floor(lo / step + 1e-9)
        let last = ceil(hi / step - 1e-9)
        guard last - first < 1000 else { return [lo, hi] }
        return stride(from: first, through: last, by: 1).map { $0 * step }
    }

    static func niceStep(_ raw: Double) -> Double {
        let k = floor(log10(raw))
        let base = pow(10, k)
        let m = raw / base
        let nice: Double = m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10
        return nice * base
    }

    /// Label for a tick on an axis with the given step: fixed decimals for moderate magnitudes, else `2.5e-4`.
    static func label(_ v: Double, step: Double) -> String {
        if abs(v) < step * 1e-6 { return "0" }
        let magnitude = max(abs(v), step)
        if magnitude < 1e-3 || magnitude >= 1e6 {
            let s = String(format: "%.3e", v)  // e.g. "2.500e-04"
            let parts = s.split(separator: "e")
            guard parts.count == 2, let exponent = Int(parts[1]) else { return s }
            var mantissa = String(parts[0])
            while mantissa.hasSuffix("0") { mantissa.removeLast() }
            if mantissa.hasSuffix(".") { mantissa.removeLast() }
            return "\(mantissa)e\(exponent)"
        }
        let decimals = max(0, Int(-floor(log10(step) + 1e-9)))
        return String(format: "%.\(decimals)f", v)
    }
}
