import ContinuonPack
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// One HTTP exchange, as the uploader needs it.
public struct CloudStorageResponse: Sendable {
    public let status: Int
    /// Header names in lowercase.
    public let headers: [String: String]
    public let body: Data

    public func header(_ name: String) -> String? { headers[name.lowercased()] }
}

/// A request body read from a file: `length` bytes from `offset` (a chunk of a package in the outbox).
public struct FileRange: Sendable, Equatable {
    public let path: String
    public let offset: UInt64
    public let length: Int

    public init(path: String, offset: UInt64, length: Int) {
        self.path = path
        self.offset = offset
        self.length = length
    }

    /// The bytes, read whole (for transports that cannot stream a body).
    public func read() throws -> Data {
        let file = try FileDescriptor.openForReading(path)
        var data = Data(count: length)
        var filled = 0
        try data.withUnsafeMutableBytes { raw in
            while filled < length {
                let count = try file.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[filled...]), at: Int64(offset) + Int64(filled))
                if count == 0 { break }
                filled += count
            }
        }
        guard filled == length else { throw ContinuonPackError(.ioError, "\(path) is shorter than the range to send.") }
        return data
    }
}

/// Sends requests. Errors thrown are transport failures (connection refused, reset, timeout): retryable.
public protocol CloudStorageTransport: Sendable {
    func send(method: String, url: URL, headers: [String: String], body: Data?) async throws -> CloudStorageResponse
    /// Sends `body` read from a file. The default reads it whole and calls `send(method:url:headers:body:)`; a
    /// transport that can stream a body with a known length may read it as it goes.
    func send(method: String, url: URL, headers: [String: String], body: FileRange) async throws -> CloudStorageResponse
}

extension CloudStorageTransport {
    public func send(method: String, url: URL, headers: [String: String], body: FileRange) async throws -> CloudStorageResponse {
        try await send(method: method, url: url, headers: headers, body: try body.read())
    }
}

/// `URLSession` (FoundationNetworking on Linux). Redirects are never followed (a `308` is the protocol's "resume
/// incomplete", and a redirect would carry the `Authorization` header to another host): the redirect response itself
/// is returned. Every request has a hard deadline besides URLSession's idle timeout (which FoundationNetworking only
/// applies to silence, so a server that drips one byte at a time would otherwise hold a request forever).
public final class URLSessionTransport: NSObject, CloudStorageTransport, URLSessionTaskDelegate, @unchecked Sendable {
    private var session: URLSession!
    private let deadline: Duration
    private let fileSender: FileRangeSender

    /// - Parameters:
    ///   - timeout: the longest silence within a request.
    ///   - deadline: the longest a request may take in all; default ten times `timeout`.
    public init(timeout: Duration = .seconds(60), deadline: Duration? = nil) {
        self.deadline = deadline ?? timeout * 10
        fileSender = FileRangeSender(timeout: timeout, deadline: self.deadline)
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

    public func send(method: String, url: URL, headers: [String: String], body: Data?) async throws -> CloudStorageResponse {
        try await withDeadline { try await self.exchange(method: method, url: url, headers: headers, body: body) }
    }

    /// Streams the range from the file with libcurl (`FileRangeSender`): memory stays a few buffers whatever the
    /// chunk size.
    public func send(method: String, url: URL, headers: [String: String], body: FileRange) async throws -> CloudStorageResponse {
        do {
            return try await fileSender.send(method: method, url: url, headers: headers, body: body)
        } catch let failure as FileRangeSender.Failure where failure.timedOut {
            throw URLError(.timedOut)
        }
    }

    private func withDeadline(_ work: @escaping @Sendable () async throws -> CloudStorageResponse) async throws -> CloudStorageResponse {
        let deadline = self.deadline
        return try await withThrowingTaskGroup(of: CloudStorageResponse?.self) { group in
            group.addTask { try await work() }
            group.addTask {
                try await Task.sleep(for: deadline)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let response = first else { throw URLError(.timedOut) }
            return response
        }
    }

    private func exchange(method: String, url: URL, headers: [String: String], body: Data?) async throws -> CloudStorageResponse {
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
        return CloudStorageResponse(status: http.statusCode, headers: lowered, body: data)
    }
}

