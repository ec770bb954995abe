import ContinuonPack
import Foundation

/// What happens to a package while it is uploaded, as values a runtime can switch on (never message text).
///
/// `progress` only grows within one session; when the server no longer holds what it confirmed (its session
/// expired), `sessionRestarted` comes first and progress starts again from what the new session holds.
public enum UploadEvent: Sendable, Equatable {
    /// A resumable session was started (its URI saved before the first byte).
    case started(packageID: String, size: UInt64)
    /// The server confirmed holding `confirmed` of `size` bytes.
    case progress(packageID: String, confirmed: UInt64, size: UInt64)
    /// A transient failure; the next attempt follows after `delay`.
    case retrying(packageID: String, attempt: Int, delay: Duration, cause: UploadFailure)
    /// The server no longer knows the session (`404`/`410`): a new one starts from byte 0.
    case sessionRestarted(packageID: String, status: Int)
    /// The server holds the object, with our size and hashes. Final.
    case acknowledged(packageID: String, size: UInt64)
    /// The server refused the package; it stays in the outbox (`Outbox.retry`, or add re-signed bytes).
    case rejected(packageID: String, rejection: Rejection)
    /// An object of that name exists and these credentials may not read it to compare (`exists_unverified`).
    case existsUnverified(packageID: String)
    /// Still failing when the policy's deadline came: left `queued`/`uploading` for a later run.
    case deferred(packageID: String, cause: UploadFailure)

    public var packageID: String {
        switch self {
        case let .started(id, _), let .progress(id, _, _), let .retrying(id, _, _, _), let .sessionRestarted(id, _),
             let .acknowledged(id, _), let .rejected(id, _), let .existsUnverified(id), let .deferred(id, _):
            id
        }
    }
}

/// Why the server refused a package: the HTTP status, the stable code (`signature.untrusted`, Cloud Storage's
/// `reason`) and the sentence, as `OutboxState` keeps them.
public struct Rejection: Sendable, Equatable {
    public let status: Int
    public let code: String?
    public let detail: String?
}

/// A transient failure: `status` is the HTTP status, or nil when no answer came (connection refused, reset,
/// timeout, the token issuer unreachable).
public struct UploadFailure: Sendable, Equatable, CustomStringConvertible {
    public let status: Int?
    public let message: String
    public var description: String { message }
}

