import Foundation
import Testing
@testable import ContinuonPack
@testable import ContinuonPackUpload

/// Uploads with Google credentials against stand-ins on 127.0.0.1 (Tests/peers/google_standins.py): an OAuth token
/// endpoint that checks the JWT's RS256 signature with the service account's public key, a metadata server, and a
/// Cloud Storage front over gcp-storage-emulator that demands a live bearer on every request and grants an
/// objectCreator identity nothing but object creation.
@Suite("Google credentials against stand-ins (token endpoint, metadata server, objectCreator IAM)", .serialized)
struct GoogleStandInTests {
    /// The emulator and one stand-in in front of it, with a service-account key the stand-in trusts.
    struct Google {
        let dir: TemporaryDirectory
        let emulator: PeerServer
        let front: PeerServer
        let keyFile: String
        let log: String
        var endpoint: String { front.baseURL.absoluteString }

        init(role: String = "objectCreator", tokenLifetime: Int = 3600, delay: Double = 0, emulator shared: PeerServer? = nil,
             dir existing: TemporaryDirectory? = nil, extra: [String] = []) throws {
            dir = try existing ?? TemporaryDirectory()
            emulator = try shared ?? PeerServer("emulator.py")
            let generic = dir.file("sa-generic-\(role).json")
            #expect(try peer("google_standins.py", ["make-service-account", generic]).status == 0)
            log = dir.file("standin-\(role).log")
            front = try PeerServer("google_standins.py", [
                "--emulator-port", String(emulator.port), "--service-account", generic, "--role", role,
                "--token-lifetime", String(tokenLifetime), "--delay", String(delay), "--log", log,
            ] + extra)
            keyFile = try Self.pointing(generic, to: "http://127.0.0.1:\(front.port)/token", in: dir)
        }

