/// The one error type of continuon-pack.
///
/// `code` is a stable dotted identifier (for example `archive.digest_mismatch`) that appears verbatim in
/// `--json` output, in `docs/signed-ingestion.md` and in `TestVectors/invalid/`. `message` is a sentence for a
/// person; `cause` carries text from the C library or the operating system, never part of the code.
public struct ContinuonPackError: Error, Sendable, Equatable, CustomStringConvertible {
    public let code: Code
    public let message: String
    public let cause: String?

    public init(_ code: Code, _ message: String, cause: String? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String {
        if let cause { return "\(code): \(message) (\(cause))" }
        return "\(code): \(message)"
    }

    /// Untrusted text quoted for a message (`quoted(_:limit:)`), for this package's other targets.
    package static func quote(_ text: String) -> String { quoted(text) }

    /// A stable error code. New codes may be added; existing ones never change meaning.
    public struct Code: RawRepresentable, Hashable, Sendable, ExpressibleByStringLiteral, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public init(stringLiteral value: String) { self.rawValue = value }
        public var description: String { rawValue }
    }
}

extension ContinuonPackError.Code {
    // MARK: - I/O and usage (CLI exit code 2)
    public static let ioError: Self = "io.error"
    public static let outputExists: Self = "io.output_exists"
    public static let keyInvalid: Self = "key.invalid"
    public static let keyEncrypted: Self = "key.passphrase_required"
    public static let keyWrongType: Self = "key.not_ed25519"
    public static let cryptoFailure: Self = "crypto.failure"
    public static let archiveWriteFailed: Self = "pack.archive_write_failed"
    public static let sourceInvalid: Self = "pack.source_invalid"
    public static let sourceChanged: Self = "pack.source_changed"
    public static let sourceEmpty: Self = "pack.no_blobs"
    public static let sourcePathUnwritable: Self = "pack.path_unwritable"

    // MARK: - Outbox and upload
    public static let outboxCorrupt: Self = "outbox.state_corrupt"
    public static let outboxConflict: Self = "outbox.conflict"
    public static let outboxBusy: Self = "outbox.busy"
    public static let outboxUnknownEntry: Self = "outbox.unknown_entry"
    public static let outboxNotAcknowledged: Self = "outbox.not_acknowledged"
    public static let uploadIncomplete: Self = "upload.incomplete"
    public static let uploadProtocol: Self = "upload.protocol_error"

    // MARK: - Package structure (outer tar)
    public static let packageNotTar: Self = "package.not_tar"
    public static let packageMemberCount: Self = "package.member_count"
    public static let packageMemberName: Self = "package.member_name"
    public static let packageMemberType: Self = "package.member_type"
    public static let packageCorrupt: Self = "package.corrupt"
    public static let packageTrailingData: Self = "package.trailing_data"
    public static let packageMetadata: Self = "package.metadata"

    // MARK: - Envelope and signatures
    public static let envelopeTooLarge: Self = "envelope.too_large"
    public static let envelopeJSON: Self = "envelope.json_invalid"
    public static let envelopeDuplicateKey: Self = "envelope.duplicate_key"
    public static let envelopeShape: Self = "envelope.shape"
    public static let envelopePayloadType: Self = "envelope.payload_type"
    public static let envelopeBase64: Self = "envelope.base64_invalid"
    public static let signatureMissing: Self = "signature.missing"
    public static let signatureInvalid: Self = "signature.invalid"
    public static let signatureUntrusted: Self = "signature.untrusted"
    public static let signatureThreshold: Self = "signature.threshold_not_met"
    public static let signatureKeyRevoked: Self = "signature.key_revoked"
    public static let signatureKeyNotYetValid: Self = "signature.key_not_yet_valid"
    public static let signatureKeyExpired: Self = "signature.key_expired"
    public static let signatureEnvironment: Self = "signature.environment_not_allowed"

    // MARK: - Trust policies (CLI exit code 2: the policy is refused, nothing is verified with it)
    public static let trustPolicyInvalid: Self = "trust.policy_invalid"
    public static let trustPolicyUnsigned: Self = "trust.policy_unsigned"
    public static let trustPolicySignature: Self = "trust.policy_signature"
    public static let trustPolicyExpired: Self = "trust.policy_expired"
    public static let trustPolicyRollback: Self = "trust.policy_rollback"

    // MARK: - Manifest
    public static let manifestJSON: Self = "manifest.json_invalid"
    public static let manifestDuplicateKey: Self = "manifest.duplicate_key"
    public static let manifestSchema: Self = "manifest.schema"
    public static let manifestField: Self = "manifest.field_invalid"
    public static let manifestUnknownField: Self = "manifest.unknown_field"
    public static let manifestIdentifier: Self = "manifest.identifier_invalid"
    public static let manifestPath: Self = "manifest.path_invalid"
    public static let manifestPathCollision: Self = "manifest.path_collision"
    public static let manifestDigest: Self = "manifest.digest_invalid"
    public static let manifestBlobOrder: Self = "manifest.blobs_unsorted"
    public static let manifestBlobDuplicate: Self = "manifest.blob_duplicate"
    public static let manifestCreatedAt: Self = "manifest.created_at_invalid"
    public static let packageIDMismatch: Self = "manifest.package_id_mismatch"
    public static let manifestLimit: Self = "manifest.limit_exceeded"

    // MARK: - Episode archive
    public static let archiveName: Self = "archive.name_mismatch"
    public static let archiveSize: Self = "archive.size_mismatch"
    public static let archiveDigest: Self = "archive.digest_mismatch"
    public static let archiveCorrupt: Self = "archive.corrupt"
    public static let archiveTrailingData: Self = "archive.trailing_data"
    public static let archiveLimit: Self = "archive.limit_exceeded"

    // MARK: - Blobs (members of the episode archive)
    public static let blobMissing: Self = "blob.missing"
    public static let blobUnexpected: Self = "blob.unexpected"
    public static let blobType: Self = "blob.member_type"
    public static let blobPath: Self = "blob.path_invalid"
    public static let blobMetadata: Self = "blob.metadata"
    public static let blobSize: Self = "blob.size_mismatch"
    public static let blobDigest: Self = "blob.digest_mismatch"
    /// A TFRecord blob's framing is broken (a length or data CRC, or a record cut short).
    public static let tfrecordCorrupt: Self = "promote.tfrecord_corrupt"
    /// Training storage holds other bytes where a promoted blob or marker would go; nothing is overwritten.
    public static let promoteConflict: Self = "promote.conflict"
    /// A staged file's name is not the package ID its manifest gives.
    public static let promoteNameMismatch: Self = "promote.name_mismatch"
    /// A blob path takes the place of the promotion marker (`_provenance.json`).
    public static let promoteReservedPath: Self = "promote.reserved_path"
    public static let blobOrder: Self = "blob.out_of_order"
    public static let blobDuplicate: Self = "blob.duplicate_member"
}