/// Uploads outbox entries with the Cloud Storage JSON API resumable protocol, resuming where the server says it
/// stopped, retrying transient failures with full-jitter backoff, and writing every transition to the entry's
/// state record before acting on it. An entry is `acknowledged` only after the server reported the object's size
/// and hashes equal to ours; a refusal (4xx) makes it `rejected`, with the package kept on disk.
///
/// Results are awaited (`upload(packageID:)`, `uploadQueued()`); what happens on the way comes as `UploadEvent`s
/// from `events()`. Cancelling the calling task stops at the next request boundary with `CancellationError`; the
/// entry's state is saved, so the next run resumes.
///
/// Memory: one chunk (`UploadTarget.chunkSize`) per upload in flight.
public actor Uploader {
    public let outbox: Outbox
    public let target: UploadTarget
    public let policy: RetryPolicy
    private let client: CloudStorageClient
    private let sleep: @Sendable (Duration) async throws -> Void
    private let random: @Sendable () -> Double
    private var subscribers: [UInt64: AsyncStream<UploadEvent>.Continuation] = [:]
    private var nextSubscriber: UInt64 = 0
    /// The highest byte count reported per package in its current session (progress never goes backwards).
    private var reported: [String: UInt64] = [:]

    /// - Parameter transport: defaults to `URLSessionTransport` with the policy's request timeout.
    public init(outbox: Outbox, target: UploadTarget, policy: RetryPolicy = RetryPolicy(), transport: (any CloudStorageTransport)? = nil) {
        self.init(outbox: outbox, target: target, policy: policy, transport: transport,
                  sleep: { try await Task.sleep(for: $0) }, random: { Double.random(in: 0...1) })
    }

    /// Tests: the backoff's clock and jitter.
    init(outbox: Outbox, target: UploadTarget, policy: RetryPolicy, transport: (any CloudStorageTransport)?,
         sleep: @escaping @Sendable (Duration) async throws -> Void, random: @escaping @Sendable () -> Double) {
        self.outbox = outbox
        self.target = target
        self.policy = policy
        self.client = CloudStorageClient(target: target, transport: transport, timeout: policy.requestTimeout)
        self.sleep = sleep
        self.random = random
    }

    /// A new stream of every event from now on, until the uploader is released or the consumer stops iterating.
    /// Each call is its own subscriber. A consumer that falls behind loses the oldest events beyond the newest
    /// 1024 (the outcome of every upload is also the awaited result).
    public func events() -> AsyncStream<UploadEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: UploadEvent.self, bufferingPolicy: .bufferingNewest(1024))
        let id = nextSubscriber
        nextSubscriber += 1
        subscribers[id] = continuation
        continuation.onTermination = { [weak self] _ in
            Task { await self?.unsubscribe(id) }
        }
        return stream
    }

    private func unsubscribe(_ id: UInt64) { subscribers[id] = nil }

    private func emit(_ event: UploadEvent) {
        if case let .progress(id, confirmed, _) = event {
            guard confirmed > reported[id] ?? 0 else { return }
            reported[id] = confirmed
        }
        for continuation in subscribers.values { continuation.yield(event) }
    }

    deinit {
        for continuation in subscribers.values { continuation.finish() }
    }

    /// Uploads every queued or uploading entry once (each until acknowledged, rejected, `exists_unverified` or its
    /// deadline) and returns their states.
    /// - Throws: `CancellationError` when the task is cancelled; `credentials.*` and I/O errors.
    public func uploadQueued() async throws -> [OutboxState] {
        var results: [OutboxState] = []
        for entry in try outbox.entries() where entry.phase == .queued || entry.phase == .uploading {
            try Task.checkCancellation()
            results.append(try await upload(packageID: entry.packageID))
        }
        return results
    }

    /// Uploads what is queued, then looks for new entries every `pollInterval`, until the task is cancelled.
    /// - Throws: `CancellationError` when cancelled (its normal end); `credentials.*` and I/O errors.
    public func run(pollInterval: Duration = .seconds(5)) async throws -> Never {
        while true {
            _ = try await uploadQueued()
            try await Task.sleep(for: pollInterval)
        }
    }

    /// Uploads one entry. Returns its state: `acknowledged`, `rejected`, `exists_unverified`, or still
    /// `queued`/`uploading` when the deadline passed or another process holds the entry.
    /// - Throws: `CancellationError` when the task is cancelled (the state is saved: the next run resumes);
    ///   `credentials.*` when the credentials are refused; I/O errors.
    public func upload(packageID: String) async throws -> OutboxState {
        guard let lock = try outbox.lock(packageID) else { return try outbox.state(of: packageID) }
        defer { withExtendedLifetime(lock) {} }
        try outbox.recover(packageID)
        var state = try outbox.state(of: packageID)
        guard state.phase == .queued || state.phase == .uploading else { return state }
        state.objectName = target.objectName(packageID: packageID)
        // A missing package is an I/O error before any request (chunks are read per request, as `FileRange`s).
        _ = try FileDescriptor.openForReading(outbox.packagePath(packageID))
        var session = Session(state: state, askStatus: state.phase == .uploading)
        reported[packageID] = state.confirmed
        defer { reported[packageID] = nil }
        let clock = ContinuousClock()
        let start = clock.now
        var attempt = 0
        while true {
            try Task.checkCancellation()
            do {
                let before = session.state.confirmed
                try await step(&session)
                if session.state.confirmed > before { attempt = 0 }
                if session.state.phase != .queued && session.state.phase != .uploading { break }
            } catch let failure as Retryable {
                session.state.attempts += 1
                session.state.lastError = failure.message
                session.askStatus = session.state.sessionURI != nil
                try save(session.state)
                let delay = policy.delay(attempt: attempt, retryAfter: failure.retryAfter, random: random())
                attempt += 1
                let cause = UploadFailure(status: failure.status, message: failure.message)
                if clock.now - start + delay > policy.deadline {
                    session.state.lastError = "gave up for this run after \(policy.deadline): \(failure.message)"
                    try save(session.state)
                    emit(.deferred(packageID: packageID, cause: cause))
                    break
                }
                emit(.retrying(packageID: packageID, attempt: attempt, delay: delay, cause: cause))
                try await sleep(delay)
            }
        }
        return session.state
    }

    // MARK: - Protocol steps

    private struct Session {
        var state: OutboxState
        /// Ask the server what it holds before sending (after an error, or when resuming a saved session).
        var askStatus: Bool
    }

    private struct Retryable: Error {
        let message: String
        var retryAfter: Duration?
        var status: Int?
    }

    /// Saves the state, then tells subscribers what it means.
    private func save(_ state: OutboxState) throws {
        try outbox.save(state)
        CrashPoint.reach("upload.saved." + state.phase.rawValue)
        switch state.phase {
        case .acknowledged: emit(.acknowledged(packageID: state.packageID, size: state.size))
        case .rejected:
            emit(.rejected(packageID: state.packageID, rejection: Rejection(
                status: state.rejectionStatus ?? 0, code: state.rejectionCode, detail: state.rejectionDetail ?? state.lastError)))
        case .existsUnverified: emit(.existsUnverified(packageID: state.packageID))
        case .uploading, .queued:
            if state.confirmed > 0 { emit(.progress(packageID: state.packageID, confirmed: state.confirmed, size: state.size)) }
        }
    }

    private func step(_ session: inout Session) async throws {
        guard let sessionURI = session.state.sessionURI, let sessionURL = URL(string: sessionURI) else {
            try await initiate(&session)
            return
        }
        if session.askStatus {
            let response = try await send("PUT", sessionURL, headers: ["Content-Range": "bytes */\(session.state.size)"], body: Data())
            try await handle(response, &session, sentUpTo: nil)
            return
        }
        let offset = session.state.confirmed
        let size = session.state.size
        if size > 0 && offset >= size {
            session.askStatus = true
            return
        }
        // The first chunk of a session is one granule (256 KiB): a service that refuses the package from its
        // envelope (an untrusted key) answers after that, not after a whole chunk.
        let chunk = offset == 0 ? UploadTarget.chunkGranularity : target.chunkSize
        let length = Int(min(UInt64(chunk), size - offset))
        let range = size == 0 ? "bytes */0" : "bytes \(offset)-\(offset + UInt64(length) - 1)/\(size)"
        let body = FileRange(path: outbox.packagePath(session.state.packageID), offset: offset, length: length)
        let response = try await send("PUT", sessionURL, headers: ["Content-Range": range], body: body)
        try await handle(response, &session, sentUpTo: offset + UInt64(length))
    }

    private func initiate(_ session: inout Session) async throws {
        let state = session.state
        guard let url = target.initiateURL(objectName: state.objectName ?? "") else {
            throw ContinuonPackError(.uploadProtocol, "Cannot build the upload URL from \(target.baseURL).")
        }
        let metadata = CanonicalJSON.encode(.object([
            ("name", .string(state.objectName ?? "")), ("contentType", .string("application/vnd.continuon.package")),
            ("md5Hash", .string(state.md5Base64)), ("crc32c", .string(state.crc32cBase64)),
            ("metadata", .object([("package_id", .string(state.packageID)), ("sha256", .string(state.sha256))])),
        ]))
        let response = try await send("POST", url, headers: [
            "Content-Type": "application/json; charset=UTF-8", "X-Upload-Content-Type": "application/octet-stream",
            "X-Upload-Content-Length": String(state.size),
        ], body: Data(metadata))
        switch response.status {
        case 200, 201:
            guard let location = response.header("Location"), URL(string: location) != nil else {
                throw Retryable(message: "the server started a session without a Location header")
            }
            // The session URI is durable before the first byte is sent: a crash resumes this session.
            session.state.sessionURI = location
            session.state.confirmed = 0
            session.state.phase = .uploading
            session.state.lastError = nil
            session.askStatus = false
            try save(session.state)
            reported[state.packageID] = 0
            emit(.started(packageID: state.packageID, size: state.size))
        case 412:
            try await settleExisting(&session, response)
        default:
            try reject(response, &session, during: "starting the upload")
        }
    }

    /// Interprets the answer to a chunk or a status query.
    private func handle(_ response: CloudStorageResponse, _ session: inout Session, sentUpTo: UInt64?) async throws {
        switch response.status {
        case 308:
            // "Resume incomplete": Range bytes=0-N means the server holds N+1 bytes; no Range means none.
            var held: UInt64 = 0
            if let range = response.header("Range") {
                guard let parsed = Self.parseRange(range), parsed <= session.state.size else {
                    throw Retryable(message: "the server sent an unusable Range header \(ContinuonPackError.quote(range))")
                }
                held = parsed
            }
            session.state.confirmed = held
            session.state.lastError = nil
            session.askStatus = false
            try save(session.state)
        case 200, 201:
            try await acknowledge(response, &session)
        case 404, 410:
            // The session expired or is unknown: start a new one from byte 0.
            session.state.sessionURI = nil
            session.state.confirmed = 0
            session.state.lastError = "the upload session expired (HTTP \(response.status)); starting a new one"
            try save(session.state)
            emit(.sessionRestarted(packageID: session.state.packageID, status: response.status))
        case 412:
            try await settleExisting(&session, response)
        default:
            try reject(response, &session, during: sentUpTo == nil ? "asking for the upload status" : "sending data")
        }
    }

    /// Retryable statuses throw; every other status is a rejection.
    private func reject(_ response: CloudStorageResponse, _ session: inout Session, during: String) throws {
        if response.status == 408 || response.status == 429 || response.status >= 500 {
            throw Retryable(
                message: "HTTP \(response.status) while \(during)", retryAfter: Self.retryAfter(response.header("Retry-After")),
                status: response.status)
        }
        session.state.phase = .rejected
        session.state.rejectionStatus = response.status
        session.state.rejectionBody = String(decoding: response.body.prefix(64 * 1024), as: UTF8.self)
        let reason = RejectionReason(body: Array(response.body.prefix(64 * 1024)))
        session.state.rejectionCode = reason.code
        session.state.rejectionDetail = reason.detail
        session.state.lastError = "rejected with HTTP \(response.status) while \(during)"
        try save(session.state)
    }

    /// The upload finished: acknowledge only if the server's size and hashes are ours (from the final response, which
    /// needs no read permission; else from the object's metadata).
    private func acknowledge(_ response: CloudStorageResponse, _ session: inout Session) async throws {
        if let object = try? StrictJSONParser.parse(Array(response.body)), Self.hashes(object).hasHash {
            try settle(object, &session, status: response.status)
            return
        }
        switch try await lookUp(session.state) {
        case let .found(object): try settle(object, &session, status: response.status)
        case .notFound: try settle(nil, &session, status: response.status)
        case .forbidden: try unverified(&session, status: response.status)
        }
    }

    /// `412`: an object of that name exists. Equal size and hashes: it is ours (acknowledged); other bytes: rejected;
    /// not readable with these credentials (objectCreator only): `exists_unverified`.
    private func settleExisting(_ session: inout Session, _ response: CloudStorageResponse) async throws {
        // The ingestion service in front of an objectCreator-only bucket already tried to read it.
        if RejectionReason(body: Array(response.body.prefix(16 * 1024))).code == "upload.object_unverified" {
            try unverified(&session, status: 412)
            return
        }
        switch try await lookUp(session.state) {
        case let .found(object):
            try settle(object, &session, status: 412)
        case .notFound:
            session.state.sessionURI = nil
            throw Retryable(message: "the server said the object exists but does not show it")
        case .forbidden:
            try unverified(&session, status: 412)
        }
    }

    private func unverified(_ session: inout Session, status: Int) throws {
        session.state.phase = .existsUnverified
        session.state.rejectionStatus = status
        session.state.rejectionCode = "upload.object_unverified"
        session.state.rejectionDetail = "The bucket holds an object under this name, and these credentials may not read "
            + "it (403) to compare its size and hashes with the package's. Compare it with a reader's credentials, then "
            + "outbox retry with credentials that may read objects."
        session.state.lastError = "the object exists and could not be compared"
        try save(session.state)
    }

    private func lookUp(_ state: OutboxState) async throws -> CloudStorageClient.ObjectLookup {
        try await retryable { try await client.object(named: state.objectName ?? "") }
    }

    private func settle(_ object: JSONValue?, _ session: inout Session, status: Int) throws {
        let found = object.map(Self.hashes) ?? ObjectHashes(size: nil, md5: nil, crc32c: nil)
        let state = session.state
        let sizeMatches = found.size == state.size
        let md5Matches = found.md5.map { $0 == state.md5Base64 } ?? true
        let crcMatches = found.crc32c.map { $0 == state.crc32cBase64 } ?? true
        if sizeMatches && md5Matches && crcMatches && found.hasHash {
            session.state.phase = .acknowledged
            session.state.confirmed = state.size
            session.state.lastError = nil
        } else {
            session.state.phase = .rejected
            session.state.rejectionStatus = status
            session.state.rejectionBody = object.map { String(decoding: CanonicalJSON.encode($0), as: UTF8.self) }
            session.state.lastError = "the server holds \(found.size.map(String.init) ?? "unknown") bytes with hashes "
                + "md5 \(found.md5 ?? "none"), crc32c \(found.crc32c ?? "none"): not this package"
            session.state.rejectionCode = "upload.object_conflict"
            session.state.rejectionDetail = "The bucket holds other bytes under this object name: "
                + (session.state.lastError ?? "")
        }
        try save(session.state)
    }

    private func send(_ method: String, _ url: URL, headers: [String: String], body: Data?) async throws -> CloudStorageResponse {
        try await retryable { try await client.send(method, url, headers: headers, body: body) }
    }

    private func send(_ method: String, _ url: URL, headers: [String: String], body: FileRange) async throws -> CloudStorageResponse {
        try await retryable { try await client.send(method, url, headers: headers, body: body) }
    }

    /// A transport failure of `request` is a `Retryable`.
    private func retryable<T>(_ request: () async throws -> T) async throws -> T {
        do {
            return try await request()
        } catch let failure as CloudStorageClient.TransportFailure {
            throw Retryable(message: failure.message)
        }
    }

    // MARK: - Parsing

    /// The stable code and the sentence of a refusal body: RFC 9457 problem details (`code`, else the last part
    /// of a `urn:…:error:<code>` `type`; `detail`, else `title`) as the ingestion service sends them, or Cloud
    /// Storage's `{"error": {"message", "errors": [{"reason"}]}}`. Text from the server is cut to 512 characters
    /// and stripped of control characters before it reaches a terminal or a log.
    struct RejectionReason: Equatable {
        var code: String?
        var detail: String?

        init(code: String?, detail: String?) {
            self.code = code
            self.detail = detail
        }

        init(body: [UInt8]) {
            guard let value = try? StrictJSONParser.parse(body), case .object = value else {
                let text = String(decoding: body, as: UTF8.self)
                self.init(code: nil, detail: text.isEmpty ? nil : Self.clean(text))
                return
            }
            func string(_ value: JSONValue?) -> String? { if case let .string(text)? = value { return text }; return nil }
            if case let .string(code)? = value["error"] {
                // OAuth 2.0 (RFC 6749 section 5.2): {"error": "invalid_grant", "error_description": "…"}.
                self.init(code: Self.clean(code), detail: string(value["error_description"]).map(Self.clean))
                return
            }
            if let error = value["error"], case .object = error {
                var reason: String?
                if case let .array(errors)? = error["errors"], let first = errors.first { reason = string(first["reason"]) }
                self.init(code: reason.map(Self.clean), detail: string(error["message"]).map(Self.clean))
                return
            }
            var code = string(value["code"])
            if code == nil, let type = string(value["type"]), type.hasPrefix("urn:"), let last = type.split(separator: ":").last {
                code = String(last)
            }
            self.init(code: code.map(Self.clean), detail: (string(value["detail"]) ?? string(value["title"])).map(Self.clean))
        }

        static func clean(_ text: String) -> String {
            let scalars = text.unicodeScalars.prefix(512).map { scalar -> Character in
                scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value) ? " " : Character(scalar)
            }
            return String(scalars)
        }
    }

    struct ObjectHashes {
        let size: UInt64?
        let md5: String?
        let crc32c: String?
        var hasHash: Bool { md5 != nil || crc32c != nil }
    }

    static func hashes(_ object: JSONValue) -> ObjectHashes {
        var size: UInt64?
        switch object["size"] {
        case let .string(text)?: size = UInt64(text)
        case let .number(text)?: size = UInt64(text)
        default: size = nil
        }
        func string(_ key: String) -> String? { if case let .string(text)? = object[key] { return text }; return nil }
        return ObjectHashes(size: size, md5: string("md5Hash"), crc32c: string("crc32c"))
    }

    /// `bytes=0-N` → N + 1.
    static func parseRange(_ header: String) -> UInt64? {
        let text = header.trimmingCharacters(in: .whitespaces)
        guard text.hasPrefix("bytes=0-"), let last = UInt64(text.dropFirst("bytes=0-".count)) else { return nil }
        return last + 1
    }

    /// `Retry-After` in seconds (HTTP dates are not honoured: the backoff applies).
    static func retryAfter(_ header: String?) -> Duration? {
        guard let header, let seconds = UInt64(header.trimmingCharacters(in: .whitespaces)), seconds <= 3600 else { return nil }
        return .seconds(Int64(seconds))
    }
}
