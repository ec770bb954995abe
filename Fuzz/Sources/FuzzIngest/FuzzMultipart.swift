import ContinuonPackIngest

// The multipart mode of FuzzIngest, for inputs that start with `multipart\n`: MultipartRelatedParser fed one body
// whole, one byte at a time, and in reads whose sizes come from the input. Any trap, or a difference between the
// three (metadata, media, refusal, completeness), or a broken invariant is a finding:
// - `onMetadata` is called at most once, before any media, with at most UploadMetadata.maxBytes;
// - media slices are never empty, and the media emitted never exceeds the bytes fed, nor `mediaBytes` its count;
// - after a refusal the parser refuses again.
//
// After the magic, one mode byte:
// - `c` (constructed): a boundary line, a read-sizes line, one byte choosing what follows the closing delimiter,
//   a 2-byte big-endian metadata length, the metadata, and the media (the rest). The harness builds the body the way
//   Google's client does; when neither part contains `CRLF--BOUNDARY` and the metadata fits, the parser must accept
//   it and return both parts exactly, holding back fewer bytes than the delimiter's length at every read.
// - anything else (raw): a Content-Type line, a read-sizes line, and the body (the rest).
//
// Read sizes: one per byte, cycled: 0 to 127 bytes as is (0 is an empty read), 128 to 255 as (v - 127) * 512.

let multipartMagic = Array("multipart\n".utf8)

struct MultipartOutcome: Equatable {
    var metadata: [UInt8]?
    var media: [UInt8] = []
    var status: Int?
    var code: String?
    var title: String?
    var complete = false
}

/// Where the media lies in a constructed body, and how many bytes the parser may hold back.
struct MediaSpan {
    var start: Int
    var end: Int
    var maxHeld: Int
}

func fuzzMultipart(_ input: [UInt8]) {
    guard let mode = input.first else { return }
    var rest = input.dropFirst()
    func line() -> [UInt8] {
        let end = rest.firstIndex(of: 0x0A) ?? rest.endIndex
        let text = Array(rest[..<end])
        rest = end < rest.endIndex ? rest[(end + 1)...] : rest[end...]
        return text
    }
    if mode == UInt8(ascii: "c") {
        let boundary = line()
        let sizes = line()
        guard rest.count >= 3 else { return }
        let suffixes = ["", "\r\n", "\r\nepilogue\r\n", " \t", " \t\r\n--" + String(decoding: boundary, as: UTF8.self) + "--"]
        let suffix = Array(suffixes[Int(rest[rest.startIndex]) % suffixes.count].utf8)
        let declared = Int(rest[rest.startIndex + 1]) << 8 | Int(rest[rest.startIndex + 2])
        rest = rest.dropFirst(3)
        let metadata = Array(rest.prefix(declared))
        let media = Array(rest.dropFirst(declared))
        let dashBoundary = Array("--".utf8) + boundary
        let body = dashBoundary + Array("\r\ncontent-type: application/json\r\n\r\n".utf8) + metadata + Array("\r\n".utf8)
            + dashBoundary + Array("\r\ncontent-type: application/octet-stream\r\n\r\n".utf8)
        let full = body + media + Array("\r\n".utf8) + dashBoundary + Array("--".utf8) + suffix
        let contentType = "multipart/related; boundary=\"" + String(decoding: boundary, as: UTF8.self) + "\""
        let delimiter = Array("\r\n".utf8) + dashBoundary
        // A backslash in the quoted boundary is an escape: the parser's boundary would differ from the body's.
        let valid = boundary.allSatisfy(isBoundaryCharacter) && !contains(metadata, delimiter) && !contains(media, delimiter)
            && metadata.count <= UploadMetadata.maxBytes
        let span = valid ? MediaSpan(start: body.count, end: body.count + media.count, maxHeld: delimiter.count - 1) : nil
        guard let outcome = compareSplits(contentType: contentType, body: full, sizes: sizes, span: span) else { return }
        if valid {
            precondition(outcome.status == nil && outcome.complete, "a valid body was refused")
            precondition(outcome.metadata == metadata && outcome.media == media, "a valid body's parts changed")
        }
    } else {
        let contentType = String(decoding: line(), as: UTF8.self)
        let sizes = line()
        _ = compareSplits(contentType: contentType, body: Array(rest), sizes: sizes, span: nil)
    }
}

