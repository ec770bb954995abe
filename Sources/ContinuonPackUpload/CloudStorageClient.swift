import ContinuonPack
import Foundation

/// The one Cloud Storage JSON API client of the project: every request the uploader, the ingestion service's
/// gs:// store and promotion send goes through it, with a current access token and, on a `401`, once more with a
/// new one. It never sends a DELETE: nothing in this project removes objects from a bucket.
public struct CloudStorageClient: Sendable {
    public let target: UploadTarget
    let transport: any CloudStorageTransport

    public init(target: UploadTarget, transport: (any CloudStorageTransport)? = nil, timeout: Duration = .seconds(60)) {
        self.target = target
        self.transport = transport ?? URLSessionTransport(timeout: timeout)
    }

    /// The same client (transport, credentials) for another bucket.
    public func with(bucket: String) -> CloudStorageClient {
        var other = target
        other.bucket = bucket
        return CloudStorageClient(target: other, transport: transport)
    }

    /// A request that could not be completed: the connection failed or timed out, or the credentials' issuer was
    /// unreachable. Worth retrying.
    public struct TransportFailure: Error, Sendable, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    /// Sends one request. A second `401` (after a fresh token) is not a refusal of the package: it throws
    /// `credentials.refused`; so does a token endpoint that refuses the credentials.
    /// - Throws: `TransportFailure` (retryable), `ContinuonPackError` (`credentials.*`).
    public func send(_ method: String, _ url: URL, headers: [String: String] = [:], body: Data? = nil) async throws -> CloudStorageResponse {
        try await send(method, url, headers: headers, payload: body.map(Payload.bytes))
    }

    /// Sends `body` streamed from a file (an upload chunk).
    public func send(_ method: String, _ url: URL, headers: [String: String] = [:], body: FileRange) async throws -> CloudStorageResponse {
        try await send(method, url, headers: headers, payload: .file(body))
    }

    enum Payload {
        case bytes(Data)
        case file(FileRange)
    }

    private func send(_ method: String, _ url: URL, headers: [String: String], payload body: Payload?) async throws -> CloudStorageResponse {
        precondition(method != "DELETE", "continuon-pack never deletes from a bucket")
        let response = try await sendOnce(method, url, headers: headers, body: body, refresh: false)
        guard response.status == 401 else { return response }
        guard let credentials = target.credentials, carriesToken(url) else {
            // Not the package's fault: the server wants credentials that were not sent.
            let why = target.credentials == nil
                ? "give --credentials FILE or --credentials metadata"
                : "tokens are sent only over https (or http to a loopback address) and only to the --to host"
            throw ContinuonPackError(.credentialsNotFound, "\(url.host ?? "The server") answered 401: it needs credentials (\(why)).")
        }
        let again = try await sendOnce(method, url, headers: headers, body: body, refresh: true)
        guard again.status == 401 else { return again }
        let reason = Uploader.RejectionReason(body: Array(again.body.prefix(16 * 1024)))
        throw ContinuonPackError(.credentialsRefused, "\(target.baseURL.host ?? "The server") refused \(credentials.summary) "
            + "(HTTP 401\(reason.detail.map { ": " + $0 } ?? "")).")
    }

    /// Whether a request to `url` may carry the access token: only to the target's own origin (scheme, host and
    /// port; a session URI on another host gets none), and only over https, or http to a loopback address.
    func carriesToken(_ url: URL) -> Bool {
        guard target.credentials != nil, let scheme = url.scheme?.lowercased(), let host = url.host?.lowercased(),
              scheme == target.baseURL.scheme?.lowercased(), host == target.baseURL.host?.lowercased(),
              url.port == target.baseURL.port
        else { return false }
        return scheme == "https" || (scheme == "http" && UploadTarget.isLoopback(host))
    }

    private func sendOnce(_ method: String, _ url: URL, headers: [String: String], body: Payload?, refresh: Bool) async throws -> CloudStorageResponse {
        var headers = headers
        if let credentials = target.credentials, carriesToken(url) {
            do {
                headers["Authorization"] = "Bearer " + (try await credentials.accessToken(refresh: refresh)).value
            } catch let unavailable as CredentialsUnavailable {
                throw TransportFailure(message: unavailable.message)
            }
        }
        do {
            switch body {
            case let .file(range)?: return try await transport.send(method: method, url: url, headers: headers, body: range)
            case let .bytes(data)?: return try await transport.send(method: method, url: url, headers: headers, body: data)
            case nil: return try await transport.send(method: method, url: url, headers: headers, body: nil as Data?)
            }
        } catch {
            throw TransportFailure(message: "\(method) \(url.path): \(error.localizedDescription)")
        }
    }

    /// What a read of an object's metadata found.
    public enum ObjectLookup: Sendable {
        case found(JSONValue)
        case notFound
        /// The credentials may not read objects (an objectCreator-only identity): `403`.
        case forbidden
    }

