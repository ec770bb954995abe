import ContinuonPack

/// The digests a transfer is checked with: SHA-256 (ours), MD5 and CRC-32C (what Cloud Storage reports, in
/// standard base64 of the big-endian bytes), computed in one pass.
public struct TransferChecksums {
    public struct Result: Sendable, Equatable {
        public let size: UInt64
        public let sha256: String
        public let md5Base64: String
        public let crc32cBase64: String
    }

    private let sha256 = SHA256Hasher()
    private let md5 = SHA256Hasher.md5()
    private var crc = CRC32(castagnoli: true)
    private var size: UInt64 = 0

    public init() {}

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        sha256.update(bytes)
        md5.update(bytes)
        crc.update(bytes)
        size += UInt64(bytes.count)
    }

    /// The CRC-32C of the bytes so far (a checkpoint of a spooled upload records it).
    package var crc32cValue: UInt32 { crc.value }

    /// The digests; call once.
    public func finalize() -> Result {
        Result(
            size: size, sha256: sha256.finalize().hex, md5Base64: Base64.encode(md5.finalize().bytes),
            crc32cBase64: crc.bigEndianBase64)
    }
}
