import ContinuonPack
import ContinuonPackIngest
import ContinuonPackUpload
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle

/// How `continuon-pack serve` runs.
public struct IngestConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// The trust policy uploads are verified with (replaced while running when it has a source file).
    public var trust: TrustInForce
    /// The bucket name in request paths (the staging area).
    public var bucket: String
    /// Partial uploads (a directory on the same file system as a local store, so commits are renames/links).
    public var spoolDirectory: String
    /// The largest package accepted: declared, named in a Content-Range, or held.
    public var maxPackageBytes: UInt64
    public var sessions: SessionLimits
    public var connections: ConnectionLimits
    /// A connection with no request bytes this long is closed (between requests, or a request head that stalls).
    public var idleTimeout: Duration
    /// After SIGTERM/SIGINT, requests in progress may take this long; then they are cut and open sessions end.
    public var shutdownTimeout: Duration
    /// The service's public base URL (`https://ingest.example.com`), used in `Location` instead of the `Host`
    /// header.
    public var publicURL: String?
    public var limits: PackageLimits

    public init(host: String, port: Int, trustedKeys: [Ed25519PublicKey], threshold: Int = 1, bucket: String = "staging",
                spoolDirectory: String, maxPackageBytes: UInt64 = 64 << 30, sessions: SessionLimits = .init(),
                connections: ConnectionLimits = .init(), idleTimeout: Duration = .seconds(120),
                shutdownTimeout: Duration = .seconds(5), publicURL: String? = nil,
                limits: PackageLimits = .default) {
        self.init(host: host, port: port, trust: TrustInForce(trustedKeys: trustedKeys, threshold: threshold), bucket: bucket,
                  spoolDirectory: spoolDirectory, maxPackageBytes: maxPackageBytes, sessions: sessions,
                  connections: connections, idleTimeout: idleTimeout, shutdownTimeout: shutdownTimeout,
                  publicURL: publicURL, limits: limits)
    }

    public init(host: String, port: Int, trust: TrustInForce, bucket: String = "staging",
                spoolDirectory: String, maxPackageBytes: UInt64 = 64 << 30, sessions: SessionLimits = .init(),
                connections: ConnectionLimits = .init(), idleTimeout: Duration = .seconds(120),
                shutdownTimeout: Duration = .seconds(5), publicURL: String? = nil,
                limits: PackageLimits = .default) {
        self.host = host
        self.port = port
        self.trust = trust
        self.bucket = bucket
        self.spoolDirectory = spoolDirectory
        self.maxPackageBytes = maxPackageBytes
        self.sessions = sessions
        self.connections = connections
        self.idleTimeout = idleTimeout
        self.shutdownTimeout = shutdownTimeout
        self.publicURL = publicURL
        self.limits = limits
    }
}

/// The ingestion endpoint: the Cloud Storage resumable-upload subset of docs/signed-ingestion.md section 12,
/// strictly, and a complete verification of every package before it is committed to the store. A refused upload
/// gets a 4xx with problem details and leaves nothing in the store. Section 12.2 of the spec is its threat model.
public struct IngestServer: Sendable {
    public let configuration: IngestConfiguration
    public let store: any IngestStore
    let sessions: UploadSessions
    let spool: SpoolDirectory
    let logger: Logger
    let boundPort = BoundPort()

