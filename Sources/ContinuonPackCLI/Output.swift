import ContinuonPack
#if canImport(Glibc)
import Glibc
#endif

/// Writes `continuon-pack: TEXT` and a newline to standard error (unbuffered).
public func printError(_ text: String) {
    var line = text
    if !line.hasSuffix("\n") { line += "\n" }
    let bytes = Array(("continuon-pack: " + line).utf8)
    bytes.withUnsafeBytes { _ = Glibc.write(2, $0.baseAddress, $0.count) }
}

/// Writes JSON to standard output: sorted keys, two-space indent.
public func printJSON(_ value: JSONValue) {
    let bytes = CanonicalJSON.encodePretty(value)
    print(String(decoding: bytes, as: UTF8.self), terminator: "")
}
