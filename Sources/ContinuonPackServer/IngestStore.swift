import ContinuonPack
import ContinuonPackIngest
import ContinuonPackUpload
import Foundation
import NIOCore

/// What a stored object looks like to clients (the Cloud Storage object resource subset).
public struct StoredObject: Sendable, Equatable {
    public var name: String
    public var bucket: String
    public var size: UInt64
    public var md5Base64: String
    public var crc32cBase64: String
    public var sha256: String
    public var keyIDs: [String]

    var jsonValue: JSONValue {
        .object([
            ("kind", .string("storage#object")), ("name", .string(name)), ("bucket", .string(bucket)),
            ("size", .string(String(size))), ("md5Hash", .string(md5Base64)), ("crc32c", .string(crc32cBase64)),
            ("generation", .string("1")),
            ("metadata", .object([
                ("package_id", .string(String(name.dropLast(".cpkg".count)))), ("sha256", .string(sha256)),
                ("key_ids", .string(keyIDs.joined(separator: ","))),
            ])),
        ])
    }

    init(name: String, bucket: String, checksums: TransferChecksums.Result, keyIDs: [String]) {
        self.name = name
        self.bucket = bucket
        self.size = checksums.size
        self.md5Base64 = checksums.md5Base64
        self.crc32cBase64 = checksums.crc32cBase64
        self.sha256 = checksums.sha256
        self.keyIDs = keyIDs
    }

    init?(json value: JSONValue) {
        func string(_ key: String, in object: JSONValue? = nil) -> String? {
            if case let .string(text)? = (object ?? value)[key] { return text }
            return nil
        }
        guard let name = string("name"), let bucket = string("bucket"), let size = string("size").flatMap(UInt64.init),
              let md5 = string("md5Hash"), let crc = string("crc32c")
        else { return nil }
        self.name = name
        self.bucket = bucket
        self.size = size
        self.md5Base64 = md5
        self.crc32cBase64 = crc
        let metadata = value["metadata"]
        self.sha256 = metadata.flatMap { string("sha256", in: $0) } ?? ""
        self.keyIDs = metadata.flatMap { string("key_ids", in: $0) }.map { $0.split(separator: ",").map(String.init) } ?? []
    }
}

/// Where verified packages are committed. Stores take only validated names (`PackageObjectName`): no client text
/// is ever joined into a path or an object name.
public protocol IngestStore: Sendable {
    /// The object of that name, if the store holds one.
    func lookup(_ name: PackageObjectName) async throws -> StoredObject?
    /// Commits the verified package at `spoolPath` under `object.name`, never replacing an existing object.
    func commit(spoolPath: String, object: StoredObject) async throws -> CommitOutcome
    /// The object's bytes, opened for reading, if the store holds it and can serve them.
    func openContent(_ name: PackageObjectName) async throws -> StoredContent?
}

/// A stored object's bytes, open for reading (one descriptor, closed when the value is released).
public final class StoredContent: @unchecked Sendable {
    private let file: ContinuonPack.FileDescriptor
    public let size: UInt64

    init(file: ContinuonPack.FileDescriptor, size: UInt64) {
        self.file = file
        self.size = size
    }

    /// Reads up to `buffer.count` bytes at `offset`; 0 at the end.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int {
        try file.read(into: buffer, at: Int64(offset))
    }

    static let chunkSize = 64 * 1024

    /// The next bytes from `offset` (at most 64 KiB, so that a slow reader shows progress often), read on NIO's thread pool.
    /// - Throws: `io.error` when the file ends before `size` (it shrank) or cannot be read.
    func chunk(at offset: UInt64) async throws -> ByteBuffer {
        try await blocking { try self.readChunk(at: offset) }
    }

    private func readChunk(at offset: UInt64) throws -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: Self.chunkSize)
        let count = try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: Self.chunkSize) { bytes in
            try file.read(into: UnsafeMutableRawBufferPointer(rebasing: bytes.prefix(Self.chunkSize)), at: Int64(offset))
        }
        guard count > 0 else { throw ContinuonPackError(.ioError, "A stored object is shorter than when it was opened.") }
        return buffer
    }
}

public enum CommitOutcome: Sendable, Equatable {
    case stored
    /// The store already held the same bytes.
    case alreadyStored
    /// The store holds different bytes under that name.
    case conflict(StoredObject)
    /// The store holds an object under that name that the service's credentials may not read (objectCreator only):
    /// it could not be compared.
    case existsUnverified
}

/// A local directory: `DIR/<name>` is the package, `DIR/<name>.json` its object resource. Commit is a hard link
/// from the spool (same file system), which never replaces an existing file, so several processes can share it.
public struct LocalDirectoryStore: IngestStore {
    public let directory: String

