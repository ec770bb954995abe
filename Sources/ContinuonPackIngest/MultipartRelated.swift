/// Streams a `multipart/related` upload body (Cloud Storage JSON API `uploadType=multipart`): exactly two parts, the
/// JSON metadata then the media, as Google's clients send it:
///
/// ```
/// --BOUNDARY CRLF
/// content-type: application/json; charset=UTF-8 CRLF
/// CRLF
/// {...metadata...} CRLF
/// --BOUNDARY CRLF
/// content-type: application/octet-stream CRLF
/// CRLF
/// <media bytes> CRLF
/// --BOUNDARY--
/// ```
///
/// The grammar is RFC 2046's, read strictly, with these choices:
/// - No preamble: the body's first bytes are `--BOUNDARY`.
/// - After each delimiter, optional transport padding (spaces and tabs), then CRLF; that line's rest and the part's
///   header lines up to and including the empty line count toward `maxHeaderBytes`. Lines end in CRLF (a bare CR or
///   LF is refused); each is `Name: value` with a token name, no space before the colon, no folding, no control
///   bytes in the value. The part's content starts after the empty line (whose CRLF is never a delimiter's: content
///   that begins with `--BOUNDARY` is content).
/// - The first part's `Content-Type` is `application/json` (case-insensitive, parameters allowed); the second
///   part's is not read (it may be absent). A part names `Content-Type` and `Content-Transfer-Encoding` at most
///   once each; the encoding, if named, is `binary`, `8bit` or `7bit`. Other headers (`Content-ID`, ...) are ignored.
/// - `CRLF--BOUNDARY` inside a part always ends it (RFC 2046 forbids it in content); what follows must be `--`
///   (the close) or transport padding and CRLF (another part). A third part is refused.
/// - After the close: transport padding, then nothing or CRLF and an epilogue, which is ignored; together at most
///   `maxEpilogueBytes`.
///
/// Memory is bounded whatever the input: the metadata (at most `UploadMetadata.maxBytes`), one header line (at most
/// `maxHeaderBytes`) and the boundary. The media is never buffered: while a prefix of `CRLF--BOUNDARY` is pending,
/// those bytes are held back (they are a prefix of the delimiter, so the delimiter itself is their copy) and released
/// as media the moment a byte breaks the match. Every byte is examined once: a boundary has no CR, so CR is the only
/// byte at which a delimiter can start and a broken match never needs a rescan.
public struct MultipartRelatedParser: Sendable {
    /// The largest part header block (the rest of the delimiter line, the header lines and the empty line).
    public static let maxHeaderBytes = 8 * 1024
    /// The most bytes accepted after the closing delimiter (transport padding, CRLF, an epilogue).
    public static let maxEpilogueBytes = 8 * 1024
    /// RFC 2046's longest boundary.
    public static let maxBoundaryBytes = 70

    /// `CRLF--BOUNDARY`: the delimiter inside the body; from offset 2, the body's opening `--BOUNDARY`.
    private let delimiter: [UInt8]
    private var phase: Phase = .opening
    /// In `.opening`, the bytes of `--BOUNDARY` matched; in `.content`, the bytes of `delimiter` held back.
    private var matched = 0
    /// Parts begun: 1 while in the metadata part, 2 in the media part.
    private var parts = 0
    /// Bytes of the current header block, or after the close.
    private var counted = 0
    /// The header line being read, without its CRLF.
    private var line: [UInt8] = []
    private var sawContentType = false
    private var sawEncoding = false
    private var metadata: [UInt8] = []
    /// Set while `feed` runs (so that a callback's error leaves the parser refusing further use), and to the
    /// parser's own refusal once it has thrown one.
    private var failure: IngestProblem?
    /// Media bytes emitted so far.
    public private(set) var mediaBytes: UInt64 = 0

    private enum Phase: Sendable, Equatable {
        case opening, delimiterEnd, closeDash, padding, paddingCR, headers, headerCR, content, closed, closedCR, epilogue
    }

