/// Checks TFRecord framing as the bytes stream past, in any pieces, holding 12 bytes at most: each record is an
/// 8-byte little-endian length, the masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the data;
/// the file ends on a record boundary. This is what TensorFlow's reader checks (it reports a data-loss error
/// otherwise); a TPU job that meets a bad record fails hours in, so `pack` refuses to sign one and promotion
/// refuses to promote one.
public struct TFRecordFramer: Sendable {
    /// Whether a blob path names a TFRecord file: `*.tfrecord` or a shard `*.tfrecord-NNNNN-of-NNNNN`.
    public static func applies(to path: String) -> Bool {
        let name = Array((path.split(separator: "/").last.map(String.init) ?? path).utf8)
        if name.count >= 9 && name.suffix(9).elementsEqual(".tfrecord".utf8) { return true }
        // ….tfrecord-NNNNN-of-NNNNN
        guard name.count >= 24 else { return false }
        let tail = Array(name.suffix(24))
        let digit = { (byte: UInt8) in byte >= 0x30 && byte <= 0x39 }
        return tail[0..<10].elementsEqual(".tfrecord-".utf8) && tail[10..<15].allSatisfy(digit)
            && tail[15..<19].elementsEqual("-of-".utf8) && tail[19..<24].allSatisfy(digit)
    }

    /// The masking TFRecord applies to a CRC-32C.
    public static func mask(_ crc: UInt32) -> UInt32 {
        ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
    }

    private enum Phase {
        case header
        case data
        case footer
    }

    private let path: String
    private var phase = Phase.header
    /// Header or footer bytes gathered so far.
    private var held: [UInt8] = []
    private var dataRemaining: UInt64 = 0
    private var crc = CRC32(castagnoli: true)
    /// The record being read (0-based) and the blob offset where it starts.
    public private(set) var recordIndex: UInt64 = 0
    private var recordStart: UInt64 = 0
    private var offset: UInt64 = 0
    /// Bytes of the blob not yet seen, when its size is known: a length beyond them is refused at once.
    private var remaining: UInt64?
    private var failure: ContinuonPackError?

    /// - Parameters:
    ///   - path: the blob's path, for the error sentence.
    ///   - size: the blob's size when known (a record longer than the rest of the blob is refused at its header).
    public init(path: String, size: UInt64? = nil) {
        self.path = path
        self.remaining = size
        held.reserveCapacity(12)
    }

    /// The first framing error found, if any (later bytes are not examined).
    public var error: ContinuonPackError? { failure }

    /// Records completed so far.
    public var records: UInt64 { recordIndex }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard failure == nil, bytes.count > 0 else { return }
        if let left = remaining { remaining = left >= UInt64(bytes.count) ? left - UInt64(bytes.count) : 0 }
        var index = 0
        while index < bytes.count && failure == nil {
            switch phase {
            case .header:
                let take = min(12 - held.count, bytes.count - index)
                held.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index..<(index + take)]))
                index += take
                offset += UInt64(take)
                if held.count == 12 { checkHeader(restAfterHeader: bytes.count - index) }
            case .data:
                let take = Int(min(dataRemaining, UInt64(bytes.count - index)))
                crc.update(UnsafeRawBufferPointer(rebasing: bytes[index..<(index + take)]))
                index += take
                offset += UInt64(take)
                dataRemaining -= UInt64(take)
                if dataRemaining == 0 { phase = .footer }
            case .footer:
                let take = min(4 - held.count, bytes.count - index)
                held.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index..<(index + take)]))
                index += take
                offset += UInt64(take)
                if held.count == 4 { checkFooter() }
            }
        }
    }

    public mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// The end of the blob: it must fall between records. Returns the first error, if any.
    public mutating func finish() -> ContinuonPackError? {
        if failure == nil && (phase != .header || !held.isEmpty) {
            let what: String
            switch phase {
            case .header: what = "its header is cut short (\(held.count) of 12 bytes)"
            case .data: what = "its data is cut short (\(dataRemaining) bytes missing)"
            case .footer: what = "its data CRC is cut short (\(held.count) of 4 bytes)"
            }
            fail(what)
        }
        return failure
    }

    private mutating func checkHeader(restAfterHeader: Int) {
        let length = held[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let stored = Self.word(held[8..<12])
        var lengthCRC = CRC32(castagnoli: true)
        held[0..<8].withUnsafeBytes { lengthCRC.update($0) }
        guard Self.mask(lengthCRC.value) == stored else {
            return fail("the CRC of its length does not match")
        }
        // Known size: the data and its CRC must fit in what is left of the blob.
        if let left = remaining {
            let available = left + UInt64(restAfterHeader)
            let (needed, overflow) = length.addingReportingOverflow(4)
            if overflow || needed > available {
                return fail("its length \(length) runs past the end of the blob")
            }
        }
        held.removeAll(keepingCapacity: true)
        crc = CRC32(castagnoli: true)
        dataRemaining = length
        phase = length == 0 ? .footer : .data
    }

    private mutating func checkFooter() {
        guard Self.mask(crc.value) == Self.word(held[0..<4]) else {
            return fail("the CRC of its data does not match")
        }
        held.removeAll(keepingCapacity: true)
        phase = .header
        recordIndex += 1
        recordStart = offset
    }

    private mutating func fail(_ what: String) {
        failure = ContinuonPackError(
            .tfrecordCorrupt,
            "\(path) is not a valid TFRecord file: record \(recordIndex) at byte offset \(recordStart): \(what).")
    }

    private static func word(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        bytes.reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
    }
}
