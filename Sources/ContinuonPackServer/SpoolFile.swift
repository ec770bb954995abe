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
        remember(output)
    }

    /// Takes up the spool file of a session from its last checkpoint (after a restart, or from another instance):
    /// bytes past `held` (a chunk that was being received) are cut off, the first `held` bytes are read once to
    /// rebuild the checksums (1 MiB at a time) and must have the CRC-32C the checkpoint recorded, and a new verifier
    /// starts from the first byte.
    /// - Throws: `SpoolLost` when the file is missing, shorter than `held` or holds other bytes (the session cannot
    ///   go on); `io.error` for failures that may pass (descriptors, I/O): the files are kept.
    init(resuming path: String, held: UInt64, crc32c: UInt32, verifier: PackageVerifier, label: String) throws {
        self.path = path
        let fd = ContinuonPack.FileDescriptor.retryOnInterrupt { open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK) }
        guard fd >= 0 else {
            if errno == ENOENT || errno == ELOOP { throw SpoolLost(reason: "the spool file is missing") }
            throw ContinuonPack.FileDescriptor.ioError("Cannot reopen the spool file", path: path)
        }
        let output = ContinuonPack.FileDescriptor(raw: fd, path: path)
        var checksums = TransferChecksums()
        try Self.extend(output, at: path, &checksums, from: 0, to: held, expecting: crc32c)
        verification = try StreamingVerification(spoolPath: path, verifier: verifier, name: label)
        self.checksums = checksums
        self.held = held
        self.output = output
        remember(output)
        verification.follower.advance(to: held)
    }

    /// Brings a spool file this process had open up to a checkpoint another process wrote after it (it appended
    /// to the same file, from where this process's last checkpoint ended): only the new bytes are read and hashed,
    /// and the verifier goes on.
    /// - Throws: as `init(resuming:)`. The hashers are shared with the copy being extended, so after a failure this
    ///   file's checksums are spoiled: the caller must close it and take the session up from the start.
    func catchUp(to newHeld: UInt64, crc32c: UInt32) throws {
        guard let output, newHeld >= held, isAtPath != nil else { throw SpoolLost(reason: "the spool file was replaced") }
        var extended = checksums
        try Self.extend(output, at: path, &extended, from: held, to: newHeld, expecting: crc32c)
        checksums = extended
        held = newHeld
        verification.follower.advance(to: held)
    }

    /// Whether the file still is this process's: the file it opened is still the one at the path, exactly `held`
    /// bytes long (no other process cut it back or wrote past what this one holds). Also for a finished file (closed
    /// for writing: its commit is being tried again).
    var isCurrent: Bool {
        guard output != nil || finished != nil, let size = isAtPath else { return false }
        return size == held
    }

    /// The file's device and inode, from its descriptor when it was opened.
    private var identity: (device: UInt64, inode: UInt64)?

    private func remember(_ output: ContinuonPack.FileDescriptor) {
        var info = stat()
        if fstat(output.raw, &info) == 0 { identity = (UInt64(info.st_dev), UInt64(info.st_ino)) }
    }

    /// The size of the file at the path, if it is the file this value opened (nil: removed, or replaced).
    private var isAtPath: UInt64? {
        var named = stat()
        guard let identity, lstat(path, &named) == 0, UInt64(named.st_dev) == identity.device,
              UInt64(named.st_ino) == identity.inode, named.st_size >= 0
        else { return nil }
        return UInt64(named.st_size)
    }

    /// Cuts the file back to `end` bytes if it is longer (never a file that is also a stored object: a hard link).
    /// - Throws: `SpoolLost` when it is shorter, or stored and longer; `io.error` when it cannot be cut.
    private static func cutBack(_ output: ContinuonPack.FileDescriptor, at path: String, to end: UInt64) throws {
        var info = stat()
        guard fstat(output.raw, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_size >= 0 else {
            throw ContinuonPack.FileDescriptor.ioError("Cannot stat the spool file", path: path)
        }
        guard UInt64(info.st_size) >= end else { throw SpoolLost(reason: "the spool file is shorter than its checkpoint") }
        guard UInt64(info.st_size) > end else { return }
        guard info.st_nlink == 1 else { throw SpoolLost(reason: "the spool file is stored and longer than its checkpoint") }
        guard ftruncate(output.raw, off_t(end)) == 0 else {
            throw ContinuonPack.FileDescriptor.ioError("Cannot cut the spool file back to its checkpoint", path: path)
        }
    }

    /// Cuts the file back to `end`, hashes bytes `start..<end` into `checksums` and requires the CRC-32C of
    /// everything hashed to be `crc32c`.
    private static func extend(_ output: ContinuonPack.FileDescriptor, at path: String, _ checksums: inout TransferChecksums,
                               from start: UInt64, to end: UInt64, expecting crc32c: UInt32) throws {
        try cutBack(output, at: path, to: end)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        var offset = start
        while offset < end {
            let want = Int(min(UInt64(buffer.count), end - offset))
            let count = try output.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), at: Int64(offset))
            guard count > 0 else { throw SpoolLost(reason: "the spool file ended before its checkpoint") }
            checksums.update(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
            offset += UInt64(count)
        }
        guard checksums.crc32cValue == crc32c else { throw SpoolLost(reason: "the spool file does not hold the bytes its checkpoint recorded") }
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
            // Exactly the bytes held and hashed are committed, whatever another process may have left past them.
            try Self.cutBack(output, at: path, to: held)
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

/// A session's spool file cannot be taken up (missing, shorter than its checkpoint, other bytes): the session is
/// over and its client starts again.
struct SpoolLost: Error {
    let reason: String
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

    /// The session's journal, locked without waiting; nil when it is missing, held by another process or request,
    /// or cannot be opened.
    private func lockedJournal(_ id: String) -> SessionJournal? {
        guard case let .success(journal?) = Result(catching: { () throws(SessionJournal.OpenError) in
            try SessionJournal.open(path: journalPath(id))
        }) else { return nil }
        return journal
    }

    /// Removes a session's files if they are still as this process left them (`stamp`) and no other process or
    /// request holds them; false when they are not removed (in use elsewhere, changed since).
    @discardableResult
    func remove(_ id: String, stamp: JournalStamp?) -> Bool {
        guard let journal = lockedJournal(id) else { return false }
        defer { journal.close() }
        guard let stamp, journal.stamp == stamp else { return false }
        unlink(partPath(id))
        unlink(journal.path)
        return true
    }

    /// Ends a session that no request of this process holds (evicted): its answer is recorded and its bytes go,
    /// if its files are still as this process left them and no other process holds them; false otherwise (another
    /// instance has taken the session up: it is not this process's to end).
    func recordEnd(_ id: String, stamp: JournalStamp?, _ outcome: Result<StoredObject, IngestProblem>) -> Bool {
        guard let journal = lockedJournal(id) else { return false }
        defer { journal.close() }
        guard let stamp, journal.stamp == stamp, (try? journal.recordOutcome(outcome)) != nil else { return false }
        unlink(partPath(id))
        return true
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
    ///
    /// `thorough: false` (the periodic sweep) opens only journals older than the shortest expiry (and than a
    /// minute): cheap however many sessions there are; what a crash leaves in younger ones waits until then, or for
    /// the thorough sweep at the next start.
    func sweep(limits: SessionLimits, now: time_t = time(nil), thorough: Bool = true) -> Swept {
        var swept = Swept()
        let youngest = thorough ? 0 : max(60, min(limits.expiry, limits.emptyExpiry, limits.finishedRetention).components.seconds)
        for name in entries() {
            if name.hasSuffix(".session.new") {
                // A journal being created; one a minute old is what a crash left.
                var info = stat()
                if IngestServer.isSessionID(String(name.dropLast(12))), lstat(path + "/" + name, &info) == 0,
                   Int64(now) - Int64(info.st_mtim.tv_sec) >= 60, unlink(path + "/" + name) == 0 {
                    swept.orphaned += 1
                }
                continue
            }
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
            if youngest > 0 {
                var info = stat()
                guard lstat(path + "/" + name, &info) == 0, Int64(now) - Int64(info.st_mtim.tv_sec) > youngest else { continue }
            }
            guard IngestServer.isSessionID(id), let journal = lockedJournal(id) else { continue }
            defer { journal.close() }
            // The age from the locked file: a request that used the session just before the lock counts.
            guard let lastUsed = journal.lastUsed, case let .success(readRecord) = Result(catching: { try journal.read() }) else { continue }
            let age = Int64(now) - lastUsed
            var info = stat()
            func removeSession() {
                unlink(partPath(id))
                unlink(journal.path)
            }
            guard let record = readRecord, !record.single else {
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
