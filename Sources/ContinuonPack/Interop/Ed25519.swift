import COpenSSL

/// An owned `EVP_PKEY`, freed in `deinit`. Immutable after creation, so safe to share.
final class EVPKey: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }
    deinit { EVP_PKEY_free(pointer) }
}

/// An owned memory `BIO`.
final class MemoryBIO {
    let pointer: OpaquePointer

    init() throws {
        guard let bio = BIO_new(BIO_s_mem()) else { throw cryptoError("BIO_new failed") }
        pointer = bio
    }

    /// A BIO holding its own copy of `bytes` (BIO_new_mem_buf would borrow memory Swift may free first).
    convenience init(reading bytes: [UInt8]) throws {
        try self.init()
        guard bytes.count < Int32.max else { throw ContinuonPackError(.keyInvalid, "The key file is too large.") }
        let written = bytes.withUnsafeBytes { BIO_write(pointer, $0.baseAddress, Int32($0.count)) }
        guard written == Int32(bytes.count) else { throw cryptoError("BIO_write failed") }
    }

    deinit { BIO_free(pointer) }

    var contents: [UInt8] {
        var data: UnsafeMutablePointer<CChar>?
        let length = cp_bio_mem_data(pointer, &data)
        guard let data, length > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: data, count: length))
    }
}

/// An Ed25519 public key (RFC 8032), as raw 32 bytes, SPKI PEM, or the securesystemslib key ID.
///
/// Only the 32 bytes are kept; OpenSSL's key object is made when the key is used. A trust policy of 10,000 keys then
/// loads without 10,000 OpenSSL objects (and frees without them), and verifying costs one more small allocation.
public struct Ed25519PublicKey: Sendable, Hashable {
    /// The 32 raw public key bytes.
    public let rawRepresentation: [UInt8]

    /// Creates a key from its 32 raw bytes. Any 32 bytes are a key; bytes that are not a point of the curve verify
    /// no signature.
    /// - Throws: `key.invalid` when the bytes are not 32 long.
    public init(rawRepresentation raw: [UInt8]) throws {
        guard raw.count == 32 else {
            throw ContinuonPackError(.keyInvalid, "An Ed25519 public key is 32 bytes, not \(raw.count).")
        }
        self.rawRepresentation = raw
    }

    /// OpenSSL's key object for these bytes.
    func evpKey() throws -> EVPKey {
        guard let pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nil, rawRepresentation, 32) else {
            throw cryptoError("OpenSSL refused the Ed25519 public key bytes.", code: .keyInvalid)
        }
        return EVPKey(pkey)
    }

    init(evpKey: EVPKey) throws {
        var length = 32
        var raw = [UInt8](repeating: 0, count: 32)
        guard EVP_PKEY_get_raw_public_key(evpKey.pointer, &raw, &length) == 1, length == 32 else {
            throw cryptoError("Could not read the raw Ed25519 public key.", code: .keyInvalid)
        }
        try self.init(rawRepresentation: raw)
    }

    /// Loads an SPKI PEM public key (`-----BEGIN PUBLIC KEY-----`), as `openssl pkey -pubout` writes it.
    /// - Throws: `key.invalid`, `key.not_ed25519`.
    public init(pemRepresentation pem: [UInt8]) throws {
        let bio = try MemoryBIO(reading: pem)
        guard let pkey = PEM_read_bio_PUBKEY(bio.pointer, nil, nil, nil) else {
            throw cryptoError("The file is not a PEM public key (SPKI).", code: .keyInvalid)
        }
        let owned = EVPKey(pkey)
        guard EVP_PKEY_get_id(pkey) == EVP_PKEY_ED25519 else {
            throw ContinuonPackError(.keyWrongType, "The public key is not an Ed25519 key.")
        }
        try self.init(evpKey: owned)
    }

    /// Loads SPKI PEM text (what `pemRepresentation()` returns).
    public init(pemRepresentation pem: String) throws {
        try self.init(pemRepresentation: Array(pem.utf8))
    }

    /// SPKI PEM text, byte-identical to what `openssl pkey -pubout` writes.
    public func pemRepresentation() throws -> String {
        let bio = try MemoryBIO()
        let key = try evpKey()
        guard withExtendedLifetime(key, { PEM_write_bio_PUBKEY(bio.pointer, key.pointer) }) == 1 else {
            throw cryptoError("PEM_write_bio_PUBKEY failed")
        }
        return String(decoding: bio.contents, as: UTF8.self)
    }

    /// The key ID: lowercase hex SHA-256 of
    /// `{"keytype":"ed25519","keyval":{"public":"<hex>"},"scheme":"ed25519"}` (as securesystemslib computes it).
    public var keyID: String {
        var canonical = Array(#"{"keytype":"ed25519","keyval":{"public":""#.utf8)
        canonical.reserveCapacity(canonical.count + 64 + 24)
        for byte in rawRepresentation {
            canonical.append(Hex.digit(byte >> 4))
            canonical.append(Hex.digit(byte & 0x0f))
        }
        canonical += #""},"scheme":"ed25519"}"#.utf8
        return SHA256Hasher.hash(canonical).hex
    }

    /// Verifies a pure Ed25519 signature (RFC 8032) over `message`. Malleable signatures (S >= L) are rejected.
    public func isValidSignature(_ signature: [UInt8], for message: [UInt8]) -> Bool {
        guard signature.count == 64, let key = try? evpKey(), let context = EVP_MD_CTX_new() else {
            _ = openSSLErrorText()
            return false
        }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestVerifyInit(context, nil, nil, nil, key.pointer) == 1 else {
            _ = openSSLErrorText()
            return false
        }
        let result = message.withUnsafeBytes { msg in
            signature.withUnsafeBytes { sig in
                EVP_DigestVerify(
                    context, sig.bindMemory(to: UInt8.self).baseAddress, 64,
                    msg.bindMemory(to: UInt8.self).baseAddress, msg.count)
            }
        }
        _ = openSSLErrorText() // leave the thread's error queue clean
        return withExtendedLifetime(key) { result == 1 }
    }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.rawRepresentation == rhs.rawRepresentation }
    public func hash(into hasher: inout Hasher) { hasher.combine(rawRepresentation) }
}

