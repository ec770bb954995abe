import Foundation
import Testing
@testable import ContinuonPack
@testable import ContinuonPackUpload

/// `continuon-pack serve` as a real process on 127.0.0.1, with a local store.
func startServe(_ dir: TemporaryDirectory, trusting keys: [String] = [Repo.testPublicKey], store: String? = nil,
                extra: [String] = []) throws -> PeerServer {
    let arguments = ["serve", "--listen", "127.0.0.1:0", "--store", store ?? dir.file("store")]
        + keys.flatMap { ["--trusted-key", $0] } + extra
    return try PeerServer(executable: Repo.cli, arguments, standardError: dir.file("serve.log"))
}

func storedPackages(_ dir: TemporaryDirectory) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: dir.file("store"))) ?? []).filter { $0.hasSuffix(".cpkg") }
}

/// The bytes the service's spool directory holds (nothing, once every upload ended; the journals that keep each
/// session's answer are not counted).
func spoolLeftovers(_ dir: TemporaryDirectory) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: dir.file("store/.spool"))) ?? []).filter { !$0.hasSuffix(".session") && !$0.hasSuffix(".session.new") }
}

@Suite("The ingestion endpoint (continuon-pack serve)", .serialized)
struct ServeTests {
    @Test("Our uploader's package is verified, stored once, and a second upload is acknowledged without a copy")
    func accepted() async throws {
        let dir = try TemporaryDirectory()
        let server = try startServe(dir)
        let package = Repo.path("TestVectors/valid/package-zstd.cpkg")
        let first = try cli(["upload", package, "--to", server.baseURL.absoluteString, "--outbox", dir.file("outbox1"), "--chunk-size", "262144"])
        #expect(first.status == 0, "\(first.text) \(first.stderr)")
        let stored = storedPackages(dir)
        #expect(stored.count == 1)
        #expect(try readBytes(dir.file("store/" + (stored.first ?? "?"))) == (try readBytes(package)))
        // Another device uploads the same package: 412, same hashes, acknowledged; still one object.
        let again = try cli(["upload", package, "--to", server.baseURL.absoluteString, "--outbox", dir.file("outbox2")])
        #expect(again.status == 0, "\(again.text)")
        #expect(storedPackages(dir).count == 1)
        let health = try json(try run("curl", ["-sf", server.baseURL.absoluteString + "/healthz"]).stdout)
        #expect(health["status"] as? String == "ok")
        #expect((health["trust_policy"] as? [String: Any])?["keys"] as? Int == 1)
        let log = String(decoding: try readBytes(dir.file("serve.log")), as: UTF8.self)
        #expect(log.contains("upload accepted") && log.contains("package_id=c7d7adb8"))
    }

    struct Hostile: Sendable, CustomTestStringConvertible {
        let name: String
        let package: String
        let trusted: String
        let status: Int
        let code: String
        var prefix = ""
        var testDescription: String { name }
    }

