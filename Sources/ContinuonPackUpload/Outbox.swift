import ContinuonPack
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A directory of packages waiting to be uploaded, each with its durable state:
///
/// ```
/// OUTBOX/<package_id>/package.cpkg   the outbox's own hard link or copy (the caller may delete theirs)
/// OUTBOX/<package_id>/state.json     OutboxState, replaced atomically (temp, fsync, rename, fsync dir)
/// OUTBOX/<package_id>/lock           flock(2): one uploader per entry across processes
/// OUTBOX/<package_id>/superseded/<sha256>.cpkg   rejected bytes a re-signed package replaced (kept until acknowledged)
/// OUTBOX/<package_id>/incoming-<sha256>.cpkg     new bytes while they replace rejected ones (see `supersede`)
/// ```
///
/// Nothing here deletes a package except `removeAcknowledged`, which the caller asks for explicitly.
public struct Outbox: Sendable {
    public let directory: String

    /// Opens (creating if needed) the outbox at `directory`.
    public init(directory: String) throws {
        self.directory = directory.hasSuffix("/") && directory.count > 1 ? String(directory.dropLast()) : directory
        if mkdir(self.directory, 0o700) != 0 && errno != EEXIST {
            throw FileDescriptor.ioError("Cannot create the outbox \(self.directory)", path: self.directory)
        }
    }

    /// `$CONTINUON_PACK_OUTBOX`, else `$XDG_DATA_HOME/continuon-pack/outbox`, else
    /// `~/.local/share/continuon-pack/outbox`.
    public static func defaultDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let explicit = environment["CONTINUON_PACK_OUTBOX"], !explicit.isEmpty { return explicit }
        let data = environment["XDG_DATA_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (environment["HOME"] ?? NSHomeDirectory()) + "/.local/share"
        let parent = data + "/continuon-pack"
        _ = mkdir(data, 0o755)
        _ = mkdir(parent, 0o700)
        return parent + "/outbox"
    }

    func entryDirectory(_ packageID: String) -> String { directory + "/" + packageID }
    public func packagePath(_ packageID: String) -> String { entryDirectory(packageID) + "/package.cpkg" }
    func statePath(_ packageID: String) -> String { entryDirectory(packageID) + "/state.json" }

    // MARK: - Adding

    /// Adds a package: reads its package ID from the manifest, hashes the file once (SHA-256, MD5, CRC-32C), and
    /// publishes `<package_id>/` with a hard link (or a fsynced copy across file systems) and a `queued` state.
    ///
    /// Adding the same bytes again returns the existing entry. Adding other bytes under the package ID of a
    /// `rejected` entry (the same episodes re-signed, `PackageResigner`) supersedes it: the new bytes are queued and
    /// the rejected ones are kept under `superseded/` until the entry is acknowledged (`removeAcknowledged`).
    /// - Throws: `io.error`; `outbox.conflict` when the outbox holds different bytes under the same package ID in
    ///   an entry that is not rejected; `outbox.busy` when an uploader holds the entry; the inspection codes when
    ///   the file is not a package.
    @discardableResult
    public func add(packageAt path: String) throws -> OutboxState {
        try add(packageAt: path, cancellation: nil)
    }

    func add(packageAt path: String, cancellation: CancellationFlag?) throws -> OutboxState {
        let packageID = try PackageInspector.inspect(path: path).manifest.packageID
        guard Hex.isLowercaseDigest(packageID) else {
            throw ContinuonPackError(.manifestDigest, "The package ID in \(path) is not 64 lowercase hex digits.")
        }
        return try add(fileAt: path, packageID: packageID, cancellation: cancellation)
    }

