#if canImport(Glibc)
import Glibc
#endif

/// Runs blocking work (reading, hashing, compressing, fsync) on a thread of its own and awaits its result, so the
/// cooperative pool (one thread per core: two on a small robot) keeps serving other tasks meanwhile.
///
/// Cancellation is checked before the work starts; once started it runs to its end (a package is never left half
/// written or half verified), and the result is returned.
/// - Throws: `CancellationError` when the task was cancelled before the work started; whatever `work` throws.
public func runOnOwnThread<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try Task.checkCancellation()
    return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
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
    /// `write(blobs:toDirectory:)` on a thread of its own (see `runOnOwnThread`).
    public func write(blobs: [BlobSource], toDirectory directory: String) async throws -> PackResult {
        try await runOnOwnThread { try self.write(blobs: blobs, toDirectory: directory) }
    }
}

extension PackageVerifier {
    /// `verify(path:)` on a thread of its own (see `runOnOwnThread`).
    public func verify(path: String) async throws -> VerificationReport {
        try await runOnOwnThread { try self.verify(path: path) }
    }
}

extension BlobSource {
    /// `collect(in:options:)` on a thread of its own (see `runOnOwnThread`).
    public static func collect(in directory: String, options: CollectOptions = CollectOptions()) async throws -> [BlobSource] {
        try await runOnOwnThread { try collect(in: directory, options: options) }
    }
}
