import Testing
@testable import ContinuonPackIngest

/// The `uploadType=multipart` body parser (ContinuonPackIngest): the bytes Google's client sends, media that looks
/// like a delimiter, every way of splitting the body into reads, and hostile bodies.
@Suite("Ingestion protocol: multipart/related upload bodies")
struct MultipartRelatedTests {
    static let boundary = "===============1234567890123456789=="
    static let contentType = #"multipart/related; boundary="===============1234567890123456789==""#
    static let metadataJSON = #"{"name": "c7d7adb8f983eaba86ec4a57ed08fb22dfc98deb08e20a7d066ea9b8c619e267.cpkg"}"#

    // MARK: - Helpers

    /// What the parser made of a body: the metadata (if emitted), the media, the refusal (from `feed` or `finish`).
    struct Outcome: Equatable {
        var metadata: [UInt8]?
        var media: [UInt8] = []
        var problem: IngestProblem?
        var complete = false
        var mediaBytes: UInt64 = 0
    }

    struct CallbackInvariantBroken: Error {}

    /// Feeds `body` in pieces ending at `cuts` (sorted offsets), then finishes; checks the invariants on the way.
    static func run(_ body: [UInt8], contentType: String = contentType, cuts: [Int] = []) -> Outcome {
        var outcome = Outcome()
        var parser: MultipartRelatedParser
        do {
            parser = try MultipartRelatedParser(contentType: contentType)
        } catch {
            outcome.problem = error
            return outcome
        }
        var fed = 0
        var start = 0
        for end in cuts.filter({ $0 > 0 && $0 < body.count }) + [body.count] {
            do {
                try body[start..<end].withUnsafeBytes { piece in
                    fed += piece.count
                    try parser.feed(piece, onMetadata: { bytes in
                        guard outcome.metadata == nil, outcome.media.isEmpty, bytes.count <= UploadMetadata.maxBytes else {
                            throw CallbackInvariantBroken()
                        }
                        outcome.metadata = bytes
                    }, media: { slice in
                        guard outcome.metadata != nil, !slice.isEmpty else { throw CallbackInvariantBroken() }
                        outcome.media.append(contentsOf: slice)
                    })
                }
            } catch let problem as IngestProblem {
                outcome.problem = problem
                break
            } catch {
                Issue.record("a callback's invariant broke: \(error)")
                break
            }
            #expect(outcome.media.count <= fed)
            #expect(parser.heldBackCount < parser.delimiterLength)
            start = end
        }
        if outcome.problem == nil {
            do { try parser.finish() } catch { outcome.problem = error }
        }
        outcome.complete = parser.isComplete
        outcome.mediaBytes = parser.mediaBytes
        #expect(parser.mediaBytes == UInt64(outcome.media.count))
        return outcome
    }

    /// The body Google's client builds, with optional trailing bytes after the closing delimiter.
    static func body(metadata: String = metadataJSON, media: [UInt8], boundary: String = boundary, after: String = "") -> [UInt8] {
        Array("--\(boundary)\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n\(metadata)\r\n--\(boundary)\r\n".utf8)
            + Array("content-type: application/octet-stream\r\n\r\n".utf8) + media + Array("\r\n--\(boundary)--\(after)".utf8)
    }

    /// The same outcome whole, byte by byte, at every single cut, and at random cuts.
    static func expectSplitIndependent(_ body: [UInt8], contentType: String = contentType, singleCuts: Bool = true) -> Outcome {
        let whole = run(body, contentType: contentType)
        #expect(run(body, contentType: contentType, cuts: Array(0...body.count)) == whole)
        if singleCuts {
            for cut in 0...body.count {
                #expect(run(body, contentType: contentType, cuts: [cut]) == whole, "cut at \(cut)")
            }
        }
        var random = SplitMix64(seed: UInt64(body.count))
        for _ in 0..<20 {
            let cuts = (0..<Int(random.next() % 12)).map { _ in Int(random.next() % UInt64(body.count + 1)) }.sorted()
            #expect(run(body, contentType: contentType, cuts: cuts) == whole, "cuts at \(cuts)")
        }
        return whole
    }