    /// Reads the boundary from the request's `Content-Type`.
    ///
    /// - Parameter contentType: the header's value: `multipart/related` with a `boundary` parameter, quoted or a
    ///   token, of 1 to 70 RFC 2046 `bchars` not ending in a space. Other parameters are ignored; none may repeat.
    /// - Throws: 400 `upload.multipart_invalid` when the header is absent, malformed, another media type, or has no
    ///   valid boundary.
    public init(contentType: String?) throws(IngestProblem) {
        guard let contentType, !contentType.isEmpty else {
            throw Self.invalid("A multipart upload needs a Content-Type of multipart/related.")
        }
        guard let mediaType = MediaType(Array(contentType.utf8)) else {
            throw Self.invalid("The Content-Type is not a well-formed media type, or it repeats a parameter.")
        }
        guard mediaType.type == "multipart", mediaType.subtype == "related" else {
            throw Self.invalid("A multipart upload's Content-Type must be multipart/related.")
        }
        guard let boundary = mediaType.parameters.first(where: { $0.name == "boundary" })?.value else {
            throw Self.invalid("The multipart/related Content-Type has no boundary parameter.")
        }
        guard (1...Self.maxBoundaryBytes).contains(boundary.count), boundary.allSatisfy(Self.isBoundaryCharacter),
              boundary.last != 0x20
        else {
            throw Self.invalid("The multipart boundary must be 1 to 70 characters of RFC 2046's set, not ending in a space.")
        }
        delimiter = [Self.cr, Self.lf, Self.dash, Self.dash] + boundary
    }

    /// Whether the closing delimiter was seen.
    public var isComplete: Bool {
        phase == .closed || phase == .closedCR || phase == .epilogue
    }

    /// Bytes held back as a possible start of the delimiter (fewer than `delimiterLength`).
    var heldBackCount: Int { phase == .content ? matched : 0 }
    /// The length of `CRLF--BOUNDARY`.
    var delimiterLength: Int { delimiter.count }

    // MARK: - Feeding

    /// Feeds the next body bytes.
    ///
    /// - Parameters:
    ///   - bytes: the next bytes of the body, any length (empty is fine).
    ///   - onMetadata: called once, with the metadata part's complete content, when the media part's headers have
    ///     been read and before any media byte.
    ///   - media: called with consecutive slices of the media: slices of `bytes` or of held-back bytes, never empty,
    ///     never a byte that might be part of the closing delimiter. Valid only during the call.
    /// - Throws: the callbacks' errors unchanged; otherwise `IngestProblem`: 400 `upload.multipart_invalid` (with
    ///   `closesConnection`) for a body that breaks the grammar above, 413 `upload.metadata_too_large` for metadata
    ///   over 64 KiB. After any error the parser refuses further bytes.
    public mutating func feed(
        _ bytes: UnsafeRawBufferPointer, onMetadata: ([UInt8]) throws -> Void, media: (UnsafeRawBufferPointer) throws -> Void
    ) throws {
        if let failure { throw failure }
        failure = Self.abandoned
        var index = 0
        while index < bytes.count {
            if phase == .content {
                index = try scanContent(bytes, from: index, media: media)
            } else {
                try step(bytes[index], onMetadata: onMetadata)
                index += 1
            }
        }
        failure = nil
    }

    /// The body ended.
    ///
    /// - Throws: 400 `upload.multipart_invalid` unless the closing delimiter was seen and only transport padding, or
    ///   CRLF and an epilogue, followed it; an earlier refusal again.
    public func finish() throws(IngestProblem) {
        if let failure { throw failure }
        switch phase {
        case .closed, .epilogue:
            return
        case .closedCR:
            throw Self.invalid("The multipart body ends in a CR without LF after the closing delimiter.")
        default:
            throw Self.invalid("The multipart body ended before its closing delimiter.")
        }
    }

    // MARK: - Content

