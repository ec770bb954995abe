import ContinuonPack
import ContinuonPackUpload
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// The bytes an upload session holds: a spool file written at exact offsets (a failed write never shifts later
/// ones), hashed as they arrive, and read by a verifier on its own thread while it grows.
///
/// Created at the session's first byte, never before: a session that only exists costs no file, descriptor or
/// thread. `discard()` (refused, expired) or `commit` followed by `discard()` gives everything back: both
/// descriptors, the thread and the file.
final class SpoolFile: @unchecked Sendable {
    let path: String
    private var output: ContinuonPack.FileDescriptor?
    private(set) var checksums = TransferChecksums()
    private(set) var held: UInt64 = 0
    let verification: StreamingVerification

    /// Creates the file exclusively (mode 0600) and starts its verifier; on any failure nothing is left behind.
    init(path: String, verifier: PackageVerifier, label: String) throws {
        self.path = path
        let output = try ContinuonPack.FileDescriptor.createExclusive(path, mode: 0o600)
        do {
            verification = try StreamingVerification(spoolPath: path, verifier: verifier, name: label)
        } catch {
            try? output.close()
            unlink(path)
            throw error
        }
        self.output = output
    }

    deinit { discard() }

    /// Appends bytes at the end of what is held.
    func append(_ bytes: UnsafeRawBufferPointer) throws {
        guard let output else { throw ContinuonPackError(.ioError, "The spool file is closed.") }
        try output.writeAll(bytes, at: held)
        checksums.update(bytes)
        held += UInt64(bytes.count)
        verification.follower.advance(to: held)
    }

    /// Appends `count` bytes of `buffer` from `offset`; false when the file cannot be written (the bytes held
    /// before stay valid: writes go to exact offsets).
    func append(_ buffer: ByteBuffer, from offset: Int, count: Int) -> Bool {
        buffer.withUnsafeReadableBytes { bytes in
            (try? append(UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)]))) != nil
        }
    }

    /// Makes the held bytes durable and closes the file for writing; the verifier then sees the end. Idempotent: a
    /// commit tried again (the store was unavailable) gets the same checksums.
    func finishWriting() throws -> TransferChecksums.Result {
        if let finished { return finished }
        if let output {
            try output.sync()
            try output.close()
            self.output = nil
        }
        verification.follower.finish()
        let result = checksums.finalize()
        finished = result
        return result
    }

    private var finished: TransferChecksums.Result?

    /// Stops the verifier, closes the file and removes it. Idempotent.
    func discard() {
        verification.follower.abort()
        try? output?.close()
        output = nil
        unlink(path)
    }
}

/// The spool directory, owned by one service process: an exclusive `flock` on `.lock` for the life of the process,
/// so that what a crashed predecessor left (its `<session>.part` files) can be removed at start-up without
/// touching another live instance's uploads.
final class SpoolDirectory: @unchecked Sendable {
    let path: String
    private let lock: Int32

    /// - Throws: `io.error` when the directory cannot be locked, or another process holds it.
    init(path: String) throws {
        self.path = path
        // Another local user must not be able to plant, rename or remove upload bytes: the directory is this user's
        // own and nobody else may write into it (a predictable default under $TMPDIR could be pre-created by anyone).
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            throw ContinuonPackError(.ioError, "The spool \(path) is not a directory.")
        }
        guard info.st_uid == geteuid(), info.st_mode & 0o022 == 0 else {
            throw ContinuonPackError(.ioError, "The spool \(path) must belong to this user and be writable by it alone "
                + "(mode \(String(info.st_mode & 0o777, radix: 8))); give another --spool or chmod go-w it.")
        }
        let fd = open(path + "/.lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else {
            throw ContinuonPackError(.ioError, "Cannot open \(path)/.lock.", cause: String(cString: strerror(errno)))
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw ContinuonPackError(
                .ioError, "Another continuon-pack serve uses the spool directory \(path); give each its own --spool.")
        }
        lock = fd
    }

    deinit { close(lock) }

    /// Removes the spool files of sessions that no process holds any more; returns how many.
    func removeLeftovers() -> Int {
        guard let directory = opendir(path) else { return 0 }
        defer { closedir(directory) }
        var removed = 0
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name.hasSuffix(".part"), IngestServer.isSessionID(String(name.dropLast(5))), unlink(path + "/" + name) == 0 { removed += 1 }
        }
        return removed
    }
}
