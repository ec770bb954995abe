import ContinuonPack
#if canImport(Glibc)
import Glibc
#endif

/// A directory reached without following a symbolic link below a root the operator named: every step is
/// `openat(O_DIRECTORY | O_NOFOLLOW)` from the step before, every file is made with `openat(O_CREAT | O_EXCL |
/// O_NOFOLLOW)` and published with `linkat` between two such handles. A link planted anywhere in the training
/// directory (`<environment_id>`, a blob's directory, `.promote`) is refused instead of written through.
final class DirectoryHandle {
    let fd: Int32
    /// For messages.
    let path: String

    private init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    deinit { close(fd) }

    /// The root itself, made with its parents when missing (it may be a link: the operator named it).
    static func root(_ path: String) throws -> DirectoryHandle {
        try FileIO.createDirectories(path)
        return try existing(path)
    }

    /// A directory that must exist (it may be a link: the operator named it).
    static func existing(_ path: String) throws -> DirectoryHandle {
        let fd = FileDescriptor.retryOnInterrupt { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard fd >= 0 else { throw FileDescriptor.ioError("Cannot open the directory \(path)", path: path) }
        return DirectoryHandle(fd: fd, path: path)
    }

    /// The directory `relative` (components separated by `/`) below this one, made where missing (mode 0755 less
    /// the umask; each new entry's parent fsynced). A component that exists as anything but a directory (a link
    /// included) is `promote.conflict`.
    func descend(_ relative: String, create: Bool = true) throws -> DirectoryHandle {
        var current = self
        for part in relative.split(separator: "/", omittingEmptySubsequences: true).map(String.init) {
            if create {
                if mkdirat(current.fd, part, 0o755) == 0 {
                    guard fsync(current.fd) == 0 else { throw FileDescriptor.ioError("Cannot fsync \(current.path)", path: current.path) }
                } else if errno != EEXIST {
                    throw FileDescriptor.ioError("Cannot create the directory \(current.path)/\(part)", path: current.path + "/" + part)
                }
            }
            let fd = FileDescriptor.retryOnInterrupt { openat(current.fd, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            guard fd >= 0 else {
                if errno == ELOOP || errno == ENOTDIR {
                    throw ContinuonPackError(.promoteConflict, "\(current.path)/\(part) is not a directory (a link or a file is in the way); nothing is written through it.")
                }
                throw FileDescriptor.ioError("Cannot open the directory \(current.path)/\(part)", path: current.path + "/" + part)
            }
            current = DirectoryHandle(fd: fd, path: current.path + "/" + part)
        }
        return current
    }

    /// A new file `name` here (never an existing one, never through a link).
    func createFile(_ name: String, mode: mode_t = 0o644) throws -> FileDescriptor {
        let fd = FileDescriptor.retryOnInterrupt { openat(self.fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode) }
        guard fd >= 0 else {
            if errno == EEXIST {
                throw ContinuonPackError(.promoteConflict, "\(path)/\(name) exists already; it is never overwritten.")
            }
            throw FileDescriptor.ioError("Cannot create \(path)/\(name)", path: path + "/" + name)
        }
        return FileDescriptor(raw: fd, path: path + "/" + name)
    }

    /// A regular file `name` here, for reading, or nil when it is missing or not a regular file (not followed).
    func openRegularFile(_ name: String) throws -> (FileDescriptor, UInt64)? {
        let fd = FileDescriptor.retryOnInterrupt { openat(self.fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC) }
        guard fd >= 0 else {
            if errno == ENOENT || errno == ELOOP || errno == ENXIO { return nil }
            throw FileDescriptor.ioError("Cannot open \(path)/\(name)", path: path + "/" + name)
        }
        let file = FileDescriptor(raw: fd, path: path + "/" + name)
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw FileDescriptor.ioError("Cannot stat \(path)/\(name)", path: path + "/" + name) }
        guard info.st_mode & S_IFMT == S_IFREG else { return nil }
        return (file, UInt64(info.st_size))
    }

    func exists(_ name: String) -> Bool {
        var info = stat()
        return fstatat(fd, name, &info, AT_SYMLINK_NOFOLLOW) == 0
    }

    /// Links `name` of `source` here as `target`; false when `target` exists (nothing replaced).
    func link(_ name: String, from source: DirectoryHandle, as target: String) throws -> Bool {
        if linkat(source.fd, name, fd, target, 0) == 0 { return true }
        if errno == EEXIST { return false }
        throw FileDescriptor.ioError("Cannot link \(path)/\(target)", path: path + "/" + target)
    }

    func sync() throws {
        guard fsync(fd) == 0 else { throw FileDescriptor.ioError("Cannot fsync \(path)", path: path) }
    }

    /// Removes `name` here and everything under it, never following a link: directories are opened with
    /// `O_NOFOLLOW` relative to their parent, entries removed with `unlinkat`. Missing is fine.
    func removeTree(_ name: String) throws {
        let fd = FileDescriptor.retryOnInterrupt { openat(self.fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        if fd < 0 {
            if errno == ENOENT { return }
            guard errno == ENOTDIR || errno == ELOOP else {
                throw FileDescriptor.ioError("Cannot open \(path)/\(name)", path: path + "/" + name)
            }
            guard unlinkat(self.fd, name, 0) == 0 || errno == ENOENT else {
                throw FileDescriptor.ioError("Cannot remove \(path)/\(name)", path: path + "/" + name)
            }
            return
        }
        let directory = DirectoryHandle(fd: fd, path: path + "/" + name)
        for entry in try directory.entries() { try directory.removeTree(entry) }
        guard unlinkat(self.fd, name, AT_REMOVEDIR) == 0 || errno == ENOENT else {
            throw FileDescriptor.ioError("Cannot remove \(path)/\(name)", path: path + "/" + name)
        }
    }

    /// The names in this directory but `.` and `..` (read through a duplicate descriptor).
    func entries() throws -> [String] {
        let copy = dup(fd)
        guard copy >= 0, let stream = fdopendir(copy) else {
            throw FileDescriptor.ioError("Cannot read \(path)", path: path)
        }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in String(cString: raw.bindMemory(to: CChar.self).baseAddress!) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}
