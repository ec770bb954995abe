#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Hashes on a second thread, so that SHA-256 runs beside the I/O instead of after it.
///
/// Bytes live in a small pool of buffers. A caller fills a buffer through a `Lane` (copying bytes in with
/// `update`, or reading straight into it with `space` and `commit`), and the buffer goes to the worker thread
/// when it is full or the lane is flushed; the worker hashes each segment into its `Stream` in order and gives
/// the buffer back. Many small streams share one buffer, so thousands of small blobs cost a handful of hand-overs,
/// not one per blob. One thread (the caller's) drives a pipeline; the worker only reads the buffers.
/// Memory: `bufferCount * bufferSize`.
final class HashPipeline: @unchecked Sendable {
    /// One digest being computed. Its result is readable after `drain()`.
    final class Stream: @unchecked Sendable {
        /// Only the worker touches it: made at the first bytes, dropped at the end (thousands of finished
        /// streams hold 32 bytes each, not a hashing context).
        fileprivate var hasher: SHA256Hasher?
        fileprivate var result: SHA256Digest?
        init() {}
        /// The digest; only valid after the pipeline drained past `finish`.
        var digest: SHA256Digest {
            guard let result else { preconditionFailure("HashPipeline.Stream read before drain()") }
            return result
        }
    }

    /// A sequence of buffers filled by the caller. Each lane keeps its own buffer, so the bytes of one lane are
    /// contiguous in it (a lane's `onFlush` sees them in order, e.g. to write them out in large blocks).
    /// The caller owns its lanes; the pipeline only remembers them weakly, so a lane its owner let go (say, after
    /// an error) is abandoned: `drain()` neither flushes it nor calls its `onFlush` on an owner that is gone.
    final class Lane {
        fileprivate var buffer: Int?
        fileprivate var used = 0
        fileprivate var items: [Item] = []
        /// Called with a buffer's filled bytes just before the buffer goes to the worker.
        fileprivate let onFlush: ((UnsafeRawBufferPointer) -> Void)?
        fileprivate init(onFlush: ((UnsafeRawBufferPointer) -> Void)?) { self.onFlush = onFlush }
    }

    private struct WeakLane {
        weak var lane: Lane?
    }

    fileprivate enum Item {
        case segment(Stream, UnsafeRawPointer, Int)
        case finish(Stream)
        case release(Int)
        case stop
    }

    let bufferSize: Int
    private let buffers: [UnsafeMutableRawBufferPointer]
    /// Every lane, held weakly (see `Lane`); the default lane is also held by `defaultLane`.
    private var lanes: [WeakLane] = []
    private let defaultLane: Lane

    // Shared with the worker, under `mutex`.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let workAvailable = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let progress = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var queue: [Item] = []
    private var freeBuffers: [Int]
    private var published = 0
    private var processed = 0
    private var worker: pthread_t?

    init(bufferSize: Int = 1 << 20, bufferCount: Int = 6) {
        precondition(bufferCount >= 2, "a pipeline needs at least two buffers")
        self.bufferSize = bufferSize
        buffers = (0..<bufferCount).map { _ in .allocate(byteCount: bufferSize, alignment: 4096) }
        freeBuffers = Array(0..<bufferCount)
        defaultLane = Lane(onFlush: nil)
        lanes = [WeakLane(lane: defaultLane)]
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(workAvailable, nil)
        pthread_cond_init(progress, nil)
        // The worker holds a reference until `close()` stops it.
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let status = pthread_create(&thread, nil, { context in
            Unmanaged<HashPipeline>.fromOpaque(context!).takeRetainedValue().work()
            return nil
        }, context)
        precondition(status == 0, "pthread_create failed: \(status)")
        worker = thread
    }

    deinit {
        for buffer in buffers { buffer.deallocate() }
        pthread_cond_destroy(progress)
        pthread_cond_destroy(workAvailable)
        pthread_mutex_destroy(mutex)
        progress.deallocate()
        workAvailable.deallocate()
        mutex.deallocate()
    }

    /// A new lane; `onFlush` sees each of its buffers' bytes before they are hashed.
    func makeLane(onFlush: ((UnsafeRawBufferPointer) -> Void)? = nil) -> Lane {
        let lane = Lane(onFlush: onFlush)
        lanes.removeAll { $0.lane == nil }
        lanes.append(WeakLane(lane: lane))
        return lane
    }

