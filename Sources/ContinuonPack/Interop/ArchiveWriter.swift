import CArchive
import CContinuonSystem

/// Receives the archive bytes libarchive produces and counts them. With a hash pipeline, the bytes are gathered
/// in the pipeline's buffers, written to the file a whole buffer at a time (libarchive hands out 10 KiB blocks)
/// and hashed on the pipeline's thread; without one, each block is written as it comes.
final class HashingFileSink {
    let file: FileDescriptor
    let pipeline: HashPipeline?
    let stream = HashPipeline.Stream()
    private var lane: HashPipeline.Lane?
    /// Where in the file the archive starts.
    let origin: UInt64
    /// Archive bytes in this range (relative to the archive's start) are not written: the file already holds them.
    let keep: Range<UInt64>?
    private(set) var byteCount: UInt64 = 0
    /// Archive bytes handed to the file so far.
    private var writtenCount: UInt64 = 0
    /// Archive bytes whose writeback was started (see `writeOut`).
    private var kickedCount: UInt64 = 0
    /// Writeback is started every this many bytes.
    static let writebackInterval: UInt64 = 8 << 20
    var failure: (any Error)?

    init(file: FileDescriptor, pipeline: HashPipeline?, origin: UInt64, keep: Range<UInt64>?) {
        self.file = file
        self.pipeline = pipeline
        self.origin = origin
        self.keep = keep
        // The lane lives exactly as long as this sink (the pipeline holds it weakly), so `unowned` is safe.
        lane = pipeline?.makeLane { [unowned self] bytes in self.writeOut(bytes) }
    }

    func write(_ buffer: UnsafeRawBufferPointer) -> Bool {
        if let pipeline, let lane {
            pipeline.update(stream, buffer, in: lane)
        } else {
            writeOut(buffer)
        }
        byteCount += UInt64(buffer.count)
        return failure == nil
    }

    /// Writes what is still gathered and queues the end of the digest; the caller drains the pipeline.
    func finish() {
        guard let pipeline, let lane else { return }
        pipeline.finish(stream, in: lane)
        pipeline.flush(lane)
    }

    /// Writes the next archive bytes to the file, except the parts inside `keep`. The first failure sticks.
    private func writeOut(_ buffer: UnsafeRawBufferPointer) {
        guard failure == nil else { return }
        let start = writtenCount
        let end = start + UInt64(buffer.count)
        writtenCount = end
        do {
            if let keep, keep.overlaps(start..<end) {
                if start < keep.lowerBound {
                    try file.writeAll(UnsafeRawBufferPointer(rebasing: buffer[0..<Int(keep.lowerBound - start)]), at: origin + start)
                }
                if end > keep.upperBound {
                    let from = Int(keep.upperBound - start)
                    try file.writeAll(UnsafeRawBufferPointer(rebasing: buffer[from...]), at: origin + keep.upperBound)
                }
            } else {
                try file.writeAll(buffer, at: origin + start)
            }
        } catch {
            failure = error
            return
        }
        // The package is fsynced at the end; starting the writeback of each written stretch now lets the disk work
        // while we pack, instead of the whole archive waiting in the page cache for that fsync. Advisory: an
        // error here is not a write error (fsync reports those).
        if end - kickedCount >= Self.writebackInterval {
            _ = csystem_start_writeback(file.raw, Int64(origin + kickedCount), Int64(end - kickedCount))
            kickedCount = end
        }
    }
}

private func sinkWriteCallback(
    _ archive: OpaquePointer?, _ context: UnsafeMutableRawPointer?, _ buffer: UnsafeRawPointer?, _ length: Int
) -> la_ssize_t {
    guard let context else { return -1 }
    let sink = Unmanaged<HashingFileSink>.fromOpaque(context).takeUnretainedValue()
    guard sink.write(UnsafeRawBufferPointer(start: buffer, count: length)) else { return -1 }
    return la_ssize_t(length)
}

/// One owner of one libarchive write handle that produces a tar in the format's fixed settings:
/// `pax_restricted`, 10240-byte blocks, no padding of the last block, gzip without timestamp, zstd level 3.
/// Entries are built by hand with normalized metadata: regular file, mode 0644, mtime 0, uid/gid 0, no names.
final class ArchiveWriter {
    static let bytesPerBlock: Int32 = 10240
    private let archive: OpaquePointer
    private let sink: HashingFileSink
    private var finished = false

