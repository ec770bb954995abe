import ArgumentParser
import ContinuonPack
#if canImport(Glibc)
import Glibc
#endif

@main
struct ContinuonPackCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "continuon-pack",
        abstract: "Pack robot episodes into signed, verifiable upload packages, and verify them offline.",
        discussion: """
            Exit codes: 0 success; 1 the package (or signature) is invalid; 2 usage or I/O error.
            The format is specified in docs/signed-ingestion.md.
            """,
        version: "0.1.0",
        subcommands: [Keygen.self, Pack.self, Verify.self, Inspect.self, SignBlob.self, VerifyBlob.self, Upload.self, OutboxCommand.self, Serve.self]
    )

    /// Runs the command, mapping every failure to the documented exit codes (0, 1, 2) instead of
    /// ArgumentParser's defaults.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asynchronous = command as? any AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
        } catch let exit as ExitCode {
            Glibc.exit(exit.rawValue)
        } catch let error as ContinuonPackError {
            printError(error.description)
            Glibc.exit(ExitStatus.usageOrIO.rawValue)
        } catch {
            if exitCode(for: error) == .success { self.exit(withError: error) }
            printError(fullMessage(for: error))
            Glibc.exit(ExitStatus.usageOrIO.rawValue)
        }
    }
}

enum ExitStatus {
    static let ok = ExitCode(0)
    static let invalid = ExitCode(1)
    static let usageOrIO = ExitCode(2)
}

func printError(_ text: String) {
    var line = text
    if !line.hasSuffix("\n") { line += "\n" }
    let bytes = Array(("continuon-pack: " + line).utf8)
    bytes.withUnsafeBytes { _ = Glibc.write(2, $0.baseAddress, $0.count) }
}

/// Writes JSON to standard output: sorted keys, two-space indent.
func printJSON(_ value: JSONValue) {
    let bytes = CanonicalJSON.encodePretty(value)
    print(String(decoding: bytes, as: UTF8.self), terminator: "")
}

/// Reads a passphrase file: its bytes, less one trailing newline (as `openssl -passin file:` does).
func readPassphrase(_ path: String?) throws -> [UInt8]? {
    guard let path else { return nil }
    var bytes = try readSmallFile(path, limit: 4096)
    if bytes.last == 0x0a { bytes.removeLast() }
    if bytes.last == 0x0d { bytes.removeLast() }
    return bytes
}

func readSmallFile(_ path: String, limit: Int = 1 << 20) throws -> [UInt8] {
    try FileIO.readFile(path, limit: limit)
}

func loadPrivateKey(_ path: String, passphraseFile: String?) throws -> Ed25519PrivateKey {
    let pem = try readSmallFile(path)
    return try Ed25519PrivateKey(pemRepresentation: pem, passphrase: try readPassphrase(passphraseFile))
}

func loadPublicKey(_ path: String) throws -> Ed25519PublicKey {
    try Ed25519PublicKey(pemRepresentation: try readSmallFile(path))
}
