import CCurl
import ContinuonPack
import Foundation
import Synchronization

/// Sends one request whose body is a range of a file, read from the file as the connection takes it (libcurl asks for
/// at most its upload buffer at a time) and declared with its `Content-Length`. FoundationNetworking cannot: it
/// holds a `Data` body whole and copies it again, and sends a stream with `Transfer-Encoding: chunked`. With this, an
/// upload's memory does not grow with its chunk size.
///
/// The rules are `URLSessionTransport`'s: http and https only, redirects never followed (the `3xx` is returned),
/// TLS peers verified against the system's trust store, the proxy variables honoured as curl honours them, a
/// connection silent for `timeout` or a request older than `deadline` abandoned. Responses are small JSON documents:
/// headers beyond 64 KiB or a body beyond 1 MiB end the request as a transport failure.
final class FileRangeSender: Sendable {
    private let timeout: Duration
    private let deadline: Duration
    /// Idle easy handles: a handle keeps its connection open for the next chunk.
    private let idle = Mutex<[Handle]>([])

    /// A libcurl easy handle, used by one request at a time.
    private struct Handle: @unchecked Sendable {
        let pointer: UnsafeMutableRawPointer
    }

    static let maximumHeaderBytes = 64 * 1024
    static let maximumBodyBytes = 1024 * 1024

    init(timeout: Duration, deadline: Duration) {
        self.timeout = timeout
        self.deadline = deadline
        _ = Self.globalInit
    }

    deinit {
        for handle in idle.withLock({ $0 }) { curl_easy_cleanup(handle.pointer) }
    }

    private static let globalInit: Void = { curl_global_init(Int(CURL_GLOBAL_DEFAULT)) }()

