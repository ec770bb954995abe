/// An environment-ID pattern of a trust policy (spec section 14.1): identifier characters and `*`, where `*` stands
/// for any run of characters (possibly empty) and every other character for itself, case-sensitively.
public struct EnvironmentPattern: Sendable, Hashable, Comparable, CustomStringConvertible {
    private let bytes: [UInt8]
    /// The pattern as written.
    public var text: String { String(decoding: bytes, as: UTF8.self) }

    /// The longest pattern, in bytes.
    public static let maxBytes = 128

    /// - Returns: nil when `text` is not 1 to 128 bytes of `A-Z a-z 0-9 . _ + : @ -` and `*`.
    public init?(_ text: String) {
        let bytes = Array(text.utf8)
        guard (1...Self.maxBytes).contains(bytes.count), bytes.allSatisfy(Self.isPatternByte) else { return nil }
        self.bytes = bytes
    }

    /// `*`: every environment.
    public static let any = EnvironmentPattern("*")!

    public var description: String { text }
    public var matchesEverything: Bool { bytes.allSatisfy { $0 == UInt8(ascii: "*") } }

    /// True when the whole of `environmentID` matches. Linear in practice, never worse than O(n·m): the classic
    /// two-pointer glob match that remembers only the last `*`.
    public func matches(_ environmentID: String) -> Bool {
        let star = UInt8(ascii: "*")
        return environmentID.utf8.withContiguousStorageIfAvailable { id in match(id, star) } ?? match(Array(environmentID.utf8), star)
    }

    private func match<C: RandomAccessCollection>(_ id: C, _ star: UInt8) -> Bool where C.Element == UInt8, C.Index == Int {
        var p = 0, i = id.startIndex
        var lastStar: Int? = nil, resume = id.startIndex
        while i < id.endIndex {
            if p < bytes.count && bytes[p] == star {
                lastStar = p
                resume = i
                p += 1
            } else if p < bytes.count && bytes[p] == id[i] {
                p += 1
                i += 1
            } else if let star = lastStar {
                p = star + 1
                resume += 1
                i = resume
            } else {
                return false
            }
        }
        while p < bytes.count && bytes[p] == star { p += 1 }
        return p == bytes.count
    }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.bytes.lexicographicallyPrecedes(rhs.bytes) }

    private static func isPatternByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "+"), UInt8(ascii: ":"), UInt8(ascii: "@"), UInt8(ascii: "-"),
             UInt8(ascii: "*"):
            return true
        default:
            return false
        }
    }
}
