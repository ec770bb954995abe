/// A JSON value (RFC 8259) as the strict parser reads it: object members keep their order, numbers keep their text.
public indirect enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    /// The number's text exactly as written.
    case number(String)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case let (.bool(a), .bool(b)): return a == b
        case let (.number(a), .number(b)): return a == b
        case let (.string(a), .string(b)): return a == b
        case let (.array(a), .array(b)): return a == b
        case let (.object(a), .object(b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    /// The member named `key` of an object.
    public subscript(key: String) -> JSONValue? {
        guard case let .object(members) = self else { return nil }
        return members.first { $0.0 == key }?.1
    }

    /// An unsigned integer written as plain digits (no sign, fraction, exponent or leading zero), at most 2^53 - 1
    /// so that every JSON implementation reads it exactly.
    public var safeUnsignedInteger: UInt64? {
        guard case var .number(text) = self else { return nil }
        return text.withUTF8 { digits -> UInt64? in
            guard !digits.isEmpty, digits.count <= 16, digits.allSatisfy({ (48...57).contains($0) }) else { return nil }
            if digits.count > 1 && digits[0] == 48 { return nil }
            // At most 16 digits: no overflow.
            let value = digits.reduce(UInt64(0)) { $0 * 10 + UInt64($1 - 48) }
            return value <= (1 << 53) - 1 ? value : nil
        }
    }
}

/// Why a JSON text was refused.
public struct JSONParseError: Error, Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case syntax
        case duplicateKey
        case tooDeep
        case invalidUTF8
        /// More values than the caller allows.
        case tooManyValues
    }

    public let kind: Kind
    public let offset: Int
    public let reason: String
}

/// A strict JSON parser for untrusted input: UTF-8 only, no BOM, duplicate object keys refused (at any depth),
/// nesting capped, lone surrogates refused, nothing but white space after the value.
public struct StrictJSONParser {
    private let bytes: [UInt8]
    private let maxDepth: Int
    /// The most values (objects, arrays, strings, numbers, literals; keys not counted) the document may hold.
    private var valuesLeft = Int.max
    private var position = 0
    /// The top-level member whose array elements go to `element` instead of the tree.
    private let streamedKey: String?
    private let element: ((JSONValue) -> Void)?

    public static func parse(_ bytes: [UInt8], maxDepth: Int = 16, maxValues: Int = .max) throws(JSONParseError) -> JSONValue {
        var parser = StrictJSONParser(bytes: bytes, maxDepth: maxDepth, streamedKey: nil, element: nil)
        parser.valuesLeft = maxValues
        return try parser.parseDocument()
    }

    /// Parses like `parse(_:maxDepth:)`, except for the array that is the member `key` of the top-level object: its
    /// elements go to `element` one by one as they are parsed, and the tree holds that array empty. (A manifest lists
    /// tens of thousands of blobs; this way none is held as JSON longer than it takes to decode it.) `element` sees
    /// a document that may still turn out invalid: only a normal return from `parse` makes it valid JSON.
    static func parse(
        _ bytes: [UInt8], maxDepth: Int = 16, streaming key: String, to element: (JSONValue) -> Void
    ) throws(JSONParseError) -> JSONValue {
        try withoutActuallyEscaping(element) { (element) throws(JSONParseError) -> JSONValue in
            var parser = StrictJSONParser(bytes: bytes, maxDepth: maxDepth, streamedKey: key, element: element)
            return try parser.parseDocument()
        }
    }

    private init(bytes: [UInt8], maxDepth: Int, streamedKey: String?, element: ((JSONValue) -> Void)?) {
        self.bytes = bytes
        self.maxDepth = maxDepth
        self.streamedKey = streamedKey
        self.element = element
    }

    private mutating func parseDocument() throws(JSONParseError) -> JSONValue {
        skipWhitespace()
        let value = try parseValue(depth: 0)
        skipWhitespace()
        guard position == bytes.count else { throw error(.syntax, "data after the JSON value") }
        return value
    }

    private func error(_ kind: JSONParseError.Kind, _ reason: String) -> JSONParseError {
        JSONParseError(kind: kind, offset: position, reason: reason)
    }

    private var current: UInt8? { position < bytes.count ? bytes[position] : nil }

