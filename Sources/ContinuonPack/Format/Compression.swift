/// How the episode archive inside a package is compressed.
public enum Compression: String, Sendable, CaseIterable, Codable {
    case none
    case gzip
    case zstd

    /// The member name the format fixes for this compression.
    public var archiveName: String {
        switch self {
        case .none: return "episodes.tar"
        case .gzip: return "episodes.tar.gz"
        case .zstd: return "episodes.tar.zst"
        }
    }

    /// The compression a member name stands for, if it is one of the three the format allows.
    public init?(archiveName: String) {
        guard let match = Self.allCases.first(where: { $0.archiveName == archiveName }) else { return nil }
        self = match
    }
}
