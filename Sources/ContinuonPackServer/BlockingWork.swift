import NIOPosix

/// Runs blocking file work (fsync, link, reading a stored object, hashing a file) on NIO's thread pool, so that
/// Swift's cooperative pool (one thread per core: two here) never waits for a disk while other requests queue.
func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await NIOThreadPool.singleton.runIfActive(body)
}
