import Foundation
import TestSupport
import XCTest

/// Every subcommand's `--help` as a user reads it in an 80-column terminal.
///
/// argument-parser wraps help text greedily at the terminal width, and keeps the line breaks of the source. A
/// paragraph hard-wrapped in the source at another width therefore comes out ragged: each source line is
/// broken again, leaving a short line before the next source line. The help strings keep each paragraph on
/// one source line; example commands and list items stand on lines of their own.
final class HelpTextTests: XCTestCase {
    static let width = 80

    /// `attunet --help` and every subcommand's, nested ones included (found in the SUBCOMMANDS sections), and
    /// the hidden probe-hdf5.
    func commands() throws -> [[String]] {
        var found: [[String]] = []
        var queue: [[String]] = [[]]
        while let command = queue.first {
            queue.removeFirst()
            found.append(command)
            queue += try Self.subcommands(in: help(command, columns: Self.width)).map { command + [$0] }
        }
        XCTAssertTrue(found.contains(["experiment", "transfer"]) && found.contains(["bench", "layers"]), "\(found)")
        return found + [["probe-hdf5"]]
    }

    static func name(_ command: [String]) -> String { (["attunet"] + command).joined(separator: " ") }

    func help(_ command: [String], columns: Int) throws -> String {
        let r = try TestEnv.run(
            "COLUMNS=\(columns) \(TestEnv.attunet) \((command + ["--help"]).joined(separator: " "))")
        XCTAssertEqual(r.status, 0, "\(Self.name(command)) --help: \(r.stderr)")
        return r.stdout
    }

    /// No paragraph of any help text is ragged at 80 columns.
    func testNoRaggedWrapAt80Columns() throws {
        var failures: [String] = []
        for command in try commands() {
            let ragged = Self.raggedLines(try help(command, columns: Self.width))
            guard !ragged.isEmpty else { continue }
            failures.append(
                "\(Self.name(command)) --help: \(ragged.count) ragged line(s) at \(Self.width) columns:\n"
                    + ragged.map { "  | \($0.0)\n  | \($0.1)\n" }.joined(separator: "  ...\n"))
        }
        XCTAssertTrue(failures.isEmpty, "\n" + failures.joined(separator: "\n"))
    }

    /// Example commands and list items (the indented lines of the overview) fit in 80 columns: argument-parser
    /// would wrap a longer one flush left, out of its indentation.
    func testIndentedLinesFitIn80Columns() throws {
        var failures: [String] = []
        for command in try commands() {
            var overview = false
            for line in try help(command, columns: 10_000).split(separator: "\n", omittingEmptySubsequences: false) {
                if line.hasPrefix("OVERVIEW:") { overview = true } else if line.hasPrefix("USAGE:") { overview = false }
                // A line must end before the last column: argument-parser breaks a line unless its newline fits too.
                if overview && line.hasPrefix(" ") && line.count >= Self.width {
                    failures.append("\(Self.name(command)) --help: \(line.count) columns: \(line)")
                }
            }
        }
        XCTAssertTrue(failures.isEmpty, "\n" + failures.joined(separator: "\n"))
    }

    /// Each abstract fits the OVERVIEW line at 80 columns (the details belong to the discussion).
    func testAbstractsFitOneLine() throws {
        var failures: [String] = []
        for command in try commands() {
            let lines = try help(command, columns: Self.width).split(separator: "\n", omittingEmptySubsequences: false)
            if lines.count > 1, lines[0].hasPrefix("OVERVIEW:"), !lines[1].isEmpty {
                failures.append("\(Self.name(command)): \(lines[0]) / \(lines[1])")
            }
        }
        XCTAssertTrue(failures.isEmpty, "\n" + failures.joined(separator: "\n"))
    }

