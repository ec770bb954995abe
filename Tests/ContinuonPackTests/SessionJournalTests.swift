import Foundation
import Testing
@testable import ContinuonPack
import ContinuonPackIngest
@testable import ContinuonPackServer

/// The journal that lets a session outlive its process (spec section 12.1, "What survives a restart").
@Suite("Session journals: checkpoints, answers, torn lines and locks")
struct SessionJournalTests {
    static let name = PackageObjectName(String(repeating: "b", count: 64) + ".cpkg")!

    func record(total: UInt64? = 3 << 20) -> SessionRecord {
        SessionRecord(objectName: Self.name, total: total, declaredMD5: "1B2M2Y8AsgTpgAmY7PhCfg==", declaredCRC32C: "AAAAAA==", single: false)
    }

    func bytes(_ path: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path))) }

    func append(_ path: String, _ text: String) throws {
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(text.utf8))
        try handle.close()
    }

    @Test("A journal reads back its header, its last checkpoint and its answer")
    func roundTrip() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("s.session")
        let journal = try SessionJournal.create(path: path, record: record())
        #expect(try journal.read() == record())
        try journal.checkpoint(held: 1 << 20, crc32c: 7, total: nil)
        try journal.checkpoint(held: 2 << 20, crc32c: 4_294_967_295, total: 3 << 20)
        var expected = record()
        expected.held = 2 << 20
        expected.heldCRC32C = 4_294_967_295
        #expect(try journal.read() == expected)
        var refusal = IngestProblem(422, "signature.untrusted", "The package failed verification.", detail: "no trusted key")
        refusal.errors = [.init(code: "signature.untrusted", message: "untrusted"), .init(code: "blob.digest_mismatch", message: "m")]
        try journal.recordOutcome(.failure(refusal))
        // An ended session is its answer: the bytes it held no longer matter.
        expected.outcome = .failure(refusal)
        expected.held = 0
        expected.heldCRC32C = 0
        #expect(try journal.read() == expected)
        journal.close()
    }

    @Test("A line that a crash cut short does not count and is cut off before the next append")
    func tornLine() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("s.session")
        let journal = try SessionJournal.create(path: path, record: record())
        try journal.checkpoint(held: 1 << 20, crc32c: 9, total: nil)
        let whole = try bytes(path)
        try append(path, #"{"held":"2097152","held_crc"#)
        var expected = record()
        expected.held = 1 << 20
        expected.heldCRC32C = 9
        #expect(try journal.read() == expected)
        #expect(try bytes(path) == whole, "the torn line is cut off")
        try journal.checkpoint(held: 2 << 20, crc32c: 10, total: nil)
        expected.held = 2 << 20
        expected.heldCRC32C = 10
        #expect(try journal.read() == expected)
        // Torn right after the header.
        let second = try SessionJournal.create(path: dir.file("t.session"), record: record())
        try append(dir.file("t.session"), #"{"he"#)
        #expect(try second.read() == record())
    }

    @Test("Journals this service did not write cannot be taken up", arguments: [
        "", "{}\n", "not json\n", #"{"schema":"continuon.serve-session/v2","object":"x"}"# + "\n",
        #"{"object":"../../etc/passwd","schema":"continuon.serve-session/v1"}"# + "\n",
        #"{"object":"BBBB.cpkg","schema":"continuon.serve-session/v1"}"# + "\n",
        #"{"object":"\#(String(repeating: "b", count: 64)).cpkg","schema":"continuon.serve-session/v1"}"# + "\n" + #"{"held":"-1","held_crc32c":"0"}"# + "\n",
        #"{"object":"\#(String(repeating: "b", count: 64)).cpkg","schema":"continuon.serve-session/v1"}"# + "\n" + #"{"held":"1","held_crc32c":"4294967296"}"# + "\n",
        #"{"object":"\#(String(repeating: "b", count: 64)).cpkg","schema":"continuon.serve-session/v1"}"# + "\n" + "garbage\n",
        String(repeating: "x", count: 70_000) + "\n",
    ])
    func foreign(_ text: String) throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("s.session")
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        let opened = Result { () throws(SessionJournal.OpenError) in try SessionJournal.open(path: path) }
        guard case let .success(journal?) = opened else {
            Issue.record("the journal did not open")
            return
        }
        #expect(try journal.read() == nil)
    }

    @Test("One holder at a time: a second open is busy until the first lets go; a removed journal is gone")
    func locking() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("s.session")
        let journal = try SessionJournal.create(path: path, record: record())
        guard case .failure(.busy) = Result(catching: { () throws(SessionJournal.OpenError) in try SessionJournal.open(path: path) }) else {
            Issue.record("a held journal opened twice")
            return
        }
        journal.close()
        guard case let .success(again?) = Result(catching: { () throws(SessionJournal.OpenError) in try SessionJournal.open(path: path) }) else {
            Issue.record("a released journal did not open")
            return
        }
        unlink(path)
        again.close()
        guard case .success(nil) = Result(catching: { () throws(SessionJournal.OpenError) in try SessionJournal.open(path: path) }) else {
            Issue.record("a removed journal opened")
            return
        }
    }

    @Test("The sweep removes orphaned and expired files and keeps live and held sessions")
    func sweep() throws {
        let dir = try TemporaryDirectory()
        let spool = try SpoolDirectory(path: dir.path)
        let live = String(repeating: "1", count: 32), held = String(repeating: "2", count: 32)
        let orphan = String(repeating: "3", count: 32), old = String(repeating: "4", count: 32)
        try SessionJournal.create(path: spool.journalPath(live), record: record()).close()
        let holding = try SessionJournal.create(path: spool.journalPath(held), record: record())
        FileManager.default.createFile(atPath: spool.partPath(orphan), contents: Data("x".utf8))
        try SessionJournal.create(path: spool.journalPath(old), record: record()).close()
        FileManager.default.createFile(atPath: dir.file("notes.txt"), contents: Data())
        var past = [timespec(tv_sec: time(nil) - 100_000, tv_nsec: 0), timespec(tv_sec: time(nil) - 100_000, tv_nsec: 0)]
        for id in [old, held] { _ = utimensat(AT_FDCWD, spool.journalPath(id), &past, 0) }
        let swept = spool.sweep(limits: SessionLimits())
        #expect(swept == SpoolDirectory.Swept(orphaned: 1, expired: 1))
        let left = Set(try FileManager.default.contentsOfDirectory(atPath: dir.path))
        #expect(left == [live + ".session", held + ".session", "notes.txt"])
        holding.close()
    }

    @Test("Sessions another instance changed or removed are let go at the next sweep; untouched ones are kept")
    func dropMoved() async throws {
        let dir = try TemporaryDirectory()
        let spool = try SpoolDirectory(path: dir.path)
        let table = UploadSessions(limits: SessionLimits(), spool: spool)
        var sessions: [UploadSession] = []
        for digit in ["5", "6", "7"] {
            let id = String(repeating: digit, count: 32)
            let session = UploadSession(id: id, objectName: Self.name, total: nil, metadata: UploadMetadata())
            let journal = try SessionJournal.create(path: spool.journalPath(id), record: session.record)
            session.stamp = journal.stamp
            journal.close()
            try await table.add(session)
            _ = try await table.acquire(id)
            try await table.activate(id)
            await table.release(id)
            sessions.append(session)
        }
        // Another instance appended a checkpoint to the second, and swept the third.
        try append(spool.journalPath(sessions[1].id), #"{"held":"1","held_crc32c":"0"}"# + "\n")
        unlink(spool.journalPath(sessions[2].id))
        #expect(await table.dropMoved(spool) == 2)
        #expect(await table.counts.active == 1)
        #expect(await table.dropMoved(spool) == 0)
    }
}
