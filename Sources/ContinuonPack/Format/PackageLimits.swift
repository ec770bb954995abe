/// Bounds on everything an untrusted package can make large. The defaults are safe for auditors and for the
/// ingestion service; a caller may raise or lower any of them.
public struct PackageLimits: Sendable, Equatable {
    /// Largest `manifest.dsse.json` member accepted (bytes).
    public var maxEnvelopeBytes: Int = 16 * 1024 * 1024
    /// Deepest JSON nesting accepted in the envelope and manifest.
    public var maxJSONDepth: Int = 16
    /// Most blobs one manifest may list.
    public var maxBlobCount: Int = 1_000_000
    /// Largest blob size (bytes).
    public var maxBlobBytes: UInt64 = 1 << 40
    /// Largest sum of blob sizes (bytes).
    public var maxTotalBlobBytes: UInt64 = 1 << 42
    /// Most signatures one envelope may carry.
    public var maxSignatures: Int = 16

    public init() {}

    /// The defaults.
    public static let `default` = PackageLimits()
}