    private mutating func skipWhitespace() {
        while let byte = current, byte == 0x20 || byte == 0x09 || byte == 0x0a || byte == 0x0d { position += 1 }
    }

    private mutating func expect(_ literal: String) throws(JSONParseError) {
        for byte in literal.utf8 {
            guard current == byte else { throw error(.syntax, "expected '\(literal)'") }
            position += 1
        }
    }

    private mutating func parseValue(depth: Int) throws(JSONParseError) -> JSONValue {
        guard let byte = current else { throw error(.syntax, "unexpected end of input") }
        valuesLeft -= 1
        guard valuesLeft >= 0 else { throw error(.tooManyValues, "more JSON values than allowed") }
        switch byte {
        case UInt8(ascii: "{"): return try parseObject(depth: depth + 1)
        case UInt8(ascii: "["): return try parseArray(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expect("true"); return .bool(true)
        case UInt8(ascii: "f"): try expect("false"); return .bool(false)
        case UInt8(ascii: "n"): try expect("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
        default: throw error(.syntax, "unexpected character")
        }
    }

    private mutating func parseObject(depth: Int) throws(JSONParseError) -> JSONValue {
        guard depth <= maxDepth else { throw error(.tooDeep, "nesting deeper than \(maxDepth)") }
        position += 1
        var members: [(String, JSONValue)] = []
        /// The keys once the object outgrows a linear search (small objects, such as a manifest's blobs, never do).
        var seen: Set<String>?
        skipWhitespace()
        if current == UInt8(ascii: "}") {
            position += 1
            return .object(members)
        }
        members.reserveCapacity(4)
        while true {
            skipWhitespace()
            guard current == UInt8(ascii: "\"") else { throw error(.syntax, "expected a member name") }
            let keyOffset = position
            let key = try parseString()
            // Keys compare as Swift strings (by canonical equivalence), in the set and in the linear search alike.
            if seen == nil && members.count >= 16 { seen = Set(members.map(\.0)) }
            let isNew = seen == nil ? !members.contains { $0.0 == key } : seen!.insert(key).inserted
            guard isNew else {
                throw JSONParseError(kind: .duplicateKey, offset: keyOffset, reason: "duplicate key \"\(key)\"")
            }
            skipWhitespace()
            try expect(":")
            skipWhitespace()
            if depth == 1, key == streamedKey, current == UInt8(ascii: "[") {
                members.append((key, try parseArray(depth: depth + 1, streaming: true)))
            } else {
                members.append((key, try parseValue(depth: depth)))
            }
            skipWhitespace()
            if current == UInt8(ascii: ",") {
                position += 1
                continue
            }
            try expect("}")
            return .object(members)
        }
    }

    /// An array; with `streaming`, its elements go to `element` and the array returned is empty.
    private mutating func parseArray(depth: Int, streaming: Bool = false) throws(JSONParseError) -> JSONValue {
        guard depth <= maxDepth else { throw error(.tooDeep, "nesting deeper than \(maxDepth)") }
        position += 1
        var elements: [JSONValue] = []
        skipWhitespace()
        if current == UInt8(ascii: "]") {
            position += 1
            return .array(elements)
        }
        while true {
            skipWhitespace()
            let value = try parseValue(depth: depth)
            if streaming { element?(value) } else { elements.append(value) }
            skipWhitespace()
            if current == UInt8(ascii: ",") {
                position += 1
                continue
            }
            try expect("]")
            return .array(elements)
        }
    }

    private mutating func parseNumber() throws(JSONParseError) -> String {
        let start = position
        if current == UInt8(ascii: "-") { position += 1 }
        guard let first = current, (48...57).contains(first) else { throw error(.syntax, "invalid number") }
        position += 1
        if first != 48 { while let d = current, (48...57).contains(d) { position += 1 } }
        if current == UInt8(ascii: ".") {
            position += 1
            guard let d = current, (48...57).contains(d) else { throw error(.syntax, "invalid number") }
            while let d = current, (48...57).contains(d) { position += 1 }
        }
        if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
            position += 1
            if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { position += 1 }
            guard let d = current, (48...57).contains(d) else { throw error(.syntax, "invalid number") }
            while let d = current, (48...57).contains(d) { position += 1 }
        }
        return String(decoding: bytes[start..<position], as: UTF8.self)
    }

    private mutating func parseString() throws(JSONParseError) -> String {
        position += 1 // opening quote
        // Most strings hold no escape: validate them in place, without copying byte by byte.
        let start = position
        let isASCII: Bool
        (position, isASCII) = bytes.withUnsafeBufferPointer { Self.plainRun($0, from: start) }
        if current == UInt8(ascii: "\"") {
            position += 1
            let text = bytes.withUnsafeBufferPointer { buffer in
                let content = UnsafeBufferPointer(rebasing: buffer[start..<(position - 1)])
                return isASCII ? String(decoding: content, as: UTF8.self) : String(validating: content, as: UTF8.self)
            }
            guard let text else { throw error(.invalidUTF8, "string is not valid UTF-8") }
            return text
        }
        var out = Array(bytes[start..<position])
        while true {
            guard let byte = current else { throw error(.syntax, "unterminated string") }
            switch byte {
            case UInt8(ascii: "\""):
                position += 1
                guard let text = String(validating: out, as: UTF8.self) else {
                    throw error(.invalidUTF8, "string is not valid UTF-8")
                }
                return text
            case UInt8(ascii: "\\"):
                position += 1
                try parseEscape(into: &out)
            case 0x00..<0x20:
                throw error(.syntax, "unescaped control character in string")
            default:
                out.append(byte)
                position += 1
            }
        }
    }

    /// Where the run of string bytes from `start` that need no attention (not `"`, `\` or a control character)
    /// ends, and whether they are all ASCII. Tests eight bytes at a time (SWAR): a payload is megabytes of base64.
    private static func plainRun(_ buffer: UnsafeBufferPointer<UInt8>, from start: Int) -> (end: Int, isASCII: Bool) {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let highBits = ones &* 0x80
        /// Whether some byte of `word` is below `limit` (at most 0x80); exact, bytes from 0x80 up never count.
        func hasByte(below limit: UInt64, _ word: UInt64) -> Bool { (word &- ones &* limit) & ~word & highBits != 0 }
        var end = start
        var seen: UInt64 = 0
        if let base = buffer.baseAddress {
            while end + 8 <= buffer.count {
                let word = UnsafeRawPointer(base + end).loadUnaligned(as: UInt64.self)
                if hasByte(below: 0x20, word) || hasByte(below: 1, word ^ (ones &* 0x22))
                    || hasByte(below: 1, word ^ (ones &* 0x5c)) {
                    break
                }
                seen |= word
                end += 8
            }
        }
        while end < buffer.count, buffer[end] != 0x22, buffer[end] != 0x5c, buffer[end] >= 0x20 {
            seen |= UInt64(buffer[end])
            end += 1
        }
        return (end, seen & highBits == 0)
    }

    private mutating func parseEscape(into out: inout [UInt8]) throws(JSONParseError) {
        guard let byte = current else { throw error(.syntax, "unterminated escape") }
        position += 1
        switch byte {
        case UInt8(ascii: "\""): out.append(0x22)
        case UInt8(ascii: "\\"): out.append(0x5c)
        case UInt8(ascii: "/"): out.append(0x2f)
        case UInt8(ascii: "b"): out.append(0x08)
        case UInt8(ascii: "f"): out.append(0x0c)
        case UInt8(ascii: "n"): out.append(0x0a)
        case UInt8(ascii: "r"): out.append(0x0d)
        case UInt8(ascii: "t"): out.append(0x09)
        case UInt8(ascii: "u"):
            var scalar = try parseHex4()
            if (0xd800..<0xdc00).contains(scalar) {
                guard current == UInt8(ascii: "\\") else { throw error(.invalidUTF8, "lone surrogate") }
                position += 1
                guard current == UInt8(ascii: "u") else { throw error(.invalidUTF8, "lone surrogate") }
                position += 1
                let low = try parseHex4()
                guard (0xdc00..<0xe000).contains(low) else { throw error(.invalidUTF8, "lone surrogate") }
                scalar = 0x10000 + ((scalar - 0xd800) << 10) + (low - 0xdc00)
            } else if (0xdc00..<0xe000).contains(scalar) {
                throw error(.invalidUTF8, "lone surrogate")
            }
            guard let unicode = Unicode.Scalar(scalar) else { throw error(.invalidUTF8, "invalid code point") }
            out.append(contentsOf: Array(String(Character(unicode)).utf8))
        default:
            throw error(.syntax, "invalid escape")
        }
    }

    private mutating func parseHex4() throws(JSONParseError) -> UInt32 {
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard let byte = current else { throw error(.syntax, "truncated \\u escape") }
            let digit: UInt32
            switch byte {
            case 48...57: digit = UInt32(byte - 48)
            case 97...102: digit = UInt32(byte - 87)
            case 65...70: digit = UInt32(byte - 55)
            default: throw error(.syntax, "invalid \\u escape")
            }
            value = value << 4 | digit
            position += 1
        }
        return value
    }
}

