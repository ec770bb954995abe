import ContinuonPack
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
#if canImport(Glibc)
import Glibc
#endif

/// Access tokens from Google credentials, found and used as Google's client libraries do (Application Default
/// Credentials): a service-account key (the OAuth 2.0 JWT-bearer grant, RFC 7523, with an RS256 JWT signed through
/// OpenSSL), a gcloud user login (`authorized_user`, the refresh-token grant) or the metadata server (Compute
/// Engine, Cloud Run, GKE).
///
/// Tokens live in memory only. One is fetched at a time (concurrent callers share it) and a new one before the
/// old expires: when less than a quarter of its lifetime, at most 3 min 45 s, is left (Google's libraries use the
/// same 3 min 45 s margin for hour-long tokens), so a long upload outlives several tokens.
public actor GoogleCredentials: AccessTokenProvider {
    public enum Source: Sendable {
        case serviceAccount(ServiceAccountKey)
        case authorizedUser(AuthorizedUser)
        /// `host[:port]` of the metadata server.
        case metadataServer(host: String)
    }

    /// The scope every token is asked for: create objects (and read them, where IAM allows).
    public static let scope = "https://www.googleapis.com/auth/devstorage.read_write"
    static let googleTokenURI = "https://oauth2.googleapis.com/token"

    public nonisolated let source: Source
    private let transport: any CloudStorageTransport
    private var cached: (token: AccessToken, refreshAt: ContinuousClock.Instant)?
    private var inFlight: Task<AccessToken, any Error>?

    public init(source: Source, transport: (any CloudStorageTransport)? = nil) {
        self.source = source
        self.transport = transport ?? URLSessionTransport(timeout: .seconds(30))
    }

    public nonisolated var summary: String {
        switch source {
        case let .serviceAccount(key): "the service account \(key.clientEmail) (key file \(key.file))"
        case let .authorizedUser(user): "the gcloud user credentials in \(user.file)"
        case let .metadataServer(host): "the metadata server at \(host)"
        }
    }

    public func accessToken(refresh: Bool) async throws -> AccessToken {
        if !refresh, let cached, ContinuousClock.now < cached.refreshAt { return cached.token }
        if let inFlight { return try await inFlight.value }
        let task = Task { try await self.fetch() }
        inFlight = task
        defer { inFlight = nil }
        return try await task.value
    }

    private func fetch() async throws -> AccessToken {
        let response: CloudStorageResponse
        let endpoint: String
        switch source {
        case let .serviceAccount(key):
            endpoint = key.tokenURI
            let assertion = try key.assertion(now: Int64(time(nil)))
            response = try await post(endpoint, form: [
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion),
            ])
        case let .authorizedUser(user):
            endpoint = user.tokenURI
            response = try await post(endpoint, form: [
                ("grant_type", "refresh_token"), ("client_id", user.clientID), ("client_secret", user.clientSecret),
                ("refresh_token", user.refreshToken),
            ])
        case let .metadataServer(host):
            endpoint = "http://\(host)/computeMetadata/v1/instance/service-accounts/default/token"
            response = try await exchange("GET", endpoint, headers: ["Metadata-Flavor": "Google"], body: nil)
            if response.status == 200, response.header("Metadata-Flavor") != "Google" {
                throw ContinuonPackError(.credentialsRefused, "\(endpoint) did not answer as a metadata server (no Metadata-Flavor: Google).")
            }
        }
        guard response.status == 200 else {
            let reason = Uploader.RejectionReason(body: Array(response.body.prefix(16 * 1024)))
            let text = "\(endpoint) refused a token for \(summary): HTTP \(response.status)"
                + (reason.code.map { ", \($0)" } ?? "") + (reason.detail.map { ": \($0)" } ?? "")
            if response.status == 408 || response.status == 429 || response.status >= 500 {
                throw CredentialsUnavailable(message: text)
            }
            throw ContinuonPackError(.credentialsRefused, text + ".")
        }
        let issued = try Self.parseTokenResponse(Array(response.body.prefix(64 * 1024)), from: endpoint)
        let now = ContinuousClock.now
        let margin = min(Duration.seconds(225), issued.lifetime / 4)
        let token = AccessToken(value: issued.token, expiresAt: now + issued.lifetime)
        cached = (token, now + issued.lifetime - margin)
        return token
    }

    /// `{"access_token": "…", "expires_in": N, "token_type": "Bearer"}`.
    static func parseTokenResponse(_ body: [UInt8], from endpoint: String) throws -> (token: String, lifetime: Duration) {
        guard let value = try? StrictJSONParser.parse(body), case let .string(token)? = value["access_token"],
              !token.isEmpty, token.utf8.count <= 8192, token.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f })
        else {
            throw ContinuonPackError(.credentialsRefused, "\(endpoint) answered without a usable access_token.")
        }
        var seconds: UInt64 = 3600
        if let given = value["expires_in"] {
            var number = given.safeUnsignedInteger
            if case let .string(text) = given { number = UInt64(text) } // some issuers send it as a string
            guard let number, number >= 1, number <= 86_400 else {
                throw ContinuonPackError(.credentialsRefused, "\(endpoint) answered with an unusable expires_in.")
            }
            seconds = number
        }
        return (token, .seconds(Int64(seconds)))
    }

    private func post(_ endpoint: String, form: [(String, String)]) async throws -> CloudStorageResponse {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        let body = form.map { name, value in
            name + "=" + (value.addingPercentEncoding(withAllowedCharacters: allowed) ?? "")
        }.joined(separator: "&")
        return try await exchange("POST", endpoint, headers: ["Content-Type": "application/x-www-form-urlencoded"],
                                  body: Data(body.utf8))
    }

    private func exchange(_ method: String, _ endpoint: String, headers: [String: String], body: Data?) async throws -> CloudStorageResponse {
        guard let url = URL(string: endpoint), url.scheme == "https" || url.scheme == "http", url.host != nil else {
            throw ContinuonPackError(.credentialsInvalid, "The token endpoint \(endpoint) is not an http(s) URL.")
        }
        do {
            return try await transport.send(method: method, url: url, headers: headers, body: body)
        } catch {
            throw CredentialsUnavailable(message: "\(endpoint) could not be reached for \(summary): \(error.localizedDescription)")
        }
    }
}