    /// Adds any file under a given ID (the transfer itself does not look inside packages).
    @discardableResult
    func add(fileAt path: String, packageID: String, cancellation: CancellationFlag? = nil) throws -> OutboxState {
        let fresh = try Self.fingerprint(path: path, packageID: packageID, cancellation: cancellation)
        if let existing = try? self.state(of: packageID) {
            if existing.sha256 == fresh.sha256 { return existing }
            guard existing.phase == .rejected else { throw Self.conflict(existing) }
            let lock = try waitForLock(packageID)
            defer { withExtendedLifetime(lock) {} }
            try recover(packageID)
            let current = try state(of: packageID)
            if current.sha256 == fresh.sha256 { return current }
            guard current.phase == .rejected else { throw Self.conflict(current) }
            return try supersede(current, with: path, fresh: fresh)
        }
        var state = fresh
        let staging = directory + "/.adding-" + packageID + "-" + String(UInt32.random(in: .min ... .max), radix: 16)
        guard mkdir(staging, 0o700) == 0 else { throw FileDescriptor.ioError("Cannot create \(staging)", path: staging) }
        do {
            try Self.linkOrCopy(path, to: staging + "/package.cpkg")
            state.phase = .queued
            try FileIO.writeNewFile(CanonicalJSON.encodePretty(state.jsonValue), to: staging + "/state.json", mode: 0o600)
            try FileIO.syncDirectory(staging)
            guard rename(staging, entryDirectory(packageID)) == 0 else {
                throw FileDescriptor.ioError("Cannot publish the outbox entry \(packageID)", path: staging)
            }
            try FileIO.syncDirectory(directory)
        } catch {
            _ = unlink(staging + "/state.json")
            _ = unlink(staging + "/package.cpkg")
            _ = rmdir(staging)
            // Another process added the same package meanwhile; or other bytes, which the rules above decide.
            if (try? self.state(of: packageID)) != nil { return try add(fileAt: path, packageID: packageID) }
            throw error
        }
        return state
    }

    private static func conflict(_ existing: OutboxState) -> ContinuonPackError {
        ContinuonPackError(
            .outboxConflict,
            "The outbox already holds different bytes for package \(existing.packageID) (\(existing.phase.rawValue)); "
                + "only a rejected entry can be superseded by re-signed bytes.")
    }

    /// Replaces a rejected entry's bytes, crash-safely. The state record is the commit point:
    /// 1. the rejected bytes get a second name, `superseded/<sha256>.cpkg` (kept until acknowledgement);
    /// 2. the new bytes are linked or copied to `incoming-<sha256>.cpkg` and fsynced;
    /// 3. the state record names the new bytes (`queued`) and lists the old ones: from here on the new bytes count;
    /// 4. `incoming-<sha256>.cpkg` is renamed over `package.cpkg`.
    /// A crash before 3 leaves the entry rejected as it was (`recover` removes the stray incoming file); after 3,
    /// `recover` finishes step 4 before anything reads the package.
    private func supersede(_ current: OutboxState, with path: String, fresh: OutboxState) throws -> OutboxState {
        let entry = entryDirectory(current.packageID)
        let kept = entry + "/superseded"
        if mkdir(kept, 0o700) != 0 && errno != EEXIST { throw FileDescriptor.ioError("Cannot create \(kept)", path: kept) }
        let keptPath = kept + "/" + current.sha256 + ".cpkg"
        if link(packagePath(current.packageID), keptPath) != 0 && errno != EEXIST {
            throw FileDescriptor.ioError("Cannot keep the rejected package as \(keptPath)", path: keptPath)
        }
        try FileIO.syncDirectory(kept)
        CrashPoint.reach("supersede.kept")
        let incoming = incomingPath(current.packageID, sha256: fresh.sha256)
        _ = unlink(incoming)
        try Self.linkOrCopy(path, to: incoming)
        try FileIO.syncDirectory(entry)
        CrashPoint.reach("supersede.incoming")

        var next = fresh
        next.phase = .queued
        next.superseded = current.superseded + [OutboxState.Superseded(
            sha256: current.sha256, size: current.size, rejectionStatus: current.rejectionStatus,
            rejectionCode: current.rejectionCode)]
        next.lastError = "supersedes the rejected bytes \(current.sha256.prefix(12))…"
            + (current.rejectionCode.map { " (\($0))" } ?? "")
        try save(next)
        CrashPoint.reach("supersede.state_saved")
        try recover(current.packageID)
        CrashPoint.reach("supersede.done")
        return next
    }