/// An Ed25519 private key held by OpenSSL.
public struct Ed25519PrivateKey: Sendable {
    let key: EVPKey
    /// The matching public key.
    public let publicKey: Ed25519PublicKey

    private init(key: EVPKey) throws {
        self.key = key
        self.publicKey = try Ed25519PublicKey(evpKey: key)
    }

    /// Generates a new key from OpenSSL's CSPRNG.
    public static func generate() throws -> Self {
        guard let context = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nil) else {
            throw cryptoError("EVP_PKEY_CTX_new_id(ED25519) failed")
        }
        defer { EVP_PKEY_CTX_free(context) }
        var pkey: OpaquePointer?
        guard EVP_PKEY_keygen_init(context) == 1, EVP_PKEY_keygen(context, &pkey) == 1, let pkey else {
            throw cryptoError("Ed25519 key generation failed")
        }
        return try Self(key: EVPKey(pkey))
    }

    /// Creates a key from its 32-byte seed (RFC 8032 "private key").
    public init(seed: [UInt8]) throws {
        guard seed.count == 32 else {
            throw ContinuonPackError(.keyInvalid, "An Ed25519 seed is 32 bytes, not \(seed.count).")
        }
        guard let pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nil, seed, 32) else {
            throw cryptoError("OpenSSL refused the Ed25519 seed.", code: .keyInvalid)
        }
        try self.init(key: EVPKey(pkey))
    }

    /// Loads a PKCS#8 PEM private key, plain (`PRIVATE KEY`) or encrypted (`ENCRYPTED PRIVATE KEY`), as written by
    /// `continuon-pack keygen` or `openssl genpkey -algorithm ed25519 [-aes-256-cbc]`.
    /// - Parameter passphrase: needed for an encrypted key; never prompts on a terminal.
    /// - Throws: `key.invalid`, `key.passphrase_required`, `key.not_ed25519`.
    public init(pemRepresentation pem: [UInt8], passphrase: [UInt8]? = nil) throws {
        let bio = try MemoryBIO(reading: pem)
        let encrypted = String(decoding: pem, as: UTF8.self).contains("ENCRYPTED")
        // A non-NULL `u` with a NULL callback is taken as the passphrase, so OpenSSL never prompts on a terminal.
        var secret: [CChar] = (passphrase ?? []).map { CChar(bitPattern: $0) } + [0]
        defer { for index in secret.indices { secret[index] = 0 } }
        let loaded = secret.withUnsafeMutableBytes { PEM_read_bio_PrivateKey(bio.pointer, nil, nil, $0.baseAddress) }
        guard let loaded else {
            if encrypted && passphrase == nil {
                _ = openSSLErrorText()
                throw ContinuonPackError(.keyEncrypted, "The private key is encrypted; give its passphrase.")
            }
            throw cryptoError(
                encrypted ? "Could not decrypt the private key: wrong passphrase or damaged file."
                    : "The file is not a PEM private key (PKCS#8).",
                code: .keyInvalid)
        }
        let owned = EVPKey(loaded)
        guard EVP_PKEY_get_id(loaded) == EVP_PKEY_ED25519 else {
            throw ContinuonPackError(.keyWrongType, "The private key is not an Ed25519 key.")
        }
        try self.init(key: owned)
    }

    /// Loads PEM text (what `pemRepresentation(passphrase:)` returns).
    public init(pemRepresentation pem: String, passphrase: [UInt8]? = nil) throws {
        try self.init(pemRepresentation: Array(pem.utf8), passphrase: passphrase)
    }

    /// PKCS#8 PEM text; encrypted with AES-256-CBC under PBKDF2 (PKCS#5 v2) when a passphrase is given.
    public func pemRepresentation(passphrase: [UInt8]? = nil) throws -> String {
        let bio = try MemoryBIO()
        let written: Int32
        if let passphrase, !passphrase.isEmpty {
            var secret = passphrase.map { CChar(bitPattern: $0) }
            defer { for index in secret.indices { secret[index] = 0 } }
            written = secret.withUnsafeMutableBufferPointer {
                PEM_write_bio_PKCS8PrivateKey(
                    bio.pointer, key.pointer, EVP_aes_256_cbc(), $0.baseAddress, Int32($0.count), nil, nil)
            }
        } else {
            written = PEM_write_bio_PrivateKey(bio.pointer, key.pointer, nil, nil, 0, nil, nil)
        }
        guard written == 1 else { throw cryptoError("Could not encode the private key as PEM") }
        return String(decoding: bio.contents, as: UTF8.self)
    }

    /// A pure Ed25519 signature (RFC 8032) over `message`: 64 bytes, deterministic.
    public func signature(for message: [UInt8]) throws -> [UInt8] {
        guard let context = EVP_MD_CTX_new() else { throw cryptoError("EVP_MD_CTX_new failed") }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestSignInit(context, nil, nil, nil, key.pointer) == 1 else {
            throw cryptoError("EVP_DigestSignInit failed")
        }
        var signature = [UInt8](repeating: 0, count: 64)
        var length = 64
        let result = message.withUnsafeBytes { msg in
            EVP_DigestSign(context, &signature, &length, msg.bindMemory(to: UInt8.self).baseAddress, msg.count)
        }
        guard result == 1, length == 64 else { throw cryptoError("Ed25519 signing failed") }
        return signature
    }
}