    /// Defaults show as users think of them: the same help whatever ATTUNET_THREADS holds (the rule, not this
    /// shell's value), and no number printed to the Double's last digit (0.3333333333333333).
    func testDefaultsDoNotDependOnTheEnvironment() throws {
        var failures: [String] = []
        for command in try commands() {
            let plain = try help(command, columns: Self.width)
            let r = try TestEnv.run(
                "ATTUNET_THREADS=7 COLUMNS=\(Self.width) \(TestEnv.attunet) \((command + ["--help"]).joined(separator: " "))"
            )
            if r.stdout != plain { failures.append("\(Self.name(command)) --help changes with ATTUNET_THREADS") }
            if let long = plain.range(of: #"default: [^)]*[0-9]\.[0-9]{6,}"#, options: .regularExpression) {
                failures.append("\(Self.name(command)) --help: \(plain[long])")
            }
        }
        XCTAssertTrue(failures.isEmpty, "\n" + failures.joined(separator: "\n"))
    }

    /// The checker itself: it flags a paragraph hard-wrapped at 105 columns, and passes the same paragraph as
    /// argument-parser wraps it from one source line, with its option table and examples.
    func testRaggedCheckerCatchesHardWrappedParagraphs() {
        let ragged = """
            OVERVIEW: A command.

            Run any subcommand plainly for one process, or under `mpirun -np N` for N
            data-parallel ranks;
            only rank 0 prints and writes files.

            USAGE: attunet x
            """
        XCTAssertEqual(Self.raggedLines(ragged).map(\.1), ["only rank 0 prints and writes files."])
        let clean = """
            OVERVIEW: A command.

            Run any subcommand plainly for one process, or under `mpirun -np N` for N
            data-parallel ranks; only rank 0 prints and writes files.
              attunet doctor
              mpirun -np 2 attunet doctor
            1. A list item.
            2. Another.

            USAGE: attunet x

            OPTIONS:
              --threads <n>           Threads per rank: every layer's work is spread over
                                      them. (default: 1)
              -h, --help              Show help information.
            """
        XCTAssertEqual(Self.raggedLines(clean).count, 0)
    }

    /// The ragged line pairs of a help text: within a paragraph (consecutive non-blank lines of the same
    /// indentation), a line A followed by B is ragged when B's first word would have fitted on A. Not
    /// paragraphs: the indented lines of the overview (example commands, list items), lines that start a list
    /// item ("- ", "1. "), the USAGE line, and the entries of the option, argument and subcommand tables
    /// (indented 2; their help, indented further, is checked).
    ///
    /// argument-parser puts a word on a line only when the space or newline after it fits too, so B's word
    /// would have fitted when `A + space + word` is shorter than the width (not merely no longer).
    static func raggedLines(_ text: String, width: Int = width) -> [(String, String)] {
        var out: [(String, String)] = []
        var overview = false
        var previous: Substring = ""
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            defer {
                previous = line
                if line.hasPrefix("OVERVIEW:") { overview = true } else if line.hasPrefix("USAGE:") { overview = false }
            }
            let a = previous
            let b = line
            guard !a.allSatisfy(\.isWhitespace), !b.allSatisfy(\.isWhitespace) else { continue }
            let indent = b.prefix { $0 == " " }.count
            guard a.prefix(while: { $0 == " " }).count == indent, !a.hasPrefix("USAGE:"), !b.hasPrefix("USAGE:") else {
                continue
            }
            let text = b.dropFirst(indent)
            if overview {
                guard indent == 0 else { continue }
                if text.range(of: #"^([-*•]|[0-9]+[.)]) "#, options: .regularExpression) != nil { continue }
            } else if indent <= 2 {
                continue
            }
            let word = text.prefix { !$0.isWhitespace }
            if a.count + 1 + word.count < width { out.append((String(a), String(b))) }
        }
        return out
    }

    /// The subcommand names of a SUBCOMMANDS section.
    static func subcommands(in help: String) -> [String] {
        var inSection = false
        var names: [String] = []
        for line in help.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.isEmpty || (line.hasSuffix(":") && !line.hasPrefix(" ")) {
                inSection = line == "SUBCOMMANDS:"
                continue
            }
            if inSection && line.hasPrefix("  ") && !line.hasPrefix("   ") {
                if let name = line.split(separator: " ").first { names.append(String(name)) }
            }
        }
        return names
    }
}