    private func incomingPath(_ packageID: String, sha256: String) -> String {
        entryDirectory(packageID) + "/incoming-" + sha256 + ".cpkg"
    }

    /// Finishes or undoes an interrupted `supersede` (call with the entry's lock held): the incoming file that the
    /// state names becomes `package.cpkg`; any other incoming file is removed.
    func recover(_ packageID: String) throws {
        let entry = entryDirectory(packageID)
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: entry),
              names.contains(where: { $0.hasPrefix("incoming-") })
        else { return }
        let state = try self.state(of: packageID)
        for name in names where name.hasPrefix("incoming-") {
            if name == "incoming-" + state.sha256 + ".cpkg" {
                guard rename(entry + "/" + name, packagePath(packageID)) == 0 else {
                    throw FileDescriptor.ioError("Cannot finish replacing the package of \(packageID)", path: entry)
                }
            } else {
                _ = unlink(entry + "/" + name)
            }
        }
        try FileIO.syncDirectory(entry)
    }

    /// Queues a rejected (or `exists_unverified`) entry again, unchanged: after the service's trust or
    /// configuration was fixed, or with credentials that may read the existing object. Entries in any other state
    /// are returned as they are.
    /// - Throws: `outbox.unknown_entry` when there is no such entry; `outbox.busy` when an uploader holds it.
    @discardableResult
    public func retry(packageID: String) throws -> OutboxState {
        guard Hex.isLowercaseDigest(packageID), (try? state(of: packageID)) != nil else {
            throw ContinuonPackError(.outboxUnknownEntry, "The outbox has no entry \(ContinuonPackError.quote(packageID)).")
        }
        let lock = try waitForLock(packageID)
        defer { withExtendedLifetime(lock) {} }
        try recover(packageID)
        var state = try self.state(of: packageID)
        guard state.phase == .rejected || state.phase == .existsUnverified else { return state }
        let previous = [state.rejectionStatus.map(String.init), state.rejectionCode].compactMap { $0 }.joined(separator: " ")
        state.phase = .queued
        state.sessionURI = nil
        state.confirmed = 0
        state.attempts = 0
        state.lastError = "queued again after a rejection" + (previous.isEmpty ? "" : " (\(previous))")
        state.rejectionStatus = nil
        state.rejectionBody = nil
        state.rejectionCode = nil
        state.rejectionDetail = nil
        try save(state)
        return state
    }

    /// Links `source` to `destination`, or copies it (fsynced) when a link is not possible (another file system).
    private static func linkOrCopy(_ source: String, to destination: String) throws {
        if link(source, destination) != 0 {
            try FileIO.copyFile(from: source, to: destination)
        }
    }

    /// Size, SHA-256, MD5 and CRC-32C of a file in one pass.
    static func fingerprint(path: String, packageID: String, cancellation: CancellationFlag? = nil) throws -> OutboxState {
        var checksums = TransferChecksums()
        try FileIO.forEachChunk(of: path) {
            checksums.update($0)
            try cancellation?.check()
        }
        let sums = checksums.finalize()
        return OutboxState(
            packageID: packageID, size: sums.size, sha256: sums.sha256, md5Base64: sums.md5Base64,
            crc32cBase64: sums.crc32cBase64)
    }

    // MARK: - State

    public func state(of packageID: String) throws -> OutboxState {
        try OutboxState(json: try FileIO.readFile(statePath(packageID), limit: 1 << 20))
    }

    /// Replaces the state record atomically.
    func save(_ state: OutboxState) throws {
        try FileIO.replaceFile(CanonicalJSON.encodePretty(state.jsonValue), at: statePath(state.packageID), mode: 0o600)
    }

    /// Every entry, sorted by package ID. Entries being added by another process are not listed yet.
    public func entries() throws -> [OutboxState] {
        let names = try FileManager.default.contentsOfDirectory(atPath: directory)
        return names.filter { Hex.isLowercaseDigest($0) }.sorted().compactMap { try? state(of: $0) }
    }

    /// Deletes the packages of acknowledged entries, and the rejected bytes they superseded (their state record
    /// stays, as a receipt). Nothing of an entry that is not acknowledged is ever removed.
    @discardableResult
    public func removeAcknowledged() throws -> [String] {
        try removeAcknowledged(only: nil)
    }

    func removeAcknowledged(only packageID: String?) throws -> [String] {
        var removed: [String] = []
        for entry in try entries() where entry.phase == .acknowledged && (packageID == nil || entry.packageID == packageID) {
            guard let lock = try self.lock(entry.packageID) else { continue }
            defer { withExtendedLifetime(lock) {} }
            // Re-read under the lock: only what the server confirmed is given up.
            guard (try? state(of: entry.packageID))?.phase == .acknowledged else { continue }
            var any = unlink(packagePath(entry.packageID)) == 0
            CrashPoint.reach("release.package_removed")
            let kept = entryDirectory(entry.packageID) + "/superseded"
            for old in entry.superseded where unlink(kept + "/" + old.sha256 + ".cpkg") == 0 { any = true }
            if any {
                _ = rmdir(kept)
                try FileIO.syncDirectory(entryDirectory(entry.packageID))
                removed.append(entry.packageID)
            }
        }
        return removed
    }

    /// Takes the entry's lock without waiting; nil when another process holds it.
    func lock(_ packageID: String) throws -> EntryLock? {
        try EntryLock(path: entryDirectory(packageID) + "/lock")
    }

    /// Takes the entry's lock, waiting up to two seconds for an uploader that only looks at the entry.
    /// - Throws: `outbox.busy` when it is still held (an upload of the entry is in progress).
    private func waitForLock(_ packageID: String) throws -> EntryLock {
        for _ in 0..<40 {
            if let lock = try lock(packageID) { return lock }
            usleep(50_000)
        }
        throw ContinuonPackError(.outboxBusy, "An uploader is working on the outbox entry \(packageID); try again when it is done.")
    }
}

