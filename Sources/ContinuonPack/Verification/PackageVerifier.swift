/// Verifies `.cpkg` packages against a set of trusted Ed25519 keys, streaming, without extracting anything.
///
/// Every check of `docs/signed-ingestion.md` runs: package structure, envelope shape and payload type, signatures
/// by trusted keys (with a threshold), manifest schema and values, package ID recomputed, episode archive size and
/// digest, and every blob's path, type, metadata, size and digest, in manifest order.
public struct PackageVerifier: Sendable {
    public var trustedKeys: [Ed25519PublicKey]
    /// How many distinct trusted keys must have signed.
    public var threshold: Int
    public var limits: Limits
    /// Read buffer size.
    public var bufferSize = 1 << 20

    public init(trustedKeys: [Ed25519PublicKey], threshold: Int = 1, limits: Limits = .default) {
        self.trustedKeys = trustedKeys
        self.threshold = threshold
        self.limits = limits
    }

    /// Verifies the package at `path`.
    /// - Returns: the report; `report.valid` is the verdict.
    /// - Throws: `io.error` only, when the file cannot be opened or read.
    public func verify(path: String) throws -> VerificationReport {
        let file = try FileDescriptor.openForReading(path)
        return try withUTF8Locale {
            var run = VerificationRun(verifier: self, report: VerificationReport(path: path))
            try run.verify(file: file)
            return run.report
        }
    }
}

/// Feeds the bytes of the outer package's current member to the episode-archive reader, hashing and counting them.
private final class MemberByteSource: ArchiveByteSource {
    let outer: ArchiveReader
    let hasher = SHA256Hasher()
    private(set) var byteCount: UInt64 = 0

    init(outer: ArchiveReader) { self.outer = outer }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let count = try outer.readData(into: buffer)
        hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        byteCount += UInt64(count)
        return count
    }

    /// Reads (and hashes) whatever the archive reader left of the member.
    func drain(using buffer: UnsafeMutableRawBufferPointer) throws {
        while try read(into: buffer) > 0 {}
    }
}

private struct VerificationRun {
    let verifier: PackageVerifier
    var report: VerificationReport
    /// At most this many failures of one kind are listed one by one.
    let maxListed = 20

    static let envelopeName = "manifest.dsse.json"