    public init(directory: String) throws {
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    public func lookup(_ name: PackageObjectName) async throws -> StoredObject? {
        let path = directory + "/" + name.text
        return try await blocking {
            // Only a regular file this store created counts: never a symlink, a device or a FIFO.
            guard let (file, size) = try ContinuonPack.FileDescriptor.openRegularFile(path) else { return nil }
            if let (sidecar, sidecarSize) = try ContinuonPack.FileDescriptor.openRegularFile(path + ".json"), sidecarSize <= 1 << 16,
               let bytes = try? Self.readAll(sidecar, size: Int(sidecarSize)),
               let value = try? StrictJSONParser.parse(bytes), let object = StoredObject(json: value), object.name == name.text {
                return object
            }
            // The sidecar is written after the package: recompute it if a crash came between, and write it.
            var checksums = TransferChecksums()
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
            defer { buffer.deallocate() }
            var offset: UInt64 = 0
            while offset < size {
                let count = try file.read(into: buffer, at: Int64(offset))
                if count == 0 { break }
                checksums.update(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
                offset += UInt64(count)
            }
            let object = StoredObject(name: name.text, bucket: "", checksums: checksums.finalize(), keyIDs: [])
            try? FileIO.writeNewFile(CanonicalJSON.encodePretty(object.jsonValue), to: path + ".json", mode: 0o644)
            return object
        }
    }

    private static func readAll(_ file: ContinuonPack.FileDescriptor, size: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: size)
        var done = 0
        while done < size {
            let count = try bytes.withUnsafeMutableBytes {
                try file.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[done...]), at: Int64(done))
            }
            if count == 0 { break }
            done += count
        }
        return Array(bytes[0..<done])
    }

    public func commit(spoolPath: String, object: StoredObject) async throws -> CommitOutcome {
        guard let name = PackageObjectName(object.name) else {
            throw ContinuonPackError(.ioError, "Refusing to store an object whose name is not <package_id>.cpkg.")
        }
        let path = directory + "/" + name.text
        let directory = self.directory
        let linked: Bool = try await blocking {
            guard link(spoolPath, path) == 0 else {
                if errno == EEXIST { return false }
                throw ContinuonPackError(.ioError, "Cannot store \(name).", cause: String(cString: strerror(errno)))
            }
            chmod(path, 0o644)
            try FileIO.syncDirectory(directory)
            CrashPoint.reach("serve.store_linked")
            // Replaces a record that a concurrent lookup may have recomputed (without the key IDs) in between.
            Self.writeRecord(object, of: path)
            return true
        }
        if linked { return .stored }
        guard let existing = try await lookup(name) else {
            throw ContinuonPackError(.ioError, "\(name) exists in the store but is not a regular file.")
        }
        guard Self.sameBytes(existing, object) else { return .conflict(existing) }
        if existing.keyIDs.isEmpty && !object.keyIDs.isEmpty {
            // The record was recomputed without the key IDs (a crash came between the link and the record).
            try? await blocking { Self.writeRecord(object, of: path) }
        }
        return .alreadyStored
    }

    /// Writes (or replaces) the object record `<package>.json` beside the package at `path`; best effort: a lookup
    /// recomputes a missing one.
    private static func writeRecord(_ object: StoredObject, of path: String) {
        try? FileIO.replaceFile(CanonicalJSON.encodePretty(object.jsonValue), at: path + ".json", mode: 0o644)
    }

    /// SHA-256 decides when both records have it; MD5 and size only when one does not.
    static func sameBytes(_ a: StoredObject, _ b: StoredObject) -> Bool {
        if !a.sha256.isEmpty && !b.sha256.isEmpty { return a.sha256 == b.sha256 && a.size == b.size }
        return a.md5Base64 == b.md5Base64 && a.size == b.size
    }

    public func openContent(_ name: PackageObjectName) async throws -> StoredContent? {
        let path = directory + "/" + name.text
        return try await blocking {
            try ContinuonPack.FileDescriptor.openRegularFile(path).map { StoredContent(file: $0.file, size: $0.size) }
        }
    }
}

/// A Cloud Storage bucket (or an emulator): verified packages are forwarded with continuon-pack's own resumable
/// uploader (`ifGenerationMatch=0`, so among several `serve` processes exactly one creates each object).
public struct CloudStorageStore: IngestStore {
    public let target: UploadTarget
    public let forwardingOutbox: String

    public init(target: UploadTarget, spoolDirectory: String) throws {
        self.target = target
        self.forwardingOutbox = spoolDirectory + "/forward"
        try FileManager.default.createDirectory(atPath: spoolDirectory, withIntermediateDirectories: true)
        _ = try Outbox(directory: forwardingOutbox)
    }

    /// The object's record, when these credentials may read it. With objectCreator-only credentials (403) the
    /// answer is "unknown", taken as absent: the create-only commit then decides (`412` for an existing object).
    public func lookup(_ name: PackageObjectName) async throws -> StoredObject? {
        guard case let .found(value) = try await CloudStorageClient(target: target).object(named: target.prefix + name.text)
        else { return nil }
        return StoredObject(json: value)
    }

    public func commit(spoolPath: String, object: StoredObject) async throws -> CommitOutcome {
        let outbox = try Outbox(directory: forwardingOutbox)
        let added = Result { try outbox.add(packageAt: spoolPath) }
        if case let .failure(error as ContinuonPackError) = added, error.code == .outboxConflict,
           let name = PackageObjectName(object.name), let receipt = try? outbox.state(of: name.packageID) {
            // The service's own receipt: the bucket holds other bytes under this package ID.
            var existing = object
            existing.size = receipt.size
            existing.sha256 = receipt.sha256
            existing.md5Base64 = receipt.md5Base64
            existing.crc32cBase64 = receipt.crc32cBase64
            existing.keyIDs = []
            return .conflict(existing)
        }
        var entry = try added.get()
        // A client's new commit is a new attempt: an earlier refusal by the bucket (rights, an outage's 4xx) is not
        // the final word for it.
        if entry.phase == .rejected { entry = try outbox.retry(packageID: entry.packageID) }
        let state = try await Uploader(outbox: outbox, target: target).upload(packageID: entry.packageID)
        switch state.phase {
        case .acknowledged:
            try outbox.removeAcknowledged()
            return .stored
        case .existsUnverified:
            return .existsUnverified
        case .rejected where state.rejectionStatus == 412:
            var existing: StoredObject?
            if let name = PackageObjectName(object.name) { existing = try await lookup(name) }
            return .conflict(existing ?? object)
        default:
            throw ContinuonPackError(
                .uploadIncomplete, "Forwarding \(object.name) to the bucket did not finish: \(state.lastError ?? state.phase.rawValue).")
        }
    }

    public func openContent(_ name: PackageObjectName) async throws -> StoredContent? { nil }
}