        /// A copy of a key file whose token_uri is `uri` (mode 0600).
        static func pointing(_ file: String, to uri: String, in dir: TemporaryDirectory) throws -> String {
            var object = try json(try readBytes(file))
            object["token_uri"] = uri
            let path = file.replacingOccurrences(of: ".json", with: "-local.json")
            try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: path))
            chmod(path, 0o600)
            return path
        }

        /// The stand-in's log, one object per line.
        func entries() throws -> [[String: Any]] {
            String(decoding: try readBytes(log), as: UTF8.self).split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
        }

        func upload(_ package: String, outbox: String, credentials: [String], environment: [String: String]? = nil,
                    extra: [String] = []) throws -> ProcessResult {
            try cli(["upload", package, "--to", endpoint, "--bucket", "staging", "--outbox", outbox, "--json"] + credentials + extra,
                    environment: environment)
        }
    }

    /// A package of about `size` bytes (one random blob, uncompressed).
    static func package(_ dir: TemporaryDirectory, size: Int) throws -> String {
        let episodes = try dir.subdirectory("episodes")
        let random = try #require(FileHandle(forReadingAtPath: "/dev/urandom"))
        _ = try dir.write("episodes/steps.bin", [UInt8](random.readData(ofLength: size)))
        let packed = try cli(["pack", episodes, "--key", Repo.testKey, "--runtime-version", "1", "--app-version", "1",
                              "--environment-id", "lab", "--compression", "none", "--output", dir.file("packed")])
        #expect(packed.status == 0)
        return packed.lastLine
    }

    /// No access token, and none of the secrets in `files` (private key, client secret, refresh token), appears in
    /// what the uploader writes or prints.
    static func expectNoTokens(_ texts: [String], files: [String] = []) throws {
        var secrets = ["ya29.", "PRIVATE KEY"]
        for file in files {
            let object = try json(try readBytes(file))
            secrets += ["client_secret", "refresh_token"].compactMap { object[$0] as? String }
        }
        for text in texts {
            for secret in secrets { #expect(!text.contains(secret), "a secret leaked: \(text.prefix(200))") }
        }
    }

    @Test("A service-account key, tokens that live 2 s: an upload lasting several token lifetimes is acknowledged; tokens never written anywhere")
    func serviceAccountLongUpload() throws {
        let google = try Google(tokenLifetime: 2, delay: 0.25)
        let package = try Self.package(google.dir, size: 3 << 20)
        let outbox = google.dir.file("outbox")
        let result = try google.upload(package, outbox: outbox, credentials: ["--credentials", google.keyFile],
                                       extra: ["--chunk-size", "262144"])
        #expect(result.status == 0, "\(result.text) \(result.stderr)")
        let entries = try google.entries()
        let tokens = entries.filter { $0["event"] as? String == "token" }
        #expect(tokens.count >= 3, "expected several tokens over the upload, got \(tokens.count)")
        #expect(tokens.allSatisfy { $0["grant"] as? String == "jwt-bearer" })
        let requests = entries.filter { ($0["path"] as? String)?.contains("/storage/v1/") == true }
        #expect(requests.count >= 13)
        #expect(!requests.contains { $0["method"] as? String == "DELETE" })
        // Every storage request that was answered carried a live token (at most a few were refreshed after a 401).
        #expect(requests.filter { $0["auth"] as? String != "ok" }.count <= 2)
        let state = try String(decoding: readBytes(outbox + "/" + (URL(fileURLWithPath: package).deletingPathExtension().lastPathComponent) + "/state.json"), as: UTF8.self)
        try Self.expectNoTokens([result.text, result.stderr, state])
    }

    @Test("A key the token endpoint does not know: a clear credentials.refused error (exit 2), the entry kept and still queued")
    func wrongKey() throws {
        let google = try Google()
        let other = google.dir.file("other.json")
        #expect(try peer("google_standins.py", ["make-service-account", other]).status == 0)
        // Same identity and key ID, another private key: the signature cannot verify.
        var forged = try json(try readBytes(google.keyFile))
        forged["private_key"] = try json(try readBytes(other))["private_key"]
        let forgedFile = google.dir.file("forged.json")
        try JSONSerialization.data(withJSONObject: forged).write(to: URL(fileURLWithPath: forgedFile))
        chmod(forgedFile, 0o600)
        let outbox = google.dir.file("outbox")
        let package = Repo.path("TestVectors/valid/package-none.cpkg")
        let result = try google.upload(package, outbox: outbox, credentials: ["--credentials", forgedFile])
        #expect(result.status == 2)
        #expect(result.stderr.contains("credentials.refused") && result.stderr.contains("invalid_grant"), "\(result.stderr)")
        let state = try Outbox(directory: outbox).entries()
        #expect(state.count == 1 && state.first?.phase == .queued)
        #expect(try sha256Hex(outbox + "/" + (state.first?.packageID ?? "") + "/package.cpkg") == (try sha256Hex(package)))
        // A group-readable key file is refused before anything is sent.
        chmod(google.keyFile, 0o640)
        let loose = try google.upload(package, outbox: google.dir.file("outbox2"), credentials: ["--credentials", google.keyFile])
        #expect(loose.status == 2 && loose.stderr.contains("chmod 600"), "\(loose.stderr)")
    }

    @Test("The metadata server (GCE_METADATA_HOST) and gcloud user credentials (authorized_user) both upload")
    func metadataAndAuthorizedUser() throws {
        let dir = try TemporaryDirectory()
        let userFile = dir.file("user.json")
        #expect(try peer("google_standins.py", ["make-authorized-user", userFile]).status == 0)
        let google = try Google(dir: dir, extra: ["--authorized-user", userFile])
        let package = Repo.path("TestVectors/valid/package-none.cpkg")
        var environment = ProcessInfo.processInfo.environment
        environment["GCE_METADATA_HOST"] = "127.0.0.1:\(google.front.port)"
        let viaMetadata = try google.upload(package, outbox: dir.file("outbox-metadata"), credentials: ["--credentials", "metadata"],
                                            environment: environment)
        #expect(viaMetadata.status == 0, "\(viaMetadata.text) \(viaMetadata.stderr)")
        let user = try Google.pointing(userFile, to: "http://127.0.0.1:\(google.front.port)/token", in: dir)
        let viaUser = try cli(["upload", Repo.path("TestVectors/valid/package-gzip.cpkg"), "--to", google.endpoint,
                               "--prefix", "user/", "--outbox", dir.file("outbox-user"), "--credentials", user])
        #expect(viaUser.status == 0, "\(viaUser.text) \(viaUser.stderr)")
        let grants = Set(try google.entries().compactMap { $0["event"] as? String == "token" ? $0["grant"] as? String : nil })
        #expect(grants == ["metadata", "refresh_token"])
        let states = try [dir.file("outbox-metadata"), dir.file("outbox-user")].flatMap { outbox in
            try FileManager.default.subpathsOfDirectory(atPath: outbox).filter { $0.hasSuffix("state.json") }
                .map { String(decoding: try readBytes(outbox + "/" + $0), as: UTF8.self) }
        }
        try Self.expectNoTokens([viaMetadata.text, viaMetadata.stderr, viaUser.text, viaUser.stderr] + states, files: [userFile])
    }

    @Test("Application Default Credentials go to Google's endpoint only: with GOOGLE_APPLICATION_CREDENTIALS set, another host gets no token")
    func noAmbientCredentialsForOtherHosts() throws {
        let google = try Google()
        var environment = ProcessInfo.processInfo.environment
        environment["GOOGLE_APPLICATION_CREDENTIALS"] = google.keyFile
        let result = try google.upload(Repo.path("TestVectors/valid/package-none.cpkg"), outbox: google.dir.file("outbox"),
                                       credentials: [], environment: environment)
        #expect(result.status == 2 && result.stderr.contains("credentials.not_found"), "\(result.text) \(result.stderr)")
        let entries = try google.entries()
        #expect(!entries.contains { $0["event"] as? String == "token" }, "a token was fetched for a non-Google host")
        #expect(entries.filter { $0["path"] != nil && $0["auth"] is String }.allSatisfy { $0["auth"] as? String == "missing" })
    }

    @Test("objectCreator only: a 412 whose object cannot be read is exists_unverified (kept); a reader's retry settles it")
    func objectCreatorExisting() throws {
        let google = try Google()
        let package = Repo.path("TestVectors/valid/package-none.cpkg")
        #expect(try google.upload(package, outbox: google.dir.file("first"), credentials: ["--credentials", google.keyFile]).status == 0)
        let outbox = google.dir.file("second")
        let again = try google.upload(package, outbox: outbox, credentials: ["--credentials", google.keyFile])
        #expect(again.status == 1, "\(again.text) \(again.stderr)")
        let state = try #require(try Outbox(directory: outbox).entries().first)
        #expect(state.phase == .existsUnverified && state.rejectionStatus == 412)
        #expect(FileManager.default.fileExists(atPath: outbox + "/" + state.packageID + "/package.cpkg"))
        // A reader (objectAdmin here) compares it: the same bytes, acknowledged.
        let reader = try Google(role: "objectAdmin", emulator: google.emulator, dir: google.dir)
        #expect(try cli(["outbox", "retry", state.packageID, "--outbox", outbox]).status == 0)
        let settled = try cli(["outbox", "run", "--once", "--to", reader.endpoint, "--outbox", outbox, "--credentials", reader.keyFile])
        #expect(settled.status == 0, "\(settled.text) \(settled.stderr)")
        #expect(try Outbox(directory: outbox).state(of: state.packageID).phase == .acknowledged)
        for entries in [try google.entries(), try reader.entries()] {
            #expect(!entries.contains { $0["method"] as? String == "DELETE" })
        }
    }

    @Test("serve --store gs:// with objectCreator-only credentials: stores verified packages; an object put there by someone else is 412 upload.object_unverified")
    func serveWithObjectCreator() throws {
        let google = try Google()
        let dir = google.dir
        let server = try startServe(dir, store: "gs://staging/incoming/", extra: [
            "--store-endpoint", google.endpoint, "--store-credentials", google.keyFile, "--spool", dir.file("spool"),
        ])
        let package = Repo.path("TestVectors/valid/package-none.cpkg")
        let first = try cli(["upload", package, "--to", server.baseURL.absoluteString, "--outbox", dir.file("a")])
        #expect(first.status == 0, "\(first.text) \(first.stderr)")
        let created = try google.entries().filter { ($0["query"] as? String)?.contains("incoming%2F") == true
            || ($0["query"] as? String)?.contains("incoming/") == true }
        #expect(!created.isEmpty, "nothing reached the bucket under incoming/")
        // The same bytes again: the service's own receipt (its forwarding outbox) says the bucket holds them.
        let repeated = try cli(["upload", package, "--to", server.baseURL.absoluteString, "--outbox", dir.file("a2")])
        #expect(repeated.status == 0, "\(repeated.text) \(repeated.stderr)")
        // Another package put into the bucket past the service (the uploader's role allows it): the service cannot
        // read it to compare, so it neither stores nor acknowledges.
        let other = try Self.package(dir, size: 5000) // another package ID
        let direct = try cli(["upload", other, "--to", google.endpoint, "--prefix", "incoming/", "--outbox", dir.file("direct"),
                              "--credentials", google.keyFile])
        #expect(direct.status == 0, "\(direct.text) \(direct.stderr)")
        let second = try cli(["upload", other, "--to", server.baseURL.absoluteString, "--outbox", dir.file("b"), "--json"])
        #expect(second.status == 1, "\(second.text) \(second.stderr)")
        let state = try #require(try Outbox(directory: dir.file("b")).entries().first)
        #expect(state.phase == .existsUnverified, "\(state.phase) \(state.rejectionCode ?? "")")
        let log = String(decoding: try readBytes(dir.file("serve.log")), as: UTF8.self)
        try Self.expectNoTokens([log, first.text, second.text])
    }
}
