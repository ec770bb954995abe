/// The commands that need an HTTP client or server (FoundationNetworking, Hummingbird and NIO). They live in the
/// `continuon-pack-net` executable, so that `continuon-pack` (keygen, pack, verify, …) stays small in memory;
/// `continuon-pack` lists them in its help with these abstracts and hands them over to `continuon-pack-net`.
public enum NetworkCommand: String, CaseIterable, Sendable {
    case upload, outbox, serve

    /// The executable that runs these commands, installed beside `continuon-pack`.
    public static let executableName = "continuon-pack-net"

    /// The one-line summary both executables show in their help.
    public var abstract: String {
        switch self {
        case .upload: "Upload packages with the resumable Cloud Storage protocol, retrying until acknowledged."
        case .outbox: "A durable queue of packages to upload."
        case .serve: "Run the ingestion endpoint: resumable uploads, verified before anything is stored."
        }
    }
}

/// The version both executables report with `--version`.
public let continuonPackVersion = "0.1.0"
