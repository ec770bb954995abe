import ContinuonPack
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A one-line progress display on standard error, for work that takes more than a moment: nothing for the first
/// second, then `LABEL 42% (51/121 MB)` redrawn at most four times a second; nothing at all when standard error is
/// not a terminal (logs and pipes stay clean).
public final class ProgressLine: Sendable {
    public let enabled: Bool
    private let label: String
    private let state: Mutex<State>

    private struct State {
        var started: UInt64
        var lastDraw: UInt64 = 0
        var drawn = false
    }

    public init(label: String, enabled: Bool = isatty(2) == 1) {
        self.label = label
        self.enabled = enabled
        self.state = Mutex(State(started: Self.nowMilliseconds()))
    }

    /// A counter for `total` bytes that draws this line as it advances (or draws nothing when not enabled).
    public func counter(total: UInt64) -> ByteProgress {
        guard enabled else { return ByteProgress(total: total) }
        return ByteProgress(total: total) { [self] done in self.advance(done, of: total) }
    }

    private func advance(_ done: UInt64, of total: UInt64) {
        let now = Self.nowMilliseconds()
        let draw = state.withLock { state -> Bool in
            guard now - state.started >= 1000, now - state.lastDraw >= 250 else { return false }
            state.lastDraw = now
            state.drawn = true
            return true
        }
        guard draw else { return }
        let shown = min(done, total)
        let percent = total == 0 ? 100 : shown * 100 / total
        write("\r\(label) \(percent)% (\(shown >> 20)/\(total >> 20) MiB)\u{1b}[K")
    }

    /// Clears the line if anything was drawn (call before printing results).
    public func finish() {
        if state.withLock({ $0.drawn }) { write("\r\u{1b}[K") }
    }

    private func write(_ text: String) {
        let bytes = Array(text.utf8)
        bytes.withUnsafeBytes { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }

    private static func nowMilliseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1000 + UInt64(time.tv_nsec) / 1_000_000
    }
}

/// The size of the file at `path`, or 0 when it cannot be read (for progress displays only).
public func fileSize(_ path: String) -> UInt64 {
    var info = stat()
    return stat(path, &info) == 0 ? UInt64(info.st_size) : 0
}
