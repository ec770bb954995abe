#if canImport(Glibc)
import Glibc
#endif

/// What `PackageWriter.write` produced.
public struct PackResult: Sendable {
    public let packageID: String
    /// Path of the published `<package_id>.cpkg`.
    public let path: String
    public let manifest: Manifest
    /// The exact bytes of `manifest.dsse.json`.
    public let envelopeBytes: [UInt8]
    /// Size of the whole `.cpkg` file.
    public let packageSize: UInt64

    /// SHA-256 of the whole `.cpkg` file, read back from disk (not computed while packing: nothing in the format
    /// needs it, and the uploader's outbox computes its own).
    public func packageSHA256() throws -> SHA256Digest {
        let hasher = SHA256Hasher()
        try FileIO.forEachChunk(of: path) { hasher.update($0) }
        return hasher.finalize()
    }
}

/// Packs blobs into a signed `.cpkg` in one pass over each blob: read once, hashed and archived together, with
/// memory bounded by one buffer whatever the blob sizes.
///
/// The package appears atomically: it is written under a temporary name in the output directory, fsynced, linked
/// to `<package_id>.cpkg` (never replacing an existing file) and the directory is fsynced. On any failure nothing
/// is left behind.
public struct PackageWriter: Sendable {
    public var provenance: Provenance
    public var signingKeys: [Ed25519PrivateKey]
    public var compression: Compression
    /// `YYYY-MM-DDTHH:MM:SSZ`; see `PackageWriter.createdAt(environment:)`.
    public var createdAt: String
    /// Size of the read buffer (one per writer call).
    public var bufferSize = 1 << 20
    /// zstd worker threads (at least 1; the output bytes are the same for every count).
    public var compressionThreads = 2

    public init(provenance: Provenance, signingKey: Ed25519PrivateKey, compression: Compression = .zstd, createdAt: String) {
        self.provenance = provenance
        self.signingKeys = [signingKey]
        self.compression = compression
        self.createdAt = createdAt
    }

    /// The manifest time: `SOURCE_DATE_EPOCH` from `environment` when set (reproducible builds convention),
    /// else the current time. Throws `pack.source_invalid` when `SOURCE_DATE_EPOCH` is not a plain number.
    public static func createdAt(environment: [String: String]) throws -> String {
        if let text = environment["SOURCE_DATE_EPOCH"] {
            guard let seconds = Int64(text), seconds >= 0, seconds < 253_402_300_800 else {
                throw ContinuonPackError(.sourceInvalid, "SOURCE_DATE_EPOCH \(quoted(text)) is not a number of seconds.")
            }
            return timestamp(secondsSinceEpoch: seconds)
        }
        return timestamp(secondsSinceEpoch: Int64(time(nil)))
    }

