#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The thin syscall layer: one owner per file descriptor, errors mapped to `io.error` with the errno text.
package final class FileDescriptor {
    package let raw: Int32
    let path: String
    private var closed = false

    /// Takes ownership of `raw` (closed on deinit).
    package init(raw: Int32, path: String) {
        self.raw = raw
        self.path = path
    }

    deinit { if !closed { _ = Glibc.close(raw) } }

    package static func openForReading(_ path: String, followSymlinks: Bool = true, nonBlocking: Bool = false) throws -> FileDescriptor {
        let flags = O_RDONLY | O_CLOEXEC | (followSymlinks ? 0 : O_NOFOLLOW) | (nonBlocking ? O_NONBLOCK : 0)
        let fd = retryOnInterrupt { Glibc.open(path, flags) }
        guard fd >= 0 else { throw ioError("Cannot open \(path) for reading", path: path) }
        return FileDescriptor(raw: fd, path: path)
    }

    /// Opens an existing regular file for reading, and nothing else: a symlink (`O_NOFOLLOW`), a directory, a device
    /// or a FIFO (`O_NONBLOCK`, so that opening one cannot block; `fstat` on the open descriptor, so nothing can be
    /// swapped in between) is answered like a missing file, with nil.
    /// - Returns: the descriptor and the file's size, or nil.
    /// - Throws: `io.error` for other failures (permissions, descriptors exhausted).
    package static func openRegularFile(_ path: String) throws -> (file: FileDescriptor, size: UInt64)? {
        let fd = retryOnInterrupt { Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK) }
        guard fd >= 0 else {
            if errno == ENOENT || errno == ELOOP || errno == ENOTDIR { return nil }
            throw ioError("Cannot open \(path) for reading", path: path)
        }
        let file = FileDescriptor(raw: fd, path: path)
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw ioError("Cannot stat \(path)", path: path) }
        guard status.st_mode & S_IFMT == S_IFREG, status.st_size >= 0 else { return nil }
        return (file, UInt64(status.st_size))
    }

    /// Creates `path` exclusively (never replaces an existing file).
    package static func createExclusive(_ path: String, mode: mode_t) throws -> FileDescriptor {
        let fd = retryOnInterrupt { Glibc.open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode) }
        guard fd >= 0 else {
            if errno == EEXIST {
                throw ContinuonPackError(.outputExists, "\(path) already exists; it is never overwritten.")
            }
            throw ioError("Cannot create \(path)", path: path)
        }
        return FileDescriptor(raw: fd, path: path)
    }

    /// Reads up to `buffer.count` bytes; 0 at end of file.
    package func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let count = Self.retryOnInterrupt { Glibc.read(raw, buffer.baseAddress, buffer.count) }
        guard count >= 0 else { throw Self.ioError("Cannot read \(path)", path: path) }
        return count
    }

    package func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws -> Int {
        let count = Self.retryOnInterrupt { pread(raw, buffer.baseAddress, buffer.count, off_t(offset)) }
        guard count >= 0 else { throw Self.ioError("Cannot read \(path)", path: path) }
        return count
    }

    package func writeAll(_ buffer: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < buffer.count {
            let count = Self.retryOnInterrupt {
                Glibc.write(raw, buffer.baseAddress! + offset, buffer.count - offset)
            }
            guard count > 0 else { throw Self.ioError("Cannot write \(path)", path: path) }
            offset += count
        }
    }

    /// Writes all of `buffer` at `offset` (pwrite), leaving the file offset alone.
    package func writeAll(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let count = Self.retryOnInterrupt {
                pwrite(raw, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            guard count > 0 else { throw Self.ioError("Cannot write \(path)", path: path) }
            done += count
        }
    }

    package func sync() throws {
        guard fsync(raw) == 0 else { throw Self.ioError("Cannot fsync \(path)", path: path) }
    }

    /// Makes the file's data (and its size) durable, without the other metadata `sync` also writes.
    package func syncData() throws {
        guard fdatasync(raw) == 0 else { throw Self.ioError("Cannot fdatasync \(path)", path: path) }
    }

    package func close() throws {
        guard !closed else { return }
        closed = true
        guard Glibc.close(raw) == 0 else { throw Self.ioError("Cannot close \(path)", path: path) }
    }

    // MARK: - Helpers

    package static func retryOnInterrupt<T: BinaryInteger>(_ body: () -> T) -> T {
        while true {
            let result = body()
            if result < 0 && errno == EINTR { continue }
            return result
        }
    }

    package static func ioError(_ message: String, path: String) -> ContinuonPackError {
        let text = String(cString: strerror(errno))
        return ContinuonPackError(.ioError, message + ".", cause: text)
    }

    static func uniqueTemporaryPath(in directory: String, suffix: String) -> String {
        var random = SystemRandomNumberGenerator()
        let token = Hex.encode((0..<8).map { _ in UInt8.random(in: .min ... .max, using: &random) })
        return directory + "/.continuon-pack-" + token + suffix
    }
}

