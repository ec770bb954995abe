#if canImport(Glibc)
import Glibc
#endif

/// One blob to pack: its path inside the package and where its bytes come from.
public struct BlobSource: Sendable, Equatable {
    public enum Content: Sendable, Equatable {
        /// A file on disk, read once while it is archived.
        case file(String)
        /// Bytes held in memory (small blobs, tests).
        case bytes([UInt8])
    }

    /// The blob path in the package (relative, `/`-separated, UTF-8).
    public var path: String
    public var content: Content

    public init(path: String, content: Content) {
        self.path = path
        self.content = content
    }
}

/// What to do with directory entries that are not regular files.
public struct CollectOptions: Sendable, Equatable {
    /// Follow symbolic links that point at regular files (links to directories are always refused).
    public var followSymlinks = false
    /// Skip FIFOs, sockets and devices instead of refusing the directory.
    public var skipSpecialFiles = false

    public init(followSymlinks: Bool = false, skipSpecialFiles: Bool = false) {
        self.followSymlinks = followSymlinks
        self.skipSpecialFiles = skipSpecialFiles
    }
}

extension BlobSource {
    /// Every regular file under `directory`, as blobs named by their path relative to it (in Unicode NFC), sorted
    /// by UTF-8 bytes.
    /// Symlinks and special files are refused with `pack.source_invalid` unless `options` opt in.
    /// - Throws: `io.error`, `pack.source_invalid`, `pack.no_blobs`.
    public static func collect(in directory: String, options: CollectOptions = .init()) throws -> [BlobSource] {
        var found: [BlobSource] = []
        try walk(root: directory, relative: [], options: options, into: &found)
        guard !found.isEmpty else {
            throw ContinuonPackError(.sourceEmpty, "\(directory) holds no regular files to pack.")
        }
        return found.sortedByPath()
    }

    /// Walks `root/relative...` depth first. Siblings are visited in the order of their names' bytes, a directory's
    /// name counted with a trailing `/`: every path below it starts so, which makes the output already sorted by
    /// path bytes (for NFC names; `collect` checks and sorts otherwise). The entry type comes from `readdir` where
    /// the file system gives it, so most entries cost no `lstat`.
    private static func walk(root: String, relative: [String], options: CollectOptions, into found: inout [BlobSource]) throws {
        let directory = ([root] + relative).joined(separator: "/")
        guard let handle = opendir(directory) else {
            throw FileDescriptor.ioError("Cannot open the directory \(directory)", path: directory)
        }
        defer { closedir(handle) }
        var entries: [(key: [UInt8], name: [UInt8], type: UInt8)] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: &entry.pointee.d_name) { raw in Array(raw.prefix { $0 != 0 }) }
            if name == [46] || name == [46, 46] { continue }
            let type = entry.pointee.d_type
            entries.append((type == UInt8(DT_DIR) ? name + [0x2f] : name, name, type))
        }
        entries.sort { $0.key.lexicographicallyPrecedes($1.key) }
        for (_, nameBytes, type) in entries {
            guard let name = String(validating: nameBytes, as: UTF8.self) else {
                throw ContinuonPackError(
                    .sourceInvalid, "A file name in \(directory) is not valid UTF-8; blob paths must be UTF-8.")
            }
            let path = directory + "/" + name
            // Blob paths are stored in NFC (file systems may hand out decomposed names).
            let normalized = nameBytes.allSatisfy({ $0 < 0x80 }) ? name : FormatRules.nfc(name)
            let blobPath = (relative + [normalized]).joined(separator: "/")
            let mode: mode_t
            switch Int32(type) {
            case Int32(DT_REG): mode = S_IFREG
            case Int32(DT_DIR): mode = S_IFDIR
            default:
                var info = stat()
                guard lstat(path, &info) == 0 else { throw FileDescriptor.ioError("Cannot stat \(path)", path: path) }
                mode = info.st_mode & S_IFMT
            }
            switch mode {
            case S_IFDIR:
                try walk(root: root, relative: relative + [name], options: options, into: &found)
            case S_IFREG:
                found.append(BlobSource(path: blobPath, content: .file(path)))
            case S_IFLNK:
                guard options.followSymlinks else {
                    throw ContinuonPackError(
                        .sourceInvalid, "\(path) is a symbolic link; pass --follow-symlinks to pack what it points at.")
                }
                var target = stat()
                guard stat(path, &target) == 0, target.st_mode & S_IFMT == S_IFREG else {
                    throw ContinuonPackError(
                        .sourceInvalid, "\(path) is a symbolic link to something that is not a regular file.")
                }
                found.append(BlobSource(path: blobPath, content: .file(path)))
            default:
                guard options.skipSpecialFiles else {
                    throw ContinuonPackError(
                        .sourceInvalid, "\(path) is not a regular file (FIFO, socket or device); pass --skip-special to leave it out.")
                }
            }
        }
    }
}
