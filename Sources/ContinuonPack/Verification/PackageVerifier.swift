#if canImport(Glibc)
import Glibc
#endif

/// Verifies `.cpkg` packages against a set of trusted Ed25519 keys, streaming, without extracting anything.
///
/// Every check of `docs/signed-ingestion.md` runs: package structure, envelope shape and payload type, signatures
/// by trusted keys (with a threshold), manifest schema and values, package ID recomputed, episode archive size and
/// digest, and every blob's path, type, metadata, size and digest, in manifest order.
public struct PackageVerifier: Sendable {
    /// Which keys count, for which environments and times (spec section 14).
    public var policy: TrustPolicy
    /// How many distinct keys must count; nil means the policy's threshold.
    public var threshold: Int?
    public var limits: PackageLimits
    /// Read buffer size.
    public var bufferSize = 1 << 20
    /// Hash the episode archive on a second thread (faster; one extra thread and about 6 MiB per verification).
    public var parallelHashing = true
    /// Stop as soon as the envelope, a signature or the manifest failed, before a byte of the episode archive is
    /// read or decompressed. The ingestion service sets it: an unsigned or untrusted package then costs nothing
    /// more than its envelope, whatever its archive expands to. The report lists the failures found so far; the
    /// verdict is the same (invalid).
    public var failFast = false
    /// Advanced by the bytes read from a file (`verify(path:)`), for a progress display.
    public var progress: ByteProgress?
    /// Also check the framing of every TFRecord blob (`*.tfrecord`, `*.tfrecord-NNNNN-of-NNNNN`), record by record:
    /// a broken one fails the `blobs` check with `promote.tfrecord_corrupt`. Not part of the format's verdict
    /// unless asked for (`verify --check-tfrecord`, promotion).
    public var checkTFRecords = false
    /// Checked before each read (the async `verify(path:)` sets it from the task's cancellation).
    var cancellation: CancellationFlag?

    /// A verifier that trusts `trustedKeys` for every environment: the policy of spec section 14 they make.
    public init(trustedKeys: [Ed25519PublicKey], threshold: Int = 1, limits: PackageLimits = .default) {
        self.init(policy: TrustPolicy(trustedKeys: trustedKeys, threshold: threshold), limits: limits)
    }

    /// A verifier that judges signatures by `policy`; `threshold`, when given, overrides the policy's.
    public init(policy: TrustPolicy, threshold: Int? = nil, limits: PackageLimits = .default) {
        self.policy = policy
        self.threshold = threshold
        self.limits = limits
    }

    /// The number of distinct keys that must count.
    public var effectiveThreshold: Int { max(1, threshold ?? policy.threshold) }

    /// Verifies the package at `path`.
    /// - Returns: the report; `report.valid` is the verdict.
    /// - Throws: `io.error` only, when the file cannot be opened or read.
    public func verify(path: String) throws -> VerificationReport {
        try verify(path: path, sink: nil)
    }

    /// Verifies the package at `path` and hands each listed blob's bytes to `sink` in the same single pass (see
    /// `BlobSink`): the report says afterwards whether they may be used.
    /// - Throws: `io.error` when the file cannot be read, or whatever `sink` throws.
    public func verify(path: String, sink: (any BlobSink)?) throws -> VerificationReport {
        let file = try FileDescriptor.openForReading(path)
        return try verify(source: FileByteSource(file: file, progress: progress, cancellation: cancellation), name: path, sink: sink)
    }

    /// Verifies a package read from `stream` as it arrives (the ingestion service verifies uploads while they are
    /// received). `name` only labels the report.
    /// - Throws: whatever `stream` throws (I/O); a bad package is reported, not thrown.
    public func verify(stream: any PackageStream, name: String, sink: (any BlobSink)? = nil) throws -> VerificationReport {
        try verify(source: StreamByteSource(stream: stream), name: name, sink: sink)
    }

    /// Verifies a package held in memory (small packages, fuzzing). `name` only labels the report.
    public func verify(bytes: [UInt8], name: String = "<memory>") -> VerificationReport {
        // A memory source cannot fail with an I/O error, and nothing else throws.
        (try? verify(source: MemoryByteSource(bytes), name: name, sink: nil)) ?? VerificationReport(path: name)
    }

