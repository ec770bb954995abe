// The policy document (spec section 14.1): strict decoding and the canonical encoding `continuon-pack trust` writes.

extension TrustPolicy {
    /// Parses a plain policy document.
    /// - Throws: `trust.policy_invalid`, naming the first member that breaks a rule.
    public static func decode(_ bytes: [UInt8]) throws(ContinuonPackError) -> TrustPolicy {
        guard bytes.count <= maxDocumentBytes else {
            throw invalid("The policy is \(bytes.count) bytes; the limit is \(maxDocumentBytes).")
        }
        let root: JSONValue
        do {
            root = try StrictJSONParser.parse(bytes, maxDepth: 16, maxValues: maxJSONValues)
        } catch {
            throw invalid("The policy is not valid JSON: \(error.reason) at byte \(error.offset).")
        }
        return try decode(root)
    }

    static func decode(_ root: JSONValue) throws(ContinuonPackError) -> TrustPolicy {
        guard case let .object(members) = root else { throw invalid("The policy is not a JSON object.") }
        try onlyMembers(members, ["schema", "version", "threshold", "expires", "keys"], in: "the policy")
        guard case let .string(schema)? = root["schema"], schema == Self.schema else {
            throw invalid("schema is not \(quoted(Self.schema)).")
        }
        guard let version = root["version"]?.safeUnsignedInteger, version >= 1 else {
            throw invalid("version is not an integer of at least 1.")
        }
        guard let threshold = root["threshold"]?.safeUnsignedInteger, threshold >= 1 else {
            throw invalid("threshold is not an integer of at least 1.")
        }
        let expires = try optionalTimestamp(root["expires"], "expires")
        guard case let .array(keyValues)? = root["keys"] else { throw invalid("keys is not an array.") }
        guard keyValues.count <= maxKeys else {
            throw invalid("The policy lists \(keyValues.count) keys; the limit is \(maxKeys).")
        }
        var policy = TrustPolicy(version: version, threshold: Int(threshold), expires: expires)
        policy.keysByID.reserveCapacity(keyValues.count)
        for (index, value) in keyValues.enumerated() {
            let key = try decodeKey(value, at: index)
            guard policy.keysByID.updateValue(key, forKey: key.keyID) == nil else {
                throw invalid("keys[\(index)]: key \(key.keyID) is listed twice.")
            }
        }
        return policy
    }

