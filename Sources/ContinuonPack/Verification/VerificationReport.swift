/// The outcome of verifying one package: every check with whether it held, and every failure with its code.
/// Verification never throws for a bad package; it reports.
public struct VerificationReport: Sendable {
    /// The checks, in the order they run.
    public enum Check: String, Sendable, CaseIterable {
        case structure = "package.structure"
        case envelope = "envelope"
        case signature = "signature"
        case manifest = "manifest"
        case packageID = "package_id"
        case archive = "archive"
        case blobs = "blobs"
    }

    public enum Outcome: String, Sendable {
        case held
        case failed
        /// Not reached, because something it depends on failed first.
        case notChecked = "not_checked"
    }

    /// What one signature in the envelope turned out to be.
    public struct SignatureResult: Sendable, Equatable {
        public let keyID: String
        /// True when the key ID names one of the trusted keys.
        public let trusted: Bool
        /// True when a trusted key verified this signature over the envelope's PAE.
        public let verified: Bool
        /// `counted`, `untrusted`, or the code that kept it from counting (spec section 14.3).
        public let status: SignatureStatus
        /// A sentence saying why (`continuon-pack trust check` prints it).
        public let reason: String

        public init(keyID: String, trusted: Bool, verified: Bool, status: SignatureStatus, reason: String) {
            self.keyID = keyID
            self.trusted = trusted
            self.verified = verified
            self.status = status
            self.reason = reason
        }
    }

    public let path: String
    /// The package ID from the manifest (which is only trustworthy when `valid`).
    public internal(set) var packageID: String?
    public internal(set) var manifest: Manifest?
    public internal(set) var signatures: [SignatureResult] = []
    /// Distinct trusted keys whose signatures verified.
    public internal(set) var verifiedKeyIDs: [String] = []
    public internal(set) var outcomes: [Check: Outcome] = Dictionary(uniqueKeysWithValues: Check.allCases.map { ($0, .notChecked) })
    public internal(set) var failures: [ContinuonPackError] = []
    /// Blob failures beyond the first 20, counted but not listed.
    public internal(set) var omittedFailures = 0

    /// True only when every check held.
    public var valid: Bool { failures.isEmpty && outcomes.values.allSatisfy { $0 == .held } }

    init(path: String) { self.path = path }

    mutating func fail(_ check: Check, _ error: ContinuonPackError) {
        // When the episode archive cannot be read to its end, which blob checks ran first depends on buffering:
        // the format says no blob codes are reported then (docs/signed-ingestion.md, section 7).
        // The same holds when the outer package breaks (anything but trailing data, which is found last): which
        // blobs were read before the break depends on buffering, so no blob codes (spec section 7.1).
        if error.code == .archiveCorrupt || error.code == .archiveLimit
            || (check == .structure && error.code != .packageTrailingData) {
            dropFailures(of: .blobs)
            blobsAbandoned = true
        }
        if check == .blobs && blobsAbandoned { return }
        outcomes[check] = .failed
        failures.append(error)
    }

    /// Set once the episode archive could not be read to its end.
    private var blobsAbandoned = false

    /// Forgets the failures recorded for `check` and marks it not checked.
    mutating func dropFailures(of check: Check) {
        let prefix = check == .blobs ? "blob." : check.rawValue + "."
        failures.removeAll { $0.code.rawValue.hasPrefix(prefix) }
        if check == .blobs { omittedFailures = 0 }
        outcomes[check] = .notChecked
    }

    mutating func hold(_ check: Check) {
        if check == .blobs && blobsAbandoned { return }
        if outcomes[check] == .notChecked { outcomes[check] = .held }
    }

    /// The report as JSON: `valid`, `package_id`, `key_ids`, `errors` [{code, message}], `checks`, `signatures`.
    public var jsonValue: JSONValue {
        .object([
            ("path", .string(path)),
            ("valid", .bool(valid)),
            ("package_id", packageID.map(JSONValue.string) ?? .null),
            ("key_ids", .array(verifiedKeyIDs.map(JSONValue.string))),
            ("errors", .array(failures.map { failure in
                .object([("code", .string(failure.code.rawValue)), ("message", .string(failure.message))])
            })),
            ("errors_omitted", .number(String(omittedFailures))),
            ("checks", .object(Check.allCases.map { ($0.rawValue, .string(outcomes[$0]?.rawValue ?? "not_checked")) })),
            ("signatures", .array(signatures.map { signature in
                .object([
                    ("keyid", .string(signature.keyID)), ("trusted", .bool(signature.trusted)),
                    ("verified", .bool(signature.verified)), ("status", .string(signature.status.rawValue)),
                ])
            })),
        ])
    }
}
