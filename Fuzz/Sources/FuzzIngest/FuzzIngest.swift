import ContinuonPackIngest

// Drives the ingestion protocol's client-facing parsing and chunk arithmetic with in-memory requests: the input is
// a sequence of requests separated by NUL bytes; in each, newline-separated fields are the Content-Range header,
// the Content-Length header, the query string, the Host header, an object path segment, and the rest the
// initiation metadata JSON. One simulated session carries the bytes held and the total across the requests, with
// a 4 MiB size limit. Any trap (overflow, index out of range) or broken invariant is a finding. An input that
// starts with `multipart\n` drives the multipart/related body parser instead (FuzzMultipart.swift).

let maxBytes: UInt64 = 4 << 20

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzIngest(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if bytes.starts(with: multipartMagic) {
        fuzzMultipart(Array(bytes.dropFirst(multipartMagic.count)))
        return 0
    }
    var held: UInt64 = 0
    var total: UInt64?
    for slice in bytes.split(separator: 0, omittingEmptySubsequences: false).prefix(64) {
        let request = Array(slice)
        let fields = request.split(separator: 0x0A, maxSplits: 5, omittingEmptySubsequences: false)
        func field(_ index: Int) -> String? {
            index < fields.count ? String(decoding: fields[index], as: UTF8.self) : nil
        }
        _ = try? UploadQuery(rawQuery: field(2))
        if let host = field(3) { _ = HostAuthority.isValid(host) }
        if let segment = field(4), let name = PackageObjectName(percentEncoded: segment) {
            precondition(name.text.utf8.count == 69 && !name.text.contains("/") && !name.text.contains(".."))
        }
        if fields.count > 5 { _ = try? UploadMetadata(json: Array(fields[5])) }

        guard let range = try? ContentRange(header: field(0)) else { continue }
        if let first = range.first, let last = range.last {
            precondition(first <= last)
            if let declared = range.total { precondition(last < declared) }
        }
        let contentLength = field(1).flatMap { StrictDecimal.parse($0) }
        guard let plan = try? ChunkPlan(held: held, knownTotal: total, maxBytes: maxBytes, range: range, contentLength: contentLength)
        else { continue }
        if let newTotal = plan.total {
            precondition(newTotal <= maxBytes && newTotal >= held)
            if let total { precondition(total == newTotal) }
        }
        total = plan.total
        guard case let .append(skip, take) = plan.action else { continue }
        precondition(take > 0 && held + take <= maxBytes)
        // The body arrives in buffers whose sizes come from the request's own bytes.
        var receiver = ChunkReceiver(skip: skip, take: take)
        var written: UInt64 = 0
        let length = skip + take
        var sent: UInt64 = 0
        var index = 0
        while sent < length + 3 {
            let piece = UInt64(request.isEmpty ? 4096 : Int(request[index % request.count]) * 4096 + 4096)
            index += 1
            let count = min(piece, length + 3 - sent)
            let split = receiver.accept(count: Int(count))
            precondition(split.drop >= 0 && split.write >= 0 && split.excess >= 0)
            precondition(UInt64(split.drop + split.write + split.excess) == count)
            written += UInt64(split.write)
            sent += count
        }
        precondition(receiver.isComplete && written == take)
        held += written
        precondition(held <= maxBytes)
        if let total { precondition(held <= total) }
    }
    return 0
}
