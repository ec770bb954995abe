import ContinuonPack
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Reads a spool file while the upload appends to it: blocks until more bytes are held, ends when the upload is
/// complete, fails when it is abandoned.
final class SpoolFollower: PackageStream, @unchecked Sendable {
    private let condition = NSCondition()
    private let fd: Int32
    private var available: UInt64 = 0
    private var position: UInt64 = 0
    private var finished = false
    private var aborted = false

    init(path: String) throws {
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ContinuonPackError(.ioError, "Cannot open the spool file \(path).") }
    }

    deinit { close(fd) }

    /// The upload now holds `total` bytes (all written to the spool file).
    func advance(to total: UInt64) {
        condition.lock()
        available = total
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

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        condition.lock()
        while position == available && !finished && !aborted { condition.wait() }
        let isAborted = aborted
        let count = Int(min(UInt64(buffer.count), available - position))
        let start = position
        condition.unlock()
        if isAborted { throw ContinuonPackError(.uploadIncomplete, "The upload was abandoned.") }
        guard count > 0 else { return 0 }
        var done = 0
        while done < count {
            let got = pread(fd, buffer.baseAddress! + done, count - done, off_t(start) + off_t(done))
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
/// chunks), so that when the last byte arrives the verdict is nearly ready.
final class StreamingVerification: @unchecked Sendable {
    let follower: SpoolFollower
    private let condition = NSCondition()
    private var report: VerificationReport??
    private var waiters: [CheckedContinuation<VerificationReport?, Never>] = []

    init(spoolPath: String, verifier: PackageVerifier, name: String) throws {
        follower = try SpoolFollower(path: spoolPath)
        var configured = verifier
        configured.parallelHashing = false // one thread per upload is enough
        let threadVerifier = configured
        let thread = Thread { [follower] in
            let result = try? threadVerifier.verify(stream: follower, name: name)
            self.deliver(result)
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
