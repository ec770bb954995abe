#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Named points between the durable steps of multi-step file operations (the outbox's supersede and release, the
/// ingestion service's chunks and commits), where the crash tests kill the process: with
/// `CONTINUON_PACK_TEST_CRASH_AT=<name>` in the environment, the process sends itself SIGKILL on reaching that
/// point, exactly as `kill -9` would; `<name>#<n>` waits for the n-th time the point is reached. Without the
/// variable this is one `getenv` per step.
package enum CrashPoint {
    private static let reached = Mutex<Int>(0)

    package static func reach(_ name: String) {
        guard let wanted = getenv("CONTINUON_PACK_TEST_CRASH_AT") else { return }
        let text = String(cString: wanted)
        let parts = text.split(separator: "#", maxSplits: 1)
        guard parts.first.map(String.init) == name else { return }
        let nth = parts.count == 2 ? Int(parts[1]) ?? 1 : 1
        let count = reached.withLock { value -> Int in
            value += 1
            return value
        }
        if count >= nth { kill(getpid(), SIGKILL) }
    }
}