    @Test("Hostile uploads are refused with a 4xx and our error code, and nothing is stored", arguments: [
        Hostile(name: "untrusted key", package: "valid/package-none.cpkg", trusted: "second-ed25519.pub", status: 422, code: "signature.untrusted"),
        Hostile(name: "bad signature", package: "invalid/signature-tampered.cpkg", trusted: "test-ed25519.pub", status: 422, code: "signature.invalid"),
        Hostile(name: "digest mismatch", package: "invalid/blob-digest-mismatch.cpkg", trusted: "test-ed25519.pub", status: 422, code: "blob.digest_mismatch"),
        Hostile(name: "truncated", package: "invalid/truncated-in-archive.cpkg", trusted: "test-ed25519.pub", status: 422, code: "package.corrupt"),
        Hostile(name: "trailing data", package: "invalid/outer-trailing-garbage.cpkg", trusted: "test-ed25519.pub", status: 422, code: "package.trailing_data"),
        Hostile(name: "wrong object name", package: "valid/package-none.cpkg", trusted: "test-ed25519.pub", status: 422, code: "upload.object_name_invalid", prefix: "other/"),
    ])
    func refused(_ hostile: Hostile) throws {
        let dir = try TemporaryDirectory()
        let server = try startServe(dir, trusting: [Repo.path("TestVectors/keys/" + hostile.trusted)])
        var arguments = ["upload", Repo.path("TestVectors/" + hostile.package), "--to", server.baseURL.absoluteString,
                         "--outbox", dir.file("outbox"), "--json"]
        if !hostile.prefix.isEmpty { arguments += ["--prefix", hostile.prefix] }
        let result = try cli(arguments)
        #expect(result.status == 1, "\(result.text) \(result.stderr)")
        let state = try #require((try JSONSerialization.jsonObject(with: Data(result.stdout)) as? [[String: Any]])?.first)
        #expect(state["state"] as? String == "rejected")
        #expect(state["rejection_status"] as? Int == hostile.status)
        let problem = try json(Array((state["rejection_body"] as? String ?? "").utf8))
        #expect(problem["code"] as? String == hostile.code)
        #expect(problem["status"] as? Int == hostile.status)
        #expect((problem["type"] as? String)?.hasPrefix("urn:continuon-pack:error:") == true)
        #expect(storedPackages(dir).isEmpty)
        #expect(spoolLeftovers(dir).isEmpty, "spool left behind: \(spoolLeftovers(dir))")
    }

    @Test("google-cloud-storage, streaming resumable with if_generation_match=0: a valid package stored, a tampered one refused")
    func googleClient() throws {
        let valid = try TemporaryDirectory()
        let server = try startServe(valid)
        let name = "c7d7adb8f983eaba86ec4a57ed08fb22dfc98deb08e20a7d066ea9b8c619e267.cpkg"
        let accepted = try json(try peer("gcs_client_upload.py", [server.baseURL.absoluteString, "staging", name,
                                                                  Repo.path("TestVectors/valid/package-none.cpkg"), "--mode", "resumable"]).stdout)
        #expect(accepted["ok"] as? Bool == true, "\(accepted)")
        #expect(storedPackages(valid) == [name])
        let tamperedDir = try TemporaryDirectory()
        let second = try startServe(tamperedDir)
        let refused = try json(try peer("gcs_client_upload.py", [second.baseURL.absoluteString, "staging", name,
                                                                 Repo.path("TestVectors/invalid/blob-digest-mismatch.cpkg"), "--mode", "resumable"]).stdout)
        #expect(refused["ok"] as? Bool == false)
        #expect(refused["status"] as? Int == 422, "\(refused)")
        #expect(storedPackages(tamperedDir).isEmpty)
    }

    /// A package of one random blob of `size` bytes (uncompressed, so its size is about `size`), and a copy with
    /// one byte of the blob flipped (a blob and archive digest mismatch, found at the end of the upload).
    static func packages(_ dir: TemporaryDirectory, size: Int) throws -> (valid: String, tampered: String, name: String) {
        let episodes = try dir.subdirectory("episodes-\(size)")
        let random = try #require(FileHandle(forReadingAtPath: "/dev/urandom"))
        _ = try dir.write("episodes-\(size)/steps.bin", [UInt8](random.readData(ofLength: size)))
        let packed = try cli(["pack", episodes, "--key", Repo.testKey, "--runtime-version", "1", "--app-version", "1",
                              "--environment-id", "lab", "--compression", "none", "--output", dir.file("packed-\(size)")])
        let valid = packed.lastLine
        var bytes = try readBytes(valid)
        bytes[bytes.count - 1024 - 10240 / 2 - size / 2] ^= 0x01 // inside the blob, away from every header
        let tampered = try dir.write("tampered-\(size).cpkg", bytes)
        let name = String(valid.split(separator: "/").last ?? "")
        return (valid, tampered, name)
    }