    func verify(source: any ArchiveByteSource, name: String, sink: (any BlobSink)?) throws -> VerificationReport {
        try withUTF8Locale {
            var run = VerificationRun(verifier: self, report: VerificationReport(path: name), sink: sink)
            try run.verify(source: source)
            return run.report
        }
    }
}

/// A source of package bytes for `PackageVerifier.verify(stream:name:)`.
public protocol PackageStream: AnyObject {
    /// Fills `buffer` with the next bytes (blocking until some are available); returns 0 at the end.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
}

final class StreamByteSource: ArchiveByteSource {
    let stream: any PackageStream
    init(stream: any PackageStream) { self.stream = stream }
    func readChunk(scratch: UnsafeMutableRawBufferPointer) throws -> UnsafeRawBufferPointer {
        scratch.prefix(filled: try stream.read(into: scratch))
    }
}

/// Hands bytes from `upstream` to a libarchive reader while a `TarAuditor` checks the same bytes, optionally
/// hashing and capping them.
final class AuditedSource: ArchiveByteSource {
    let upstream: any ArchiveByteSource
    var auditor = TarAuditor()
    let hasher: SHA256Hasher?
    /// CRC-32 of everything delivered, when asked for (gzip's trailer check).
    var crc32: CRC32?
    /// Most bytes this source will deliver before it fails with `limitError`.
    let cap: UInt64
    let limitError: ContinuonPackError?
    private(set) var byteCount: UInt64 = 0
    private(set) var ended = false
    /// Bytes the upstream gave beyond the cap, not delivered (they only decide whether the cap was exceeded).
    private var beyondCap = UnsafeRawBufferPointer(start: nil, count: 0)

    init(upstream: any ArchiveByteSource, hashing: Bool = false, cap: UInt64 = .max, limitError: ContinuonPackError? = nil) {
        self.upstream = upstream
        self.hasher = hashing ? SHA256Hasher() : nil
        self.cap = cap
        self.limitError = limitError
    }

    /// Delivers at most `cap` bytes in all, exactly: the auditor sees every byte up to the cap, whatever the chunk
    /// sizes, and the read after the cap fails with `limitError` unless the upstream ended there.
    func readChunk(scratch: UnsafeMutableRawBufferPointer) throws -> UnsafeRawBufferPointer {
        var chunk = beyondCap.isEmpty ? try upstream.readChunk(scratch: scratch) : beyondCap
        beyondCap = UnsafeRawBufferPointer(start: nil, count: 0)
        let room = cap - byteCount
        if UInt64(chunk.count) > room {
            // Past the cap only the end of the stream is acceptable.
            if room == 0, let limitError { throw limitError }
            beyondCap = UnsafeRawBufferPointer(rebasing: chunk[Int(room)...])
            chunk = UnsafeRawBufferPointer(rebasing: chunk[0..<Int(room)])
        }
        if chunk.isEmpty {
            if !ended { auditor.finish() }
            ended = true
            return chunk
        }
        byteCount += UInt64(chunk.count)
        hasher?.update(chunk)
        crc32?.update(chunk)
        auditor.feed(chunk)
        return chunk
    }

    /// Reads whatever the archive reader left, so the auditor (and hasher) see the whole stream. Stops early once
    /// the auditor found a violation and nothing more needs hashing.
    func drain(using buffer: UnsafeMutableRawBufferPointer) throws {
        while !ended {
            if auditor.violation != nil && hasher == nil { return }
            _ = try readChunk(scratch: buffer)
        }
    }
}

/// The bytes of the outer package's current member, counted, and hashed on the pipeline's thread (the archive
/// digest) while the blobs are hashed on this one.
private final class MemberByteSource: ArchiveByteSource {
    let outer: ArchiveReader
    let pipeline: HashPipeline?
    let stream = HashPipeline.Stream()
    let inlineHasher = SHA256Hasher()
    private(set) var byteCount: UInt64 = 0
    private(set) var ended = false
    /// Set when the outer package failed (damaged or truncated) while this member was read.
    private(set) var outerFailure: (any Error)?
    /// The last eight bytes read (a gzip member's trailer).
    private(set) var tail: [UInt8] = []