/// Whole-file reads and atomic creation of new files (temporary name, fsync, link, fsync directory).
package enum FileIO {
    /// Publishes the complete, fsynced file at `temporary` as `final` without replacing anything: `link` fails
    /// when `final` exists. Then removes the temporary name and fsyncs the directory.
    package static func publish(temporary: String, as final: String, directory: String) throws {
        if link(temporary, final) != 0 {
            let code = errno
            _ = unlink(temporary)
            if code == EEXIST {
                throw ContinuonPackError(.outputExists, "\(final) already exists; it is never overwritten.")
            }
            errno = code
            throw FileDescriptor.ioError("Cannot create \(final)", path: final)
        }
        _ = unlink(temporary)
        try syncDirectory(directory)
    }

    /// Creates `path` and any missing parents (as `mkdir -p`; new directories get mode 0755 less the umask).
    /// - Throws: `io.error` naming the directory that could not be made, or when `path` is not a directory.
    package static func createDirectories(_ path: String) throws {
        var prefix = path.hasPrefix("/") ? "/" : ""
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            prefix += part
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                throw FileDescriptor.ioError("Cannot create the directory \(prefix)", path: prefix)
            }
            prefix += "/"
        }
        var info = stat()
        guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            throw ContinuonPackError(.ioError, "\(path) is not a directory.")
        }
    }

    package static func syncDirectory(_ directory: String) throws {
        let fd = FileDescriptor.retryOnInterrupt { open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard fd >= 0 else { throw FileDescriptor.ioError("Cannot open directory \(directory)", path: directory) }
        defer { _ = close(fd) }
        guard fsync(fd) == 0 else { throw FileDescriptor.ioError("Cannot fsync \(directory)", path: directory) }
    }

    /// Writes `bytes` to a new file at `path` atomically (temporary name, fsync, link, fsync directory).
    package static func writeNewFile(_ bytes: [UInt8], to path: String, mode: mode_t) throws {
        let directory = parentDirectory(of: path)
        let temporary = FileDescriptor.uniqueTemporaryPath(in: directory, suffix: ".partial")
        let file = try FileDescriptor.createExclusive(temporary, mode: mode)
        do {
            _ = fchmod(file.raw, mode) // umask must not widen or narrow what we promise
            try bytes.withUnsafeBytes { try file.writeAll($0) }
            try file.sync()
            try file.close()
        } catch {
            _ = unlink(temporary)
            throw error
        }
        try publish(temporary: temporary, as: path, directory: directory)
    }

    /// Replaces (or creates) `path` atomically: temporary name, fsync, rename over, fsync directory.
    package static func replaceFile(_ bytes: [UInt8], at path: String, mode: mode_t) throws {
        let directory = parentDirectory(of: path)
        let temporary = FileDescriptor.uniqueTemporaryPath(in: directory, suffix: ".partial")
        let file = try FileDescriptor.createExclusive(temporary, mode: mode)
        do {
            try bytes.withUnsafeBytes { try file.writeAll($0) }
            try file.sync()
            try file.close()
            guard rename(temporary, path) == 0 else { throw FileDescriptor.ioError("Cannot replace \(path)", path: path) }
        } catch {
            _ = unlink(temporary)
            throw error
        }
        try syncDirectory(directory)
    }

    /// Reads a file from start to end in 1 MiB chunks, handing each to `body` (bounded memory, one buffer).
    package static func forEachChunk(of path: String, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        try forEachChunk(of: try FileDescriptor.openForReading(path), body)
    }

    /// Reads `input` from its current offset to its end in 1 MiB chunks, handing each to `body`.
    package static func forEachChunk(of input: FileDescriptor, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        while true {
            let count = try input.read(into: buffer)
            if count == 0 { break }
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
    }

    /// Copies a file to a new path (never replacing one), fsyncing the copy.
    package static func copyFile(from source: String, to destination: String) throws {
        let output = try FileDescriptor.createExclusive(destination, mode: 0o600)
        do {
            try forEachChunk(of: source) { try output.writeAll($0) }
            try output.sync()
            try output.close()
        } catch {
            _ = unlink(destination)
            throw error
        }
    }

    /// True when something (a file, a link, a directory) is at `path`.
    package static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    package static func readFile(_ path: String, limit: Int) throws -> [UInt8] {
        let file = try FileDescriptor.openForReading(path)
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = try chunk.withUnsafeMutableBytes { try file.read(into: $0) }
            if count == 0 { break }
            out.append(contentsOf: chunk[0..<count])
            guard out.count <= limit else {
                throw ContinuonPackError(.ioError, "\(path) is larger than \(limit) bytes.")
            }
        }
        return out
    }

    package static func parentDirectory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let parent = String(path[..<slash])
        return parent.isEmpty ? "/" : parent
    }
}
