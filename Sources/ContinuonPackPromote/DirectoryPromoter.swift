import CContinuonSystem
import ContinuonPack
import Dispatch
import Synchronization
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
        /// Not judged: staging or training could not be read or written (`io.error`); a later run retries it.
        case failed
    }

    public let packageID: String
    public let status: Status
    public let environmentID: String?
    public let blobs: Int
    public let bytes: UInt64
    public let errors: [ContinuonPackError]

    public init(packageID: String, status: Status, environmentID: String?, blobs: Int, bytes: UInt64, errors: [ContinuonPackError]) {
        self.packageID = packageID
        self.status = status
        self.environmentID = environmentID
        self.blobs = blobs
        self.bytes = bytes
        self.errors = errors
    }

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
///     TRAINING/.promote/<package_id>.marker                      the marker, before it is linked into place
///
/// Each package is read once: full verification (spec section 7, TFRecord framing included) with every blob
/// handed to a `BlobSink` that writes it under `.partial/`. Only a valid package is published: each blob is
/// linked into place (create-only: bytes already there count as done when they are the listed ones, anything
/// else is `promote.conflict`), their directories are synced, then the marker is linked into place. A run killed
/// anywhere leaves no marker without its blobs; the next run finishes the package. Staging is never written to.
/// Below the training directory nothing is reached through a symbolic link (`DirectoryHandle`).
public struct DirectoryPromoter: Promoter {
    public let staging: any StagingArea
    public let training: String
    public var verifier: PackageVerifier
    public var shard = Shard.all
    /// The time written into markers.
    public var now: () throws -> String = { try PackageWriter.createdAt() }

    /// Promotes from a staging directory.
    public init(staging: String, training: String, verifier: PackageVerifier) {
        self.init(stagingArea: DirectoryStagingArea(directory: staging), training: training, verifier: verifier)
    }

    /// Promotes from any staging area (a Cloud Storage prefix: `continuon-pack-net`).
    public init(stagingArea: any StagingArea, training: String, verifier: PackageVerifier) {
        self.staging = stagingArea
        self.training = training
        var checking = verifier
        checking.checkTFRecords = true
        self.verifier = checking
    }

