import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTPTypes

/// What a connection may cost: how many may be open, how fast a request body must arrive, how long a reader may
/// leave the response unread.
public struct ConnectionLimits: Sendable {
    /// Most connections open at once. At the limit a new connection evicts the longest-idle connection that has no
    /// request in progress (idle keep-alive, or a request head still arriving); if every connection is serving a
    /// request, the new one is closed at once.
    public var maxConnections: Int
    /// A request body must bring at least this many bytes per second on average, counted from `grace` after its
    /// head: after `grace + t` seconds, at least `minBodyBytesPerSecond * t` bytes (so a head whose body never
    /// starts is cut after `grace`).
    public var minBodyBytesPerSecond: Int
    /// The allowance before the body rate applies.
    public var grace: TimeAmount
    /// How long a response may wait on a client that reads nothing: no write reaches the socket while the channel
    /// is unwritable. (The kernel's send buffer hides a slow reader's progress for a while, so this is longer than
    /// `grace`: the idle timeout.)
    public var unreadTimeout: TimeAmount

    public init(maxConnections: Int = 1024, minBodyBytesPerSecond: Int = 1024, grace: TimeAmount = .seconds(10),
                unreadTimeout: TimeAmount = .seconds(120)) {
        self.maxConnections = maxConnections
        self.minBodyBytesPerSecond = minBodyBytesPerSecond
        self.grace = grace
        self.unreadTimeout = unreadTimeout
    }
}

/// The open connections, shared by every event loop: the connection cap and eviction.
final class ConnectionRegistry: Sendable {
    private struct Entry {
        let channel: any Channel
        var busy: Bool
        var lastActive: NIODeadline
    }

    private let entries = NIOLockedValueBox<[ObjectIdentifier: Entry]>([:])
    let limit: Int

    init(limit: Int) { self.limit = limit }

    /// Registers a new connection; false when it must be refused (the limit is reached and nothing can be evicted).
    func register(_ channel: any Channel) -> Bool {
        let (registered, evicted): (Bool, (any Channel)?) = entries.withLockedValue { entries in
            var evicted: (any Channel)?
            if entries.count >= limit {
                guard let idlest = entries.filter({ !$0.value.busy }).min(by: { $0.value.lastActive < $1.value.lastActive })
                else { return (false, nil) }
                evicted = idlest.value.channel
                entries[idlest.key] = nil
            }
            entries[ObjectIdentifier(channel)] = Entry(channel: channel, busy: false, lastActive: .now())
            return (true, evicted)
        }
        evicted?.close(promise: nil)
        return registered
    }

    func unregister(_ channel: any Channel) {
        entries.withLockedValue { $0[ObjectIdentifier(channel)] = nil }
    }

    func setBusy(_ channel: any Channel, _ busy: Bool) {
        entries.withLockedValue { entries in
            let key = ObjectIdentifier(channel)
            guard var entry = entries[key] else { return }
            entry.busy = busy
            entry.lastActive = .now()
            entries[key] = entry
        }
    }
}

/// Guards one HTTP/1 connection against clients that cost more than they send:
/// - counts it in the `ConnectionRegistry` (the cap, with eviction of idle connections);
/// - closes it when a request body falls behind `minBodyBytesPerSecond` on average, counted from `grace` after the
///   head (Hummingbird's idle timeout alone lets one byte every few seconds keep a request, and its session, open
///   forever; and a head whose body never comes would hold a connection slot until the idle timeout);
/// - closes it when the client leaves a response unread for `unreadTimeout`: the channel stays unwritable and no
///   write reaches the socket in that time (a client that reads slowly keeps making progress and is left alone);
/// - after a response carrying `Connection: close` (a refusal that should not cost the rest of the body), sends
///   it, half-closes, discards whatever the client still sends, and closes fully a moment later.
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let registry: ConnectionRegistry
    private let limits: ConnectionLimits
    private var registered = false
    private var timer: RepeatedTask?
    /// A request head arrived and its `.end` has not.
    private var readingBody = false
    private var requestStart = NIODeadline.now()
    private var bodyBytes = 0
    private var unwritableSince: NIODeadline?
    /// When a response write last reached the socket.
    private var lastWriteProgress = NIODeadline.now()
    /// Requests whose head arrived and whose response has not ended (pipelining can make it more than one).
    private var requestsInProgress = 0
    private var closeAfterResponse = false
    private var discarding = false

    init(registry: ConnectionRegistry, limits: ConnectionLimits) {
        self.registry = registry
        self.limits = limits
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    private func start(_ context: ChannelHandlerContext) {
        guard !registered else { return }
        registered = true
        guard registry.register(context.channel) else {
            context.close(promise: nil)
            return
        }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
            let (handler, context) = loopBound.value
            handler.check(context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) { stop(context) }

    func channelInactive(context: ChannelHandlerContext) {
        stop(context)
        context.fireChannelInactive()
    }

    private func stop(_ context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        if registered { registry.unregister(context.channel) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !discarding else { return }
        switch unwrapInboundIn(data) {
        case .head:
            readingBody = true
            requestStart = .now()
            bodyBytes = 0
            requestsInProgress += 1
            registry.setBusy(context.channel, true)
        case let .body(buffer):
            bodyBytes += buffer.readableBytes
        case .end:
            readingBody = false
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case let .head(response):
            if response.headerFields[.connection]?.lowercased() == "close" { closeAfterResponse = true }
            context.write(data, promise: promise)
        case .body:
            // Progress is a write that reached the socket, however slowly the client reads.
            let written = promise ?? context.eventLoop.makePromise(of: Void.self)
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            written.futureResult.whenSuccess { loopBound.value.lastWriteProgress = .now() }
            context.write(data, promise: written)
        case .end:
            requestsInProgress = max(0, requestsInProgress - 1)
            if requestsInProgress == 0 { registry.setBusy(context.channel, false) }
            guard closeAfterResponse else {
                context.write(data, promise: promise)
                return
            }
            // Send the answer, then stop reading the request: half-close now, close fully a moment later (a client
            // still sending would otherwise get a reset that can destroy the answer before it is read).
            discarding = true
            readingBody = false
            let channel = context.channel
            let written = context.eventLoop.makePromise(of: Void.self)
            written.futureResult.whenComplete { _ in
                channel.close(mode: .output, promise: nil)
                channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
            }
            written.futureResult.cascade(to: promise)
            context.writeAndFlush(data, promise: written)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        unwritableSince = context.channel.isWritable ? nil : .now()
        context.fireChannelWritabilityChanged()
    }

    /// Once a second: the body's average rate, and a response left unread.
    private func check(_ context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        if readingBody {
            let late = (now - requestStart - limits.grace).nanoseconds
            if late >= 0 {
                let required = Int64(limits.minBodyBytesPerSecond) * (late / 1_000_000_000 + 1)
                if Int64(bodyBytes) < required {
                    context.close(promise: nil)
                    return
                }
            }
        }
        if let since = unwritableSince, now - max(since, lastWriteProgress) >= limits.unreadTimeout {
            context.close(promise: nil)
        }
    }
}
