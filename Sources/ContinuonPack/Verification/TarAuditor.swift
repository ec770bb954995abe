/// A strict, streaming walker of a tar byte stream, independent of libarchive.
///
/// libarchive reads what it is given leniently (it merges GNU long names, applies any pax record, skips damaged
/// headers and ignores data after the end-of-archive marker). The auditor sees the same bytes and holds them to
/// section 6 of `docs/signed-ingestion.md`: POSIX ustar headers with valid checksums, only regular files (with at
/// most one pax header carrying `path` and `size`), normalized metadata, zero padding, the two-block end marker and
/// at most `maxTrailerBytes` zero bytes after it. The verifier then checks that libarchive saw the same members.
struct TarAuditor {
    enum Violation: Error, Equatable {
        /// A damaged header, bad checksum, not POSIX ustar, non-zero padding, a bad pax record.
        case corrupt(String)
        /// A member that is not a plain regular file.
        case memberType(String)
        /// Metadata that is not normalized, or pax records other than `path` and `size`.
        case metadata(String)
        /// Non-zero bytes after the end-of-archive marker, or too many zero bytes.
        case trailingData(String)
        /// The stream ended before the end-of-archive marker.
        case truncated(String)
    }

    /// One member as the auditor read it.
    struct Member: Equatable {
        var path: [UInt8]
        var size: UInt64
    }

    static let blockSize = 512
    /// The most zero bytes allowed after the end-of-archive marker (one tar record of padding).
    static let maxTrailerBytes: UInt64 = 10240
    /// The most bytes a pax extended header may hold.
    static let maxPaxBytes: UInt64 = 8192

    private enum State {
        case header
        case paxData(remaining: UInt64, padding: Int)
        case data(remaining: UInt64, padding: Int)
        case padding(remaining: Int)
        case secondEndBlock
        case trailer
    }

    private var state = State.header
    private var block: [UInt8] = []
    private var paxBuffer: [UInt8] = []
    private var pendingPax: (path: [UInt8]?, size: UInt64?)?
    private var trailerBytes: UInt64 = 0
    private(set) var violation: Violation?
    /// Members read but not yet taken by `takeMember()`.
    private var queue = FIFO<Member>()
    /// Total bytes fed.
    private(set) var offset: UInt64 = 0

    init() { block.reserveCapacity(Self.blockSize) }

    /// True once the end-of-archive marker was read.
    var sawEndMarker: Bool {
        if case .trailer = state { return true }
        return false
    }

    /// The next member the auditor read, in order.
    mutating func takeMember() -> Member? {
        queue.popFirst()
    }

