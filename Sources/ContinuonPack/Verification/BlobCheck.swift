import Glibc

/// Receives the bytes of each blob the manifest lists, in archive order, during verification's single pass
/// (promotion writes them into training storage as they are checked; no second reader). Called only for a member
/// whose path passed the format's rules and matched its listing with the listed size, and only while the report
/// holds no failure. `endBlob` means the blob's bytes match the manifest, not that the package is valid: the
/// archive digest, the tar's end and the outer structure are checked after the last blob, and a blob that fails
/// gets no `endBlob`. A consumer must not publish anything before `verify` returns a report that says `valid`.
public protocol BlobSink: AnyObject {
    func beginBlob(_ blob: BlobDescriptor) throws
    func blobBytes(_ bytes: UnsafeRawBufferPointer) throws
    /// The blob's bytes ended and its SHA-256 matched the manifest.
    func endBlob(_ blob: BlobDescriptor) throws
}

extension VerificationRun {
    /// A sink's error leaves the verification as an I/O error (the one kind every layer passes up untouched).
    private func feed(_ work: () throws -> Void) throws {
        do {
            try work()
        } catch let error as ContinuonPackError where error.code == .ioError {
            throw error
        } catch {
            throw ContinuonPackError(.ioError, "The blob consumer failed: \(error)")
        }
    }

    mutating func checkBlobs(
        _ inner: ArchiveReader, source: AuditedSource, manifest: Manifest
    ) throws {
        let blobs = manifest.blobs
        var matcher = BlobMatcher(blobs)
        var next = 0
        // The first 20 blob failures are listed, and past them the first of each code not listed yet (so that every
        // code found appears); the others are counted in errors_omitted, whichever way the walk ends.
        var listed = 0
        var listedCodes: Set<ContinuonPackError.Code> = []
        var omitted = 0
        defer { if report.outcomes[.blobs] == .failed { report.omittedFailures += omitted } }
        func note(_ error: ContinuonPackError) {
            if listed < maxListed || !listedCodes.contains(error.code) {
                report.fail(.blobs, error)
                listedCodes.insert(error.code)
                listed += 1
            } else {
                report.outcomes[.blobs] = .failed
                omitted += 1
            }
        }
        // One hashing context for every blob.
        let hasher = SHA256Hasher()
        while case let .entry(info) = try inner.next() {
            guard let member = bind(info, auditor: &source.auditor, layer: .archive) else { return }
            if let problem = FormatRules.pathProblem(member.path) {
                // Not trusted further (libarchive may read such a name differently): matched, never read.
                let path = String(decoding: member.path, as: UTF8.self)
                note(ContinuonPackError(.blobPath, "The archive member \(quoted(path)) has an invalid path: \(problem)."))
                _ = matcher.match(member.path, expected: next)
                continue
            }
            guard info.isRegularFile, !info.isSparse, !info.hasExtendedAttributes else {
                let path = String(decoding: member.path, as: UTF8.self)
                note(ContinuonPackError(.blobType, "The archive member \(quoted(path)) is not a plain regular file."))
                continue
            }
            let index: Int
            switch matcher.match(member.path, expected: next) {
            case .unlisted:
                let path = String(decoding: member.path, as: UTF8.self)
                note(ContinuonPackError(.blobUnexpected, "The archive member \(quoted(path)) is not in the manifest."))
                continue
            case .allMatched:
                let path = String(decoding: member.path, as: UTF8.self)
                note(ContinuonPackError(.blobDuplicate, "The archive holds \(quoted(path)) more than once."))
                continue
            case let .listing(found):
                index = found
            }
            let blob = blobs[index]
            // Out of order: a member that belongs before one already read. (A skipped blob is reported missing.)
            if index < next {
                note(ContinuonPackError(.blobOrder, "The archive member \(quoted(blob.path)) comes after a blob the manifest lists later."))
            }
            next = max(next, index + 1)
            let size = info.size ?? -1
            if size != Int64(blob.size) {
                note(ContinuonPackError(.blobSize, "\(quoted(blob.path)) is \(size) bytes; the manifest says \(blob.size)."))
                continue
            }
            let consumer = report.failures.isEmpty ? sink : nil
            if let consumer { try feed { try consumer.beginBlob(blob) } }
            var framer = verifier.checkTFRecords && TFRecordFramer.applies(to: blob.path)
                ? TFRecordFramer(path: quoted(blob.path), size: blob.size) : nil
            var total: Int64 = 0
            while true {
                let block = try inner.readBlock()
                if block.isEmpty { break }
                hasher.update(block)
                framer?.update(block)
                if let consumer { try feed { try consumer.blobBytes(block) } }
                total += Int64(block.count)
            }
            guard total == size else {
                report.fail(.archive, ContinuonPackError(.archiveCorrupt, "\(quoted(blob.path)) is truncated in the archive."))
                return
            }
            let digest = hasher.finalizeAndReset()
            if !digest.matches(hex: blob.sha256) {
                note(ContinuonPackError(.blobDigest, "The SHA-256 of \(quoted(blob.path)) is \(digest.hex); the manifest says \(blob.sha256)."))
            } else if let problem = framer?.finish() {
                note(problem)
            } else if let consumer, report.failures.isEmpty {
                try feed { try consumer.endBlob(blob) }
            }
        }
        for (index, blob) in blobs.enumerated() where !matcher.isMatched(index) {
            note(ContinuonPackError(.blobMissing, "The manifest lists \(quoted(blob.path)) but the archive does not hold it."))
        }
        report.hold(.blobs)
    }
}

