import ArgumentParser
import ContinuonPack
import ContinuonPackCLI

extension ContinuonPackCommand {
    struct SignBlob: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Sign a file's bytes with Ed25519 and print the signature in base64.",
            discussion: "Pure Ed25519 over the whole file, as `openssl pkeyutl -sign -rawin` makes it.")

        @Argument(help: "The file to sign (at most 256 MiB).")
        var file: String

        @Option(name: .long, help: "The signing key (PKCS#8 PEM).")
        var key: String

        @Option(name: .long, help: "Passphrase file for an encrypted key.")
        var passphraseFile: String?

        func run() throws {
            let key = try loadPrivateKey(self.key, passphraseFile: passphraseFile)
            let message = try readSmallFile(file, limit: BlobSignature.maxMessageBytes)
            print(BlobSignature.encode(try key.signature(for: message)))
        }
    }

    struct VerifyBlob: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check an Ed25519 signature of a file's bytes (exit 0 valid, 1 invalid).",
            discussion: "The signature file holds either base64 text (as sign-blob prints) or the 64 raw bytes `openssl pkeyutl -sign -rawin` writes.")

        @Argument(help: "The signed file.")
        var file: String

        @Option(name: .long, help: "The signature file.")
        var signature: String

        @Option(name: .long, help: "The public key (SPKI PEM).")
        var publicKey: String

        func run() throws {
            let key = try loadPublicKey(publicKey)
            let message = try readSmallFile(file, limit: BlobSignature.maxMessageBytes)
            guard let signatureBytes = BlobSignature.decode(try readSmallFile(signature, limit: 4096)) else {
                print("INVALID: the signature file is neither 64 raw bytes nor base64 of 64 bytes")
                throw ExitStatus.invalid
            }
            guard key.isValidSignature(signatureBytes, for: message) else {
                print("INVALID: the signature does not verify with key \(key.keyID)")
                throw ExitStatus.invalid
            }
            print("VALID: signed by \(key.keyID)")
        }
    }
}
