#if canImport(Glibc)
import Glibc
#endif

import Synchronization

/// Set when the task that awaits blocking work is cancelled; the work checks it between buffers.
public final class CancellationFlag: Sendable {
    private let cancelled = Atomic<Bool>(false)
    public init() {}
    public var isCancelled: Bool { cancelled.load(ordering: .relaxed) }
    public func cancel() { cancelled.store(true, ordering: .relaxed) }
    /// - Throws: `CancellationError` once cancelled.
    public func check() throws { if isCancelled { throw CancellationError() } }
}

/// Runs blocking work (reading, hashing, compressing, fsync) on a thread of its own and awaits its result, so the
/// cooperative pool (one thread per core: two on a small robot) keeps serving other tasks meanwhile.
///
/// Cancelling the awaiting task sets the flag `work` receives; work that checks it stops at its next buffer.
/// - Throws: `CancellationError` when the task was cancelled before the work started; whatever `work` throws.
public func runOnOwnThread<T: Sendable>(_ work: @escaping @Sendable (CancellationFlag) throws -> T) async throws -> T {
    try Task.checkCancellation()
    let flag = CancellationFlag()
    return try await withTaskCancellationHandler {
        try await startThread { try work(flag) }
    } onCancel: {
        flag.cancel()
    }
}

/// Runs blocking work on a thread of its own; see the variant that takes a `CancellationFlag`. Work that cannot
/// stop midway (a verification) runs to its end once started.
public func runOnOwnThread<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await runOnOwnThread { (_: CancellationFlag) in try work() }
}

private func startThread<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let job = ThreadJob { continuation.resume(with: Result { try work() }) }
        let context = Unmanaged.passRetained(job).toOpaque()
        var thread = pthread_t()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        let status = pthread_create(&thread, &attributes, { context in
            Unmanaged<ThreadJob>.fromOpaque(context!).takeRetainedValue().body()
            return nil
        }, context)
        pthread_attr_destroy(&attributes)
        if status != 0 {
            Unmanaged<ThreadJob>.fromOpaque(context).release()
            continuation.resume(throwing: ContinuonPackError(.ioError, "Cannot start a thread (error \(status))."))
        }
    }
}

private final class ThreadJob: @unchecked Sendable {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

extension PackageWriter {
    /// `write(blobs:toDirectory:)` on a thread of its own (see `runOnOwnThread`). Cancelling the task stops the
    /// packing at its next buffer: nothing is left behind and `CancellationError` is thrown.
    public func write(blobs: [BlobSource], toDirectory directory: String) async throws -> PackResult {
        try await runOnOwnThread { flag in
            var writer = self
            writer.cancellation = flag
            return try writer.write(blobs: blobs, toDirectory: directory)
        }
    }
}

extension PackageVerifier {
    /// `verify(path:)` on a thread of its own (see `runOnOwnThread`). Cancelling the task stops the verification at
    /// its next read with `CancellationError` (never a verdict).
    public func verify(path: String) async throws -> VerificationReport {
        try await runOnOwnThread { flag in
            var verifier = self
            verifier.cancellation = flag
            let report: VerificationReport
            do {
                report = try verifier.verify(path: path)
            } catch where flag.isCancelled {
                throw CancellationError()
            }
            // A read refused after the cancellation may have been taken for damage somewhere: no such verdict leaves.
            try flag.check()
            return report
        }
    }
}

extension BlobSource {
    /// `collect(in:options:)` on a thread of its own (see `runOnOwnThread`).
    public static func collect(in directory: String, options: CollectOptions = CollectOptions()) async throws -> [BlobSource] {
        try await runOnOwnThread { try collect(in: directory, options: options) }
    }
}
