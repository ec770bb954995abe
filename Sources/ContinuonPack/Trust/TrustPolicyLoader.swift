#if canImport(Glibc)
import Glibc
#endif

/// The keys that sign trust policies, and how many of them must (spec section 14.4). Given to a verifier on its
/// command line, never taken from a policy file.
public struct TrustRoots: Sendable {
    public var keys: [Ed25519PublicKey]
    public var threshold: Int

    public init(keys: [Ed25519PublicKey], threshold: Int = 1) {
        self.keys = keys
        self.threshold = threshold
    }
}

/// A policy as loaded from a file, with what a service shows and compares about it.
public struct LoadedTrustPolicy: Sendable {
    public let policy: TrustPolicy
    /// SHA-256 (lowercase hex) of the file's bytes.
    public let sha256: String
    /// True when it came from a signed envelope.
    public let signed: Bool
    /// SHA-256 (lowercase hex) of the policy document's bytes (a signed policy's payload): what the rollback rule
    /// compares.
    public let documentSHA256: String
    /// The root keys whose signatures counted (signed policies).
    public let rootKeyIDs: [String]

    public init(policy: TrustPolicy, sha256: String, signed: Bool, documentSHA256: String, rootKeyIDs: [String]) {
        self.policy = policy
        self.sha256 = sha256
        self.signed = signed
        self.documentSHA256 = documentSHA256
        self.rootKeyIDs = rootKeyIDs
    }

    /// The policy a list of trusted keys makes (no file behind it).
    public init(trustedKeys: [Ed25519PublicKey], threshold: Int) {
        self.init(policy: TrustPolicy(trustedKeys: trustedKeys, threshold: threshold), sha256: "", signed: false,
                  documentSHA256: "", rootKeyIDs: [])
    }

    /// The threshold a verifier's own `--threshold` makes under this policy: a signed policy's is a minimum, so that
    /// whoever configures the verifier cannot lower what the roots signed.
    public func threshold(overriding requested: Int?) -> Int? {
        guard let requested else { return nil }
        return signed ? max(requested, policy.threshold) : requested
    }
}

/// Reads plain and signed trust policies (spec sections 14.2 and 14.4) and writes signed ones.
public enum TrustPolicyLoader {
    public static let payloadType = "application/vnd.continuon.trust-policy+json"

