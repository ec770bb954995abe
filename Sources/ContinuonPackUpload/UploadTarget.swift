import ContinuonPack
import Foundation

/// Where packages go: a Cloud Storage JSON API endpoint (Google's, an emulator, or `continuon-pack serve`).
public struct UploadTarget: Sendable {
    /// Scheme, host and port, e.g. `https://storage.googleapis.com` or `http://127.0.0.1:9023`.
    public var baseURL: URL
    /// The bucket named in the path (`staging` for the ingestion service).
    public var bucket: String
    /// Prepended to `<package_id>.cpkg` to make the object name.
    public var prefix: String
    /// Where the `Authorization: Bearer …` token of every request comes from; nil sends none.
    public var credentials: (any AccessTokenProvider)?
    /// Bytes per PUT: a multiple of 256 KiB (the protocol's granularity). About this much memory per upload.
    public var chunkSize: Int

    public static let chunkGranularity = 256 * 1024

    public init(baseURL: URL, bucket: String = "staging", prefix: String = "", credentials: (any AccessTokenProvider)? = nil,
                chunkSize: Int = 8 << 20) {
        self.baseURL = baseURL
        self.bucket = bucket
        self.prefix = prefix
        self.credentials = credentials
        self.chunkSize = max(Self.chunkGranularity, chunkSize / Self.chunkGranularity * Self.chunkGranularity)
    }

    public func objectName(packageID: String) -> String { prefix + packageID + ".cpkg" }

    /// Google's own endpoint over https (where Application Default Credentials apply when nothing else is given):
    /// `storage.googleapis.com` or another `*.googleapis.com` host, in any case, with or without a trailing dot.
    public var isGoogle: Bool {
        guard baseURL.scheme?.lowercased() == "https", var host = baseURL.host?.lowercased() else { return false }
        if host.hasSuffix(".") { host.removeLast() }
        return host == "storage.googleapis.com" || host.hasSuffix(".googleapis.com")
    }

    /// `localhost`, `127.0.0.0/8` or `::1`: where tokens may travel over plain http (tests, local stand-ins).
    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host == "[::1]" || host.hasPrefix("127.")
    }

    public func initiateURL(objectName: String) -> URL? {
        var components = URLComponents(url: baseURL, resolvingAgainstBaseURL: false)
        components?.percentEncodedPath = base + "/upload/storage/v1/b/" + Self.escape(bucket) + "/o"
        components?.queryItems = [
            URLQueryItem(name: "uploadType", value: "resumable"), URLQueryItem(name: "name", value: objectName),
            URLQueryItem(name: "ifGenerationMatch", value: "0"),
        ]
        return components?.url
    }

    public func objectURL(objectName: String, media: Bool = false) -> URL? {
        var components = URLComponents(url: baseURL, resolvingAgainstBaseURL: false)
        components?.percentEncodedPath = base + "/storage/v1/b/" + Self.escape(bucket) + "/o/" + Self.escape(objectName)
        if media { components?.queryItems = [URLQueryItem(name: "alt", value: "media")] }
        return components?.url
    }

    /// The endpoint's path without a trailing slash ("" for Google's).
    public var basePath: String { base }

    private var base: String {
        let path = baseURL.path
        return path.hasSuffix("/") ? String(path.dropLast()) : path
    }

    /// Percent-encodes everything but unreserved characters (so `/` in object names becomes `%2F`).
    public static func escapeComponent(_ text: String) -> String { escape(text) }

    static func escape(_ text: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }
}

/// When to retry and for how long: full-jitter exponential backoff, `Retry-After` honoured, the attempt count
/// reset whenever the server confirms more bytes.
public struct RetryPolicy: Sendable, Equatable {
    public var baseDelay: Duration
    public var maxDelay: Duration
    /// How long one package may keep failing in one run before the uploader leaves it for a later run.
    public var deadline: Duration
    /// Per-request timeout.
    public var requestTimeout: Duration

    public init(baseDelay: Duration = .milliseconds(500), maxDelay: Duration = .seconds(30),
                deadline: Duration = .seconds(900), requestTimeout: Duration = .seconds(60)) {
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.deadline = deadline
        self.requestTimeout = requestTimeout
    }

    /// The wait before retry number `attempt` (0-based): uniform in [0, min(max, base * 2^attempt)], or the
    /// server's `Retry-After` when it asks for longer.
    public func delay(attempt: Int, retryAfter: Duration?, random: Double) -> Duration {
        let exponent = min(attempt, 30)
        let ceiling = min(maxDelay, baseDelay * (1 << exponent))
        let jittered = ceiling * max(0, min(1, random))
        if let retryAfter, retryAfter > jittered { return retryAfter }
        return jittered
    }
}
