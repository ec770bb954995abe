import ContinuonPack
import ContinuonPackIngest
import ContinuonPackUpload
#if canImport(Glibc)
import Glibc
#endif

/// What a session's journal says: enough to take the session up again after a restart, or in another instance
/// that shares the spool directory.
struct SessionRecord: Sendable, Equatable {
    var objectName: PackageObjectName
    var total: UInt64?
    var declaredMD5: String?
    var declaredCRC32C: String?
    /// A single-request upload (multipart, media): the journal only marks its spool file as in use.
    var single = false
    /// Bytes held durably (synced before the checkpoint was written), and the CRC-32C of exactly those bytes.
    var held: UInt64 = 0
    var heldCRC32C: UInt32 = 0
    /// The answer the session ended with.
    var outcome: Result<StoredObject, IngestProblem>?

    init(objectName: PackageObjectName, total: UInt64?, declaredMD5: String?, declaredCRC32C: String?, single: Bool) {
        self.objectName = objectName
        self.total = total
        self.declaredMD5 = declaredMD5
        self.declaredCRC32C = declaredCRC32C
        self.single = single
    }

    static func == (a: Self, b: Self) -> Bool {
        a.objectName == b.objectName && a.total == b.total && a.declaredMD5 == b.declaredMD5
            && a.declaredCRC32C == b.declaredCRC32C && a.single == b.single && a.held == b.held
            && a.heldCRC32C == b.heldCRC32C && String(describing: a.outcome) == String(describing: b.outcome)
    }
}

/// Which journal file, and how long it was, when this process last read or wrote it: a session cached in memory is
/// current only while its journal is the same file of the same length (another instance that took the session
/// over appended to it).
struct JournalStamp: Equatable, Sendable {
    let device: UInt64
    let inode: UInt64
    let size: Int64

    init(_ info: stat) {
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
        size = Int64(info.st_size)
    }

    /// The journal at `path` now, without opening it; nil when there is none.
    init?(atPath path: String) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        self.init(info)
    }
}

/// A session's journal, `SPOOL/<session>.session`, open and locked (`flock`, exclusive) for one request: the
/// process that holds the lock is the only one that may append to the session's spool file or journal. The lock
/// goes with the descriptor (`close`, or the process dying: a `kill -9` leaves no lock behind).
///
/// The journal is lines of canonical JSON, each ending in a newline, appended and never rewritten:
/// ```
/// {"created":"…","object":"<package_id>.cpkg","schema":"continuon.serve-session/v1"[,"total":"N"][,"md5Hash"…][,"crc32c"…][,"single":true]}
/// {"held":"N","held_crc32c":"C"[,"total":"N"]}                 a checkpoint: N bytes of the spool file are durable
/// {"stored":{object resource}}  or  {"refused":{problem}}      the outcome (the spool file is then removed)
/// ```
/// Only complete lines count: a line cut short by a crash is ignored (and cut off before the next append). The header is
/// the first line; the state is the last complete line.
final class SessionJournal: @unchecked Sendable {
    static let schema = "continuon.serve-session/v1"
    /// The header line is at most this long; an outcome line too (its error list is shortened to fit).
    static let maxLineBytes = 64 * 1024

    let path: String
    private var file: FileDescriptor?
    private var fd: Int32 { file?.raw ?? -1 }

    private init(path: String, fd: Int32) {
        self.path = path
        self.file = FileDescriptor(raw: fd, path: path)
    }

    deinit { close() }

    enum OpenError: Error {
        /// Another process (another instance, or a request of this one) holds the session.
        case busy
        case io(ContinuonPackError)
    }

