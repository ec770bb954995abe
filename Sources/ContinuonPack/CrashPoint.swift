#if canImport(Glibc)
import Glibc
#endif

/// Named points between the durable steps of multi-step file operations (the outbox's supersede and release),
/// where the crash tests kill the process: with `CONTINUON_PACK_TEST_CRASH_AT=<name>` in the environment, the
/// process sends itself SIGKILL on reaching that point, exactly as `kill -9` would. Without the variable this is
/// one `getenv` per step.
package enum CrashPoint {
    package static func reach(_ name: String) {
        guard let wanted = getenv("CONTINUON_PACK_TEST_CRASH_AT"), String(cString: wanted) == name else { return }
        kill(getpid(), SIGKILL)
    }
}
