import ContinuonPack
import ContinuonPackUpload
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Logging
import ServiceLifecycle

/// How `continuon-pack serve` runs.
public struct IngestConfiguration: Sendable {
    public var host: String
    public var port: Int
    public var trustedKeys: [Ed25519PublicKey]
    public var threshold: Int
    /// The bucket name in request paths (the staging area).
    public var bucket: String
    /// Partial uploads (a directory on the same file system as a local store, so commits are renames/links).
    public var spoolDirectory: String
    public var maxPackageBytes: UInt64
    public var maxSessions: Int
    public var sessionExpiry: Duration
    /// A connection idle this long (mid-request too) is closed; the client resumes with a status query.
    public var idleTimeout: Duration
    public var limits: Limits

    public init(host: String, port: Int, trustedKeys: [Ed25519PublicKey], threshold: Int = 1, bucket: String = "staging",
                spoolDirectory: String, maxPackageBytes: UInt64 = 64 << 30, maxSessions: Int = 64,
                sessionExpiry: Duration = .seconds(24 * 3600), idleTimeout: Duration = .seconds(120),
                limits: Limits = .default) {
        self.host = host
        self.port = port
        self.trustedKeys = trustedKeys
        self.threshold = threshold
        self.bucket = bucket
        self.spoolDirectory = spoolDirectory
        self.maxPackageBytes = maxPackageBytes
        self.maxSessions = maxSessions
        self.sessionExpiry = sessionExpiry
        self.idleTimeout = idleTimeout
        self.limits = limits
    }
}

/// The ingestion endpoint: the Cloud Storage resumable-upload subset of docs/signed-ingestion.md section 12,
/// strictly, and a complete verification of every package before it is committed to the store. A refused upload
/// gets a 4xx with problem details and leaves nothing in the store.
public struct IngestServer: Sendable {
    public let configuration: IngestConfiguration
    public let store: any IngestStore
    let sessions: UploadSessions
    let logger: Logger
    let boundPort = BoundPort()

    public init(configuration: IngestConfiguration, store: any IngestStore, logger: Logger = Logger(label: "continuon-pack.serve")) throws {
        self.configuration = configuration
        self.store = store
        self.logger = logger
        self.sessions = UploadSessions(maxSessions: configuration.maxSessions, expiry: configuration.sessionExpiry)
        try FileManager.default.createDirectory(atPath: configuration.spoolDirectory, withIntermediateDirectories: true)
    }

    /// Serves until the process is asked to stop (SIGINT/SIGTERM). `onListening` receives the bound port.
    public func run(onListening: @escaping @Sendable (Int) -> Void = { _ in }) async throws {
        let router = Router()
        router.get("/healthz") { _, _ in "ok\n" }
        router.post("/upload/storage/v1/b/:bucket/o") { request, context in
            await self.respond { try await self.initiate(request, context) }
        }
        router.put("/upload/storage/v1/b/:bucket/o") { request, context in
            await self.respond { try await self.receive(request, context) }
        }
        router.get("/storage/v1/b/:bucket/o/:object") { request, context in
            await self.respond { try await self.objectMetadata(request, context) }
        }
        let expirer = Expirer(sessions: sessions)
        let idle = TimeAmount.seconds(configuration.idleTimeout.components.seconds)
        let app = Application(
            router: router,
            server: .http1(configuration: .init(idleTimeout: idle)),
            configuration: ApplicationConfiguration(
                address: .hostname(configuration.host, port: configuration.port), serverName: "continuon-pack"),
            services: [expirer],
            onServerRunning: { [boundPort] channel in
                let port = channel.localAddress?.port ?? configuration.port
                boundPort.set(port)
                onListening(port)
            },
            logger: logger)
        try await app.runService()
    }

    var verifier: PackageVerifier {
        PackageVerifier(trustedKeys: configuration.trustedKeys, threshold: configuration.threshold, limits: configuration.limits)
    }

    private func respond(_ body: () async throws -> Response) async -> Response {
        do {
            return try await body()
        } catch let problem as Problem {
            return problem.response
        } catch {
            logger.error("internal error", metadata: ["error": "\(error)"])
            return Problem(500, "server.internal", "The service failed.", detail: "\(error)").response
        }
    }

    // MARK: - Initiate

