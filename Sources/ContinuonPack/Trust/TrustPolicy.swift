/// Which keys may sign for which environments, during which period, and which are revoked (spec section 14).
///
/// A list of trusted keys with a threshold is the policy `TrustPolicy(trustedKeys:threshold:)` makes: every key
/// allowed `*`, no validity period, nothing revoked. Keys are looked up by key ID, so a policy of 10,000 keys
/// costs a verification what a policy of one does.
public struct TrustPolicy: Sendable, Equatable {
    public static let schema = "continuon.trust-policy/v1"
    /// The most keys a policy may hold.
    public static let maxKeys = 100_000
    /// The most environment patterns one key may have.
    public static let maxEnvironments = 256
    /// The largest policy file read, in bytes.
    public static let maxDocumentBytes = 64 << 20
    /// The most JSON values a policy file may hold (every object, array, string, number and literal; keys not
    /// counted): what bounds the memory a hostile file can make a loader spend.
    public static let maxJSONValues = 4_000_000
    /// The longest `comment` and `revoked.reason`, in bytes.
    public static let maxTextBytes = 1024

    /// Grows with every edition of the policy.
    public var version: UInt64
    /// How many distinct keys must count, unless the verifier is given its own threshold.
    public var threshold: Int
    /// The policy must not be used at or after this time (`YYYY-MM-DDTHH:MM:SSZ`).
    public var expires: String?
    /// The keys, by key ID.
    public internal(set) var keysByID: [String: Key]

    /// A key of the policy and the rules its signatures are held to.
    public struct Key: Sendable, Equatable {
        /// The key; its key ID is computed once (a key ID names one public key).
        public let publicKey: Ed25519PublicKey
        /// What the key may sign for, sorted; empty means nothing.
        public var environments: [EnvironmentPattern]
        /// The key counts only for manifests whose `created_at` is not earlier.
        public var notBefore: String?
        /// The key counts only for manifests whose `created_at` is not later.
        public var notAfter: String?
        public var revocation: Revocation?
        public var comment: String?

        public var keyID: String { cachedKeyID }
        private let cachedKeyID: String

        public init(publicKey: Ed25519PublicKey, environments: [EnvironmentPattern], notBefore: String? = nil,
                    notAfter: String? = nil, revocation: Revocation? = nil, comment: String? = nil) {
            self.init(publicKey: publicKey, keyID: publicKey.keyID, environments: environments, notBefore: notBefore,
                      notAfter: notAfter, revocation: revocation, comment: comment)
        }

        init(publicKey: Ed25519PublicKey, keyID: String, environments: [EnvironmentPattern], notBefore: String?,
             notAfter: String?, revocation: Revocation?, comment: String?) {
            self.publicKey = publicKey
            self.environments = environments.sorted() // their order carries no meaning (spec section 14.1)
            self.notBefore = notBefore
            self.notAfter = notAfter
            self.revocation = revocation
            self.comment = comment
            self.cachedKeyID = keyID
        }

        /// True when one of the key's patterns matches `environmentID`. An ID that is not an identifier (section 2;
        /// it may be megabytes long) is matched only by a pattern of `*` alone, so matching never runs on more than
        /// 128 bytes (spec section 14.3).
        public func allows(environment environmentID: String) -> Bool {
            guard FormatRules.isValidIdentifier(environmentID) else { return environments.contains(where: \.matchesEverything) }
            return environments.contains { $0.matches(environmentID) }
        }
    }

    /// A revoked key: its signatures never count, whatever the manifest's `created_at` says.
    public struct Revocation: Sendable, Equatable {
        /// When it was revoked (a record; it does not limit the revocation).
        public var at: String
        public var reason: String
        public init(at: String, reason: String) {
            self.at = at
            self.reason = reason
        }
    }

    /// An empty policy (it trusts no key), version 1.
    public init(version: UInt64 = 1, threshold: Int = 1, expires: String? = nil) {
        self.version = version
        self.threshold = threshold
        self.expires = expires
        self.keysByID = [:]
    }

    /// The policy a list of trusted keys makes: each key allowed every environment, with no validity period.
    public init(trustedKeys: [Ed25519PublicKey], threshold: Int = 1) {
        self.init(threshold: threshold)
        for key in trustedKeys { keysByID[key.keyID] = Key(publicKey: key, environments: [.any]) }
    }

    /// The keys, sorted by key ID.
    public var keys: [Key] { keysByID.keys.sorted().compactMap { keysByID[$0] } }

    public subscript(keyID: String) -> Key? { keysByID[keyID] }

    /// Adds `key`, or replaces the key with its key ID.
    public mutating func set(_ key: Key) { keysByID[key.keyID] = key }

    /// Removes the key with `keyID`; returns it, or nil when the policy does not hold it.
    @discardableResult
    public mutating func remove(keyID: String) -> Key? { keysByID.removeValue(forKey: keyID) }

    /// True when `expires` is set and `now` is at or after it.
    public func hasExpired(at now: String) -> Bool {
        guard let expires else { return false }
        return !(now.utf8.lexicographicallyPrecedes(expires.utf8))
    }
}
