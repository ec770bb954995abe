import Testing
@testable import ContinuonPack
import ContinuonPackIngest

/// The ingestion service's request parsing and chunk arithmetic (ContinuonPackIngest): every number a client sends
/// is digits only and checked, every name is `<64 hex>.cpkg` or refused, and the size limit holds for bytes held.
@Suite("Ingestion protocol: client text and client numbers")
struct IngestProtocolTests {
    static let name = "c7d7adb8f983eaba86ec4a57ed08fb22dfc98deb08e20a7d066ea9b8c619e267.cpkg"
    static let mib: UInt64 = 1 << 20
    static let chunk = ChunkPlan.granularity

    // MARK: - Numbers

    @Test("Decimal numbers: digits only, at most 20, and no overflow", arguments: [
        ("0", UInt64(0)), ("007", 7), ("18446744073709551615", .max),
    ])
    func decimals(_ text: String, _ value: UInt64) {
        #expect(StrictDecimal.parse(text) == value)
    }

    @Test("What Swift's own parsers accept and clients must not send", arguments: [
        "", "+0", "-0", " 1", "1 ", "0x10", "1e3", "18446744073709551616", "99999999999999999999", "000000000000000000001", "١",
    ])
    func notDecimals(_ text: String) {
        #expect(StrictDecimal.parse(text) == nil)
    }

    // MARK: - Content-Range

    @Test("Content-Range forms of the resumable protocol")
    func contentRanges() throws {
        #expect(try ContentRange(header: nil) == ContentRange())
        #expect(try ContentRange(header: "bytes 0-262143/*") == ContentRange(first: 0, last: 262_143))
        #expect(try ContentRange(header: "bytes 5-9/10") == ContentRange(first: 5, last: 9, total: 10))
        #expect(try ContentRange(header: "bytes */10") == ContentRange(total: 10))
        #expect(try ContentRange(header: "bytes */*") == ContentRange())
        #expect(try ContentRange(header: " bytes 0-0/1\t") == ContentRange(first: 0, last: 0, total: 1))
        #expect(ContentRange(first: 0, last: .max).length == nil)
        #expect(ContentRange(first: 1, last: .max).length == .max)
    }

    @Test("Malformed Content-Range is 400 upload.range_invalid", arguments: [
        "bytes +0-+9/10", "bytes 0-9/+10", "bytes 9-0/10", "bytes 0-10/10", "bytes 0-9", "bytes -9/10", "bytes 0-/10",
        "bytes 0-9/10/11", "items 0-9/10", "bytes=0-9/10", "bytes  0-9/10", "bytes 0-9 /10", "bytes 0x0-9/10",
        "bytes 0-18446744073709551616/*", "bytes 0--1/*", "bytes */", "bytes", "",
    ])
    func malformedRanges(_ header: String) {
        #expect(throws: IngestProblem.self) { try ContentRange(header: header) }
        do {
            _ = try ContentRange(header: header)
        } catch {
            #expect(error.status == 400 && error.code == "upload.range_invalid")
        }
    }

    // MARK: - Chunk plans

    func plan(held: UInt64, total: UInt64? = nil, max: UInt64 = mib, _ header: String?, length: UInt64? = nil) throws(IngestProblem) -> ChunkPlan {
        try ChunkPlan(held: held, knownTotal: total, maxBytes: max, range: try ContentRange(header: header), contentLength: length)
    }

    func problem(_ body: () throws(IngestProblem) -> ChunkPlan) -> IngestProblem? {
        do {
            _ = try body()
            return nil
        } catch {
            return error
        }
    }

    @Test("Appending, repeats and gaps: the plan keeps exactly the new bytes")
    func plans() throws {
        #expect(try plan(held: 0, "bytes 0-262143/*").action == .append(skip: 0, take: Self.chunk))
        // A repeat of bytes already held, then one that overlaps the end.
        #expect(try plan(held: 2 * Self.chunk, "bytes 0-262143/*").action == .discard(length: Self.chunk))
        #expect(try plan(held: Self.chunk + 10, "bytes 262144-524287/*").action == .append(skip: 10, take: Self.chunk - 10))
        // A gap: nothing is kept.
        #expect(try plan(held: 0, "bytes 262144-524287/*").action == .discard(length: Self.chunk))
        // The last chunk may be short; the total is learnt from it.
        let last = try plan(held: Self.chunk, "bytes 262144-262200/262201")
        #expect(last.action == .append(skip: 0, take: 57) && last.total == 262_201)
        #expect(try plan(held: 3, total: 10, nil).action == .statusQuery)
    }

