import ContinuonPack
import ContinuonPackUpload
import Foundation

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

/// Where verified packages are committed.
public protocol IngestStore: Sendable {
    /// The object of that name, if the store holds one.
    func lookup(_ name: String) async throws -> StoredObject?
    /// Commits the verified package at `spoolPath` under `object.name`, never replacing an existing object.
    func commit(spoolPath: String, object: StoredObject) async throws -> CommitOutcome
    /// A local path to read the object's bytes from, if the store can serve them.
    func contentPath(_ name: String) async -> String?
}

public enum CommitOutcome: Sendable, Equatable {
    case stored
    /// The store already held the same bytes.
    case alreadyStored
    /// The store holds different bytes under that name.
    case conflict(StoredObject)
}

/// A local directory: `DIR/<name>` is the package, `DIR/<name>.json` its object resource. Commit is a hard link
/// from the spool (same file system), which never replaces an existing file, so several processes can share it.
public struct LocalDirectoryStore: IngestStore {
    public let directory: String

    public init(directory: String) throws {
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    public func lookup(_ name: String) async throws -> StoredObject? {
        let path = directory + "/" + name
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        if let bytes = try? FileIO.readFile(path + ".json", limit: 1 << 16),
           let value = try? StrictJSONParser.parse(bytes), let object = StoredObject(json: value) {
            return object
        }
        // The sidecar is written after the package: recompute it if a crash came between.
        var checksums = TransferChecksums()
        try FileIO.forEachChunk(of: path) { checksums.update($0) }
        return StoredObject(name: name, bucket: "", checksums: checksums.finalize(), keyIDs: [])
    }

    public func commit(spoolPath: String, object: StoredObject) async throws -> CommitOutcome {
        let path = directory + "/" + object.name
        do {
            guard link(spoolPath, path) == 0 else {
                if errno == EEXIST { throw ContinuonPackError(.outputExists, "exists") }
                throw ContinuonPackError(.ioError, "Cannot store \(object.name).", cause: String(cString: strerror(errno)))
            }
            chmod(path, 0o644)
            try FileIO.syncDirectory(directory)
        } catch let error as ContinuonPackError where error.code == .outputExists {
            guard let existing = try await lookup(object.name) else { throw error }
            return existing.sha256 == object.sha256 || (existing.md5Base64 == object.md5Base64 && existing.size == object.size)
                ? .alreadyStored : .conflict(existing)
        }
        try? FileIO.writeNewFile(CanonicalJSON.encodePretty(object.jsonValue), to: path + ".json", mode: 0o644)
        return .stored
    }

    public func contentPath(_ name: String) async -> String? {
        let path = directory + "/" + name
        return FileManager.default.fileExists(atPath: path) ? path : nil
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

    public func lookup(_ name: String) async throws -> StoredObject? {
        guard let url = target.objectURL(objectName: target.prefix + name) else { return nil }
        var headers: [String: String] = [:]
        if let token = target.bearerToken { headers["Authorization"] = "Bearer " + token }
        let response = try await URLSessionTransport().send(method: "GET", url: url, headers: headers, body: nil)
        guard response.status == 200, let value = try? StrictJSONParser.parse(Array(response.body)) else { return nil }
        return StoredObject(json: value)
    }

    public func commit(spoolPath: String, object: StoredObject) async throws -> CommitOutcome {
        let outbox = try Outbox(directory: forwardingOutbox)
        let entry = try outbox.add(packageAt: spoolPath)
        let state = try await Uploader(outbox: outbox, target: target).upload(packageID: entry.packageID)
        switch state.phase {
        case .acknowledged:
            try outbox.removeAcknowledged()
            return .stored
        case .rejected where state.rejectionStatus == 412:
            let existing = try await lookup(object.name)
            return .conflict(existing ?? object)
        default:
            throw ContinuonPackError(
                .uploadIncomplete, "Forwarding \(object.name) to the bucket did not finish: \(state.lastError ?? state.phase.rawValue).")
        }
    }

    public func contentPath(_ name: String) async -> String? { nil }
}
