import Foundation
import XCTest

@testable import Training

/// The TFRecord framing's checksum and the protocol buffer encoding, against published values.
final class TensorBoardEventTests: XCTestCase {
    func testCRC32CAndVarints() {
        // The CRC-32C check value (RFC 3720's test vector) and TFRecord's mask of it.
        XCTAssertEqual(TensorBoardEvents.crc32c(Data("123456789".utf8)), 0xE306_9283)
        let c: UInt32 = 0xE306_9283
        XCTAssertEqual(TensorBoardEvents.maskedCRC32C(Data("123456789".utf8)), ((c >> 15) | (c << 17)) &+ 0xA282_EAD8)
        XCTAssertEqual(TensorBoardEvents.crc32c(Data(repeating: 0, count: 32)), 0x8A91_36AA)
        // Varints as protocol buffers write them: 1 → 01, 150 → 96 01, 300 → AC 02.
        XCTAssertEqual([UInt8](TensorBoardEvents.varint(1)), [0x01])
        XCTAssertEqual([UInt8](TensorBoardEvents.varint(150)), [0x96, 0x01])
        XCTAssertEqual([UInt8](TensorBoardEvents.varint(300)), [0xAC, 0x02])
        XCTAssertEqual([UInt8](TensorBoardEvents.stringField(1, "ab")), [0x0A, 0x02, 0x61, 0x62])
    }
}