    /// Feeds the next bytes of the stream. After the first violation, further bytes are ignored.
    mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        var index = 0
        while index < bytes.count && violation == nil {
            switch state {
            case .header, .secondEndBlock:
                if block.isEmpty && bytes.count - index >= Self.blockSize {
                    // A whole block in the input: read it in place.
                    index += Self.blockSize
                    offset += UInt64(Self.blockSize)
                    processBlock(UnsafeRawBufferPointer(rebasing: bytes[(index - Self.blockSize)..<index]))
                    continue
                }
                let take = min(Self.blockSize - block.count, bytes.count - index)
                block.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index..<(index + take)]))
                index += take
                offset += UInt64(take)
                if block.count == Self.blockSize {
                    var header: [UInt8] = []
                    swap(&header, &block)
                    header.withUnsafeBytes { processBlock($0) }
                    header.removeAll(keepingCapacity: true)
                    swap(&header, &block)
                }
            case let .paxData(remaining, padding):
                let take = Int(min(remaining, UInt64(bytes.count - index)))
                paxBuffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index..<(index + take)]))
                index += take
                offset += UInt64(take)
                if remaining == UInt64(take) {
                    parsePax()
                    if violation == nil { state = padding > 0 ? .padding(remaining: padding) : .header }
                } else {
                    state = .paxData(remaining: remaining - UInt64(take), padding: padding)
                }
            case let .data(remaining, padding):
                let take = Int(min(remaining, UInt64(bytes.count - index)))
                index += take
                offset += UInt64(take)
                if remaining == UInt64(take) {
                    state = padding > 0 ? .padding(remaining: padding) : .header
                } else {
                    state = .data(remaining: remaining - UInt64(take), padding: padding)
                }
            case let .padding(remaining):
                let take = min(remaining, bytes.count - index)
                if !Self.isZero(UnsafeRawBufferPointer(rebasing: bytes[index..<(index + take)])) {
                    violation = .corrupt("non-zero bytes in the padding after a member's data")
                    return
                }
                index += take
                offset += UInt64(take)
                state = remaining == take ? .header : .padding(remaining: remaining - take)
            case .trailer:
                let take = bytes.count - index
                if !Self.isZero(UnsafeRawBufferPointer(rebasing: bytes[index...])) {
                    violation = .trailingData("non-zero bytes after the end-of-archive marker")
                    return
                }
                trailerBytes += UInt64(take)
                offset += UInt64(take)
                index += take
                if trailerBytes > Self.maxTrailerBytes {
                    violation = .trailingData("more than \(Self.maxTrailerBytes) bytes after the end-of-archive marker")
                    return
                }
            }
        }
    }

    /// Call at the end of the stream: the end-of-archive marker must have been read.
    mutating func finish() {
        guard violation == nil else { return }
        switch state {
        case .trailer: return
        case .header where offset == 0: violation = .truncated("the stream is empty")
        default: violation = .truncated("the stream ends before the end-of-archive marker")
        }
    }

    // MARK: - Headers

    /// Checks one 512-byte block read in the `header` or `secondEndBlock` state.
    private mutating func processBlock(_ block: UnsafeRawBufferPointer) {
        let isZero = Self.isZero(block)
        if case .secondEndBlock = state {
            guard isZero else {
                violation = .trailingData("a single zero block is followed by more data")
                return
            }
            state = .trailer
            return
        }
        if isZero {
            guard pendingPax == nil else {
                violation = .corrupt("a pax header is followed by the end-of-archive marker")
                return
            }
            state = .secondEndBlock
            return
        }
        guard let stored = Self.octal(block, 148, 8), stored == Self.checksum(block) else {
            violation = .corrupt("a header checksum does not match")
            return
        }
        guard Self.field(block, 257, 8).elementsEqual(Self.ustarMagicAndVersion) else {
            violation = .corrupt("a header is not POSIX ustar (magic \"ustar\\0\", version \"00\")")
            return
        }
        guard let headerSize = Self.octal(block, 124, 12) else {
            violation = .corrupt("a header size field is not octal")
            return
        }
        // Every header's numeric fields, pax headers' included, hold octal numbers (devmajor and devminor may also be
        // blank), whatever their values mean: libarchive checks this on the first header of each tar, so checking
        // it on every header makes the verdict independent of where a header stands (spec section 6).
        if let field = Self.malformedNumericField(block) {
            violation = .corrupt("a header's \(field) field is not an octal number")
            return
        }
        let typeflag = block[156]
        if typeflag == UInt8(ascii: "x") {
            guard pendingPax == nil else {
                violation = .corrupt("two pax headers in a row")
                return
            }
            guard headerSize <= Self.maxPaxBytes else {
                violation = .corrupt("a pax header of \(headerSize) bytes (the limit is \(Self.maxPaxBytes))")
                return
            }
            paxBuffer.removeAll(keepingCapacity: true)
            pendingPax = (nil, nil)
            let padding = Self.padding(for: headerSize)
            if headerSize == 0 {
                parsePax()
                if violation == nil { state = padding > 0 ? .padding(remaining: padding) : .header }
            } else {
                state = .paxData(remaining: headerSize, padding: padding)
            }
            return
        }
        guard typeflag == UInt8(ascii: "0") || typeflag == 0 else {
            violation = .memberType(Self.describe(typeflag: typeflag))
            return
        }
        let ustarName = Self.ustarPath(block)
        var path = ustarName
        var size = headerSize
        if let pax = pendingPax {
            if let paxPath = pax.path {
                guard paxPath.starts(with: ustarName) else {
                    violation = .corrupt("a pax path record does not extend the ustar name it overrides")
                    return
                }
                path = paxPath
            }
            if let paxSize = pax.size { size = paxSize }
            pendingPax = nil
        }
        if let problem = Self.metadataProblem(block) {
            violation = .metadata(problem)
            return
        }
        queue.append(Member(path: path, size: size))
        let padding = Self.padding(for: size)
        if size > 0 {
            state = .data(remaining: size, padding: padding)
        } else {
            state = .header
        }
    }

    private static func metadataProblem(_ block: UnsafeRawBufferPointer) -> String? {
        guard let mode = octal(block, 100, 8), mode & 0o7777 == 0o644 else { return "mode is not 0644" }
        guard octal(block, 108, 8) == 0, octal(block, 116, 8) == 0 else { return "uid or gid is not 0" }
        guard octal(block, 136, 12) == 0 else { return "mtime is not 0" }
        guard isZero(field(block, 265, 32)), isZero(field(block, 297, 32)) else {
            return "uname or gname is not empty"
        }
        guard isZero(field(block, 157, 100)) else { return "a link name is set" }
        return nil
    }

    private mutating func parsePax() {
        var records = paxBuffer[...]
        var seen = Set<String>()
        while !records.isEmpty {
            // The length: 1 to 20 decimal digits (leading zeros allowed, no sign), then a space.
            guard let space = records.firstIndex(of: 0x20),
                  (1...20).contains(space - records.startIndex),
                  records[records.startIndex..<space].allSatisfy({ (48...57).contains($0) }),
                  let length = Int(String(decoding: records[records.startIndex..<space], as: UTF8.self)),
                  length > space - records.startIndex + 1, length <= records.count,
                  records[records.startIndex + length - 1] == 0x0a
            else {
                violation = .corrupt("a pax extended header record is malformed")
                return
            }
            let record = records[(space + 1)..<(records.startIndex + length - 1)]
            guard let equals = record.firstIndex(of: UInt8(ascii: "=")) else {
                violation = .corrupt("a pax extended header record has no '='")
                return
            }
            let key = String(decoding: record[record.startIndex..<equals], as: UTF8.self)
            let value = Array(record[(equals + 1)...])
            guard seen.insert(key).inserted else {
                violation = .corrupt("a pax extended header repeats the record \(key)")
                return
            }
            switch key {
            case "path":
                pendingPax?.path = value
            case "size":
                guard !value.isEmpty, value.count <= 20, value.allSatisfy({ (48...57).contains($0) }),
                      let size = UInt64(String(decoding: value, as: UTF8.self))
                else {
                    violation = .corrupt("a pax size record is not a decimal number")
                    return
                }
                pendingPax?.size = size
            default:
                violation = .metadata("a pax record \(quoted(key)) (only path and size are allowed)")
                return
            }
            records = records[(records.startIndex + length)...]
        }
    }

    // MARK: - Fields

    /// The unsigned byte sum of the header with the checksum field read as eight spaces.
    private static func checksum(_ block: UnsafeRawBufferPointer) -> UInt64 {
        // Eight bytes at a time into four 16-bit lanes: 64 words add at most 64 * 2 * 255 to a lane, no overflow.
        let evenBytes: UInt64 = 0x00ff_00ff_00ff_00ff
        var lanes: UInt64 = 0
        for offset in stride(from: 0, to: blockSize, by: 8) {
            let word = block.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
            lanes += (word & evenBytes) + (word >> 8 & evenBytes)
        }
        var sum = (lanes & 0xffff) + (lanes >> 16 & 0xffff) + (lanes >> 32 & 0xffff) + (lanes >> 48)
        for index in 148..<156 { sum -= UInt64(block[index]) }
        return sum + 8 * 0x20
    }

    /// `"ustar\0"` then `"00"`: the POSIX magic and version (offsets 257 to 264).
    private static let ustarMagicAndVersion = Array("ustar\u{0}00".utf8)

    private static func field(_ block: UnsafeRawBufferPointer, _ start: Int, _ length: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: block[start..<(start + length)])
    }

    /// Whether every byte is zero, read eight at a time.
    static func isZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset + 8 <= bytes.count {
            if bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self) != 0 { return false }
            offset += 8
        }
        while offset < bytes.count {
            if bytes[offset] != 0 { return false }
            offset += 1
        }
        return true
    }

    /// The name of the first numeric field of a header that is not an octal number (mode, uid, gid, mtime), or not
    /// an octal number or blank (devmajor, devminor); nil when all are well formed.
    private static func malformedNumericField(_ block: UnsafeRawBufferPointer) -> String? {
        for (name, start, length) in [("mode", 100, 8), ("uid", 108, 8), ("gid", 116, 8), ("mtime", 136, 12)]
        where octal(block, start, length) == nil {
            return name
        }
        for (name, start) in [("devmajor", 329), ("devminor", 337)] {
            let blank = field(block, start, 8).allSatisfy { $0 == 0 || $0 == 0x20 }
            if !blank && octal(block, start, 8) == nil { return name }
        }
        return nil
    }

    /// An octal numeric field: optional leading spaces, octal digits, then NUL or space padding. Base-256 and
    /// anything else are refused.
    private static func octal(_ block: UnsafeRawBufferPointer, _ start: Int, _ length: Int) -> UInt64? {
        var value: UInt64 = 0
        var index = start
        let end = start + length
        while index < end && block[index] == 0x20 { index += 1 }
        var digits = 0
        while index < end, (48...55).contains(block[index]) {
            guard value < (1 << 60) else { return nil }
            value = value << 3 | UInt64(block[index] - 48)
            index += 1
            digits += 1
        }
        guard digits > 0 else { return nil }
        while index < end {
            guard block[index] == 0 || block[index] == 0x20 else { return nil }
            index += 1
        }
        return value
    }

    private static func ustarPath(_ block: UnsafeRawBufferPointer) -> [UInt8] {
        let name = block[0..<100].prefix { $0 != 0 }
        let prefix = block[345..<500].prefix { $0 != 0 }
        return prefix.isEmpty ? Array(name) : Array(prefix) + [UInt8(ascii: "/")] + Array(name)
    }

    private static func padding(for size: UInt64) -> Int {
        Int((UInt64(blockSize) - size % UInt64(blockSize)) % UInt64(blockSize))
    }

    private static func describe(typeflag: UInt8) -> String {
        switch typeflag {
        case UInt8(ascii: "1"): return "a hard link"
        case UInt8(ascii: "2"): return "a symbolic link"
        case UInt8(ascii: "3"), UInt8(ascii: "4"): return "a device"
        case UInt8(ascii: "5"): return "a directory"
        case UInt8(ascii: "6"): return "a FIFO"
        case UInt8(ascii: "g"): return "a global pax header"
        case UInt8(ascii: "L"), UInt8(ascii: "K"): return "a GNU long-name header"
        case UInt8(ascii: "S"): return "a GNU sparse file"
        default: return "a member of type \(quoted(String(decoding: [typeflag], as: UTF8.self)))"
        }
    }
}
