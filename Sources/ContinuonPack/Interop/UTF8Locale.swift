#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` with this thread's `LC_CTYPE` set to UTF-8.
///
/// libarchive converts path names through the current locale; under the `C` locale (where Swift programs start)
/// libarchive 3.6.2's pax writer crashes on non-ASCII names and its ustar writer writes an empty name. A per-thread
/// locale (`uselocale`) fixes that without touching the process locale of the embedding runtime.
/// - Throws: `io.error` when the system has no UTF-8 locale at all (glibc 2.35 and later always have `C.UTF-8`).
func withUTF8Locale<T>(_ body: () throws -> T) throws -> T {
    guard let locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", nil) ?? newlocale(LC_CTYPE_MASK, "en_US.UTF-8", nil)
    else {
        throw ContinuonPackError(.ioError, "No UTF-8 locale (C.UTF-8) is installed; archive paths cannot be encoded.")
    }
    let previous = uselocale(locale)
    defer {
        uselocale(previous)
        freelocale(locale)
    }
    return try body()
}