    /// - Parameter pipeline: hashes the output bytes (on its thread) when given; `finish()` then returns the digest.
    /// - Parameter zstdWorkers: zstd worker threads, at least 1. Every count of one or more gives the same bytes
    ///   (zstd's multi-threaded output does not depend on the worker count); single-threaded mode, which gives
    ///   other bytes, is never used.
    /// - Parameters:
    ///   - origin: the file offset the archive starts at (written with pwrite).
    ///   - keep: archive bytes (offsets within the archive) the file already holds; they are not written.
    init(compression: Compression, output: FileDescriptor, pipeline: HashPipeline? = nil, zstdWorkers: Int = 1,
         origin: UInt64 = 0, keep: Range<UInt64>? = nil) throws {
        guard let archive = archive_write_new() else {
            throw ContinuonPackError(.archiveWriteFailed, "archive_write_new failed")
        }
        self.archive = archive
        self.sink = HashingFileSink(file: output, pipeline: pipeline, origin: origin, keep: keep)
        try check(archive_write_set_format_pax_restricted(archive), "set the pax_restricted format")
        switch compression {
        case .none:
            break
        case .gzip:
            try check(archive_write_add_filter_gzip(archive), "add the gzip filter")
            try check(archive_write_set_options(archive, "gzip:!timestamp,gzip:compression-level=6"), "set gzip options")
        case .zstd:
            try check(archive_write_add_filter_zstd(archive), "add the zstd filter")
            try check(archive_write_set_options(archive, "zstd:compression-level=3,zstd:threads=\(max(1, zstdWorkers))"), "set zstd options")
        }
        try check(archive_write_set_bytes_per_block(archive, Self.bytesPerBlock), "set the block size")
        try check(archive_write_set_bytes_in_last_block(archive, 1), "set the last block size")
        let context = Unmanaged.passUnretained(sink).toOpaque()
        try check(archive_write_open2(archive, context, nil, sinkWriteCallback, nil, nil), "open the archive")
    }

    deinit { archive_write_free(archive) }

    /// Starts a regular-file member. `path` must already be validated (UTF-8, relative).
    func beginEntry(path: String, size: UInt64) throws {
        guard let entry = archive_entry_new() else {
            throw ContinuonPackError(.archiveWriteFailed, "archive_entry_new failed")
        }
        defer { archive_entry_free(entry) }
        archive_entry_set_pathname_utf8(entry, path)
        archive_entry_set_size(entry, la_int64_t(size))
        archive_entry_set_filetype(entry, CP_AE_IFREG)
        archive_entry_set_perm(entry, 0o644)
        archive_entry_set_mtime(entry, 0, 0)
        archive_entry_set_uid(entry, 0)
        archive_entry_set_gid(entry, 0)
        try check(archive_write_header(archive, entry), "write the header of \(path)")
    }

    func writeData(_ buffer: UnsafeRawBufferPointer) throws {
        guard buffer.count > 0 else { return }
        let written = archive_write_data(archive, buffer.baseAddress, buffer.count)
        guard written == buffer.count else {
            throw failure("write member data", status: Int32(truncatingIfNeeded: written))
        }
    }

    /// Writes the end-of-archive marker and flushes; returns the size of every byte written and, when a pipeline
    /// was given, their SHA-256 (after draining the pipeline).
    func finish() throws -> (size: UInt64, sha256: SHA256Digest?) {
        guard !finished else { preconditionFailure("ArchiveWriter.finish called twice") }
        finished = true
        try check(archive_write_close(archive), "close the archive")
        sink.finish()
        if let failure = sink.failure { throw failure }
        guard let pipeline = sink.pipeline else { return (sink.byteCount, nil) }
        pipeline.drain()
        return (sink.byteCount, sink.stream.digest)
    }

    private func check(_ status: Int32, _ what: String) throws {
        guard status == ARCHIVE_OK else { throw failure(what, status: status) }
    }

    private func failure(_ what: String, status: Int32) -> any Error {
        if let underlying = sink.failure { return underlying }
        let text = archive_error_string(archive).map { String(cString: $0) }
        return ContinuonPackError(.archiveWriteFailed, "libarchive could not \(what).", cause: text ?? "status \(status)")
    }
}

extension ArchiveWriter {
    /// True when libarchive writes a member named `path` as the format requires: with a pax `path` record that
    /// extends the name of its ustar header (spec section 6). For paths that fit no ustar name and prefix, libarchive
    /// 3.6 writes a shortened fallback name that is not a prefix of the path (a package every verifier refuses), so
    /// the packer asks before it packs. Writes one header into an anonymous temporary file and reads it back through
    /// the verifier's own tar rules. Call under a UTF-8 locale (`withUTF8Locale`).
    /// - Throws: `io.error`, `pack.archive_write_failed`.
    static func writesConformingHeader(for path: String) throws -> Bool {
        guard let stream = tmpfile() else { throw ContinuonPackError(.ioError, "Cannot make a temporary file.") }
        defer { fclose(stream) }
        let file = FileDescriptor(raw: dup(fileno(stream)), path: "<header probe>")
        let writer = try ArchiveWriter(compression: .none, output: file)
        try writer.beginEntry(path: path, size: 0)
        _ = try writer.finish()
        // The writer wrote with pwrite: the descriptor's offset is still 0.
        var auditor = TarAuditor()
        try FileIO.forEachChunk(of: file) { auditor.feed($0) }
        auditor.finish()
        return auditor.violation == nil
    }
}
