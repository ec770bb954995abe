import ContinuonPack
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// One HTTP exchange, as the uploader needs it.
public struct HTTPResponse: Sendable {
    public let status: Int
    /// Header names in lowercase.
    public let headers: [String: String]
    public let body: Data

    public func header(_ name: String) -> String? { headers[name.lowercased()] }
}

/// Sends requests. Errors thrown are transport failures (connection refused, reset, timeout): retryable.
public protocol HTTPTransport: Sendable {
    func send(method: String, url: URL, headers: [String: String], body: Data?) async throws -> HTTPResponse
}

/// `URLSession` (FoundationNetworking on Linux). Redirects are never followed (a `308` is the protocol's "resume
/// incomplete", and a redirect would carry the `Authorization` header to another host): the redirect response itself
/// is returned. Every request has a hard deadline besides URLSession's idle timeout (which FoundationNetworking only
/// applies to silence, so a server that drips one byte at a time would otherwise hold a request forever).
public final class URLSessionTransport: NSObject, HTTPTransport, URLSessionTaskDelegate, @unchecked Sendable {
    private var session: URLSession!
    private let deadline: Duration

    /// - Parameters:
    ///   - timeout: the longest silence within a request.
    ///   - deadline: the longest a request may take in all; default ten times `timeout`.
    public init(timeout: Duration = .seconds(60), deadline: Duration? = nil) {
        self.deadline = deadline ?? timeout * 10
        super.init()
        let configuration = URLSessionConfiguration.ephemeral
        let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18
        configuration.timeoutIntervalForRequest = seconds
        configuration.timeoutIntervalForResource = seconds * 10
        configuration.httpMaximumConnectionsPerHost = 2
        session = URLSession(configuration: configuration, delegate: self, delegateQueue: nil)
    }

    deinit { session.invalidateAndCancel() }

    public func urlSession(_ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse,
                           newRequest request: URLRequest, completionHandler: @escaping (URLRequest?) -> Void) {
        completionHandler(nil)
    }

    public func send(method: String, url: URL, headers: [String: String], body: Data?) async throws -> HTTPResponse {
        let deadline = self.deadline
        return try await withThrowingTaskGroup(of: HTTPResponse?.self) { group in
            group.addTask { try await self.exchange(method: method, url: url, headers: headers, body: body) }
            group.addTask {
                try await Task.sleep(for: deadline)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let response = first else { throw URLError(.timedOut) }
            return response
        }
    }

    private func exchange(method: String, url: URL, headers: [String: String], body: Data?) async throws -> HTTPResponse {
        var request = URLRequest(url: url)
        request.httpMethod = method
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        let (data, response): (Data, URLResponse)
        if let body {
            (data, response) = try await session.upload(for: request, from: body)
        } else {
            (data, response) = try await session.data(for: request)
        }
        guard let http = response as? HTTPURLResponse else { throw URLError(.badServerResponse) }
        var lowered: [String: String] = [:]
        for (key, value) in http.allHeaderFields {
            if let key = key as? String, let value = value as? String { lowered[key.lowercased()] = value }
        }
        return HTTPResponse(status: http.statusCode, headers: lowered, body: data)
    }
}