    /// Creates the journal of a new session (its header line), and returns it open and locked. It is written and
    /// locked under a temporary name (`<session>.session.new`) and then linked into place, so that no other process
    /// ever sees it without its header or unlocked.
    /// - Throws: `io.error` (the spool directory cannot take it).
    static func create(path: String, record: SessionRecord) throws -> SessionJournal {
        let temporary = path + ".new"
        let fd = FileDescriptor.retryOnInterrupt { Glibc.open(temporary, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_APPEND, 0o600) }
        guard fd >= 0 else { throw FileDescriptor.ioError("Cannot create the session journal", path: temporary) }
        let journal = SessionJournal(path: path, fd: fd)
        defer { unlink(temporary) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else { throw FileDescriptor.ioError("Cannot lock the session journal", path: temporary) }
        try journal.append(Self.header(record))
        guard link(temporary, path) == 0 else { throw FileDescriptor.ioError("Cannot create the session journal", path: path) }
        return journal
    }

    /// Opens and locks an existing journal without waiting.
    /// - Returns: nil when there is no such journal (never created, or removed: expired, swept).
    /// - Throws: `.busy` when another process or request holds it; `.io` for other failures.
    static func open(path: String) throws(OpenError) -> SessionJournal? {
        for _ in 0..<3 {
            let fd = FileDescriptor.retryOnInterrupt { Glibc.open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_APPEND | O_NONBLOCK) }
            guard fd >= 0 else {
                if errno == ENOENT || errno == ELOOP { return nil }
                throw .io(FileDescriptor.ioError("Cannot open the session journal", path: path))
            }
            let journal = SessionJournal(path: path, fd: fd)
            guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
                if errno == EWOULDBLOCK { throw .busy }
                throw .io(FileDescriptor.ioError("Cannot lock the session journal", path: path))
            }
            // The file may have been removed (and even re-created) between the open and the lock: only the file
            // the path names now counts.
            var opened = stat(), named = stat()
            guard fstat(fd, &opened) == 0, opened.st_mode & S_IFMT == S_IFREG else { return nil }
            guard lstat(path, &named) == 0 else { return nil }
            if opened.st_dev == named.st_dev && opened.st_ino == named.st_ino { return journal }
        }
        return nil
    }

    /// Unlocks and closes (idempotent).
    func close() {
        try? file?.close()
        file = nil
    }

    var stamp: JournalStamp? {
        var info = stat()
        guard fd >= 0, fstat(fd, &info) == 0 else { return nil }
        return JournalStamp(info)
    }

    /// When a request last used the session (seconds since the epoch), read from the locked file.
    var lastUsed: Int64? {
        var info = stat()
        guard fd >= 0, fstat(fd, &info) == 0 else { return nil }
        return Int64(info.st_mtim.tv_sec)
    }

    /// Marks the session as used now (its expiry counts from the journal's modification time).
    func touch() {
        _ = futimens(fd, nil)
    }

    // MARK: - Reading

    /// Reads the header and the last complete line, and cuts off a line a crash left incomplete.
    /// - Returns: nil when the journal is not one this service wrote (no complete header, a line that does not
    ///   parse): the session cannot be taken up.
    /// - Throws: `io.error` when the file cannot be read (the session may be fine: try again later).
    func read() throws -> SessionRecord? {
        guard let stamp else { throw FileDescriptor.ioError("Cannot stat the session journal", path: path) }
        guard stamp.size > 0 else { return nil }
        let head = try pread(at: 0, count: Int(min(stamp.size, Int64(Self.maxLineBytes))))
        guard let headerEnd = head.firstIndex(of: 0x0a), var record = Self.parseHeader(Array(head[..<headerEnd])) else { return nil }
        // Room for the longest complete line and the longest cut-short one after it.
        let tailStart = max(Int64(headerEnd + 1), stamp.size - 2 * Int64(Self.maxLineBytes) - 1)
        let tail = try pread(at: tailStart, count: Int(stamp.size - tailStart))
        // The complete lines end at the last newline; anything after it was cut short.
        guard let lastNewline = tail.lastIndex(of: 0x0a) else {
            // Only the header is complete (what follows it was cut short), or a stretch without any line break.
            guard tailStart == Int64(headerEnd + 1) else { return nil }
            if !tail.isEmpty { _ = ftruncate(fd, off_t(headerEnd + 1)) }
            return record
        }
        let complete = Int64(lastNewline + 1) + tailStart
        if complete < stamp.size { _ = ftruncate(fd, off_t(complete)) }
        let lineStart = tail[..<lastNewline].lastIndex(of: 0x0a).map { $0 + 1 } ?? 0
        guard lineStart > 0 || tailStart == Int64(headerEnd + 1) else { return nil } // a line longer than allowed
        guard Self.apply(Array(tail[lineStart..<lastNewline]), to: &record) else { return nil }
        return record
    }

    private func pread(at offset: Int64, count: Int) throws -> [UInt8] {
        guard let file else { throw ContinuonPackError(.ioError, "The session journal is closed.") }
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let got = try bytes.withUnsafeMutableBytes {
                try file.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[done...]), at: offset + Int64(done))
            }
            if got == 0 { break }
            done += got
        }
        return Array(bytes[0..<done])
    }

    private static func parseHeader(_ line: [UInt8]) -> SessionRecord? {
        guard let value = try? StrictJSONParser.parse(line), value["schema"] == .string(schema),
              case let .string(object)? = value["object"], let name = PackageObjectName(object)
        else { return nil }
        var record = SessionRecord(objectName: name, total: nil, declaredMD5: nil, declaredCRC32C: nil, single: value["single"] == .bool(true))
        if case let .string(total)? = value["total"] {
            guard let number = StrictDecimal.parse(total) else { return nil }
            record.total = number
        }
        if case let .string(md5)? = value["md5Hash"] { record.declaredMD5 = md5 }
        if case let .string(crc)? = value["crc32c"] { record.declaredCRC32C = crc }
        return record
    }

    /// Applies the last line (the header itself, a checkpoint or an outcome).
    private static func apply(_ line: [UInt8], to record: inout SessionRecord) -> Bool {
        guard let value = try? StrictJSONParser.parse(line) else { return false }
        if value["schema"] != nil { return true }
        if case let .string(held)? = value["held"], case let .string(crc)? = value["held_crc32c"] {
            guard let held = StrictDecimal.parse(held), let crc = StrictDecimal.parse(crc), crc <= UInt64(UInt32.max) else { return false }
            record.held = held
            record.heldCRC32C = UInt32(crc)
            if case let .string(total)? = value["total"] {
                guard let total = StrictDecimal.parse(total) else { return false }
                record.total = total
            }
            return true
        }
        if let stored = value["stored"], let object = StoredObject(json: stored) {
            record.outcome = .success(object)
            return true
        }
        if let refused = value["refused"], let problem = IngestProblem(json: refused) {
            record.outcome = .failure(problem)
            return true
        }
        return false
    }

    // MARK: - Writing

    private static func header(_ record: SessionRecord) -> [UInt8] {
        var members: [(String, JSONValue)] = [
            ("schema", .string(schema)), ("object", .string(record.objectName.text)),
            ("created", .string(String(time(nil)))),
        ]
        if let total = record.total { members.append(("total", .string(String(total)))) }
        if let md5 = record.declaredMD5 { members.append(("md5Hash", .string(md5))) }
        if let crc = record.declaredCRC32C { members.append(("crc32c", .string(crc))) }
        if record.single { members.append(("single", .bool(true))) }
        return CanonicalJSON.encode(.object(members)) + [0x0a]
    }

    /// Records that the first `held` bytes of the spool file are durable (the caller synced them): a restart takes
    /// the session up from there. Synced before it returns.
    func checkpoint(held: UInt64, crc32c: UInt32, total: UInt64?) throws {
        var members: [(String, JSONValue)] = [("held", .string(String(held))), ("held_crc32c", .string(String(crc32c)))]
        if let total { members.append(("total", .string(String(total)))) }
        try append(CanonicalJSON.encode(.object(members)) + [0x0a])
        try sync()
    }

    /// Records the session's answer, for requests that come after it (to this process after a restart, or to
    /// another instance), synced before the spool file is removed.
    func recordOutcome(_ outcome: Result<StoredObject, IngestProblem>) throws {
        switch outcome {
        case let .success(object):
            try append(CanonicalJSON.encode(.object([("stored", object.jsonValue)])) + [0x0a])
        case let .failure(problem):
            var shortened = problem
            var line = CanonicalJSON.encode(.object([("refused", shortened.jsonValue)])) + [0x0a]
            while line.count > Self.maxLineBytes && !shortened.errors.isEmpty {
                shortened.errors.removeLast(max(1, shortened.errors.count / 2))
                line = CanonicalJSON.encode(.object([("refused", shortened.jsonValue)])) + [0x0a]
            }
            if line.count > Self.maxLineBytes {
                shortened.detail = nil
                line = CanonicalJSON.encode(.object([("refused", shortened.jsonValue)])) + [0x0a]
            }
            try append(line)
        }
        try sync()
    }

    private func sync() throws {
        guard let file else { throw ContinuonPackError(.ioError, "The session journal is closed.") }
        try file.syncData()
    }

    /// Appends one line whole, or not at all: a write that fails part-way is cut back, so that the next line does
    /// not join its remains.
    private func append(_ bytes: [UInt8]) throws {
        guard let file else { throw ContinuonPackError(.ioError, "The session journal is closed.") }
        let before = lseek(file.raw, 0, SEEK_END)
        do {
            try bytes.withUnsafeBytes { try file.writeAll($0) }
        } catch {
            if before >= 0 { _ = ftruncate(file.raw, before) }
            throw error
        }
    }
}