    /// Formats seconds since 1970 as `YYYY-MM-DDTHH:MM:SSZ` (UTC, independent of TZ and locale).
    public static func timestamp(secondsSinceEpoch seconds: Int64) -> String {
        var value = time_t(seconds)
        var parts = tm()
        gmtime_r(&value, &parts)
        func pad(_ number: Int32, _ width: Int) -> String {
            let text = String(number)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))Z"
    }

    /// Packs `blobs` into `directory/<package_id>.cpkg`.
    /// - Throws: `manifest.identifier_invalid`, `manifest.path_invalid`, `manifest.blob_duplicate` for bad input;
    ///   `pack.source_changed` when a file changes size while it is read; `io.output_exists` when the package
    ///   already exists; `io.error`, `pack.archive_write_failed`, `crypto.failure`.
    public func write(blobs: [BlobSource], toDirectory directory: String) throws -> PackResult {
        if let problem = provenance.problem() { throw problem }
        guard Validation.isValidTimestamp(createdAt) else {
            throw ContinuonPackError(.manifestCreatedAt, "created_at \(quoted(createdAt)) is not YYYY-MM-DDTHH:MM:SSZ.")
        }
        guard !blobs.isEmpty else { throw ContinuonPackError(.sourceEmpty, "There are no blobs to pack.") }
        let sorted = blobs.sorted { $0.path.utf8.lexicographicallyPrecedes($1.path.utf8) }
        var folded: [String: String] = [:]
        for (index, blob) in sorted.enumerated() {
            if let problem = Validation.pathProblem(Array(blob.path.utf8)) {
                throw ContinuonPackError(.manifestPath, "Blob path \(quoted(blob.path)): \(problem).")
            }
            if index > 0 && sorted[index - 1].path.utf8.elementsEqual(blob.path.utf8) {
                throw ContinuonPackError(.manifestBlobDuplicate, "Blob path \(quoted(blob.path)) is given twice.")
            }
            if let other = folded.updateValue(blob.path, forKey: Validation.collisionKey(blob.path)) {
                throw ContinuonPackError(
                    .manifestPathCollision,
                    "Blob paths \(quoted(other)) and \(quoted(blob.path)) differ only in case or Unicode normalization.")
            }
        }
        return try withUTF8Locale { try pack(sorted, into: directory) }
    }

    private func pack(_ blobs: [BlobSource], into directory: String) throws -> PackResult {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 4096)
        defer { buffer.deallocate() }

        // 1. The episode archive, into an anonymous temporary file. Blobs are hashed as they are read; the archive
        //    bytes are hashed on a second thread as they are written.
        let pipeline = HashPipeline()
        defer { pipeline.close() }
        let archiveFile = try FileDescriptor.anonymousTemporary(in: directory)
        let archiveWriter = try ArchiveWriter(
            compression: compression, output: archiveFile, pipeline: pipeline, zstdWorkers: compressionThreads)
        var descriptors: [BlobDescriptor] = []
        descriptors.reserveCapacity(blobs.count)
        for blob in blobs {
            descriptors.append(try archive(blob, with: archiveWriter, buffer: buffer))
        }
        let finished = try archiveWriter.finish()
        guard let archiveDigest = finished.sha256 else { preconditionFailure("the archive writer had a pipeline") }
        let archiveResult = (size: finished.size, sha256: archiveDigest)

        // 2. The manifest and its signed envelope.
        let packageID = PackageID.compute(provenance: provenance, blobs: descriptors)
        let manifest = Manifest(
            packageID: packageID, createdAt: createdAt, provenance: provenance,
            archive: ArchiveDescriptor(
                name: compression.archiveName, compression: compression, size: archiveResult.size,
                sha256: archiveResult.sha256.hex),
            blobs: descriptors)
        let envelope = try Envelope.sign(payload: manifest.canonicalBytes(), with: signingKeys)
        let envelopeBytes = envelope.jsonBytes()

        // 3. The package: envelope, then the archive copied from the temporary file; published atomically.
        let finalPath = directory + "/" + packageID + ".cpkg"
        if access(finalPath, F_OK) == 0 {
            throw ContinuonPackError(.outputExists, "\(finalPath) already exists; it is never overwritten.")
        }
        let temporaryPath = FileDescriptor.uniqueTemporaryPath(in: directory, suffix: ".cpkg.partial")
        let packageFile = try FileDescriptor.createExclusive(temporaryPath, mode: 0o644)
        let packageResult: (size: UInt64, sha256: SHA256Digest?)
        do {
            let writer = try ArchiveWriter(compression: .none, output: packageFile)
            try writer.beginEntry(path: "manifest.dsse.json", size: UInt64(envelopeBytes.count))
            try envelopeBytes.withUnsafeBytes { try writer.writeData($0) }
            try writer.beginEntry(path: compression.archiveName, size: archiveResult.size)
            var offset: Int64 = 0
            while true {
                let count = try archiveFile.read(into: buffer, at: offset)
                if count == 0 { break }
                try writer.writeData(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
                offset += Int64(count)
            }
            guard UInt64(offset) == archiveResult.size else {
                throw ContinuonPackError(.ioError, "The temporary episode archive changed size while it was copied.")
            }
            packageResult = try writer.finish()
            try packageFile.sync()
            try packageFile.close()
        } catch {
            _ = unlink(temporaryPath)
            throw error
        }
        try FileIO.publish(temporary: temporaryPath, as: finalPath, directory: directory)
        return PackResult(
            packageID: packageID, path: finalPath, manifest: manifest, envelopeBytes: envelopeBytes,
            packageSize: packageResult.size)
    }

    /// Archives one blob, reading its bytes exactly once, and returns its descriptor.
    private func archive(_ blob: BlobSource, with writer: ArchiveWriter, buffer: UnsafeMutableRawBufferPointer) throws -> BlobDescriptor {
        let hasher = SHA256Hasher()
        switch blob.content {
        case let .bytes(bytes):
            try writer.beginEntry(path: blob.path, size: UInt64(bytes.count))
            try bytes.withUnsafeBytes { raw in
                hasher.update(raw)
                try writer.writeData(raw)
            }
            return BlobDescriptor(path: blob.path, size: UInt64(bytes.count), sha256: hasher.finalize().hex)
        case let .file(path):
            let file = try FileDescriptor.openForReading(path)
            let info = try file.status()
            guard info.st_mode & S_IFMT == S_IFREG else {
                throw ContinuonPackError(.sourceInvalid, "\(path) is not a regular file.")
            }
            let size = UInt64(info.st_size)
            try writer.beginEntry(path: blob.path, size: size)
            var remaining = size
            while true {
                let count = try file.read(into: buffer)
                if count == 0 { break }
                guard UInt64(count) <= remaining else {
                    throw ContinuonPackError(.sourceChanged, "\(path) grew while it was being packed.")
                }
                let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<count])
                hasher.update(chunk)
                try writer.writeData(chunk)
                remaining -= UInt64(count)
            }
            guard remaining == 0 else {
                throw ContinuonPackError(.sourceChanged, "\(path) shrank while it was being packed.")
            }
            return BlobDescriptor(path: blob.path, size: size, sha256: hasher.finalize().hex)
        }
    }
}