    /// Scans a part's content from `start` to the delimiter or the end of `bytes`, releasing the bytes that cannot
    /// be part of a delimiter. Returns the index after the last byte examined.
    private mutating func scanContent(
        _ bytes: UnsafeRawBufferPointer, from start: Int, media: (UnsafeRawBufferPointer) throws -> Void
    ) throws -> Int {
        let held = matched
        let length = delimiter.count
        var pending = matched
        var index = start
        var found = false
        while index < bytes.count {
            if pending == 0 {
                // Nothing pending: only a CR can start the delimiter.
                while index < bytes.count, bytes[index] != Self.cr { index += 1 }
                guard index < bytes.count else { break }
                pending = 1
                index += 1
                continue
            }
            let byte = bytes[index]
            index += 1
            if byte == delimiter[pending] {
                pending += 1
                if pending == length {
                    found = true
                    break
                }
            } else {
                // The boundary has no CR, so no suffix of the pending bytes can begin a delimiter; only this byte can.
                pending = byte == Self.cr ? 1 : 0
            }
        }
        // The stream examined is delimiter[..<held] followed by bytes[start..<index]; its last `pending` bytes (or
        // the whole delimiter) stay back, the rest is content.
        let examined = held + (index - start)
        let released = examined - (found ? length : pending)
        if released > 0 {
            let fromHeld = min(released, held)
            let fromBytes = released - fromHeld
            if parts == 1 {
                guard metadata.count <= UploadMetadata.maxBytes - released else { throw fail(UploadMetadata.tooLarge) }
                metadata.append(contentsOf: delimiter[..<fromHeld])
                metadata.append(contentsOf: bytes[start..<(start + fromBytes)])
            } else {
                let (total, overflow) = mediaBytes.addingReportingOverflow(UInt64(released))
                guard !overflow else { throw fail(Self.invalid("The multipart media is too large.")) }
                if fromHeld > 0 {
                    try delimiter.withUnsafeBytes { try media(UnsafeRawBufferPointer(rebasing: $0[..<fromHeld])) }
                }
                if fromBytes > 0 {
                    try media(UnsafeRawBufferPointer(rebasing: bytes[start..<(start + fromBytes)]))
                }
                mediaBytes = total
            }
        }
        if found {
            matched = 0
            counted = 0
            phase = .delimiterEnd
        } else {
            matched = pending
        }
        return index
    }

    // MARK: - Delimiter lines and headers

    /// Takes one byte outside a part's content.
    private mutating func step(_ byte: UInt8, onMetadata: ([UInt8]) throws -> Void) throws {
        switch phase {
        case .opening:
            guard byte == delimiter[2 + matched] else {
                throw fail(Self.invalid("The multipart body must begin with its boundary delimiter (no preamble)."))
            }
            matched += 1
            if 2 + matched == delimiter.count {
                matched = 0
                counted = 0
                phase = .delimiterEnd
            }
        case .delimiterEnd:
            try countHeaderByte()
            if byte == Self.dash {
                phase = .closeDash
            } else if byte == Self.space || byte == Self.tab {
                phase = .padding
            } else if byte == Self.cr {
                phase = .paddingCR
            } else {
                throw fail(Self.badDelimiterLine)
            }
        case .closeDash:
            guard byte == Self.dash else { throw fail(Self.badDelimiterLine) }
            switch parts {
            case 0: throw fail(Self.invalid("The multipart body has no parts; an upload needs the metadata and the media."))
            case 1: throw fail(Self.invalid("The multipart body has only one part; an upload needs the metadata and the media."))
            default:
                counted = 0
                phase = .closed
            }
        case .padding:
            try countHeaderByte()
            if byte == Self.cr {
                phase = .paddingCR
            } else if byte != Self.space, byte != Self.tab {
                throw fail(Self.badDelimiterLine)
            }
        case .paddingCR:
            try countHeaderByte()
            guard byte == Self.lf else { throw fail(Self.badDelimiterLine) }
            guard parts < 2 else {
                throw fail(Self.invalid("The multipart body has more than two parts; an upload has only the metadata and the media."))
            }
            parts += 1
            sawContentType = false
            sawEncoding = false
            line.removeAll(keepingCapacity: true)
            phase = .headers
        case .headers:
            try countHeaderByte()
            if byte == Self.cr {
                phase = .headerCR
            } else if byte == Self.lf {
                throw fail(Self.badHeaderLine)
            } else {
                line.append(byte)
            }
        case .headerCR:
            try countHeaderByte()
            guard byte == Self.lf else { throw fail(Self.badHeaderLine) }
            if line.isEmpty {
                try endHeaders(onMetadata: onMetadata)
            } else {
                try readHeaderLine()
                line.removeAll(keepingCapacity: true)
                phase = .headers
            }
        case .closed:
            try countEpilogueByte()
            if byte == Self.cr {
                phase = .closedCR
            } else if byte != Self.space, byte != Self.tab {
                throw fail(Self.badEpilogue)
            }
        case .closedCR:
            try countEpilogueByte()
            guard byte == Self.lf else { throw fail(Self.badEpilogue) }
            phase = .epilogue
        case .epilogue:
            try countEpilogueByte()
        case .content:
            // `feed` scans content itself; a byte never arrives here in this phase.
            throw fail(Self.abandoned)
        }
    }