    static func expectRefused(_ outcome: Outcome, status: Int = 400, code: String = "upload.multipart_invalid",
                              sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(outcome.problem?.status == status, sourceLocation: sourceLocation)
        #expect(outcome.problem?.code == code, sourceLocation: sourceLocation)
    }

    // MARK: - What clients send

    /// Made once with google-cloud-storage 3.17.1 (google/cloud/storage/_media/_upload.py), not at test time:
    /// `random.seed(20240501); up = MultipartUpload(url, checksum="crc32c");`
    /// `up._prepare_request(b"\x00\r\n--===============\r\n-\r\n--\xfftail", {"name": "767e…d7.cpkg"}, "application/octet-stream")`.
    /// The Content-Type header it set and the body, verbatim.
    static let pythonContentType = #"multipart/related; boundary="===============3465830872745122588==""#
    static let pythonBody: [UInt8] = Array(
        "--===============3465830872745122588==\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n".utf8)
        + Array(#"{"name": "c7d7adb8f983eaba86ec4a57ed08fb22dfc98deb08e20a7d066ea9b8c619e267.cpkg", "crc32c": "pLFKGg=="}"#.utf8)
        + Array("\r\n--===============3465830872745122588==\r\ncontent-type: application/octet-stream\r\n\r\n".utf8)
        + [0x00] + Array("\r\n--===============\r\n-\r\n--".utf8) + [0xFF] + Array("tail".utf8)
        + Array("\r\n--===============3465830872745122588==--".utf8)
    /// The same client and version, `random.seed(20240502)`, default checksum, empty media, metadata `{"name": "x.cpkg"}`.
    static let pythonEmptyContentType = #"multipart/related; boundary="===============1699687207969686209==""#
    static let pythonEmptyBody: [UInt8] = Array((
        "--===============1699687207969686209==\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n"
            + #"{"name": "x.cpkg", "crc32c": "AAAAAA=="}"#
            + "\r\n--===============1699687207969686209==\r\ncontent-type: application/octet-stream\r\n\r\n"
            + "\r\n--===============1699687207969686209==--").utf8)

    @Test("The bytes google-cloud-storage's Python client sends, with media that looks like a delimiter")
    func pythonClient() throws {
        #expect(Self.pythonBody.count == 350)
        let outcome = Self.expectSplitIndependent(Self.pythonBody, contentType: Self.pythonContentType)
        #expect(outcome.problem == nil && outcome.complete)
        #expect(outcome.media == [0x00] + Array("\r\n--===============\r\n-\r\n--".utf8) + [0xFF] + Array("tail".utf8))
        let metadata = try UploadMetadata(json: try #require(outcome.metadata))
        #expect(metadata.crc32c == "pLFKGg==" && metadata.name == IngestProtocolTests.name)
    }

    @Test("Google's Python client with empty media")
    func pythonClientEmptyMedia() throws {
        let outcome = Self.expectSplitIndependent(Self.pythonEmptyBody, contentType: Self.pythonEmptyContentType)
        #expect(outcome.problem == nil && outcome.complete && outcome.media.isEmpty && outcome.mediaBytes == 0)
        #expect(try UploadMetadata(json: try #require(outcome.metadata)).name == "x.cpkg")
    }

    @Test("Quoted and unquoted boundaries, any case, other parameters", arguments: [
        ("multipart/related; boundary=foo_bar", "foo_bar"),
        (#"multipart/related; boundary="foo_bar""#, "foo_bar"),
        (#"Multipart/Related;BOUNDARY="a b'()+_,-./:=?""#, "a b'()+_,-./:=?"),
        (#"multipart/related; type="application/json"; boundary="x\y"; start=a"#, "xy"),
        ("multipart/related ;\tboundary=" + String(repeating: "b", count: 70) + " ", String(repeating: "b", count: 70)),
        ("multipart/related; ; boundary=1", "1"),
    ])
    func boundaries(_ contentType: String, _ boundary: String) {
        let media = Array("media\r\n--\(boundary.dropLast())\r\n--".utf8)
        let outcome = Self.run(Self.body(media: media, boundary: boundary), contentType: contentType)
        #expect(outcome.problem == nil && outcome.media == media && outcome.metadata == Array(Self.metadataJSON.utf8))
    }

    @Test("Content-Type headers that are refused before the body is read", arguments: [
        nil, "", "multipart/related", "multipart/related;", "multipart/related; boundary=", #"multipart/related; boundary="""#,
        "multipart/related; boundary=" + String(repeating: "b", count: 71), #"multipart/related; boundary="ends ""#,
        "multipart/related; boundary=a; boundary=a", #"multipart/related; boundary="unterminated"#,
        "multipart/related; boundary=a b", "multipart/related; boundary =a", "multipart/related; boundary=a=b",
        #"multipart/related; boundary="é""#, "multipart/related; boundary=\"a\r\"", #"multipart/related; boundary="a\""#,
        "multipart/form-data; boundary=a",
        "multipart/mixed; boundary=a", "application/json", "multipart; boundary=a", "multipart/related boundary=a",
        "multipart/related; boundary=a\r\nX: y",
    ])
    func badContentTypes(_ contentType: String?) {
        #expect(throws: IngestProblem.self) { try MultipartRelatedParser(contentType: contentType) }
        do {
            _ = try MultipartRelatedParser(contentType: contentType)
        } catch {
            #expect(error.status == 400 && error.code == "upload.multipart_invalid" && !error.title.isEmpty)
            #expect(error.detail == nil)
        }
    }

    @Test("A Content-Type of 50,000 parameters is read in linear time")
    func manyParameters() throws {
        let parameters = (0..<50_000).map { "p\($0)=v" }.joined(separator: "; ")
        let clock = ContinuousClock()
        let start = clock.now
        #expect(throws: IngestProblem.self) { try MultipartRelatedParser(contentType: "multipart/related; \(parameters); p7=v") }
        _ = try MultipartRelatedParser(contentType: "multipart/related; \(parameters); boundary=b")
        // Well under a second; a pairwise duplicate check would take minutes.
        #expect(clock.now - start < .seconds(10))
    }

    // MARK: - Media round trips

    @Test("Media that looks like a delimiter comes out exactly, whatever the reads", arguments: [
        "", "\r", "\n", "\r\n", "\r\n-", "\r\n--", "\r\n--=", "\r\n--===============1234567890123456789=",
        "\r\n--===============1234567890123456789", "--===============1234567890123456789==",
        "--===============1234567890123456789==--", "\n--===============1234567890123456789==",
        "\r--===============1234567890123456789==", "\r\r\n--===============1234567890123456789=\r",
        "\r\n--\r\n--\r\n--===\r\n--===============1234567890123456789=\r\n-", "x\r\n\r\n--===============\r\n\r",
    ])
    func lookalikes(_ text: String) {
        let media = Array(text.utf8)
        let outcome = Self.expectSplitIndependent(Self.body(media: media))
        #expect(outcome.problem == nil && outcome.complete)
        #expect(outcome.media == media && outcome.metadata == Array(Self.metadataJSON.utf8))
    }

    @Test("Random media of delimiter fragments round-trips at random reads")
    func randomMedia() {
        var random = SplitMix64(seed: 7)
        let fragments = ["\r", "\n", "-", "--", "\r\n--", "=", "===============1234567890123456789=", "\u{0}", "a"].map { Array($0.utf8) }
        for _ in 0..<200 {
            var media: [UInt8] = []
            for _ in 0..<Int(random.next() % 40) { media += fragments[Int(random.next() % UInt64(fragments.count))] }
            // A media containing the delimiter is not a valid body; skip those.
            if Self.contains(media + Array("\r\n".utf8), Array("\r\n--\(Self.boundary)".utf8)) { continue }
            let body = Self.body(media: media)
            let cuts = (0..<Int(random.next() % 16)).map { _ in Int(random.next() % UInt64(body.count + 1)) }.sorted()
            let outcome = Self.run(body, cuts: cuts)
            #expect(outcome.problem == nil && outcome.media == media, "media \(media)")
        }
    }

    @Test("Binary media, every byte value, large reads")
    func binaryMedia() {
        var media: [UInt8] = []
        for round in 0..<64 { media += (0...255).map { UInt8(truncatingIfNeeded: $0 &+ round) } }
        let body = Self.body(media: media)
        #expect(Self.run(body).media == media)
        #expect(Self.run(body, cuts: Array(stride(from: 0, to: body.count, by: 1000))).media == media)
    }

    @Test("The closing delimiter, with what may follow it, split at every byte", arguments: [
        "", "\r\n", "  \t", "\t\r\n", "\r\nepilogue\r\n--===============1234567890123456789==\r\nstill ignored",
    ])
    func closingSplits(_ after: String) {
        let body = Self.body(media: Array("data\r\n--".utf8), after: after)
        let outcome = Self.expectSplitIndependent(body)
        #expect(outcome.problem == nil && outcome.complete && outcome.media == Array("data\r\n--".utf8))
    }

    @Test("Empty metadata, no media headers, transport padding after delimiters, other part headers")
    func lenientButValid() {
        let body = Array(("--b \t\r\nContent-Type: APPLICATION/JSON ; Charset=\"utf-8\"\r\nContent-ID: <meta>\r\n"
            + "content-transfer-encoding: 8bit\r\n\r\n\r\n--b\t\r\n\r\nxyz\r\n--b--").utf8)
        let outcome = Self.expectSplitIndependent(body, contentType: "multipart/related; boundary=b")
        #expect(outcome.problem == nil && outcome.metadata == [] && outcome.media == Array("xyz".utf8))
        let binary = Array(("--b\r\ncontent-type: application/json\r\n\r\n{}\r\n--b\r\n"
            + "Content-Transfer-Encoding: BINARY\r\n\r\n\r\n--b--").utf8)
        #expect(Self.run(binary, contentType: "multipart/related; boundary=b").problem == nil)
    }

    // MARK: - Refusals

    @Test("The first part must be JSON metadata", arguments: [
        "", "content-type: text/plain\r\n", "content-type: application/jsonx\r\n", "content-type: application/json-seq\r\n",
        "content-type: application/octet-stream\r\n", "content-type: application\r\n", "content-type: application/json;;x\r\n",
        "content-type: application/json\r\ncontent-type: application/json\r\n",
        "content-type: application/json\r\ncontent-transfer-encoding: base64\r\n",
    ])
    func notJSON(_ headers: String) {
        let body = Array("--b\r\n\(headers)\r\n{}\r\n--b\r\n\r\nmedia\r\n--b--".utf8)
        let outcome = Self.expectSplitIndependent(body, contentType: "multipart/related; boundary=b", singleCuts: false)
        Self.expectRefused(outcome)
        #expect(outcome.problem?.closesConnection == true && outcome.metadata == nil && outcome.media.isEmpty)
    }

    @Test("Malformed part headers", arguments: [
        "no colon\r\n", "content-type : application/json\r\n", " folded: x\r\n", ": empty name\r\n", "x: a\nb\r\n",
        "x: a\rb\r\n", "x: a\u{0}b\r\n", "x: a\u{7F}\r\n", "na me: x\r\n", "x: y\n",
    ])
    func badHeaders(_ header: String) {
        let body = Array("--b\r\ncontent-type: application/json\r\n\r\n{}\r\n--b\r\n\(header)\r\nmedia\r\n--b--".utf8)
        let outcome = Self.run(body, contentType: "multipart/related; boundary=b")
        Self.expectRefused(outcome)
        #expect(outcome.metadata == nil)
    }

    @Test("Bodies of the wrong shape", arguments: [
        // A preamble, a missing start, no parts, one part, three parts.
        "preamble\r\n--b\r\ncontent-type: application/json\r\n\r\n{}\r\n--b\r\n\r\nm\r\n--b--",
        "\r\n--b\r\ncontent-type: application/json\r\n\r\n{}\r\n--b\r\n\r\nm\r\n--b--",
        "-b\r\n", "--b--", "--b\r\ncontent-type: application/json\r\n\r\n{}\r\n--b--",
        "--b\r\ncontent-type: application/json\r\n\r\n{}\r\n--b\r\n\r\nm\r\n--b\r\n\r\nthird\r\n--b--",
        // A delimiter followed by something else, inside the media and at the start; a bad epilogue.
        "--b\r\ncontent-type: application/json\r\n\r\n{}\r\n--b\r\n\r\nm\r\n--bx\r\n--b--",
        "--bb\r\n", "--b-x", "--b \tx", "--b\rx",
        "--b\r\ncontent-type: application/json\r\n\r\n{}\r\n--b\r\n\r\nm\r\n--b--x",
        "--b\r\ncontent-type: application/json\r\n\r\n{}\r\n--b\r\n\r\nm\r\n--b--\rx",
        "--b\r\ncontent-type: application/json\r\n\r\n{}\r\n--b\r\n\r\nm\r\n--b-- \r\r\n",
    ])
    func wrongShapes(_ text: String) {
        let outcome = Self.expectSplitIndependent(Array(text.utf8), contentType: "multipart/related; boundary=b", singleCuts: false)
        Self.expectRefused(outcome)
        #expect(!outcome.title.isEmpty)
    }

    @Test("A body that ends before its closing delimiter is refused at finish, and held-back bytes are not media")
    func truncated() {
        let body = Self.body(media: Array("data".utf8), after: "\r\n")
        let closeEnd = body.count - 2
        for end in 0..<closeEnd {
            let outcome = Self.run(Array(body[..<end]))
            Self.expectRefused(outcome)
            #expect(!outcome.complete)
            #expect(outcome.problem?.title == "The multipart body ended before its closing delimiter.")
            // "data" comes out only once a byte after it proves it is not the delimiter's start.
            #expect(outcome.media.count <= 4)
        }
        #expect(Self.run(Array(body[..<(closeEnd + 1)])).problem?.title
            == "The multipart body ends in a CR without LF after the closing delimiter.")
        #expect(Self.run(Array(body[..<closeEnd])).problem == nil)
        #expect(Self.run(body).problem == nil)
    }

    @Test("Metadata over 64 KiB is 413 upload.metadata_too_large; 64 KiB exactly is accepted")
    func metadataLimit() {
        let exact = String(repeating: " ", count: UploadMetadata.maxBytes - 2) + "{}"
        let accepted = Self.run(Self.body(metadata: exact, media: [1, 2]), cuts: [100, 70_000])
        #expect(accepted.problem == nil && accepted.metadata?.count == UploadMetadata.maxBytes)
        let over = " " + exact
        for cuts in [[], [100], Array(stride(from: 0, to: 70_000, by: 997))] {
            let outcome = Self.run(Self.body(metadata: over, media: [1, 2]), cuts: cuts)
            Self.expectRefused(outcome, status: 413, code: "upload.metadata_too_large")
            #expect(outcome.metadata == nil && outcome.problem?.closesConnection == true)
        }
        // A megabyte without a delimiter is refused without being kept.
        let endless = Array("--b\r\ncontent-type: application/json\r\n\r\n".utf8) + [UInt8](repeating: 0x0D, count: 1 << 20)
        Self.expectRefused(Self.run(endless, contentType: "multipart/related; boundary=b"), status: 413, code: "upload.metadata_too_large")
    }

    @Test("A header block over 8 KiB is refused; 8 KiB exactly is accepted")
    func headerLimit() {
        // The block: the rest of the delimiter line (CRLF), the header lines, the empty line.
        let prefix = "content-type: application/json\r\nx-padding: "
        let fill = MultipartRelatedParser.maxHeaderBytes - 2 - prefix.utf8.count - 2 - 2
        func body(_ count: Int) -> [UInt8] {
            Array("--b\r\n\(prefix)\(String(repeating: "p", count: count))\r\n\r\n{}\r\n--b\r\n\r\nm\r\n--b--".utf8)
        }
        #expect(Self.run(body(fill), contentType: "multipart/related; boundary=b").problem == nil)
        let outcome = Self.run(body(fill + 1), contentType: "multipart/related; boundary=b", cuts: [4000])
        Self.expectRefused(outcome)
        #expect(outcome.problem?.title == "A multipart part's header block is larger than 8 KiB.")
        // Endless transport padding and endless header lines are cut off the same way.
        let padding = Array("--b".utf8) + [UInt8](repeating: 0x20, count: 100_000)
        Self.expectRefused(Self.run(padding, contentType: "multipart/related; boundary=b"))
        let lines = Array("--b\r\n".utf8) + Array(repeating: Array("x: y\r\n".utf8), count: 20_000).flatMap { $0 }
        Self.expectRefused(Self.run(lines, contentType: "multipart/related; boundary=b"))
    }

    @Test("An epilogue over 8 KiB is refused")
    func epilogueLimit() {
        let limit = MultipartRelatedParser.maxEpilogueBytes
        let fits = Self.body(media: [1], after: "\r\n" + String(repeating: "e", count: limit - 2))
        #expect(Self.run(fits).problem == nil)
        Self.expectRefused(Self.run(Self.body(media: [1], after: "\r\n" + String(repeating: "e", count: limit - 1))))
    }

    // MARK: - Callbacks, time and memory

    struct SpoolFull: Error, Equatable {}

    @Test("A callback's error comes out unchanged, and the parser refuses further use")
    func callbackErrors() throws {
        var parser = try MultipartRelatedParser(contentType: Self.contentType)
        let body = Self.body(media: Array("media".utf8))
        #expect(throws: SpoolFull()) {
            try body.withUnsafeBytes { try parser.feed($0, onMetadata: { _ in }, media: { _ in throw SpoolFull() }) }
        }
        #expect(throws: IngestProblem.self) {
            try body.withUnsafeBytes { try parser.feed($0, onMetadata: { _ in }, media: { _ in }) }
        }
        #expect(throws: IngestProblem.self) { try parser.finish() }

        var other = try MultipartRelatedParser(contentType: Self.contentType)
        #expect(throws: SpoolFull()) {
            try body.withUnsafeBytes { try other.feed($0, onMetadata: { _ in throw SpoolFull() }, media: { _ in }) }
        }
        #expect(other.mediaBytes == 0)
        // The parser's own refusal is repeated.
        var refused = try MultipartRelatedParser(contentType: "multipart/related; boundary=b")
        let first = try #require(throws: IngestProblem.self) {
            try Array("--x".utf8).withUnsafeBytes { try refused.feed($0, onMetadata: { _ in }, media: { _ in }) }
        }
        #expect(first.closesConnection && first.title.contains("no preamble"))
        #expect(throws: first) { try refused.finish() }
    }

