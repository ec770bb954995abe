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

    /// The bytes whose encoding is exactly `text`, or nil when `text` is not such an encoding: groups of four
    /// characters of the standard alphabet, the last one padded with one or two `=` whose dropped bits are zero.
    package static func decodeCanonical(_ text: String) -> [UInt8]? {
        var text = text
        return text.withUTF8 { chars -> [UInt8]? in
            guard chars.count % 4 == 0 else { return nil }
            let padding = chars.suffix(2).reversed().prefix { $0 == UInt8(ascii: "=") }.count
            let count = chars.count / 4 * 3 - padding
            var valid = true
            let table = values
            let bytes = [UInt8](unsafeUninitializedCapacity: count) { out, initialized in
                var index = 0
                // Every group but the last: four characters of the alphabet (an invalid one has the high bit).
                while index + 4 < chars.count {
                    let (a, b) = (UInt32(table[Int(chars[index])]), UInt32(table[Int(chars[index + 1])]))
                    let (c, d) = (UInt32(table[Int(chars[index + 2])]), UInt32(table[Int(chars[index + 3])]))
                    guard (a | b | c | d) & 0x80 == 0 else {
                        valid = false
                        return
                    }
                    let group = a << 18 | b << 12 | c << 6 | d
                    let written = index / 4 * 3
                    out[written] = UInt8(truncatingIfNeeded: group >> 16)
                    out[written + 1] = UInt8(truncatingIfNeeded: group >> 8)
                    out[written + 2] = UInt8(truncatingIfNeeded: group)
                    index += 4
                }
                // The last group, which may be padded.
                if index < chars.count {
                    var group: UInt32 = 0
                    for offset in 0..<4 {
                        let char = chars[index + offset]
                        let value = table[Int(char)]
                        if value == 0xff && !(char == UInt8(ascii: "=") && offset >= 4 - padding) {
                            valid = false
                            return
                        }
                        group = group << 6 | UInt32(value == 0xff ? 0 : value)
                    }
                    let written = index / 4 * 3
                    out[written] = UInt8(truncatingIfNeeded: group >> 16)
                    if padding < 2 { out[written + 1] = UInt8(truncatingIfNeeded: group >> 8) }
                    if padding < 1 { out[written + 2] = UInt8(truncatingIfNeeded: group) }
                    // The bits a padded group drops must be zero, or the text is not what `encode` writes.
                    let dropped: UInt32 = padding == 2 ? 0xffff : padding == 1 ? 0xff : 0
                    if group & dropped != 0 { valid = false }
                }
                initialized = count
            }
            return valid ? bytes : nil
        }
    }
}
