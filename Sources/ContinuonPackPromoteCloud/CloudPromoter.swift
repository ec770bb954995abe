import ContinuonPack
import ContinuonPackPromote
import ContinuonPackUpload
import Foundation

/// Promotes into a Cloud Storage training area, `gs://BUCKET/PREFIX`: objects
/// `PREFIX<environment_id>/<package_id>/<blob path>` and the marker `…/_provenance.json` (spec section 13).
///
/// Nothing is ever deleted from a bucket, so nothing may be committed before the package is known valid. Each blob
/// is sent, as the verifier checks it, into a resumable session opened with `ifGenerationMatch=0` and fed in 8 MiB
/// pieces of unknown total (`bytes a-b/*`); the last piece (under 8 MiB) is kept in a local file. Only after the
/// whole package verified does each session get its last piece with the total, which creates the object. A refused
/// package leaves only unfinished sessions, which Cloud Storage drops after a week: no object. A name that exists
/// already (412) counts as done when its size and CRC-32C are this blob's, else `promote.conflict`. The marker is
/// one create-only upload after every blob's object exists.
public struct CloudPromoter: Promoter {
    public let staging: any StagingArea
    public let client: CloudStorageClient
    public let prefix: String
    public var verifier: PackageVerifier
    public var shard = Shard.all
    /// The time written into markers.
    public var now: () throws -> String = { try PackageWriter.createdAt() }
    /// Where the blobs' last pieces wait for the verdict (a temporary file, removed after each package).
    public var scratch: String = NSTemporaryDirectory()

    /// - Parameters:
    ///   - client: its target names the training bucket.
    ///   - prefix: the objects' name prefix ("" or ending in `/`).
    public init(staging: any StagingArea, client: CloudStorageClient, prefix: String, verifier: PackageVerifier) {
        self.staging = staging
        self.client = client
        self.prefix = prefix
        var checking = verifier
        checking.checkTFRecords = true
        self.verifier = checking
    }

    public var location: String { "gs://\(client.target.bucket)/\(prefix)" }

    public func promote(packageID: String) throws -> PromotionOutcome {
        guard isPackageID(packageID) else {
            throw ContinuonPackError(.promoteNameMismatch, "\(packageID) is not a package ID (64 lowercase hex digits).")
        }
        let stagedPath = staging.location + packageID + ".cpkg"
        let client = self.client
        // The environment from the envelope (the same pinned bytes the verifier reads next); the marker there means
        // promoted (the package ID covers the environment ID).
        guard let contents = try? PackageInspector.inspect(stream: try staging.open(packageID: packageID), path: stagedPath),
              FormatRules.isValidIdentifier(contents.manifest.provenance.environmentID),
              contents.manifest.packageID == packageID
        else {
            // Unreadable as a package: let verification say why.
            let report = try verifier.verify(stream: try staging.open(packageID: packageID), name: stagedPath)
            return .refused(packageID, nil, report.valid
                ? [ContinuonPackError(.promoteNameMismatch, "\(stagedPath) does not hold the package \(packageID).")]
                : report.failures)
        }
        let environment = contents.manifest.provenance.environmentID
        let directory = prefix + environment + "/" + packageID + "/"
        let markerName = directory + PromotionMarker.fileName
        if case .found = try blocking({ try await retrying { try await client.object(named: markerName) } }) {
            return .alreadyPromoted(packageID, environment)
        }

        let tails = try TailFile(directory: scratch)
        defer { tails.remove() }
        let file = HashingStream(try staging.open(packageID: packageID))
        let stager = CloudBlobStager(client: client, directory: directory, tails: tails)
        let report = try verifier.verify(stream: file, name: stagedPath, sink: stager)
        let manifest: Manifest
        switch PromotionVerdict(report: report, packageID: packageID, stagedPath: stagedPath) {
        case let .refuse(outcome): return outcome
        case let .publish(valid): manifest = valid
        }
        // The objects were named after the inspected environment: the verified one must be it (the same pinned bytes).
        guard manifest.provenance.environmentID == environment else {
            return .refused(packageID, environment, [ContinuonPackError(
                .promoteNameMismatch, "\(stagedPath) changed while it was read (environment \(manifest.provenance.environmentID), not \(environment)).")])
        }
        // The verdict is in: create every blob's object.
        for entry in stager.entries {
            if let conflict = try stager.finish(entry) {
                return .refused(packageID, environment, [conflict])
            }
            CrashPoint.reach("promote.cloud_blob")
        }
        let marker = PromotionMarker(manifest: manifest, report: report, package: file, promotedAt: try now())
        let created = try stager.createSmallObject(markerName, bytes: marker.bytes)
        return created ? .promoted(packageID, manifest) : .alreadyPromoted(packageID, environment)
    }
}

/// A local file the blobs' last pieces are appended to while the package is verified.
final class TailFile {
    let path: String
    private let handle: FileHandle
    private(set) var length: UInt64 = 0

