import COpenSSL

/// An RSA private key held by OpenSSL, for RS256 (RSASSA-PKCS1-v1_5 with SHA-256) signatures: the JWTs a Google
/// service-account key signs to obtain access tokens (RFC 7523). Only the credentials code uses it.
package struct RSASigningKey: Sendable {
    let key: EVPKey

    /// Loads an unencrypted PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`) PEM key, as Google writes it in a
    /// service-account key file.
    /// - Throws: `key.invalid` when the text is not such a key, or the key is not RSA or shorter than 2048 bits.
    package init(pemRepresentation pem: [UInt8]) throws {
        let bio = try MemoryBIO(reading: pem)
        var empty: [CChar] = [0] // a passphrase that is never right: OpenSSL must not prompt on a terminal
        let loaded = empty.withUnsafeMutableBytes { PEM_read_bio_PrivateKey(bio.pointer, nil, nil, $0.baseAddress) }
        guard let loaded else {
            throw cryptoError("The service-account private key is not an unencrypted PEM private key.", code: .keyInvalid)
        }
        let owned = EVPKey(loaded)
        guard EVP_PKEY_get_id(loaded) == EVP_PKEY_RSA else {
            throw ContinuonPackError(.keyInvalid, "The service-account private key is not an RSA key.")
        }
        guard EVP_PKEY_get_bits(loaded) >= 2048 else {
            throw ContinuonPackError(.keyInvalid, "The service-account RSA key is shorter than 2048 bits.")
        }
        key = owned
    }

    /// The RS256 signature of `message`.
    package func signatureRS256(for message: [UInt8]) throws -> [UInt8] {
        guard let context = EVP_MD_CTX_new() else { throw cryptoError("EVP_MD_CTX_new failed") }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestSignInit(context, nil, EVP_sha256(), nil, key.pointer) == 1 else {
            throw cryptoError("EVP_DigestSignInit(RSA, SHA-256) failed")
        }
        var length = 0
        let sized = message.withUnsafeBytes { msg in
            EVP_DigestSign(context, nil, &length, msg.bindMemory(to: UInt8.self).baseAddress, msg.count)
        }
        guard sized == 1, length > 0, length <= 1024 else { throw cryptoError("RSA signing failed") }
        var signature = [UInt8](repeating: 0, count: length)
        let result = message.withUnsafeBytes { msg in
            EVP_DigestSign(context, &signature, &length, msg.bindMemory(to: UInt8.self).baseAddress, msg.count)
        }
        guard result == 1 else { throw cryptoError("RSA signing failed") }
        return Array(signature.prefix(length))
    }
}
