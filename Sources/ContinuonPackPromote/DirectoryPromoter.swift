import CContinuonSystem
import ContinuonPack
#if canImport(Glibc)
import Glibc
#endif

/// What became of one staged package in a promotion run.
public struct PromotionOutcome: Sendable {
    public enum Status: String, Sendable {
        /// Verified and written; its marker is in place.
        case promoted
        /// Its marker was there already: nothing read, nothing written.
        case alreadyPromoted = "already_promoted"
        /// Not promoted: the errors say why (signature, trust, digests, TFRecords, a conflict).
        case refused
        /// Another promoter holds it right now (overlapping shards); that one finishes it.
        case busy
    }

    public let packageID: String
    public let status: Status
    public let environmentID: String?
    public let blobs: Int
    public let bytes: UInt64
    public let errors: [ContinuonPackError]

    public var jsonValue: JSONValue {
        .object([
            ("package_id", .string(packageID)),
            ("status", .string(status.rawValue)),
            ("environment_id", environmentID.map(JSONValue.string) ?? .null),
            ("blobs", .number(String(blobs))),
            ("bytes", .number(String(bytes))),
            ("errors", .array(errors.map { .object([("code", .string($0.code.rawValue)), ("message", .string($0.message))]) })),
        ])
    }
}

/// Promotes verified packages from a staging directory (`<package_id>.cpkg` files, as `serve --store` keeps them)
/// into a training directory, as the trainer reads them:
///
///     TRAINING/<environment_id>/<package_id>/<blob path>         the blobs, byte for byte
///     TRAINING/<environment_id>/<package_id>/_provenance.json    written last: its presence means "promoted"
///     TRAINING/.promote/<package_id>.lock                        held (flock) by the promoter at work on it
///     TRAINING/.promote/<package_id>.partial/                    blobs being verified, before they are published
///
/// Each package is read once: full verification (spec section 7, TFRecord framing included) with every blob
/// handed to a `BlobSink` that writes it under `.partial/`. Only a valid package is published: each blob is
/// linked into place (create-only: bytes already there count as done when they are the listed ones, anything
/// else is `promote.conflict`), the file system is synced, then the marker is linked into place. A run killed
/// anywhere leaves no marker without its blobs; the next run finishes the package. Staging is never written to.
public struct DirectoryPromoter {
    public let staging: String
    public let training: String
    public var verifier: PackageVerifier
    public var shard = Shard.all
    /// The time written into markers.
    public var now: () throws -> String = { try PackageWriter.createdAt() }

    public init(staging: String, training: String, verifier: PackageVerifier) {
        self.staging = staging
        self.training = training
        var checking = verifier
        checking.checkTFRecords = true
        self.verifier = checking
    }

    private var workDirectory: String { training + "/.promote" }

