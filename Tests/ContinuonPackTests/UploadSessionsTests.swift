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
        for index in 0..<50 { await table.add(session("e\(index)")) }
        // An honest upload still gets a slot for its bytes.
        await table.add(session("honest"))
        _ = try await table.acquire("honest")
        try await table.activate("honest")
        await table.release("honest")
        #expect(await table.counts.active == 1)
        #expect(await table.expire(now: .now + .seconds(601)) == 50)
        let counts = await table.counts
        #expect(counts.empty == 0 && counts.active == 1)
        #expect(await table.expire(now: .now + .seconds(24 * 3600 + 1)) == 1)
    }

    @Test("At the limit of empty sessions the oldest is dropped")
    func emptyLimit() async throws {
        let table = UploadSessions(limits: SessionLimits(maxActive: 2, maxEmpty: 3))
        for index in 0..<5 { await table.add(session("s\(index)")) }
        #expect(await table.counts.empty == 3)
        await #expect(throws: IngestProblem.self) { try await table.acquire("s0") }
        _ = try await table.acquire("s4")
    }

    @Test("Sessions holding bytes are limited; the 429 says when to come back")
    func activeLimit() async throws {
        let table = UploadSessions(limits: SessionLimits(maxActive: 1, expiry: .seconds(100)))
        await table.add(session("a"))
        await table.add(session("b"))
        try await table.activate("a")
        do {
            try await table.activate("b")
            Issue.record("a second active session was allowed")
        } catch {
            #expect(error.status == 429 && error.code == "upload.too_many_sessions")
            // "a" was active within the last 5 s: it may finish any moment.
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
            await table.add(session(id))
            _ = try await table.acquire(id)
            await table.end(id, .failure(refusal))
        }
        guard case let .finished(.failure(problem)) = try await table.acquire("z") else {
            Issue.record("no stored answer")
            return
        }
        #expect(problem == refusal)
        #expect(await table.counts.finished == 2)
        await #expect(throws: IngestProblem.self) { try await table.acquire("x") }
        await table.add(session("w"))
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
