/// Standard base64 (RFC 4648 section 4) with padding. Decoding is canonical: input that does not re-encode to the
/// same text (missing padding, non-zero trailing bits, whitespace, URL alphabet) is refused.
package enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    /// Each byte's 6-bit value, or 0xff for bytes outside the alphabet (`=` included).
    private static let values: [UInt8] = {
        var table = [UInt8](repeating: 0xff, count: 256)
        for (value, byte) in alphabet.enumerated() { table[Int(byte)] = UInt8(value) }
        return table
    }()

    package static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        encode(bytes, into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends the base64 text of `bytes` to `out` (no intermediate string: a manifest's base64 is megabytes).
    package static func encode(_ bytes: [UInt8], into out: inout [UInt8]) {
        out.reserveCapacity(out.count + (bytes.count + 2) / 3 * 4)
        var index = 0
        while index < bytes.count {
            let count = min(3, bytes.count - index)
            var group = UInt32(bytes[index]) << 16
            if count > 1 { group |= UInt32(bytes[index + 1]) << 8 }
            if count > 2 { group |= UInt32(bytes[index + 2]) }
            for position in 0..<4 {
                out.append(position <= count ? alphabet[Int(group >> (18 - 6 * position) & 0x3f)] : UInt8(ascii: "="))
            }
            index += 3
        }
    }

    package static func decodeCanonical(_ text: String) -> [UInt8]? {
        let input = Array(text.utf8)
        guard input.count % 4 == 0 else { return nil }
        let padding = input.reversed().prefix(while: { $0 == UInt8(ascii: "=") }).count
        guard padding <= 2 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(input.count / 4 * 3)
        var group: UInt32 = 0
        for (index, byte) in input.dropLast(padding).enumerated() {
            let value = values[Int(byte)]
            guard value != 0xff else { return nil }
            group = group << 6 | UInt32(value)
            if index % 4 == 3 {
                bytes.append(UInt8(group >> 16))
                bytes.append(UInt8(group >> 8 & 0xff))
                bytes.append(UInt8(group & 0xff))
                group = 0
            }
        }
        // The last, padded group: 2 characters carry 1 byte, 3 carry 2.
        if padding == 2 {
            bytes.append(UInt8(group >> 4 & 0xff))
        } else if padding == 1 {
            bytes.append(UInt8(group >> 10 & 0xff))
            bytes.append(UInt8(group >> 2 & 0xff))
        }
        guard encode(bytes) == text else { return nil }
        return bytes
    }
}
