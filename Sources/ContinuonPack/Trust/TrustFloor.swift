/// The newest signed policy a verifier has accepted: a signed policy is accepted only at a greater version, or at
/// this version with these payload bytes (the rollback rule, spec section 14.4). Kept across restarts in a state
/// file (`--trust-state`), canonical JSON and one newline:
/// `{"payload_sha256":"<hex>","schema":"continuon.trust-state/v1","version":N}`.
public struct TrustFloor: Sendable, Equatable {
    public static let schema = "continuon.trust-state/v1"

    public var version: UInt64
    /// SHA-256 (lowercase hex) of the accepted policy's payload bytes.
    public var payloadSHA256: String

    public init(version: UInt64, payloadSHA256: String) {
        self.version = version
        self.payloadSHA256 = payloadSHA256
    }

    /// The floor a loaded signed policy sets; nil for a plain policy (the rule concerns signed ones only).
    public init?(_ loaded: LoadedTrustPolicy) {
        guard loaded.signed else { return nil }
        self.init(version: loaded.policy.version, payloadSHA256: loaded.documentSHA256)
    }

    /// The higher of two floors (the one a newer policy set).
    public static func highest(_ a: TrustFloor?, _ b: TrustFloor?) -> TrustFloor? {
        guard let a else { return b }
        guard let b else { return a }
        return b.version > a.version ? b : a
    }

    /// - Throws: `trust.policy_rollback` when a signed policy of `version` with payload digest `payloadSHA256`
    ///   may not replace the one this floor records.
    func check(version: UInt64, payloadSHA256: String) throws(ContinuonPackError) {
        if version < self.version || (version == self.version && payloadSHA256 != self.payloadSHA256) {
            throw ContinuonPackError(
                .trustPolicyRollback,
                "The policy is version \(version); version \(self.version) has been accepted"
                    + (version == self.version ? " with other contents." : "."))
        }
    }

    // MARK: - The state file

    public var canonicalBytes: [UInt8] {
        CanonicalJSON.encode(.object([
            ("schema", .string(Self.schema)), ("version", .number(String(version))), ("payload_sha256", .string(payloadSHA256)),
        ])) + [0x0a]
    }

    /// Parses a state file.
    /// - Throws: `io.error` naming what is wrong (a state file is the verifier's own; a damaged one is not ignored).
    public static func decode(_ bytes: [UInt8]) throws(ContinuonPackError) -> TrustFloor {
        let problem = ContinuonPackError(.ioError, "The trust state file is damaged; restore it (or remove it knowingly: it guards against rollback).")
        guard let root = try? StrictJSONParser.parse(bytes), case let .object(members) = root,
              members.allSatisfy({ ["schema", "version", "payload_sha256"].contains($0.0) }),
              case .string(Self.schema)? = root["schema"], let version = root["version"]?.safeUnsignedInteger,
              case let .string(digest)? = root["payload_sha256"], Hex.isLowercaseDigest(digest)
        else { throw problem }
        return TrustFloor(version: version, payloadSHA256: digest)
    }

    /// Reads the floor at `path`, or nil when there is no file.
    public static func read(path: String) throws -> TrustFloor? {
        guard FileIO.exists(path) else { return nil }
        return try decode(FileIO.readFile(path, limit: 4096))
    }

    /// Writes the floor at `path` atomically (temporary file, fsync, rename, fsync directory).
    public func write(path: String) throws {
        try FileIO.replaceFile(canonicalBytes, at: path, mode: 0o600)
    }
}