/// An exclusive `flock` on a file, released when the value is released (or the process dies).
final class EntryLock {
    private let fd: Int32

    init?(path: String) throws {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw FileDescriptor.ioError("Cannot open the lock \(path)", path: path) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            return nil
        }
        self.fd = fd
    }

    deinit {
        flock(fd, LOCK_UN)
        close(fd)
    }
}

extension Outbox {
    /// `add(packageAt:)` on a thread of its own (it hashes the whole package): the cooperative pool keeps serving
    /// other tasks meanwhile. Cancelling the task stops the hashing at its next buffer (`CancellationError`,
    /// nothing added).
    @discardableResult
    public func add(packageAt path: String) async throws -> OutboxState {
        try await runOnOwnThread { flag in try self.add(packageAt: path, cancellation: flag) }
    }

    /// Removes the package files of one acknowledged entry (and the rejected bytes it superseded); its state record
    /// stays as a receipt.
    /// - Throws: `outbox.unknown_entry`; `outbox.not_acknowledged` for any other state (nothing is removed before
    ///   the server confirmed the same bytes); `outbox.busy` when an uploader holds it.
    public func release(packageID: String) throws {
        guard Hex.isLowercaseDigest(packageID), let state = try? state(of: packageID) else {
            throw ContinuonPackError(.outboxUnknownEntry, "The outbox has no entry \(ContinuonPackError.quote(packageID)).")
        }
        guard state.phase == .acknowledged else {
            throw ContinuonPackError(.outboxNotAcknowledged, "The entry \(packageID) is \(state.phase.rawValue): its package is kept until the server confirms it.")
        }
        guard try lock(packageID) != nil else {
            throw ContinuonPackError(.outboxBusy, "An uploader is working on the outbox entry \(packageID).")
        }
        _ = try removeAcknowledged(only: packageID)
    }
}