    @Test("google-cloud-storage's plain blob.upload_from_filename: 100 KB (one multipart request) and 20 MB (resumable without ifGenerationMatch), valid and tampered", arguments: [100_000, 20_000_000])
    func googleClientPlain(size: Int) throws {
        let dir = try TemporaryDirectory()
        let (valid, tampered, name) = try Self.packages(dir, size: size)
        let expectedRequests = size < 8 << 20 ? ["POST multipart"] : ["POST resumable", "PUT resumable"]

        let refusedDir = try TemporaryDirectory()
        let refusing = try startServe(refusedDir)
        let refused = try json(try peer("gcs_client_upload.py", [refusing.baseURL.absoluteString, "staging", name, tampered]).stdout)
        #expect(refused["ok"] as? Bool == false)
        #expect(refused["status"] as? Int == 422, "\(refused)")
        #expect((refused["message"] as? String)?.contains("blob.digest_mismatch") == true, "\(refused)")
        #expect(refused["requests"] as? [String] == expectedRequests)
        #expect(storedPackages(refusedDir).isEmpty)

        let server = try startServe(dir)
        let accepted = try json(try peer("gcs_client_upload.py", [server.baseURL.absoluteString, "staging", name, valid]).stdout)
        #expect(accepted["ok"] as? Bool == true, "\(accepted)")
        #expect(accepted["requests"] as? [String] == expectedRequests)
        #expect(try readBytes(dir.file("store/" + name)) == (try readBytes(valid)))
        // Create-only: the same call again is 412, and the object is unchanged.
        let again = try json(try peer("gcs_client_upload.py", [server.baseURL.absoluteString, "staging", name, valid]).stdout)
        #expect(again["status"] as? Int == 412, "\(again)")
        #expect(try readBytes(dir.file("store/" + name)) == (try readBytes(valid)))
        #expect(spoolLeftovers(dir).isEmpty, "spool left behind: \(spoolLeftovers(dir))")
    }

