import Foundation
import Testing
@testable import ContinuonPack

struct RFC8032Vector: Sendable, CustomTestStringConvertible {
    let name: String
    let secretKey: [UInt8]
    let publicKey: [UInt8]
    let message: [UInt8]
    let signature: [UInt8]
    var testDescription: String { name }

    /// Loads TestVectors/rfc8032/ed25519.json (kept as the RFC prints the values).
    static func all() throws -> [RFC8032Vector] {
        let document = try json(try readBytes(Repo.path("TestVectors/rfc8032/ed25519.json")))
        let vectors = document["vectors"] as? [[String: String]] ?? []
        return vectors.map { vector in
            RFC8032Vector(
                name: vector["name"] ?? "?", secretKey: hexBytes(vector["secret_key"] ?? ""),
                publicKey: hexBytes(vector["public_key"] ?? ""), message: hexBytes(vector["message"] ?? ""),
                signature: hexBytes(vector["signature"] ?? ""))
        }
    }
}

@Suite("Ed25519 through OpenSSL")
struct Ed25519Tests {
    @Test("RFC 8032 section 7.1 vectors: key derivation, signing and verification", arguments: try RFC8032Vector.all())
    func rfc8032(_ vector: RFC8032Vector) throws {
        let key = try Ed25519PrivateKey(seed: vector.secretKey)
        #expect(key.publicKey.rawRepresentation == vector.publicKey)
        #expect(try key.signature(for: vector.message) == vector.signature)
        let publicKey = try Ed25519PublicKey(rawRepresentation: vector.publicKey)
        #expect(publicKey.isValidSignature(vector.signature, for: vector.message))
        var flipped = vector.signature
        flipped[0] ^= 1
        #expect(!publicKey.isValidSignature(flipped, for: vector.message))
        #expect(!publicKey.isValidSignature(vector.signature, for: vector.message + [0]))
    }

    @Test("The four RFC vectors are all there")
    func vectorCount() throws {
        #expect(try RFC8032Vector.all().count == 4)
    }