    /// `GET {base}/storage/v1/b/{bucket}/o/{name}`.
    /// - Throws: `TransportFailure` for connection failures and `408`, `429`, `5xx`; `credentials.refused`.
    public func object(named name: String) async throws -> ObjectLookup {
        guard let url = target.objectURL(objectName: name) else { return .notFound }
        let response = try await send("GET", url)
        switch response.status {
        case 200:
            guard let value = try? StrictJSONParser.parse(Array(response.body)) else {
                throw TransportFailure(message: "the object's metadata is not JSON")
            }
            return .found(value)
        case 404: return .notFound
        case 403: return .forbidden
        case 408, 429, 500...: throw TransportFailure(message: "HTTP \(response.status) while reading the object's metadata")
        default: return .notFound
        }
    }

    /// One object as a listing names it.
    public struct ListedObject: Sendable, Equatable {
        public let name: String
        public let size: UInt64
        /// The version read: pinned by every later read (`ifGenerationMatch`), so one read sees one version.
        public let generation: String
    }

    /// `GET {base}/storage/v1/b/{bucket}/o?prefix=…`, every page.
    /// - Throws: `TransportFailure` for connection failures and `408`, `429`, `5xx`; `credentials.*`; `io.error`
    ///   for any other refusal (`403`: the credentials may not list) or an answer that is not a listing.
    public func list(prefix: String) async throws -> [ListedObject] {
        var objects: [ListedObject] = []
        var pageToken: String?
        repeat {
            guard var components = URLComponents(url: target.baseURL, resolvingAgainstBaseURL: false) else {
                throw ContinuonPackError(.ioError, "The endpoint \(target.baseURL) is not a URL.")
            }
            components.percentEncodedPath = target.basePath + "/storage/v1/b/" + UploadTarget.escapeComponent(target.bucket) + "/o"
            components.queryItems = [URLQueryItem(name: "prefix", value: prefix),
                                     URLQueryItem(name: "fields", value: "items(name,size,generation),nextPageToken")]
                + (pageToken.map { [URLQueryItem(name: "pageToken", value: $0)] } ?? [])
            guard let url = components.url else { throw ContinuonPackError(.ioError, "Cannot make a listing URL.") }
            let response = try await send("GET", url)
            switch response.status {
            case 200: break
            case 408, 429, 500...: throw TransportFailure(message: "HTTP \(response.status) while listing gs://\(target.bucket)/\(prefix)")
            default:
                let reason = Uploader.RejectionReason(body: Array(response.body.prefix(16 * 1024)))
                throw ContinuonPackError(.ioError, "Listing gs://\(target.bucket)/\(prefix) was refused (HTTP \(response.status)\(reason.detail.map { ": " + $0 } ?? "")).")
            }
            guard let page = try? StrictJSONParser.parse(Array(response.body)) else {
                throw ContinuonPackError(.ioError, "The listing of gs://\(target.bucket)/\(prefix) is not JSON.")
            }
            if case let .array(items)? = page["items"] {
                for item in items {
                    guard case let .string(name)? = item["name"], case let .string(sizeText)? = item["size"],
                          let size = UInt64(sizeText), case let .string(generation)? = item["generation"]
                    else { throw ContinuonPackError(.ioError, "The listing of gs://\(target.bucket)/\(prefix) holds an entry without name, size or generation.") }
                    objects.append(ListedObject(name: name, size: size, generation: generation))
                }
            }
            if case let .string(token)? = page["nextPageToken"], !token.isEmpty { pageToken = token } else { pageToken = nil }
        } while pageToken != nil
        return objects
    }

    /// The bytes `offset ..< offset + length` of one version of an object (`alt=media`, `Range`, `ifGenerationMatch`).
    /// - Throws: `TransportFailure` (retryable); `io.error` when the object or that version is gone, or the answer
    ///   is not the range asked for.
    public func read(_ object: ListedObject, offset: UInt64, length: Int) async throws -> Data {
        guard length > 0 else { return Data() }
        guard var components = target.objectURL(objectName: object.name, media: true)
            .flatMap({ URLComponents(url: $0, resolvingAgainstBaseURL: false) })
        else { throw ContinuonPackError(.ioError, "Cannot make a URL for \(object.name).") }
        components.queryItems = (components.queryItems ?? []) + [URLQueryItem(name: "ifGenerationMatch", value: object.generation)]
        guard let url = components.url else { throw ContinuonPackError(.ioError, "Cannot make a URL for \(object.name).") }
        let last = offset + UInt64(length) - 1
        let response = try await send("GET", url, headers: ["Range": "bytes=\(offset)-\(last)"])
        switch response.status {
        case 206:
            guard response.body.count == length else {
                throw TransportFailure(message: "a short range of \(object.name) (\(response.body.count) of \(length) bytes)")
            }
            return response.body
        case 200:
            // The whole object (a server that ignores Range): take the range from it.
            guard UInt64(response.body.count) >= last + 1 else {
                throw ContinuonPackError(.ioError, "gs://\(target.bucket)/\(object.name) is shorter than its listed size.")
            }
            return response.body.subdata(in: Int(offset)..<Int(last + 1))
        case 408, 429, 500...: throw TransportFailure(message: "HTTP \(response.status) while reading \(object.name)")
        default:
            throw ContinuonPackError(.ioError, "gs://\(target.bucket)/\(object.name) (generation \(object.generation)) cannot be read: HTTP \(response.status).")
        }
    }
}
