/// The format's syntactic rules, shared by the packer and the verifier.
public enum FormatRules {
    /// Largest blob path in UTF-8 bytes.
    public static let maxPathBytes = 1024

    /// Environment IDs and version strings: `[A-Za-z0-9][A-Za-z0-9._+:@-]{0,127}`.
    public static func isValidIdentifier(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard (1...128).contains(bytes.count), isAlphanumeric(bytes[0]) else { return false }
        return bytes.dropFirst().allSatisfy { byte in
            isAlphanumeric(byte) || ".-_+:@".utf8.contains(byte)
        }
    }

    /// Why `bytes` is not a valid blob path, or nil when it is one: relative, `/`-separated, valid UTF-8,
    /// 1 to 1024 bytes, no empty, `.` or `..` segment, no backslash, no control character (U+0000-U+001F, U+007F,
    /// U+0080-U+009F), in Unicode Normalization Form C.
    public static func pathProblem(_ bytes: [UInt8]) -> String? {
        if bytes.withUnsafeBufferPointer(isPlainASCIIPath) { return nil }
        guard !bytes.isEmpty else { return "the path is empty" }
        guard bytes.count <= maxPathBytes else { return "the path is longer than \(maxPathBytes) bytes" }
        guard let text = String(validating: bytes, as: UTF8.self) else { return "the path is not valid UTF-8" }
        if bytes.first == UInt8(ascii: "/") { return "the path is absolute" }
        if bytes.contains(UInt8(ascii: "\\")) { return "the path contains a backslash" }
        for scalar in text.unicodeScalars where scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value) {
            return "the path contains the control character U+\(String(scalar.value, radix: 16, uppercase: true))"
        }
        // ASCII is always NFC; only other text needs normalizing.
        if !bytes.allSatisfy({ $0 < 0x80 }) && !nfc(text).utf8.elementsEqual(bytes) {
            return "the path is not in Unicode Normalization Form C (NFC)"
        }
        for segment in bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            if segment.isEmpty { return "the path has an empty segment" }
            if segment.elementsEqual([UInt8(ascii: ".")]) { return "the path has a '.' segment" }
            if segment.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) { return "the path has a '..' segment" }
        }
        return nil
    }

    /// `text` in Unicode Normalization Form C: the standard library's `String._nfcCodeUnits` (public though
    /// underscored), which is what swift-foundation's `precomposedStringWithCanonicalMapping` returns, without
    /// linking Foundation.
    static func nfc(_ text: String) -> String {
        String(decoding: text._nfcCodeUnits, as: UTF8.self)
    }

    /// `pathProblem(_:)` of a string's UTF-8 bytes, copied only when the path is not plain ASCII.
    static func pathProblem(_ path: String) -> String? {
        var path = path
        if path.withUTF8(isPlainASCIIPath) { return nil }
        return pathProblem(Array(path.utf8))
    }

    /// The common case in one pass: 1 to 1024 bytes of printable ASCII without a backslash, and no empty, `.` or
    /// `..` segment (so not absolute either). Such a path is valid; anything else takes the full check, which
    /// names the problem.
    private static func isPlainASCIIPath(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard (1...maxPathBytes).contains(bytes.count) else { return false }
        var segmentLength = 0
        var segmentDots = 0
        for byte in bytes {
            if byte == UInt8(ascii: "/") {
                guard segmentLength > 2 || segmentLength > segmentDots else { return false }
                segmentLength = 0
                segmentDots = 0
                continue
            }
            guard byte >= 0x20 && byte < 0x7f && byte != UInt8(ascii: "\\") else { return false }
            segmentLength += 1
            if byte == UInt8(ascii: ".") { segmentDots += 1 }
        }
        return segmentLength > 2 || segmentLength > segmentDots
    }

    /// The key under which two blob paths collide: Unicode default lowercase mapping, compared (as Swift strings
    /// are) by canonical equivalence, i.e. equal after NFC normalization.
    public static func collisionKey(_ path: String) -> String {
        // ASCII without capitals is its own lowercase: the same key, without a new string.
        var path = path
        let isOwnKey = path.withUTF8 { bytes in
            bytes.allSatisfy { $0 < 0x80 && !(UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0) }
        }
        // Each scalar's lowercase mapping on its own (Swift applies no context rule such as Final_Sigma), then NFC
        // (spec section 2).
        return isOwnKey ? path : nfc(path.lowercased())
    }

    /// `YYYY-MM-DDTHH:MM:SSZ` with a real calendar date and time.
    public static func isValidTimestamp(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count == 20 else { return false }
        let shape = Array("dddd-dd-ddTdd:dd:ddZ".utf8)
        for (byte, expected) in zip(bytes, shape) {
            if expected == UInt8(ascii: "d") {
                guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return false }
            } else if byte != expected {
                return false
            }
        }
        func number(_ range: Range<Int>) -> Int {
            bytes[range].reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
        }
        let (year, month, day) = (number(0..<4), number(5..<7), number(8..<10))
        let (hour, minute, second) = (number(11..<13), number(14..<16), number(17..<19))
        guard (1...12).contains(month), hour < 24, minute < 60, second < 60 else { return false }
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
        let days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
        return (1...days).contains(day)
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }
}
