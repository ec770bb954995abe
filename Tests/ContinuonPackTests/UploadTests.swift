import Foundation
import Testing
@testable import ContinuonPack
@testable import ContinuonPackUpload

/// A helper process (emulator, scripted fake, fault proxy) that prints "PORT <n>" when ready; ended on release.
final class PeerServer {
    let process = Process()
    let port: Int
    var baseURL: URL { URL(string: "http://127.0.0.1:\(port)")! }

    convenience init(_ script: String, _ arguments: [String] = []) throws {
        try self.init(executable: "/usr/bin/env", ["python3", Repo.path("Tests/peers/" + script)] + arguments)
    }

    /// Any program that prints "PORT <n>" or "listening on http://HOST:<n>" when ready.
    init(executable: String, _ arguments: [String], standardError: String? = nil) throws {
        let pipe = Pipe()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = pipe
        if let standardError {
            FileManager.default.createFile(atPath: standardError, contents: nil)
            process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: standardError))
        } else {
            process.standardError = FileHandle.nullDevice
        }
        try process.run()
        var line = Data()
        while !line.contains(0x0a) {
            let byte = pipe.fileHandleForReading.readData(ofLength: 1)
            guard !byte.isEmpty else { break }
            line.append(byte)
        }
        let text = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        let portText = text.hasPrefix("PORT ") ? String(text.dropFirst(5)) : text.split(separator: ":").last.map(String.init)
        guard let port = portText.flatMap({ Int($0) }) else {
            process.terminate()
            throw ContinuonPackError(.ioError, "\(arguments) did not start: \(text)")
        }
        self.port = port
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// Fast retries for tests: real sleeps, but short.
let quickPolicy = RetryPolicy(baseDelay: .milliseconds(20), maxDelay: .milliseconds(200), deadline: .seconds(60), requestTimeout: .seconds(5))

