import ContinuonPack
import ContinuonPackIngest
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Sessions that outlive the process: each request takes its session's journal lock, checks that what this process
/// remembers of the session is still what the journal says (another instance sharing the spool may have taken it up
/// meanwhile, or this process may be new), and rebuilds it from the journal and the spool file if not. Before a
/// `308` the bytes held are synced and checkpointed, so that after a `kill -9` a client re-sends at most the chunk
/// that was in flight.
extension IngestServer {
    static let sessionBusy = IngestProblem(503, "upload.session_busy", "Another request is using this upload session.")
        .adding(header: "Retry-After", "1")

    static func sessionUnknown(_ detail: String = "It expired or never existed; start a new upload.") -> IngestProblem {
        IngestProblem(404, "upload.session_unknown", "No such upload session.", detail: detail)
    }

    /// Takes up a session this process does not know from its journal in the spool directory (after a restart, or
    /// one that another instance started), held by the calling request.
    /// - Throws: 404 `upload.session_unknown` (no journal, or one that cannot be read: its files are removed),
    ///   503 `upload.session_busy` (another process holds it), 503 `server.spool_unavailable`.
    func adopt(_ id: String) async throws -> UploadSessions.Acquired {
        let journal = try openJournal(id)
        guard let record = journal.read(), !record.single else {
            logger.warning("a session journal cannot be read; the session is dropped", metadata: ["session": "\(id)"])
            unlink(spool.partPath(id))
            unlink(journal.path)
            journal.close()
            throw Self.sessionUnknown("Its record could not be read; start a new upload.")
        }
        if let outcome = record.outcome {
            journal.close()
            await sessions.remember(id, outcome)
            return .finished(outcome)
        }
        let session = UploadSession(id: id, record: record)
        session.journal = journal
        guard await sessions.adopt(session) else {
            // Another request of this process took it up first.
            journal.close()
            throw Self.sessionBusy
        }
        logger.info("session taken up from its journal", metadata: ["session": "\(id)", "object": "\(record.objectName)", "held": "\(record.held)"])
        return .open(session)
    }

    /// The session's journal, opened and locked.
    private func openJournal(_ id: String) throws -> SessionJournal {
        switch Result(catching: { () throws(SessionJournal.OpenError) in try SessionJournal.open(path: spool.journalPath(id)) }) {
        case let .success(journal?): return journal
        case .success(nil): throw Self.sessionUnknown()
        case .failure(.busy): throw Self.sessionBusy
        case let .failure(.io(error)):
            logger.error("cannot open a session journal", metadata: ["session": "\(id)", "error": "\(error)"])
            throw Self.spoolUnavailable
        }
    }

    /// Locks the session's journal for this request and brings the session up to date with it: the answer it
    /// ended with (returned: another instance ended it), or its checkpoint (bytes past it are cut off, the held
    /// bytes re-read for the checksums, a new verifier started).
    /// - Throws: 404 `upload.session_unknown` (its files are gone, or do not agree with the journal: removed),
    ///   503 `upload.session_busy`, 429 `upload.too_many_sessions` (no slot to hold its bytes).
    func attach(_ session: UploadSession) async throws -> Result<StoredObject, IngestProblem>? {
        if session.journal == nil {
            do {
                session.journal = try openJournal(session.id)
            } catch let problem as IngestProblem where problem.status == 404 {
                // Removed by another process (expired, swept): this process's copy goes too.
                session.closeSpool()
                await sessions.forget(session.id)
                throw problem
            }
        }
        guard let journal = session.journal else { throw Self.sessionUnknown() }
        guard journal.stamp != session.stamp || session.stamp == nil else { return nil }
        guard let record = journal.read() else {
            dropBroken(session, "its journal cannot be read")
            await sessions.forget(session.id)
            throw Self.sessionUnknown("Its record could not be read; start a new upload.")
        }
        if let outcome = record.outcome {
            session.closeSpool()
            journal.close()
            session.journal = nil
            await sessions.end(session.id, outcome)
            return outcome
        }
        session.closeSpool()
        session.total = record.total
        session.checkpointed = record.held
        session.checkpointedTotal = record.total
        if record.held > 0 {
            try await sessions.activate(session.id)
            let path = spool.partPath(session.id), verifier = self.verifier, label = session.objectName.text
            let resumed = await Result {
                try await blocking { try SpoolFile(resuming: path, held: record.held, crc32c: record.heldCRC32C, verifier: verifier, label: label) }
            }
            guard case let .success(file) = resumed else {
                dropBroken(session, "its spool file does not agree with its journal: \(resumed)")
                await sessions.forget(session.id)
                throw Self.sessionUnknown("The bytes it held were lost; start a new upload.")
            }
            session.spool = file
        } else {
            // Bytes of a first chunk that never reached a checkpoint.
            unlink(spool.partPath(session.id))
            await sessions.deactivate(session.id)
        }
        session.stamp = journal.stamp
        return nil
    }

    private func dropBroken(_ session: UploadSession, _ reason: String) {
        logger.warning("a session cannot be taken up; it is dropped", metadata: ["session": "\(session.id)", "reason": "\(reason)"])
        session.releaseSpool()
        unlink(spool.partPath(session.id))
        if let journal = session.journal {
            unlink(journal.path)
            journal.close()
        }
        session.journal = nil
    }

    /// Makes the bytes held durable and records them in the journal, if there is anything new to record.
    /// - Throws: 503 `server.spool_unavailable` (the spool file or the journal cannot be synced).
    func checkpoint(_ session: UploadSession) throws {
        guard session.remembered, let spool = session.spool, let journal = session.journal,
              spool.held != session.checkpointed || session.total != session.checkpointedTotal
        else { return }
        do {
            let (held, crc) = try spool.syncHeld()
            try journal.checkpoint(held: held, crc32c: crc, total: session.total)
            session.checkpointed = held
            session.checkpointedTotal = session.total
            session.stamp = journal.stamp
        } catch {
            logger.error("cannot checkpoint a session", metadata: ["session": "\(session.id)", "error": "\(error)"])
            throw Self.spoolUnavailable
        }
    }

    /// Ends a request's hold on a session: what it received is checkpointed (a chunk cut short keeps what arrived),
    /// the journal touched (the session's expiry counts from it) and unlocked.
    func detach(_ session: UploadSession) async {
        if let journal = session.journal {
            try? checkpoint(session)
            journal.touch()
            session.stamp = journal.stamp
            journal.close()
            session.journal = nil
        }
        await sessions.release(session.id)
    }

    /// Ends a session with its answer: recorded in its journal first (for late requests, here or at another
    /// instance; a single-request upload's journal is removed instead), then its spool file goes.
    func conclude(_ session: UploadSession, _ outcome: Result<StoredObject, IngestProblem>) async {
        if let journal = session.journal {
            if session.remembered {
                try? journal.recordOutcome(outcome)
                journal.touch()
            } else {
                unlink(journal.path)
            }
        }
        session.releaseSpool()
        if let journal = session.journal {
            session.stamp = journal.stamp
            journal.close()
            session.journal = nil
        }
        await sessions.end(session.id, outcome)
    }
}