    mutating func verify(file: FileDescriptor) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: verifier.bufferSize, alignment: 4096)
        defer { buffer.deallocate() }
        let outer: ArchiveReader
        do {
            outer = try ArchiveReader(source: FileByteSource(file: file), compression: .none)
        } catch let error as ContinuonPackError where error.code == .ioError {
            throw error
        } catch {
            report.fail(.structure, ContinuonPackError(.packageNotTar, "The file is not a tar archive.", cause: "\(error)"))
            return
        }

        // Member 1: the envelope.
        guard let envelopeBytes = readEnvelopeMember(outer, buffer: buffer) else { return }
        let manifest = checkEnvelopeAndManifest(envelopeBytes)

        // Member 2: the episode archive.
        let second: ArchiveEntryInfo
        do {
            guard case let .entry(info) = try outer.next() else {
                report.fail(.structure, ContinuonPackError(
                    .packageMemberCount, "The package ends after the envelope; the episode archive is missing."))
                return
            }
            second = info
        } catch {
            report.fail(.structure, packageCorrupt(error))
            return
        }
        try checkArchiveMember(second, outer: outer, manifest: manifest, buffer: buffer)

        // Nothing after member 2.
        do {
            if case let .entry(third) = try outer.next() {
                report.fail(.structure, ContinuonPackError(
                    .packageMemberCount,
                    "The package has a third member \(quoted(String(decoding: third.pathBytes, as: UTF8.self))); it must hold exactly two."))
                return
            }
        } catch {
            report.fail(.structure, packageCorrupt(error))
            return
        }
        report.hold(.structure)
    }

    // MARK: - Envelope and manifest

    private mutating func readEnvelopeMember(_ outer: ArchiveReader, buffer: UnsafeMutableRawBufferPointer) -> [UInt8]? {
        let first: ArchiveEntryInfo
        do {
            guard case let .entry(info) = try outer.next() else {
                report.fail(.structure, ContinuonPackError(.packageMemberCount, "The package holds no members."))
                return nil
            }
            first = info
        } catch {
            report.fail(.structure, ContinuonPackError(
                .packageNotTar, "The file is not a tar archive, or its first header is damaged.", cause: "\(error)"))
            return nil
        }
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
                let count = try outer.readData(into: buffer)
                if count == 0 { break }
                bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
            }
        } catch {
            report.fail(.structure, packageCorrupt(error))
            return nil
        }
        guard bytes.count == size else {
            report.fail(.structure, ContinuonPackError(.packageCorrupt, "\(Self.envelopeName) is truncated."))
            return nil
        }
        return bytes
    }

    private mutating func checkEnvelopeAndManifest(_ bytes: [UInt8]) -> Manifest? {
        let envelope: Envelope
        do {
            envelope = try Envelope.decode(bytes, limits: verifier.limits)
        } catch {
            report.fail(.envelope, error)
            return nil
        }
        if envelope.payloadType != Envelope.payloadType {
            report.fail(.envelope, ContinuonPackError(
                .envelopePayloadType, "The payload type is \(quoted(envelope.payloadType)), not \(Envelope.payloadType)."))
        }
        report.hold(.envelope)
        checkSignatures(envelope)

        let manifest: Manifest
        do {
            manifest = try Manifest.decode(envelope.payload, limits: verifier.limits)
        } catch {
            report.fail(.manifest, error)
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

    private mutating func checkSignatures(_ envelope: Envelope) {
        guard !envelope.signatures.isEmpty else {
            report.fail(.signature, ContinuonPackError(.signatureMissing, "The envelope carries no signature."))
            return
        }
        let pae = envelope.signedBytes
        var verified: [String] = []
        for signature in envelope.signatures {
            let key = verifier.trustedKeys.first { $0.keyID == signature.keyID }
            let ok = key?.isValidSignature(signature.signature, for: pae) ?? false
            report.signatures.append(.init(keyID: signature.keyID, trusted: key != nil, verified: ok))
            if key != nil && !ok {
                report.fail(.signature, ContinuonPackError(
                    .signatureInvalid, "The signature by trusted key \(signature.keyID) does not verify."))
            }
            if ok && !verified.contains(signature.keyID) { verified.append(signature.keyID) }
        }
        report.verifiedKeyIDs = verified
        let threshold = max(1, verifier.threshold)
        if verified.count < threshold {
            if threshold > 1 {
                report.fail(.signature, ContinuonPackError(
                    .signatureThreshold,
                    "\(verified.count) trusted key(s) signed; the threshold is \(threshold) distinct trusted keys."))
            } else if !report.signatures.contains(where: \.trusted) {
                report.fail(.signature, ContinuonPackError(
                    .signatureUntrusted, "No signature is by a trusted key (key IDs: \(envelope.signatures.map(\.keyID).joined(separator: ", ")))."))
            }
        }
        report.hold(.signature)
    }

    // MARK: - Episode archive

    private mutating func checkArchiveMember(
        _ info: ArchiveEntryInfo, outer: ArchiveReader, manifest: Manifest?, buffer: UnsafeMutableRawBufferPointer
    ) throws {
        let name = String(decoding: info.pathBytes, as: UTF8.self)
        guard let compression = Compression(archiveName: name) else {
            report.fail(.structure, ContinuonPackError(
                .packageMemberName, "The second member is \(quoted(name)), not episodes.tar, episodes.tar.gz or episodes.tar.zst."))
            return
        }
        guard info.isRegularFile, let memberSize = info.size else {
            report.fail(.structure, ContinuonPackError(.packageMemberType, "\(name) is not a regular file."))
            return
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
        let source = MemberByteSource(outer: outer)
        do {
            let inner = try ArchiveReader(source: source, compression: compression)
            try checkBlobs(inner, manifest: manifest, buffer: buffer)
        } catch let error as ContinuonPackError where error.code == .ioError {
            throw error
        } catch {
            report.fail(.archive, ContinuonPackError(
                .archiveCorrupt, "The episode archive \(name) cannot be read as \(compression.rawValue)-compressed tar.",
                cause: "\(error)"))
        }
        do {
            try source.drain(using: buffer)
        } catch {
            report.fail(.structure, packageCorrupt(error))
            return
        }
        guard source.byteCount == UInt64(memberSize) else {
            report.fail(.structure, ContinuonPackError(.packageCorrupt, "\(name) is truncated."))
            return
        }
        if let manifest {
            let digest = source.hasher.finalize().hex
            if digest != manifest.archive.sha256 {
                report.fail(.archive, ContinuonPackError(
                    .archiveDigest, "The SHA-256 of \(name) is \(digest); the manifest says \(manifest.archive.sha256)."))
            }
            report.hold(.archive)
        }
    }

    private mutating func checkBlobs(_ inner: ArchiveReader, manifest: Manifest?, buffer: UnsafeMutableRawBufferPointer) throws {
        let blobs = manifest?.blobs ?? []
        var indexByPath: [String: Int] = [:]
        for (index, blob) in blobs.enumerated() where indexByPath[blob.path] == nil { indexByPath[blob.path] = index }
        var seen = [Bool](repeating: false, count: blobs.count)
        var next = 0
        var listed = 0
        func note(_ error: ContinuonPackError) {
            if listed < maxListed { report.fail(.blobs, error) } else { report.outcomes[.blobs] = .failed }
            listed += 1
        }
        while case let .entry(info) = try inner.next() {
            let path = String(decoding: info.pathBytes, as: UTF8.self)
            if let problem = Validation.pathProblem(info.pathBytes) {
                note(ContinuonPackError(.blobPath, "The archive member \(quoted(path)) has an invalid path: \(problem)."))
                continue
            }
            guard info.isRegularFile, !info.isSparse else {
                note(ContinuonPackError(.blobType, "The archive member \(quoted(path)) is not a plain regular file."))
                continue
            }
            if info.hasExtendedAttributes || info.mode != 0o644 || info.mtime != 0 || info.uid != 0 || info.gid != 0
                || !(info.uname ?? "").isEmpty || !(info.gname ?? "").isEmpty
            {
                note(ContinuonPackError(
                    .blobMetadata, "The archive member \(quoted(path)) does not carry the normalized metadata (mode 0644, mtime 0, uid/gid 0, no owner names, no xattrs)."))
            }
            guard manifest != nil else { continue }
            guard let index = indexByPath[path] else {
                note(ContinuonPackError(.blobUnexpected, "The archive member \(quoted(path)) is not in the manifest."))
                continue
            }
            if seen[index] {
                note(ContinuonPackError(.blobDuplicate, "The archive holds \(quoted(path)) more than once."))
                continue
            }
            seen[index] = true
            if index != next {
                note(ContinuonPackError(.blobOrder, "The archive member \(quoted(path)) is out of manifest order."))
            }
            next = index + 1
            let blob = blobs[index]
            let size = info.size ?? -1
            if size != Int64(blob.size) {
                note(ContinuonPackError(.blobSize, "\(quoted(path)) is \(size) bytes; the manifest says \(blob.size)."))
                continue
            }
            let hasher = SHA256Hasher()
            var total: Int64 = 0
            while true {
                let count = try inner.readData(into: buffer)
                if count == 0 { break }
                hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
                total += Int64(count)
            }
            guard total == size else {
                note(ContinuonPackError(.archiveCorrupt, "\(quoted(path)) is truncated in the archive."))
                continue
            }
            let digest = hasher.finalize().hex
            if digest != blob.sha256 {
                note(ContinuonPackError(.blobDigest, "The SHA-256 of \(quoted(path)) is \(digest); the manifest says \(blob.sha256)."))
            }
        }
        for (index, blob) in blobs.enumerated() where !seen[index] {
            note(ContinuonPackError(.blobMissing, "The manifest lists \(quoted(blob.path)) but the archive does not hold it."))
        }
        if listed > maxListed {
            report.failures.append(ContinuonPackError(.blobMissing, "… and \(listed - maxListed) more blob failures."))
        }
        if manifest != nil { report.hold(.blobs) }
    }

    private func packageCorrupt(_ error: any Error) -> ContinuonPackError {
        ContinuonPackError(.packageCorrupt, "The package tar is damaged or truncated.", cause: "\(error)")
    }
}
