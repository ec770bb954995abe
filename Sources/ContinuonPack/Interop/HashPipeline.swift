import Foundation

/// Hashes on a second thread, so that SHA-256 runs beside the I/O instead of after it.
///
/// The caller submits bytes for one or more streams (each a `Stream`); they are copied into a small pool of
/// buffers and hashed in submission order by one worker thread. `finish(_:)` queues a stream's end without
/// waiting; `drain()` waits until everything queued was hashed. Memory: `bufferCount * bufferSize`.
final class HashPipeline: @unchecked Sendable {
    /// One digest being computed. Its result is readable after `drain()`.
    final class Stream: @unchecked Sendable {
        fileprivate let hasher = SHA256Hasher()
        fileprivate var result: SHA256Digest?
        /// The digest; only valid after the pipeline drained past `finish`.
        var digest: SHA256Digest {
            guard let result else { preconditionFailure("HashPipeline.Stream read before drain()") }
            return result
        }
    }

    private enum Item {
        case bytes(Stream, Int, Int) // stream, buffer index, count
        case finish(Stream)
        case stop
    }

    private let condition = NSCondition()
    private var items: [Item] = []
    private var head = 0
    private var freeBuffers: [Int]
    private var inFlight = 0
    private let buffers: [UnsafeMutableRawBufferPointer]
    private let bufferSize: Int
    /// The buffer being filled by the caller, and how full it is.
    private var filling: (stream: Stream, index: Int, count: Int)?
    private var thread: Thread?

    init(bufferSize: Int = 1 << 20, bufferCount: Int = 6) {
        self.bufferSize = bufferSize
        buffers = (0..<bufferCount).map { _ in .allocate(byteCount: bufferSize, alignment: 64) }
        freeBuffers = Array(0..<bufferCount)
        let thread = Thread { [unowned self] in self.work() }
        thread.name = "continuon-pack.hash"
        self.thread = thread
        thread.start()
    }

    deinit {
        for buffer in buffers { buffer.deallocate() }
    }

    /// Queues `bytes` for `stream`.
    func update(_ stream: Stream, _ bytes: UnsafeRawBufferPointer) {
        var offset = 0
        while offset < bytes.count {
            if let current = filling, current.stream !== stream { flush() }
            if filling == nil { filling = (stream, acquire(), 0) }
            let current = filling!
            let take = min(bufferSize - current.count, bytes.count - offset)
            buffers[current.index].baseAddress!.advanced(by: current.count)
                .copyMemory(from: bytes.baseAddress!.advanced(by: offset), byteCount: take)
            offset += take
            filling = (stream, current.index, current.count + take)
            if current.count + take == bufferSize { flush() }
        }
    }

    /// Queues the end of `stream`; its digest is ready after `drain()`.
    func finish(_ stream: Stream) {
        flush()
        enqueue(.finish(stream))
    }

    /// Waits until everything queued was hashed.
    func drain() {
        flush()
        condition.lock()
        while head < items.count || inFlight > 0 { condition.wait() }
        items.removeAll(keepingCapacity: true)
        head = 0
        condition.unlock()
    }

    /// Stops the worker (after draining). The pipeline cannot be used afterwards.
    func close() {
        drain()
        enqueue(.stop)
        condition.lock()
        while thread != nil { condition.wait() }
        condition.unlock()
    }

    // MARK: - Internals

    private func flush() {
        guard let current = filling else { return }
        filling = nil
        enqueue(.bytes(current.stream, current.index, current.count))
    }

    private func acquire() -> Int {
        condition.lock()
        while freeBuffers.isEmpty { condition.wait() }
        let index = freeBuffers.removeLast()
        condition.unlock()
        return index
    }

    private func enqueue(_ item: Item) {
        condition.lock()
        items.append(item)
        condition.broadcast()
        condition.unlock()
    }

    private func work() {
        while true {
            condition.lock()
            while head == items.count { condition.wait() }
            let item = items[head]
            head += 1
            inFlight += 1
            condition.unlock()
            switch item {
            case let .bytes(stream, index, count):
                stream.hasher.update(UnsafeRawBufferPointer(start: buffers[index].baseAddress, count: count))
                condition.lock()
                freeBuffers.append(index)
            case let .finish(stream):
                stream.result = stream.hasher.finalize()
                condition.lock()
            case .stop:
                condition.lock()
                inFlight -= 1
                thread = nil
                condition.broadcast()
                condition.unlock()
                return
            }
            inFlight -= 1
            condition.broadcast()
            condition.unlock()
        }
    }
}
