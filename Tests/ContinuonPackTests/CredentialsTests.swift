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

    @Test("Token responses: access_token printable, expires_in 1 s to a day; anything else is refused")
    func tokenResponses() throws {
        let parsed = try GoogleCredentials.parseTokenResponse(Array(#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#.utf8), from: "t")
        #expect(parsed.token == "ya29.x" && parsed.lifetime == .seconds(3599))
        #expect(try GoogleCredentials.parseTokenResponse(Array(#"{"access_token":"a"}"#.utf8), from: "t").lifetime == .seconds(3600))
        for body in [#"{}"#, #"{"access_token":""}"#, #"{"access_token":"a b"}"#, #"{"access_token":"a\n"}"#,
                     #"{"access_token":"a","expires_in":0}"#, #"{"access_token":"a","expires_in":"60"}"#,
                     #"{"access_token":"a","expires_in":86401}"#, #"[1]"#, "<html>"] {
            #expect(throws: ContinuonPackError.self, "\(body)") { try GoogleCredentials.parseTokenResponse(Array(body.utf8), from: "t") }
        }
        #expect(AccessToken(value: "secret", expiresAt: nil).description == "AccessToken(<redacted>)")
        #expect(!"\(AccessToken(value: "secret", expiresAt: nil))".contains("secret"))
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
}
