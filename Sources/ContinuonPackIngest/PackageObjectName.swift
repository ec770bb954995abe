import ContinuonPack

/// The only object names the ingestion service knows: `<package_id>.cpkg`, 64 lowercase hex digits then `.cpkg`.
///
/// Every route validates names into this type before anything else happens, and stores take only this type, so a
/// client's text can never become a path (`../`, `/`, NUL, `%2F`, symlink tricks): the characters it can hold are
/// `0-9`, `a-f`, `.`, `c`, `p`, `k`, `g`.
public struct PackageObjectName: Sendable, Hashable, CustomStringConvertible {
    public let text: String

    public init?(_ text: some StringProtocol) {
        let text = String(text)
        guard text.utf8.count == 69, text.hasSuffix(".cpkg"), Hex.isLowercaseDigest(String(text.dropLast(5))) else {
            return nil
        }
        self.text = text
    }

    /// A name from a URL path segment, percent-decoded strictly (`%` then two hex digits).
    public init?(percentEncoded segment: some StringProtocol) {
        guard let decoded = Self.percentDecode(Array(segment.utf8)) else { return nil }
        self.init(String(decoding: decoded, as: UTF8.self))
    }

    /// The package ID: the name without `.cpkg`.
    public var packageID: String { String(text.utf8.prefix(64).map { Character(Unicode.Scalar($0)) }) }

    public var description: String { text }

    /// Percent-decoding with no leniency: a `%` not followed by two hex digits is refused; `+` stays `+`.
    /// At most 4 KiB of output (names are 69 bytes).
    static func percentDecode(_ bytes: [UInt8]) -> [UInt8]? {
        var out: [UInt8] = []
        var index = 0
        while index < bytes.count {
            guard out.count < 4096 else { return nil }
            let byte = bytes[index]
            if byte == UInt8(ascii: "%") {
                guard index + 2 < bytes.count, let high = hexValue(bytes[index + 1]), let low = hexValue(bytes[index + 2])
                else { return nil }
                out.append(high << 4 | low)
                index += 3
            } else {
                out.append(byte)
                index += 1
            }
        }
        return out
    }

    static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