/// The token endpoint or metadata server could not be reached, or failed (5xx, 408, 429): worth trying again later.
public struct CredentialsUnavailable: Error, Sendable, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

// MARK: - Key files

/// A service-account key file (`"type": "service_account"`), as `gcloud iam service-accounts keys create` writes it.
/// Its description, debug description and mirror (`dump`) show the identity, never the key.
public struct ServiceAccountKey: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public let file: String
    public let clientEmail: String
    public let privateKeyID: String
    public let tokenURI: String
    let privateKey: RSASigningKey

    public var description: String { "ServiceAccountKey(\(clientEmail), key file \(file))" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["clientEmail": clientEmail, "file": file], displayStyle: .struct) }

    /// The JWT the token endpoint exchanges for an access token: header `{"alg":"RS256","kid":…,"typ":"JWT"}`, claims
    /// `iss` (the client email), `scope`, `aud` (the token URI), `iat`, `exp` = `iat` + 3600; RS256-signed.
    func assertion(now: Int64) throws -> String {
        let header = CanonicalJSON.encode(.object([
            ("alg", .string("RS256")), ("kid", .string(privateKeyID)), ("typ", .string("JWT")),
        ]))
        let claims = CanonicalJSON.encode(.object([
            ("aud", .string(tokenURI)), ("exp", .number(String(now + 3600))), ("iat", .number(String(now))),
            ("iss", .string(clientEmail)), ("scope", .string(GoogleCredentials.scope)),
        ]))
        let signingInput = Self.base64URL(header) + "." + Self.base64URL(claims)
        let signature = try privateKey.signatureRS256(for: Array(signingInput.utf8))
        return signingInput + "." + Self.base64URL(signature)
    }

    /// Base64url without padding (RFC 7515 section 2).
    static func base64URL(_ bytes: [UInt8]) -> String {
        String(Base64.encode(bytes).compactMap { character -> Character? in
            switch character {
            case "+": "-"
            case "/": "_"
            case "=": nil
            default: character
            }
        })
    }
}

/// A gcloud user login (`"type": "authorized_user"`), as `gcloud auth application-default login` writes it.
/// Its description, debug description and mirror (`dump`) never show the client secret or the refresh token.
public struct AuthorizedUser: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public let file: String
    public var description: String { "AuthorizedUser(file \(file))" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["file": file], displayStyle: .struct) }
    let clientID: String
    let clientSecret: String
    let refreshToken: String
    public let tokenURI: String
}

