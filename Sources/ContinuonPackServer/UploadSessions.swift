import ContinuonPack
import ContinuonPackUpload
import Foundation

/// One resumable upload in progress: the bytes received so far live in a spool file, hashed as they arrive.
final class UploadSession: @unchecked Sendable {
    let id: String
    let objectName: String
    let spoolPath: String
    let declaredMD5: String?
    let declaredCRC32C: String?
    let created: ContinuousClock.Instant
    /// Total size, from `X-Upload-Content-Length` or the first Content-Range that names it.
    var total: UInt64?
    /// Bytes held (written to the spool file).
    var received: UInt64 = 0
    var lastActivity: ContinuousClock.Instant
    var checksums = TransferChecksums()
    var output: FileHandle?
    /// Set once the upload ended: the object (accepted) or the refusal.
    var outcome: Result<StoredObject, Problem>?
    /// The verifier reading the spool as it grows.
    var verification: StreamingVerification?

    init(id: String, objectName: String, spoolPath: String, total: UInt64?, declaredMD5: String?, declaredCRC32C: String?) throws {
        self.id = id
        self.objectName = objectName
        self.spoolPath = spoolPath
        self.total = total
        self.declaredMD5 = declaredMD5
        self.declaredCRC32C = declaredCRC32C
        created = .now
        lastActivity = .now
        guard FileManager.default.createFile(atPath: spoolPath, contents: nil, attributes: [.posixPermissions: 0o600]) else {
            throw ContinuonPackError(.ioError, "Cannot create the spool file \(spoolPath).")
        }
        output = try FileHandle(forWritingTo: URL(fileURLWithPath: spoolPath))
    }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        guard let output else { return }
        try output.write(contentsOf: Data(bytes))
        checksums.update(bytes)
        received += UInt64(bytes.count)
        verification?.follower.advance(to: received)
    }

    func closeOutput() {
        try? output?.synchronize()
        try? output?.close()
        output = nil
    }

    func discardSpool() {
        verification?.follower.abort()
        closeOutput()
        try? FileManager.default.removeItem(atPath: spoolPath)
    }
}

/// The table of sessions. A session serves one request at a time (`acquire`/`release`).
actor UploadSessions {
    private var sessions: [String: UploadSession] = [:]
    private var busy: Set<String> = []
    let maxSessions: Int
    let expiry: Duration

    init(maxSessions: Int, expiry: Duration) {
        self.maxSessions = maxSessions
        self.expiry = expiry
    }

    var activeCount: Int { sessions.values.filter { $0.outcome == nil }.count }

    func add(_ session: UploadSession) throws(Problem) {
        guard activeCount < maxSessions else {
            throw Problem(429, "upload.too_many_sessions", "Too many uploads in progress.",
                          detail: "The service holds \(maxSessions) open sessions; try again later.", headers: ["Retry-After": "5"])
        }
        sessions[session.id] = session
    }

    func acquire(_ id: String) throws(Problem) -> UploadSession {
        guard let session = sessions[id] else {
            throw Problem(404, "upload.session_unknown", "No such upload session.", detail: "It expired or never existed; start a new upload.")
        }
        guard !busy.contains(id) else {
            throw Problem(503, "upload.session_busy", "Another request is using this session.", headers: ["Retry-After": "1"])
        }
        busy.insert(id)
        session.lastActivity = .now
        return session
    }

    func release(_ id: String) { busy.remove(id) }

    /// Drops sessions idle for longer than the expiry (their spool files too); finished ones are kept an hour.
    func expire() {
        let now = ContinuousClock.now
        for (id, session) in sessions where !busy.contains(id) {
            let limit = session.outcome == nil ? expiry : .seconds(3600)
            if now - session.lastActivity > limit {
                session.discardSpool()
                sessions[id] = nil
            }
        }
    }
}