    @Test("The size limit holds for bytes held, whether or not a total was declared (finding 5)")
    func sizeLimit() {
        // 1 MiB limit, nothing declared: the fifth 256 KiB chunk is refused, and the refusal ends the session.
        let refusal = problem { () throws(IngestProblem) in try plan(held: 4 * Self.chunk, "bytes 1048576-1310719/*") }
        #expect(refusal?.status == 413 && refusal?.code == "upload.too_large")
        #expect(refusal?.endsSession == true && refusal?.closesConnection == true)
        #expect(problem { () throws(IngestProblem) in try plan(held: 0, "bytes */1048577") }?.status == 413)
        #expect(problem { () throws(IngestProblem) in try plan(held: 3 * Self.chunk, "bytes 786432-1048575/*") } == nil)
    }

    @Test("Client numbers never trap (finding 2): the whole UInt64 range, and resends longer than what they repeat")
    func overflow() {
        let huge = problem { () throws(IngestProblem) in try plan(held: 0, max: .max, "bytes 0-18446744073709551615/*") }
        #expect(huge?.status == 413)
        #expect(problem { () throws(IngestProblem) in try plan(held: 0, "bytes 0-18446744073709551615/*") }?.status == 413)
        // Holding 512 KiB, a resend of the first chunk whose body is 512 KiB: the lengths disagree.
        let resend = problem { () throws(IngestProblem) in
            try plan(held: 2 * Self.chunk, "bytes 0-262143/*", length: 2 * Self.chunk)
        }
        #expect(resend?.status == 400 && resend?.closesConnection == true)
    }

    @Test("Totals that contradict the session are refused (finding 9)")
    func totals() {
        let smaller = problem { () throws(IngestProblem) in try plan(held: 2 * Self.chunk, "bytes */100") }
        #expect(smaller?.code == "upload.range_invalid" && smaller?.endsSession == false)
        #expect(problem { () throws(IngestProblem) in try plan(held: 0, total: 10, "bytes */11") }?.status == 400)
        #expect(problem { () throws(IngestProblem) in try plan(held: 0, total: 10, "bytes 0-10/*") }?.status == 400)
        #expect(problem { () throws(IngestProblem) in try plan(held: 0, "bytes 0-999/*") }?.code == "upload.chunk_size_invalid")
        #expect(problem { () throws(IngestProblem) in try plan(held: 0, nil, length: 5) }?.closesConnection == true)
    }

    @Test("The body split: dropped, written and excess bytes add up, whatever the buffer sizes")
    func receiver() {
        for sizes in [[1], [7, 1, 100], [3, 3, 3, 3], [1000], [0, 5, 0, 5]] {
            var receiver = ChunkReceiver(skip: 4, take: 6)
            var written = 0, excess = 0, dropped = 0
            for size in sizes {
                let split = receiver.accept(count: size)
                #expect(split.drop + split.write + split.excess == size)
                dropped += split.drop
                written += split.write
                excess += split.excess
            }
            let total = sizes.reduce(0, +)
            #expect(dropped == min(4, total) && written == min(6, max(0, total - 4)) && excess == max(0, total - 10))
            #expect(receiver.isComplete == (total >= 10))
        }
    }

    // MARK: - Names, queries, metadata, hosts

    @Test("Only <64 hex>.cpkg names exist (finding 1)", arguments: [
        "..%2FK.pem", "..%2F..%2F..%2F..%2Fetc%2Fhostname", "%2Fproc%2Fself%2Fenviron", "%2Fetc%2Fpasswd",
        String(repeating: "a", count: 64) + ".cpkg%00", String(repeating: "A", count: 64) + ".cpkg",
        String(repeating: "a", count: 63) + ".cpkg", String(repeating: "a", count: 64) + ".cpkg.json",
        "%2E%2E", "%", "%2", "%zz", String(repeating: "a", count: 64) + "%2Ecpk", "",
    ])
    func badNames(_ segment: String) {
        #expect(PackageObjectName(percentEncoded: segment) == nil)
    }

    @Test("Valid names, percent-encoded or not")
    func goodNames() {
        #expect(PackageObjectName(Self.name)?.packageID == String(Self.name.prefix(64)))
        #expect(PackageObjectName(percentEncoded: Self.name.replacingOccurrences(".", "%2E"))?.text == Self.name)
    }