/// Parses `body` whole, byte by byte (when short) and in reads of `sizes`; all must agree. Nil when the
/// Content-Type is refused.
func compareSplits(contentType: String, body: [UInt8], sizes: [UInt8], span: MediaSpan?) -> MultipartOutcome? {
    guard let whole = parseMultipart(contentType: contentType, body: body, reads: [body.count], span: span) else { return nil }
    if body.count <= 16_384 {
        let bytewise = parseMultipart(contentType: contentType, body: body, reads: Array(repeating: 1, count: body.count), span: span)
        precondition(bytewise == whole, "reading byte by byte changed the outcome")
    }
    var reads: [Int] = []
    var total = 0
    var index = 0
    if sizes.contains(where: { $0 != 0 }) {
        while total < body.count {
            let byte = sizes[index % sizes.count]
            index += 1
            let size = byte < 128 ? Int(byte) : (Int(byte) - 127) * 512
            reads.append(size)
            total += size
        }
    }
    let split = parseMultipart(contentType: contentType, body: body, reads: reads + [body.count], span: span)
    precondition(split == whole, "the read sizes changed the outcome")
    return whole
}

func parseMultipart(contentType: String, body: [UInt8], reads: [Int], span: MediaSpan?) -> MultipartOutcome? {
    guard var parser = try? MultipartRelatedParser(contentType: contentType) else { return nil }
    var outcome = MultipartOutcome()
    var fed = 0
    var refused = false
    body.withUnsafeBytes { all in
        for size in reads {
            let piece = UnsafeRawBufferPointer(rebasing: all[fed..<min(all.count, fed + size)])
            do {
                try parser.feed(piece, onMetadata: { bytes in
                    precondition(outcome.metadata == nil && outcome.media.isEmpty, "metadata twice or after media")
                    precondition(bytes.count <= UploadMetadata.maxBytes, "metadata over its limit")
                    outcome.metadata = bytes
                }, media: { slice in
                    precondition(!slice.isEmpty && outcome.metadata != nil, "an empty media slice, or media before metadata")
                    outcome.media.append(contentsOf: slice)
                })
            } catch let problem as IngestProblem {
                outcome.status = problem.status
                outcome.code = problem.code
                outcome.title = problem.title
                refused = true
            } catch {
                preconditionFailure("a foreign error from feed")
            }
            fed += piece.count
            precondition(outcome.media.count <= fed && parser.mediaBytes == UInt64(outcome.media.count))
            if let span, !refused, fed > span.start {
                // Never past the media, and never more than a delimiter's worth held back.
                let available = min(fed, span.end) - span.start
                precondition(outcome.media.count <= available, "media emitted beyond the media part")
                precondition(outcome.media.count + span.maxHeld >= available, "more than a delimiter held back")
            }
            if refused || fed == all.count { break }
        }
    }
    if refused {
        let again: Void? = try? [UInt8](repeating: 0x2D, count: 2).withUnsafeBytes {
            try parser.feed($0, onMetadata: { _ in }, media: { _ in })
        }
        precondition(again == nil, "a refused parser took more bytes")
    } else {
        do {
            try parser.finish()
        } catch {
            outcome.status = error.status
            outcome.code = error.code
            outcome.title = error.title
        }
    }
    outcome.complete = parser.isComplete
    if let metadata = outcome.metadata { precondition(metadata.count <= UploadMetadata.maxBytes) }
    return outcome
}

/// RFC 2046 `bchars` (digits, letters, `'()+_,-./:=?` and space), as the harness's own check.
func isBoundaryCharacter(_ byte: UInt8) -> Bool {
    (48...57).contains(byte) || (65...90).contains(byte) || (97...122).contains(byte) || "'()+_,-./:=? ".utf8.contains(byte)
}

func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty, haystack.count >= needle.count else { return false }
    for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
        if haystack[start..<(start + needle.count)].elementsEqual(needle) { return true }
    }
    return false
}