    /// RFC 9110 token characters (header names, methods).
    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"): true
        default: "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
    }

    /// A transfer that failed: the connection, the peer's certificate, a timeout, an oversized response.
    struct Failure: LocalizedError {
        let message: String
        let timedOut: Bool
        var errorDescription: String? { message }
    }

    func send(method: String, url: URL, headers: [String: String], body: FileRange) async throws -> CloudStorageResponse {
        try await runOnOwnThread { flag in try self.perform(method: method, url: url, headers: headers, body: body, flag: flag) }
    }

    private func perform(method: String, url: URL, headers: [String: String], body: FileRange, flag: CancellationFlag) throws -> CloudStorageResponse {
        guard let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https" else {
            throw Failure(message: "only http and https URLs are sent", timedOut: false)
        }
        guard body.length >= 0, !method.isEmpty, method.utf8.allSatisfy(Self.isTokenByte) else {
            throw Failure(message: "the request is malformed (method or body length)", timedOut: false)
        }
        let file = try FileDescriptor.openForReading(body.path)
        let exchange = Exchange(file: file, range: body, flag: flag)
        var list: UnsafeMutablePointer<curl_slist>?
        defer { curl_slist_free_all(list) }
        for (name, value) in headers where name.lowercased() != "content-length" {
            // A control byte in a value (CR, LF, NUL: a token from a hostile issuer, say) would make a second header
            // or cut this one short: refuse. Names are HTTP tokens.
            guard !name.isEmpty, name.utf8.allSatisfy(Self.isTokenByte),
                  value.utf8.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) })
            else {
                throw Failure(message: "a header name or value holds a forbidden byte", timedOut: false)
            }
            list = curl_slist_append(list, "\(name): \(value)")
        }
        // No "Expect: 100-continue": a server that does not answer it (the ingestion service, many proxies) would
        // cost a second's wait per chunk. A refused package is refused on the chunk that carried its envelope.
        list = curl_slist_append(list, "Expect:")

        guard let handle = idle.withLock({ $0.popLast()?.pointer }) ?? curl_easy_init() else {
            throw Failure(message: "libcurl could not make a handle", timedOut: false)
        }
        var reusable = false
        defer {
            if reusable {
                curl_easy_reset(handle)
                let kept = idle.withLock { handles in
                    guard handles.count < 4 else { return false }
                    handles.append(Handle(pointer: handle))
                    return true
                }
                if !kept { curl_easy_cleanup(handle) }
            } else {
                curl_easy_cleanup(handle)
            }
        }

        let context = Unmanaged.passUnretained(exchange).toOpaque()
        // At least 1 ms (0 means "no limit" to libcurl), at most a day (no overflow).
        let milliseconds = { (duration: Duration) -> Int in
            let seconds = min(max(duration.components.seconds, 0), 86_400)
            return max(1, Int(seconds) * 1000 + Int(max(duration.components.attoseconds, 0) / 1_000_000_000_000_000))
        }
        var status = CURLE_OK
        func set(_ result: CURLcode) { if status == CURLE_OK { status = result } }
        set(ccurl_setopt_string(handle, CURLOPT_URL, url.absoluteString))
        set(ccurl_restrict_to_http(handle))
        set(ccurl_setopt_long(handle, CURLOPT_FOLLOWLOCATION, 0))
        set(ccurl_setopt_long(handle, CURLOPT_NOSIGNAL, 1))
        set(ccurl_setopt_long(handle, CURLOPT_SSL_VERIFYPEER, 1))
        set(ccurl_setopt_long(handle, CURLOPT_SSL_VERIFYHOST, 2))
        set(ccurl_setopt_long(handle, CURLOPT_UPLOAD, 1))
        set(ccurl_setopt_string(handle, CURLOPT_CUSTOMREQUEST, method))
        set(ccurl_setopt_offset(handle, CURLOPT_INFILESIZE_LARGE, curl_off_t(body.length)))
        set(ccurl_setopt_list(handle, CURLOPT_HTTPHEADER, list))
        set(ccurl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, milliseconds(timeout)))
        set(ccurl_setopt_long(handle, CURLOPT_TIMEOUT_MS, milliseconds(deadline)))
        // Silence: less than one byte a second, in either direction, for `timeout`.
        set(ccurl_setopt_long(handle, CURLOPT_LOW_SPEED_LIMIT, 1))
        set(ccurl_setopt_long(handle, CURLOPT_LOW_SPEED_TIME, max(1, milliseconds(timeout) / 1000)))
        set(ccurl_setopt_pointer(handle, CURLOPT_READDATA, context))
        set(ccurl_setopt_read(handle) { buffer, size, count, context in
            Unmanaged<Exchange>.fromOpaque(context!).takeUnretainedValue().read(into: buffer, size * count)
        })
        // A body libcurl must send again (a kept-alive connection found dead) starts over: reads are positional.
        set(ccurl_setopt_pointer(handle, CURLOPT_SEEKDATA, context))
        set(ccurl_setopt_seek(handle) { context, offset, origin in
            Unmanaged<Exchange>.fromOpaque(context!).takeUnretainedValue().seek(to: offset, origin: origin)
        })
        set(ccurl_setopt_pointer(handle, CURLOPT_HEADERDATA, context))
        set(ccurl_setopt_write(handle, CURLOPT_HEADERFUNCTION) { bytes, size, count, context in
            Unmanaged<Exchange>.fromOpaque(context!).takeUnretainedValue().header(bytes, size * count)
        })
        set(ccurl_setopt_pointer(handle, CURLOPT_WRITEDATA, context))
        set(ccurl_setopt_write(handle, CURLOPT_WRITEFUNCTION) { bytes, size, count, context in
            Unmanaged<Exchange>.fromOpaque(context!).takeUnretainedValue().body(bytes, size * count)
        })
        set(ccurl_setopt_long(handle, CURLOPT_NOPROGRESS, 0))
        set(ccurl_setopt_pointer(handle, CURLOPT_XFERINFODATA, context))
        set(ccurl_setopt_progress(handle) { context, _, _, _, _ in
            Unmanaged<Exchange>.fromOpaque(context!).takeUnretainedValue().flag.isCancelled ? 1 : 0
        })
        guard status == CURLE_OK else {
            throw Failure(message: "libcurl refused an option: \(String(cString: curl_easy_strerror(status)))", timedOut: false)
        }

        let result = curl_easy_perform(handle)
        withExtendedLifetime(exchange) {}
        if flag.isCancelled { throw CancellationError() }
        if let readError = exchange.readError { throw readError }
        guard result == CURLE_OK else {
            let why = exchange.overflow ?? String(cString: curl_easy_strerror(result))
            throw Failure(message: why, timedOut: result == CURLE_OPERATION_TIMEDOUT)
        }
        var code = 0
        _ = ccurl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &code)
        reusable = true
        return CloudStorageResponse(status: code, headers: exchange.headers, body: Data(exchange.responseBody))
    }

    /// One request's state, reached from libcurl's callbacks (all on the thread running `curl_easy_perform`).
    private final class Exchange {
        let file: FileDescriptor
        let range: FileRange
        let flag: CancellationFlag
        var sent = 0
        var headerBytes = 0
        var headers: [String: String] = [:]
        var responseBody: [UInt8] = []
        var readError: (any Error)?
        var overflow: String?

        init(file: FileDescriptor, range: FileRange, flag: CancellationFlag) {
            self.file = file
            self.range = range
            self.flag = flag
        }

        func read(into buffer: UnsafeMutablePointer<CChar>?, _ capacity: Int) -> Int {
            let wanted = min(capacity, range.length - sent)
            guard wanted > 0, let buffer else { return 0 }
            do {
                let count = try file.read(into: UnsafeMutableRawBufferPointer(start: buffer, count: wanted),
                                          at: Int64(range.offset) + Int64(sent))
                guard count > 0 else {
                    throw ContinuonPackError(.ioError, "\(range.path) is shorter than the range to send.")
                }
                sent += count
                return count
            } catch {
                readError = error
                return Int(CURL_READFUNC_ABORT)
            }
        }

        func seek(to offset: curl_off_t, origin: Int32) -> Int32 {
            guard origin == SEEK_SET, offset >= 0, offset <= curl_off_t(range.length) else { return Int32(CURL_SEEKFUNC_CANTSEEK) }
            sent = Int(offset)
            return Int32(CURL_SEEKFUNC_OK)
        }

        func header(_ bytes: UnsafeMutablePointer<CChar>?, _ count: Int) -> Int {
            headerBytes += count
            guard headerBytes <= FileRangeSender.maximumHeaderBytes, let bytes else {
                overflow = "the response's headers exceed \(FileRangeSender.maximumHeaderBytes) bytes"
                return 0
            }
            let line = String(decoding: UnsafeRawBufferPointer(start: bytes, count: count), as: UTF8.self)
            if line.hasPrefix("HTTP/") {
                // A new response (after a 100 Continue or a proxy's CONNECT): only the last one's headers count.
                headers = [:]
            } else if let colon = line.firstIndex(of: ":") {
                let name = line[..<colon].lowercased()
                let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespacesAndNewlines)
                headers[name] = headers[name].map { $0 + ", " + value } ?? value
            }
            return count
        }

        func body(_ bytes: UnsafeMutablePointer<CChar>?, _ count: Int) -> Int {
            guard responseBody.count + count <= FileRangeSender.maximumBodyBytes, let bytes else {
                overflow = "the response's body exceeds \(FileRangeSender.maximumBodyBytes) bytes"
                return 0
            }
            responseBody.append(contentsOf: UnsafeRawBufferPointer(start: bytes, count: count))
            return count
        }
    }
}
