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
    /// - Throws: 404 `upload.session_unknown` (no journal, or one this service cannot read: left to the sweep),
    ///   503 `upload.session_busy` (another process holds it), 503 `server.spool_unavailable`.
    func adopt(_ id: String) async throws -> UploadSessions.Acquired {
        let journal = try openJournal(id)
        let record: SessionRecord
        do {
            record = try await read(journal, of: id)
        } catch {
            journal.close()
            throw error
        }
        if let outcome = record.outcome {
            journal.close()
            await sessions.remember(id, outcome)
            return .finished(outcome)
        }
        let session = UploadSession(id: id, record: record)
        session.journal = journal
        session.adoptedRecord = record
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

    /// What a session's journal says (read on the thread pool).
    /// - Throws: 503 `server.spool_unavailable` (it cannot be read now), 404 `upload.session_unknown` (this service
    ///   did not write it, or it is a single-request upload's).
    private func read(_ journal: SessionJournal, of id: String) async throws -> SessionRecord {
        let read = await Result { try await blocking { try journal.read() } }
        guard case let .success(readRecord) = read else {
            logger.error("cannot read a session journal", metadata: ["session": "\(id)", "error": "\(read)"])
            throw Self.spoolUnavailable
        }
        guard let record = readRecord, !record.single else {
            logger.warning("a session journal cannot be read; the session cannot go on", metadata: ["session": "\(id)"])
            throw Self.sessionUnknown("Its record could not be read; start a new upload.")
        }
        return record
    }

    /// Runs `body` again while it answers `503 upload.session_busy`, for up to two seconds: a client that resumes
    /// right after its connection was cut arrives before the cut request (here or at another instance) has let go.
    func whileBusy<T>(_ body: () async throws -> T) async throws -> T {
        for _ in 0..<40 {
            do {
                return try await body()
            } catch let problem as IngestProblem where problem.code == "upload.session_busy" {
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        return try await body()
    }

    /// Locks the session's journal for this request and brings the session up to date with it: the answer it
    /// ended with (returned: another instance ended it), or its checkpoint. This process's copy is used as it is
    /// only while the journal and the spool file are exactly as this process left them; if another process appended
    /// to the same file after this process's last checkpoint, only the new bytes are read; otherwise the session is
    /// rebuilt from its checkpoint (bytes past it cut off, the held bytes re-read for the checksums, a new verifier).
    /// - Throws: 404 `upload.session_unknown` (its bytes are lost: its files are removed), 503
    ///   `upload.session_busy`, 429 `upload.too_many_sessions` (no slot to hold its bytes), 503
    ///   `server.spool_unavailable` (a failure that may pass: the files are kept).
    func attach(_ session: UploadSession) async throws -> Result<StoredObject, IngestProblem>? {
        if session.journal == nil {
            do {
                session.journal = try await whileBusy { try openJournal(session.id) }
            } catch let problem as IngestProblem where problem.status == 404 {
                // Removed by another process (expired, swept): this process's copy goes too.
                session.closeSpool()
                await sessions.forget(session.id)
                throw problem
            }
        }
        guard let journal = session.journal else { throw Self.sessionUnknown() }
        if let known = session.stamp, known == journal.stamp {
            if let spool = session.spool, spool.isCurrent { return nil }
            if session.spool == nil && session.checkpointed == 0 {
                // Bytes of a first chunk that never reached a checkpoint (a process died in it).
                unlink(spool.partPath(session.id))
                return nil
            }
        }
        session.stamp = nil // until the session agrees with its journal again
        let adopted = session.adoptedRecord
        session.adoptedRecord = nil
        let record: SessionRecord
        do {
            if let adopted { record = adopted } else { record = try await read(journal, of: session.id) }
        } catch let problem as IngestProblem where problem.status == 404 {
            session.closeSpool()
            session.releaseJournal()
            await sessions.forget(session.id)
            throw problem
        }
        if let outcome = record.outcome {
            session.closeSpool()
            session.releaseJournal()
            await sessions.end(session.id, outcome)
            return outcome
        }
        // Re-reading held bytes may take long (GiB): on a thread of its own, not the pool that syncs checkpoints.
        if let file = session.spool, file.held == session.checkpointed, record.held >= file.held,
           (try? await runOnOwnThread({ try file.catchUp(to: record.held, crc32c: record.heldCRC32C) })) != nil {
            session.takeCheckpoint(of: record)
            session.stamp = journal.stamp
            return nil
        }
        session.closeSpool()
        session.takeCheckpoint(of: record)
        if record.held > 0 {
            try await activate(session)
            let path = spool.partPath(session.id), verifier = self.verifier, label = session.objectName.text
            let resumed = await Result {
                try await runOnOwnThread { try SpoolFile(resuming: path, held: record.held, crc32c: record.heldCRC32C, verifier: verifier, label: label) }
            }
            switch resumed {
            case let .success(file):
                session.spool = file
                logger.info("session rebuilt from its checkpoint", metadata: ["session": "\(session.id)", "held": "\(record.held)"])
            case let .failure(lost as SpoolLost):
                logger.warning("a session's bytes are lost; the session is dropped", metadata: ["session": "\(session.id)", "reason": "\(lost.reason)"])
                unlink(spool.partPath(session.id))
                unlink(journal.path)
                session.releaseJournal()
                await sessions.forget(session.id)
                throw Self.sessionUnknown("The bytes it held were lost; start a new upload.")
            case let .failure(error):
                await sessions.deactivate(session.id)
                logger.error("cannot take a session up", metadata: ["session": "\(session.id)", "error": "\(error)"])
                throw Self.spoolUnavailable
            }
        } else {
            unlink(spool.partPath(session.id))
            await sessions.deactivate(session.id)
        }
        session.stamp = journal.stamp
        return nil
    }

    /// Creates a new session's journal (its header), open and locked.
    /// - Throws: 503 `server.spool_unavailable`.
    func createJournal(for session: UploadSession) async throws -> SessionJournal {
        do {
            return try await blocking { [spool] in try SessionJournal.create(path: spool.journalPath(session.id), record: session.record) }
        } catch {
            logger.error("cannot create a session journal", metadata: ["error": "\(error)"])
            throw Self.spoolUnavailable
        }
    }

    /// Counts the session against `--max-sessions`; a session evicted to make room has its end recorded in its
    /// journal (unless another instance holds it or moved it on: then it is not this process's to end).
    func activate(_ session: UploadSession) async throws {
        guard let eviction = try await sessions.activate(session.id) else { return }
        let spool = self.spool
        let recorded = (try? await blocking { spool.recordEnd(eviction.id, stamp: eviction.stamp, UploadSessions.Eviction.outcome) }) ?? false
        if recorded { await sessions.remember(eviction.id, UploadSessions.Eviction.outcome) }
        logger.info("session evicted to make room", metadata: ["session": "\(eviction.id)", "recorded": "\(recorded)"])
    }

    /// Makes the bytes held durable and records them in the journal, if there is anything new to record. The
    /// first checkpoint also syncs the spool directory, so that the session's files survive a power loss.
    /// - Throws: 503 `server.spool_unavailable` (the spool file or the journal cannot be synced; the session is
    ///   then taken up from its last checkpoint at its next request).
    func checkpoint(_ session: UploadSession) async throws {
        guard session.remembered, let journal = session.journal,
              (session.spool?.held ?? 0) != session.checkpointed || session.total != session.checkpointedTotal
        else { return }
        let file = session.spool, first = session.checkpointed == 0, total = session.total, directory = spool.path
        let synced = await Result {
            try await blocking { () -> (UInt64, JournalStamp?) in
                // No byte yet (a total named by a status query): the CRC-32C of nothing is 0.
                let (held, crc) = try file?.syncHeld() ?? (0, 0)
                if first { try FileIO.syncDirectory(directory) }
                try journal.checkpoint(held: held, crc32c: crc, total: total)
                return (held, journal.stamp)
            }
        }
        guard case let .success((held, stamp)) = synced else {
            logger.error("cannot checkpoint a session", metadata: ["session": "\(session.id)", "error": "\(synced)"])
            session.rebuildAtNextRequest()
            throw Self.spoolUnavailable
        }
        session.checkpointed = held
        session.checkpointedTotal = total
        session.stamp = stamp
    }

    /// Ends a request's hold on a session: what it received is checkpointed (a chunk cut short keeps what arrived),
    /// the journal touched (the session's expiry counts from it) and unlocked.
    func detach(_ session: UploadSession) async {
        if let journal = session.journal {
            try? await checkpoint(session)
            journal.touch()
            session.releaseJournal()
        }
        await sessions.release(session.id)
    }

    /// Ends a session with its answer: recorded in its journal and synced first (for late requests, here or at
    /// another instance; a single-request upload's journal is removed instead), then its spool file goes.
    func conclude(_ session: UploadSession, _ outcome: Result<StoredObject, IngestProblem>) async {
        var recorded = true
        if let journal = session.journal {
            if session.remembered {
                let written = await Result { try await blocking { try journal.recordOutcome(outcome) } }
                if case .failure = written {
                    recorded = false
                    logger.error("cannot record a session's answer", metadata: ["session": "\(session.id)", "error": "\(written)"])
                }
                journal.touch()
            } else {
                unlink(journal.path)
            }
        }
        if recorded {
            session.releaseSpool()
        } else {
            // Without its answer on disk the session must stay resumable elsewhere: its bytes stay (a later request
            // there finishes it again, to the same answer); the sweep removes them when it expires.
            session.closeSpool()
        }
        session.releaseJournal()
        await sessions.end(session.id, outcome)
    }
}
