import ContinuonPack
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An OAuth 2.0 access token. Its text is a secret: it is sent as `Authorization: Bearer …` and nowhere else (its
/// description is redacted, and no state file, log line or `--json` output carries it).
public struct AccessToken: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public let value: String
    /// When the issuer said it expires; nil when unknown (a token read from a file).
    public let expiresAt: ContinuousClock.Instant?

    public init(value: String, expiresAt: ContinuousClock.Instant?) {
        self.value = value
        self.expiresAt = expiresAt
    }

    public var description: String { "AccessToken(<redacted>)" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["value": "<redacted>"], displayStyle: .struct) }
}

/// Where access tokens come from: a service-account key, a gcloud user login, the metadata server, or a file an
/// external refresher keeps current.
public protocol AccessTokenProvider: Sendable {
    /// A token to send now. `refresh: true` (after a `401`) asks for a new one even if the cached one has not
    /// expired.
    /// - Throws: `credentials.*` codes with a sentence that names the source and never the secret.
    func accessToken(refresh: Bool) async throws -> AccessToken
    /// What the credentials are, for messages and logs: `service account a@b (key f.json)`. No secret.
    var summary: String { get }
}

/// A fixed token (tests, or a caller that manages tokens itself).
public struct StaticToken: AccessTokenProvider {
    let token: String
    public init(_ token: String) { self.token = token }
    public func accessToken(refresh: Bool) async throws -> AccessToken { AccessToken(value: token, expiresAt: nil) }
    public var summary: String { "a fixed bearer token" }
}

/// A token kept current in a file by something else (`gcloud auth print-access-token > F` on a timer, a sidecar):
/// read again whenever the file changed (inode, size or modification time), and on `refresh`.
public actor TokenFile: AccessTokenProvider {
    public nonisolated let path: String
    private var cached: (token: String, stamp: [Int])?

    public init(path: String) { self.path = path }

    public nonisolated var summary: String { "the token file \(path)" }

    public func accessToken(refresh: Bool) async throws -> AccessToken {
        let stamp = try Self.stamp(path)
        if !refresh, let cached, cached.stamp == stamp { return AccessToken(value: cached.token, expiresAt: nil) }
        let bytes = try FileIO.readFile(path, limit: 64 * 1024)
        let token = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !token.isEmpty, token.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
            throw ContinuonPackError(.credentialsInvalid, "The token file \(path) does not hold one printable token.")
        }
        cached = (token, stamp)
        return AccessToken(value: token, expiresAt: nil)
    }

    static func stamp(_ path: String) throws -> [Int] {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw ContinuonPackError(.credentialsInvalid, "Cannot read the token file \(path).", cause: String(cString: strerror(errno)))
        }
        return [Int(info.st_ino), Int(info.st_size), Int(info.st_mtim.tv_sec), Int(info.st_mtim.tv_nsec)]
    }
}

extension ContinuonPackError.Code {
    /// The credentials are missing, unreadable, malformed or too widely readable.
    public static let credentialsInvalid: Self = "credentials.invalid"
    /// No credentials were given and none were found where Google's libraries look.
    public static let credentialsNotFound: Self = "credentials.not_found"
    /// The token endpoint or metadata server refused or failed to give a token.
    public static let credentialsRefused: Self = "credentials.refused"
}
