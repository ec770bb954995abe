import ContinuonPack

/// `_provenance.json`, written last into `<environment_id>/<package_id>/`: its presence means "promoted". Canonical
/// JSON (spec section 13): what was verified, by which keys, from which staged bytes, and when.
public struct PromotionMarker: Sendable, Equatable {
    public static let schema = "continuon.promotion/v1"
    public static let fileName = "_provenance.json"

    public let packageID: String
    public let environmentID: String
    /// SHA-256 (hex) and size of the staged `.cpkg` file that was verified.
    public let packageSHA256: String
    public let packageSize: UInt64
    /// The trusted keys whose signatures verified.
    public let keyIDs: [String]
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    public let promotedAt: String
    /// The signed manifest, as a JSON value.
    public let manifest: JSONValue

    public init(packageID: String, environmentID: String, packageSHA256: String, packageSize: UInt64, keyIDs: [String],
                promotedAt: String, manifest: JSONValue) {
        self.packageID = packageID
        self.environmentID = environmentID
        self.packageSHA256 = packageSHA256
        self.packageSize = packageSize
        self.keyIDs = keyIDs
        self.promotedAt = promotedAt
        self.manifest = manifest
    }

    public var jsonValue: JSONValue {
        .object([
            ("schema", .string(Self.schema)),
            ("package_id", .string(packageID)),
            ("environment_id", .string(environmentID)),
            ("package_sha256", .string(packageSHA256)),
            ("package_size", .number(String(packageSize))),
            ("key_ids", .array(keyIDs.map(JSONValue.string))),
            ("promoted_at", .string(promotedAt)),
            ("manifest", manifest),
        ])
    }

    /// The marker's bytes: canonical JSON and a final newline.
    public var bytes: [UInt8] { CanonicalJSON.encode(jsonValue) + [0x0A] }
}
