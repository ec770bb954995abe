#if canImport(Glibc)
import Glibc
#endif

/// What `PackageResigner.resign` produced.
public struct ResignResult: Sendable {
    public let packageID: String
    /// Path of the published `<package_id>.cpkg`.
    public let path: String
    /// The exact bytes of the new `manifest.dsse.json`.
    public let envelopeBytes: [UInt8]
    /// Key IDs of every signature in the new envelope, in order.
    public let signatureKeyIDs: [String]
    /// Size of the whole new `.cpkg` file.
    public let packageSize: UInt64
}

/// The package failed a check that re-signing does not repair: re-signing would bless damaged or tampered bytes.
/// `report` holds every failure with its code (as `verify` reports it).
public struct PackageRefusedError: Error, Sendable, CustomStringConvertible {
    public let report: VerificationReport

    public var description: String {
        let codes = report.failures.map(\.code.rawValue).joined(separator: ", ")
        return "\(report.path) is not a sound package (\(codes)); it was not re-signed."
    }
}

/// Signs an existing package again: the same manifest payload bytes (so the same package ID, `created_at`,
/// provenance and blob digests) and the same episode archive bytes, with new signatures that replace the old ones
/// or are added to them (threshold setups). A device whose key was not trusted yet, or was rotated, re-signs what
/// it holds instead of packing again.
///
/// Before signing, the package must pass every check of `verify` except trust (structure, envelope, manifest,
/// package ID, archive and blob digests); the new package is then verified again, trusting the new keys, before
/// it is published. Two reads of the input and one of the output; memory is bounded by the buffers whatever the
/// package's size.
public struct PackageResigner: Sendable {
    public enum Mode: String, Sendable {
        /// The new signatures replace every old one.
        case replace
        /// The new signatures are appended; a signature by the same key is replaced in place.
        case add
    }

    public var signingKeys: [Ed25519PrivateKey]
    public var mode: Mode
    public var limits: PackageLimits
    /// Counts the bytes read and written, for a progress display.
    public var progress: ByteProgress?

    public init(signingKey: Ed25519PrivateKey, mode: Mode = .replace, limits: PackageLimits = .default) {
        self.signingKeys = [signingKey]
        self.mode = mode
        self.limits = limits
    }

    /// Writes `directory/<package_id>.cpkg` re-signed (creating `directory` and its parents when missing); never
    /// replaces an existing file.
    /// - Throws: `PackageRefusedError` when the package fails any check other than trust (nothing is written);
    ///   `envelope.shape` when the envelope would hold more than 16 signatures; `io.output_exists` when the
    ///   output exists; `io.error`, `crypto.failure`, `pack.archive_write_failed`.
    public func resign(packageAt path: String, toDirectory directory: String) throws -> ResignResult {
        try withUTF8Locale { try resignLocked(path: path, directory: directory) }
    }

    private func resignLocked(path: String, directory: String) throws -> ResignResult {
        // 1. Everything but trust must hold.
        var checker = PackageVerifier(trustedKeys: [], limits: limits)
        checker.progress = progress
        let report = try checker.verify(path: path)
        let sound = report.failures.allSatisfy { $0.code.rawValue.hasPrefix("signature.") }
            && VerificationReport.Check.allCases.allSatisfy { $0 == .signature || report.outcomes[$0] == .held }
        guard sound, let manifest = report.manifest else {
            // Trust was not asked about: what the report says of the signatures is noise here.
            var shown = report
            shown.dropFailures(of: .signature)
            throw PackageRefusedError(report: shown)
        }

        // 2. The new envelope around the same payload bytes.
        let contents = try PackageInspector.inspect(path: path, limits: limits)
        let fresh = try Envelope.sign(payload: contents.envelope.payload, with: signingKeys)
        var signatures = mode == .add ? contents.envelope.signatures : []
        for signature in fresh.signatures {
            if let index = signatures.firstIndex(where: { $0.keyID == signature.keyID }) {
                signatures[index] = signature
            } else {
                signatures.append(signature)
            }
        }
        guard signatures.count <= limits.maxSignatures else {
            throw ContinuonPackError(.envelopeShape, "The envelope would hold \(signatures.count) signatures; at most \(limits.maxSignatures) are allowed.")
        }
        let envelope = Envelope(payload: contents.envelope.payload, signatures: signatures)
        let envelopeBytes = envelope.jsonBytes()
        guard envelopeBytes.count <= limits.maxEnvelopeBytes else {
            throw ContinuonPackError(.envelopeTooLarge, "The new envelope would be \(envelopeBytes.count) bytes; the limit is \(limits.maxEnvelopeBytes).")
        }
        try FileIO.createDirectories(directory)
        let finalPath = directory + "/" + manifest.packageID + ".cpkg"
        if access(finalPath, F_OK) == 0 {
            throw ContinuonPackError(.outputExists, "\(finalPath) already exists; it is never overwritten.")
        }

        // 3. The new package: the envelope, then the archive member's bytes copied as they are.
        let temporary = FileDescriptor.uniqueTemporaryPath(in: directory, suffix: ".cpkg.partial")
        let output = try FileDescriptor.createExclusive(temporary, mode: 0o644)
        do {
            let size = try write(envelopeBytes, archiveOf: path, archive: manifest.archive, to: output)
            try output.sync()
            try output.close()
            // 4. Read back: the result must verify under the new keys alone, with the same package ID.
            var verifier = PackageVerifier(trustedKeys: signingKeys.map(\.publicKey), threshold: 1, limits: limits)
            verifier.progress = progress
            let check = try verifier.verify(path: temporary)
            guard check.valid, check.packageID == manifest.packageID else {
                // The input changed between the two reads (or a bug): never publish it.
                throw PackageRefusedError(report: check)
            }
            try FileIO.publish(temporary: temporary, as: finalPath, directory: directory)
            return ResignResult(packageID: manifest.packageID, path: finalPath, envelopeBytes: envelopeBytes,
                                signatureKeyIDs: signatures.map(\.keyID), packageSize: size)
        } catch {
            _ = unlink(temporary)
            throw error
        }
    }

    /// Writes the outer tar: `manifest.dsse.json` with `envelopeBytes`, then the episode archive member of the
    /// package at `path`, byte for byte. Returns the size written.
    private func write(
        _ envelopeBytes: [UInt8], archiveOf path: String, archive: ArchiveDescriptor, to output: FileDescriptor
    ) throws -> UInt64 {
        let input = try FileDescriptor.openForReading(path)
        let reader = try ArchiveReader(source: FileByteSource(file: input), compression: .none)
        guard case .entry = try reader.next(), case let .entry(second) = try reader.next(),
              second.pathBytes.elementsEqual(archive.name.utf8), second.size.map(UInt64.init) == archive.size
        else {
            throw ContinuonPackError(.packageCorrupt, "\(path) changed while it was re-signed.")
        }
        let writer = try ArchiveWriter(compression: .none, output: output)
        try writer.beginEntry(path: "manifest.dsse.json", size: UInt64(envelopeBytes.count))
        try envelopeBytes.withUnsafeBytes { try writer.writeData($0) }
        try writer.beginEntry(path: archive.name, size: archive.size)
        var copied: UInt64 = 0
        while true {
            let block = try reader.readBlock()
            if block.isEmpty { break }
            copied += UInt64(block.count)
            guard copied <= archive.size else { break }
            try writer.writeData(block)
            progress?.add(block.count)
        }
        guard copied == archive.size else {
            throw ContinuonPackError(.packageCorrupt, "\(path) changed while it was re-signed.")
        }
        return try writer.finish().size
    }
}
