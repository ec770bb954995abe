import ArgumentParser
import ContinuonPack

/// Which keys a command trusts: `--trusted-key` files (each allowed every environment) or a trust policy
/// (`--trust-policy`, spec section 14), optionally signed by `--trust-root` keys. Shared by verify, promote and serve.
public struct TrustOptions: ParsableArguments, Sendable {
    @Option(name: .long, help: "A trusted public key (SPKI PEM), allowed every environment; repeat for several. The one-key shorthand for --trust-policy.")
    public var trustedKey: [String] = []

    @Option(name: .long, help: "A trust policy (continuon-pack trust init|add|revoke|sign): which keys may sign for which environments, until when, and which are revoked.")
    public var trustPolicy: String?

    @OptionGroup public var rootOptions: RootOptions

    @Option(name: .long, help: "How many distinct trusted keys must have signed (default: the policy's threshold, or 1 with --trusted-key).")
    public var threshold: Int?

    public init() {}

    public func validate() throws {
        guard trustedKey.isEmpty != (trustPolicy == nil) else {
            throw ValidationError("Give --trusted-key (one or more) or --trust-policy, not both and not neither.")
        }
        if trustPolicy == nil && !rootOptions.trustRoot.isEmpty { throw ValidationError("--trust-root checks a --trust-policy.") }
        if let threshold, threshold < 1 { throw ValidationError("--threshold must be at least 1.") }
        if !trustedKey.isEmpty, let threshold, threshold > trustedKey.count {
            throw ValidationError("--threshold must be between 1 and the number of --trusted-key options.")
        }
    }


    /// Loads the policy (or makes the trusted-key one).
    /// - Throws: `ValidationError` for a threshold above the distinct keys; `trust.*` codes for a refused policy.
    public func load(inForce: LoadedTrustPolicy? = nil) throws -> LoadedTrustPolicy {
        if let trustPolicy {
            let roots = try rootOptions.roots()
            let previous = try inForce ?? rootOptions.previousPolicy.map {
                try TrustPolicyLoader.load(path: $0, roots: roots, now: "0000-01-01T00:00:00Z")
            }
            return try TrustPolicyLoader.load(path: trustPolicy, roots: roots, statePath: rootOptions.trustState,
                                              inForce: previous)
        }
        let keys = try trustedKey.map(loadPublicKey)
        let distinct = Set(keys).count
        if let threshold, threshold > distinct {
            throw ValidationError("--threshold \(threshold) is more than the \(distinct) distinct trusted keys.")
        }
        return LoadedTrustPolicy(trustedKeys: keys, threshold: threshold ?? 1)
    }

    /// A verifier under the loaded policy, with `--threshold` when given (with trust roots, only to raise the
    /// signed policy's threshold, never to lower it).
    public func verifier(limits: PackageLimits = .default) throws -> PackageVerifier {
        let loaded = try load()
        let threshold = loaded.threshold(overriding: threshold)
        if let threshold, threshold > loaded.policy.keysByID.count {
            throw ValidationError("--threshold \(threshold) is more than the policy's \(loaded.policy.keysByID.count) keys.")
        }
        return PackageVerifier(policy: loaded.policy, threshold: threshold, limits: limits)
    }
}

/// The root keys a signed trust policy is checked against (spec section 14.4).
public struct RootOptions: ParsableArguments, Sendable {
    @Option(name: .long, help: "A root public key (SPKI PEM) that must have signed the trust policy; repeat for several. With it, only a signed, unexpired policy is accepted.")
    public var trustRoot: [String] = []

    @Option(name: [.customLong("trust-root-threshold"), .customLong("root-threshold")],
            help: "How many distinct --trust-root keys must have signed the policy.")
    public var trustRootThreshold = 1

    @Option(name: .long, help: "A file recording the newest signed policy accepted (created if missing, mode 0600): an older one is refused even after a restart.")
    public var trustState: String?

    @Option(name: .long, help: "A signed policy already in force: the rollback rule is applied against it (to reproduce a service's decision; the conformance suite's trust cases).")
    public var previousPolicy: String?

    public init() {}

    public func validate() throws {
        if !trustRoot.isEmpty && !(1...trustRoot.count).contains(trustRootThreshold) {
            throw ValidationError("--trust-root-threshold must be between 1 and the number of --trust-root options.")
        }
        if trustState != nil && trustRoot.isEmpty { throw ValidationError("--trust-state records signed policies: give --trust-root.") }
        if previousPolicy != nil && trustRoot.isEmpty { throw ValidationError("--previous-policy is a signed policy: give --trust-root.") }
    }

    /// The roots, or nil when none were given.
    /// - Throws: `ValidationError` when fewer distinct roots were given than must sign.
    public func roots() throws -> TrustRoots? {
        guard !trustRoot.isEmpty else { return nil }
        let keys = try trustRoot.map(loadPublicKey)
        guard Set(keys).count >= trustRootThreshold else {
            throw ValidationError("--trust-root-threshold \(trustRootThreshold) is more than the \(Set(keys).count) distinct roots.")
        }
        return TrustRoots(keys: keys, threshold: trustRootThreshold)
    }
}
