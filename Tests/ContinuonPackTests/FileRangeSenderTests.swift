import Foundation
import Testing
@testable import ContinuonPack
@testable import ContinuonPackUpload

/// The chunk bodies the uploader streams from its outbox with libcurl, checked against a raw server written in Python.
@Suite("Streamed chunk bodies (FileRangeSender)", .serialized)
struct FileRangeSenderTests {
    @Test("A range arrives whole with its Content-Length, never chunked, and the connection is reused")
    func rangeArrives() async throws {
        let dir = try TemporaryDirectory()
        let log = dir.path + "/requests.jsonl"
        let server = try PeerServer("body_server.py", ["record", "--log", log])
        let file = try randomFile(dir, "package", size: 3 * 1024 * 1024 + 17)
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
        let transport = URLSessionTransport(timeout: .seconds(5))
        let ranges = [(0, 1024 * 1024), (1024 * 1024, 2 * 1024 * 1024 + 17), (17, 0)]
        for (offset, length) in ranges {
            let response = try await transport.send(
                method: "PUT", url: server.baseURL.appendingPathComponent("session"),
                headers: ["Content-Range": "bytes \(offset)-\(offset + length - 1)/*", "Content-Length": "999"],
                body: FileRange(path: file, offset: UInt64(offset), length: length))
            #expect(response.status == 200)
            #expect(response.header("Content-Type") == "application/json")
        }
        let seen = try requestLog(log)
        #expect(seen.count == 3)
        #expect(Set(seen.map { $0["connection"] as? Int }).count == 1, "one connection for the three chunks")
        for (index, (offset, length)) in ranges.enumerated() {
            let request = seen[index]
            let headers = try #require(request["headers"] as? [String: String])
            #expect(request["method"] as? String == "PUT")
            #expect(headers["content-length"] == String(length), "ours, not the caller's")
            #expect(headers["transfer-encoding"] == nil)
            #expect(headers["expect"] == nil)
            #expect(request["length"] as? Int == length)
            let hasher = SHA256Hasher()
            hasher.update(Array(bytes[offset..<(offset + length)]))
            #expect(request["sha256"] as? String == hasher.finalize().hex)
        }
    }

    @Test("A file shorter than the range is an I/O error, not a short body sent as complete")
    func shortFile() async throws {
        let dir = try TemporaryDirectory()
        let server = try PeerServer("body_server.py", ["record"])
        let file = try randomFile(dir, "package", size: 1000)
        await #expect(throws: ContinuonPackError.self) {
            _ = try await URLSessionTransport(timeout: .seconds(5)).send(
                method: "PUT", url: server.baseURL, headers: [:], body: FileRange(path: file, offset: 500, length: 1000))
        }
    }

    @Test("A header value with CR LF (a hostile token, say) or a NUL is refused before anything is sent")
    func headerInjection() async throws {
        let dir = try TemporaryDirectory()
        let log = dir.path + "/requests.jsonl"
        let server = try PeerServer("body_server.py", ["record", "--log", log])
        let file = try randomFile(dir, "package", size: 100)
        for headers in [["Authorization": "Bearer x\r\nX-Injected: 1"], ["Authorization": "Bearer x\u{0}tail"],
                        ["Bad Name": "v"], ["X-Ok": "line\nbreak"]] {
            await #expect(throws: (any Error).self) {
                _ = try await URLSessionTransport(timeout: .seconds(5)).send(
                    method: "PUT", url: server.baseURL, headers: headers, body: FileRange(path: file, offset: 0, length: 100))
            }
        }
        #expect(try requestLog(log).isEmpty)
    }

    @Test("A redirect is returned, not followed")
    func redirect() async throws {
        let dir = try TemporaryDirectory()
        let server = try PeerServer("body_server.py", ["redirect"])
        let file = try randomFile(dir, "package", size: 4096)
        let response = try await URLSessionTransport(timeout: .seconds(5)).send(
            method: "PUT", url: server.baseURL, headers: [:], body: FileRange(path: file, offset: 0, length: 4096))
        #expect(response.status == 307)
        #expect(response.header("Location") == "/elsewhere")
    }

    @Test("Hostile answers end the request as a transport failure, within the deadline",
          arguments: ["drip", "silent", "big-headers", "big-body"])
    func hostile(_ mode: String) async throws {
        let dir = try TemporaryDirectory()
        let server = try PeerServer("body_server.py", [mode])
        let file = try randomFile(dir, "package", size: 4096)
        let started = ContinuousClock.now
        await #expect(throws: (any Error).self) {
            _ = try await URLSessionTransport(timeout: .seconds(1), deadline: .seconds(3)).send(
                method: "PUT", url: server.baseURL, headers: [:], body: FileRange(path: file, offset: 0, length: 4096))
        }
        #expect(ContinuousClock.now - started < .seconds(8))
    }

    @Test("TLS: a certificate the system does not trust is refused before any byte of the body")
    func untrustedCertificate() async throws {
        let dir = try TemporaryDirectory()
        let key = dir.path + "/key.pem", cert = dir.path + "/cert.pem"
        let openssl = Process()
        openssl.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        openssl.arguments = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                             "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                             "-addext", "subjectAltName=IP:127.0.0.1"]
        openssl.standardError = FileHandle.nullDevice
        try openssl.run()
        openssl.waitUntilExit()
        let log = dir.path + "/requests.jsonl"
        let server = try PeerServer("body_server.py", ["record", "--log", log, "--cert", cert, "--key", key])
        let file = try randomFile(dir, "package", size: 4096)
        let url = try #require(URL(string: "https://127.0.0.1:\(server.port)/session"))
        await #expect(throws: (any Error).self) {
            _ = try await URLSessionTransport(timeout: .seconds(5)).send(
                method: "PUT", url: url, headers: ["Authorization": "Bearer secret"], body: FileRange(path: file, offset: 0, length: 4096))
        }
        #expect(try requestLog(log).isEmpty)
    }

    @Test("Cancelling the task stops the transfer with CancellationError")
    func cancellation() async throws {
        let dir = try TemporaryDirectory()
        let server = try PeerServer("body_server.py", ["silent"])
        let file = try randomFile(dir, "package", size: 4096)
        let task = Task {
            try await URLSessionTransport(timeout: .seconds(30)).send(
                method: "PUT", url: server.baseURL, headers: [:], body: FileRange(path: file, offset: 0, length: 4096))
        }
        try await Task.sleep(for: .milliseconds(300))
        let started = ContinuousClock.now
        task.cancel()
        await #expect(throws: CancellationError.self) { _ = try await task.value }
        #expect(ContinuousClock.now - started < .seconds(3))
    }
}
