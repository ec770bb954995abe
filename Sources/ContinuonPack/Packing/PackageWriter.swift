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
/// memory bounded by the hashing buffers whatever the blob sizes.
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
    /// Size of each read and hashing buffer (six per writer call; a final copy, rarely needed, uses one more).
    /// 256 KiB: as fast as 1 MiB here (measured), 4.5 MiB less resident memory.
    public var bufferSize = 256 << 10
    /// zstd worker threads (at least 1; the output bytes are the same for every count). One by default: packing
    /// already keeps two more threads busy (reading and writing; hashing), and each worker costs 15-40 MiB of
    /// zstd buffers. More pay on machines with more cores and incompressible data.
    public var compressionThreads = 1
    /// Advanced by the blob bytes read, for a progress display.
    public var progress: ByteProgress?
    /// Checked between buffers (the async `write` sets it from the task's cancellation).
    var cancellation: CancellationFlag?
    /// Check every TFRecord blob's framing as it is read (`TFRecordFramer`): a device never signs a corrupt
    /// episode. A broken one fails the pack with `promote.tfrecord_corrupt` and nothing is written.
    public var checkTFRecords = true
    /// Tests only: reserve this many bytes before the archive instead of the predicted count (forces the copy path
    /// when wrong).
    var reservedOverride: UInt64?

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

    /// The manifest time from this process's `SOURCE_DATE_EPOCH` when set, else now (no Foundation needed).
    public static func createdAt() throws -> String {
        var environment: [String: String] = [:]
        if let value = getenv("SOURCE_DATE_EPOCH") { environment["SOURCE_DATE_EPOCH"] = String(cString: value) }
        return try createdAt(environment: environment)
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

    /// Packs `blobs` into `directory/<package_id>.cpkg`, creating `directory` and its parents when missing.
    /// - Throws: `manifest.identifier_invalid`, `manifest.path_invalid`, `manifest.blob_duplicate` for bad input;
    ///   `pack.source_changed` when a file changes size while it is read; `io.output_exists` when the package
    ///   already exists; `io.error`, `pack.archive_write_failed`, `crypto.failure`.
    public func write(blobs: [BlobSource], toDirectory directory: String) throws -> PackResult {
        if let problem = provenance.problem() { throw problem }
        guard FormatRules.isValidTimestamp(createdAt) else {
            throw ContinuonPackError(.manifestCreatedAt, "created_at \(quoted(createdAt)) is not YYYY-MM-DDTHH:MM:SSZ.")
        }
        guard !blobs.isEmpty else { throw ContinuonPackError(.sourceEmpty, "There are no blobs to pack.") }
        let sorted = blobs.sortedByPath()
        var folded: [String: String] = [:]
        for (index, blob) in sorted.enumerated() {
            if let problem = FormatRules.pathProblem(blob.path) {
                throw ContinuonPackError(.manifestPath, "Blob path \(quoted(blob.path)): \(problem).")
            }
            if index > 0 && sorted[index - 1].path.utf8Equals(blob.path) {
                throw ContinuonPackError(.manifestBlobDuplicate, "Blob path \(quoted(blob.path)) is given twice.")
            }
            if let other = folded.updateValue(blob.path, forKey: FormatRules.collisionKey(blob.path)) {
                throw ContinuonPackError(
                    .manifestPathCollision,
                    "Blob paths \(quoted(other)) and \(quoted(blob.path)) differ only in case or Unicode normalization.")
            }
        }
        return try withUTF8Locale {
            // A path too long for the ustar name and prefix fields is written with a pax record; libarchive's
            // fallback name for some of them breaks the format's rule. Refuse those rather than write a package no
            // verifier accepts.
            for blob in sorted where !Self.fitsUstarFields(blob.path) {
                guard try ArchiveWriter.writesConformingHeader(for: blob.path) else {
                    throw ContinuonPackError(
                        .sourcePathUnwritable,
                        "Blob path \(quoted(blob.path)) (\(blob.path.utf8.count) bytes) cannot be written so that tar readers agree on its name: "
                            + "shorten it so that it splits at a '/' into at most 155 and 100 bytes.")
                }
            }
            return try pack(sorted, into: directory)
        }
    }

    /// True when `path`'s bytes fit the ustar name field (100 bytes), or split at a `/` into the prefix (155) and
    /// name (100) fields: libarchive's header for it then needs no fallback name.
    static func fitsUstarFields(_ path: String) -> Bool {
        let bytes = Array(path.utf8)
        if bytes.count <= 100 { return true }
        guard bytes.count <= 256 else { return false }
        return bytes.indices.contains { index in
            bytes[index] == UInt8(ascii: "/") && index <= 155 && bytes.count - index - 1 <= 100 && index > 0
        }
    }

    private func pack(_ blobs: [BlobSource], into directory: String) throws -> PackResult {
        try FileIO.createDirectories(directory)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 4096)
        defer { buffer.deallocate() }
        let temporaryPath = FileDescriptor.uniqueTemporaryPath(in: directory, suffix: ".cpkg.partial")
        let packageFile = try FileDescriptor.createExclusive(temporaryPath, mode: 0o644)
        do {
            let result = try pack(blobs, into: packageFile, directory: directory, buffer: buffer)
            try FileIO.publish(temporary: result.packagePath, as: result.finalPath, directory: directory)
            if result.packagePath != temporaryPath { _ = unlink(temporaryPath) }
            return result.result
        } catch {
            _ = unlink(temporaryPath)
            throw error
        }
    }

    /// Writes the package. The episode archive is written once, straight into the package file behind a
    /// reserved region for the outer tar's headers and the envelope, whose size is predicted from the manifest's
    /// shape (every digest has a fixed length; only the archive size's digits are guessed). When the prediction
    /// misses (rarely, for compressed archives), the archive is copied into a second file.
    private func pack(
        _ blobs: [BlobSource], into packageFile: FileDescriptor, directory: String, buffer: UnsafeMutableRawBufferPointer
    ) throws -> (result: PackResult, packagePath: String, finalPath: String) {
        // 1. The episode archive.
        let sizes = try blobs.map(Self.size(of:))
        let reserved = try reservedOverride ?? predictedPrefixLength(blobs, sizes: sizes)
        let (descriptors, archiveSize, archiveDigest) = try writeArchive(blobs, sizes: sizes, to: packageFile, at: reserved)

        // 2. The manifest and its signed envelope.
        let packageID = PackageID.compute(provenance: provenance, blobs: descriptors)
        let manifest = Manifest(
            packageID: packageID, createdAt: createdAt, provenance: provenance,
            archive: ArchiveDescriptor(
                name: compression.archiveName, compression: compression, size: archiveSize, sha256: archiveDigest.hex),
            blobs: descriptors)
        let envelope = try Envelope.sign(payload: manifest.canonicalBytes(), with: signingKeys)
        let envelopeBytes = envelope.jsonBytes()
        let finalPath = directory + "/" + packageID + ".cpkg"
        if access(finalPath, F_OK) == 0 {
            throw ContinuonPackError(.outputExists, "\(finalPath) already exists; it is never overwritten.")
        }

        // 3. The outer tar around it: libarchive writes the headers, the envelope, the padding and the end marker;
        //    the archive bytes it is handed are not written where the file already holds them.
        let prefix = Self.outerPrefixLength(envelopeLength: envelopeBytes.count, archiveSize: archiveSize)
        let inPlace = prefix == reserved
        var output = packageFile
        var outputPath = packageFile.path
        if !inPlace {
            outputPath = FileDescriptor.uniqueTemporaryPath(in: directory, suffix: ".cpkg.partial")
            output = try FileDescriptor.createExclusive(outputPath, mode: 0o644)
        }
        do {
            let writer = try ArchiveWriter(
                compression: .none, output: output, keep: inPlace ? prefix..<(prefix + archiveSize) : nil)
            try writer.beginEntry(path: "manifest.dsse.json", size: UInt64(envelopeBytes.count))
            try envelopeBytes.withUnsafeBytes { try writer.writeData($0) }
            try writer.beginEntry(path: compression.archiveName, size: archiveSize)
            var offset: UInt64 = 0
            if inPlace {
                // In place: libarchive only needs the byte count; these zeros are never written (and only a small
                // part of the buffer is ever touched).
                let zeros = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<min(buffer.count, 64 << 10)])
                zeros.initializeMemory(as: UInt8.self, repeating: 0)
                while offset < archiveSize {
                    let count = Int(min(UInt64(zeros.count), archiveSize - offset))
                    try writer.writeData(UnsafeRawBufferPointer(rebasing: zeros[0..<count]))
                    offset += UInt64(count)
                }
            } else {
                while offset < archiveSize {
                    let count = try packageFile.read(
                        into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(min(UInt64(buffer.count), archiveSize - offset))]),
                        at: Int64(reserved + offset))
                    guard count > 0 else { throw ContinuonPackError(.ioError, "The episode archive is shorter than written.") }
                    try writer.writeData(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
                    offset += UInt64(count)
                }
            }
            let packageSize = try writer.finish().size
            if inPlace { try Self.checkArchiveHeader(in: output, before: prefix, name: compression.archiveName) }
            try output.sync()
            if output !== packageFile { try output.close() }
            return (PackResult(packageID: packageID, path: finalPath, manifest: manifest, envelopeBytes: envelopeBytes,
                               packageSize: packageSize), outputPath, finalPath)
        } catch {
            if output !== packageFile { _ = unlink(outputPath) }
            throw error
        }
    }

    /// Writes the episode archive into `packageFile` from `offset` on and returns the blobs' descriptors and the
    /// archive's size and digest. This thread reads and writes; the blobs' bytes are hashed on one thread and
    /// the archive's on another (three busy threads, which the kernel spreads over the cores whatever the balance
    /// of I/O and hashing speed). The pipelines' buffers are freed before the manifest is built.
    private func writeArchive(
        _ blobs: [BlobSource], sizes: [UInt64], to packageFile: FileDescriptor, at offset: UInt64
    ) throws -> (blobs: [BlobDescriptor], size: UInt64, sha256: SHA256Digest) {
        let blobPipeline = HashPipeline(bufferSize: bufferSize, bufferCount: 3)
        defer { blobPipeline.close() }
        let archivePipeline = HashPipeline(bufferSize: bufferSize, bufferCount: 3)
        defer { archivePipeline.close() }
        let archiveWriter = try ArchiveWriter(
            compression: compression, output: packageFile, pipeline: archivePipeline, zstdWorkers: compressionThreads,
            origin: offset)
        let blobLane = blobPipeline.makeLane()
        var streams: [HashPipeline.Stream] = []
        streams.reserveCapacity(blobs.count)
        for (blob, size) in zip(blobs, sizes) {
            streams.append(try archive(blob, size: size, with: archiveWriter, pipeline: blobPipeline, lane: blobLane))
        }
        let finished = try archiveWriter.finish()
        guard let digest = finished.sha256 else { preconditionFailure("the archive writer had a pipeline") }
        blobPipeline.drain()
        let descriptors = zip(blobs, zip(sizes, streams)).map { blob, sized in
            BlobDescriptor(path: blob.path, size: sized.0, sha256: sized.1.digest.hex)
        }
        return (descriptors, finished.size, digest)
    }

    // MARK: - Layout prediction

    /// Bytes before the archive data in the package: the envelope's header, the envelope padded to 512, a pax
    /// header for sizes of 8 GiB or more, the archive's header.
    static func outerPrefixLength(envelopeLength: Int, archiveSize: UInt64) -> UInt64 {
        let padded = UInt64((envelopeLength + 511) / 512 * 512)
        let pax: UInt64 = archiveSize > 0o77777777777 ? 1024 : 0
        return 512 + padded + pax + 512
    }

    /// The prefix for a guessed archive size: the envelope of a manifest with these blobs and placeholder digests
    /// has exactly the length of the real one (digests and signatures have fixed lengths).
    private func outerPrefixLength(forArchiveSize size: UInt64, blobs: [(path: String, size: UInt64)]) throws -> UInt64 {
        let zeros = String(repeating: "0", count: 64)
        let manifest = Manifest(
            packageID: zeros, createdAt: createdAt, provenance: provenance,
            archive: ArchiveDescriptor(name: compression.archiveName, compression: compression, size: size, sha256: zeros),
            blobs: blobs.map { BlobDescriptor(path: $0.path, size: $0.size, sha256: zeros) })
        // The envelope around an empty payload, plus the payload's base64 (no character of which is escaped).
        let payloadLength = manifest.canonicalBytes().count
        let emptyEnvelope = Envelope(payload: [], signatures: signingKeys.map {
            Envelope.Signature(keyID: $0.publicKey.keyID, signature: [UInt8](repeating: 0, count: 64))
        })
        let envelopeLength = emptyEnvelope.jsonBytes().count + (payloadLength + 2) / 3 * 4
        return Self.outerPrefixLength(envelopeLength: envelopeLength, archiveSize: size)
    }

    /// The prefix for the blobs' sizes, guessing the archive size as the uncompressed tar's without pax
    /// headers: exact for short ASCII names, a guess otherwise.
    private func predictedPrefixLength(_ blobs: [BlobSource], sizes: [UInt64]) throws -> UInt64 {
        let sized = zip(blobs, sizes).map { (path: $0.path, size: $1) }
        let estimate = sized.reduce(UInt64(1024)) { $0 + 512 + ($1.size + 511) / 512 * 512 }
        return try outerPrefixLength(forArchiveSize: estimate, blobs: sized)
    }

    /// The size a blob is archived with (each file stat'ed once, following symbolic links as `open` does).
    private static func size(of blob: BlobSource) throws -> UInt64 {
        switch blob.content {
        case let .bytes(bytes): return UInt64(bytes.count)
        case let .file(path):
            var info = stat()
            guard stat(path, &info) == 0 else { throw FileDescriptor.ioError("Cannot stat \(path)", path: path) }
            guard info.st_mode & S_IFMT == S_IFREG else {
                throw ContinuonPackError(.sourceInvalid, "\(path) is not a regular file.")
            }
            return UInt64(info.st_size)
        }
    }

    /// After an in-place write, the header just before the archive data must be the archive member's.
    private static func checkArchiveHeader(in file: FileDescriptor, before offset: UInt64, name: String) throws {
        var header = [UInt8](repeating: 0, count: 512)
        let count = try header.withUnsafeMutableBytes { try file.read(into: $0, at: Int64(offset) - 512) }
        guard count == 512, header[0..<name.utf8.count].elementsEqual(name.utf8), header[name.utf8.count] == 0,
              header[156] == UInt8(ascii: "0")
        else {
            throw ContinuonPackError(.archiveWriteFailed, "The package layout was not the predicted one (internal error).")
        }
    }

    /// Archives one blob of `size` bytes, reading its bytes exactly once, straight into the hash pipeline's
    /// buffers (small blobs share a buffer); returns the stream its digest will be in after the pipeline drained.
    /// A file whose size is no longer `size` is refused: reads stop at EOF, which a short read of a regular file
    /// reports without a further call.
    private func archive(
        _ blob: BlobSource, size: UInt64, with writer: ArchiveWriter, pipeline: HashPipeline, lane: HashPipeline.Lane
    ) throws -> HashPipeline.Stream {
        let stream = HashPipeline.Stream()
        try writer.beginEntry(path: blob.path, size: size)
        var framer = checkTFRecords && TFRecordFramer.applies(to: blob.path) ? TFRecordFramer(path: blob.path, size: size) : nil
        switch blob.content {
        case let .bytes(bytes):
            try bytes.withUnsafeBytes { raw in
                try writer.writeData(raw)
                pipeline.update(stream, raw, in: lane)
                framer?.update(raw)
                progress?.add(raw.count)
            }
        case let .file(path):
            // O_NONBLOCK: a file swapped for a FIFO since it was stat'ed fails to read instead of blocking.
            let file = try FileDescriptor.openForReading(path, nonBlocking: true)
            var remaining = size
            while true {
                // Ask for one byte more than is left, so that a short read proves the end of the file.
                let wanted = remaining >= UInt64(pipeline.bufferSize) ? pipeline.bufferSize : Int(remaining) + 1
                let space = pipeline.space(in: lane, atLeast: wanted)
                let target = UnsafeMutableRawBufferPointer(rebasing: space[0..<min(space.count, wanted)])
                let count = try file.read(into: target)
                guard UInt64(count) <= remaining else {
                    throw ContinuonPackError(.sourceChanged, "\(path) grew while it was being packed.")
                }
                if count == 0 { break }
                let chunk = UnsafeRawBufferPointer(rebasing: target[0..<count])
                try writer.writeData(chunk)
                framer?.update(chunk)
                pipeline.commit(count, of: stream, in: lane)
                progress?.add(count)
                try cancellation?.check()
                remaining -= UInt64(count)
                if remaining == 0 && count < target.count { break }
            }
            guard remaining == 0 else {
                throw ContinuonPackError(.sourceChanged, "\(path) shrank while it was being packed.")
            }
        }
        pipeline.finish(stream, in: lane)
        if let problem = framer?.finish() { throw problem }
        return stream
    }
}
