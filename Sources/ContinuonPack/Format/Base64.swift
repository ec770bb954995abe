import Foundation

/// Standard base64 (RFC 4648 section 4) with padding. Decoding is canonical: input that does not re-encode to the
/// same text (missing padding, non-zero trailing bits, whitespace, URL alphabet) is refused.
enum Base64 {
    static func encode(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString()
    }

    static func decodeCanonical(_ text: String) -> [UInt8]? {
        guard let data = Data(base64Encoded: text) else { return nil }
        let bytes = [UInt8](data)
        guard encode(bytes) == text else { return nil }
        return bytes
    }
}
