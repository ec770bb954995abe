#if canImport(Glibc)
import Glibc
#endif
import CArchive

/// Where an `ArchiveReader` pulls its bytes from.
protocol ArchiveByteSource: AnyObject {
    /// The next bytes, either read into `scratch` or lent from a buffer the source holds (valid until the next
    /// call); empty at the end. Lending spares a copy when the bytes are another reader's member data.
    func readChunk(scratch: UnsafeMutableRawBufferPointer) throws -> UnsafeRawBufferPointer
}

extension UnsafeMutableRawBufferPointer {
    /// The first `count` bytes, read-only (what a source filled of its scratch buffer).
    func prefix(filled count: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: self[0..<count])
    }
}

/// Reads a file from its current offset.
final class FileByteSource: ArchiveByteSource {
    let file: FileDescriptor
    let progress: ByteProgress?
    let cancellation: CancellationFlag?
    init(file: FileDescriptor, progress: ByteProgress? = nil, cancellation: CancellationFlag? = nil) {
        self.file = file
        self.progress = progress
        self.cancellation = cancellation
    }
    func readChunk(scratch: UnsafeMutableRawBufferPointer) throws -> UnsafeRawBufferPointer {
        // An I/O error is the one kind every reader passes up untouched (never a verdict); the async caller turns it
        // back into CancellationError.
        if cancellation?.isCancelled == true { throw ContinuonPackError(.ioError, "The read was cancelled.") }
        let count = try file.read(into: scratch)
        progress?.add(count)
        return scratch.prefix(filled: count)
    }
}

/// Reads from bytes held in memory.
final class MemoryByteSource: ArchiveByteSource {
    private let bytes: [UInt8]
    private var offset = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    func readChunk(scratch: UnsafeMutableRawBufferPointer) throws -> UnsafeRawBufferPointer {
        let count = min(scratch.count, bytes.count - offset)
        guard count > 0 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        bytes.withUnsafeBytes { raw in
            scratch.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + count)]))
        }
        offset += count
        return scratch.prefix(filled: count)
    }
}

/// The context libarchive's read callback receives: the source and the buffer handed back to libarchive.
private final class ReadContext {
    let source: any ArchiveByteSource
    let buffer: UnsafeMutableRawBufferPointer
    var failure: (any Error)?

    init(source: any ArchiveByteSource, bufferSize: Int) {
        self.source = source
        self.buffer = .allocate(byteCount: bufferSize, alignment: 16)
    }

    deinit { buffer.deallocate() }
}

private func contextReadCallback(
    _ archive: OpaquePointer?, _ context: UnsafeMutableRawPointer?,
    _ out: UnsafeMutablePointer<UnsafeRawPointer?>?
) -> la_ssize_t {
    guard let context, let out else { return -1 }
    let reader = Unmanaged<ReadContext>.fromOpaque(context).takeUnretainedValue()
    do {
        let chunk = try reader.source.readChunk(scratch: reader.buffer)
        out.pointee = chunk.baseAddress
        return la_ssize_t(chunk.count)
    } catch {
        reader.failure = error
        return -1
    }
}

/// What the reader saw in one member header (the rest of the metadata is `TarAuditor`'s to check).
struct ArchiveEntryInfo {
    /// The path as stored (after pax records were applied), in raw bytes: validated by the caller.
    var pathBytes: [UInt8]
    var fileType: UInt32
    var size: Int64?
    var isHardlink: Bool
    var isSymlink: Bool
    var isSparse: Bool
    var hasExtendedAttributes: Bool

    var isRegularFile: Bool { fileType == CP_AE_IFREG && !isHardlink && !isSymlink }
}

/// One owner of one libarchive read handle, restricted to the tar format and to one declared filter.
/// Every status other than `ARCHIVE_OK` and `ARCHIVE_EOF` (including `WARN` and `RETRY`) is a failure.
final class ArchiveReader {
    enum Next {
        case entry(ArchiveEntryInfo)
        case end
    }

    private let archive: OpaquePointer
    private let context: ReadContext
    /// Bytes of the current member's data handed out so far.
    private var dataOffset: Int64 = 0

    /// What the reader parses after the filter.
    enum Format {
        /// POSIX tar (and only tar).
        case tar
        /// No format: one pseudo-entry whose data is the decompressed stream.
        case raw
    }

