import ContinuonPack

/// The durable record of one outbox entry (`state.json`), rewritten atomically at every transition.
public struct OutboxState: Sendable, Equatable {
    public enum Phase: String, Sendable {
        /// Added, nothing sent yet.
        case queued
        /// A resumable session exists (saved before the first byte was sent).
        case uploading
        /// The server holds the object and its size and hashes equal ours. Final.
        case acknowledged
        /// The server refused the package (a 4xx other than 408/429), or holds different bytes under its name.
        /// Never retried by itself; the package stays on disk. Left by `Outbox.retry` (the same bytes again) or
        /// by adding other bytes under the same package ID (`Outbox.add` supersedes them).
        case rejected
        /// The server holds an object under this name (`412`) that these credentials may not read (an
        /// objectCreator-only identity), so it could not be compared with the package: it may or may not be these
        /// bytes. Never retried by itself; the package stays on disk. An operator compares the object with a reader's
        /// credentials and then `outbox retry`s the entry with credentials that may read objects, which settles it
        /// as acknowledged or rejected.
        case existsUnverified = "exists_unverified"
    }

    /// Bytes this entry held before a re-signed package replaced them (`Outbox.add` of other bytes under the
    /// package ID of a rejected entry). The file stays at `OUTBOX/<package_id>/superseded/<sha256>.cpkg` until the
    /// entry is acknowledged and the caller asks for acknowledged packages to be removed.
    public struct Superseded: Sendable, Equatable {
        public var sha256: String
        public var size: UInt64
        public var rejectionStatus: Int?
        public var rejectionCode: String?

        public init(sha256: String, size: UInt64, rejectionStatus: Int?, rejectionCode: String?) {
            self.sha256 = sha256
            self.size = size
            self.rejectionStatus = rejectionStatus
            self.rejectionCode = rejectionCode
        }

        var jsonValue: JSONValue {
            .object([
                ("sha256", .string(sha256)), ("size", .number(String(size))),
                ("rejection_status", rejectionStatus.map { .number(String($0)) } ?? .null),
                ("rejection_code", rejectionCode.map(JSONValue.string) ?? .null),
            ])
        }

        init?(json value: JSONValue) {
            guard case let .string(sha256)? = value["sha256"], Hex.isLowercaseDigest(sha256),
                  let size = value["size"]?.safeUnsignedInteger
            else { return nil }
            var code: String?
            if case let .string(text)? = value["rejection_code"] { code = text }
            self.init(sha256: sha256, size: size, rejectionStatus: value["rejection_status"]?.safeUnsignedInteger.map(Int.init),
                      rejectionCode: code)
        }
    }

    public var packageID: String
    public var size: UInt64
    /// Lowercase hex SHA-256 of the package file.
    public var sha256: String
    /// Standard base64, as Cloud Storage reports `md5Hash` and `crc32c`.
    public var md5Base64: String
    public var crc32cBase64: String
    public var phase: Phase
    public var objectName: String?
    public var sessionURI: String?
    /// Bytes the server confirmed holding.
    public var confirmed: UInt64
    public var attempts: Int
    public var lastError: String?
    public var rejectionStatus: Int?
    public var rejectionBody: String?
    /// The refusal's stable code: the ingestion service's problem `code` (`signature.untrusted`), Cloud Storage's
    /// `error.errors[0].reason`, or `upload.object_conflict` when the server holds other bytes under the name.
    public var rejectionCode: String?
    /// The refusal's sentence for a person (the problem's `detail` or `title`, Cloud Storage's `error.message`).
    public var rejectionDetail: String?
    /// Earlier bytes of this entry, replaced by re-signed ones, oldest first.
    public var superseded: [Superseded] = []

    public init(packageID: String, size: UInt64, sha256: String, md5Base64: String, crc32cBase64: String) {
        self.packageID = packageID
        self.size = size
        self.sha256 = sha256
        self.md5Base64 = md5Base64
        self.crc32cBase64 = crc32cBase64
        self.phase = .queued
        self.confirmed = 0
        self.attempts = 0
    }

