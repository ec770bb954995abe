import Foundation
import Testing
@testable import ContinuonPack

@Suite("Strict JSON")
struct JSONTests {
    @Test("Duplicate keys are refused at any depth", arguments: [
        #"{"a":1,"a":1}"#,
        #"{"a":{"b":[{"c":1,"c":2}]}}"#,
        #"{"a":1,"\u0061":2}"#,
        "{\"caf\u{E9}\":1,\"cafe\u{301}\":2}", // canonically equivalent keys
        // Past 16 members the keys go to a set: the same rules there.
        "{" + (0..<20).map { "\"k\($0)\":0," }.joined() + "\"k3\":1}",
        "{" + (0..<20).map { "\"k\($0)\":0," }.joined() + "\"caf\u{E9}\":1,\"cafe\u{301}\":2}",
    ])
    func duplicateKeys(_ text: String) {
        #expect(throws: JSONParseError.self) { try StrictJSONParser.parse(Array(text.utf8)) }
        do {
            _ = try StrictJSONParser.parse(Array(text.utf8))
        } catch {
            #expect(error.kind == .duplicateKey)
        }
    }

    @Test("Malformed input is refused", arguments: [
        "", " ", "{", "[1,]", "{\"a\":1,}", "01", "1.", "-", "\"\\x\"", "\"\u{01}\"", "{} {}", "\u{FEFF}{}",
        "\"\\ud800\"", "\"\\udc00x\"", "NaN", "Infinity", "[1e]", "tru",
    ])
    func malformed(_ text: String) {
        #expect(throws: JSONParseError.self) { try StrictJSONParser.parse(Array(text.utf8)) }
    }

    @Test("Invalid UTF-8 inside strings is refused")
    func invalidUTF8() {
        #expect(throws: JSONParseError.self) { try StrictJSONParser.parse([0x22, 0xff, 0x22]) }
        #expect(throws: JSONParseError.self) { try StrictJSONParser.parse([0x22, 0xc0, 0xaf, 0x22]) }
    }