    /// Queues a copy of `bytes` for `stream`.
    func update(_ stream: Stream, _ bytes: UnsafeRawBufferPointer, in lane: Lane? = nil) {
        let lane = lane ?? defaultLane
        var offset = 0
        while offset < bytes.count {
            let free = space(in: lane, atLeast: 1)
            let take = min(free.count, bytes.count - offset)
            free.baseAddress!.copyMemory(from: bytes.baseAddress! + offset, byteCount: take)
            commit(take, of: stream, in: lane)
            offset += take
        }
    }

    /// Free space at the end of `lane`'s buffer, at least `minimum` bytes (capped at the buffer size): the caller
    /// may fill a prefix of it and `commit` that. A full or too small buffer is handed over first.
    func space(in lane: Lane, atLeast minimum: Int) -> UnsafeMutableRawBufferPointer {
        if let index = lane.buffer, bufferSize - lane.used >= max(1, min(minimum, bufferSize)) {
            return UnsafeMutableRawBufferPointer(rebasing: buffers[index][lane.used...])
        }
        flush(lane)
        let index = acquire()
        lane.buffer = index
        lane.used = 0
        return buffers[index]
    }

    /// Records that the first `count` bytes of the last `space(in:atLeast:)` belong to `stream`.
    func commit(_ count: Int, of stream: Stream, in lane: Lane) {
        guard count > 0 else { return }
        guard let index = lane.buffer else { preconditionFailure("HashPipeline.commit without space") }
        precondition(lane.used + count <= bufferSize, "HashPipeline.commit beyond the space given")
        lane.items.append(.segment(stream, UnsafeRawPointer(buffers[index].baseAddress! + lane.used), count))
        lane.used += count
        if lane.used == bufferSize { flush(lane) }
    }

    /// Queues the end of `stream` (after its bytes in `lane`); its digest is ready after `drain()`.
    func finish(_ stream: Stream, in lane: Lane? = nil) {
        (lane ?? defaultLane).items.append(.finish(stream))
    }

    /// Hands `lane`'s buffer (and pending ends) to the worker now.
    func flush(_ lane: Lane) {
        if let index = lane.buffer {
            if lane.used > 0 {
                lane.onFlush?(UnsafeRawBufferPointer(start: buffers[index].baseAddress, count: lane.used))
            }
            lane.items.append(.release(index))
            lane.buffer = nil
            lane.used = 0
        }
        guard !lane.items.isEmpty else { return }
        publish(lane.items)
        lane.items.removeAll(keepingCapacity: true)
    }

    /// Flushes every lane and waits until everything was hashed.
    func drain() {
        for case let lane? in lanes.map(\.lane) { flush(lane) }
        pthread_mutex_lock(mutex)
        while processed < published { pthread_cond_wait(progress, mutex) }
        pthread_mutex_unlock(mutex)
    }

    /// Stops the worker (after draining). The pipeline cannot be used afterwards.
    func close() {
        guard let thread = worker else { return }
        drain()
        publish([.stop])
        pthread_join(thread, nil)
        worker = nil
    }

    // MARK: - Internals

    private func acquire() -> Int {
        pthread_mutex_lock(mutex)
        while freeBuffers.isEmpty { pthread_cond_wait(progress, mutex) }
        let index = freeBuffers.removeLast()
        pthread_mutex_unlock(mutex)
        return index
    }

    private func publish(_ items: [Item]) {
        pthread_mutex_lock(mutex)
        queue.append(contentsOf: items)
        published += items.count
        pthread_cond_signal(workAvailable)
        pthread_mutex_unlock(mutex)
    }

    private func work() {
        var batch: [Item] = []
        while true {
            pthread_mutex_lock(mutex)
            processed += batch.count
            pthread_cond_broadcast(progress)
            while queue.isEmpty { pthread_cond_wait(workAvailable, mutex) }
            swap(&batch, &queue)
            queue.removeAll(keepingCapacity: true)
            pthread_mutex_unlock(mutex)
            for item in batch {
                switch item {
                case let .segment(stream, start, count):
                    if stream.hasher == nil { stream.hasher = SHA256Hasher() }
                    stream.hasher!.update(UnsafeRawBufferPointer(start: start, count: count))
                case let .finish(stream):
                    stream.result = (stream.hasher ?? SHA256Hasher()).finalize()
                    stream.hasher = nil
                case let .release(index):
                    // Each buffer goes back as soon as it is hashed, so the caller's view of the backlog is current.
                    pthread_mutex_lock(mutex)
                    freeBuffers.append(index)
                    pthread_cond_broadcast(progress)
                    pthread_mutex_unlock(mutex)
                case .stop:
                    return
                }
            }
        }
    }
}