    init(source: any ArchiveByteSource, format: Format = .tar, compression: Compression, bufferSize: Int = 256 * 1024) throws {
        guard let archive = archive_read_new() else {
            throw ContinuonPackError(.archiveCorrupt, "archive_read_new failed")
        }
        self.archive = archive
        self.context = ReadContext(source: source, bufferSize: bufferSize)
        var status = format == .tar ? archive_read_support_format_tar(archive) : archive_read_support_format_raw(archive)
        switch compression {
        case .none: break
        case .gzip: if status == ARCHIVE_OK { status = archive_read_support_filter_gzip(archive) }
        case .zstd: if status == ARCHIVE_OK { status = archive_read_support_filter_zstd(archive) }
        }
        guard status == ARCHIVE_OK else { throw failure("enable the tar reader") }
        let opaque = Unmanaged.passUnretained(context).toOpaque()
        guard archive_read_open(archive, opaque, nil, contextReadCallback, nil) == ARCHIVE_OK else {
            throw failure("open the archive")
        }
    }

    deinit { archive_read_free(archive) }

    /// The next member header, or `.end` at the end-of-archive marker.
    func next() throws -> Next {
        var entry: OpaquePointer?
        let status = archive_read_next_header(archive, &entry)
        if status == ARCHIVE_EOF { return .end }
        guard status == ARCHIVE_OK, let entry else { throw failure("read a member header") }
        dataOffset = 0
        let path = archive_entry_pathname(entry).map { Array(UnsafeRawBufferPointer(start: $0, count: strlen($0))) }
        return .entry(ArchiveEntryInfo(
            pathBytes: path ?? [],
            fileType: UInt32(archive_entry_filetype(entry)),
            size: archive_entry_size_is_set(entry) != 0 ? Int64(archive_entry_size(entry)) : nil,
            isHardlink: archive_entry_hardlink(entry) != nil,
            isSymlink: archive_entry_symlink(entry) != nil,
            isSparse: archive_entry_sparse_count(entry) > 0,
            hasExtendedAttributes: archive_entry_xattr_count(entry) > 0
        ))
    }

    /// Reads the current member's data; 0 at its end.
    func readData(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let count = archive_read_data(archive, buffer.baseAddress, buffer.count)
        guard count >= 0 else { throw failure("read member data") }
        dataOffset += Int64(count)
        return count
    }

    /// The current member's next data, lent from libarchive's buffers (valid until the next call on this reader),
    /// without a copy; empty at its end. Only for members without holes: a block that does not continue the data
    /// handed out so far (a sparse member) is an error, where `readData` would fill the hole with zeros.
    func readBlock() throws -> UnsafeRawBufferPointer {
        var block: UnsafeRawPointer?
        var size = 0
        var offset: la_int64_t = 0
        let status = archive_read_data_block(archive, &block, &size, &offset)
        if status == ARCHIVE_EOF { return UnsafeRawBufferPointer(start: nil, count: 0) }
        guard status == ARCHIVE_OK else { throw failure("read member data") }
        guard Int64(offset) == dataOffset else {
            throw ContinuonPackError(.archiveCorrupt, "libarchive skipped part of a member's data (a sparse member).")
        }
        dataOffset += Int64(size)
        return UnsafeRawBufferPointer(start: block, count: size)
    }

    /// True when libarchive really decoded the declared filter (it passes unrecognized data through as "none").
    func filterMatches(_ compression: Compression) -> Bool {
        let expected: Int32
        switch compression {
        case .none: return archive_filter_count(archive) == 1
        case .gzip: expected = ARCHIVE_FILTER_GZIP
        case .zstd: expected = ARCHIVE_FILTER_ZSTD
        }
        return archive_filter_count(archive) == 2 && archive_filter_code(archive, 0) == expected
    }

    /// Bytes the lowest filter consumed from the source (the compressed bytes the decoder used).
    var rawBytes: Int64 { Int64(archive_filter_bytes(archive, -1)) }

    private func failure(_ what: String) -> ContinuonPackError {
        if let underlying = context.failure as? ContinuonPackError { return underlying }
        let text = archive_error_string(archive).map { String(cString: $0) }
        return ContinuonPackError(.archiveCorrupt, "libarchive could not \(what).", cause: text)
    }
}
