import ContinuonPack
import ContinuonPackIngest
#if canImport(Glibc)
import Glibc
#endif

/// One upload. Touched only by the one request that holds it (`UploadSessions.acquire`), or by the table when it
/// expires. The session's state on disk (its journal and spool file) is the truth; this is a cache of it, checked
/// against the journal at each request (`IngestServer.attach`).
final class UploadSession: @unchecked Sendable {
    let id: String
    let objectName: PackageObjectName
    let declaredMD5: String?
    let declaredCRC32C: String?
    /// Total size, from `X-Upload-Content-Length` or the first Content-Range that names it.
    var total: UInt64?
    /// The held bytes; nil until the first byte arrives.
    var spool: SpoolFile?
    var received: UInt64 { spool?.held ?? 0 }
    /// The journal, open and locked while a request of this process holds the session.
    var journal: SessionJournal?
    /// The journal as this process last left it (nil: not read yet).
    var stamp: JournalStamp?
    /// The journal as `adopt` just read it (under the lock `attach` then uses): spares a second read.
    var adoptedRecord: SessionRecord?
    /// What the journal's last checkpoint says.
    var checkpointed: UInt64 = 0
    var checkpointedTotal: UInt64?

    /// Gives back the held bytes' file, descriptors and verifier thread, and removes the file (the session ended).
    func releaseSpool() {
        spool?.discard()
        spool = nil
    }

    /// Gives back the descriptors and the verifier thread; the file stays (the session may be taken up again).
    func closeSpool() {
        spool?.close()
        spool = nil
    }

    /// Lets go of the held bytes' descriptors and of what this process knew of the journal: the next request takes
    /// the session up again from its last checkpoint (its files are kept).
    func rebuildAtNextRequest() {
        closeSpool()
        stamp = nil
    }

    /// Unlocks and closes the journal this request held.
    func releaseJournal() {
        journal?.close()
        journal = nil
    }

    /// Takes what the journal's last checkpoint says.
    func takeCheckpoint(of record: SessionRecord) {
        total = record.total
        checkpointed = record.held
        checkpointedTotal = record.total
    }

    /// False for a single-request upload (multipart, media): no client can ask for it again, so its outcome is
    /// not kept when it ends.
    let remembered: Bool

    init(id: String, objectName: PackageObjectName, total: UInt64?, metadata: UploadMetadata, remembered: Bool = true) {
        self.id = id
        self.remembered = remembered
        self.objectName = objectName
        self.total = total
        self.checkpointedTotal = total // the journal's header records it
        self.declaredMD5 = metadata.md5Hash
        self.declaredCRC32C = metadata.crc32c
    }

    /// A session taken up from its journal (bytes and checkpoint are read by `attach`).
    init(id: String, record: SessionRecord) {
        self.id = id
        self.remembered = true
        self.objectName = record.objectName
        self.declaredMD5 = record.declaredMD5
        self.declaredCRC32C = record.declaredCRC32C
        takeCheckpoint(of: record)
    }

    var record: SessionRecord {
        SessionRecord(objectName: objectName, total: total, declaredMD5: declaredMD5, declaredCRC32C: declaredCRC32C, single: !remembered)
    }
}

/// How many sessions the service keeps, and for how long.
public struct SessionLimits: Sendable {
    /// Sessions holding bytes (each: a spool file, two descriptors, a verifier thread).
    public var maxActive: Int
    /// Sessions that hold no byte yet (a few hundred bytes of memory each). At the limit the oldest is dropped if
    /// it is older than `emptyGrace`; else the newcomer gets 429 (a flood of initiations cannot push out a session
    /// an honest client has just started).
    public var maxEmpty: Int
    public var emptyGrace: Duration
    /// A session holding bytes and left alone this long is dropped with its spool file.
    public var expiry: Duration
    /// A session that never received a byte is dropped after this long.
    public var emptyExpiry: Duration
    /// A finished session's answer (the object, or the refusal) is repeated to late requests this long.
    public var finishedRetention: Duration
    /// At most this many finished answers are kept (the oldest go first).
    public var maxFinished: Int
    /// When every slot for sessions holding bytes is taken, a session not in a request that brought no new byte
    /// for `quietAfter`, or that holds fewer than `minBytesPerSecond` per second since `grace` after its first
    /// byte, gives its slot to a newcomer: holding a slot takes a real upload, not one byte and silence.
    public var quietAfter: Duration
    public var minBytesPerSecond: UInt64
    public var grace: Duration
    /// How often sessions are expired and the spool directory swept.
    public var sweepInterval: Duration = .seconds(15)