    init(outer: ArchiveReader, pipeline: HashPipeline?) {
        self.outer = outer
        self.pipeline = pipeline
    }

    /// The member's SHA-256; call once, after the member was read to its end.
    func digest() -> SHA256Digest {
        guard let pipeline else { return inlineHasher.finalize() }
        pipeline.finish(stream)
        pipeline.drain()
        return stream.digest
    }

    /// Lends the member's next bytes from the outer reader's buffers (no copy; `scratch` is not used).
    func readChunk(scratch: UnsafeMutableRawBufferPointer) throws -> UnsafeRawBufferPointer {
        if let outerFailure { throw outerFailure }
        let chunk: UnsafeRawBufferPointer
        do {
            chunk = try outer.readBlock()
        } catch {
            outerFailure = error
            throw error
        }
        if chunk.isEmpty { ended = true }
        if let pipeline { pipeline.update(stream, chunk) } else { inlineHasher.update(chunk) }
        byteCount += UInt64(chunk.count)
        if chunk.count >= 8 { tail = Array(chunk.suffix(8)) } else { tail = Array((tail + chunk).suffix(8)) }
        return chunk
    }

    func drain(using buffer: UnsafeMutableRawBufferPointer) throws {
        while !ended { _ = try readChunk(scratch: buffer) }
    }
}

/// The decompressed bytes of a gzip or zstd stream, through libarchive's raw format.
private final class DecompressedSource: ArchiveByteSource {
    let reader: ArchiveReader
    let compression: Compression
    private var started = false

    init(compressed: any ArchiveByteSource, compression: Compression) throws {
        self.compression = compression
        reader = try ArchiveReader(source: compressed, format: .raw, compression: compression)
    }

    /// Lends the next decompressed bytes from libarchive's buffer (`scratch` is not used).
    func readChunk(scratch: UnsafeMutableRawBufferPointer) throws -> UnsafeRawBufferPointer {
        if !started {
            started = true
            guard case .entry = try reader.next() else { return UnsafeRawBufferPointer(start: nil, count: 0) }
            // libarchive passes data it does not recognize through unchanged: insist on the declared filter.
            guard reader.filterMatches(compression) else {
                throw ContinuonPackError(.archiveCorrupt, "The episode archive is not a \(compression.rawValue) stream.")
            }
        }
        return try reader.readBlock()
    }
}

struct VerificationRun {
    let verifier: PackageVerifier
    var report: VerificationReport
    /// Receives each listed blob's bytes as they are checked (`verify(path:sink:)`).
    var sink: (any BlobSink)?
    /// At most this many blob failures are listed one by one.
    let maxListed = 20
    /// The layers whose auditor violation was reported (each is reported once, wherever it is noticed).
    var reportedViolations: Set<Layer> = []

    static let envelopeName = "manifest.dsse.json"

    /// The two tar layers map the auditor's findings to their own codes.
    enum Layer {
        case package
        case archive

        func code(for violation: TarAuditor.Violation) -> (ContinuonPackError.Code, String) {
            switch (self, violation) {
            case let (.package, .corrupt(text)), let (.package, .truncated(text)): return (.packageCorrupt, text)
            case let (.package, .memberType(text)): return (.packageMemberType, "a member is " + text)
            case let (.package, .metadata(text)): return (.packageMetadata, text)
            case let (.package, .trailingData(text)): return (.packageTrailingData, text)
            case let (.archive, .corrupt(text)), let (.archive, .truncated(text)): return (.archiveCorrupt, text)
            case let (.archive, .memberType(text)): return (.blobType, "a member is " + text)
            case let (.archive, .metadata(text)): return (.blobMetadata, text)
            case let (.archive, .trailingData(text)): return (.archiveTrailingData, text)
            }
        }

