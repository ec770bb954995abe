import ContinuonPack
#if canImport(Glibc)
import Glibc
#endif

/// Reads a passphrase file: its bytes, less one trailing newline (as `openssl -passin file:` does).
public func readPassphrase(_ path: String?) throws -> [UInt8]? {
    guard let path else { return nil }
    var bytes = try readSmallFile(path, limit: 4096)
    if bytes.last == 0x0a { bytes.removeLast() }
    if bytes.last == 0x0d { bytes.removeLast() }
    return bytes
}

public func readSmallFile(_ path: String, limit: Int = 1 << 20) throws -> [UInt8] {
    try FileIO.readFile(path, limit: limit)
}

public func loadPrivateKey(_ path: String, passphraseFile: String?) throws -> Ed25519PrivateKey {
    let pem = try readSmallFile(path)
    return try Ed25519PrivateKey(pemRepresentation: pem, passphrase: try readPassphrase(passphraseFile))
}

public func loadPublicKey(_ path: String) throws -> Ed25519PublicKey {
    try Ed25519PublicKey(pemRepresentation: try readSmallFile(path))
}

/// The process's environment variables (the first of duplicate names, as `getenv` finds), read from `environ`
/// without Foundation's `ProcessInfo`.
public func processEnvironment() -> [String: String] {
    var variables: [String: String] = [:]
    var entry = environ
    while let pointer = entry.pointee {
        let text = String(cString: pointer)
        if let equals = text.firstIndex(of: "=") {
            let name = String(text[..<equals])
            if variables[name] == nil { variables[name] = String(text[text.index(after: equals)...]) }
        }
        entry += 1
    }
    return variables
}