    @Test("Malleable signatures (S + L) and wrong lengths are rejected")
    func malleability() throws {
        let vector = try #require(try RFC8032Vector.all().first)
        let key = try Ed25519PublicKey(rawRepresentation: vector.publicKey)
        // L = 2^252 + 27742317777372353535851937790883648493, little-endian.
        let order: [UInt8] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ]
        var malleated = Array(vector.signature[0..<32])
        var carry = 0
        for index in 0..<32 {
            let sum = Int(vector.signature[32 + index]) + Int(order[index]) + carry
            malleated.append(UInt8(sum & 0xff))
            carry = sum >> 8
        }
        #expect(carry == 0)
        #expect(!key.isValidSignature(malleated, for: vector.message))
        #expect(!key.isValidSignature(Array(vector.signature.prefix(63)), for: vector.message))
        #expect(!key.isValidSignature(vector.signature + [0], for: vector.message))
        #expect(!key.isValidSignature([], for: vector.message))
    }

    @Test("Key ID equals the one securesystemslib computes")
    func keyIDMatchesSecuresystemslib() throws {
        let key = try loadKey(Repo.testKey)
        let script = """
            import sys
            from cryptography.hazmat.primitives.serialization import load_pem_public_key
            from securesystemslib.signer import SSlibKey
            key = SSlibKey.from_crypto(load_pem_public_key(open(sys.argv[1], 'rb').read()))
            print(key.keyid)
            """
        let result = try run("python3", ["-c", script, Repo.testPublicKey])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.lastLine == key.publicKey.keyID)
    }

    @Test("Our PEM keys are byte-identical to OpenSSL's and load in openssl and Python")
    func pemInterop() throws {
        let directory = try TemporaryDirectory()
        let key = try Ed25519PrivateKey.generate()
        let privatePath = try directory.write("k.pem", Array(try key.pemRepresentation().utf8))
        let publicPEM = try key.publicKey.pemRepresentation()
        let openssl = try run("openssl", ["pkey", "-in", privatePath, "-pubout"])
        #expect(openssl.status == 0, "\(openssl.stderr)")
        #expect(openssl.text == publicPEM)
        let reencoded = try run("openssl", ["pkey", "-in", privatePath])
        #expect(reencoded.text == (try key.pemRepresentation()))
        let python = try run("python3", [
            "-c",
            "import sys; from cryptography.hazmat.primitives import serialization as s; "
                + "k = s.load_pem_private_key(open(sys.argv[1], 'rb').read(), None); "
                + "print(k.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw).hex())",
            privatePath,
        ])
        #expect(python.lastLine == Hex.encode(key.publicKey.rawRepresentation))
    }

    @Test("Encrypted keys round-trip with OpenSSL in both directions")
    func encryptedKeys() throws {
        let directory = try TemporaryDirectory()
        let passphrase = Array("correct horse battery staple".utf8)
        let passFile = try directory.write("pass", passphrase + [0x0a])
        // Ours -> openssl.
        let key = try Ed25519PrivateKey.generate()
        let encrypted = try key.pemRepresentation(passphrase: passphrase)
        #expect(encrypted.hasPrefix("-----BEGIN ENCRYPTED PRIVATE KEY-----"))
        let ourPath = try directory.write("ours.pem", Array(encrypted.utf8))
        let decrypted = try run("openssl", ["pkey", "-in", ourPath, "-passin", "file:" + passFile, "-pubout"])
        #expect(decrypted.status == 0, "\(decrypted.stderr)")
        #expect(decrypted.text == (try key.publicKey.pemRepresentation()))
        // openssl -> ours.
        let theirs = directory.file("theirs.pem")
        let generated = try run("openssl", [
            "genpkey", "-algorithm", "ed25519", "-aes-256-cbc", "-pass", "file:" + passFile, "-out", theirs,
        ])
        #expect(generated.status == 0, "\(generated.stderr)")
        let loaded = try Ed25519PrivateKey(pemRepresentation: try readBytes(theirs), passphrase: passphrase)
        let expectedPublic = try run("openssl", ["pkey", "-in", theirs, "-passin", "file:" + passFile, "-pubout"])
        #expect(try loaded.publicKey.pemRepresentation() == expectedPublic.text)
        // Missing and wrong passphrases are told apart, and nothing prompts on a terminal.
        #expect(throws: ContinuonPackError(.keyEncrypted, "The private key is encrypted; give its passphrase.")) {
            try Ed25519PrivateKey(pemRepresentation: try readBytes(theirs))
        }
        do {
            _ = try Ed25519PrivateKey(pemRepresentation: try readBytes(theirs), passphrase: Array("wrong".utf8))
            Issue.record("a wrong passphrase was accepted")
        } catch let error as ContinuonPackError {
            #expect(error.code == .keyInvalid)
        }
    }

    @Test("Plain keys from openssl genpkey load; other key types and garbage are refused")
    func foreignKeys() throws {
        let directory = try TemporaryDirectory()
        let plain = directory.file("plain.pem")
        #expect(try run("openssl", ["genpkey", "-algorithm", "ed25519", "-out", plain]).status == 0)
        _ = try Ed25519PrivateKey(pemRepresentation: try readBytes(plain))
        let ec = directory.file("ec.pem")
        #expect(try run("openssl", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", ec]).status == 0)
        #expect(throws: ContinuonPackError.self) { try Ed25519PrivateKey(pemRepresentation: try readBytes(ec)) }
        do {
            _ = try Ed25519PrivateKey(pemRepresentation: try readBytes(ec))
        } catch let error as ContinuonPackError {
            #expect(error.code == .keyWrongType)
        }
        #expect(throws: ContinuonPackError.self) { try Ed25519PrivateKey(pemRepresentation: Array("not a key".utf8)) }
        #expect(throws: ContinuonPackError.self) { try Ed25519PublicKey(pemRepresentation: Array("not a key".utf8)) }
        #expect(throws: ContinuonPackError.self) { try Ed25519PublicKey(rawRepresentation: [1, 2, 3]) }
    }
}
