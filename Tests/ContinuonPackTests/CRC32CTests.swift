import Testing
@testable import ContinuonPack

@Suite("CRC-32C: the CPU's instruction agrees with the tables")
struct CRC32CTests {
    static func crc(_ bytes: [UInt8], instruction: Bool, castagnoli: Bool = true, split: Int? = nil) -> UInt32 {
        var crc = CRC32(castagnoli: castagnoli, instruction: instruction)
        bytes.withUnsafeBytes { raw in
            let cut = min(split ?? raw.count, raw.count)
            crc.update(UnsafeRawBufferPointer(rebasing: raw[..<cut]))
            crc.update(UnsafeRawBufferPointer(rebasing: raw[cut...]))
        }
        return crc.value
    }

    @Test("The check values of the catalogue: CRC-32C and CRC-32 of \"123456789\"")
    func checkValues() {
        let digits = Array("123456789".utf8)
        #expect(Self.crc(digits, instruction: true) == 0xE306_9283)
        #expect(Self.crc(digits, instruction: false) == 0xE306_9283)
        #expect(Self.crc(digits, instruction: true, castagnoli: false) == 0xCBF4_3926)
        #expect(Self.crc([UInt8](repeating: 0, count: 32), instruction: true) == 0x8A91_36AA)
    }

    @Test("Every length and alignment from 0 to 100 bytes, split anywhere")
    func lengthsAndSplits() {
        var generator: UInt64 = 0x9E37_79B9_7F4A_7C15
        let bytes = (0..<4096).map { _ -> UInt8 in
            generator ^= generator << 13; generator ^= generator >> 7; generator ^= generator << 17
            return UInt8(truncatingIfNeeded: generator)
        }
        for start in 0..<9 {
            for length in 0...100 {
                let slice = Array(bytes[start..<(start + length)])
                let expected = Self.crc(slice, instruction: false)
                #expect(Self.crc(slice, instruction: true) == expected)
                #expect(Self.crc(slice, instruction: true, split: length / 3) == expected)
            }
        }
        #expect(Self.crc(bytes, instruction: true, split: 1001) == Self.crc(bytes, instruction: false))
    }
}
