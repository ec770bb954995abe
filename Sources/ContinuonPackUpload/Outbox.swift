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
    /// Adding the same bytes again returns the existing entry.
    /// - Throws: `io.error`; `outbox.conflict` when the outbox holds different bytes under the same package ID;
    ///   the inspection codes when the file is not a package.
    @discardableResult
    public func add(packageAt path: String) throws -> OutboxState {
        let packageID = try PackageInspector.inspect(path: path).manifest.packageID
        guard Hex.isLowercaseDigest(packageID) else {
            throw ContinuonPackError(.manifestDigest, "The package ID in \(path) is not 64 lowercase hex digits.")
        }
        return try add(fileAt: path, packageID: packageID)
    }

    /// Adds any file under a given ID (the transfer itself does not look inside packages).
    @discardableResult
    func add(fileAt path: String, packageID: String) throws -> OutboxState {
        var state = try Self.fingerprint(path: path, packageID: packageID)
        if let existing = try? self.state(of: packageID) {
            guard existing.sha256 == state.sha256 else {
                throw ContinuonPackError(
                    .outboxConflict, "The outbox already holds different bytes for package \(packageID).")
            }
            return existing
        }
        let staging = directory + "/.adding-" + packageID + "-" + String(UInt32.random(in: .min ... .max), radix: 16)
        guard mkdir(staging, 0o700) == 0 else { throw FileDescriptor.ioError("Cannot create \(staging)", path: staging) }
        do {
            if link(path, staging + "/package.cpkg") != 0 {
                try FileIO.copyFile(from: path, to: staging + "/package.cpkg")
            }
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
            if let existing = try? self.state(of: packageID), existing.sha256 == state.sha256 { return existing }
            throw error
        }
        return state
    }

    /// Size, SHA-256, MD5 and CRC-32C of a file in one pass.
    static func fingerprint(path: String, packageID: String) throws -> OutboxState {
        var checksums = TransferChecksums()
        try FileIO.forEachChunk(of: path) { checksums.update($0) }
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

    /// Deletes the packages of acknowledged entries (their state record stays, as a receipt).
    @discardableResult
    public func removeAcknowledged() throws -> [String] {
        var removed: [String] = []
        for entry in try entries() where entry.phase == .acknowledged {
            guard let lock = try self.lock(entry.packageID) else { continue }
            if unlink(packagePath(entry.packageID)) == 0 { removed.append(entry.packageID) }
            withExtendedLifetime(lock) {}
        }
        if !removed.isEmpty { try FileIO.syncDirectory(directory) }
        return removed
    }

    /// Takes the entry's lock without waiting; nil when another process holds it.
    func lock(_ packageID: String) throws -> EntryLock? {
        try EntryLock(path: entryDirectory(packageID) + "/lock")
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