/// The canonical JSON the packer writes: object keys sorted by their UTF-8 bytes, no white space, strings with
/// only `"` `\` and U+0000-U+001F escaped (as `\"`, `\\`, `\b \f \n \r \t` or `\u00xx` in lowercase hex),
/// everything else literal UTF-8; numbers as given (the format only writes unsigned integers).
public enum CanonicalJSON {
    public static func encode(_ value: JSONValue) -> [UInt8] {
        var out: [UInt8] = []
        write(value, into: &out, indent: nil, level: 0)
        return out
    }

    /// Indented output for people (two spaces, sorted keys); not used for signed bytes.
    public static func encodePretty(_ value: JSONValue) -> [UInt8] {
        var out: [UInt8] = []
        write(value, into: &out, indent: 2, level: 0)
        out.append(0x0a)
        return out
    }

    static func write(_ value: JSONValue, into out: inout [UInt8], indent: Int?, level: Int) {
        func newline(_ level: Int) {
            guard let indent else { return }
            out.append(0x0a)
            out.append(contentsOf: repeatElement(0x20, count: indent * level))
        }
        switch value {
        case .null: out.append(contentsOf: Array("null".utf8))
        case let .bool(flag): out.append(contentsOf: Array((flag ? "true" : "false").utf8))
        case let .number(text): out.append(contentsOf: Array(text.utf8))
        case let .string(text): writeString(text, into: &out)
        case let .array(elements):
            out.append(UInt8(ascii: "["))
            for (index, element) in elements.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                newline(level + 1)
                write(element, into: &out, indent: indent, level: level + 1)
            }
            if !elements.isEmpty { newline(level) }
            out.append(UInt8(ascii: "]"))
        case let .object(members):
            out.append(UInt8(ascii: "{"))
            let inOrder = zip(members, members.dropFirst()).allSatisfy { $0.0.utf8Precedes($1.0) }
            let sorted = inOrder ? members : members.sorted { $0.0.utf8Precedes($1.0) }
            for (index, (key, member)) in sorted.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                newline(level + 1)
                writeString(key, into: &out)
                out.append(UInt8(ascii: ":"))
                if indent != nil { out.append(0x20) }
                write(member, into: &out, indent: indent, level: level + 1)
            }
            if !members.isEmpty { newline(level) }
            out.append(UInt8(ascii: "}"))
        }
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    static func writeString(_ text: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        // Most strings (paths, digests, versions, base64) need no escape: copy them whole.
        var text = text
        let plain = text.withUTF8 { bytes in
            for byte in bytes where byte < 0x20 || byte == 0x22 || byte == 0x5c { return false }
            out.append(contentsOf: bytes)
            return true
        }
        if plain {
            out.append(UInt8(ascii: "\""))
            return
        }
        for byte in text.utf8 {
            switch byte {
            case 0x22: out.append(contentsOf: [0x5c, 0x22])
            case 0x5c: out.append(contentsOf: [0x5c, 0x5c])
            case 0x08: out.append(contentsOf: [0x5c, UInt8(ascii: "b")])
            case 0x0c: out.append(contentsOf: [0x5c, UInt8(ascii: "f")])
            case 0x0a: out.append(contentsOf: [0x5c, UInt8(ascii: "n")])
            case 0x0d: out.append(contentsOf: [0x5c, UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [0x5c, UInt8(ascii: "t")])
            case 0x00..<0x20:
                out.append(contentsOf: Array("\\u00".utf8))
                out.append(hexDigits[Int(byte >> 4)])
                out.append(hexDigits[Int(byte & 0x0f)])
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}