    public init(configuration: IngestConfiguration, store: any IngestStore, logger: Logger = Logger(label: "continuon-pack.serve")) throws {
        self.configuration = configuration
        self.store = store
        self.logger = logger
        try FileManager.default.createDirectory(
            atPath: configuration.spoolDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        spool = try SpoolDirectory(path: configuration.spoolDirectory)
        self.sessions = UploadSessions(limits: configuration.sessions, spool: spool)
        // Sessions that a previous process (or another instance) left are taken up when their clients come back;
        // what no session owns, or what expired meanwhile, goes now.
        let swept = spool.sweep(limits: configuration.sessions)
        if swept.total > 0 {
            logger.notice("spool swept at start", metadata: ["orphaned": "\(swept.orphaned)", "expired": "\(swept.expired)"])
        }
    }

    /// Serves until the process is asked to stop (SIGINT/SIGTERM). `onListening` receives the bound port.
    public func run(onListening: @escaping @Sendable (Int) -> Void = { _ in }) async throws {
        let router = Router()
        router.get("/healthz") { [trust = configuration.trust] _, _ in
            // The trust policy in force (spec section 14.5).
            let body = CanonicalJSON.encode(.object([("status", .string("ok")), ("trust_policy", trust.healthJSON)])) + [0x0a]
            return Response(status: .ok, headers: [.contentType: "application/json"],
                            body: .init(byteBuffer: ByteBuffer(bytes: body)))
        }
        router.post("/upload/storage/v1/b/:bucket/o") { request, context in
            await self.respond { try await self.initiate(request, context) }
        }
        router.put("/upload/storage/v1/b/:bucket/o") { request, context in
            await self.respond { try await self.receive(request, context) }
        }
        router.get("/storage/v1/b/:bucket/o/:object") { request, context in
            await self.respond { try await self.object(request, context) }
        }
        let registry = ConnectionRegistry(limit: configuration.connections.maxConnections)
        let connectionLimits = configuration.connections
        let app = Application(
            router: router,
            server: .http1(configuration: .init(
                additionalChannelHandlers: [ConnectionGuard(registry: registry, limits: connectionLimits)],
                idleTimeout: TimeAmount.seconds(configuration.idleTimeout.components.seconds))),
            configuration: ApplicationConfiguration(
                address: .hostname(configuration.host, port: configuration.port), serverName: "continuon-pack"),
            // A service that returns ends the group: the watcher runs only when there is a policy file to watch.
            services: [Expirer(sessions: sessions, spool: spool, logger: logger)]
                + (configuration.trust.source == nil ? [] : [TrustPolicyWatcher(trust: configuration.trust, logger: logger)]),
            onServerRunning: { [boundPort, configuration] channel in
                let port = channel.localAddress?.port ?? configuration.port
                boundPort.set(port)
                onListening(port)
            },
            logger: logger)
        var group = ServiceGroupConfiguration(services: [app], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        group.maximumGracefulShutdownDuration = configuration.shutdownTimeout
        group.maximumCancellationDuration = .seconds(5)
        let ran = await Result { try await ServiceGroup(configuration: group).run() }
        await sessions.closeAll()
        try ran.get()
    }

    /// A verifier under the trust policy in force now.
    var verifier: PackageVerifier { configuration.trust.verifier(limits: configuration.limits) }

    /// Problems become their 4xx answers; anything else is our fault: logged, answered 500 with no internal text.
    private func respond(_ body: () async throws -> Response) async -> Response {
        do {
            return try await body()
        } catch let problem as IngestProblem {
            return problem.response
        } catch {
            logger.error("internal error", metadata: ["error": "\(error)"])
            return IngestProblem(500, "server.internal", "The service failed; the failure is logged.").closingConnection().response
        }
    }

    // MARK: - Initiate

    private func initiate(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        try checkBucket(context)
        try configuration.trust.checkUsable()
        let query = try UploadQuery(rawQuery: request.uri.query)
        // The service only creates objects: with or without ifGenerationMatch=0 an existing object is 412.
        if let generation = query.ifGenerationMatch, generation != "0" {
            throw IngestProblem(412, "upload.precondition_failed",
                                "This service only creates objects: ifGenerationMatch must be 0 or absent.").closingConnection()
        }
        switch query.uploadType {
        case "resumable"?: break
        case "multipart"?: return try await receiveMultipart(request, query: query)
        case "media"?: return try await receiveMedia(request, query: query)
        default:
            throw IngestProblem(400, "upload.unsupported", "uploadType must be resumable, multipart or media.").closingConnection()
        }
        if let length = request.headers[.contentLength], StrictDecimal.parse(length).map({ $0 > UploadMetadata.maxBytes }) ?? true {
            throw UploadMetadata.tooLarge
        }
        let metadata = try UploadMetadata(json: try await Self.metadataBytes(request))
        let name = try uploadObjectName(query: query, metadata: metadata)
        var total: UInt64?
        if let text = request.headers[Self.uploadContentLength] {
            guard let value = StrictDecimal.parse(text) else {
                throw IngestProblem(400, "upload.length_invalid", "X-Upload-Content-Length is not a decimal number of bytes.")
            }
            guard value <= configuration.maxPackageBytes else {
                throw IngestProblem(413, "upload.too_large", "The package is larger than this service accepts.",
                                    detail: "\(value) bytes; the limit is \(configuration.maxPackageBytes).")
            }
            total = value
        }
        if try await existingObject(name) != nil {
            logger.info("upload refused: object exists", metadata: ["object": "\(name)"])
            throw IngestProblem(412, "upload.object_exists", "The object already exists (ifGenerationMatch=0).")
        }
        let id = Self.newSessionID()
        let session = UploadSession(id: id, objectName: name, total: total, metadata: metadata)
        // The journal first: from now on any instance sharing the spool can take the session up.
        let journal = try await createJournal(for: session)
        session.stamp = journal.stamp
        journal.close()
        do {
            try await sessions.add(session)
        } catch {
            unlink(spool.journalPath(id))
            throw error
        }
        var headers = HTTPFields()
        headers[.location] = baseURL(request) + "/upload/storage/v1/b/" + UploadTarget.escapeComponent(configuration.bucket)
            + "/o?uploadType=resumable&name=" + name.text + "&upload_id=" + id
        logger.info("upload started", metadata: ["object": "\(name)", "session": "\(id)", "size": "\(total.map(String.init) ?? "?")"])
        return Response(status: .ok, headers: headers)
    }

    static let uploadContentLength = HTTPField.Name("X-Upload-Content-Length")!

    /// The store's record of `name`; a store that cannot answer (a bucket unreachable, credentials refused) is a
    /// `503 server.store_unavailable`, logged, not an internal error.
    func existingObject(_ name: PackageObjectName) async throws -> StoredObject? {
        let found = await Result { try await store.lookup(name) }
        guard case let .success(object) = found else {
            logger.error("the store cannot be read", metadata: ["object": "\(name)", "error": "\(found)"])
            throw IngestProblem(503, "server.store_unavailable", "The store cannot be reached right now; try again.")
                .adding(header: "Retry-After", "5").closingConnection()
        }
        return object
    }

    /// The initiation body, at most 64 KiB.
    static func metadataBytes(_ request: Request) async throws -> [UInt8] {
        var request = request
        do {
            return Array(try await request.collectBody(upTo: UploadMetadata.maxBytes).readableBytesView)
        } catch is NIOTooManyBytesError {
            throw UploadMetadata.tooLarge
        }
    }

    /// The configured public URL; else the `Host` header if it is a plain host[:port]; else the listening address.
    private func baseURL(_ request: Request) -> String {
        if let publicURL = configuration.publicURL { return publicURL }
        if let authority = request.head.authority, HostAuthority.isValid(authority) { return "http://" + authority }
        return "http://\(configuration.host):\(boundPort.get())"
    }

    /// 128 random bits from the kernel (getrandom: no file descriptor needed, so it works when they run out),
    /// as 32 hex digits. Session IDs are capabilities: whoever knows one can append to the upload.
    static func newSessionID() -> String {
        var generator = SystemRandomNumberGenerator()
        return Hex.encode((0..<16).map { _ in UInt8.random(in: .min ... .max, using: &generator) })
    }

    static func isSessionID(_ text: String) -> Bool {
        Hex.isLowercaseDigest(text, byteCount: 16)
    }

    // MARK: - Chunks and status

    private func receive(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        try checkBucket(context)
        let query = try UploadQuery(rawQuery: request.uri.query)
        guard let id = query.uploadID else {
            throw IngestProblem(400, "upload.session_missing", "PUT needs an upload_id.").closingConnection()
        }
        let hasBody = request.headers[.transferEncoding] != nil || (request.headers[.contentLength].map { $0 != "0" } ?? false)
        guard Self.isSessionID(id) else {
            throw IngestProblem(404, "upload.session_unknown", "No such upload session.").closingConnection()
        }
        let session: UploadSession
        switch try await acquire(id) {
        case let .finished(outcome): return try Self.answer(outcome, hasBody: hasBody)
        case let .open(open): session = open
        }
        do {
            if let outcome = try await attach(session) {
                await detach(session)
                return try Self.answer(outcome, hasBody: hasBody)
            }
            let response = try await receive(request, into: session)
            await detach(session)
            return response
        } catch {
            await detach(session)
            throw error
        }
    }

    /// The answer a session ended with, repeated to a later request (whose body, if any, is not read).
    private static func answer(_ outcome: Result<StoredObject, IngestProblem>, hasBody: Bool) throws -> Response {
        switch outcome {
        case let .success(object):
            var headers = HTTPFields()
            if hasBody { headers[.connection] = "close" }
            return jsonResponse(200, object.jsonValue, headers: headers)
        case let .failure(problem):
            throw hasBody ? problem.closingConnection() : problem
        }
    }

    /// The session, waiting up to two seconds for a request that still holds it (a client that resumes right after
    /// its connection was cut arrives before the cut request has let go); then `503 upload.session_busy`.
    /// The same wait applies to a session that another instance sharing the spool holds.
    private func acquire(_ id: String) async throws -> UploadSessions.Acquired {
        try await whileBusy {
            if let known = try await sessions.acquire(id) { return known }
            return try await adopt(id)
        }
    }

    private func receive(_ request: Request, into session: UploadSession) async throws -> Response {
        if let verdict = session.spool?.verification.earlyVerdict, !verdict.valid {
            throw await end(session, IngestProblem(refusing: verdict).closingConnection())
        }
        let range = try ContentRange(header: request.headers[.contentRange])
        var contentLength: UInt64?
        if let text = request.headers[.contentLength] {
            guard let value = StrictDecimal.parse(text) else {
                throw IngestProblem(400, "upload.range_invalid", "Content-Length is not a decimal number.").closingConnection()
            }
            contentLength = value
        }
        let heldBefore = session.received
        let plan = try await self.plan(session, range: range, contentLength: contentLength)
        session.total = plan.total
        switch plan.action {
        case .statusQuery:
            try await discardBody(request, upTo: 0)
        case let .discard(length):
            try await discardBody(request, upTo: length)
        case let .append(skip, take):
            try await append(request, session, skip: skip, take: take)
        }
        if let total = session.total, session.received == total {
            return try await finish(session)
        }
        // Before "308, send more" on a chunk that may have carried the envelope: let the verifier catch up with what
        // it was given (it hashes far faster than a link delivers), so that a package refused from its envelope is
        // refused on this chunk, before the client sends another. Later chunks never wait.
        if heldBefore <= UInt64(verifier.limits.maxEnvelopeBytes) + 2048, let verification = session.spool?.verification {
            if await verification.caughtUp(within: .milliseconds(250)), let verdict = verification.earlyVerdict, !verdict.valid {
                throw await end(session, IngestProblem(refusing: verdict))
            }
        }
        // What the answer says is held is durable first: after a crash the session resumes from here.
        try await checkpoint(session)
        var headers = HTTPFields()
        if session.received > 0 { headers[.range] = "bytes=0-\(session.received - 1)" }
        return Response(status: .init(code: 308, reasonPhrase: "Resume Incomplete"), headers: headers)
    }

    private func plan(_ session: UploadSession, range: ContentRange, contentLength: UInt64?) async throws -> ChunkPlan {
        let held = session.received, total = session.total, limit = configuration.maxPackageBytes
        switch Result(catching: { () throws(IngestProblem) in
            try ChunkPlan(held: held, knownTotal: total, maxBytes: limit, range: range, contentLength: contentLength)
        }) {
        case let .success(plan): return plan
        case let .failure(problem) where problem.endsSession: throw await end(session, problem)
        case let .failure(problem): throw problem
        }
    }

    /// Reads and drops a body that carries nothing to keep (a repeat, a gap), refusing one longer than announced.
    private func discardBody(_ request: Request, upTo limit: UInt64) async throws {
        var iterator = request.body.makeAsyncIterator()
        var seen: UInt64 = 0
        while let buffer = try await nextBuffer(&iterator) {
            seen += UInt64(buffer.readableBytes)
            guard seen <= limit else {
                throw IngestProblem(400, "upload.range_invalid", "The request body is longer than its Content-Range.")
                    .closingConnection()
            }
        }
    }

    /// The next buffer of a request body. A body that breaks off (the client left, the connection was cut for
    /// being too slow) is the client's doing: `400 upload.chunk_short`, logged as information, not an error.
    func nextBuffer(_ iterator: inout RequestBody.AsyncIterator) async throws -> ByteBuffer? {
        let result = await Result { try await iterator.next() }
        guard case let .success(buffer) = result else {
            logger.info("request body ended early", metadata: ["reason": "\(result)"])
            throw IngestProblem(400, "upload.chunk_short", "The request body ended before its Content-Range.").closingConnection()
        }
        return buffer
    }

    /// The session's spool file, created (and the session counted against `maxActive`) at its first byte.
    func spool(of session: UploadSession) async throws -> SpoolFile {
        if let spool = session.spool { return spool }
        try await activate(session)
        do {
            let spool = try SpoolFile(
                path: self.spool.partPath(session.id), verifier: verifier,
                label: session.objectName.text)
            session.spool = spool
            return spool
        } catch {
            await sessions.deactivate(session.id)
            logger.error("cannot create a spool file", metadata: ["session": "\(session.id)", "error": "\(error)"])
            throw Self.spoolUnavailable
        }
    }

    private func append(_ request: Request, _ session: UploadSession, skip: UInt64, take: UInt64) async throws {
        let spool = try await spool(of: session)
        var receiver = ChunkReceiver(skip: skip, take: take)
        var iterator = request.body.makeAsyncIterator()
        while let buffer = try await nextBuffer(&iterator) {
            let split = receiver.accept(count: buffer.readableBytes)
            if split.write > 0, !spool.append(buffer, from: split.drop, count: split.write) {
                logger.error("cannot write a spool file", metadata: ["session": "\(session.id)"])
                throw Self.spoolUnavailable
            }
            CrashPoint.reach("serve.during_chunk")
            if split.excess > 0 {
                throw IngestProblem(400, "upload.range_invalid", "The request body is longer than its Content-Range.",
                                    detail: "The service holds \(session.received) bytes.").closingConnection()
            }
            // Refused already (envelope, signature, manifest): stop receiving at once.
            if let verdict = spool.verification.earlyVerdict, !verdict.valid {
                throw await end(session, IngestProblem(refusing: verdict).closingConnection())
            }
        }
        guard receiver.isComplete else {
            throw IngestProblem(400, "upload.chunk_short", "The request body is shorter than its Content-Range.",
                                detail: "The service holds \(session.received) bytes.")
        }
    }

    static let spoolUnavailable = IngestProblem(
        503, "server.spool_unavailable", "The service cannot hold more upload bytes right now; the bytes held are kept."
    ).adding(header: "Retry-After", "30").closingConnection()

    // MARK: - Verification and commit

    /// Ends a session with a refusal: its spool file, descriptors and verifier thread are given back now, and
    /// later requests get the same answer. Returns the problem to throw.
    func end(_ session: UploadSession, _ problem: IngestProblem) async -> IngestProblem {
        var stored = problem
        stored.closesConnection = false
        await conclude(session, .failure(stored))
        logger.warning("upload refused", metadata: [
            "object": "\(session.objectName)", "session": "\(session.id)", "status": "\(problem.status)", "code": "\(problem.code)",
        ])
        return problem
    }

    func finish(_ session: UploadSession) async throws -> Response {
        guard let spool = session.spool else {
            // An empty upload: nothing was held, so no verifier ran.
            throw await end(session, IngestProblem(refusing: verifier.verify(bytes: [])))
        }
        guard let checksums = try? await blocking({ try spool.finishWriting() }) else {
            // Kept: the next request takes the session up again from its checkpoint.
            logger.error("cannot sync a spool file", metadata: ["session": "\(session.id)"])
            session.rebuildAtNextRequest()
            throw Self.spoolUnavailable
        }
        try await checkpoint(session)
        CrashPoint.reach("serve.before_verdict")
        // The verifier has been reading the spool while it grew; it now sees the end. Take its verdict.
        guard let report = await spool.verification.result() else {
            logger.error("the verifier could not read a spool file back", metadata: ["session": "\(session.id)"])
            if !session.remembered {
                throw await end(session, IngestProblem(500, "server.io_error", "The service could not read the upload back; start again."))
            }
            session.rebuildAtNextRequest()
            throw Self.spoolUnavailable
        }
        if let md5 = session.declaredMD5, md5 != checksums.md5Base64 {
            throw await end(session, IngestProblem(400, "upload.checksum_mismatch", "The data does not match the declared md5Hash."))
        }
        if let crc = session.declaredCRC32C, crc != checksums.crc32cBase64 {
            throw await end(session, IngestProblem(400, "upload.checksum_mismatch", "The data does not match the declared crc32c."))
        }
        guard report.valid else { throw await end(session, IngestProblem(refusing: report)) }
        // The policy may have changed while the upload arrived (a revocation): its signatures must still count.
        if let failures = configuration.trust.recheck(report) {
            logger.notice("refused at commit: its signatures no longer count under the trust policy in force",
                          metadata: ["object": "\(session.objectName)", "version": "\(configuration.trust.current.policy.version)"])
            throw await end(session, IngestProblem(refusing: failures))
        }
        guard session.objectName.packageID == report.packageID else {
            throw await end(session, IngestProblem(
                422, "upload.object_name_mismatch", "The object name is not <package_id>.cpkg of this package.",
                detail: "\(session.objectName) holds package \(report.packageID ?? "?")."))
        }
        let object = StoredObject(name: session.objectName.text, bucket: configuration.bucket, checksums: checksums,
                                  keyIDs: report.verifiedKeyIDs)
        CrashPoint.reach("serve.before_commit")
        let committed = await Result { try await store.commit(spoolPath: spool.path, object: object) }
        CrashPoint.reach("serve.after_commit")
        guard case let .success(outcome) = committed else {
            // Kept: the client's next request (a status query) tries the commit again.
            logger.error("commit failed", metadata: ["object": "\(session.objectName)", "error": "\(committed)"])
            throw IngestProblem(503, "server.store_unavailable", "The store did not take the package; ask again.")
                .adding(header: "Retry-After", "5")
        }
        var metadata: Logger.Metadata = [
            "object": "\(session.objectName)", "bytes": "\(checksums.size)", "session": "\(session.id)",
            "package_id": "\(report.packageID ?? "-")", "key_ids": "\(report.verifiedKeyIDs.joined(separator: ","))",
        ]
        switch outcome {
        case .stored, .alreadyStored:
            await conclude(session, .success(object))
            metadata["outcome"] = outcome == .stored ? "stored" : "already_stored"
            logger.info("upload accepted", metadata: metadata)
            return jsonResponse(200, object.jsonValue)
        case .existsUnverified:
            logger.warning("the bucket holds an object under this name that the service may not read", metadata: metadata)
            throw await end(session, IngestProblem(
                412, "upload.object_unverified", "The bucket already holds an object under this name, which this service may not read.",
                detail: "It was not compared with this package; an operator can compare it with a reader's credentials."))
        case let .conflict(existing):
            logger.warning("conflict: other bytes under an existing package ID", metadata: metadata.merging(
                ["existing_sha256": "\(existing.sha256)"]) { a, _ in a })
            throw await end(session, IngestProblem(
                412, "upload.object_conflict", "The store holds different bytes under this package ID.",
                detail: "Refused and logged: a package ID must always name the same bytes."))
        }
    }

    // MARK: - Objects

    private func object(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        try checkBucket(context)
        guard let raw = context.parameters.get("object"), let name = PackageObjectName(percentEncoded: raw) else {
            throw IngestProblem(400, "object.name_invalid", "Object names are <package_id>.cpkg (64 lowercase hex digits).")
        }
        let query = try UploadQuery(rawQuery: request.uri.query)
        switch query.alt {
        case nil, "json"?:
            guard let object = try await store.lookup(name) else { throw Self.notFound }
            var value = object.jsonValue
            if case let .object(members) = value {
                value = .object(members.map { $0.0 == "bucket" ? ($0.0, .string(configuration.bucket)) : $0 })
            }
            return jsonResponse(200, value)
        case "media"?:
            guard let content = try await store.openContent(name) else {
                if try await store.lookup(name) != nil {
                    throw IngestProblem(501, "object.media_unavailable", "This store does not serve object bytes.")
                }
                throw Self.notFound
            }
            return Self.media(content)
        default:
            throw IngestProblem(400, "request.query_invalid", "alt must be json or media.")
        }
    }

    static let notFound = IngestProblem(404, "object.not_found", "No such object.")

    /// The object's bytes, read 64 KiB at a time off the cooperative pool and written as the client takes them
    /// (the writer waits while the connection is not writable): memory stays bounded whatever the size and however
    /// slowly the client reads. The descriptor is closed when the response ends, completed or not.
    static func media(_ content: StoredContent) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/octet-stream"
        let size = content.size
        let body = ResponseBody(contentLength: Int(size)) { writer in
            var offset: UInt64 = 0
            while offset < size {
                let buffer = try await content.chunk(at: offset)
                offset += UInt64(buffer.readableBytes)
                try await writer.write(buffer)
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: headers, body: body)
    }

    func checkBucket(_ context: BasicRequestContext) throws {
        guard context.parameters.get("bucket") == configuration.bucket else {
            throw IngestProblem(404, "bucket.not_found", "No such bucket.", detail: "This service's bucket is \(configuration.bucket).")
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

/// Every 15 seconds: expires sessions left alone (and old answers) from the table, then sweeps the spool directory
/// (expired sessions' files, whichever instance left them, and files no session owns).
struct Expirer: Service {
    let sessions: UploadSessions
    let spool: SpoolDirectory
    let logger: Logger

    func run() async throws {
        // Ends on graceful shutdown (SIGTERM/SIGINT), so that the service group can stop.
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try await Task.sleep(for: sessions.limits.sweepInterval)
                await sessions.expire()
                await sessions.dropMoved(spool)
                let swept = try await blocking { [spool, limits = sessions.limits] in spool.sweep(limits: limits, thorough: false) }
                if swept.total > 0 {
                    logger.info("spool swept", metadata: ["orphaned": "\(swept.orphaned)", "expired": "\(swept.expired)"])
                }
            }
        }
    }
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
