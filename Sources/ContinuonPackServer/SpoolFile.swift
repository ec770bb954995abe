import ContinuonPack
import ContinuonPackIngest
import ContinuonPackUpload
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// The bytes an upload session holds: a spool file written at exact offsets (a failed write never shifts later
/// ones), hashed as they arrive, and read by a verifier on its own thread while it grows.
///
/// Created at the session's first byte, never before: a session that only exists costs no file, descriptor or
/// thread. `close()` gives back both descriptors and the thread and keeps the file (the session goes on, here after
/// a restart or in another instance); `discard()` removes the file too (the session ended).
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

    /// Takes up the spool file of a session from its last checkpoint (after a restart, or from another instance):
    /// bytes past `held` (a chunk that was being received) are cut off, the first `held` bytes are read once to
    /// rebuild the checksums (1 MiB at a time) and must have the CRC-32C the checkpoint recorded, and a new verifier
    /// starts from the first byte.
    /// - Throws: `io.error` when the file is missing, shorter than `held`, or holds other bytes.
    init(resuming path: String, held: UInt64, crc32c: UInt32, verifier: PackageVerifier, label: String) throws {
        self.path = path
        let fd = ContinuonPack.FileDescriptor.retryOnInterrupt { open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK) }
        guard fd >= 0 else { throw ContinuonPack.FileDescriptor.ioError("Cannot reopen the spool file", path: path) }
        let output = ContinuonPack.FileDescriptor(raw: fd, path: path)
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_size >= 0, UInt64(info.st_size) >= held else {
            throw ContinuonPackError(.ioError, "The spool file is shorter than its checkpoint.")
        }
        if UInt64(info.st_size) > held, ftruncate(fd, off_t(held)) != 0 {
            throw ContinuonPack.FileDescriptor.ioError("Cannot cut the spool file back to its checkpoint", path: path)
        }
        var checksums = TransferChecksums()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        var offset: UInt64 = 0
        while offset < held {
            let want = Int(min(UInt64(buffer.count), held - offset))
            let count = try output.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), at: Int64(offset))
            guard count > 0 else { throw ContinuonPackError(.ioError, "The spool file ended before its checkpoint.") }
            checksums.update(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
            offset += UInt64(count)
        }
        guard checksums.crc32cValue == crc32c else {
            throw ContinuonPackError(.ioError, "The spool file does not hold the bytes its checkpoint recorded.")
        }
        verification = try StreamingVerification(spoolPath: path, verifier: verifier, name: label)
        self.checksums = checksums
        self.held = held
        self.output = output
        verification.follower.advance(to: held)
    }

    deinit { close() }

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

    /// Makes the bytes held so far durable, for a checkpoint: how many, and their CRC-32C.
    func syncHeld() throws -> (held: UInt64, crc32c: UInt32) {
        try output?.syncData()
        return (held, checksums.crc32cValue)
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

    /// Stops the verifier and closes the file, which stays. Idempotent.
    func close() {
        verification.follower.abort()
        try? output?.close()
        output = nil
    }

    /// Stops the verifier, closes the file and removes it. Idempotent.
    func discard() {
        close()
        unlink(path)
    }
}

/// The spool directory: each session's journal (`<session>.session`) and held bytes (`<session>.part`). Several
/// `serve` processes may share it (one store, several instances): a session belongs to whichever process holds its
/// journal's lock for the request in progress, so any of them can take a session up (after its instance died, or
/// when a request lands elsewhere). `sweep` removes what no live session owns.
final class SpoolDirectory: @unchecked Sendable {
    let path: String

    /// - Throws: `io.error` when the directory is not this user's alone.
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
    }

    func partPath(_ id: String) -> String { path + "/" + id + ".part" }
    func journalPath(_ id: String) -> String { path + "/" + id + ".session" }

    /// Removes a session's files, if no other process or request holds it; false when one does.
    @discardableResult
    func remove(_ id: String) -> Bool {
        switch Result(catching: { () throws(SessionJournal.OpenError) in try SessionJournal.open(path: journalPath(id)) }) {
        case .failure(.busy): return false
        case let .success(journal?):
            unlink(partPath(id))
            unlink(journal.path)
            journal.close()
        default:
            unlink(partPath(id))
        }
        return true
    }

    /// Ends a session that no request of this process holds (evicted): its answer is recorded and its bytes go,
    /// unless another process holds it now.
    func recordEnd(_ id: String, _ outcome: Result<StoredObject, IngestProblem>) {
        guard case let .success(journal?) = Result(catching: { () throws(SessionJournal.OpenError) in
            try SessionJournal.open(path: journalPath(id))
        }) else { return }
        try? journal.recordOutcome(outcome)
        unlink(partPath(id))
        journal.close()
    }

    /// What a sweep removed.
    struct Swept: Equatable {
        /// Spool files without a journal (a crash between steps), and journals that cannot be read.
        var orphaned = 0
        /// Sessions left alone longer than their expiry (their spool files with them), and answers older than
        /// their retention.
        var expired = 0
        var total: Int { orphaned + expired }
    }

    /// Removes what no live session owns: spool files without a journal, journals that cannot be read (a minute
    /// after they were written: one being created is left alone), sessions whose journal was last touched longer
    /// ago than their expiry (empty, holding bytes, or ended), single-request files of a process that died, and
    /// spool files of ended sessions. A session that another process or request holds is never touched.
    func sweep(limits: SessionLimits, now: time_t = time(nil)) -> Swept {
        var swept = Swept()
        for name in entries() {
            if name.hasSuffix(".part") {
                let id = String(name.dropLast(5))
                var info = stat()
                if IngestServer.isSessionID(id), lstat(journalPath(id), &info) != 0, errno == ENOENT, unlink(path + "/" + name) == 0 {
                    swept.orphaned += 1
                }
                continue
            }
            guard name.hasSuffix(".session") else { continue }
            let id = String(name.dropLast(8))
            var info = stat()
            guard IngestServer.isSessionID(id), lstat(path + "/" + name, &info) == 0 else { continue }
            let age = Int64(now) - Int64(info.st_mtim.tv_sec)
            guard case let .success(journal?) = Result(catching: { () throws(SessionJournal.OpenError) in
                try SessionJournal.open(path: journalPath(id))
            }) else { continue }
            defer { journal.close() }
            func removeSession() {
                unlink(partPath(id))
                unlink(journal.path)
            }
            guard let record = journal.read(), !record.single else {
                // One being created is unreadable for an instant: only one a minute old is garbage.
                if age >= 60 {
                    removeSession()
                    swept.orphaned += 1
                }
                continue
            }
            let limit: Duration
            if record.outcome != nil {
                unlink(partPath(id))
                limit = limits.finishedRetention
            } else {
                limit = record.held > 0 ? limits.expiry : limits.emptyExpiry
                if record.held > 0, lstat(partPath(id), &info) != 0 {
                    removeSession()
                    swept.orphaned += 1
                    continue
                }
            }
            if age > limit.components.seconds {
                removeSession()
                swept.expired += 1
            }
        }
        return swept
    }

    private func entries() -> [String] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            names.append(withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            })
        }
        return names
    }
}