    private func initiate(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        var request = request
        try checkBucket(context)
        let query = request.uri.queryParameters
        guard query.get("uploadType") == "resumable" else {
            throw Problem(400, "upload.unsupported", "Only resumable uploads (uploadType=resumable) are accepted.")
        }
        guard query.get("ifGenerationMatch") == "0" else {
            throw Problem(400, "upload.precondition_required", "Uploads must be create-only (ifGenerationMatch=0).")
        }
        let body = try await request.collectBody(upTo: 64 * 1024)
        var metadata: JSONValue = .object([])
        if body.readableBytes > 0 {
            guard let parsed = try? StrictJSONParser.parse(Array(body.readableBytesView)) else {
                throw Problem(400, "upload.metadata_invalid", "The object metadata is not valid JSON.")
            }
            metadata = parsed
        }
        var bodyName: String?
        if case let .string(name)? = metadata["name"] { bodyName = name }
        let queryName: String? = query.get("name").map { String($0) }
        guard let name = queryName ?? bodyName else {
            throw Problem(400, "upload.name_missing", "The object name is missing.")
        }
        guard Self.isPackageObjectName(name) else {
            throw Problem(422, "upload.object_name_invalid", "The object name must be <package_id>.cpkg.",
                          detail: "\(name) is not 64 lowercase hex digits followed by .cpkg.")
        }
        var total: UInt64?
        if let text = request.headers[HTTPField.Name("X-Upload-Content-Length")!] {
            guard let value = UInt64(text) else { throw Problem(400, "upload.length_invalid", "X-Upload-Content-Length is not a number.") }
            total = value
        }
        if let total, total > configuration.maxPackageBytes {
            throw Problem(413, "upload.too_large", "The package is larger than this service accepts.",
                          detail: "\(total) bytes; the limit is \(configuration.maxPackageBytes).")
        }
        if try await store.lookup(name) != nil {
            logger.info("upload refused: object exists", metadata: ["object": "\(name)"])
            throw Problem(412, "upload.object_exists", "The object already exists (ifGenerationMatch=0).")
        }
        var md5: String?, crc: String?
        if case let .string(value)? = metadata["md5Hash"] { md5 = value }
        if case let .string(value)? = metadata["crc32c"] { crc = value }
        let id = UUID().uuidString.lowercased()
        let session = try UploadSession(
            id: id, objectName: name, spoolPath: configuration.spoolDirectory + "/" + id + ".part", total: total,
            declaredMD5: md5, declaredCRC32C: crc)
        do {
            try await sessions.add(session)
            session.verification = try StreamingVerification(
                spoolPath: session.spoolPath, verifier: verifier, name: name)
        } catch {
            session.discardSpool()
            throw error
        }
        // The Host header is client input: use it only if it is a plain host[:port].
        let fallback = "\(configuration.host):\(boundPort.get())"
        let authority = request.head.authority.flatMap { Self.isPlainAuthority($0) ? $0 : nil } ?? fallback
        let location = "http://" + authority + "/upload/storage/v1/b/" + UploadTarget.escapeComponent(configuration.bucket)
            + "/o?uploadType=resumable&name=" + UploadTarget.escapeComponent(name) + "&upload_id=" + id
        var headers = HTTPFields()
        headers[.location] = location
        logger.info("upload started", metadata: ["object": "\(name)", "session": "\(id)", "size": "\(total.map(String.init) ?? "?")"])
        return Response(status: .ok, headers: headers)
    }

    // MARK: - Chunks and status

    private func receive(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        try checkBucket(context)
        guard let rawID = request.uri.queryParameters.get("upload_id") else {
            throw Problem(400, "upload.session_missing", "PUT needs an upload_id.")
        }
        let id = String(rawID)
        let session = try await sessions.acquire(id)
        defer { Task { await sessions.release(id) } }
        if let outcome = session.outcome {
            switch outcome {
            case let .success(object): return jsonResponse(200, object.jsonValue)
            case let .failure(problem): throw problem
            }
        }
        let range = try ContentRange(request.headers[.contentRange])
        if let total = range.total {
            if let known = session.total, known != total {
                throw Problem(400, "upload.range_invalid", "Content-Range names another total than the upload's.",
                              detail: "\(total) vs \(known)")
            }
            guard total <= configuration.maxPackageBytes else {
                throw Problem(413, "upload.too_large", "The package is larger than this service accepts.")
            }
            session.total = total
        }
        if let first = range.first, let last = range.last {
            try await append(request, session, first: first, last: last)
        } else {
            // A status query (or the final empty request of an empty upload): drain the body, answer what we hold.
            for try await _ in request.body {}
        }
        if let total = session.total, session.received == total {
            return try await finish(session)
        }
        return resumeIncomplete(session)
    }

