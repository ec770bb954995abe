import CContinuonSystem

/// CRC-32 (ISO-HDLC, as in gzip's trailer: reflected polynomial 0xEDB88320), slicing by 8.
/// `CRC32(castagnoli: true)` computes CRC-32C (polynomial 0x82F63B78), as Cloud Storage's `crc32c` and TFRecord's
/// framing: with the CPU's instruction where it has one (x86-64 SSE 4.2, AArch64 CRC32), else slicing by 8.
package struct CRC32 {
    private static let hasInstruction = csystem_has_crc32c_instruction() == 1

    private static let isoTables = makeTables(polynomial: 0xEDB8_8320)
    private static let castagnoliTables = makeTables(polynomial: 0x82F6_3B78)

    private static func makeTables(polynomial: UInt32) -> [[UInt32]] {
        var tables = [[UInt32]](repeating: [UInt32](repeating: 0, count: 256), count: 8)
        for index in 0..<256 {
            var crc = UInt32(index)
            for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ polynomial : crc >> 1 }
            tables[0][index] = crc
        }
        for index in 0..<256 {
            for table in 1..<8 {
                let previous = tables[table - 1][index]
                tables[table][index] = (previous >> 8) ^ tables[0][Int(previous & 0xff)]
            }
        }
        return tables
    }

    private let tables: [[UInt32]]
    private let useInstruction: Bool
    private var crc: UInt32 = 0xFFFF_FFFF
    /// Bytes seen, modulo 2^32 (gzip's ISIZE).
    private(set) var length: UInt32 = 0

    package var value: UInt32 { ~crc }

    /// The value as Cloud Storage writes its `crc32c`: standard base64 of the four big-endian bytes.
    package var bigEndianBase64: String {
        let value = self.value
        return Base64.encode([UInt8(value >> 24), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)])
    }

    /// - Parameter instruction: false forces the tables (the tests compare both ways).
    package init(castagnoli: Bool = false, instruction: Bool = true) {
        tables = castagnoli ? Self.castagnoliTables : Self.isoTables
        useInstruction = castagnoli && instruction && Self.hasInstruction
    }

    package mutating func update(_ bytes: UnsafeRawBufferPointer) {
        length &+= UInt32(truncatingIfNeeded: bytes.count)
        if useInstruction {
            if let base = bytes.baseAddress { crc = csystem_crc32c_update(crc, base, bytes.count) }
            return
        }
        tables.withUnsafeBufferPointer { tables in
            let t0 = tables[0], t1 = tables[1], t2 = tables[2], t3 = tables[3]
            let t4 = tables[4], t5 = tables[5], t6 = tables[6], t7 = tables[7]
            var crc = self.crc
            var index = 0
            let count = bytes.count
            while index + 8 <= count {
                let low = crc ^ (UInt32(bytes[index]) | UInt32(bytes[index + 1]) << 8
                    | UInt32(bytes[index + 2]) << 16 | UInt32(bytes[index + 3]) << 24)
                crc = t7[Int(low & 0xff)] ^ t6[Int((low >> 8) & 0xff)] ^ t5[Int((low >> 16) & 0xff)]
                    ^ t4[Int(low >> 24)] ^ t3[Int(bytes[index + 4])] ^ t2[Int(bytes[index + 5])]
                    ^ t1[Int(bytes[index + 6])] ^ t0[Int(bytes[index + 7])]
                index += 8
            }
            while index < count {
                crc = (crc >> 8) ^ t0[Int((crc ^ UInt32(bytes[index])) & 0xff)]
                index += 1
            }
            self.crc = crc
        }
    }
}
