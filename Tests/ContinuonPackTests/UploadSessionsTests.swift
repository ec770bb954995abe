import Testing
@testable import ContinuonPack
import ContinuonPackIngest
@testable import ContinuonPackServer

/// The service's session table: what a session costs, how long it lives, and what it answers once it ended.
@Suite("Upload sessions: limits, expiry and answers")
struct UploadSessionsTests {
    static let name = PackageObjectName(String(repeating: "a", count: 64) + ".cpkg")!

    func session(_ id: String) -> UploadSession {
        UploadSession(id: id, objectName: Self.name, total: nil, metadata: UploadMetadata())
    }

    @Test("Sessions without bytes do not count against the limit and expire after the empty expiry (finding 6)")
    func emptySessions() async throws {
        let table = UploadSessions(limits: SessionLimits(maxActive: 2, maxEmpty: 100, emptyExpiry: .seconds(600)))
        for index in 0..<50 { try await table.add(session("e\(index)")) }
        // An honest upload still gets a slot for its bytes.
        try await table.add(session("honest"))
        _ = try await table.acquire("honest")
        try await table.activate("honest")
        await table.release("honest")
        #expect(await table.counts.active == 1)
        #expect(await table.expire(now: .now + .seconds(601)) == 50)
        let counts = await table.counts
        #expect(counts.empty == 0 && counts.active == 1)
        #expect(await table.expire(now: .now + .seconds(24 * 3600 + 1)) == 1)
    }

    @Test("At the limit of empty sessions the oldest goes only if it is old enough; else the newcomer waits (429)")
    func emptyLimit() async throws {
        let young = UploadSessions(limits: SessionLimits(maxActive: 2, maxEmpty: 3, emptyGrace: .seconds(60)))
        for index in 0..<3 { try await young.add(session("s\(index)")) }
        do {
            try await young.add(session("flood"))
            Issue.record("a fourth empty session pushed out a session started a moment ago")
        } catch {
            #expect(error.status == 429 && error.headers.first { $0.name == "Retry-After" }?.value == "60")
        }
        _ = try await young.acquire("s0")
        let old = UploadSessions(limits: SessionLimits(maxActive: 2, maxEmpty: 3, emptyGrace: .zero))
        for index in 0..<5 { try await old.add(session("s\(index)")) }
        #expect(await old.counts.empty == 3)
        #expect(try await old.acquire("s0") == nil)
        _ = try await old.acquire("s4")
    }

    @Test("At the limit of sessions holding bytes, a quiet or slow one makes room (410); a busy one never")
    func eviction() async throws {
        let table = UploadSessions(limits: SessionLimits(maxActive: 1, quietAfter: .seconds(120), grace: .zero))
        try await table.add(session("squatter"))
        try await table.activate("squatter")
        try await table.add(session("honest"))
        // The squatter holds no byte: below the minimum rate once the grace is over.
        try await Task.sleep(for: .milliseconds(1100))
        try await table.activate("honest")
        guard case let .finished(.failure(problem)) = try await table.acquire("squatter") else {
            Issue.record("the squatter was not evicted")
            return
        }
        #expect(problem.status == 410 && problem.code == "upload.session_evicted")
        // A session in a request is never evicted.
        try await table.add(session("third"))
        _ = try await table.acquire("honest")
        await #expect(throws: IngestProblem.self) { try await table.activate("third") }
    }

    @Test("Sessions holding bytes are limited; the 429 says when to come back")
    func activeLimit() async throws {
        let table = UploadSessions(limits: SessionLimits(maxActive: 1, expiry: .seconds(100)))
        try await table.add(session("a"))
        try await table.add(session("b"))
        try await table.activate("a")
        _ = try await table.acquire("a") // in a request: it may finish any moment
        do {
            try await table.activate("b")
            Issue.record("a second active session was allowed")
        } catch {
            #expect(error.status == 429 && error.code == "upload.too_many_sessions")
            #expect(error.headers.first { $0.name == "Retry-After" }?.value == "5")
        }
        await table.deactivate("a")
        try await table.activate("b")
    }

    @Test("An ended session answers with its outcome; a busy one is 503; the answers are bounded")
    func endedSessions() async throws {
        let table = UploadSessions(limits: SessionLimits(maxFinished: 2))
        let refusal = IngestProblem(422, "signature.untrusted", "The package failed verification.")
        for id in ["x", "y", "z"] {
            try await table.add(session(id))
            _ = try await table.acquire(id)
            await table.end(id, .failure(refusal))
        }
        guard case let .finished(.failure(problem)) = try await table.acquire("z") else {
            Issue.record("no stored answer")
            return
        }
        #expect(problem == refusal)
        #expect(await table.counts.finished == 2)
        #expect(try await table.acquire("x") == nil)
        try await table.add(session("w"))
        _ = try await table.acquire("w")
        await #expect(throws: IngestProblem.self) { try await table.acquire("w") }
    }

    @Test("Session IDs: 128 random bits as 32 hex digits, never repeated")
    func sessionIDs() {
        let ids = (0..<1000).map { _ in IngestServer.newSessionID() }
        #expect(Set(ids).count == 1000)
        #expect(ids.allSatisfy(IngestServer.isSessionID))
    }
}