    private func append(_ request: Request, _ session: UploadSession, first: UInt64, last: UInt64) async throws {
        let length = last - first + 1
        let granularity = UInt64(UploadTarget.chunkGranularity)
        let isFinal = session.total.map { last + 1 == $0 } ?? false
        if let total = session.total, last >= total {
            throw Problem(400, "upload.range_invalid", "The chunk extends past the upload's size.")
        }
        guard isFinal || length % granularity == 0 else {
            throw Problem(400, "upload.chunk_size_invalid", "Chunks other than the last must be multiples of 256 KiB.")
        }
        guard first <= session.received else {
            // A gap: keep nothing, tell the client what we hold.
            for try await _ in request.body {}
            return
        }
        // Drop the bytes we already hold, append the rest as they arrive.
        var skip = session.received - first
        var position = first
        for try await buffer in request.body {
            try buffer.withUnsafeReadableBytes { bytes in
                var slice = UnsafeRawBufferPointer(rebasing: bytes[...])
                let dropped = Int(min(skip, UInt64(slice.count)))
                skip -= UInt64(dropped)
                position += UInt64(dropped)
                slice = UnsafeRawBufferPointer(rebasing: slice[dropped...])
                let room = Int(min(UInt64(slice.count), last + 1 - position))
                if room > 0 {
                    try session.append(UnsafeRawBufferPointer(rebasing: slice[..<room]))
                    position += UInt64(room)
                }
            }
        }
        guard position == last + 1 else {
            throw Problem(400, "upload.chunk_short", "The request body is shorter than its Content-Range.",
                          detail: "The service holds \(session.received) bytes.")
        }
    }

    private func resumeIncomplete(_ session: UploadSession) -> Response {
        var headers = HTTPFields()
        if session.received > 0 { headers[.range] = "bytes=0-\(session.received - 1)" }
        return Response(status: .init(code: 308, reasonPhrase: "Resume Incomplete"), headers: headers)
    }

    // MARK: - Verification and commit

    private func finish(_ session: UploadSession) async throws -> Response {
        session.closeOutput()
        let checksums = session.checksums.finalize()
        // The verifier has been reading the spool while it grew; tell it the end and take its verdict.
        let report: VerificationReport?
        if let verification = session.verification {
            verification.follower.finish()
            report = await verification.result()
        } else {
            let path = session.spoolPath
            let verifier = self.verifier
            report = await Task.detached { try? verifier.verify(path: path) }.value
        }
        var metadata: Logger.Metadata = [
            "object": "\(session.objectName)", "bytes": "\(checksums.size)", "session": "\(session.id)",
            "package_id": "\(report?.packageID ?? "-")", "key_ids": "\(report?.verifiedKeyIDs.joined(separator: ",") ?? "-")",
        ]
        func refuse(_ problem: Problem) -> Problem {
            session.outcome = .failure(problem)
            session.discardSpool()
            metadata["outcome"] = "refused"
            metadata["code"] = "\(problem.code)"
            logger.warning("upload refused", metadata: metadata)
            return problem
        }
        if let md5 = session.declaredMD5, md5 != checksums.md5Base64 {
            throw refuse(Problem(400, "upload.checksum_mismatch", "The data does not match the declared md5Hash."))
        }
        if let crc = session.declaredCRC32C, crc != checksums.crc32cBase64 {
            throw refuse(Problem(400, "upload.checksum_mismatch", "The data does not match the declared crc32c."))
        }
        guard let report else {
            throw refuse(Problem(500, "server.io_error", "The spooled upload could not be read."))
        }
        guard report.valid else {
            let first = report.failures.first?.code.rawValue ?? "package.invalid"
            throw refuse(Problem(
                422, first, "The package failed verification.",
                detail: report.failures.first?.message, errors: report.failures))
        }
        guard session.objectName == (report.packageID ?? "") + ".cpkg" else {
            throw refuse(Problem(
                422, "upload.object_name_mismatch", "The object name is not <package_id>.cpkg of this package.",
                detail: "\(session.objectName) holds package \(report.packageID ?? "?")."))
        }
        let object = StoredObject(name: session.objectName, bucket: configuration.bucket, checksums: checksums, keyIDs: report.verifiedKeyIDs)
        let outcome = try await store.commit(spoolPath: session.spoolPath, object: object)
        try? FileManager.default.removeItem(atPath: session.spoolPath)
        switch outcome {
        case .stored, .alreadyStored:
            session.outcome = .success(object)
            metadata["outcome"] = outcome == .stored ? "stored" : "already_stored"
            logger.info("upload accepted", metadata: metadata)
            return jsonResponse(200, object.jsonValue)
        case let .conflict(existing):
            metadata["existing_sha256"] = "\(existing.sha256)"
            throw refuse(Problem(
                412, "upload.object_conflict", "The store holds different bytes under this package ID.",
                detail: "Refused and logged: a package ID must always name the same bytes."))
        }
    }

