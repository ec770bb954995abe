import Foundation
import Testing
@testable import ContinuonPack
@testable import ContinuonPackUpload

/// Google credentials without the network: key files, the RS256 JWT (checked by Python's `cryptography`, which we
/// did not write), token responses, token files.
@Suite("Google credentials")
struct CredentialsTests {
    /// A service-account key file with a fresh RSA key from `openssl genpkey` (mode 0600).
    static func serviceAccountFile(_ dir: TemporaryDirectory, tokenURI: String = "http://127.0.0.1:9/token", mode: Int = 0o600,
                                   bits: Int = 2048) throws -> String {
        let pem = try run("openssl", ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:\(bits)"]).text
        let object: [String: Any] = [
            "type": "service_account", "project_id": "continuon-test", "private_key_id": "0123456789abcdef",
            "private_key": pem, "client_email": "ingest-uploader@continuon-test.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": tokenURI,
        ]
        let path = try dir.write("sa-\(mode)-\(bits).json", [UInt8](try JSONSerialization.data(withJSONObject: object)))
        chmod(path, mode_t(mode))
        return path
    }

    @Test("The JWT-bearer assertion: RS256 under the key file's key, header kid, claims iss/aud/scope/iat/exp (verified by pyca/cryptography)")
    func assertion() throws {
        let dir = try TemporaryDirectory()
        let file = try Self.serviceAccountFile(dir)
        let credentials = try GoogleCredentials.load(file: file)
        guard case let .serviceAccount(key) = credentials.source else { Issue.record("not a service account"); return }
        let jwt = try key.assertion(now: 1_700_000_000)
        #expect(!jwt.contains("=") && !jwt.contains("+") && !jwt.contains("/"))
        let script = """
            import base64, json, sys
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import padding
            key = serialization.load_pem_private_key(json.load(open(sys.argv[1]))["private_key"].encode(), None)
            header, claims, signature = sys.argv[2].split(".")
            pad = lambda text: text + "=" * (-len(text) % 4)
            key.public_key().verify(base64.urlsafe_b64decode(pad(signature)), (header + "." + claims).encode(),
                                    padding.PKCS1v15(), hashes.SHA256())
            print(json.dumps({"header": json.loads(base64.urlsafe_b64decode(pad(header))),
                              "claims": json.loads(base64.urlsafe_b64decode(pad(claims)))}))
            """
        let result = try run("python3", ["-c", script, file, jwt])
        #expect(result.status == 0, "\(result.stderr)")
        let decoded = try json(result.stdout)
        let header = try #require(decoded["header"] as? [String: Any])
        let claims = try #require(decoded["claims"] as? [String: Any])
        #expect(header["alg"] as? String == "RS256" && header["typ"] as? String == "JWT")
        #expect(header["kid"] as? String == "0123456789abcdef")
        #expect(claims["iss"] as? String == "ingest-uploader@continuon-test.iam.gserviceaccount.com")
        #expect(claims["aud"] as? String == "http://127.0.0.1:9/token")
        #expect(claims["scope"] as? String == "https://www.googleapis.com/auth/devstorage.read_write")
        #expect(claims["iat"] as? Int == 1_700_000_000 && claims["exp"] as? Int == 1_700_003_600)
        // A flipped signature byte does not verify: the check above can fail.
        var broken = Array(jwt.utf8)
        broken[broken.count - 5] = broken[broken.count - 5] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        #expect(try run("python3", ["-c", script, file, String(decoding: broken, as: UTF8.self)]).status != 0)
    }

    @Test("Key files: readable by group or others, not JSON, unknown type, missing fields, not RSA or short RSA are refused with credentials.invalid")
    func badFiles() throws {
        let dir = try TemporaryDirectory()
        func refused(_ path: String, _ words: String) {
            do {
                _ = try GoogleCredentials.load(file: path)
                Issue.record("accepted \(path)")
            } catch let error as ContinuonPackError {
                #expect(error.code == .credentialsInvalid || error.code == .keyInvalid, "\(error)")
                #expect(error.message.contains(words), "\(error.message)")
            } catch {
                Issue.record("\(error)")
            }
        }
        refused(try Self.serviceAccountFile(dir, mode: 0o644), "chmod 600")
        refused(try Self.serviceAccountFile(dir, mode: 0o640), "readable by group or others")
        refused(try Self.serviceAccountFile(dir, bits: 1024), "2048")
        refused(dir.file("missing.json"), "Cannot read")
        func file(_ name: String, _ text: String) throws -> String {
            let path = try dir.write(name, Array(text.utf8))
            chmod(path, 0o600)
            return path
        }
        refused(try file("a.json", "not json"), "not JSON")
        refused(try file("b.json", #"{"type":"external_account"}"#), "external_account")
        refused(try file("c.json", #"{"type":"authorized_user","client_id":"x"}"#), "client_secret")
        let ed25519 = String(decoding: try readBytes(Repo.testKey), as: UTF8.self)
        let object: [String: Any] = ["type": "service_account", "private_key": ed25519, "client_email": "a@b", "private_key_id": "k"]
        refused(try file("d.json", String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self)), "not an RSA key")
    }

    @Test("Token responses: access_token printable, expires_in 1 s to a day (a number, or digits in a string); anything else is refused")
    func tokenResponses() throws {
        let parsed = try GoogleCredentials.parseTokenResponse(Array(#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#.utf8), from: "t")
        #expect(parsed.token == "ya29.x" && parsed.lifetime == .seconds(3599))
        #expect(try GoogleCredentials.parseTokenResponse(Array(#"{"access_token":"a"}"#.utf8), from: "t").lifetime == .seconds(3600))
        #expect(try GoogleCredentials.parseTokenResponse(Array(#"{"access_token":"a","expires_in":"60"}"#.utf8), from: "t").lifetime == .seconds(60))
        for body in [#"{}"#, #"{"access_token":""}"#, #"{"access_token":"a b"}"#, #"{"access_token":"a\n"}"#,
                     #"{"access_token":"a","expires_in":0}"#, #"{"access_token":"a","expires_in":"6x"}"#,
                     #"{"access_token":"a","expires_in":86401}"#, #"[1]"#, "<html>"] {
            #expect(throws: ContinuonPackError.self, "\(body)") { try GoogleCredentials.parseTokenResponse(Array(body.utf8), from: "t") }
        }
        let token = AccessToken(value: "secret-token", expiresAt: nil)
        #expect(token.description == "AccessToken(<redacted>)")
        var dumped = ""
        dump(token, to: &dumped)
        for text in ["\(token)", String(reflecting: token), dumped] { #expect(!text.contains("secret-token"), "\(text)") }
    }

    @Test("A token file is read again when it changes, and refused when empty or not one token")
    func tokenFile() async throws {
        let dir = try TemporaryDirectory()
        let path = try dir.write("token", Array("first\n".utf8))
        let file = TokenFile(path: path)
        #expect(try await file.accessToken(refresh: false).value == "first")
        try Data("second-token\n".utf8).write(to: URL(fileURLWithPath: path + ".new"))
        #expect(rename(path + ".new", path) == 0) // as a refresher replaces it: a new inode
        #expect(try await file.accessToken(refresh: false).value == "second-token")
        _ = try dir.write("bad", Array("two words".utf8))
        await #expect(throws: ContinuonPackError.self) { try await TokenFile(path: dir.file("bad")).accessToken(refresh: false) }
        await #expect(throws: ContinuonPackError.self) { try await TokenFile(path: dir.file("none")).accessToken(refresh: false) }
    }

    @Test("Application Default Credentials: the variable, then gcloud's file, then the metadata server; the error names each")
    func applicationDefault() async throws {
        let dir = try TemporaryDirectory()
        let environment = ["HOME": dir.path, "GCE_METADATA_HOST": "127.0.0.1:9"] // port 9: nothing answers
        do {
            _ = try await GoogleCredentials.applicationDefault(environment: environment)
            Issue.record("found credentials in an empty home")
        } catch let error as ContinuonPackError {
            #expect(error.code == .credentialsNotFound)
            #expect(error.message.contains("GOOGLE_APPLICATION_CREDENTIALS") && error.message.contains("application_default_credentials.json")
                    && error.message.contains("metadata server at 127.0.0.1:9"), "\(error.message)")
        }
        let adc = try dir.subdirectory(".config/gcloud")
        let user: [String: Any] = ["type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r"]
        let adcFile = adc + "/application_default_credentials.json"
        try JSONSerialization.data(withJSONObject: user).write(to: URL(fileURLWithPath: adcFile))
        chmod(adcFile, 0o600)
        let found = try await GoogleCredentials.applicationDefault(environment: environment)
        #expect(found.summary.contains("gcloud user credentials"))
        let named = try Self.serviceAccountFile(dir)
        let preferred = try await GoogleCredentials.applicationDefault(environment: environment.merging(["GOOGLE_APPLICATION_CREDENTIALS": named]) { a, _ in a })
        #expect(preferred.summary.contains("ingest-uploader@"))
    }

    @Test("Key material is never shown: description, debug description and dump of the credentials")
    func redaction() throws {
        let dir = try TemporaryDirectory()
        let file = try Self.serviceAccountFile(dir)
        let user: [String: Any] = ["type": "authorized_user", "client_id": "c", "client_secret": "GOCSPX-secret", "refresh_token": "1//refresh"]
        let userFile = dir.file("user.json")
        try JSONSerialization.data(withJSONObject: user).write(to: URL(fileURLWithPath: userFile))
        chmod(userFile, 0o600)
        for credentials in [try GoogleCredentials.load(file: file), try GoogleCredentials.load(file: userFile)] {
            var dumped = ""
            dump(credentials.source, to: &dumped)
            for text in ["\(credentials.source)", String(reflecting: credentials.source), dumped, credentials.summary] {
                #expect(!text.contains("PRIVATE KEY") && !text.contains("GOCSPX-secret") && !text.contains("1//refresh"), "\(text)")
            }
        }
    }

    @Test("A token_uri that is not https (except to a loopback address) is refused: the refresh token would travel in clear")
    func tokenURIMustBeHTTPS() throws {
        let dir = try TemporaryDirectory()
        #expect(throws: ContinuonPackError.self) { try GoogleCredentials.load(file: try Self.serviceAccountFile(dir, tokenURI: "http://evil.example/token")) }
        _ = try GoogleCredentials.load(file: try Self.serviceAccountFile(dir, tokenURI: "https://oauth2.googleapis.com/token", bits: 3072))
    }

    @Test("Which hosts get Application Default Credentials, and where a token may travel")
    func tokenDestinations() throws {
        func target(_ url: String) -> UploadTarget { UploadTarget(baseURL: URL(string: url)!, credentials: StaticToken("t")) }
        #expect(target("https://storage.googleapis.com").isGoogle)
        #expect(target("https://Storage.GoogleAPIs.com.").isGoogle)
        #expect(target("https://www.googleapis.com").isGoogle)
        #expect(!target("http://storage.googleapis.com").isGoogle) // never in clear
        #expect(!target("https://storage.googleapis.com.evil.example").isGoogle)
        #expect(!target("http://127.0.0.1:8080").isGoogle)
        let client = CloudStorageClient(target: target("https://storage.googleapis.com"))
        #expect(client.carriesToken(URL(string: "https://storage.googleapis.com/upload/storage/v1/b/x/o?upload_id=1")!))
        #expect(!client.carriesToken(URL(string: "https://elsewhere.example/upload?upload_id=1")!))
        #expect(!client.carriesToken(URL(string: "http://storage.googleapis.com/upload")!))
        let local = CloudStorageClient(target: target("http://127.0.0.1:9000"))
        #expect(local.carriesToken(URL(string: "http://127.0.0.1:9000/x")!))
        #expect(!local.carriesToken(URL(string: "http://127.0.0.1:9001/x")!))
        let plain = CloudStorageClient(target: target("http://ingest.example:8080"))
        #expect(!plain.carriesToken(URL(string: "http://ingest.example:8080/x")!))
    }

    /// Answers from a script; counts the tokens asked for and the Authorization headers seen.
    final class ScriptedTransport: CloudStorageTransport, @unchecked Sendable {
        var statuses: [Int]
        var authorizations: [String?] = []
        init(_ statuses: [Int]) { self.statuses = statuses }
        func send(method: String, url: URL, headers: [String: String], body: Data?) async throws -> CloudStorageResponse {
            authorizations.append(headers["Authorization"])
            return CloudStorageResponse(status: statuses.isEmpty ? 200 : statuses.removeFirst(), headers: [:], body: Data("{}".utf8))
        }
    }

    actor CountingTokens: AccessTokenProvider {
        var issued = 0
        var refreshes = 0
        func accessToken(refresh: Bool) async throws -> AccessToken {
            if refresh || issued == 0 { issued += 1 }
            if refresh { refreshes += 1 }
            return AccessToken(value: "token-\(issued)", expiresAt: nil)
        }
        nonisolated var summary: String { "counting tokens" }
    }

    @Test("401: a new token and the request once more; a second 401 is credentials.refused; a 401 without credentials is credentials.not_found")
    func unauthorized() async throws {
        let tokens = CountingTokens()
        let url = URL(string: "https://storage.googleapis.com/storage/v1/b/b/o/x")!
        let once = ScriptedTransport([401, 200])
        let client = CloudStorageClient(target: UploadTarget(baseURL: URL(string: "https://storage.googleapis.com")!, credentials: tokens),
                                        transport: once)
        #expect(try await client.send("GET", url).status == 200)
        #expect(once.authorizations == ["Bearer token-1", "Bearer token-2"])
        #expect(await tokens.refreshes == 1)
        let twice = ScriptedTransport([401, 401])
        let refused = CloudStorageClient(target: UploadTarget(baseURL: URL(string: "https://storage.googleapis.com")!, credentials: tokens),
                                         transport: twice)
        await #expect { try await refused.send("GET", url) } throws: { ($0 as? ContinuonPackError)?.code == .credentialsRefused }
        let anonymous = CloudStorageClient(target: UploadTarget(baseURL: URL(string: "https://storage.googleapis.com")!),
                                           transport: ScriptedTransport([401]))
        await #expect { try await anonymous.send("GET", url) } throws: { ($0 as? ContinuonPackError)?.code == .credentialsNotFound }
    }

    @Test("Redirects are not followed: the token never reaches the host a 307 points to")
    func redirectsNotFollowed() async throws {
        let script = """
            import http.server, sys, threading
            seen = []
            class Other(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                    seen.append(self.headers.get("Authorization"))
                    self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
                def log_message(self, *a): pass
            class First(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                    self.send_response(307); self.send_header("Location", "http://localhost:%d/steal" % other.server_port)
                    self.send_header("Content-Length", "0"); self.end_headers()
                def log_message(self, *a): pass
            other = http.server.HTTPServer(("127.0.0.1", 0), Other)
            first = http.server.HTTPServer(("127.0.0.1", 0), First)
            threading.Thread(target=other.serve_forever, daemon=True).start()
            threading.Thread(target=first.serve_forever, daemon=True).start()
            print("PORT %d" % first.server_port, flush=True)
            sys.stdin.readline()
            print("SEEN %d" % len(seen), flush=True)
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script]
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        defer { process.terminate() }
        let handle = output.fileHandleForReading
        func line() -> String {
            var bytes = Data()
            while true {
                let byte = handle.readData(ofLength: 1)
                if byte.isEmpty || byte == Data([0x0a]) { break }
                bytes.append(byte)
            }
            return String(decoding: bytes, as: UTF8.self)
        }
        let port = try #require(Int(line().dropFirst(5)))
        let base = URL(string: "http://127.0.0.1:\(port)")!
        let client = CloudStorageClient(target: UploadTarget(baseURL: base, credentials: StaticToken("secret")))
        let response = try await client.send("GET", base.appendingPathComponent("storage/v1/b/b/o/x"))
        #expect(response.status == 307)
        input.fileHandleForWriting.write(Data("\n".utf8))
        #expect(line() == "SEEN 0")
    }
}