    private mutating func countHeaderByte() throws(IngestProblem) {
        counted += 1
        guard counted <= Self.maxHeaderBytes else {
            throw fail(Self.invalid("A multipart part's header block is larger than 8 KiB."))
        }
    }

    private mutating func countEpilogueByte() throws(IngestProblem) {
        counted += 1
        guard counted <= Self.maxEpilogueBytes else { throw fail(Self.badEpilogue) }
    }

    /// The empty line: the part's content follows.
    private mutating func endHeaders(onMetadata: ([UInt8]) throws -> Void) throws {
        if parts == 1, !sawContentType {
            throw fail(Self.notJSON)
        }
        phase = .content
        matched = 0
        line = []
        if parts == 2 {
            let complete = metadata
            metadata = []
            try onMetadata(complete)
        }
    }

    /// `Name: value`, the name a token, optional spaces or tabs around the value, no control bytes.
    private mutating func readHeaderLine() throws(IngestProblem) {
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0,
              line[..<colon].allSatisfy(MediaType.isTokenCharacter)
        else { throw fail(Self.badHeaderLine) }
        var value = line[(colon + 1)...]
        while let first = value.first, first == Self.space || first == Self.tab { value.removeFirst() }
        while let last = value.last, last == Self.space || last == Self.tab { value.removeLast() }
        guard value.allSatisfy({ $0 == Self.tab || ($0 >= 0x20 && $0 != 0x7F) }) else { throw fail(Self.badHeaderLine) }
        switch MediaType.lowercased(line[..<colon]) {
        case "content-type":
            guard !sawContentType else { throw fail(Self.repeatedHeader) }
            sawContentType = true
            if parts == 1 {
                guard let type = MediaType(Array(value)), type.type == "application", type.subtype == "json" else {
                    throw fail(Self.notJSON)
                }
            }
        case "content-transfer-encoding":
            guard !sawEncoding else { throw fail(Self.repeatedHeader) }
            sawEncoding = true
            guard ["binary", "8bit", "7bit"].contains(MediaType.lowercased(value)) else {
                throw fail(Self.invalid("A multipart part's Content-Transfer-Encoding must be binary, 8bit or 7bit."))
            }
        default:
            break
        }
    }

    // MARK: - Problems

    /// Records the parser's own refusal, so that later calls repeat it. A refusal while reading the body closes
    /// the connection: the rest of the body is not read.
    private mutating func fail(_ problem: IngestProblem) -> IngestProblem {
        let refusal = problem.closingConnection()
        failure = refusal
        return refusal
    }

    static func invalid(_ title: String) -> IngestProblem {
        IngestProblem(400, "upload.multipart_invalid", title)
    }

    static let abandoned = invalid("The multipart body was abandoned after an earlier error.").closingConnection()
    static let badDelimiterLine = invalid(
        "A multipart boundary delimiter is followed by something other than `--` or a line end."
    )
    static let badHeaderLine = invalid(
        "A multipart part's header line is not `Name: value` ending in CRLF."
    )
    static let repeatedHeader = invalid(
        "A multipart part names its Content-Type or Content-Transfer-Encoding more than once."
    )
    static let notJSON = invalid(
        "The first multipart part must be the metadata, with Content-Type application/json."
    )
    static let badEpilogue = invalid(
        "After the closing multipart delimiter only a line end and an epilogue of at most 8 KiB may follow."
    )

