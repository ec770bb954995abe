import ContinuonPack
import ContinuonPackIngest
import Dispatch
import Foundation
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle

/// The trust policy a running service verifies uploads with, and how it is replaced (spec section 14.5): re-read on
/// SIGHUP and when the file changes; a policy that does not load is logged and the one in force stays. Each upload
/// takes the policy in force when its verification starts and keeps it to the end.
public final class TrustInForce: Sendable {
    /// Where the policy comes from, when it can be reloaded.
    public struct Source: Sendable {
        public var path: String
        public var roots: TrustRoots?
        /// Where the newest signed policy accepted is recorded (the rollback rule across restarts).
        public var statePath: String?
        public init(path: String, roots: TrustRoots?, statePath: String? = nil) {
            self.path = path
            self.roots = roots
            self.statePath = statePath
        }
    }

    public let source: Source?
    /// The verifier's threshold when it overrides the policy's.
    public let threshold: Int?
    private let state: NIOLockedValueBox<LoadedTrustPolicy>
    /// The last reload refused (its code and time), for `/healthz`.
    private let lastRefusal = NIOLockedValueBox<(code: String, at: String)?>(nil)
    private let reloading = NIOLock()

    public init(_ loaded: LoadedTrustPolicy, threshold: Int? = nil, source: Source? = nil) {
        self.state = NIOLockedValueBox(loaded)
        self.threshold = threshold
        self.source = source
    }

    /// The trusted-key policy: `keys`, each allowed every environment, with `threshold`.
    public convenience init(trustedKeys: [Ed25519PublicKey], threshold: Int = 1) {
        self.init(LoadedTrustPolicy(trustedKeys: trustedKeys, threshold: threshold))
    }

    /// Loads the policy at `source.path` (refusing to start with one that does not load).
    /// - Throws: `io.error` and the `trust.*` codes.
    public convenience init(source: Source, threshold: Int? = nil) throws {
        self.init(try TrustPolicyLoader.load(path: source.path, roots: source.roots, statePath: source.statePath),
                  threshold: threshold, source: source)
    }

    public var current: LoadedTrustPolicy { state.withLockedValue { $0 } }

    /// A verifier under the policy in force now.
    func verifier(limits: PackageLimits) -> PackageVerifier {
        let loaded = current
        return PackageVerifier(policy: loaded.policy, threshold: loaded.threshold(overriding: threshold), limits: limits)
    }

    /// The failures when `report`'s signatures no longer count under the policy in force now (it changed while the
    /// upload arrived); nil when they still do.
    func recheck(_ report: VerificationReport) -> [ContinuonPackError]? {
        let loaded = current
        let judgement = loaded.policy.rejudge(report, threshold: loaded.threshold(overriding: threshold))
        return judgement.accepted ? nil : judgement.failures
    }

    /// Refuses new uploads while the policy in force has expired.
    func checkUsable(now: String = TrustPolicyLoader.currentTime()) throws(IngestProblem) {
        let policy = current.policy
        if policy.hasExpired(at: now), let expires = policy.expires {
            throw IngestProblem(503, "trust.policy_expired",
                                "The service's trust policy expired at \(expires); uploads resume once a newer policy is loaded.")
        }
    }

    /// Re-reads the policy file. A policy that loads (and, signed, is newer) replaces the one in force; one that
    /// does not is logged and changes nothing. Returns true when the policy in force changed.
    @discardableResult
    public func reload(logger: Logger, now: String = TrustPolicyLoader.currentTime()) -> Bool {
        guard let source else { return false }
        return reloading.withLock {
            let inForce = current
            let loaded: LoadedTrustPolicy
            do {
                loaded = try TrustPolicyLoader.load(path: source.path, roots: source.roots, statePath: source.statePath, now: now,
                                                    inForce: inForce)
            } catch let error as ContinuonPackError {
                lastRefusal.withLockedValue { $0 = (error.code.rawValue, now) }
                logger.error("trust policy refused; the one in force stays", metadata: [
                    "code": "\(error.code)", "reason": "\(error.message)", "path": "\(source.path)",
                    "version_in_force": "\(inForce.policy.version)",
                ])
                return false
            } catch {
                lastRefusal.withLockedValue { $0 = ("io.error", now) }
                logger.error("trust policy unreadable; the one in force stays", metadata: ["error": "\(error)", "path": "\(source.path)"])
                return false
            }
            guard loaded.sha256 != inForce.sha256 else { return false }
            state.withLockedValue { $0 = loaded }
            logger.notice("trust policy in force", metadata: [
                "version": "\(loaded.policy.version)", "sha256": "\(loaded.sha256)", "keys": "\(loaded.policy.keysByID.count)",
                "signed": "\(loaded.signed)",
            ])
            return true
        }
    }

    /// What `/healthz` shows of the policy in force.
    var healthJSON: JSONValue {
        let loaded = current
        var fields: [(String, JSONValue)] = [
            ("version", .number(String(loaded.policy.version))), ("keys", .number(String(loaded.policy.keysByID.count))),
            ("signed", .bool(loaded.signed)), ("expires", loaded.policy.expires.map(JSONValue.string) ?? .null),
        ]
        fields.append(("expired", .bool(loaded.policy.hasExpired(at: TrustPolicyLoader.currentTime()))))
        if source != nil { fields.append(("sha256", .string(loaded.sha256))) }
        if let refusal = lastRefusal.withLockedValue({ $0 }) {
            fields.append(("last_refused", .object([("code", .string(refusal.code)), ("at", .string(refusal.at))])))
        }
        return .object(fields)
    }
}

/// Reloads the trust policy on SIGHUP and when its file changes (size, modification time, inode), checking once a
/// second, until graceful shutdown.
struct TrustPolicyWatcher: Service {
    let trust: TrustInForce
    let logger: Logger
    var interval: Duration = .seconds(1)

    func run() async throws {
        guard let source = trust.source else {
            // Nothing to watch; returning would end the service group.
            try? await gracefulShutdown()
            return
        }
        let loaded = trust.current
        logger.notice("trust policy in force", metadata: [
            "version": "\(loaded.policy.version)", "sha256": "\(loaded.sha256)", "keys": "\(loaded.policy.keysByID.count)",
            "signed": "\(loaded.signed)", "path": "\(source.path)",
        ])
        let hangup = Self.installHangupHandler { [trust, logger] in
            logger.info("SIGHUP: re-reading the trust policy", metadata: ["path": "\(source.path)"])
            trust.reload(logger: logger)
        }
        defer { hangup.cancel() }
        try? await cancelWhenGracefulShutdown { [interval] in
            var seen = Self.identity(of: source.path)
            while !Task.isCancelled {
                try await Task.sleep(for: interval)
                let now = Self.identity(of: source.path)
                if now != seen {
                    seen = now
                    trust.reload(logger: logger)
                }
            }
        }
    }

    /// SIGHUP no longer ends the process; `handler` runs for each one.
    static func installHangupHandler(_ handler: @escaping @Sendable () -> Void) -> any DispatchSourceSignal {
        signal(SIGHUP, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        source.setEventHandler(handler: handler)
        source.resume()
        return source
    }

    /// Device, inode, size and modification time: what changes when the file is edited or replaced by a rename.
    static func identity(of path: String) -> [Int64]? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return [Int64(info.st_dev), Int64(info.st_ino), Int64(info.st_size), Int64(info.st_mtim.tv_sec), Int64(info.st_mtim.tv_nsec)]
    }
}