    @Test("curl: uploadType=media and uploadType=multipart in one request, verified as they stream; refusals are problem details")
    func curlSingleRequest() throws {
        let dir = try TemporaryDirectory()
        let server = try startServe(dir)
        let name = "c7d7adb8f983eaba86ec4a57ed08fb22dfc98deb08e20a7d066ea9b8c619e267.cpkg"
        let base = server.baseURL.absoluteString + "/upload/storage/v1/b/staging/o"
        func curl(_ query: String, _ body: String, _ headers: [String] = []) throws -> (status: Int, body: [String: Any]) {
            let result = try run("curl", ["-s", "-X", "POST", "--data-binary", "@" + body, "-w", "\n%{http_code}",
                                          base + "?" + query] + headers.flatMap { ["-H", $0] })
            let lines = result.text.split(separator: "\n", omittingEmptySubsequences: false)
            let status = Int(lines.last ?? "") ?? 0
            return (status, (try? json(Array(lines.dropLast().joined(separator: "\n").utf8))) ?? [:])
        }
        let tampered = try curl("uploadType=media&name=" + name, Repo.path("TestVectors/invalid/signature-tampered.cpkg"),
                                ["Content-Type: application/octet-stream"])
        #expect(tampered.status == 422 && tampered.body["code"] as? String == "signature.invalid", "\(tampered)")
        let noName = try curl("uploadType=media", Repo.path("TestVectors/valid/package-none.cpkg"))
        #expect(noName.status == 400 && noName.body["code"] as? String == "upload.name_missing", "\(noName)")
        #expect(storedPackages(dir).isEmpty)

        let package = try readBytes(Repo.path("TestVectors/valid/package-none.cpkg"))
        func multipart(_ metadata: String, boundary: String = "cpk_boundary_42") throws -> String {
            var body = Array("--\(boundary)\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n\(metadata)\r\n".utf8)
            body += Array("--\(boundary)\r\nContent-Type: application/octet-stream\r\n\r\n".utf8)
            body += package
            body += Array("\r\n--\(boundary)--\r\n".utf8)
            return try dir.write("multipart-\(body.count)-\(metadata.count)", body)
        }
        // md5Hash declared wrong: the bytes are checked against it.
        let wrongHash = try curl("uploadType=multipart", try multipart(#"{"name":"\#(name)","md5Hash":"AAAAAAAAAAAAAAAAAAAAAA=="}"#),
                                 ["Content-Type: multipart/related; boundary=cpk_boundary_42"])
        #expect(wrongHash.status == 400 && wrongHash.body["code"] as? String == "upload.checksum_mismatch", "\(wrongHash)")
        let badFraming = try curl("uploadType=multipart", try multipart(#"{"name":"\#(name)"}"#),
                                  ["Content-Type: multipart/related; boundary=another_boundary"])
        #expect(badFraming.status == 400 && badFraming.body["code"] as? String == "upload.multipart_invalid", "\(badFraming)")
        #expect(storedPackages(dir).isEmpty)

        let accepted = try curl("uploadType=multipart", try multipart(#"{"name":"\#(name)","contentType":"application/octet-stream"}"#),
                                ["Content-Type: multipart/related; boundary=cpk_boundary_42"])
        #expect(accepted.status == 200 && accepted.body["name"] as? String == name, "\(accepted)")
        #expect(accepted.body["size"] as? String == String(package.count))
        #expect(try readBytes(dir.file("store/" + name)) == package)
        let exists = try curl("uploadType=media&name=" + name, Repo.path("TestVectors/valid/package-none.cpkg"))
        #expect(exists.status == 412 && exists.body["code"] as? String == "upload.object_exists", "\(exists)")
        let generation = try curl("uploadType=media&ifGenerationMatch=7&name=" + name, Repo.path("TestVectors/valid/package-none.cpkg"))
        #expect(generation.status == 412 && generation.body["code"] as? String == "upload.precondition_failed", "\(generation)")
        let unsupported = try curl("uploadType=chunked&name=" + name, Repo.path("TestVectors/valid/package-none.cpkg"))
        #expect(unsupported.status == 400 && unsupported.body["code"] as? String == "upload.unsupported", "\(unsupported)")
    }

    @Test("Strict protocol: offsets are checked, held bytes dropped, and the 308 Range says what is really kept")
    func strictProtocol() async throws {
        let dir = try TemporaryDirectory()
        let server = try startServe(dir)
        let transport = URLSessionTransport()
        let package = try readBytes(Repo.path("TestVectors/valid/package-none.cpkg")) // 28160 bytes
        let name = "c7d7adb8f983eaba86ec4a57ed08fb22dfc98deb08e20a7d066ea9b8c619e267.cpkg"
        let target = UploadTarget(baseURL: server.baseURL)
        let initiated = try await transport.send(
            method: "POST", url: try #require(target.initiateURL(objectName: name)),
            headers: ["X-Upload-Content-Length": String(package.count)], body: Data())
        #expect(initiated.status == 200)
        let session = try #require(initiated.header("Location").flatMap(URL.init(string:)))
        func put(_ range: String, _ bytes: ArraySlice<UInt8>) async throws -> CloudStorageResponse {
            try await transport.send(method: "PUT", url: session, headers: ["Content-Range": range], body: Data(bytes))
        }
        // Nothing held yet: 308 without Range.
        let status = try await put("bytes */\(package.count)", [])
        #expect(status.status == 308 && status.header("Range") == nil)
        // A non-final chunk that is not a multiple of 256 KiB is refused.
        #expect(try await put("bytes 0-999/\(package.count)", package[0..<1000]).status == 400)
        // A gap is not accepted: the answer says nothing is held.
        let gap = try await put("bytes 10-\(package.count - 1)/\(package.count)", package[10...])
        #expect(gap.status == 308 && gap.header("Range") == nil)
        // The whole package, then a repeat of the tail (already held): completes exactly once.
        let done = try await put("bytes 0-\(package.count - 1)/\(package.count)", package[...])
        #expect(done.status == 200)
        let object = try json([UInt8](done.body))
        #expect(object["size"] as? String == String(package.count))
        let repeatFinal = try await put("bytes 0-\(package.count - 1)/\(package.count)", package[...])
        #expect(repeatFinal.status == 200)
        #expect(storedPackages(dir) == [name])
        // A request with a hostile Host header is answered, not crashed on.
        let crash = try run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: evil host/?#",
                                     "-X", "POST", server.baseURL.absoluteString + "/upload/storage/v1/b/staging/o?uploadType=resumable&ifGenerationMatch=0&name=" + String(repeating: "f", count: 64) + ".cpkg"])
        #expect(crash.text == "200")
        #expect(try run("curl", ["-sf", server.baseURL.absoluteString + "/healthz"]).status == 0)
    }

    @Test("Fail fast: a 100 MB package signed by an untrusted key costs the uploader about one 256 KiB chunk, not 100 MB")
    func failFastCost() throws {
        let dir = try TemporaryDirectory()
        let (package, _, _) = try Self.packages(dir, size: 100_000_000)
        let server = try startServe(dir, trusting: [Repo.secondPublicKey])
        let proxy = try PeerServer("fault_proxy.py", [String(server.port), "--count", dir.file("count")])
        let result = try cli(["upload", package, "--to", proxy.baseURL.absoluteString, "--outbox", dir.file("outbox"), "--json"])
        #expect(result.status == 1, "\(result.text) \(result.stderr)")
        let sent = Int(String(decoding: try readBytes(dir.file("count")), as: UTF8.self)) ?? .max
        #expect(sent < 400_000, "the uploader sent \(sent) bytes of a package refused from its envelope")
        let state = try #require(try Outbox(directory: dir.file("outbox")).entries().first)
        #expect(state.phase == .rejected && state.rejectionCode == "signature.untrusted")
    }

    @Test("A spool directory that others may write into is refused at start (a predictable path could be planted)")
    func spoolOwnership() throws {
        let dir = try TemporaryDirectory()
        let spool = try dir.subdirectory("shared-spool")
        chmod(spool, 0o777)
        let result = try cli(["serve", "--listen", "127.0.0.1:0", "--store", dir.file("store"), "--spool", spool,
                              "--trusted-key", Repo.testPublicKey])
        #expect(result.status == 2 && result.stderr.contains("writable by it alone"), "\(result.stderr)")
    }

    @Test("The network executable never writes a core file (it holds tokens and keys in memory)")
    func noCoreFiles() throws {
        let dir = try TemporaryDirectory()
        let server = try startServe(dir)
        let limits = String(decoding: try readBytes("/proc/\(server.process.processIdentifier)/limits"), as: UTF8.self)
        let core = limits.split(separator: "\n").first { $0.hasPrefix("Max core file size") } ?? ""
        #expect(core.split(separator: " ", omittingEmptySubsequences: true).dropFirst(4).prefix(2) == ["0", "0"], "\(core)")
    }

    @Test("SIGTERM stops the service")
    func gracefulStop() async throws {
        let dir = try TemporaryDirectory()
        let server = try startServe(dir)
        kill(server.process.processIdentifier, SIGTERM)
        for _ in 0..<100 where server.process.isRunning { try await Task.sleep(for: .milliseconds(50)) }
        #expect(!server.process.isRunning)
    }

    @Test("A Cloud Storage store: verified packages are forwarded to the bucket (gcp-storage-emulator)")
    func cloudStorageStore() async throws {
        let emulator = try PeerServer("emulator.py")
        let dir = try TemporaryDirectory()
        let server = try startServe(dir, store: "gs://staging/accepted", extra: [
            "--store-endpoint", emulator.baseURL.absoluteString, "--spool", dir.file("spool"),
        ])
        let package = Repo.path("TestVectors/valid/package-gzip.cpkg")
        let result = try cli(["upload", package, "--to", server.baseURL.absoluteString, "--outbox", dir.file("outbox")])
        #expect(result.status == 0, "\(result.text) \(result.stderr)")
        let bucket = UploadTarget(baseURL: emulator.baseURL)
        let stored = try await download(bucket, "accepted/c7d7adb8f983eaba86ec4a57ed08fb22dfc98deb08e20a7d066ea9b8c619e267.cpkg")
        #expect(stored == (try readBytes(package)))
    }
}