    public init(maxActive: Int = 64, maxEmpty: Int = 32768, emptyGrace: Duration = .seconds(60),
                expiry: Duration = .seconds(24 * 3600), emptyExpiry: Duration = .seconds(600),
                finishedRetention: Duration = .seconds(3600), maxFinished: Int = 16384, quietAfter: Duration = .seconds(120),
                minBytesPerSecond: UInt64 = 1024, grace: Duration = .seconds(10)) {
        self.maxActive = maxActive
        self.maxEmpty = maxEmpty
        self.emptyGrace = emptyGrace
        self.expiry = expiry
        self.emptyExpiry = emptyExpiry
        self.finishedRetention = finishedRetention
        self.maxFinished = maxFinished
        self.quietAfter = quietAfter
        self.minBytesPerSecond = minBytesPerSecond
        self.grace = grace
    }
}

/// The table of sessions. A session serves one request at a time (`acquire`/`release`); resources (spool file,
/// descriptors, verifier thread) exist only while it holds bytes and are given back when it ends, whatever the
/// outcome; only the answer is remembered, for a bounded time and count.
actor UploadSessions {
    enum Acquired {
        case open(UploadSession)
        case finished(Result<StoredObject, IngestProblem>)
    }

    private struct Open {
        let session: UploadSession
        let created: ContinuousClock.Instant = .now
        var lastActivity: ContinuousClock.Instant
        var busy = false
        /// Counted against `maxActive` (it holds bytes, or is about to).
        var active = false
        var firstByte: ContinuousClock.Instant?
        /// When the bytes held last grew, and to how many.
        var lastProgress: ContinuousClock.Instant = .now
        var lastHeld: UInt64 = 0

        /// May give its slot away: not in a request, and quiet or slow.
        func isEvictable(now: ContinuousClock.Instant, _ limits: SessionLimits) -> Bool {
            guard active, !busy else { return false }
            if now - lastProgress >= limits.quietAfter { return true }
            guard let firstByte, now - firstByte > limits.grace else { return false }
            let seconds = UInt64(max(1, (now - firstByte - limits.grace).components.seconds))
            return session.received < limits.minBytesPerSecond.multipliedReportingOverflow(by: seconds).partialValue
        }
    }

    private struct Finished {
        let outcome: Result<StoredObject, IngestProblem>
        let at: ContinuousClock.Instant
    }

    private var open: [String: Open] = [:]
    private var finished: [String: Finished] = [:]
    /// Session IDs in the order they were added, and answers in the order they were kept: the oldest is found
    /// without a scan (entries that left meanwhile are skipped when they reach the front).
    private var addedOrder = FIFO<String>()
    private var finishedOrder = FIFO<String>()
    private var activeCount = 0
    let limits: SessionLimits
    /// Where sessions dropped or evicted by the table have their files (nil in unit tests of the table alone).
    let spool: SpoolDirectory?

    init(limits: SessionLimits, spool: SpoolDirectory? = nil) {
        self.limits = limits
        self.spool = spool
    }

    var counts: (empty: Int, active: Int, finished: Int) { (open.count - activeCount, activeCount, finished.count) }

    /// A new session (no byte yet, no resources). At the limit of empty sessions the oldest is dropped, if it is
    /// older than `emptyGrace`.
    /// - Throws: 429 `upload.too_many_sessions` when every empty session is younger than that.
    func add(_ session: UploadSession) throws(IngestProblem) {
        let now = ContinuousClock.now
        while open.count - activeCount >= limits.maxEmpty, let oldest = addedOrder.first {
            guard let entry = open[oldest], !entry.active, !entry.busy else {
                _ = addedOrder.popFirst()
                continue
            }
            let age = now - entry.created
            guard age >= limits.emptyGrace else {
                throw IngestProblem(429, "upload.too_many_sessions", "Too many uploads were started and not begun.")
                    .adding(header: "Retry-After", String(max(1, (limits.emptyGrace - age).components.seconds + 1)))
            }
            _ = addedOrder.popFirst()
            open[oldest] = nil
            // Only if it is still the empty session this process knows (not taken up and filled elsewhere).
            spool?.remove(oldest, stamp: entry.session.stamp)
        }
        open[session.id] = Open(session: session, lastActivity: .now)
        addedOrder.append(session.id)
        if addedOrder.count > 2 * (open.count + 16) { addedOrder.removeAll { open[$0] == nil } }
    }

    /// The session for one request, or the answer it already ended with; nil when this process does not know it
    /// (it may be taken up from the spool directory: `adopt`).
    /// - Throws: 503 `upload.session_busy` (another request is using it).
    func acquire(_ id: String) throws(IngestProblem) -> Acquired? {
        if let entry = finished[id] { return .finished(entry.outcome) }
        guard var entry = open[id] else { return nil }
        guard !entry.busy else {
            throw IngestProblem(503, "upload.session_busy", "Another request is using this upload session.")
                .adding(header: "Retry-After", "1")
        }
        entry.busy = true
        entry.lastActivity = .now
        open[id] = entry
        return .open(entry.session)
    }

    /// Adds a session taken up from the spool directory, held by the calling request; false when one of that ID is
    /// known already (another request took it up meanwhile).
    func adopt(_ session: UploadSession) -> Bool {
        guard open[session.id] == nil, finished[session.id] == nil else { return false }
        var entry = Open(session: session, lastActivity: .now)
        entry.busy = true
        open[session.id] = entry
        addedOrder.append(session.id)
        return true
    }

    /// Keeps an answer read from a session's journal.
    func remember(_ id: String, _ outcome: Result<StoredObject, IngestProblem>) {
        guard open[id] == nil, finished[id] == nil else { return }
        keepFinished(id, outcome)
    }

    /// Drops a session from this process's table without an answer (its files are gone, or another process ended
    /// it): descriptors and thread are given back by the caller.
    func forget(_ id: String) {
        guard let entry = open.removeValue(forKey: id) else { return }
        if entry.active { activeCount -= 1 }
    }

    func release(_ id: String) {
        guard var entry = open[id] else { return }
        entry.busy = false
        entry.lastActivity = .now
        let held = entry.session.received
        if held > entry.lastHeld {
            entry.lastHeld = held
            entry.lastProgress = .now
        }
        open[id] = entry
    }

    /// A session that gave its slot away: the caller records its end in its journal (`SpoolDirectory.recordEnd`,
    /// file work kept out of the table) and then `remember`s the answer.
    struct Eviction: Sendable {
        let id: String
        let stamp: JournalStamp?
        static let outcome = Result<StoredObject, IngestProblem>.failure(IngestProblem(
            410, "upload.session_evicted", "The upload session was dropped to make room for active uploads.",
            detail: "It had received no new bytes for a while, or too few; start a new upload."))
    }

    /// Counts the session against `maxActive` before its first byte is stored. At the limit, the quietest
    /// session that is quiet or slow (`SessionLimits.quietAfter`, `minBytesPerSecond`) is ended to make room: its
    /// descriptors and thread are given back, and its client is told `410 upload.session_evicted` (start again)
    /// once the caller recorded that in its journal (returned; without a spool directory the table keeps the answer
    /// at once).
    /// - Throws: 429 `upload.too_many_sessions`, with a `Retry-After` that is true: the time until the first session
    ///   can be evicted, or 5 s while sessions are in a request (they may finish any moment).
    @discardableResult
    func activate(_ id: String) throws(IngestProblem) -> Eviction? {
        guard var entry = open[id], !entry.active else { return nil }
        let now = ContinuousClock.now
        var eviction: Eviction?
        if activeCount >= limits.maxActive,
           let (victimID, victim) = open.filter({ $0.value.isEvictable(now: now, limits) }).min(by: { $0.value.lastProgress < $1.value.lastProgress }) {
            victim.session.closeSpool()
            if spool == nil {
                end(victimID, Eviction.outcome)
            } else {
                forget(victimID)
                eviction = Eviction(id: victimID, stamp: victim.session.stamp)
            }
        }
        guard activeCount < limits.maxActive else {
            let busy = open.values.contains { $0.active && $0.busy }
            let soonest = open.values.filter(\.active).map { $0.lastProgress + limits.quietAfter - now }.min() ?? .seconds(1)
            let seconds = busy ? 5 : max(1, soonest.components.seconds + 1)
            throw IngestProblem(429, "upload.too_many_sessions", "Too many uploads are receiving bytes.",
                                detail: "The service holds \(limits.maxActive) uploads in progress; try again later.")
                .adding(header: "Retry-After", String(seconds))
        }
        entry.active = true
        entry.firstByte = now
        entry.lastProgress = now
        activeCount += 1
        open[id] = entry
        return eviction
    }

    /// Undoes `activate` when the spool could not be created.
    func deactivate(_ id: String) {
        guard var entry = open[id], entry.active else { return }
        entry.active = false
        activeCount -= 1
        open[id] = entry
    }

    /// Ends a session: its answer is kept for late requests; the caller has given back its resources.
    func end(_ id: String, _ outcome: Result<StoredObject, IngestProblem>) {
        guard let entry = open.removeValue(forKey: id) else { return }
        if entry.active { activeCount -= 1 }
        guard entry.session.remembered else { return }
        keepFinished(id, outcome)
    }

    private func keepFinished(_ id: String, _ outcome: Result<StoredObject, IngestProblem>) {
        while finished.count >= limits.maxFinished, let oldest = finishedOrder.popFirst() {
            finished[oldest] = nil
        }
        finished[id] = Finished(outcome: outcome, at: .now)
        finishedOrder.append(id)
    }

    /// Drops sessions left alone too long and old answers from this process's table (their descriptors and threads
    /// too; their files are the spool sweep's: `SpoolDirectory.sweep`); returns how many sessions were dropped.
    @discardableResult
    func expire(now: ContinuousClock.Instant = .now) -> Int {
        var dropped = 0
        for (id, entry) in open where !entry.busy {
            let limit = entry.active ? limits.expiry : limits.emptyExpiry
            if now - entry.lastActivity > limit {
                entry.session.closeSpool()
                if entry.active { activeCount -= 1 }
                open[id] = nil
                dropped += 1
            }
        }
        while let oldest = finishedOrder.first, finished[oldest].map({ now - $0.at > limits.finishedRetention }) ?? true {
            finished[oldest] = nil
            _ = finishedOrder.popFirst()
        }
        return dropped
    }

    /// Lets go of sessions holding bytes whose journal another process has changed or removed since this process
    /// last held them (another instance took them up, ended or swept them): their descriptors, verifier threads and
    /// slots are given back at once rather than when they expire here. Returns how many.
    @discardableResult
    func dropMoved(_ spool: SpoolDirectory) -> Int {
        var dropped = 0
        for (id, entry) in open where entry.active && !entry.busy {
            if let stamp = entry.session.stamp, JournalStamp(atPath: spool.journalPath(id)) == stamp { continue }
            entry.session.closeSpool()
            forget(id)
            dropped += 1
        }
        return dropped
    }

    /// Lets go of every open session (the service stops): descriptors closed, verifier threads stopped; the
    /// journals and spool files stay, for the next start or another instance.
    func closeAll() {
        // A request still running (past the shutdown timeout) keeps its own; the process is about to end anyway.
        for entry in open.values where !entry.busy {
            if entry.session.remembered {
                entry.session.closeSpool()
            } else {
                // A single-request upload cannot be resumed: its files go.
                entry.session.releaseSpool()
                if let journal = entry.session.journal { unlink(journal.path) }
            }
            entry.session.releaseJournal()
        }
        open = [:]
        activeCount = 0
    }
}