    private static func decodeKey(_ value: JSONValue, at index: Int) throws(ContinuonPackError) -> Key {
        let place = "keys[\(index)]"
        guard case let .object(members) = value else { throw invalid("\(place) is not an object.") }
        try onlyMembers(members, ["key_id", "public_key", "environments", "not_before", "not_after", "revoked", "comment"], in: place)
        guard case let .string(keyID)? = value["key_id"], Hex.isLowercaseDigest(keyID) else {
            throw invalid("\(place).key_id is not 64 lowercase hex digits.")
        }
        guard case let .string(publicHex)? = value["public_key"], Hex.isLowercaseDigest(publicHex),
              let raw = Hex.decode(publicHex) else {
            throw invalid("\(place).public_key is not 64 lowercase hex digits (the raw Ed25519 public key).")
        }
        let publicKey: Ed25519PublicKey
        do {
            publicKey = try Ed25519PublicKey(rawRepresentation: raw)
        } catch {
            throw invalid("\(place).public_key is not an Ed25519 public key.")
        }
        guard case let .array(patternValues)? = value["environments"] else {
            throw invalid("\(place).environments is not an array.")
        }
        guard patternValues.count <= maxEnvironments else {
            throw invalid("\(place) lists \(patternValues.count) environments; the limit is \(maxEnvironments).")
        }
        var environments: [EnvironmentPattern] = []
        environments.reserveCapacity(patternValues.count)
        for (patternIndex, patternValue) in patternValues.enumerated() {
            guard case let .string(text) = patternValue, let pattern = EnvironmentPattern(text) else {
                throw invalid("\(place).environments[\(patternIndex)] is not a pattern of identifier characters and *.")
            }
            environments.append(pattern)
        }
        let notBefore = try optionalTimestamp(value["not_before"], "\(place).not_before")
        let notAfter = try optionalTimestamp(value["not_after"], "\(place).not_after")
        if let notBefore, let notAfter, notAfter.utf8.lexicographicallyPrecedes(notBefore.utf8) {
            throw invalid("\(place).not_after is earlier than its not_before.")
        }
        var revocation: Revocation?
        if let revoked = value["revoked"] {
            guard case let .object(fields) = revoked else { throw invalid("\(place).revoked is not an object.") }
            try onlyMembers(fields, ["at", "reason"], in: "\(place).revoked")
            guard let at = try optionalTimestamp(revoked["at"], "\(place).revoked.at") else {
                throw invalid("\(place).revoked has no at.")
            }
            guard case let .string(reason)? = revoked["reason"], (1...maxTextBytes).contains(reason.utf8.count) else {
                throw invalid("\(place).revoked.reason is not a string of 1 to \(maxTextBytes) bytes.")
            }
            revocation = Revocation(at: at, reason: reason)
        }
        var comment: String?
        if let value = value["comment"] {
            guard case let .string(text) = value, text.utf8.count <= maxTextBytes else {
                throw invalid("\(place).comment is not a string of at most \(maxTextBytes) bytes.")
            }
            comment = text
        }
        guard publicKey.keyID == keyID else {
            throw invalid("\(place).key_id is not the key ID of its public_key (\(publicKey.keyID)).")
        }
        return Key(publicKey: publicKey, keyID: keyID, environments: environments, notBefore: notBefore,
                   notAfter: notAfter, revocation: revocation, comment: comment)
    }

    private static func optionalTimestamp(_ value: JSONValue?, _ name: String) throws(ContinuonPackError) -> String? {
        guard let value else { return nil }
        guard case let .string(text) = value, FormatRules.isValidTimestamp(text) else {
            throw invalid("\(name) is not a timestamp YYYY-MM-DDTHH:MM:SSZ.")
        }
        return text
    }

    private static func onlyMembers(_ members: [(String, JSONValue)], _ allowed: [String], in place: String) throws(ContinuonPackError) {
        if let unknown = members.first(where: { !allowed.contains($0.0) }) {
            throw invalid("\(place) has an unknown member \(quoted(unknown.0)).")
        }
    }

    static func invalid(_ message: String) -> ContinuonPackError {
        ContinuonPackError(.trustPolicyInvalid, message)
    }

    // MARK: - Writing

    /// The policy as JSON: keys sorted by key ID, each key's environments sorted.
    public var jsonValue: JSONValue {
        var top: [(String, JSONValue)] = [("schema", .string(Self.schema)), ("version", .number(String(version))),
                                          ("threshold", .number(String(threshold)))]
        if let expires { top.append(("expires", .string(expires))) }
        top.append(("keys", .array(keys.map { key in
            var fields: [(String, JSONValue)] = [
                ("key_id", .string(key.keyID)),
                ("public_key", .string(Hex.encode(key.publicKey.rawRepresentation))),
                ("environments", .array(key.environments.sorted().map { .string($0.text) })),
            ]
            if let notBefore = key.notBefore { fields.append(("not_before", .string(notBefore))) }
            if let notAfter = key.notAfter { fields.append(("not_after", .string(notAfter))) }
            if let revocation = key.revocation {
                fields.append(("revoked", .object([("at", .string(revocation.at)), ("reason", .string(revocation.reason))])))
            }
            if let comment = key.comment { fields.append(("comment", .string(comment))) }
            return .object(fields)
        })))
        return .object(top)
    }

    /// Canonical JSON (spec section 4) and one newline: what `continuon-pack trust` writes.
    public func canonicalBytes() -> [UInt8] {
        CanonicalJSON.encode(jsonValue) + [UInt8(ascii: "\n")]
    }
}
