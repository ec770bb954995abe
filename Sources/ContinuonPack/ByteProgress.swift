import Synchronization

/// A byte counter that long work (packing, verifying, re-signing) advances as it goes, once per buffer, and that
/// tells an observer (a progress display, which decides itself how often to draw) each new count.
public final class ByteProgress: Sendable {
    private let counter = Atomic<UInt64>(0)
    /// The bytes the work will process in all, when known (0 when not).
    public let total: UInt64
    private let observer: (@Sendable (UInt64) -> Void)?

    /// - Parameter observer: called with the new count after each advance, on the working thread.
    public init(total: UInt64 = 0, observer: (@Sendable (UInt64) -> Void)? = nil) {
        self.total = total
        self.observer = observer
    }

    /// Bytes processed so far.
    public var completed: UInt64 { counter.load(ordering: .relaxed) }

    public func add(_ count: Int) {
        let now = counter.add(UInt64(count), ordering: .relaxed).newValue
        observer?(now)
    }
}