        var check: VerificationReport.Check { self == .package ? .structure : .blobs }
        var what: String { self == .package ? "The package tar" : "The episode archive tar" }
    }

    /// Records the auditor's violation, if any; returns true when there was one.
    mutating func reportViolation(_ auditor: TarAuditor, layer: Layer) -> Bool {
        guard let violation = auditor.violation else { return false }
        guard reportedViolations.insert(layer).inserted else { return true }
        let (code, text) = layer.code(for: violation)
        let check: VerificationReport.Check = code == .archiveCorrupt || code == .archiveTrailingData ? .archive : layer.check
        report.fail(check, ContinuonPackError(code, "\(layer.what) breaks the format: \(text)."))
        return true
    }

    /// libarchive and the auditor must have read the same member: the same size, and the same path bytes (or, as
    /// libarchive normalizes pax paths to NFC, canonically equivalent UTF-8). Returns the auditor's member, whose
    /// raw path bytes are the ones checked against the manifest. Members the auditor read before a violation are
    /// bound first: a violation further on in the same read must not hide the checks of the members before it
    /// (the verdict would then depend on how many bytes one read returned). The violation is reported when the
    /// member it stopped at is reached.
    mutating func bind(_ info: ArchiveEntryInfo, auditor: inout TarAuditor, layer: Layer) -> TarAuditor.Member? {
        let taken = auditor.takeMember()
        if taken == nil && reportViolation(auditor, layer: layer) { return nil }
        guard let member = taken,
              FormatRules.pathProblem(member.path) != nil
                || (Int64(member.size) == info.size ?? -1 && Self.samePath(member.path, info.pathBytes))
        else {
            let (code, _) = layer.code(for: .corrupt(""))
            report.fail(layer == .package ? .structure : .archive, ContinuonPackError(
                code, "\(layer.what) is read differently by a strict parser and by libarchive (smuggling attempt or damage)."))
            return nil
        }
        return member
    }

    private static func samePath(_ strict: [UInt8], _ libarchive: [UInt8]) -> Bool {
        if strict == libarchive { return true }
        guard let a = String(validating: strict, as: UTF8.self), let b = String(validating: libarchive, as: UTF8.self)
        else { return false }
        return a == b // Swift compares strings by canonical equivalence
    }