    /// One line for people: `rejected 422 signature.untrusted: <detail>`, `acknowledged`, `uploading 42%`.
    public var summary: String {
        switch phase {
        case .rejected:
            var text = "rejected"
            if let rejectionStatus { text += " \(rejectionStatus)" }
            if let rejectionCode { text += " \(rejectionCode)" }
            if let detail = rejectionDetail ?? lastError { text += ": " + detail }
            return text
        case .uploading, .queued:
            let percent = size == 0 ? 0 : confirmed * 100 / size
            return phase.rawValue + (confirmed > 0 ? " \(percent)%" : "")
        case .acknowledged:
            return phase.rawValue
        case .existsUnverified:
            return phase.rawValue + ": " + (rejectionDetail ?? "the object exists and could not be compared")
        }
    }

    /// The record as reports show it (`--json`): everything but `session_uri`, which is a capability (whoever holds
    /// it may append to the upload) and stays in the entry's 0600 state file.
    public var reportJSON: JSONValue {
        guard case let .object(members) = jsonValue else { return jsonValue }
        return .object(members.filter { $0.0 != "session_uri" })
    }

    public var jsonValue: JSONValue {
        func optional(_ text: String?) -> JSONValue { text.map(JSONValue.string) ?? .null }
        return .object([
            ("package_id", .string(packageID)), ("size", .number(String(size))), ("sha256", .string(sha256)),
            ("md5", .string(md5Base64)), ("crc32c", .string(crc32cBase64)), ("state", .string(phase.rawValue)),
            ("object_name", optional(objectName)), ("session_uri", optional(sessionURI)),
            ("confirmed", .number(String(confirmed))), ("attempts", .number(String(attempts))),
            ("last_error", optional(lastError)),
            ("rejection_status", rejectionStatus.map { .number(String($0)) } ?? .null),
            ("rejection_body", optional(rejectionBody)),
            ("rejection_code", optional(rejectionCode)), ("rejection_detail", optional(rejectionDetail)),
            ("superseded", .array(superseded.map(\.jsonValue))),
        ])
    }

    init(json bytes: [UInt8]) throws {
        let value: JSONValue
        do { value = try StrictJSONParser.parse(bytes) } catch {
            throw ContinuonPackError(.outboxCorrupt, "An outbox state file is not valid JSON: \(error.reason).")
        }
        func string(_ key: String) -> String? { if case let .string(text)? = value[key] { return text }; return nil }
        func number(_ key: String) -> UInt64? { value[key]?.safeUnsignedInteger }
        guard let packageID = string("package_id"), let size = number("size"), let sha256 = string("sha256"),
              let md5 = string("md5"), let crc32c = string("crc32c"), let phase = string("state").flatMap(Phase.init),
              let confirmed = number("confirmed"), let attempts = number("attempts")
        else { throw ContinuonPackError(.outboxCorrupt, "An outbox state file lacks required fields.") }
        self.init(packageID: packageID, size: size, sha256: sha256, md5Base64: md5, crc32cBase64: crc32c)
        self.phase = phase
        self.objectName = string("object_name")
        self.sessionURI = string("session_uri")
        self.confirmed = confirmed
        self.attempts = Int(attempts)
        self.lastError = string("last_error")
        self.rejectionStatus = number("rejection_status").map(Int.init)
        self.rejectionBody = string("rejection_body")
        self.rejectionCode = string("rejection_code")
        self.rejectionDetail = string("rejection_detail")
        if case let .array(items)? = value["superseded"] {
            self.superseded = try items.map { item in
                guard let entry = Superseded(json: item) else {
                    throw ContinuonPackError(.outboxCorrupt, "An outbox state file has a malformed superseded entry.")
                }
                return entry
            }
        }
    }
}