    @Test("Query strings: known parameters once each, strict percent-decoding")
    func queries() throws {
        let query = try UploadQuery(rawQuery: "uploadType=resumable&name=\(Self.name)&ifGenerationMatch=0&fields=x&fields=y")
        #expect(query.uploadType == "resumable" && query.name == Self.name && query.ifGenerationMatch == "0")
        #expect(try UploadQuery(rawQuery: "upload_id=a%62c").uploadID == "abc")
        for bad in ["upload_id=a&upload_id=b", "name=%zz", "name=%FF", "alt=media&alt=json",
                    Array(repeating: "x=1", count: 65).joined(separator: "&")] {
            #expect(throws: IngestProblem.self) { try UploadQuery(rawQuery: bad) }
        }
    }

    @Test("Initiation metadata: a JSON object of at most 64 KiB; digests of the right shape")
    func metadata() throws {
        #expect(try UploadMetadata(json: []) == UploadMetadata())
        let parsed = try UploadMetadata(json: Array(#"{"name":"n","md5Hash":"1B2M2Y8AsgTpgAmY7PhCfg==","crc32c":"AAAAAA==","x":[1]}"#.utf8))
        #expect(parsed.name == "n" && parsed.md5Hash == "1B2M2Y8AsgTpgAmY7PhCfg==" && parsed.crc32c == "AAAAAA==")
        let large = Array(#"{"x":""#.utf8) + [UInt8](repeating: 0x61, count: 100_000) + Array(#""}"#.utf8)
        #expect(throws: UploadMetadata.tooLarge) { try UploadMetadata(json: large) }
        for bad in [#"[1]"#, #"{"name":1}"#, #"{"a":1,"a":2}"#, #"{"md5Hash":"short"}"#, "{", #"{"crc32c":"AAAA AA="}"#] {
            #expect(throws: IngestProblem.self) { try UploadMetadata(json: Array(bad.utf8)) }
        }
        #expect(throws: IngestProblem.self) {
            try uploadObjectName(query: try UploadQuery(rawQuery: "name=" + Self.name), metadata: UploadMetadata(name: "other"))
        }
        #expect(throws: IngestProblem.self) { try uploadObjectName(query: UploadQuery(rawQuery: nil), metadata: UploadMetadata()) }
    }

    @Test("Host headers that may become a Location", arguments: [
        ("127.0.0.1:8080", true), ("ingest.example.com", true), ("[::1]:443", true), ("a-b.c", true),
        ("evil host/?#", false), ("a:0", false), ("a:65536", false), ("a:+80", false), ("-a", false), ("", false),
        ("[::1", false), ("[]:80", false), ("a\r\nX: y", false), (String(repeating: "a", count: 256), false),
    ])
    func hosts(_ host: String, _ valid: Bool) {
        #expect(HostAuthority.isValid(host) == valid)
    }

    // MARK: - Fail fast

    @Test("failFast: an untrusted signer's package is judged from its envelope; nothing of the archive is read")
    func failFast() throws {
        let bytes = try readBytes(Repo.path("TestVectors/valid/package-zstd.cpkg"))
        let other = try Ed25519PublicKey(pemRepresentation: try readBytes(Repo.secondPublicKey))
        var verifier = PackageVerifier(trustedKeys: [other])
        let full = verifier.verify(bytes: bytes)
        #expect(full.failures.map(\.code) == [.signatureUntrusted] && full.outcomes[.blobs] == .held)
        verifier.failFast = true
        let fast = verifier.verify(bytes: bytes)
        #expect(!fast.valid && fast.failures.map(\.code) == [.signatureUntrusted])
        #expect(fast.outcomes[.archive] == .notChecked && fast.outcomes[.blobs] == .notChecked)
        // A trusted package is verified completely either way.
        let trusted = PackageVerifier(trustedKeys: [try Ed25519PublicKey(pemRepresentation: try readBytes(Repo.testPublicKey))])
        var trustedFast = trusted
        trustedFast.failFast = true
        #expect(trusted.verify(bytes: bytes).valid && trustedFast.verify(bytes: bytes).valid)
    }
}

private extension String {
    func replacingOccurrences(_ target: String, _ replacement: String) -> String {
        split(separator: Character(target), omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
