import ContinuonPack
import ContinuonPackIngest
import Hummingbird
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// Single-request uploads, as Google's clients send every object of up to 8 MiB (`uploadType=multipart`) and as
/// `curl` users do (`uploadType=media`): the body is verified while it streams in, exactly as a resumable
/// session's chunks are (a spool file, the fail-fast verifier, the size limit, the same codes), and answered with
/// the object resource. Internally each is a session that no client can address and whose outcome is not kept.
extension IngestServer {
    /// The multipart framing's own bytes a body may add to the package: the metadata part and the delimiters.
    static let multipartOverhead = UInt64(UploadMetadata.maxBytes) + 16 * 1024

    /// `uploadType=media&name=…`: the body is the object.
    func receiveMedia(_ request: Request, query: UploadQuery) async throws -> Response {
        try checkLength(request, overhead: 0)
        let name = try uploadObjectName(query: query, metadata: UploadMetadata())
        let session = try await openSingle(name, metadata: UploadMetadata())
        return try await runSingle(session) {
            var iterator = request.body.makeAsyncIterator()
            while let buffer = try await nextBuffer(&iterator) {
                guard buffer.readableBytes > 0 else { continue }
                let spool = try await spool(of: session)
                try buffer.withUnsafeReadableBytes { try hold($0, in: session, spool: spool) }
            }
        }
    }

    /// `uploadType=multipart`: a `multipart/related` body, the JSON metadata (with the name) then the object.
    func receiveMultipart(_ request: Request, query: UploadQuery) async throws -> Response {
        try checkLength(request, overhead: Self.multipartOverhead)
        var parser = try MultipartRelatedParser(contentType: request.headers[.contentType])
        var iterator = request.body.makeAsyncIterator()
        var session: UploadSession?
        do {
            while let buffer = try await nextBuffer(&iterator) {
                // The parser hands over the metadata before any media byte, possibly both from this buffer: the
                // media is copied out (at most one body buffer) while the session is opened.
                var metadataBytes: [UInt8]?
                var media: [[UInt8]] = []
                try buffer.withUnsafeReadableBytes { bytes in
                    try parser.feed(bytes, onMetadata: { metadataBytes = $0 }, media: { media.append(Array($0)) })
                }
                if let metadataBytes {
                    let metadata = try UploadMetadata(json: metadataBytes)
                    let name = try uploadObjectName(query: query, metadata: metadata)
                    session = try await openSingle(name, metadata: metadata)
                }
                guard let session, !media.isEmpty else { continue }
                let spool = try await spool(of: session)
                for part in media {
                    try part.withUnsafeBytes { try hold($0, in: session, spool: spool) }
                }
            }
            try parser.finish()
        } catch let problem as IngestProblem {
            guard let session else { throw problem.closingConnection() }
            throw await end(session, problem.closingConnection())
        } catch {
            if let session { await abandon(session) }
            throw error
        }
        guard let session else {
            throw IngestProblem(400, "upload.multipart_invalid", "The multipart body has no metadata part.")
        }
        return try await runSingle(session) {}
    }

    /// Refuses a body whose `Content-Length` is not a number or is over the size limit (plus `overhead`).
    private func checkLength(_ request: Request, overhead: UInt64) throws {
        guard let text = request.headers[.contentLength] else { return }
        guard let length = StrictDecimal.parse(text) else {
            throw IngestProblem(400, "upload.length_invalid", "Content-Length is not a decimal number of bytes.").closingConnection()
        }
        let (limit, overflow) = configuration.maxPackageBytes.addingReportingOverflow(overhead)
        guard overflow || length <= limit else {
            throw IngestProblem(413, "upload.too_large", "The package is larger than this service accepts.",
                                detail: "The limit is \(configuration.maxPackageBytes) bytes.").closingConnection()
        }
    }

    /// A session for one request: refused at once when the object exists (create-only), held by this request.
    private func openSingle(_ name: PackageObjectName, metadata: UploadMetadata) async throws -> UploadSession {
        if try await existingObject(name) != nil {
            logger.info("upload refused: object exists", metadata: ["object": "\(name)"])
            throw IngestProblem(412, "upload.object_exists", "The object already exists; this service only creates objects.")
                .closingConnection()
        }
        let session = UploadSession(id: Self.newSessionID(), objectName: name, total: nil, metadata: metadata, remembered: false)
        // A journal held for the whole request marks its spool file as in use for other instances' sweeps.
        session.journal = try await createJournal(for: session)
        do {
            try await sessions.add(session)
            guard case .open = try await sessions.acquire(session.id) else {
                throw IngestProblem(500, "server.internal", "The service failed; the failure is logged.")
            }
        } catch {
            unlink(spool.journalPath(session.id))
            session.releaseJournal()
            throw error
        }
        logger.info("upload started", metadata: ["object": "\(name)", "session": "\(session.id)", "mode": "single request"])
        return session
    }

    /// Runs `receive` (which holds the body's bytes), then takes the verdict and commits; whatever happens, the
    /// session is gone afterwards (a failure the client could resume from in a resumable session ends it here: a
    /// single request cannot be resumed).
    private func runSingle(_ session: UploadSession, _ receive: () async throws -> Void) async throws -> Response {
        do {
            try await receive()
        } catch let problem as IngestProblem {
            throw await end(session, problem.closingConnection())
        } catch {
            await abandon(session)
            throw error
        }
        session.total = session.received
        let outcome = await Result { try await finish(session) }
        await abandon(session)
        return try outcome.get()
    }

    /// Appends body bytes to the session's spool: the size limit on what is held, and the verifier's early
    /// refusal (envelope, signature, manifest) after every buffer.
    private func hold(_ bytes: UnsafeRawBufferPointer, in session: UploadSession, spool: SpoolFile) throws {
        let (after, overflow) = session.received.addingReportingOverflow(UInt64(bytes.count))
        guard !overflow, after <= configuration.maxPackageBytes else {
            throw IngestProblem(413, "upload.too_large", "The package is larger than this service accepts.",
                                detail: "The limit is \(configuration.maxPackageBytes) bytes.")
        }
        do {
            try spool.append(bytes)
        } catch {
            logger.error("cannot write a spool file", metadata: ["session": "\(session.id)"])
            throw Self.spoolUnavailable
        }
        if let verdict = spool.verification.earlyVerdict, !verdict.valid {
            throw IngestProblem(refusing: verdict)
        }
    }

    /// Ends a single-request session without an answer to keep: its spool and slot are given back.
    private func abandon(_ session: UploadSession) async {
        await conclude(session, .failure(IngestProblem(500, "server.internal", "abandoned")))
    }
}