    init(directory: String) throws {
        path = directory + "/continuon-pack-promote-" + UUID().uuidString + ".tails"
        guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600]),
              let handle = FileHandle(forWritingAtPath: path)
        else { throw ContinuonPackError(.ioError, "Cannot create \(path).") }
        self.handle = handle
    }

    /// Appends `bytes`; returns their offset.
    func append(_ bytes: Data) throws -> UInt64 {
        let offset = length
        try handle.write(contentsOf: bytes)
        length += UInt64(bytes.count)
        return offset
    }

    func remove() {
        try? handle.close()
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Feeds each blob into its resumable session as it is verified; creates the objects only when asked.
final class CloudBlobStager: BlobSink {
    struct Entry {
        let name: String
        let size: UInt64
        /// nil when the name existed at initiation (412): compared at the end instead.
        let session: URL?
        let sent: UInt64
        let tailOffset: UInt64
        let tailLength: Int
        let crc32c: String
    }

    static let piece = 8 << 20

    private let client: CloudStorageClient
    private let directory: String
    private let tails: TailFile
    private(set) var entries: [Entry] = []
    private var name = ""
    private var session: URL?
    private var buffer = Data()
    private var sent: UInt64 = 0
    private var crc = CRC32(castagnoli: true)

    init(client: CloudStorageClient, directory: String, tails: TailFile) {
        self.client = client
        self.directory = directory
        self.tails = tails
    }

    func beginBlob(_ blob: BlobDescriptor) throws {
        name = directory + blob.path
        buffer = Data()
        sent = 0
        crc = CRC32(castagnoli: true)
        guard let url = client.target.initiateURL(objectName: name) else {
            throw ContinuonPackError(.ioError, "Cannot make an upload URL for \(name).")
        }
        let client = self.client
        let response = try blocking { try await retrying {
            try await client.send("POST", url, headers: [
                "Content-Type": "application/json; charset=UTF-8", "X-Upload-Content-Type": "application/octet-stream",
            ], body: Data("{}".utf8))
        } }
        switch response.status {
        case 200, 201:
            guard let location = response.header("Location").flatMap(URL.init(string:)) else {
                throw ContinuonPackError(.ioError, "Cloud Storage answered the upload of \(name) without a session.")
            }
            session = location
        case 412: session = nil
        default: throw refusal(response, "starting the upload of \(name)")
        }
    }

    func blobBytes(_ bytes: UnsafeRawBufferPointer) throws {
        crc.update(bytes)
        guard session != nil else { return }
        buffer.append(contentsOf: bytes)
        while buffer.count > Self.piece {
            try send(buffer.prefix(Self.piece), total: nil)
            buffer.removeFirst(Self.piece)
        }
    }

    func endBlob(_ blob: BlobDescriptor) throws {
        let offset = try tails.append(session == nil ? Data() : buffer)
        entries.append(Entry(name: name, size: blob.size, session: session, sent: sent, tailOffset: offset,
                             tailLength: session == nil ? 0 : buffer.count, crc32c: crc.bigEndianBase64))
        buffer = Data()
    }

    /// One non-final piece (`bytes a-b/*`), which the session must then hold.
    private func send(_ piece: Data, total: UInt64?) throws {
        guard let session else { return }
        let range = "bytes \(sent)-\(sent + UInt64(piece.count) - 1)/*"
        let client = self.client
        let response = try blocking { try await retrying {
            try await client.send("PUT", session, headers: ["Content-Range": range], body: piece)
        } }
        guard response.status == 308, response.header("Range") == "bytes=0-\(sent + UInt64(piece.count) - 1)" else {
            throw refusal(response, "sending \(name)")
        }
        sent += UInt64(piece.count)
    }

    /// Creates the entry's object (its last piece, with the total), or compares an existing one.
    /// - Returns: `promote.conflict` when the name holds other bytes.
    func finish(_ entry: Entry) throws -> ContinuonPackError? {
        let client = self.client
        if let session = entry.session {
            let range = entry.size == 0 || entry.tailLength == 0
                ? "bytes */\(entry.size)" : "bytes \(entry.sent)-\(entry.size - 1)/\(entry.size)"
            let body = FileRange(path: tails.path, offset: entry.tailOffset, length: entry.tailLength)
            let response = try blocking { try await retrying {
                try await client.send("PUT", session, headers: ["Content-Range": range], body: body)
            } }
            switch response.status {
            case 200, 201: return nil
            case 412: break
            default: throw refusal(response, "creating \(entry.name)")
            }
        }
        let name = entry.name
        guard case let .found(object) = try blocking({ try await retrying { try await client.object(named: name) } }) else {
            throw ContinuonPackError(.ioError, "\(name) exists (412) but cannot be read to compare it.")
        }
        if case let .string(size)? = object["size"], size == String(entry.size),
           case let .string(crc32c)? = object["crc32c"], crc32c == entry.crc32c {
            return nil
        }
        return ContinuonPackError(.promoteConflict, "gs://\(client.target.bucket)/\(name) exists with other bytes than this package's blob; it is never overwritten.")
    }

    /// A create-only one-request upload; false when the name exists.
    func createSmallObject(_ name: String, bytes: [UInt8]) throws -> Bool {
        guard var components = client.target.initiateURL(objectName: name).flatMap({ URLComponents(url: $0, resolvingAgainstBaseURL: false) }) else {
            throw ContinuonPackError(.ioError, "Cannot make an upload URL for \(name).")
        }
        components.queryItems = components.queryItems?.map { $0.name == "uploadType" ? URLQueryItem(name: "uploadType", value: "media") : $0 }
        guard let url = components.url else { throw ContinuonPackError(.ioError, "Cannot make an upload URL for \(name).") }
        let client = self.client
        let response = try blocking { try await retrying {
            // octet-stream, as every object here: gcp-storage-emulator drops a media upload sent as application/json.
            try await client.send("POST", url, headers: ["Content-Type": "application/octet-stream"], body: Data(bytes))
        } }
        switch response.status {
        case 200, 201: return true
        case 412: return false
        default: throw refusal(response, "creating \(name)")
        }
    }

    private func refusal(_ response: CloudStorageResponse, _ what: String) -> ContinuonPackError {
        ContinuonPackError(.ioError, "Cloud Storage refused \(what) (HTTP \(response.status)).")
    }
}