    /// Promotes `STAGING/<packageID>.cpkg`.
    /// - Throws: `io.error` when staging or training cannot be read or written (the package is not judged);
    ///   `promote.conflict` when a link or a file stands where a directory of the training layout goes.
    public func promote(packageID: String) throws -> PromotionOutcome {
        guard isPackageID(packageID) else {
            throw ContinuonPackError(.promoteNameMismatch, "\(quoted(packageID)) is not a package ID (64 lowercase hex digits).")
        }
        let root = try DirectoryHandle.root(training)
        let work = try root.descend(".promote")
        guard let lock = try PackageLock(directory: work, name: packageID + ".lock") else {
            return PromotionOutcome(packageID: packageID, status: .busy, environmentID: nil, blobs: 0, bytes: 0, errors: [])
        }
        defer { lock.release() }
        // A crashed run's leftovers, ours to clear: we hold the lock.
        let partialName = packageID + ".partial", markerName = packageID + ".marker"
        try work.removeTree(partialName)
        try work.removeTree(markerName)

        let stagedPath = staging.location + "/" + packageID + ".cpkg"

        // Already promoted: the marker is where the (unverified) manifest's environment says. The package ID
        // covers the environment ID, so a marker there can only be this package's. Only the envelope is read.
        if let contents = try? PackageInspector.inspect(stream: try staging.open(packageID: packageID), path: stagedPath),
           FormatRules.isValidIdentifier(contents.manifest.provenance.environmentID),
           contents.manifest.packageID == packageID,
           (try? root.descend(contents.manifest.provenance.environmentID + "/" + packageID, create: false))?
               .exists(PromotionMarker.fileName) == true {
            return .alreadyPromoted(packageID, contents.manifest.provenance.environmentID)
        }

        let partial = try work.descend(partialName)
        defer { try? work.removeTree(partialName) }
        let file = HashingStream(try staging.open(packageID: packageID))
        let stager = BlobStager(directory: partial)
        let report: VerificationReport
        do {
            report = try verifier.verify(stream: file, name: stagedPath, sink: stager)
            // Every staged blob durable before anything is published.
            try stager.finish()
        } catch {
            // The stager's own refusal (two blobs that cannot both be files: `a` and `a/b`) is about the package.
            if let refusal = stager.refusal { return .refused(packageID, nil, [refusal]) }
            throw error
        }
        CrashPoint.reach("promote.verified")
        let manifest: Manifest
        switch PromotionVerdict(report: report, packageID: packageID, stagedPath: stagedPath) {
        case let .refuse(outcome): return outcome
        case let .publish(valid): manifest = valid
        }
        let environment = manifest.provenance.environmentID

        // Publish the blobs, create-only, each directory reached without following a link.
        let destination = try root.descend(environment + "/" + packageID)
        var directories: [String: DirectoryHandle] = ["": destination]
        for blob in manifest.blobs {
            let (parent, leaf) = Self.split(blob.path)
            if directories[parent] == nil { directories[parent] = try destination.descend(parent) }
            let target = directories[parent]!
            let source = try partial.descend(parent, create: false)
            if try !target.link(leaf, from: source, as: leaf) {
                guard let (existing, size) = try target.openRegularFile(leaf), size == blob.size,
                      try Self.digest(of: existing).matches(hex: blob.sha256)
                else {
                    return .refused(packageID, environment, [ContinuonPackError(
                        .promoteConflict, "\(target.path)/\(leaf) exists with other bytes than the blob \(quoted(blob.path)) of this package; it is never overwritten.")])
                }
            }
            CrashPoint.reach("promote.blob")
        }
        // Every blob's bytes were fsynced as they were staged; now the new names.
        for directory in directories.values { try directory.sync() }
        CrashPoint.reach("promote.blobs_synced")

        let marker = PromotionMarker(manifest: manifest, report: report, package: file, promotedAt: try now())
        let temporary = try work.createFile(markerName)
        try marker.bytes.withUnsafeBytes { try temporary.writeAll($0) }
        try temporary.sync()
        try temporary.close()
        let placed = try destination.link(markerName, from: work, as: PromotionMarker.fileName)
        try? work.removeTree(markerName)
        guard placed else {
            // Another promoter finished first (a marker is only ever written after its blobs).
            return .alreadyPromoted(packageID, environment)
        }
        try destination.sync()
        CrashPoint.reach("promote.marked")
        return .promoted(packageID, manifest)
    }

    /// `dir/sub/name` → (`dir/sub`, `name`).
    static func split(_ path: String) -> (String, String) {
        guard let slash = path.lastIndex(of: "/") else { return ("", path) }
        return (String(path[..<slash]), String(path[path.index(after: slash)...]))
    }

    static func digest(of file: FileDescriptor) throws -> SHA256Digest {
        let hasher = SHA256Hasher()
        try FileIO.forEachChunk(of: file) { hasher.update($0) }
        return hasher.finalize()
    }
}

/// An exclusive `flock` on a lock file (mode 0600: no other user can hold it): one promoter per package at a time,
/// across processes. Released on `release()` or when the process dies (a `kill -9` leaves no stale lock).
final class PackageLock {
    private let file: FileDescriptor

    /// nil when another process holds it.
    init?(directory: DirectoryHandle, name: String) throws {
        let fd = FileDescriptor.retryOnInterrupt { openat(directory.fd, name, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600) }
        guard fd >= 0 else { throw FileDescriptor.ioError("Cannot open the lock \(directory.path)/\(name)", path: directory.path + "/" + name) }
        file = FileDescriptor(raw: fd, path: directory.path + "/" + name)
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            if code == EWOULDBLOCK { return nil }
            throw ContinuonPackError(.ioError, "Cannot lock \(directory.path)/\(name): \(String(cString: strerror(code))).")
        }
    }

    func release() { try? file.close() }
}

/// Reads a staged package for the verifier and hashes every byte it reads: the marker names the bytes verified.
public final class HashingStream: PackageStream {
    /// Bytes handed to the hashing queue: owned by it from then on.
    private final class Chunk: @unchecked Sendable {
        let bytes: [UInt8]
        init(_ bytes: [UInt8]) { self.bytes = bytes }
    }

    /// The hasher, used only on `queue`.
    private final class Hasher: @unchecked Sendable {
        let sha256 = SHA256Hasher()
    }

