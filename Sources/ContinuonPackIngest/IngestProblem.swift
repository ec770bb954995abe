/// A refusal by the ingestion service: an HTTP status, a stable dotted code (the same codes `verify --json` prints,
/// plus the `upload.*`, `object.*`, `bucket.*` and `server.*` codes of docs/signed-ingestion.md section 12), a title
/// for people, and what the connection should do next.
///
/// Text that comes from the client is never echoed unquoted; text from the system (errno, paths) never appears.
public struct IngestProblem: Error, Sendable, Equatable {
    public let status: Int
    public let code: String
    public let title: String
    public var detail: String?
    /// Verification failures, for a refused package: `{code, message}` each.
    public var errors: [Failure] = []
    public var headers: [(name: String, value: String)] = []
    /// The session this problem ends (its spool is discarded, later requests get the same answer).
    public var endsSession = false
    /// Close the connection after the answer instead of reading the rest of the request body.
    public var closesConnection = false

    public struct Failure: Sendable, Equatable {
        public let code: String
        public let message: String
        public init(code: String, message: String) {
            self.code = code
            self.message = message
        }
    }

    public init(_ status: Int, _ code: String, _ title: String, detail: String? = nil) {
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.status == b.status && a.code == b.code && a.title == b.title && a.detail == b.detail && a.errors == b.errors
            && a.headers.map(\.name) == b.headers.map(\.name) && a.headers.map(\.value) == b.headers.map(\.value)
            && a.endsSession == b.endsSession && a.closesConnection == b.closesConnection
    }

    /// The same problem, ending the session.
    public func endingSession() -> Self {
        var copy = self
        copy.endsSession = true
        return copy
    }

    /// The same problem, closing the connection after the answer.
    public func closingConnection() -> Self {
        var copy = self
        copy.closesConnection = true
        return copy
    }

    /// The same problem with a header added.
    public func adding(header name: String, _ value: String) -> Self {
        var copy = self
        copy.headers.append((name, value))
        return copy
    }
}

extension IngestProblem {
    static func rangeInvalid(_ title: String, detail: String? = nil) -> Self {
        IngestProblem(400, "upload.range_invalid", title, detail: detail)
    }

    static func tooLarge(limit: UInt64) -> Self {
        IngestProblem(413, "upload.too_large", "The package is larger than this service accepts.",
                      detail: "The limit is \(limit) bytes.").endingSession().closingConnection()
    }
}
