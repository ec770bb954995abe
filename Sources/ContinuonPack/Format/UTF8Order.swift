#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension String {
    /// Whether `self` sorts before `other` by their UTF-8 bytes (the order of blob paths and JSON keys in the
    /// format), compared with `memcmp` on the strings' contiguous storage.
    func utf8Precedes(_ other: String) -> Bool {
        var left = self
        var right = other
        return left.withUTF8 { a in
            right.withUTF8 { b in
                let common = min(a.count, b.count)
                let order = common == 0 ? 0 : memcmp(a.baseAddress!, b.baseAddress!, common)
                return order != 0 ? order < 0 : a.count < b.count
            }
        }
    }

    /// Whether `self` and `other` hold the same UTF-8 bytes (unlike `==`, which compares canonical equivalence).
    func utf8Equals(_ other: String) -> Bool {
        var left = self
        var right = other
        return left.withUTF8 { a in
            right.withUTF8 { b in
                a.count == b.count && (a.count == 0 || memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0)
            }
        }
    }
}

extension Array where Element == BlobSource {
    /// The blobs in the format's order (by path bytes); no work when they already are.
    func sortedByPath() -> [BlobSource] {
        let inOrder = zip(self, dropFirst()).allSatisfy { !$1.path.utf8Precedes($0.path) }
        return inOrder ? self : sorted { $0.path.utf8Precedes($1.path) }
    }
}