    private let package: any StagedPackage
    private let hasher = Hasher()
    // The package's SHA-256 is computed on a thread of its own while the verifier reads on: verification already
    // keeps one core busy, and this hash is a third full pass over the bytes. At most 8 chunks wait.
    private let queue = DispatchQueue(label: "continuon-pack.promote.package-hash")
    private let slots = DispatchSemaphore(value: 8)
    public private(set) var size: UInt64 = 0

    public init(_ package: any StagedPackage) { self.package = package }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let count = try package.read(into: buffer)
        guard count > 0 else { return 0 }
        let chunk = Chunk(Array(UnsafeRawBufferPointer(rebasing: buffer[0..<count])))
        slots.wait()
        queue.async { [hasher, slots] in
            hasher.sha256.update(chunk.bytes)
            slots.signal()
        }
        size += UInt64(count)
        return count
    }

    /// Call once, after the verifier read everything (it reads to the end of the package).
    public func digest() -> SHA256Digest { queue.sync { hasher.sha256.finalize() } }

    deinit { queue.sync {} }
}

/// Writes each blob aside as the verifier hands it over (`BlobSink`): into `directory`, each file fsynced at the
/// blob's end on other threads (several at once, so the file system can commit them together), so that verification
/// goes on with the next blob while the disk catches up. `finish()` waits for every fsync; only then may the blobs
/// be published. (Starting write-back as bytes arrive, with `sync_file_range` per chunk, made it slower here.)
final class BlobStager: BlobSink {
    private let directory: DirectoryHandle
    private var current: FileDescriptor?
    private let syncer = BackgroundSyncer()
    /// Set when the package's blobs cannot all be files (`a` and `a/b`): a refusal, not an I/O error.
    private(set) var refusal: ContinuonPackError?

    init(directory: DirectoryHandle) { self.directory = directory }

    func beginBlob(_ blob: BlobDescriptor) throws {
        let (parent, leaf) = DirectoryPromoter.split(blob.path)
        do {
            current = try directory.descend(parent).createFile(leaf)
        } catch let error as ContinuonPackError where error.code == .promoteConflict {
            refusal = ContinuonPackError(.promoteConflict, "The blob \(quoted(blob.path)) cannot be a file beside the package's other blobs (one path is the directory of another).")
            throw error
        }
    }

    func blobBytes(_ bytes: UnsafeRawBufferPointer) throws {
        guard let current else { return }
        try current.writeAll(bytes)
    }

    func endBlob(_ blob: BlobDescriptor) throws {
        guard let file = current else { return }
        current = nil
        try syncer.syncAndClose(file)
    }

    /// Waits until every blob is fsynced and closed.
    /// - Throws: the first fsync or close error (`io.error`).
    func finish() throws {
        try current?.close()
        current = nil
        try syncer.finish()
    }
}

/// Fsyncs and closes files on a concurrent queue of its own, at most `limit` waiting at once (each holds a
/// descriptor).
final class BackgroundSyncer {
    /// A file handed to the queue: owned by it from then on.
    private final class Handoff: @unchecked Sendable {
        let file: FileDescriptor
        init(_ file: FileDescriptor) { self.file = file }
    }

    /// The first fsync or close error, shared with the queue.
    private final class FirstError: Sendable {
        let value = Mutex<(any Error)?>(nil)
    }

    private let queue = DispatchQueue(label: "continuon-pack.promote.sync", attributes: .concurrent)
    private let group = DispatchGroup()
    private let slots: DispatchSemaphore
    private let firstError = FirstError()

    init(limit: Int = 32) { slots = DispatchSemaphore(value: limit) }

    /// Queues `file` to be fsynced and closed; waits while `limit` files are queued already.
    /// - Throws: an earlier file's fsync or close error.
    func syncAndClose(_ file: FileDescriptor) throws {
        try firstError.value.withLock { if let error = $0 { throw error } }
        slots.wait()
        group.enter()
        let handoff = Handoff(file)
        queue.async { [group, slots, firstError] in
            do {
                try handoff.file.sync()
                try handoff.file.close()
            } catch {
                firstError.value.withLock { if $0 == nil { $0 = error } }
            }
            slots.signal()
            group.leave()
        }
    }

    /// Waits for every queued file.
    /// - Throws: the first fsync or close error.
    func finish() throws {
        group.wait()
        try firstError.value.withLock { if let error = $0 { throw error } }
    }

    deinit { group.wait() }
}

