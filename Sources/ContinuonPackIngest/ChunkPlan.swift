/// What the service does with one `PUT` of a resumable session, decided from numbers alone (no I/O): the session's
/// state, the request's `Content-Range` and `Content-Length`, and the limits. Every sum and difference is checked;
/// the size limit applies to the bytes held, whether or not a total was ever declared.
public struct ChunkPlan: Sendable, Equatable {
    public enum Action: Sendable, Equatable {
        /// A status query: no body expected; answer with what is held.
        case statusQuery
        /// The range starts after the bytes held (a gap) or ends within them (a repeat): keep nothing, read and
        /// discard the body (`length` bytes), answer with what is held.
        case discard(length: UInt64)
        /// Drop the first `skip` bytes of the body (already held), then append `take` bytes.
        case append(skip: UInt64, take: UInt64)
    }

    public let action: Action
    /// The upload's total once this request is taken into account.
    public let total: UInt64?

    /// Chunks other than the last are multiples of this (the Cloud Storage rule).
    public static let granularity: UInt64 = 256 * 1024

    /// - Parameters:
    ///   - held: bytes the session holds.
    ///   - knownTotal: the total declared earlier (`X-Upload-Content-Length` or an earlier range), if any.
    ///   - maxBytes: the largest package accepted.
    ///   - range: the request's `Content-Range`.
    ///   - contentLength: the request's `Content-Length`, if sent.
    /// - Throws: 400 `upload.range_invalid` or `upload.chunk_size_invalid`, 413 `upload.too_large` (ends the session).
    public init(held: UInt64, knownTotal: UInt64?, maxBytes: UInt64, range: ContentRange, contentLength: UInt64?)
        throws(IngestProblem)
    {
        var total = knownTotal
        if let declared = range.total {
            if let knownTotal, knownTotal != declared {
                throw .rangeInvalid("Content-Range names another total than the upload's.",
                                    detail: "\(declared) bytes, but the upload was declared as \(knownTotal).")
            }
            guard declared <= maxBytes else { throw .tooLarge(limit: maxBytes) }
            guard declared >= held else {
                throw .rangeInvalid("Content-Range names a total smaller than the bytes already held.",
                                    detail: "The service holds \(held) bytes.")
            }
            total = declared
        }
        guard let first = range.first, let last = range.last else {
            guard (contentLength ?? 0) == 0 else {
                throw IngestProblem(400, "upload.range_invalid", "A status query (no byte range) carries no body.")
                    .closingConnection()
            }
            action = .statusQuery
            self.total = total
            return
        }
        // last < maxBytes <= UInt64.max, so last + 1 cannot overflow below.
        guard last < maxBytes else { throw .tooLarge(limit: maxBytes) }
        let end = last + 1
        let length = end - first
        if let total, last >= total {
            throw .rangeInvalid("The chunk extends past the upload's size.", detail: "The upload is \(total) bytes.")
        }
        if let contentLength, contentLength != length {
            throw IngestProblem.rangeInvalid(
                "Content-Length does not match Content-Range.",
                detail: "The range covers \(length) bytes; Content-Length is \(contentLength)."
            ).closingConnection()
        }
        let isFinal = total.map { end == $0 } ?? false
        guard isFinal || length % Self.granularity == 0 else {
            throw IngestProblem(400, "upload.chunk_size_invalid", "Chunks other than the last must be multiples of 256 KiB.")
                .closingConnection()
        }
        if first > held || end <= held {
            action = .discard(length: length)
        } else {
            action = .append(skip: held - first, take: end - held)
        }
        self.total = total
    }
}

/// Splits a request body, as its buffers arrive, into the bytes to drop (already held), to append, and any excess
/// beyond the range (a protocol error). Pure arithmetic on `Int` buffer sizes and `UInt64` counters.
public struct ChunkReceiver: Sendable, Equatable {
    public private(set) var skip: UInt64
    public private(set) var take: UInt64

    public init(skip: UInt64, take: UInt64) {
        self.skip = skip
        self.take = take
    }

    public struct Split: Sendable, Equatable {
        /// Leading bytes of the buffer to drop.
        public var drop: Int
        /// Then this many bytes to append.
        public var write: Int
        /// Then this many bytes that overrun the range.
        public var excess: Int
    }

    /// Where the next `count` body bytes go.
    public mutating func accept(count: Int) -> Split {
        let bytes = UInt64(max(0, count))
        let drop = min(skip, bytes)
        skip -= drop
        let write = min(take, bytes - drop)
        take -= write
        let excess = bytes - drop - write
        return Split(drop: Int(drop), write: Int(write), excess: Int(excess))
    }

    /// Every byte of the range arrived.
    public var isComplete: Bool { skip == 0 && take == 0 }
}
