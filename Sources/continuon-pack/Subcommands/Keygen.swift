import ArgumentParser
import ContinuonPack
import ContinuonPackCLI

extension ContinuonPackCommand {
    struct Keygen: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Generate an Ed25519 signing key pair.",
            discussion: """
                Writes the private key as PKCS#8 PEM with mode 0600 (encrypted with AES-256-CBC when a passphrase \
                file is given) and the public key as SPKI PEM. Neither file may exist already. Prints the key ID \
                (lowercase hex SHA-256 of the securesystemslib key form) as the last line.
                """)

        @Option(name: .long, help: "Where to write the private key (PKCS#8 PEM, mode 0600).")
        var privateKey: String

        @Option(name: .long, help: "Where to write the public key (SPKI PEM).")
        var publicKey: String

        @Option(name: .long, help: "Encrypt the private key with the passphrase in this file (one trailing newline is ignored).")
        var passphraseFile: String?

        func validate() throws {
            guard privateKey != publicKey else {
                throw ValidationError("--private-key and --public-key must name different files.")
            }
        }

        func run() throws {
            let passphrase = try readPassphrase(passphraseFile)
            if let passphrase, passphrase.isEmpty {
                throw ValidationError("--passphrase-file is empty; give a non-empty passphrase or leave the option out.")
            }
            let key = try Ed25519PrivateKey.generate()
            try FileIO.writeNewFile(Array(try key.pemRepresentation(passphrase: passphrase).utf8), to: privateKey, mode: 0o600)
            try FileIO.writeNewFile(Array(try key.publicKey.pemRepresentation().utf8), to: publicKey, mode: 0o644)
            print("private key: \(privateKey)")
            print("public key:  \(publicKey)")
            print(key.publicKey.keyID)
        }
    }
}