    @Test("Strings without escapes and with them read the same")
    func strings() throws {
        let text = #"["plain","ünï 🤖","esc\"aped\\","\u00e9\ud83e\udd16",""]"#
        #expect(try StrictJSONParser.parse(Array(text.utf8)) == .array([
            .string("plain"), .string("ünï 🤖"), .string("esc\"aped\\"), .string("é🤖"), .string(""),
        ]))
        // Invalid UTF-8 before an escape is still refused.
        #expect(throws: JSONParseError.self) { try StrictJSONParser.parse([0x22, 0xc3, 0x5c, 0x6e, 0x22]) }
    }

    @Test("Streaming one top-level array gives its elements in order and the same tree otherwise")
    func streaming() throws {
        let text = Array(#"{"blobs":[1,{"a":[2]},"x"],"other":{"blobs":[3]}}"#.utf8)
        var elements: [JSONValue] = []
        let tree = try StrictJSONParser.parse(text, streaming: "blobs") { elements.append($0) }
        #expect(elements == [.number("1"), .object([("a", .array([.number("2")]))]), .string("x")])
        #expect(tree == .object([("blobs", .array([])), ("other", .object([("blobs", .array([.number("3")]))]))]))
        // A syntax error after the streamed array still fails the whole text.
        #expect(throws: JSONParseError.self) {
            try StrictJSONParser.parse(Array(#"{"blobs":[1],}"#.utf8), streaming: "blobs") { _ in }
        }
    }

    @Test("Nesting is capped")
    func depth() throws {
        let ok = String(repeating: "[", count: 16) + String(repeating: "]", count: 16)
        _ = try StrictJSONParser.parse(Array(ok.utf8), maxDepth: 16)
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        do {
            _ = try StrictJSONParser.parse(Array(deep.utf8), maxDepth: 16)
            Issue.record("deep nesting was accepted")
        } catch {
            #expect(error.kind == .tooDeep)
        }
    }

    @Test("Safe integers: plain digits up to 2^53 - 1 only")
    func integers() throws {
        #expect(JSONValue.number("9007199254740991").safeUnsignedInteger == 9_007_199_254_740_991)
        for text in ["9007199254740992", "1.0", "1e3", "-0", "-1", "00"] {
            #expect(JSONValue.number(text).safeUnsignedInteger == nil, "\(text)")
        }
    }

    @Test("Canonical JSON matches Python's json.dumps(sort_keys, compact, ensure_ascii=False)")
    func canonicalMatchesPython() throws {
        let value = JSONValue.object([
            ("zeta", .string("tab\tquote\"backslash\\newline\ncontrol\u{01}\u{1f}del\u{7f}")),
            ("alpha", .array([.number("0"), .number("9007199254740991"), .bool(true), .null])),
            ("ünï", .string("日本語 / 🤖")),
            ("Alpha", .object([("b", .string("")), ("a", .array([]))])),
        ])
        let ours = CanonicalJSON.encode(value)
        #expect(try pythonCanonical(ours) == ours)
        #expect(CanonicalJSON.encode(try StrictJSONParser.parse(ours)) == ours)
    }

    @Test("The manifest's and envelope's direct writers give Python's canonical JSON of the same values")
    func manifestWriterMatchesPython() throws {
        let digest = String(repeating: "ab", count: 32)
        let manifest = Manifest(
            packageID: String(repeating: "0f", count: 32), createdAt: "2026-11-29T12:00:00Z",
            provenance: Provenance(
                brainRuntimeVersion: "1.2.3", aiAppVersion: "4.5", environmentID: "lab-7",
                extra: ["b_site": "quote\" back\\slash", "zz": "ünï 🤖", "a": ""]),
            archive: ArchiveDescriptor(name: "episodes.tar.zst", compression: .zstd, size: 9_007_199_254_740_991, sha256: digest),
            blobs: [
                BlobDescriptor(path: "a/b.tfrecord", size: 0, sha256: digest),
                BlobDescriptor(path: "é/日本.bin", size: 12345, sha256: digest),
                BlobDescriptor(path: "z\"q", size: 1, sha256: digest),
            ])
        let ours = manifest.canonicalBytes()
        #expect(ours == CanonicalJSON.encode(manifest.jsonValue))
        #expect(try pythonCanonical(ours) == ours)

        // And the envelope's, around it, with two signatures and a type that needs escaping.
        let envelope = Envelope(payloadType: "type/\"x\"", payload: ours, signatures: [
            .init(keyID: String(repeating: "a", count: 64), signature: Array(0..<64)),
            .init(keyID: "k2", signature: [255]),
        ])
        #expect(envelope.jsonBytes() == CanonicalJSON.encode(envelope.jsonValue))
        #expect(try pythonCanonical(envelope.jsonBytes()) == envelope.jsonBytes())
    }
}

/// Python's canonical form of a JSON text: `json.dumps(sort_keys=True, separators=(',', ':'), ensure_ascii=False)`.
private func pythonCanonical(_ json: [UInt8]) throws -> [UInt8] {
    let python = try run("python3", [
        "-c",
        "import json,sys; v=json.loads(sys.stdin.buffer.read()); "
            + "sys.stdout.buffer.write(json.dumps(v, sort_keys=True, separators=(',',':'), ensure_ascii=False).encode())",
    ], stdin: json)
    #expect(python.status == 0, "\(python.stderr)")
    return python.stdout
}

@Suite("Format rules")
struct ValidationTests {
    @Test("Identifiers", arguments: [
        ("lab-arm-01", true), ("0.9.4+build.7", true), ("env:a@b_c", true), (String(repeating: "a", count: 128), true),
        ("", false), ("-lead", false), (".lead", false), ("has space", false), ("slash/no", false),
        (String(repeating: "a", count: 129), false), ("ünï", false), ("new\nline", false),
    ])
    func identifiers(_ text: String, _ valid: Bool) {
        #expect(FormatRules.isValidIdentifier(text) == valid)
    }

    @Test("Blob paths", arguments: [
        ("episode/steps.tfrecord", true), ("a", true), ("ünï/日本.bin", true), (".hidden/x", true), ("a..b", true),
        (String(repeating: "d/", count: 511) + "ab", true),
        ("", false), ("/abs", false), ("../up", false), ("a/../b", false), ("a/./b", false), ("a//b", false),
        ("a/", false), ("back\\slash", false), ("nl\nx", false), ("del\u{7f}", false), ("c1\u{85}", false),
        ("nul\u{0}", false), ("cafe\u{301}", false), (String(repeating: "d/", count: 511) + "abc", false),
        ("...", true), ("a/.../b", true), ("..a/b.", true), (".", false), ("..", false), ("./a", false), ("a/.", false),
        ("a/..", false), ("/", false),
    ])
    func paths(_ path: String, _ valid: Bool) {
        #expect((FormatRules.pathProblem(Array(path.utf8)) == nil) == valid, "\(path.debugDescription)")
    }

    @Test("The collision key is the lowercase mapping, kept as is when nothing changes")
    func collisionKeys() {
        for path in ["a/b.bin", "A/B.BIN", "readme", "Readme", "\u{212A}elvin", "caf\u{E9}", "CAF\u{C9}", "\u{130}", "x_1-2.~"] {
            #expect(FormatRules.collisionKey(path) == path.lowercased(), "\(path.debugDescription)")
            #expect(Array(FormatRules.collisionKey(path).utf8) == Array(path.lowercased().utf8))
        }
    }

    @Test("Non-UTF-8 paths are refused")
    func nonUTF8Path() {
        #expect(FormatRules.pathProblem([0x63, 0x61, 0x66, 0xe9]) == "the path is not valid UTF-8")
        #expect(FormatRules.pathProblem([0xed, 0xa0, 0x80]) != nil) // an encoded surrogate
    }

    @Test("Timestamps", arguments: [
        ("2024-01-01T00:00:00Z", true), ("2024-02-29T23:59:59Z", true), ("2023-02-29T00:00:00Z", false),
        ("2024-13-01T00:00:00Z", false), ("2024-01-01T24:00:00Z", false), ("2024-01-01T00:00:00+00:00", false),
        ("2024-01-01 00:00:00Z", false), ("2024-01-01T00:00:00.5Z", false), ("1900-02-29T00:00:00Z", false),
    ])
    func timestamps(_ text: String, _ valid: Bool) {
        #expect(FormatRules.isValidTimestamp(text) == valid)
    }

    @Test("SOURCE_DATE_EPOCH sets created_at, in UTC, whatever TZ says")
    func sourceDateEpoch() throws {
        #expect(try PackageWriter.createdAt(environment: ["SOURCE_DATE_EPOCH": "1704067200", "TZ": "Asia/Tokyo"])
            == "2024-01-01T00:00:00Z")
        #expect(throws: ContinuonPackError.self) { try PackageWriter.createdAt(environment: ["SOURCE_DATE_EPOCH": "soon"]) }
        #expect(FormatRules.isValidTimestamp(try PackageWriter.createdAt(environment: [:])))
    }

    @Test("Base64 decoding is canonical")
    func base64() {
        #expect(Base64.decodeCanonical("AA==") == [0])
        #expect(Base64.decodeCanonical("AB==") == nil) // non-zero trailing bits
        #expect(Base64.decodeCanonical("AA") == nil) // no padding
        #expect(Base64.decodeCanonical("AA==\n") == nil)
        #expect(Base64.decodeCanonical("-_8=") == nil) // URL alphabet
        #expect(Base64.decodeCanonical("") == [])
        #expect(Base64.decodeCanonical("A===") == nil) // too much padding
        #expect(Base64.decodeCanonical("=AAA") == nil)
        #expect(Base64.decodeCanonical("AA=A") == nil)
        #expect(Base64.decodeCanonical("AAA ") == nil)
        #expect(Base64.decodeCanonical("AAA=AAAA") == nil) // padding before the last group
    }

    @Test("Base64 agrees with Foundation's on every length up to 200 bytes")
    func base64EncodingMatchesFoundation() {
        var generator = SystemRandomNumberGenerator()
        for length in 0...200 {
            let bytes = (0..<length).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
            let text = Data(bytes).base64EncodedString()
            #expect(Base64.encode(bytes) == text)
            #expect(Base64.decodeCanonical(text) == bytes)
        }
    }

    @Test("Base64 decoding accepts exactly what Foundation decodes and re-encodes to the same text")
    func base64DecodingMatchesFoundation() {
        func reference(_ text: String) -> [UInt8]? {
            guard let data = Data(base64Encoded: text), data.base64EncodedString() == text else { return nil }
            return [UInt8](data)
        }
        var random = SystemRandomNumberGenerator()
        let alphabet = Array("AQgw+/=Zz09a =\n-_".utf8)
        for _ in 0..<20_000 {
            let text = String(decoding: (0..<Int.random(in: 0...12, using: &random)).map { _ in
                alphabet.randomElement(using: &random)!
            }, as: UTF8.self)
            #expect(Base64.decodeCanonical(text) == reference(text), "\(text.debugDescription)")
        }
    }

    @Test("DSSE PAE is byte-exact, including an empty body")
    func pae() {
        #expect(Envelope.preAuthenticationEncoding(payloadType: "http://example.com/HelloWorld", payload: Array("hello world".utf8))
            == Array("DSSEv1 29 http://example.com/HelloWorld 11 hello world".utf8))
        #expect(Envelope.preAuthenticationEncoding(payloadType: "t", payload: []) == Array("DSSEv1 1 t 0 ".utf8))
    }

    @Test("Package ID: the documented preimage and digest of the test vector")
    func packageIDVector() throws {
        let expected = try json(try readBytes(Repo.path("TestVectors/valid/expected.json")))
        let manifest = try Manifest.decode(try readBytes(Repo.path("TestVectors/valid/manifest-none.json")))
        let preimage = PackageID.preimage(provenance: manifest.provenance, blobs: manifest.blobs)
        #expect(preimage == (try readBytes(Repo.path("TestVectors/valid/package-id-preimage.txt"))))
        #expect(PackageID.compute(provenance: manifest.provenance, blobs: manifest.blobs) == expected["package_id"] as? String)
        // sha256sum, an implementation we did not write, agrees on the preimage's digest.
        let coreutils = try run("sha256sum", [Repo.path("TestVectors/valid/package-id-preimage.txt")])
        #expect(coreutils.text.hasPrefix(manifest.packageID + " "))
    }

    @Test("Package ID: the digest of the preimage, also when it is written in several pieces")
    func packageIDManyBlobs() {
        let blobs = (0..<2000).map { BlobDescriptor(path: "episode/blob-\($0).bin", size: UInt64($0) * 977, sha256: String(repeating: "ab", count: 32)) }
        let preimage = PackageID.preimage(provenance: sampleProvenance, blobs: blobs)
        #expect(preimage.count > 100_000)
        #expect(PackageID.compute(provenance: sampleProvenance, blobs: blobs) == SHA256Hasher.hash(preimage).hex)
    }

    @Test("Manifest shape errors: JSON first, then the top-level fields, the blob count, and the first bad blob")
    func manifestErrorOrder() {
        func manifest(blobs: String, extra: String = "", schema: String = Manifest.schema, end: String = "}") -> [UInt8] {
            let digest = String(repeating: "ab", count: 32)
            return Array(("{\"archive\":{\"compression\":\"none\",\"name\":\"episodes.tar\",\"sha256\":\"\(digest)\",\"size\":1},"
                + "\"blobs\":[\(blobs)],\"created_at\":\"2026-01-01T00:00:00Z\",\"package_id\":\"\(digest)\",\(extra)"
                + "\"provenance\":{\"ai_app_version\":\"1\",\"brain_runtime_version\":\"1\",\"environment_id\":\"e\"},"
                + "\"schema\":\"\(schema)\"" + end).utf8)
        }
        func code(_ bytes: [UInt8], limits: PackageLimits = .default) -> (ContinuonPackError.Code?, String) {
            do {
                _ = try Manifest.decode(bytes, limits: limits)
                return (nil, "")
            } catch {
                return (error.code, error.message)
            }
        }
        let good = #"{"path":"a","sha256":"00","size":1}"#
        let bad = #"{"path":"b","sha256":"00","size":"1"}"#
        #expect(code(manifest(blobs: good)).0 == nil)
        #expect(code(manifest(blobs: bad, end: "}}")).0 == .manifestJSON)
        #expect(code(manifest(blobs: bad, extra: #""zzz":1,"#)).0 == .manifestUnknownField)
        #expect(code(manifest(blobs: bad, schema: "other")).0 == .manifestSchema)
        var limits = PackageLimits()
        limits.maxBlobCount = 1
        #expect(code(manifest(blobs: [bad, good].joined(separator: ",")), limits: limits).0 == .manifestLimit)
        let (first, message) = code(manifest(blobs: [good, bad, #"{"x":1}"#].joined(separator: ",")))
        #expect(first == .manifestField && message.contains("blobs[1].size"), "\(message)")
    }

    @Test("Archive members match the first unmatched manifest listing of their path")
    func blobMatcher() {
        func blobs(_ paths: [String]) -> [BlobDescriptor] {
            paths.map { BlobDescriptor(path: $0, size: 0, sha256: "") }
        }
        var sorted = BlobMatcher(blobs(["a", "b", "c"]))
        #expect(sorted.match(Array("b".utf8), expected: 0) == .listing(1))
        #expect(sorted.match(Array("b".utf8), expected: 2) == .allMatched)
        #expect(sorted.match(Array("a".utf8), expected: 2) == .listing(0))
        #expect(sorted.match(Array("bb".utf8), expected: 2) == .unlisted)
        #expect(sorted.isMatched(0) && sorted.isMatched(1) && !sorted.isMatched(2))
        var unsorted = BlobMatcher(blobs(["b", "a", "a", "c"]))
        #expect(unsorted.match(Array("a".utf8), expected: 0) == .listing(1))
        #expect(unsorted.match(Array("a".utf8), expected: 2) == .listing(2))
        #expect(unsorted.match(Array("a".utf8), expected: 3) == .allMatched)
        #expect(unsorted.match(Array("b".utf8), expected: 3) == .listing(0))
        #expect(unsorted.match(Array("zz".utf8), expected: 3) == .unlisted)
        #expect(unsorted.match(Array("".utf8), expected: 3) == .unlisted)
    }

    @Test("Extra provenance fields are kept but do not enter the package ID")
    func extraProvenance() {
        var provenance = sampleProvenance
        let blobs = [BlobDescriptor(path: "a", size: 1, sha256: String(repeating: "0", count: 64))]
        let plain = PackageID.compute(provenance: provenance, blobs: blobs)
        provenance.extra = ["robot_serial": "CN-0042"]
        #expect(PackageID.compute(provenance: provenance, blobs: blobs) == plain)
        #expect(provenance.problem() == nil)
        provenance.extra = ["environment_id": "x"]
        #expect(provenance.problem()?.code == .manifestField)
    }
}