    // MARK: - Object metadata

    private func objectMetadata(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        try checkBucket(context)
        guard let raw = context.parameters.get("object"), let name = raw.removingPercentEncoding,
              let object = try await store.lookup(name)
        else { throw Problem(404, "object.not_found", "No such object.") }
        if request.uri.queryParameters.get("alt") == "media" {
            guard let path = await store.contentPath(name), let data = FileManager.default.contents(atPath: path) else {
                throw Problem(501, "object.media_unavailable", "This store does not serve object bytes.")
            }
            return Response(status: .ok, body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
        }
        var value = object.jsonValue
        if case let .object(members) = value {
            value = .object(members.map { $0.0 == "bucket" ? ($0.0, .string(configuration.bucket)) : $0 })
        }
        return jsonResponse(200, value)
    }

    private func checkBucket(_ context: BasicRequestContext) throws {
        guard context.parameters.get("bucket") == configuration.bucket else {
            throw Problem(404, "bucket.not_found", "No such bucket.", detail: "This service's bucket is \(configuration.bucket).")
        }
    }

    static func isPlainAuthority(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= 255 && text.utf8.allSatisfy { byte in
            (48...57).contains(byte) || (65...90).contains(byte) || (97...122).contains(byte)
                || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ":")
                || byte == UInt8(ascii: "[") || byte == UInt8(ascii: "]")
        }
    }

    static func isPackageObjectName(_ name: String) -> Bool {
        name.hasSuffix(".cpkg") && name.utf8.count == 69
            && name.utf8.prefix(64).allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }
}

/// `Content-Range: bytes FIRST-LAST/TOTAL`, `bytes FIRST-LAST/*`, `bytes */TOTAL`; absent means a status query
/// of unknown total.
struct ContentRange {
    var first: UInt64?
    var last: UInt64?
    var total: UInt64?

    init(_ header: String?) throws {
        guard let header else { return }
        let text = header.trimmingCharacters(in: .whitespaces)
        guard text.hasPrefix("bytes ") else { throw Problem(400, "upload.range_invalid", "Content-Range must be in bytes.") }
        let parts = text.dropFirst(6).split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 else { throw Problem(400, "upload.range_invalid", "Content-Range is malformed.") }
        if parts[1] != "*" {
            guard let total = UInt64(parts[1]) else { throw Problem(400, "upload.range_invalid", "Content-Range total is malformed.") }
            self.total = total
        }
        if parts[0] != "*" {
            let bounds = parts[0].split(separator: "-", omittingEmptySubsequences: false)
            guard bounds.count == 2, let first = UInt64(bounds[0]), let last = UInt64(bounds[1]), first <= last else {
                throw Problem(400, "upload.range_invalid", "Content-Range bounds are malformed.")
            }
            self.first = first
            self.last = last
        }
    }
}

/// The port the server really listens on (known once it runs).
final class BoundPort: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func set(_ port: Int) { lock.lock(); value = port; lock.unlock() }
    func get() -> Int { lock.lock(); defer { lock.unlock() }; return value }
}

/// Expires idle sessions once a minute.
struct Expirer: Service {
    let sessions: UploadSessions

    func run() async throws {
        // Ends on graceful shutdown (SIGTERM/SIGINT), so that the service group can stop.
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try await Task.sleep(for: .seconds(60))
                await sessions.expire()
            }
        }
    }
}
