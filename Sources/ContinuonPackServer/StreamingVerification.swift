import ContinuonPack
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Reads a spool file while the upload appends to it: blocks until more bytes are held, ends when the upload is
/// complete, fails when it is abandoned. Its descriptor is closed as soon as the verifier is done with it.
final class SpoolFollower: PackageStream, @unchecked Sendable {
    private let condition = NSCondition()
    private var fd: Int32
    private var available: UInt64 = 0
    private var position: UInt64 = 0
    private var finished = false
    private var aborted = false

    init(path: String) throws {
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw ContinuonPackError(.ioError, "Cannot open the spool file.", cause: String(cString: strerror(errno))) }
    }

    deinit { close() }

    /// Closes the descriptor (the verifier finished); later reads fail.
    func close() {
        condition.lock()
        if fd >= 0 { _ = Glibc.close(fd) }
        fd = -1
        aborted = true
        condition.broadcast()
        condition.unlock()
    }

    /// The upload now holds `total` bytes (all written to the spool file).
    func advance(to total: UInt64) {
        condition.lock()
        available = total
        if position < available { waiting = false }
        condition.broadcast()
        condition.unlock()
    }

    func finish() {
        condition.lock()
        finished = true
        condition.broadcast()
        condition.unlock()
    }

    func abort() {
        condition.lock()
        aborted = true
        condition.broadcast()
        condition.unlock()
    }

    /// Whether the verifier has read every byte held so far and waits for more (or stopped reading).
    var isWaiting: Bool {
        condition.lock()
        defer { condition.unlock() }
        return (waiting && position == available) || aborted || fd < 0
    }
    private var waiting = false

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        condition.lock()
        while position == available && !finished && !aborted {
            waiting = true
            condition.wait()
        }
        waiting = false
        let isAborted = aborted
        let count = Int(min(UInt64(buffer.count), available - position))
        let start = position
        let descriptor = fd
        condition.unlock()
        if isAborted { throw ContinuonPackError(.uploadIncomplete, "The upload was abandoned.") }
        guard count > 0, let base = buffer.baseAddress else { return 0 }
        var done = 0
        while done < count {
            // Only this thread reads and closes (after the verifier returned), so the descriptor stays valid here.
            let got = pread(descriptor, base + done, count - done, off_t(start) + off_t(done))
            guard got > 0 else { throw ContinuonPackError(.ioError, "Cannot read the spool file.") }
            done += got
        }
        condition.lock()
        position += UInt64(count)
        condition.unlock()
        return count
    }
}

/// Verifies an upload on its own thread while it is received (the verifier pulls bytes and blocks between
/// chunks), so that when the last byte arrives the verdict is nearly ready. The verifier runs with `failFast`: an
/// envelope, signature or manifest failure ends it before the archive is read, and `earlyVerdict` lets the service
/// refuse the upload at once instead of receiving the rest.
final class StreamingVerification: @unchecked Sendable {
    let follower: SpoolFollower
    private let condition = NSCondition()
    private var report: VerificationReport??
    private var waiters: [CheckedContinuation<VerificationReport?, Never>] = []

    init(spoolPath: String, verifier: PackageVerifier, name: String) throws {
        follower = try SpoolFollower(path: spoolPath)
        var configured = verifier
        configured.parallelHashing = false // one thread per upload is enough
        configured.failFast = true
        let threadVerifier = configured
        let thread = Thread { [follower] in
            let result = try? threadVerifier.verify(stream: follower, name: name)
            // The verdict first: a reader that sees the follower closed must find it.
            self.deliver(result)
            follower.close()
        }
        thread.name = "continuon-pack.verify"
        thread.start()
    }

    private func deliver(_ result: VerificationReport?) {
        condition.lock()
        report = .some(result)
        let pending = waiters
        waiters = []
        condition.unlock()
        for waiter in pending { waiter.resume(returning: result) }
    }

    /// The verdict if the verifier already reached one (before the end of the upload, only a refusal can be).
    var earlyVerdict: VerificationReport? {
        condition.lock()
        defer { condition.unlock() }
        return report ?? nil
    }

    /// Waits, up to `limit`, until the verifier has reached a verdict or read all the bytes held so far; true if
    /// it did.
    func caughtUp(within limit: Duration) async -> Bool {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline && !Task.isCancelled {
            if earlyVerdict != nil || follower.isWaiting { return true }
            try? await Task.sleep(for: .milliseconds(1))
        }
        return earlyVerdict != nil || follower.isWaiting
    }

    /// The verdict once the verifier has read everything (`follower.finish()` first).
    func result() async -> VerificationReport? {
        await withCheckedContinuation { continuation in
            condition.lock()
            if let report {
                condition.unlock()
                continuation.resume(returning: report)
            } else {
                waiters.append(continuation)
                condition.unlock()
            }
        }
    }
}
