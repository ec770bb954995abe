// Which signatures count under a trust policy (spec section 14.3), in two steps: the cryptographic check needs
// only the envelope; the policy's rules need the manifest's environment ID and time.

/// What one signature of an envelope turned out to be under a policy: `counted`, `untrusted`, or the code that
/// kept it from counting (`signature.invalid`, `signature.key_revoked`, `signature.key_not_yet_valid`,
/// `signature.key_expired`, `signature.environment_not_allowed`).
public struct SignatureStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public init(_ code: ContinuonPackError.Code) { self.rawValue = code.rawValue }
    public var description: String { rawValue }

    public static let counted = SignatureStatus(rawValue: "counted")
    /// The key ID names no key of the policy: ignored.
    public static let untrusted = SignatureStatus(rawValue: "untrusted")
}

/// The first step: each signature's key looked up in the policy and its signature checked over the PAE.
public struct SignatureEvidence: Sendable {
    public let keyID: String
    public let key: TrustPolicy.Key?
    /// The signature verifies under `key` (checked for revoked keys too).
    public let verified: Bool

    public init(keyID: String, key: TrustPolicy.Key?, verified: Bool) {
        self.keyID = keyID
        self.key = key
        self.verified = verified
    }
}

/// The outcome of the signature check under a policy: each signature's status and the failures to report.
public struct TrustJudgement: Sendable {
    public var signatures: [VerificationReport.SignatureResult] = []
    /// Distinct keys with a counted signature, in envelope order.
    public var countedKeyIDs: [String] = []
    /// What the `signature` check reports (spec section 14.3); empty when the envelope is accepted cleanly.
    public var failures: [ContinuonPackError] = []
    /// At least `threshold` distinct keys counted.
    public var accepted = false
}

extension TrustPolicy {
    /// Looks up every signature's key and verifies it (an Ed25519 check per signature naming a policy key).
    public func evidence(for envelope: Envelope) -> [SignatureEvidence] {
        let pae = envelope.signedBytes
        return envelope.signatures.map { signature in
            let key = keysByID[signature.keyID]
            let verified = key?.publicKey.isValidSignature(signature.signature, for: pae) ?? false
            return SignatureEvidence(keyID: signature.keyID, key: key, verified: verified)
        }
    }

    /// Applies the rules of spec section 14.3 to the evidence.
    /// - Parameters:
    ///   - environmentID, createdAt: the manifest's, or nil when its shape did not decode (the validity and
    ///     environment rules are then skipped; the manifest check fails in any case).
    ///   - threshold: how many distinct keys must count.
    public func judge(_ evidence: [SignatureEvidence], environmentID: String?, createdAt: String?, threshold: Int) -> TrustJudgement {
        var judgement = TrustJudgement()
        guard !evidence.isEmpty else {
            judgement.failures = [ContinuonPackError(.signatureMissing, "The envelope carries no signature.")]
            return judgement
        }
        var refusals: [ContinuonPackError] = []
        for item in evidence {
            let (status, reason) = Self.status(of: item, environmentID: environmentID, createdAt: createdAt)
            judgement.signatures.append(.init(keyID: item.keyID, trusted: item.key != nil, verified: item.verified,
                                              status: status, reason: reason))
            switch status {
            case .counted:
                if !judgement.countedKeyIDs.contains(item.keyID) { judgement.countedKeyIDs.append(item.keyID) }
            case .untrusted:
                break
            case SignatureStatus(.signatureInvalid):
                judgement.failures.append(ContinuonPackError(.signatureInvalid, reason))
            default:
                refusals.append(ContinuonPackError(.init(rawValue: status.rawValue), reason))
            }
        }
        let threshold = max(1, threshold)
        judgement.accepted = judgement.countedKeyIDs.count >= threshold
        guard !judgement.accepted else { return judgement }
        judgement.failures += refusals
        if threshold > 1 {
            judgement.failures.append(ContinuonPackError(
                .signatureThreshold,
                "\(judgement.countedKeyIDs.count) trusted key(s) signed; the threshold is \(threshold) distinct trusted keys."))
        } else if evidence.allSatisfy({ $0.key == nil }) {
            judgement.failures.append(ContinuonPackError(
                .signatureUntrusted,
                "No signature is by a trusted key (key IDs: \(evidence.map(\.keyID).joined(separator: ", ")))."))
        }
        return judgement
    }

    /// Judges a verified package's signatures again under this policy, without checking a signature twice: a key ID
    /// names one public key (spec section 5), so a signature that verified under the key a report's policy held
    /// verifies under this policy's key of the same ID. A running service does this before it stores a package,
    /// so that a revocation loaded while the upload arrived applies to it.
    public func rejudge(_ report: VerificationReport, threshold: Int? = nil) -> TrustJudgement {
        let evidence = report.signatures.map { signature in
            SignatureEvidence(keyID: signature.keyID, key: keysByID[signature.keyID], verified: signature.verified)
        }
        return judge(evidence, environmentID: report.manifest?.provenance.environmentID, createdAt: report.manifest?.createdAt,
                     threshold: threshold ?? self.threshold)
    }

    /// Both steps at once.
    public func judge(_ envelope: Envelope, manifest: Manifest?, threshold: Int? = nil) -> TrustJudgement {
        judge(evidence(for: envelope), environmentID: manifest?.provenance.environmentID, createdAt: manifest?.createdAt,
              threshold: threshold ?? self.threshold)
    }

    private static func status(of item: SignatureEvidence, environmentID: String?, createdAt: String?) -> (SignatureStatus, String) {
        guard let key = item.key else {
            return (.untrusted, "Key \(item.keyID) is not in the trust policy; its signature is ignored.")
        }
        if let revocation = key.revocation {
            return (SignatureStatus(.signatureKeyRevoked),
                    "Key \(item.keyID) was revoked at \(revocation.at) (\(quoted(revocation.reason))); its signatures never count.")
        }
        guard item.verified else {
            return (SignatureStatus(.signatureInvalid), "The signature by trusted key \(item.keyID) does not verify.")
        }
        if let createdAt {
            if let notBefore = key.notBefore, createdAt.utf8.lexicographicallyPrecedes(notBefore.utf8) {
                return (SignatureStatus(.signatureKeyNotYetValid),
                        "Key \(item.keyID) is valid from \(notBefore); the manifest was created at \(createdAt).")
            }
            if let notAfter = key.notAfter, notAfter.utf8.lexicographicallyPrecedes(createdAt.utf8) {
                return (SignatureStatus(.signatureKeyExpired),
                        "Key \(item.keyID) is valid until \(notAfter); the manifest was created at \(createdAt).")
            }
        }
        if let environmentID, !key.allows(environment: environmentID) {
            let allowed = key.environments.isEmpty ? "no environment" : key.environments.map(\.text).joined(separator: ", ")
            return (SignatureStatus(.signatureEnvironment),
                    "Key \(item.keyID) may sign for \(allowed), not for environment \(quoted(environmentID)).")
        }
        return (.counted, "Key \(item.keyID) signed, and the policy lets it sign for this environment at this time.")
    }
}
