/// A `Content-Range` request header of the resumable protocol, parsed strictly:
/// `bytes FIRST-LAST/TOTAL`, `bytes FIRST-LAST/*`, `bytes */TOTAL` or `bytes */*`. Numbers are `StrictDecimal`;
/// `FIRST <= LAST`, and `LAST < TOTAL` when both are known. An absent header is a status query of unknown total.
public struct ContentRange: Sendable, Equatable {
    /// The bytes the request carries, `first...last` (nil for a status query).
    public var first: UInt64?
    public var last: UInt64?
    /// The upload's total size, when the client names it.
    public var total: UInt64?

    public init(first: UInt64? = nil, last: UInt64? = nil, total: UInt64? = nil) {
        self.first = first
        self.last = last
        self.total = total
    }

    /// - Throws: 400 `upload.range_invalid` for anything else.
    public init(header: String?) throws(IngestProblem) {
        guard let header else { return }
        // Optional whitespace around the value (a linear trim: a header of 80 KiB of spaces costs one pass).
        let all = Array(header.utf8)
        let isSpace = { (byte: UInt8) in byte == 0x20 || byte == 0x09 }
        let start = all.firstIndex { !isSpace($0) } ?? all.endIndex
        let end = all.lastIndex { !isSpace($0) }.map { $0 + 1 } ?? start
        let bytes = all[start..<max(start, end)]
        let prefix = Array("bytes ".utf8)
        guard bytes.count > prefix.count, bytes.prefix(prefix.count).elementsEqual(prefix) else {
            throw .rangeInvalid("Content-Range must be `bytes FIRST-LAST/TOTAL`, `bytes FIRST-LAST/*` or `bytes */TOTAL`.")
        }
        let rest = bytes.dropFirst(prefix.count)
        guard let slash = rest.firstIndex(of: UInt8(ascii: "/")) else {
            throw .rangeInvalid("Content-Range has no `/TOTAL`.")
        }
        let rangePart = rest[..<slash]
        let totalPart = rest[(slash + 1)...]
        if !totalPart.elementsEqual([UInt8(ascii: "*")]) {
            guard let total = StrictDecimal.parse(bytes: totalPart) else {
                throw .rangeInvalid("The Content-Range total is not a decimal number of bytes.")
            }
            self.total = total
        }
        if !rangePart.elementsEqual([UInt8(ascii: "*")]) {
            guard let dash = rangePart.firstIndex(of: UInt8(ascii: "-")),
                  let first = StrictDecimal.parse(bytes: rangePart[..<dash]),
                  let last = StrictDecimal.parse(bytes: rangePart[(dash + 1)...])
            else {
                throw .rangeInvalid("The Content-Range bounds are not `FIRST-LAST` in decimal digits.")
            }
            guard first <= last else {
                throw .rangeInvalid("The Content-Range ends before it starts.")
            }
            if let total, last >= total {
                throw .rangeInvalid("The Content-Range extends past its own total.")
            }
            self.first = first
            self.last = last
        }
    }

    /// How many bytes the range covers, `last - first + 1`; nil for a status query and for `0-(2^64-1)`, whose
    /// length does not fit in `UInt64`.
    public var length: UInt64? {
        guard let first, let last else { return nil }
        let (difference, _) = last.subtractingReportingOverflow(first)
        let (count, overflow) = difference.addingReportingOverflow(1)
        return overflow ? nil : count
    }
}
