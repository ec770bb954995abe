/// Detached Ed25519 signatures of whole files (`sign-blob`, `verify-blob`).
public enum BlobSignature {
    /// Pure Ed25519 needs the whole message at once; files larger than this are refused.
    public static let maxMessageBytes = 256 << 20

    /// Standard base64 of the 64 signature bytes.
    public static func encode(_ signature: [UInt8]) -> String { Base64.encode(signature) }

    /// Reads a signature file: 64 raw bytes (as `openssl pkeyutl -sign -rawin` writes), or base64 text of 64
    /// bytes with optional surrounding white space.
    public static func decode(_ contents: [UInt8]) -> [UInt8]? {
        let trimmed = contents.drop { $0 == 0x20 || $0 == 0x0a || $0 == 0x0d || $0 == 0x09 }
            .reversed().drop { $0 == 0x20 || $0 == 0x0a || $0 == 0x0d || $0 == 0x09 }.reversed()
        if let decoded = Base64.decodeCanonical(String(decoding: trimmed, as: UTF8.self)), decoded.count == 64 {
            return decoded
        }
        return contents.count == 64 ? contents : nil
    }
}
