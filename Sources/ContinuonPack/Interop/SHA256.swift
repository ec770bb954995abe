import COpenSSL

/// A SHA-256 digest (32 bytes).
public struct SHA256Digest: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]
    /// Lowercase hex, as the format writes digests.
    public var hex: String { Hex.encode(bytes) }
    public var description: String { hex }

    /// True when `text` is exactly this digest's lowercase hex (compared as written, without building a string).
    package func matches(hex text: String) -> Bool {
        var text = text
        return text.withUTF8 { chars in
            guard chars.count == 2 * bytes.count else { return false }
            for (index, byte) in bytes.enumerated()
            where chars[2 * index] != Hex.digit(byte >> 4) || chars[2 * index + 1] != Hex.digit(byte & 0x0f) {
                return false
            }
            return true
        }
    }
}

/// A digest algorithm fetched from OpenSSL's default provider once per process: OpenSSL 3 otherwise fetches it
/// (with locking) at every `EVP_DigestInit_ex` given `EVP_sha256()`, which shows with thousands of small blobs.
private final class FetchedAlgorithm: @unchecked Sendable {
    let pointer: OpaquePointer?
    init(_ name: String) { pointer = EVP_MD_fetch(nil, name, nil) }
    deinit { EVP_MD_free(pointer) }

    static let sha256 = FetchedAlgorithm("SHA2-256")
    static let md5 = FetchedAlgorithm("MD5")
}

/// Streaming SHA-256 from OpenSSL's EVP interface. One owner of one `EVP_MD_CTX`.
public final class SHA256Hasher {
    private let context: OpaquePointer
    private let algorithm: OpaquePointer?
    private let length: Int

    public convenience init() { self.init(algorithm: FetchedAlgorithm.sha256.pointer ?? EVP_sha256(), length: 32) }

    /// MD5, only for Cloud Storage's `md5Hash` transfer check; never for security.
    package static func md5() -> SHA256Hasher { SHA256Hasher(algorithm: FetchedAlgorithm.md5.pointer ?? EVP_md5(), length: 16) }

    private init(algorithm: OpaquePointer?, length: Int) {
        guard let context = EVP_MD_CTX_new() else { fatalError("EVP_MD_CTX_new: out of memory") }
        self.context = context
        self.algorithm = algorithm
        self.length = length
        start()
    }

    private func start() {
        guard EVP_DigestInit_ex(context, algorithm, nil) == 1 else {
            fatalError("EVP_DigestInit_ex failed: \(openSSLErrorText() ?? "unknown")")
        }
    }

    deinit { EVP_MD_CTX_free(context) }

    public func update(_ buffer: UnsafeRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        // EVP_DigestUpdate cannot fail for SHA-256 once initialised, short of memory corruption.
        guard EVP_DigestUpdate(context, base, buffer.count) == 1 else {
            fatalError("EVP_DigestUpdate failed: \(openSSLErrorText() ?? "unknown")")
        }
    }

    public func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// Returns the digest. The hasher must not be used afterwards.
    public func finalize() -> SHA256Digest {
        var out = [UInt8](repeating: 0, count: 64)
        var length: UInt32 = 0
        guard EVP_DigestFinal_ex(context, &out, &length) == 1, Int(length) == self.length else {
            fatalError("EVP_DigestFinal_ex failed: \(openSSLErrorText() ?? "unknown")")
        }
        return SHA256Digest(bytes: Array(out.prefix(self.length)))
    }

    /// Returns the digest and starts a new one with the same context (cheaper than a new hasher per message).
    public func finalizeAndReset() -> SHA256Digest {
        let digest = finalize()
        start()
        return digest
    }

    /// The digest of `bytes` in one call.
    public static func hash(_ bytes: [UInt8]) -> SHA256Digest {
        let hasher = SHA256Hasher()
        hasher.update(bytes)
        return hasher.finalize()
    }
}
