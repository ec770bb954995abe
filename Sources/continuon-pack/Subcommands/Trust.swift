#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import ContinuonPack
import ContinuonPackCLI

extension ContinuonPackCommand {
    struct Trust: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Keep a fleet's trust policy: which keys may sign for which environments, until when, and revocations.",
            discussion: """
                The policy (docs/signed-ingestion.md, section 14) is what verify, promote and serve take with \
                --trust-policy. Every edit raises its version and rewrites it atomically as canonical JSON; a signed \
                policy is made from a plain one with `trust sign` and is not edited in place.
                """,
            subcommands: [Init.self, Add.self, Revoke.self, Remove.self, SetExpiry.self, List.self, Check.self, Sign.self])
    }
}

/// The policy file every `trust` subcommand names.
struct PolicyFileOption: ParsableArguments {
    @Option(name: .long, help: "The trust policy file.")
    var policy: String

    /// Reads the plain policy for an edit (its expiry is not a reason to refuse editing it).
    func readPlain() throws -> TrustPolicy {
        let bytes = try readSmallFile(policy, limit: TrustPolicy.maxDocumentBytes)
        if TrustPolicyLoader.isSignedPolicy(bytes) {
            throw ValidationError("\(policy) is a signed policy: edit the plain policy it was made from, then run trust sign again.")
        }
        return try TrustPolicy.decode(bytes)
    }

    /// Reads the plain policy, lets `change` edit it, and writes the next edition (version raised, canonical, the
    /// file's mode kept) atomically, all under an exclusive lock on the policy's directory, so that two edits at
    /// once both land, one after the other.
    func edit(_ change: (inout TrustPolicy) throws -> Void) throws {
        let lock = try DirectoryLock(FileIO.parentDirectory(of: policy))
        defer { lock.unlock() }
        var next = try readPlain()
        try change(&next)
        next.version += 1
        var status = stat()
        let mode = stat(policy, &status) == 0 ? status.st_mode & 0o7777 : 0o644
        try FileIO.replaceFile(next.canonicalBytes(), at: policy, mode: mode)
        print("\(policy): version \(next.version), \(next.keysByID.count) key(s)")
    }
}

private func timestamp(_ text: String?, _ flag: String) throws -> String? {
    guard let text else { return nil }
    guard FormatRules.isValidTimestamp(text) else { throw ValidationError("\(flag) must be YYYY-MM-DDTHH:MM:SSZ (UTC).") }
    return text
}

extension ContinuonPackCommand.Trust {
    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make an empty policy (version 1, trusting no key); never overwrites a file.")

        @OptionGroup var file: PolicyFileOption

        @Option(name: .long, help: "How many distinct keys must sign a package.")
        var threshold = 1

        @Option(name: .long, help: "When the policy stops being usable (YYYY-MM-DDTHH:MM:SSZ); required to sign it.")
        var expires: String?