    /// Loads a policy from `bytes`.
    /// - Parameters:
    ///   - roots: when given, only a signed policy meeting their threshold is accepted.
    ///   - now: the current time, `YYYY-MM-DDTHH:MM:SSZ` (`TrustPolicyLoader.currentTime()`).
    ///   - inForce: the policy a running service holds, for the rollback rule (signed policies).
    ///   - floor: the newest signed policy accepted before (a state file), for the rollback rule.
    /// - Throws: `trust.policy_invalid`, `trust.policy_unsigned`, `trust.policy_signature`, `trust.policy_expired`,
    ///   `trust.policy_rollback`.
    public static func load(_ bytes: [UInt8], roots: TrustRoots?, now: String, inForce: LoadedTrustPolicy? = nil,
                            floor: TrustFloor? = nil) throws(ContinuonPackError) -> LoadedTrustPolicy {
        guard bytes.count <= envelopeLimits.maxEnvelopeBytes else {
            throw TrustPolicy.invalid("The policy file is \(bytes.count) bytes; the limit is \(envelopeLimits.maxEnvelopeBytes).")
        }
        let root: JSONValue
        do {
            root = try StrictJSONParser.parse(bytes, maxDepth: 16, maxValues: TrustPolicy.maxJSONValues)
        } catch {
            throw TrustPolicy.invalid("The policy is not valid JSON: \(error.reason) at byte \(error.offset).")
        }
        let digest = SHA256Hasher.hash(bytes).hex
        guard isSigned(root) else {
            guard bytes.count <= TrustPolicy.maxDocumentBytes else {
                throw TrustPolicy.invalid("The policy is \(bytes.count) bytes; the limit is \(TrustPolicy.maxDocumentBytes).")
            }
            guard case .object = root else { throw TrustPolicy.invalid("The policy is not a JSON object.") }
            if roots != nil {
                throw ContinuonPackError(.trustPolicyUnsigned, "Trust roots are configured, but the policy is not signed.")
            }
            let policy = try TrustPolicy.decode(root)
            try checkExpiry(policy, now: now)
            return LoadedTrustPolicy(policy: policy, sha256: digest, signed: false, documentSHA256: digest, rootKeyIDs: [])
        }
        let envelope: Envelope
        do {
            envelope = try Envelope.decode(bytes, limits: envelopeLimits)
        } catch {
            throw TrustPolicy.invalid("The signed policy is not a valid envelope: \(error.message)")
        }
        guard envelope.payloadType == payloadType else {
            throw TrustPolicy.invalid("The signed policy's payload type is \(quoted(envelope.payloadType)), not \(payloadType).")
        }
        guard let roots else {
            throw ContinuonPackError(.trustPolicySignature, "The policy is signed, but no trust root was given to check it.")
        }
        let rootKeyIDs = try countedRoots(envelope, roots: roots)
        let policy = try TrustPolicy.decode(envelope.payload)
        guard policy.expires != nil else { throw TrustPolicy.invalid("A signed policy must have expires.") }
        try checkExpiry(policy, now: now)
        let payloadDigest = SHA256Hasher.hash(envelope.payload).hex
        if let floor = TrustFloor.highest(inForce.flatMap(TrustFloor.init), floor) {
            try floor.check(version: policy.version, payloadSHA256: payloadDigest)
        }
        return LoadedTrustPolicy(policy: policy, sha256: digest, signed: true, documentSHA256: payloadDigest, rootKeyIDs: rootKeyIDs)
    }

    /// Loads the policy file at `path`, under the rollback floor kept in `statePath` when given, and records a newer
    /// signed policy's floor there once accepted: a restart cannot be used to roll a policy back.
    /// - Throws: `io.error` (also for a damaged state file), or what `load(_:roots:now:inForce:floor:)` throws.
    public static func load(path: String, roots: TrustRoots?, statePath: String? = nil, now: String = currentTime(),
                            inForce: LoadedTrustPolicy? = nil) throws -> LoadedTrustPolicy {
        let recorded = try statePath.flatMap { try TrustFloor.read(path: $0) }
        let bytes = try readPolicyFile(path)
        let loaded = try load(bytes, roots: roots, now: now, inForce: inForce, floor: recorded)
        if let statePath, let floor = TrustFloor(loaded), floor != recorded {
            try floor.write(path: statePath)
        }
        return loaded
    }

    /// The whole file at `path`, at most the policy file limit. Symbolic links are followed (a Kubernetes ConfigMap
    /// is one); anything but a regular file (a FIFO, a device, a directory) is refused without blocking.
    /// - Throws: `trust.policy_invalid`, `io.error`.
    private static func readPolicyFile(_ path: String) throws -> [UInt8] {
        let file = try FileDescriptor.openForReading(path, nonBlocking: true)
        var status = stat()
        guard fstat(file.raw, &status) == 0, status.st_mode & S_IFMT == S_IFREG else {
            throw TrustPolicy.invalid("\(path) is not a regular file.")
        }
        let limit = envelopeLimits.maxEnvelopeBytes
        var bytes: [UInt8] = []
        try FileIO.forEachChunk(of: file) { chunk in
            guard bytes.count + chunk.count <= limit else {
                throw TrustPolicy.invalid("\(path) is larger than the limit of \(limit) bytes for a policy.")
            }
            bytes.append(contentsOf: chunk)
        }
        return bytes
    }

    /// True when `bytes` are a JSON object with a `payloadType` member: a signed policy (spec section 14.2).
    public static func isSignedPolicy(_ bytes: [UInt8]) -> Bool {
        (try? StrictJSONParser.parse(bytes, maxDepth: 16, maxValues: TrustPolicy.maxJSONValues)).map(isSigned) ?? false
    }

