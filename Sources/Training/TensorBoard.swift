import Foundation
import Support

/// TensorBoard event files written natively, with no Python at training time: TFRecord framing (length,
/// masked CRC-32C of the length, the record, masked CRC-32C of the record) around `Event` protocol buffers that
/// carry scalar `Summary` values. Only the few messages needed are encoded, by hand:
///
/// ```
/// Event      { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
///              SessionLog session_log = 7; }
/// Summary    { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
/// SessionLog { Status status = 1; }          (START = 1)
/// ```
///
/// Each process that writes opens a new `events.out.tfevents.<seconds>.<host>.<pid>` file in the folder;
/// TensorBoard reads a folder's files in name order as one run. A resumed run first writes a `SessionLog`
/// START at the step it continues from: TensorBoard then drops the events of the earlier process from that
/// step on, so no step shows twice.
public final class TensorBoardEvents {
    /// The event file this process writes.
    public let path: String
    private let handle: FileHandle

    /// Opens a new event file in `directory` (created when missing) and writes the file-version event.
    public init(directory: String, wallTime: Double = Date().timeIntervalSince1970) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "host"
        path = "\(directory)/events.out.tfevents.\(Int(wallTime)).\(host).\(getpid())"
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path)
        else {
            throw AttunetError("\(path): cannot create the TensorBoard event file")
        }
        handle = h
        try write(Self.event(wallTime: wallTime, step: 0, body: Self.stringField(3, "brain.Event:2")))
    }

    deinit { try? handle.close() }

    /// Marks a (re)start at `step`: TensorBoard discards the events an earlier process wrote at `step` and later.
    public func start(step: Int, wallTime: Double = Date().timeIntervalSince1970) throws {
        let sessionLog = Self.varintField(1, 1)  // status: START
        try write(Self.event(wallTime: wallTime, step: step, body: Self.bytesField(7, sessionLog)))
    }

    /// Writes one event with the scalar values `tag → value` at `step` (non-finite values are written as they
    /// are; TensorBoard shows them as gaps).
    public func scalars(
        _ values: [(tag: String, value: Double)], step: Int, wallTime: Double = Date().timeIntervalSince1970
    ) throws {
        var summary = Data()
        for (tag, value) in values {
            var v = Self.stringField(1, tag)
            v.append(0x15)  // field 2, fixed32
            withUnsafeBytes(of: Float(value).bitPattern.littleEndian) { v.append(contentsOf: $0) }
            summary.append(Self.bytesField(1, v))
        }
        try write(Self.event(wallTime: wallTime, step: step, body: Self.bytesField(5, summary)))
    }

    /// Appends one TFRecord and flushes it to the file (a killed run keeps every whole record written).
    func write(_ record: Data) throws {
        var frame = Data()
        withUnsafeBytes(of: UInt64(record.count).littleEndian) { frame.append(contentsOf: $0) }
        let lengthCRC = Self.maskedCRC32C(frame)
        withUnsafeBytes(of: lengthCRC.littleEndian) { frame.append(contentsOf: $0) }
        frame.append(record)
        withUnsafeBytes(of: Self.maskedCRC32C(record).littleEndian) { frame.append(contentsOf: $0) }
        do {
            try handle.write(contentsOf: frame)
            try handle.synchronize()
        } catch {
            throw AttunetError("\(path): cannot write a TensorBoard event (\(error))")
        }
    }

    // MARK: Protocol buffer encoding

    static func event(wallTime: Double, step: Int, body: Data) -> Data {
        var e = Data([0x09])  // field 1, fixed64
        withUnsafeBytes(of: wallTime.bitPattern.littleEndian) { e.append(contentsOf: $0) }
        e.append(varintField(2, UInt64(bitPattern: Int64(step))))
        e.append(body)
        return e
    }

    static func varint(_ value: UInt64) -> Data {
        var v = value
        var out = Data()
        repeat {
            var byte = UInt8(v & 0x7F)
            v >>= 7
            if v != 0 { byte |= 0x80 }
            out.append(byte)
        } while v != 0
        return out
    }

    static func varintField(_ field: UInt64, _ value: UInt64) -> Data { varint(field << 3) + varint(value) }

    static func bytesField(_ field: UInt64, _ bytes: Data) -> Data {
        varint(field << 3 | 2) + varint(UInt64(bytes.count)) + bytes
    }

    static func stringField(_ field: UInt64, _ s: String) -> Data { bytesField(field, Data(s.utf8)) }

    // MARK: CRC-32C (Castagnoli), masked as TFRecord masks it

    static let crcTable: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }

    /// CRC-32C of `data` (the checksum iSCSI and TFRecord use; "123456789" → 0xE3069283).
    static func crc32c(_ data: Data) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in data { c = crcTable[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }

    /// TFRecord's mask: rotate right by 15 bits and add a constant, so a CRC of data holding CRCs stays strong.
    static func maskedCRC32C(_ data: Data) -> UInt32 {
        let c = crc32c(data)
        return ((c >> 15) | (c << 17)) &+ 0xA282_EAD8
    }
}