/// Pairs each archive member with the manifest listing it stands for: the first listing of its path (by bytes) not
/// yet matched. Manifests are sorted with no path twice, so the listing is almost always the one after the last
/// match; otherwise a binary search over the listings ordered by path finds it. No dictionary, no per-blob key.
struct BlobMatcher {
    enum Match: Equatable {
        /// The listing the member takes.
        case listing(Int)
        /// The path is not in the manifest.
        case unlisted
        /// Every listing of the path was matched already.
        case allMatched
    }

    /// Every path's UTF-8 bytes, one after the other: listing `i` is `bytes[starts[i]..<starts[i + 1]]`.
    private let bytes: [UInt8]
    private let starts: [Int]
    /// Listing indices sorted by path, then index; nil when that is the manifest's own order, each path once.
    private let sorted: [Int]?
    private var matched: [Bool]

    init(_ blobs: [BlobDescriptor]) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(blobs.reduce(0) { $0 + $1.path.utf8.count })
        var starts = [0]
        starts.reserveCapacity(blobs.count + 1)
        for blob in blobs {
            bytes.append(contentsOf: blob.path.utf8)
            starts.append(bytes.count)
        }
        func compare(_ a: Int, _ b: Int) -> Int {
            bytes.withUnsafeBufferPointer { all in
                Self.compare(UnsafeBufferPointer(rebasing: all[starts[a]..<starts[a + 1]]),
                             UnsafeBufferPointer(rebasing: all[starts[b]..<starts[b + 1]]))
            }
        }
        let strictlyAscending = blobs.indices.dropFirst().allSatisfy { compare($0 - 1, $0) < 0 }
        // Stable: equal paths keep their manifest order, so the first unmatched listing comes first.
        sorted = strictlyAscending ? nil : blobs.indices.sorted { a, b in
            let order = compare(a, b)
            return order < 0 || (order == 0 && a < b)
        }
        self.bytes = bytes
        self.starts = starts
        matched = [Bool](repeating: false, count: blobs.count)
    }

    func isMatched(_ index: Int) -> Bool { matched[index] }

    /// Matches `path` (raw bytes) to its listing and marks it; `expected` is the listing the member should be in
    /// manifest order (tried first).
    mutating func match(_ path: [UInt8], expected: Int) -> Match {
        if sorted == nil, expected < matched.count, compare(path, expected) == 0 {
            return take(expected)
        }
        // The first position in `order` whose path is not below `path`.
        let count = matched.count
        var low = 0
        var high = count
        while low < high {
            let middle = (low + high) / 2
            if compare(path, listing(at: middle)) > 0 { low = middle + 1 } else { high = middle }
        }
        var position = low
        var found = false
        while position < count, compare(path, listing(at: position)) == 0 {
            found = true
            if !matched[listing(at: position)] { return take(listing(at: position)) }
            position += 1
        }
        return found ? .allMatched : .unlisted
    }

    private mutating func take(_ index: Int) -> Match {
        if matched[index] { return .allMatched }
        matched[index] = true
        return .listing(index)
    }

    private func listing(at position: Int) -> Int { sorted?[position] ?? position }

    /// Byte order of `path` and listing `index`'s path.
    private func compare(_ path: [UInt8], _ index: Int) -> Int {
        path.withUnsafeBufferPointer { path in
            bytes.withUnsafeBufferPointer { all in
                Self.compare(path, UnsafeBufferPointer(rebasing: all[starts[index]..<starts[index + 1]]))
            }
        }
    }

    /// Byte order, a shorter prefix first: negative, zero or positive.
    private static func compare(_ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>) -> Int {
        let common = min(a.count, b.count)
        if common > 0, let x = a.baseAddress, let y = b.baseAddress {
            let order = memcmp(x, y, common)
            if order != 0 { return Int(order) }
        }
        return a.count - b.count
    }
}