    private static func isSigned(_ root: JSONValue) -> Bool { root["payloadType"] != nil }

    /// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
    public static func currentTime() -> String {
        PackageWriter.timestamp(secondsSinceEpoch: Int64(time(nil)))
    }

    /// Signs `policy` with `keys`: the envelope's canonical JSON and one newline. The payload is the policy's
    /// canonical bytes (`TrustPolicy.canonicalBytes()`), which must have `expires`.
    /// - Throws: `trust.policy_invalid` without `expires`; `crypto.failure`.
    public static func sign(_ policy: TrustPolicy, with keys: [Ed25519PrivateKey]) throws -> [UInt8] {
        guard policy.expires != nil else { throw TrustPolicy.invalid("A signed policy must have expires (trust set-expiry).") }
        return try Envelope.sign(payload: policy.canonicalBytes(), payloadType: payloadType, with: keys).jsonBytes() + [0x0a]
    }

    /// Adds signatures by `keys` to a signed policy (one root signs after another); keys that signed already are
    /// skipped.
    /// - Throws: `trust.policy_invalid` when `signed` is not a signed policy; `crypto.failure`.
    public static func addSignatures(to signed: [UInt8], with keys: [Ed25519PrivateKey]) throws -> [UInt8] {
        var envelope: Envelope
        do {
            envelope = try Envelope.decode(signed, limits: envelopeLimits)
        } catch {
            throw TrustPolicy.invalid("The file is not a signed policy: \(error.message)")
        }
        guard envelope.payloadType == payloadType else { throw TrustPolicy.invalid("The file is not a signed policy.") }
        _ = try TrustPolicy.decode(envelope.payload)
        let pae = envelope.signedBytes
        for key in keys where !envelope.signatures.contains(where: { $0.keyID == key.publicKey.keyID }) {
            envelope.signatures.append(.init(keyID: key.publicKey.keyID, signature: try key.signature(for: pae)))
        }
        guard envelope.signatures.count <= envelopeLimits.maxSignatures else {
            throw TrustPolicy.invalid("A signed policy carries at most \(envelopeLimits.maxSignatures) signatures.")
        }
        return envelope.jsonBytes() + [0x0a]
    }

    /// The largest policy file, plain or signed (spec section 14.2).
    public static var maxFileBytes: Int { envelopeLimits.maxEnvelopeBytes }

    /// A signed policy file is at most 96 MiB: a 64 MiB payload in base64 and its signatures (spec section 14.2).
    static let envelopeLimits: PackageLimits = {
        var limits = PackageLimits.default
        limits.maxEnvelopeBytes = 96 << 20
        return limits
    }()

    private static func checkExpiry(_ policy: TrustPolicy, now: String) throws(ContinuonPackError) {
        if policy.hasExpired(at: now), let expires = policy.expires {
            throw ContinuonPackError(.trustPolicyExpired, "The policy (version \(policy.version)) expired at \(expires).")
        }
    }

    private static func countedRoots(_ envelope: Envelope, roots: TrustRoots) throws(ContinuonPackError) -> [String] {
        let byID = Dictionary(roots.keys.map { ($0.keyID, $0) }, uniquingKeysWith: { first, _ in first })
        let pae = envelope.signedBytes
        var counted: [String] = []
        for signature in envelope.signatures {
            guard let key = byID[signature.keyID] else { continue }
            guard key.isValidSignature(signature.signature, for: pae) else {
                throw ContinuonPackError(.trustPolicySignature, "The policy's signature by root key \(signature.keyID) does not verify.")
            }
            if !counted.contains(signature.keyID) { counted.append(signature.keyID) }
        }
        let threshold = max(1, roots.threshold)
        guard counted.count >= threshold else {
            throw ContinuonPackError(
                .trustPolicySignature,
                "\(counted.count) trust root(s) signed the policy; \(threshold) must.")
        }
        return counted
    }
}