    /// The package IDs staged (files named `<64 hex>.cpkg`), in this promoter's shard, sorted.
    public func stagedPackageIDs() throws -> [String] {
        guard let directory = opendir(staging) else {
            throw ContinuonPackError(.ioError, "Cannot read the staging directory \(staging): \(String(cString: strerror(errno))).")
        }
        defer { closedir(directory) }
        var ids: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard name.hasSuffix(".cpkg") else { continue }
            let id = String(name.dropLast(5))
            guard id.utf8.count == 64, id.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }),
                  shard.contains(packageID: id)
            else { continue }
            ids.append(id)
        }
        return ids.sorted()
    }

    /// Promotes every staged package of the shard; a failure of one package never stops the others.
    /// - Throws: `io.error` only when staging cannot be listed or the training directory cannot be used.
    public func promoteAll() throws -> [PromotionOutcome] {
        try FileIO.createDirectories(workDirectory)
        return try stagedPackageIDs().map { id in
            do {
                return try promote(packageID: id)
            } catch let error as ContinuonPackError {
                return PromotionOutcome(packageID: id, status: .refused, environmentID: nil, blobs: 0, bytes: 0, errors: [error])
            }
        }
    }

    /// Promotes `STAGING/<packageID>.cpkg`.
    /// - Throws: `io.error` when staging or training cannot be read or written.
    public func promote(packageID: String) throws -> PromotionOutcome {
        try FileIO.createDirectories(workDirectory)
        guard let lock = try PackageLock(path: workDirectory + "/" + packageID + ".lock") else {
            return PromotionOutcome(packageID: packageID, status: .busy, environmentID: nil, blobs: 0, bytes: 0, errors: [])
        }
        defer { lock.release() }
        let staged = staging + "/" + packageID + ".cpkg"
        let partial = workDirectory + "/" + packageID + ".partial"
        try removeTree(partial) // a crashed run's, ours to clear: we hold the lock

        // Already promoted: the marker is where the (unverified) manifest's environment says. Nothing else is read.
        if let contents = try? PackageInspector.inspect(path: staged),
           FormatRules.isValidIdentifier(contents.manifest.provenance.environmentID),
           contents.manifest.packageID == packageID,
           access(destination(contents.manifest.provenance.environmentID, packageID) + "/" + PromotionMarker.fileName, F_OK) == 0 {
            return PromotionOutcome(packageID: packageID, status: .alreadyPromoted,
                                    environmentID: contents.manifest.provenance.environmentID, blobs: 0, bytes: 0, errors: [])
        }

        defer { try? removeTree(partial) }
        try FileIO.createDirectories(partial)
        let file = try HashingFile(path: staged)
        let stager = BlobStager(directory: partial)
        let report = try verifier.verify(stream: file, name: staged, sink: stager)
        CrashPoint.reach("promote.verified")
        guard report.valid, let manifest = report.manifest else {
            return refused(packageID, report.manifest?.provenance.environmentID, report.failures)
        }
        let environment = manifest.provenance.environmentID
        guard manifest.packageID == packageID else {
            return refused(packageID, environment, [ContinuonPackError(
                .promoteNameMismatch, "\(staged) holds the package \(manifest.packageID), not \(packageID).")])
        }

        // Publish the blobs, create-only.
        let destination = destination(environment, packageID)
        var directories: Set<String> = [destination]
        for blob in manifest.blobs {
            let target = destination + "/" + blob.path
            let parent = FileIO.parentDirectory(of: target)
            try FileIO.createDirectories(parent)
            directories.insert(parent)
            if link(partial + "/" + blob.path, target) != 0 {
                guard errno == EEXIST else { throw FileDescriptor.ioError("Cannot create \(target)", path: target) }
                guard try Self.holds(target, size: blob.size, sha256: blob.sha256) else {
                    return refused(packageID, environment, [ContinuonPackError(
                        .promoteConflict, "\(target) exists with other bytes than the blob \(blob.path) of this package; it is never overwritten.")])
                }
            }
            CrashPoint.reach("promote.blob")
        }
        // Every blob durable before the marker can be.
        let training = try FileDescriptor.openForReading(self.training)
        guard csystem_sync_filesystem(training.raw) == 0 else { throw FileDescriptor.ioError("Cannot sync \(self.training)", path: self.training) }
        for directory in directories { try FileIO.syncDirectory(directory) }
        CrashPoint.reach("promote.blobs_synced")

        let marker = PromotionMarker(
            packageID: packageID, environmentID: environment, packageSHA256: file.digest().hex, packageSize: file.size,
            keyIDs: report.verifiedKeyIDs, promotedAt: try now(), manifest: manifest.jsonValue)
        let markerPath = destination + "/" + PromotionMarker.fileName
        do {
            try FileIO.writeNewFile(marker.bytes, to: markerPath, mode: 0o644)
        } catch let error as ContinuonPackError where error.code == .outputExists {
            // Another promoter finished first (a marker is only ever written after its blobs).
            return PromotionOutcome(packageID: packageID, status: .alreadyPromoted, environmentID: environment,
                                    blobs: 0, bytes: 0, errors: [])
        }
        CrashPoint.reach("promote.marked")
        return PromotionOutcome(packageID: packageID, status: .promoted, environmentID: environment,
                                blobs: manifest.blobs.count, bytes: manifest.blobs.reduce(0) { $0 + $1.size }, errors: [])
    }

    private func destination(_ environment: String, _ packageID: String) -> String {
        training + "/" + environment + "/" + packageID
    }

    private func refused(_ packageID: String, _ environment: String?, _ errors: [ContinuonPackError]) -> PromotionOutcome {
        PromotionOutcome(packageID: packageID, status: .refused, environmentID: environment, blobs: 0, bytes: 0, errors: errors)
    }

    /// Whether the regular file at `path` (not followed if a link) holds exactly `size` bytes with that SHA-256.
    static func holds(_ path: String, size: UInt64, sha256: String) throws -> Bool {
        guard let (file, actual) = try FileDescriptor.openRegularFile(path), actual == size else { return false }
        let hasher = SHA256Hasher()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let count = try file.read(into: buffer)
            if count == 0 { break }
            hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
        return hasher.finalize().matches(hex: sha256)
    }
}