func download(_ target: UploadTarget, _ name: String) async throws -> [UInt8] {
    let response = try await URLSessionTransport().send(
        method: "GET", url: try #require(target.objectURL(objectName: name, media: true)), headers: [:], body: nil)
    #expect(response.status == 200)
    return [UInt8](response.body)
}

func randomFile(_ directory: TemporaryDirectory, _ name: String, size: Int, seed: UInt64 = 1) throws -> String {
    var generator = seed | 1
    var bytes = [UInt8](repeating: 0, count: size)
    for index in bytes.indices {
        generator ^= generator << 13; generator ^= generator >> 7; generator ^= generator << 17
        bytes[index] = UInt8(truncatingIfNeeded: generator)
    }
    return try directory.write(name, bytes)
}

func requestLog(_ path: String) throws -> [[String: Any]] {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
    return try text.split(separator: "\n").map { try json(Array($0.utf8)) }
}

@Suite("Uploads against real peers on 127.0.0.1", .serialized)
struct UploadTests {
    @Test("gcp-storage-emulator: every awkward size arrives intact",
          arguments: [0, 1, 256 * 1024 - 1, 256 * 1024, 256 * 1024 + 1, 20 * 1024 * 1024 + 12345])
    func emulatorSizes(_ size: Int) async throws {
        let emulator = try PeerServer("emulator.py")
        let dir = try TemporaryDirectory()
        let outbox = try Outbox(directory: try dir.subdirectory("outbox"))
        let file = try randomFile(dir, "blob", size: size, seed: UInt64(size) + 7)
        let id = String(repeating: "a", count: 63) + String(size % 10)
        try outbox.add(fileAt: file, packageID: id)
        let target = UploadTarget(baseURL: emulator.baseURL, chunkSize: 256 * 1024)
        let state = try await Uploader(outbox: outbox, target: target, policy: quickPolicy).upload(packageID: id)
        #expect(state.phase == .acknowledged, "\(state)")
        let stored = try await download(target, target.objectName(packageID: id))
        #expect(SHA256Hasher.hash(stored).hex == (try sha256Hex(file)))
        #expect(FileManager.default.fileExists(atPath: outbox.packagePath(id)))
    }

    @Test("The CLI uploads a real package to the emulator and exits 0")
    func cliUpload() throws {
        let emulator = try PeerServer("emulator.py")
        let dir = try TemporaryDirectory()
        let package = Repo.path("TestVectors/valid/package-gzip.cpkg")
        let result = try cli(["upload", package, "--to", emulator.baseURL.absoluteString, "--outbox", dir.file("outbox"), "--json"])
        #expect(result.status == 0, "\(result.text) \(result.stderr)")
        let states = try JSONSerialization.jsonObject(with: Data(result.stdout)) as? [[String: Any]]
        #expect(states?.first?["state"] as? String == "acknowledged")
        let status = try cli(["outbox", "status", "--outbox", dir.file("outbox")])
        #expect(status.text.contains("acknowledged"))
    }

    struct Scenario: Sendable, CustomTestStringConvertible {
        let name: String
        let phase: OutboxState.Phase
        let rejection: Int?
        var testDescription: String { name }
    }

    @Test("Scripted faults end acknowledged with the right bytes, or rejected with the server's reason", arguments: [
        Scenario(name: "ok", phase: .acknowledged, rejection: nil),
        Scenario(name: "partial", phase: .acknowledged, rejection: nil),
        Scenario(name: "no-range", phase: .acknowledged, rejection: nil),
        Scenario(name: "throttle", phase: .acknowledged, rejection: nil),
        Scenario(name: "unavailable", phase: .acknowledged, rejection: nil),
        Scenario(name: "expire", phase: .acknowledged, rejection: nil),
        Scenario(name: "exists-same", phase: .acknowledged, rejection: nil),
        Scenario(name: "exists-different", phase: .rejected, rejection: 412),
        Scenario(name: "hash-mismatch", phase: .rejected, rejection: 400),
        Scenario(name: "forbidden", phase: .rejected, rejection: 403),
    ])
    func scriptedFaults(_ scenario: Scenario) async throws {
        let dir = try TemporaryDirectory()
        let size = 3 * 1024 * 1024 + 777
        let file = try randomFile(dir, "package.cpkg", size: size, seed: 42)
        var arguments = ["--scenario", scenario.name, "--log", dir.file("requests.log")]
        if scenario.name == "exists-same" { arguments += ["--preload", file] }
        if scenario.name == "exists-different" { arguments += ["--preload", try randomFile(dir, "other", size: size, seed: 1000)] }
        let server = try PeerServer("fake_gcs.py", arguments)
        let outbox = try Outbox(directory: try dir.subdirectory("outbox"))
        let id = String(repeating: "b", count: 64)
        try outbox.add(fileAt: file, packageID: id)
        let chunk = 512 * 1024
        let target = UploadTarget(baseURL: server.baseURL, chunkSize: chunk)
        let state = try await Uploader(outbox: outbox, target: target, policy: quickPolicy).upload(packageID: id)
        #expect(state.phase == scenario.phase, "\(state)")
        #expect(state.rejectionStatus == scenario.rejection)
        #expect(try outbox.state(of: id) == state) // what was returned is what is on disk
        #expect(try sha256Hex(outbox.packagePath(id)) == (try sha256Hex(file))) // the package is never lost
        if scenario.phase == .acknowledged {
            #expect(try await download(target, target.objectName(packageID: id)) == (try readBytes(file)))
        } else {
            #expect(state.rejectionBody?.isEmpty == false)
        }
        // No fault costs more than about one chunk of re-sent data ("expire" restarts, by the protocol's rules).
        let sent = try requestLog(dir.file("requests.log")).compactMap { $0["received"] as? Int }.reduce(0, +)
        let allowance = scenario.name == "expire" ? size + 2 * chunk : size + chunk
        #expect(sent <= allowance, "sent \(sent) bytes for a \(size)-byte package")
    }

    @Test("A connection cut mid-chunk resumes from the server's offset (fault proxy in front of the emulator)",
          arguments: ["--cut-after", "--reset-after"])
    func faultProxy(_ fault: String) async throws {
        let emulator = try PeerServer("emulator.py")
        let proxy = try PeerServer("fault_proxy.py", [String(emulator.port), fault, String(700 * 1024)])
        let dir = try TemporaryDirectory()
        let file = try randomFile(dir, "package.cpkg", size: 2 * 1024 * 1024 + 5, seed: 9)
        let outbox = try Outbox(directory: try dir.subdirectory("outbox"))
        let id = String(repeating: "c", count: 64)
        try outbox.add(fileAt: file, packageID: id)
        let target = UploadTarget(baseURL: proxy.baseURL, chunkSize: 256 * 1024)
        let state = try await Uploader(outbox: outbox, target: target, policy: quickPolicy).upload(packageID: id)
        #expect(state.phase == .acknowledged, "\(state)")
        #expect(state.attempts >= 1)
        let direct = UploadTarget(baseURL: emulator.baseURL)
        #expect(try await download(direct, direct.objectName(packageID: id)) == (try readBytes(file)))
    }

    @Test("kill -9 mid-upload, then a new run resumes the same session from a non-zero offset")
    func killAndResume() async throws {
        let dir = try TemporaryDirectory()
        let log = dir.file("requests.log")
        let server = try PeerServer("fake_gcs.py", ["--scenario", "slow", "--delay", "0.15", "--log", log])
        let outboxPath = try dir.subdirectory("outbox")
        let package = Repo.path("TestVectors/valid/package-none.cpkg")
        // A bigger real package, so that there are many chunks.
        let episodes = try dir.subdirectory("episodes")
        _ = try randomFile(dir, "episodes/big.bin", size: 6 * 1024 * 1024, seed: 5)
        let packed = try cli(["pack", episodes, "--key", Repo.testKey, "--output", try dir.subdirectory("out"), "--compression", "none",
                              "--runtime-version", "1", "--app-version", "1", "--environment-id", "e"])
        let path = packed.status == 0 ? packed.lastLine : package
        #expect(try cli(["outbox", "add", path, "--outbox", outboxPath]).status == 0)
        let id = try #require(try Outbox(directory: outboxPath).entries().first?.packageID)
        let arguments = ["outbox", "run", "--once", "--outbox", outboxPath, "--to", server.baseURL.absoluteString, "--chunk-size", "262144"]
        let first = try launchCLI(arguments)
        var confirmed: UInt64 = 0
        for _ in 0..<200 where confirmed < 1024 * 1024 {
            try await Task.sleep(for: .milliseconds(50))
            confirmed = (try? Outbox(directory: outboxPath).state(of: id).confirmed) ?? 0
        }
        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()
        let afterKill = try Outbox(directory: outboxPath).state(of: id)
        #expect(afterKill.phase == .uploading)
        #expect(afterKill.confirmed > 0)
        let requestsBefore = try requestLog(log).count
        let second = try cli(arguments)
        #expect(second.status == 0, "\(second.text) \(second.stderr)")
        let secondRun = try requestLog(log).dropFirst(requestsBefore)
        #expect(secondRun.allSatisfy { ($0["method"] as? String) != "POST" }, "the second run started a new session")
        let firstChunk = secondRun.first { ($0["received"] as? Int ?? 0) > 0 }
        let start = (firstChunk?["content_range"] as? String)?.split(separator: " ").last?.split(separator: "-").first
        #expect(UInt64(start ?? "0") ?? 0 > 0, "the second run started from byte 0")
        let final = try Outbox(directory: outboxPath).state(of: id)
        #expect(final.phase == .acknowledged)
        let target = UploadTarget(baseURL: server.baseURL)
        #expect(try await download(target, target.objectName(packageID: id)) == (try readBytes(path)))
    }

    @Test("Two uploader processes on one outbox never upload the same entry")
    func twoProcesses() async throws {
        let dir = try TemporaryDirectory()
        let log = dir.file("requests.log")
        let server = try PeerServer("fake_gcs.py", ["--scenario", "slow", "--delay", "0.1", "--log", log])
        let outboxPath = try dir.subdirectory("outbox")
        let file = try randomFile(dir, "package.cpkg", size: 3 * 1024 * 1024, seed: 77)
        let id = String(repeating: "e", count: 64)
        try Outbox(directory: outboxPath).add(fileAt: file, packageID: id)
        let arguments = ["outbox", "run", "--once", "--outbox", outboxPath, "--to", server.baseURL.absoluteString, "--chunk-size", "262144"]
        let processes = try (0..<2).map { _ in try launchCLI(arguments) }
        for process in processes { process.waitUntilExit() }
        let statuses = processes.map(\.terminationStatus).sorted()
        // One uploads (0); the other found the entry locked and left it alone (2: still pending when it looked).
        #expect(statuses == [0, 2] || statuses == [0, 0], "\(statuses)")
        let requests = try requestLog(log)
        #expect(requests.filter { $0["method"] as? String == "POST" }.count == 1, "more than one upload session")
        let sent = requests.compactMap { $0["received"] as? Int }.reduce(0, +)
        #expect(sent == 3 * 1024 * 1024, "bytes were sent twice: \(sent)")
        #expect(try Outbox(directory: outboxPath).state(of: id).phase == .acknowledged)
    }

    @Test("An entry locked by another uploader is left alone")
    func lockedEntry() async throws {
        let dir = try TemporaryDirectory()
        let outbox = try Outbox(directory: try dir.subdirectory("outbox"))
        let id = String(repeating: "d", count: 64)
        try outbox.add(fileAt: try randomFile(dir, "f", size: 1000), packageID: id)
        let held = try #require(try outbox.lock(id))
        // Nothing listens on port 9: any attempt to upload would fail and be recorded.
        let target = UploadTarget(baseURL: URL(string: "http://127.0.0.1:9")!)
        let state = try await Uploader(outbox: outbox, target: target, policy: quickPolicy).upload(packageID: id)
        #expect(state.phase == .queued && state.attempts == 0)
        withExtendedLifetime(held) {}
    }

    @Test("Outbox add is idempotent, refuses different bytes under one ID, and survives the caller deleting its file")
    func outboxAdd() throws {
        let dir = try TemporaryDirectory()
        let outbox = try Outbox(directory: try dir.subdirectory("outbox"))
        let source = dir.file("copy.cpkg")
        try FileManager.default.copyItem(atPath: Repo.path("TestVectors/valid/package-none.cpkg"), toPath: source)
        let first = try outbox.add(packageAt: source)
        #expect(try outbox.add(packageAt: source) == first)
        try FileManager.default.removeItem(atPath: source)
        #expect(try sha256Hex(outbox.packagePath(first.packageID)) == first.sha256)
        #expect(first.md5Base64 == (try run("python3", ["-c", "import base64,hashlib,sys; print(base64.b64encode(hashlib.md5(open(sys.argv[1],'rb').read()).digest()).decode())", outbox.packagePath(first.packageID)]).lastLine))
        do {
            _ = try outbox.add(fileAt: Repo.path("TestVectors/valid/package-gzip.cpkg"), packageID: first.packageID)
            Issue.record("different bytes under one package ID were accepted")
        } catch let error as ContinuonPackError {
            #expect(error.code == .outboxConflict)
        }
    }

    @Test("Backoff: full jitter under a growing cap, Retry-After honoured")
    func backoff() {
        let policy = RetryPolicy(baseDelay: .milliseconds(100), maxDelay: .seconds(2))
        #expect(policy.delay(attempt: 0, retryAfter: nil, random: 1) == .milliseconds(100))
        #expect(policy.delay(attempt: 3, retryAfter: nil, random: 1) == .milliseconds(800))
        #expect(policy.delay(attempt: 10, retryAfter: nil, random: 1) == .seconds(2))
        #expect(policy.delay(attempt: 10, retryAfter: nil, random: 0) == .zero)
        #expect(policy.delay(attempt: 0, retryAfter: .seconds(5), random: 0.5) == .seconds(5))
        #expect(Uploader.parseRange("bytes=0-262143") == 262144)
        #expect(Uploader.parseRange("bytes=5-9") == nil)
        #expect(Uploader.retryAfter("3") == .seconds(3))
        #expect(Uploader.retryAfter("Wed, 21 Oct 2015 07:28:00 GMT") == nil)
    }
}

/// The library's typed events and awaited results (what a runtime switches on instead of message text).
@Suite("Upload events and the async API", .serialized)
struct UploadEventTests {
    actor Recorder {
        var events: [UploadEvent] = []
        func add(_ event: UploadEvent) { events.append(event) }
    }

    /// Uploads a 3 MiB file to the scripted fake with `scenario`, recording every event from `events()`.
    static func record(_ scenario: String) async throws -> (state: OutboxState, events: [UploadEvent]) {
        let dir = try TemporaryDirectory()
        let file = try randomFile(dir, "package.cpkg", size: 3 * 1024 * 1024 + 777, seed: 7)
        let server = try PeerServer("fake_gcs.py", ["--scenario", scenario])
        let outbox = try Outbox(directory: try dir.subdirectory("outbox"))
        let id = String(repeating: "d", count: 64)
        try outbox.add(fileAt: file, packageID: id)
        let uploader = Uploader(outbox: outbox, target: UploadTarget(baseURL: server.baseURL, chunkSize: 512 * 1024),
                                policy: quickPolicy, transport: nil, sleep: { _ in }, random: { 0 })
        let recorder = Recorder()
        let stream = await uploader.events()
        let listener = Task { for await event in stream { await recorder.add(event) } }
        let state = try await uploader.upload(packageID: id)
        try await Task.sleep(for: .milliseconds(100))
        listener.cancel()
        return (state, await recorder.events)
    }

    @Test("A clean upload: started, progress that only grows, acknowledged last")
    func clean() async throws {
        let (state, events) = try await Self.record("ok")
        #expect(state.phase == .acknowledged)
        guard case .started? = events.first, case .acknowledged? = events.last else { Issue.record("\(events)"); return }
        let progress = events.compactMap { event -> UInt64? in
            if case let .progress(_, confirmed, _) = event { return confirmed }
            return nil
        }
        #expect(!progress.isEmpty && progress == progress.sorted() && Set(progress).count == progress.count, "\(progress)")
    }

    @Test("Throttled: retrying with the 429 status and the attempt; expired: sessionRestarted (410), then started again")
    func faults() async throws {
        let (throttled, throttleEvents) = try await Self.record("throttle")
        #expect(throttled.phase == .acknowledged)
        #expect(throttleEvents.contains { if case let .retrying(_, attempt, _, cause) = $0 { return cause.status == 429 && attempt == 1 }; return false },
                "\(throttleEvents)")
        let (expired, expireEvents) = try await Self.record("expire")
        #expect(expired.phase == .acknowledged)
        let kinds = expireEvents.map { event -> String in
            switch event {
            case .started: "started"
            case .sessionRestarted: "restarted"
            case .acknowledged: "acknowledged"
            default: "other"
            }
        }.filter { $0 != "other" }
        #expect(kinds == ["started", "restarted", "started", "acknowledged"], "\(expireEvents)")
    }

    @Test("Rejected: the event carries the status and the server's code")
    func rejected() async throws {
        let (state, events) = try await Self.record("forbidden")
        #expect(state.phase == .rejected)
        guard case let .rejected(_, rejection)? = events.last else { Issue.record("\(events)"); return }
        #expect(rejection.status == 403)
    }

    @Test("Cancelling the uploading task ends with CancellationError; the saved state resumes later")
    func cancellation() async throws {
        let dir = try TemporaryDirectory()
        let file = try randomFile(dir, "package.cpkg", size: 3 * 1024 * 1024, seed: 8)
        let server = try PeerServer("fake_gcs.py", ["--scenario", "slow", "--delay", "0.3"])
        let outbox = try Outbox(directory: try dir.subdirectory("outbox"))
        let id = String(repeating: "e", count: 64)
        try outbox.add(fileAt: file, packageID: id)
        let uploader = Uploader(outbox: outbox, target: UploadTarget(baseURL: server.baseURL, chunkSize: 256 * 1024), policy: quickPolicy)
        let task = Task { try await uploader.upload(packageID: id) }
        try await Task.sleep(for: .milliseconds(900))
        task.cancel()
        await #expect(throws: CancellationError.self) { try await task.value }
        let saved = try outbox.state(of: id)
        #expect(saved.phase == .uploading && saved.sessionURI != nil)
        let resumed = try await Uploader(outbox: outbox, target: UploadTarget(baseURL: server.baseURL, chunkSize: 1 << 20),
                                         policy: quickPolicy).upload(packageID: id)
        #expect(resumed.phase == .acknowledged)
    }

    @Test("Async pack, verify, collect and add run off the cooperative pool and give the synchronous results; release keeps unacknowledged packages")
    func asyncAPI() async throws {
        let dir = try TemporaryDirectory()
        let key = try loadKey(Repo.testKey)
        let writer = PackageWriter(provenance: Provenance(brainRuntimeVersion: "1", aiAppVersion: "1", environmentID: "lab"),
                                   signingKey: key, compression: .zstd, createdAt: "2024-01-01T00:00:00Z")
        let blobs = try await BlobSource.collect(in: Repo.path("Examples/episodes"))
        let packed = try await writer.write(blobs: blobs, toDirectory: dir.file("packed"))
        let report = try await PackageVerifier(trustedKeys: [key.publicKey]).verify(path: packed.path)
        #expect(report.valid)
        let outbox = try Outbox(directory: dir.file("outbox"))
        let state = try await outbox.add(packageAt: packed.path)
        let digest = try sha256Hex(packed.path)
        #expect(state.phase == .queued && state.sha256 == digest)
        #expect { try outbox.release(packageID: state.packageID) } throws: { ($0 as? ContinuonPackError)?.code == .outboxNotAcknowledged }
        #expect(FileManager.default.fileExists(atPath: outbox.packagePath(state.packageID)))
        let cancelled = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await PackageVerifier(trustedKeys: [key.publicKey]).verify(path: packed.path)
        }
        await #expect(throws: CancellationError.self) { try await cancelled.value }
    }

    /// A sparse blob of zeros and a writer for it.
    static func sparseBlob(_ dir: TemporaryDirectory, size: Int) throws -> (String, PackageWriter) {
        let big = try dir.subdirectory("episodes") + "/big.bin"
        FileManager.default.createFile(atPath: big, contents: nil)
        #expect(truncate(big, off_t(size)) == 0)
        let writer = PackageWriter(provenance: Provenance(brainRuntimeVersion: "1", aiAppVersion: "1", environmentID: "lab"),
                                   signingKey: try loadKey(Repo.testKey), compression: .none, createdAt: "2024-01-01T00:00:00Z")
        return (big, writer)
    }

    @Test("Cancelling an async pack stops it at its next buffer: CancellationError and nothing left in the output directory")
    func cancelledPack() async throws {
        let dir = try TemporaryDirectory()
        let (big, writer) = try Self.sparseBlob(dir, size: 1 << 30) // 1 GiB of zeros, sparse: fast to read, long to hash
        let output = try dir.subdirectory("out")
        let task = Task { try await writer.write(blobs: [BlobSource(path: "big.bin", content: .file(big))], toDirectory: output) }
        try await Task.sleep(for: .milliseconds(50))
        task.cancel()
        await #expect(throws: CancellationError.self) { _ = try await task.value }
        #expect(try FileManager.default.contentsOfDirectory(atPath: output).isEmpty)
    }

    @Test("Cancelling an async verify stops it at its next read: CancellationError, never a verdict")
    func cancelledVerify() async throws {
        let dir = try TemporaryDirectory()
        let (big, writer) = try Self.sparseBlob(dir, size: 512 << 20)
        let packed = try await writer.write(blobs: [BlobSource(path: "big.bin", content: .file(big))], toDirectory: try dir.subdirectory("out"))
        let verifier = PackageVerifier(trustedKeys: [try loadKey(Repo.testKey).publicKey])
        let progress = ByteProgress()
        var watched = verifier
        watched.progress = progress
        let task = Task { try await watched.verify(path: packed.path) }
        while progress.completed < 4 << 20 { try await Task.sleep(for: .milliseconds(1)) }
        task.cancel()
        await #expect(throws: CancellationError.self) { _ = try await task.value }
        #expect(progress.completed < 512 << 20, "stopped before the end")
        #expect(try await verifier.verify(path: packed.path).valid, "the same verification, not cancelled, holds")
    }
}