extension GoogleCredentials {
    /// Loads a credentials file: a service-account key or an authorized-user file.
    /// - Throws: `credentials.invalid` when the file cannot be read, is readable by group or others (as ssh refuses
    ///   such private keys), is not JSON, or is not one of the two types with its fields.
    public static func load(file path: String, transport: (any CloudStorageTransport)? = nil) throws -> GoogleCredentials {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw ContinuonPackError(.credentialsInvalid, "Cannot read the credentials file \(path).", cause: String(cString: strerror(errno)))
        }
        // ssh's rule for private keys: a file this user owns must not be readable by group or others. A file owned by
        // another user (a Kubernetes or Cloud Run secret mount, root-owned and group-readable) is that owner's choice.
        guard info.st_uid != geteuid() || info.st_mode & 0o077 == 0 else {
            throw ContinuonPackError(.credentialsInvalid, "The credentials file \(path) is readable by group or others "
                + "(mode \(String(info.st_mode & 0o777, radix: 8))); it holds a secret: chmod 600 it, as ssh requires of private keys.")
        }
        let bytes = try FileIO.readFile(path, limit: 64 * 1024)
        guard let value = try? StrictJSONParser.parse(bytes) else {
            throw ContinuonPackError(.credentialsInvalid, "The credentials file \(path) is not JSON.")
        }
        func field(_ name: String) throws -> String {
            guard case let .string(text)? = value[name], !text.isEmpty else {
                throw ContinuonPackError(.credentialsInvalid, "The credentials file \(path) lacks \"\(name)\".")
            }
            return text
        }
        func optional(_ name: String) -> String? {
            if case let .string(text)? = value[name], !text.isEmpty { return text }
            return nil
        }
        let tokenURI = optional("token_uri") ?? googleTokenURI
        guard let uri = URL(string: tokenURI), let host = uri.host?.lowercased(),
              uri.scheme == "https" || (uri.scheme == "http" && UploadTarget.isLoopback(host))
        else {
            throw ContinuonPackError(.credentialsInvalid, "The credentials file \(path) names a token_uri that is not https.")
        }
        switch optional("type") {
        case "service_account":
            let key = try RSASigningKey(pemRepresentation: Array(try field("private_key").utf8))
            return GoogleCredentials(source: .serviceAccount(ServiceAccountKey(
                file: path, clientEmail: try field("client_email"), privateKeyID: try field("private_key_id"),
                tokenURI: tokenURI, privateKey: key)), transport: transport)
        case "authorized_user":
            return GoogleCredentials(source: .authorizedUser(AuthorizedUser(
                file: path, clientID: try field("client_id"), clientSecret: try field("client_secret"),
                refreshToken: try field("refresh_token"), tokenURI: tokenURI)),
                transport: transport)
        case let other:
            throw ContinuonPackError(.credentialsInvalid, "The credentials file \(path) is of type "
                + "\(other.map { ContinuonPackError.quote($0) } ?? "(none)"); service_account and authorized_user are supported.")
        }
    }

    /// The metadata server named by `GCE_METADATA_HOST` (or the older `GCE_METADATA_ROOT`), else
    /// `metadata.google.internal`.
    public static func metadataServer(environment: [String: String], transport: (any CloudStorageTransport)? = nil) -> GoogleCredentials {
        let host = [environment["GCE_METADATA_HOST"], environment["GCE_METADATA_ROOT"]].compactMap { $0 }.first { !$0.isEmpty }
        return GoogleCredentials(source: .metadataServer(host: host ?? "metadata.google.internal"), transport: transport)
    }

    /// Application Default Credentials, in the order Google's libraries look: `GOOGLE_APPLICATION_CREDENTIALS`,
    /// gcloud's ADC file (`$CLOUDSDK_CONFIG/application_default_credentials.json`, else
    /// `~/.config/gcloud/application_default_credentials.json`), the metadata server (if it answers within 3 s).
    /// - Throws: `credentials.not_found` naming everything that was tried; `credentials.invalid` for a named file
    ///   that is unusable.
    public static func applicationDefault(environment: [String: String], transport: (any CloudStorageTransport)? = nil) async throws -> GoogleCredentials {
        var tried: [String] = []
        if let path = environment["GOOGLE_APPLICATION_CREDENTIALS"], !path.isEmpty {
            return try load(file: path, transport: transport)
        }
        tried.append("GOOGLE_APPLICATION_CREDENTIALS (not set)")
        let configuration = environment["CLOUDSDK_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (environment["HOME"] ?? NSHomeDirectory()) + "/.config/gcloud"
        let adcFile = configuration + "/application_default_credentials.json"
        if access(adcFile, F_OK) == 0 { return try load(file: adcFile, transport: transport) }
        tried.append("\(adcFile) (no such file)")
        let metadata = metadataServer(environment: environment, transport: transport)
        if case let .metadataServer(host) = metadata.source {
            // Google's libraries ping the metadata server's IP (no DNS lookup) unless told otherwise.
            let probe = environment["GCE_METADATA_IP"].flatMap { $0.isEmpty ? nil : $0 }
                ?? (environment["GCE_METADATA_HOST"] != nil || environment["GCE_METADATA_ROOT"] != nil ? host : "169.254.169.254")
            if await ping(host: probe) { return metadata }
            tried.append("the metadata server at \(probe) (no answer)")
        }
        throw ContinuonPackError(.credentialsNotFound, "No Google credentials found; tried " + tried.joined(separator: ", ")
            + ". Give --credentials FILE (a service-account key or gcloud ADC file) or --credentials metadata.")
    }

    /// Whether a metadata server answers at `host` (with `Metadata-Flavor: Google`) within 3 seconds.
    static func ping(host: String) async -> Bool {
        guard let url = URL(string: "http://\(host)/") else { return false }
        let response = try? await URLSessionTransport(timeout: .seconds(3))
            .send(method: "GET", url: url, headers: ["Metadata-Flavor": "Google"], body: nil)
        return response?.header("Metadata-Flavor") == "Google"
    }
}