/// An exclusive `flock` on a lock file: one promoter per package at a time, across processes. Released on
/// `release()` or when the process dies (a `kill -9` leaves no stale lock).
final class PackageLock {
    private let fd: Int32

    /// nil when another process holds it.
    init?(path: String) throws {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o644)
        guard fd >= 0 else { throw FileDescriptor.ioError("Cannot open the lock \(path)", path: path) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            close(fd)
            if code == EWOULDBLOCK { return nil }
            throw ContinuonPackError(.ioError, "Cannot lock \(path): \(String(cString: strerror(code))).")
        }
        self.fd = fd
    }

    func release() { close(fd) }
}

/// Reads the staged package for the verifier and hashes every byte it reads: the marker names the bytes verified.
final class HashingFile: PackageStream {
    private let file: FileDescriptor
    private let hasher = SHA256Hasher()
    private(set) var size: UInt64 = 0

    init(path: String) throws {
        file = try FileDescriptor.openForReading(path, followSymlinks: false)
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let count = try file.read(into: buffer)
        hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        size += UInt64(count)
        return count
    }

    /// Call once, after the verifier read everything (it reads to the end of the file).
    func digest() -> SHA256Digest { hasher.finalize() }
}

/// Writes each blob the verifier hands over under the package's `.partial/` directory (new files only).
final class BlobStager: BlobSink {
    private let directory: String
    private var current: FileDescriptor?

    init(directory: String) { self.directory = directory }

    func beginBlob(_ blob: BlobDescriptor) throws {
        let path = directory + "/" + blob.path
        try FileIO.createDirectories(FileIO.parentDirectory(of: path))
        current = try FileDescriptor.createExclusive(path, mode: 0o644)
    }

    func blobBytes(_ bytes: UnsafeRawBufferPointer) throws {
        try current?.writeAll(bytes)
    }

    func endBlob(_ blob: BlobDescriptor) throws {
        try current?.close()
        current = nil
    }
}

/// Removes `path` and everything under it, never following a symbolic link; nothing there is fine.
func removeTree(_ path: String) throws {
    var info = stat()
    guard lstat(path, &info) == 0 else { return }
    if info.st_mode & S_IFMT == S_IFDIR {
        if let directory = opendir(path) {
            var names: [String] = []
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if name != "." && name != ".." { names.append(name) }
            }
            closedir(directory)
            for name in names { try removeTree(path + "/" + name) }
        }
        guard rmdir(path) == 0 else { throw FileDescriptor.ioError("Cannot remove \(path)", path: path) }
    } else {
        guard unlink(path) == 0 else { throw FileDescriptor.ioError("Cannot remove \(path)", path: path) }
    }
}