        func run() throws {
            guard threshold >= 1 else { throw ValidationError("--threshold must be at least 1.") }
            let policy = TrustPolicy(version: 1, threshold: threshold, expires: try timestamp(expires, "--expires"))
            try FileIO.writeNewFile(policy.canonicalBytes(), to: file.policy, mode: 0o644)
            print("\(file.policy): version 1, no keys")
        }
    }

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Trust a key for the environments named (none named: none allowed; '*': all).")

        @OptionGroup var file: PolicyFileOption

        @Option(name: .long, help: "The key's public key (SPKI PEM, as keygen writes it).")
        var publicKey: String

        @Option(name: .long, help: "An environment-ID pattern the key may sign for ('*' matches any run of characters); repeat for several.")
        var environment: [String] = []

        @Option(name: .long, help: "The key counts only for manifests created at or after this time (YYYY-MM-DDTHH:MM:SSZ).")
        var notBefore: String?

        @Option(name: .long, help: "The key counts only for manifests created at or before this time.")
        var notAfter: String?

        @Option(name: .long, help: "A note for people (which robot, who enrolled it).")
        var comment: String?

        @Flag(name: .long, help: "Replace the rules of a key already in the policy (a revoked key is never replaced).")
        var replace = false

        func run() throws {
            let key = try loadPublicKey(publicKey)
            var patterns: [EnvironmentPattern] = []
            for text in environment {
                guard let pattern = EnvironmentPattern(text) else {
                    throw ValidationError("--environment \(text): a pattern is 1 to 128 of A-Z a-z 0-9 . _ + : @ - and *.")
                }
                if !patterns.contains(pattern) { patterns.append(pattern) }
            }
            guard patterns.count <= TrustPolicy.maxEnvironments else {
                throw ValidationError("A key may have at most \(TrustPolicy.maxEnvironments) environment patterns.")
            }
            let notBefore = try timestamp(notBefore, "--not-before"), notAfter = try timestamp(notAfter, "--not-after")
            if let notBefore, let notAfter, notAfter < notBefore {
                throw ValidationError("--not-after is earlier than --not-before.")
            }
            if let comment, comment.utf8.count > TrustPolicy.maxTextBytes {
                throw ValidationError("--comment is longer than \(TrustPolicy.maxTextBytes) bytes.")
            }
            try file.edit { policy in
                let existing = policy[key.keyID]
                if let existing {
                    guard existing.revocation == nil else {
                        throw ValidationError("Key \(key.keyID) is revoked; a revoked key is not trusted again by add (remove it first if you mean to).")
                    }
                    guard replace else { throw ValidationError("Key \(key.keyID) is already in the policy; give --replace to change its rules.") }
                }
                guard policy.keysByID.count < TrustPolicy.maxKeys || existing != nil else {
                    throw ValidationError("The policy holds \(TrustPolicy.maxKeys) keys, the limit.")
                }
                // --replace changes what is given and keeps the rest (environments are always given anew).
                policy.set(TrustPolicy.Key(publicKey: key, environments: patterns, notBefore: notBefore ?? existing?.notBefore,
                                           notAfter: notAfter ?? existing?.notAfter, comment: comment ?? existing?.comment))
            }
            if patterns.isEmpty { printError("warning: key \(key.keyID) may sign for no environment (give --environment).") }
            print("added \(key.keyID)")
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a key: its signatures never count again, whatever time a manifest claims.")

        @OptionGroup var file: PolicyFileOption

        @Option(name: .long, help: "The key ID (64 hex, as keygen and verify print it).")
        var keyId: String

        @Option(name: .long, help: "Why (kept in the policy).")
        var reason: String

        @Option(name: .long, help: "When it was revoked (default: now).")
        var at: String?

        func run() throws {
            guard (1...TrustPolicy.maxTextBytes).contains(reason.utf8.count) else {
                throw ValidationError("--reason must be 1 to \(TrustPolicy.maxTextBytes) bytes.")
            }
            let at = try timestamp(at, "--at") ?? TrustPolicyLoader.currentTime()
            try file.edit { policy in
                guard var key = policy[keyId] else { throw ValidationError("Key \(keyId) is not in \(file.policy).") }
                guard key.revocation == nil else { throw ValidationError("Key \(keyId) is already revoked.") }
                key.revocation = .init(at: at, reason: reason)
                policy.set(key)
            }
            print("revoked \(keyId)")
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove a key from the policy (to stop trusting a key for good, revoke it instead: a revocation is kept on record).")

        @OptionGroup var file: PolicyFileOption

        @Option(name: .long, help: "The key ID.")
        var keyId: String

        func run() throws {
            try file.edit { policy in
                guard policy.remove(keyID: keyId) != nil else { throw ValidationError("Key \(keyId) is not in \(file.policy).") }
            }
            print("removed \(keyId)")
        }
    }

    struct SetExpiry: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-expiry",
            abstract: "Set when the policy stops being usable (a new version; sign it again to renew a signed policy).")

        @OptionGroup var file: PolicyFileOption

        @Option(name: .long, help: "YYYY-MM-DDTHH:MM:SSZ (UTC).")
        var expires: String?

        @Flag(name: .long, help: "Remove the expiry (a signed policy must have one).")
        var never = false

        func run() throws {
            guard (expires == nil) != !never else { throw ValidationError("Give --expires T or --never.") }
            let expiry = try timestamp(expires, "--expires")
            try file.edit { policy in policy.expires = expiry }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the policy's keys and their rules.")

        @OptionGroup var file: PolicyFileOption

        @OptionGroup var roots: RootOptions

        @Flag(name: .long, help: "Print the policy as JSON, with its version, SHA-256 and whether it was signed.")
        var json = false

        func run() throws {
            // An expired policy is still shown (and said to be expired).
            let loaded = try TrustPolicyLoader.load(path: file.policy, roots: roots.roots(), now: "0000-01-01T00:00:00Z")
            let policy = loaded.policy
            let expired = policy.hasExpired(at: TrustPolicyLoader.currentTime())
            if expired { printError("warning: \(file.policy) expired at \(policy.expires ?? "?"); verifiers refuse it.") }
            if json {
                guard case var .object(members) = policy.jsonValue else { return }
                members += [("sha256", .string(loaded.sha256)), ("signed", .bool(loaded.signed)), ("expired", .bool(expired)),
                            ("root_key_ids", .array(loaded.rootKeyIDs.map(JSONValue.string)))]
                printJSON(.object(members))
                return
            }
            print("\(file.policy): version \(policy.version), threshold \(policy.threshold)"
                  + (policy.expires.map { ", expires \($0)" } ?? "") + (loaded.signed ? ", signed" : ""))
            for key in policy.keys {
                var line = "\(key.keyID)  " + (key.environments.isEmpty ? "(no environment)" : key.environments.map(\.text).joined(separator: ","))
                if let notBefore = key.notBefore { line += "  from \(notBefore)" }
                if let notAfter = key.notAfter { line += "  until \(notAfter)" }
                if let revocation = key.revocation { line += "  REVOKED \(revocation.at): \(revocation.reason)" }
                if let comment = key.comment { line += "  # \(comment)" }
                print(line)
            }
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify packages under the policy and explain, signature by signature, why each counts or not.",
            discussion: "Exit 0 when every package is valid, 1 when any is not, 2 on usage or I/O errors or a refused policy.")

        @OptionGroup var file: PolicyFileOption

        @Argument(help: "The .cpkg files.")
        var packages: [String]

        @OptionGroup var roots: RootOptions

        @Option(name: .long, help: "How many distinct keys must count (default: the policy's threshold).")
        var threshold: Int?

        @Flag(name: .long, help: "Print the verification report(s) as JSON; each signature carries its status.")
        var json = false

        func run() throws {
            let loaded = try TrustPolicyLoader.load(path: file.policy, roots: roots.roots())
            let verifier = PackageVerifier(policy: loaded.policy, threshold: threshold)
            let reports = try packages.map { try verifier.verify(path: $0) }
            if json {
                printJSON(reports.count == 1 ? reports[0].jsonValue : .array(reports.map(\.jsonValue)))
            } else {
                for report in reports {
                    print("\(report.path): \(report.valid ? "VALID" : "INVALID")")
                    if let manifest = report.manifest {
                        print("  environment \(manifest.provenance.environmentID), created \(manifest.createdAt)")
                    }
                    if report.signatures.isEmpty { print("  no signature") }
                    for signature in report.signatures {
                        print("  \(signature.keyID): \(signature.status) — \(signature.reason)")
                    }
                    print("  \(report.verifiedKeyIDs.count) key(s) counted; the threshold is \(verifier.effectiveThreshold)")
                    for failure in report.failures { print("  error \(failure.code): \(failure.message)") }
                }
            }
            if !reports.allSatisfy(\.valid) { throw ExitStatus.invalid }
        }
    }

    struct Sign: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Sign a policy with a root key (services given --trust-root then accept only signed, newer, unexpired policies).",
            discussion: """
                From a plain policy, writes a new signed policy to --output (never overwriting a file); it must have \
                an expiry (trust set-expiry). From a signed policy, adds this root's signature (--output defaults \
                to the same file, replaced atomically), so that several roots can sign one after another. To renew \
                or change a signed policy, edit the plain one (each edit raises its version) and sign it again.
                """)

        @OptionGroup var file: PolicyFileOption

        @Option(name: .long, help: "A root's private key (PKCS#8 PEM); repeat for several.")
        var key: [String]

        @Option(name: .long, help: "Passphrase file for encrypted keys.")
        var passphraseFile: String?

        @Option(name: .long, help: "Where to write the signed policy.")
        var output: String?


        func run() throws {
            guard !key.isEmpty else { throw ValidationError("Give at least one --key.") }
            let keys = try key.map { try loadPrivateKey($0, passphraseFile: passphraseFile) }
            let bytes = try readSmallFile(file.policy, limit: TrustPolicyLoader.maxFileBytes)
            if TrustPolicyLoader.isSignedPolicy(bytes) {
                let signed = try TrustPolicyLoader.addSignatures(to: bytes, with: keys)
                try FileIO.replaceFile(signed, at: output ?? file.policy, mode: 0o644)
                print("\(output ?? file.policy): signed by \(keys.map(\.publicKey.keyID).joined(separator: ", "))")
                return
            }
            guard let output else { throw ValidationError("Give --output for the signed policy.") }
            let policy = try TrustPolicy.decode(bytes)
            guard let expires = policy.expires else {
                throw ValidationError("A signed policy must expire: trust set-expiry --policy \(file.policy) --expires YYYY-MM-DDTHH:MM:SSZ first.")
            }
            guard !policy.hasExpired(at: TrustPolicyLoader.currentTime()) else {
                throw ValidationError("The policy expired at \(expires); set a later expiry first.")
            }
            try FileIO.writeNewFile(TrustPolicyLoader.sign(policy, with: keys), to: output, mode: 0o644)
            print("\(output): version \(policy.version), expires \(expires), signed by \(keys.map(\.publicKey.keyID).joined(separator: ", "))")
        }
    }
}

/// An exclusive `flock` on a directory, held until `unlock()`: serializes `trust` edits of the policies in it
/// without creating a file beside them.
private final class DirectoryLock {
    private var fd: Int32

    init(_ directory: String) throws {
        fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw ContinuonPackError(.ioError, "Cannot open \(directory) to lock it.") }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else {
                close(fd)
                throw ContinuonPackError(.ioError, "Cannot lock \(directory).")
            }
        }
    }

    func unlock() {
        guard fd >= 0 else { return }
        flock(fd, LOCK_UN)
        close(fd)
        fd = -1
    }

    deinit { unlock() }
}