    @Test("Delimiter fragments repeated for megabytes: linear time, bounded hold-back, exact media")
    func hostileRepetition() throws {
        let boundary = String(repeating: "=", count: 69) + "x"
        let contentType = "multipart/related; boundary=\"\(boundary)\""
        let almost = Array("\r\n--\(String(repeating: "=", count: 69))".utf8)
        for unit in [Array("\r\n--".utf8), almost, Array("\r".utf8)] {
            var media: [UInt8] = []
            while media.count < 4 << 20 { media += unit }
            let body = Self.body(media: media, boundary: boundary)
            let clock = ContinuousClock()
            let start = clock.now
            var parser = try MultipartRelatedParser(contentType: contentType)
            var count = 0
            var matches = true
            for offset in stride(from: 0, to: body.count, by: 65_536) {
                try body[offset..<min(body.count, offset + 65_536)].withUnsafeBytes { piece in
                    try parser.feed(piece, onMetadata: { _ in }, media: { slice in
                        matches = matches && slice.elementsEqual(media[count..<(count + slice.count)])
                        count += slice.count
                    })
                }
                #expect(parser.heldBackCount <= 73)
            }
            try parser.finish()
            #expect(matches && count == media.count)
            // Linear: about a second in a debug build; a rescan per byte would take minutes.
            #expect(clock.now - start < .seconds(30))
        }
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard haystack.count >= needle.count else { return false }
        return (0...(haystack.count - needle.count)).contains { haystack[$0..<($0 + needle.count)].elementsEqual(needle) }
    }
}

extension MultipartRelatedTests.Outcome {
    var title: String { problem?.title ?? "" }
}

/// A seeded generator, so that random splits are the same on every run.
private struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