    // MARK: - Bytes

    static let cr: UInt8 = 0x0D
    static let lf: UInt8 = 0x0A
    static let dash = UInt8(ascii: "-")
    static let space: UInt8 = 0x20
    static let tab: UInt8 = 0x09

    /// RFC 2046 `bchars`: digits, letters, `'()+_,-./:=?` and space.
    static func isBoundaryCharacter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"):
            return true
        case UInt8(ascii: "'"), UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "+"), UInt8(ascii: "_"), UInt8(ascii: ","),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "/"), UInt8(ascii: ":"), UInt8(ascii: "="), UInt8(ascii: "?"),
             UInt8(ascii: " "):
            return true
        default:
            return false
        }
    }
}

/// A media type (RFC 9110 section 8.3.1), parsed strictly: `type/subtype`, then `; name=value` parameters whose
/// values are tokens or quoted strings (unescaped here); optional spaces and tabs around the semicolons. Type,
/// subtype and parameter names are lowercased; a repeated parameter name makes the whole invalid.
struct MediaType {
    var type: String
    var subtype: String
    var parameters: [(name: String, value: [UInt8])]

    init?(_ bytes: [UInt8]) {
        var index = 0
        func skipSpace() {
            while index < bytes.count, bytes[index] == 0x20 || bytes[index] == 0x09 { index += 1 }
        }
        func token() -> ArraySlice<UInt8>? {
            let start = index
            while index < bytes.count, Self.isTokenCharacter(bytes[index]) { index += 1 }
            return index > start ? bytes[start..<index] : nil
        }
        skipSpace()
        guard let type = token(), index < bytes.count, bytes[index] == UInt8(ascii: "/") else { return nil }
        index += 1
        guard let subtype = token() else { return nil }
        self.type = Self.lowercased(type)
        self.subtype = Self.lowercased(subtype)
        parameters = []
        var names: Set<String> = []
        while true {
            skipSpace()
            guard index < bytes.count else { break }
            guard bytes[index] == UInt8(ascii: ";") else { return nil }
            index += 1
            skipSpace()
            guard index < bytes.count, bytes[index] != UInt8(ascii: ";") else { continue }
            guard let rawName = token(), index < bytes.count, bytes[index] == UInt8(ascii: "=") else { return nil }
            index += 1
            let name = Self.lowercased(rawName)
            var value: [UInt8] = []
            if index < bytes.count, bytes[index] == UInt8(ascii: "\"") {
                index += 1
                var closed = false
                while index < bytes.count {
                    let byte = bytes[index]
                    index += 1
                    if byte == UInt8(ascii: "\"") {
                        closed = true
                        break
                    } else if byte == UInt8(ascii: "\\") {
                        guard index < bytes.count, Self.isQuotable(bytes[index]) else { return nil }
                        value.append(bytes[index])
                        index += 1
                    } else {
                        guard Self.isQuotable(byte) else { return nil }
                        value.append(byte)
                    }
                }
                guard closed else { return nil }
            } else {
                guard let raw = token() else { return nil }
                value = Array(raw)
            }
            guard names.insert(name).inserted else { return nil }
            parameters.append((name, value))
        }
    }

    /// RFC 9110 `tchar`.
    static func isTokenCharacter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"):
            return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"),
             UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"),
             UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    /// What a quoted string may hold (`qdtext`, or after a backslash): tab, space, visible ASCII, obs-text.
    static func isQuotable(_ byte: UInt8) -> Bool {
        byte == 0x09 || (byte >= 0x20 && byte != 0x7F)
    }

    static func lowercased(_ bytes: some Collection<UInt8>) -> String {
        String(decoding: bytes.map { (0x41...0x5A).contains($0) ? $0 | 0x20 : $0 }, as: UTF8.self)
    }
}