    mutating func verify(source upstream: any ArchiveByteSource) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: verifier.bufferSize, alignment: 4096)
        defer { buffer.deallocate() }
        let source = AuditedSource(upstream: upstream)
        let outer: ArchiveReader
        do {
            outer = try ArchiveReader(source: source, compression: .none)
        } catch let error as ContinuonPackError where error.code == .ioError {
            throw error
        } catch {
            report.fail(.structure, ContinuonPackError(.packageNotTar, "The file is not a tar archive.", cause: "\(error)"))
            return
        }
        guard try verifyMembers(outer, source: source, buffer: buffer) else { return }
        do {
            try source.drain(using: buffer)
        } catch let error as ContinuonPackError where error.code == .ioError {
            throw error
        }
        if !reportViolation(source.auditor, layer: .package) { report.hold(.structure) }
    }

    /// Reads the two members; false when the structure is broken (already reported).
    /// - Throws: `io.error` when the file cannot be read (never reported as damage).
    private mutating func verifyMembers(_ outer: ArchiveReader, source: AuditedSource, buffer: UnsafeMutableRawBufferPointer) throws -> Bool {
        do {
            // Member 1: the envelope.
            guard case let .entry(first) = try outer.next() else {
                if !reportViolation(source.auditor, layer: .package) {
                    report.fail(.structure, ContinuonPackError(.packageMemberCount, "The package holds no members."))
                }
                return false
            }
            guard bind(first, auditor: &source.auditor, layer: .package) != nil,
                  let envelopeBytes = try readEnvelopeMember(first, outer)
            else { return false }
            let manifest = checkEnvelopeAndManifest(consume envelopeBytes)
            if verifier.failFast && !report.failures.isEmpty { return false }

            // Member 2: the episode archive.
            guard case let .entry(second) = try outer.next() else {
                if !reportViolation(source.auditor, layer: .package) {
                    report.fail(.structure, ContinuonPackError(
                        .packageMemberCount, "The package ends after the envelope; the episode archive is missing."))
                }
                return false
            }
            guard bind(second, auditor: &source.auditor, layer: .package) != nil else { return false }
            guard try checkArchiveMember(second, outer: outer, manifest: manifest, buffer: buffer) else { return false }

            // Nothing after member 2.
            if case let .entry(third) = try outer.next() {
                if !reportViolation(source.auditor, layer: .package) {
                    report.fail(.structure, ContinuonPackError(
                        .packageMemberCount,
                        "The package has a third member \(quoted(String(decoding: third.pathBytes, as: UTF8.self))); it must hold exactly two."))
                }
                return false
            }
            return true
        } catch let error as ContinuonPackError where error.code == .ioError {
            throw error
        } catch {
            if !reportViolation(source.auditor, layer: .package) {
                report.fail(.structure, ContinuonPackError(.packageCorrupt, "The package tar is damaged or truncated.", cause: "\(error)"))
            }
            return false
        }
    }

    // MARK: - Envelope and manifest

    private mutating func readEnvelopeMember(_ first: ArchiveEntryInfo, _ outer: ArchiveReader) throws -> [UInt8]? {
        let name = String(decoding: first.pathBytes, as: UTF8.self)
        guard first.pathBytes.elementsEqual(Self.envelopeName.utf8) else {
            let detail = Compression(archiveName: name) != nil ? " (the members are swapped)" : ""
            report.fail(.structure, ContinuonPackError(
                .packageMemberName, "The first member is \(quoted(name)), not \(Self.envelopeName)\(detail)."))
            return nil
        }
        guard first.isRegularFile else {
            report.fail(.structure, ContinuonPackError(.packageMemberType, "\(Self.envelopeName) is not a regular file."))
            return nil
        }
        guard let size = first.size, size <= Int64(verifier.limits.maxEnvelopeBytes) else {
            report.fail(.envelope, ContinuonPackError(
                .envelopeTooLarge, "\(Self.envelopeName) is larger than the limit of \(verifier.limits.maxEnvelopeBytes) bytes."))
            return nil
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Int(size))
        do {
            while true {
                let block = try outer.readBlock()
                if block.isEmpty { break }
                bytes.append(contentsOf: block)
            }
        } catch let error as ContinuonPackError where error.code == .ioError {
            throw error
        } catch {
            report.fail(.structure, ContinuonPackError(.packageCorrupt, "\(Self.envelopeName) is truncated.", cause: "\(error)"))
            return nil
        }
        guard bytes.count == size else {
            report.fail(.structure, ContinuonPackError(.packageCorrupt, "\(Self.envelopeName) is truncated."))
            return nil
        }
        return bytes
    }

    /// Checks the envelope, its signatures under the trust policy, and the manifest it carries. Each large buffer
    /// (the envelope's bytes, then its payload) is let go as soon as the next form is decoded, so that they are
    /// never all held at once. The policy's rules need the manifest's environment and time, so the manifest is
    /// decoded first; the signature check is still reported before it (spec section 7).
    private mutating func checkEnvelopeAndManifest(_ bytes: consuming [UInt8]) -> Manifest? {
        guard let envelope = checkEnvelope(consume bytes) else { return nil }
        let evidence = envelope.signatures.isEmpty ? [] : verifier.policy.evidence(for: envelope)
        let decoded = Self.decodeManifest(consume envelope, limits: verifier.limits)
        let manifest = try? decoded.get()
        let judgement = verifier.policy.judge(evidence, environmentID: manifest?.provenance.environmentID,
                                              createdAt: manifest?.createdAt, threshold: verifier.effectiveThreshold)
        report.signatures = judgement.signatures
        report.verifiedKeyIDs = judgement.countedKeyIDs
        for failure in judgement.failures { report.fail(.signature, failure) }
        report.hold(.signature)
        guard let manifest else {
            if case let .failure(error) = decoded { report.fail(.manifest, error) }
            return nil
        }
        report.manifest = manifest
        report.packageID = manifest.packageID
        for problem in manifest.problems(limits: verifier.limits) {
            report.fail(problem.code == .packageIDMismatch ? .packageID : .manifest, problem)
        }
        report.hold(.manifest)
        report.hold(.packageID)
        return manifest
    }

    /// Decodes the manifest the envelope carries; the envelope (and so its payload) is let go on return.
    private static func decodeManifest(_ envelope: consuming Envelope, limits: PackageLimits) -> Result<Manifest, ContinuonPackError> {
        Result { () throws(ContinuonPackError) -> Manifest in try Manifest.decode(envelope.payload, limits: limits) }
    }

    /// Decodes the envelope and checks its payload type; nil when the envelope cannot be decoded.
    private mutating func checkEnvelope(_ bytes: consuming [UInt8]) -> Envelope? {
        let envelope: Envelope
        do {
            envelope = try Envelope.decode(consume bytes, limits: verifier.limits)
        } catch {
            report.fail(.envelope, error)
            return nil
        }
        if envelope.payloadType != Envelope.payloadType {
            report.fail(.envelope, ContinuonPackError(
                .envelopePayloadType, "The payload type is \(quoted(envelope.payloadType)), not \(Envelope.payloadType)."))
        }
        report.hold(.envelope)
        return envelope
    }

    // MARK: - Episode archive

    /// Checks member 2 and the blobs in it; false when the outer structure broke while reading it.
    private mutating func checkArchiveMember(
        _ info: ArchiveEntryInfo, outer: ArchiveReader, manifest: Manifest?, buffer: UnsafeMutableRawBufferPointer
    ) throws -> Bool {
        let name = String(decoding: info.pathBytes, as: UTF8.self)
        guard let compression = Compression(archiveName: name) else {
            report.fail(.structure, ContinuonPackError(
                .packageMemberName, "The second member is \(quoted(name)), not episodes.tar, episodes.tar.gz or episodes.tar.zst."))
            return false
        }
        guard info.isRegularFile, let memberSize = info.size else {
            report.fail(.structure, ContinuonPackError(.packageMemberType, "\(name) is not a regular file."))
            return false
        }
        if let manifest {
            if manifest.archive.name != name {
                report.fail(.archive, ContinuonPackError(
                    .archiveName, "The package holds \(name) but the manifest names \(quoted(manifest.archive.name))."))
            }
            if manifest.archive.size != UInt64(memberSize) {
                report.fail(.archive, ContinuonPackError(
                    .archiveSize, "\(name) is \(memberSize) bytes; the manifest says \(manifest.archive.size)."))
            }
        }
        let pipeline = verifier.parallelHashing ? HashPipeline() : nil
        defer { pipeline?.close() }
        let member = MemberByteSource(outer: outer, pipeline: pipeline)
        if let manifest {
            try checkEpisodeArchive(member, compression: compression, manifest: manifest, buffer: buffer)
        }
        do {
            try member.drain(using: buffer)
        } catch let error as ContinuonPackError where error.code == .ioError {
            throw error
        } catch {
            report.fail(.structure, ContinuonPackError(.packageCorrupt, "\(name) is truncated or damaged.", cause: "\(error)"))
            return false
        }
        guard member.byteCount == UInt64(memberSize) else {
            report.fail(.structure, ContinuonPackError(.packageCorrupt, "\(name) is truncated."))
            return false
        }
        if let manifest {
            let digest = member.digest().hex
            if digest != manifest.archive.sha256 {
                report.fail(.archive, ContinuonPackError(
                    .archiveDigest, "The SHA-256 of \(name) is \(digest); the manifest says \(manifest.archive.sha256)."))
            }
            report.hold(.archive)
        }
        return true
    }

    /// Decompresses (if needed) and walks the episode archive, checking every blob against the manifest.
    private mutating func checkEpisodeArchive(
        _ member: MemberByteSource, compression: Compression, manifest: Manifest, buffer: UnsafeMutableRawBufferPointer
    ) throws {
        // A decompression bomb stops here: the tar can be no longer than the blobs plus per-member overhead.
        let perBlobOverhead: UInt64 = 3584
        let declared = manifest.blobs.reduce(UInt64(0)) { $0 &+ $1.size }
        let cap = declared &+ perBlobOverhead &* UInt64(manifest.blobs.count) &+ 1024 &+ TarAuditor.maxTrailerBytes
        let limitError = ContinuonPackError(
            .archiveLimit, "The episode archive expands beyond the \(cap) bytes its manifest allows (decompression bomb).")
        let decompressed: (any ArchiveByteSource)?
        do {
            decompressed = compression == .none ? member : try DecompressedSource(compressed: member, compression: compression)
        } catch {
            if member.outerFailure == nil {
                report.fail(.archive, ContinuonPackError(
                    .archiveCorrupt, "The episode archive cannot be read as \(compression.rawValue).", cause: "\(error)"))
            }
            return
        }
        let tarBytes = AuditedSource(upstream: decompressed!, cap: cap, limitError: limitError)
        if compression == .gzip { tarBytes.crc32 = CRC32() }
        do {
            let inner = try ArchiveReader(source: tarBytes, compression: .none)
            try checkBlobs(inner, source: tarBytes, manifest: manifest)
            try tarBytes.drain(using: buffer)
            if compression != .none, tarBytes.ended, tarBytes.auditor.violation == nil,
               let raw = (decompressed as? DecompressedSource)?.reader {
                // Everything the decompressor did not consume is data after the compressed stream.
                try member.drain(using: buffer)
                let leftover = member.byteCount - UInt64(min(UInt64(raw.rawBytes), member.byteCount))
                if compression == .gzip, Self.startsSecondGzipMember(leftover: leftover, tail: member.tail) {
                    // A second member that libarchive did not take for one (too short for a whole header).
                    report.fail(.archive, ContinuonPackError(
                        .archiveCorrupt, "Bytes 1f 8b (a second gzip member) follow the first; the archive is exactly one member."))
                } else if leftover > 0 {
                    report.fail(.archive, ContinuonPackError(
                        .archiveTrailingData,
                        "\(leftover) bytes follow the end of the \(compression.rawValue) stream."))
                } else if let crc = tarBytes.crc32, !Self.gzipTrailerMatches(member.tail, crc) {
                    report.fail(.archive, ContinuonPackError(
                        .archiveCorrupt, "The gzip trailer (CRC-32 and length) does not match the decompressed data."))
                }
            }
        } catch let error as ContinuonPackError where error.code == .ioError {
            throw error
        } catch let error as ContinuonPackError where error.code == .archiveLimit {
            report.fail(.archive, error)
            return
        } catch {
            if member.outerFailure == nil && !reportViolation(tarBytes.auditor, layer: .archive) {
                report.fail(.archive, ContinuonPackError(
                    .archiveCorrupt, "The episode archive cannot be read as \(compression.rawValue)-compressed tar.",
                    cause: "\(error)"))
            }
            return
        }
        _ = reportViolation(tarBytes.auditor, layer: .archive)
    }

    /// True when the `leftover` bytes after the first gzip member begin with `1f 8b` (spec section 6: a second
    /// member, `archive.corrupt`). libarchive itself reads a whole second header as a member; shorter ones are left
    /// over, and then they are among the last eight bytes read.
    static func startsSecondGzipMember(leftover: UInt64, tail: [UInt8]) -> Bool {
        guard leftover >= 2, leftover <= UInt64(tail.count) else { return false }
        let start = tail.count - Int(leftover)
        return tail[start] == 0x1f && tail[start + 1] == 0x8b
    }

    /// A gzip member ends with CRC-32 and ISIZE (length mod 2^32), both little-endian.
    static func gzipTrailerMatches(_ tail: [UInt8], _ crc: CRC32) -> Bool {
        guard tail.count == 8 else { return false }
        func word(_ offset: Int) -> UInt32 {
            (0..<4).reduce(UInt32(0)) { $0 | UInt32(tail[offset + $1]) << (8 * $1) }
        }
        return word(0) == crc.value && word(4) == crc.length
    }
}
