import ContinuonPack
#if canImport(Glibc)
import Glibc
#endif

/// One staged package opened for a single read from its start.
public protocol StagedPackage: PackageStream {}

/// Where promotion finds packages: a directory of `<package_id>.cpkg` files (`DirectoryStagingArea`) or a Cloud
/// Storage prefix (in `continuon-pack-net`). Staging is never written to.
public protocol StagingArea {
    /// For messages: the directory or `gs://bucket/prefix`.
    var location: String { get }
    /// The package IDs staged: every name `<64 lowercase hex>.cpkg` (other names are ignored), in any order.
    func packageIDs() throws -> [String]
    /// Opens `<packageID>.cpkg` for one read from its start.
    /// - Throws: `io.error` when it is missing, not a regular file (object), or cannot be read.
    func open(packageID: String) throws -> any StagedPackage
}

/// Whether `text` is a package ID: 64 lowercase hex digits.
public func isPackageID(_ text: String) -> Bool { Hex.isLowercaseDigest(text) }

/// The package ID a staged name stands for (`<64 hex>.cpkg`), or nil.
public func stagedPackageID(name: String) -> String? {
    guard name.hasSuffix(".cpkg") else { return nil }
    let id = String(name.dropLast(5))
    return isPackageID(id) ? id : nil
}

/// A staging directory, as `serve --store` keeps it.
public struct DirectoryStagingArea: StagingArea {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    public var location: String { directory }

    public func packageIDs() throws -> [String] {
        try DirectoryHandle.existing(directory).entries().compactMap(stagedPackageID(name:))
    }

    /// A regular file, not followed, never blocking (a FIFO planted in staging fails here instead of hanging).
    public func open(packageID: String) throws -> any StagedPackage {
        let path = directory + "/" + packageID + ".cpkg"
        let fd = FileDescriptor.retryOnInterrupt { Glibc.open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC) }
        guard fd >= 0 else { throw FileDescriptor.ioError("Cannot open \(path)", path: path) }
        let file = FileDescriptor(raw: fd, path: path)
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            throw ContinuonPackError(.ioError, "\(path) is not a regular file.")
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        return StagedFile(file: file)
    }
}

final class StagedFile: StagedPackage {
    private let file: FileDescriptor
    init(file: FileDescriptor) { self.file = file }
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int { try file.read(into: buffer) }
}

/// Promotes staged packages into one training area (a directory: `DirectoryPromoter`; a bucket: `CloudPromoter`).
public protocol Promoter {
    var staging: any StagingArea { get }
    var shard: Shard { get set }
    /// Promotes one staged package.
    /// - Throws: `io.error` when staging or training cannot be read or written (the package is not judged);
    ///   `promote.conflict` when the training layout is blocked.
    func promote(packageID: String) throws -> PromotionOutcome
}

extension Promoter {
    /// The package IDs staged, in this promoter's shard, sorted.
    public func stagedPackageIDs() throws -> [String] {
        try staging.packageIDs().filter { shard.contains(packageID: $0) }.sorted()
    }

    /// Promotes every staged package of the shard; a failure of one package never stops the others.
    /// - Parameter onEach: receives each outcome as soon as it is known (for logs).
    /// - Throws: `io.error` only when staging cannot be listed.
    public func promoteAll(onEach: (PromotionOutcome) -> Void = { _ in }) throws -> [PromotionOutcome] {
        try stagedPackageIDs().map { id in
            let outcome: PromotionOutcome
            do {
                outcome = try promote(packageID: id)
            } catch let error as ContinuonPackError where error.code == .promoteConflict {
                outcome = PromotionOutcome(packageID: id, status: .refused, environmentID: nil, blobs: 0, bytes: 0, errors: [error])
            } catch let error as ContinuonPackError {
                outcome = PromotionOutcome(packageID: id, status: .failed, environmentID: nil, blobs: 0, bytes: 0, errors: [error])
            } catch {
                outcome = PromotionOutcome(packageID: id, status: .failed, environmentID: nil, blobs: 0, bytes: 0,
                                           errors: [ContinuonPackError(.ioError, "\(error)")])
            }
            onEach(outcome)
            return outcome
        }
    }
}
