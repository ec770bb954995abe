import Foundation
import Testing
@testable import ContinuonPack

/// `trust init` then `trust add` of the test key for `environment`: the policy most tests start from.
func makeTestKeyPolicy(_ path: String, environment: String = "*", initArguments: [String] = []) throws {
    _ = try cli(["trust", "init", "--policy", path] + initArguments)
    _ = try cli(["trust", "add", "--policy", path, "--public-key", Repo.testPublicKey, "--environment", environment])
}

/// One entry of TestVectors/trust/cases.json (spec section 14).
struct TrustVector: Sendable, CustomTestStringConvertible {
    let name: String
    let package: String
    let policy: String
    let roots: [String]
    let rootThreshold: Int
    let threshold: Int?
    let previousPolicy: String?
    let policyError: String?
    let valid: Bool
    let codes: Set<String>
    let statuses: [String]
    var testDescription: String { name }

    static func path(_ relative: String) -> String { Repo.path("TestVectors/trust/" + relative) }

    static func all() throws -> [TrustVector] {
        let cases = try json(try readBytes(path("cases.json")))["cases"] as? [[String: Any]] ?? []
        return cases.map { entry in
            let expected = entry["expected"] as? [String: Any] ?? [:]
            return TrustVector(
                name: entry["name"] as? String ?? "?", package: entry["package"] as? String ?? "?",
                policy: entry["policy"] as? String ?? "?", roots: entry["roots"] as? [String] ?? [],
                rootThreshold: entry["root_threshold"] as? Int ?? 1, threshold: entry["threshold"] as? Int,
                previousPolicy: entry["previous_policy"] as? String, policyError: expected["policy_error"] as? String,
                valid: expected["valid"] as? Bool ?? false, codes: Set(expected["codes"] as? [String] ?? []),
                statuses: expected["statuses"] as? [String] ?? [])
        }
    }
}

@Suite("Trust policies")
struct TrustTests {
    @Test("Every trust vector: the policy is refused with its code, or the package gets its verdict, codes and statuses",
          arguments: try TrustVector.all())
    func vector(_ vector: TrustVector) throws {
        let roots = vector.roots.isEmpty ? nil : TrustRoots(
            keys: try vector.roots.map { try Ed25519PublicKey(pemRepresentation: try readBytes(TrustVector.path($0))) },
            threshold: vector.rootThreshold)
        let now = TrustPolicyLoader.currentTime()
        let previous = try vector.previousPolicy.map {
            try TrustPolicyLoader.load(try readBytes(TrustVector.path($0)), roots: roots, now: now)
        }
        let loaded: LoadedTrustPolicy
        do {
            loaded = try TrustPolicyLoader.load(try readBytes(TrustVector.path(vector.policy)), roots: roots, now: now, inForce: previous)
        } catch let error as ContinuonPackError {
            #expect(error.code.rawValue == vector.policyError, "\(error)")
            return
        }
        #expect(vector.policyError == nil, "the policy loaded; expected \(vector.policyError ?? "")")
        let report = try PackageVerifier(policy: loaded.policy, threshold: vector.threshold).verify(path: TrustVector.path(vector.package))
        #expect(report.valid == vector.valid)
        #expect(codes(report) == vector.codes)
        #expect(report.signatures.map(\.status.rawValue) == vector.statuses)
    }

    @Test("The CLI agrees with the library on every trust vector (verify --trust-policy --json)")
    func cliAgrees() throws {
        for vector in try TrustVector.all() {
            var arguments = ["verify", TrustVector.path(vector.package), "--trust-policy", TrustVector.path(vector.policy), "--json"]
            arguments += vector.roots.flatMap { ["--trust-root", TrustVector.path($0)] }
            arguments += ["--trust-root-threshold", String(vector.rootThreshold)].filter { _ in !vector.roots.isEmpty }
            if let threshold = vector.threshold { arguments += ["--threshold", String(threshold)] }
            if let previous = vector.previousPolicy { arguments += ["--previous-policy", TrustVector.path(previous)] }
            let result = try cli(arguments)
            if let code = vector.policyError {
                // A refused policy: exit 2, and with --json its code on standard output.
                #expect(result.status == 2, "\(vector.name): \(result.stderr)")
                #expect(try json(result.stdout)["policy_error"] as? String == code, "\(vector.name)")
                continue
            }
            #expect(result.status == (vector.valid ? 0 : 1), "\(vector.name): \(result.stderr)")
            let report = try json(result.stdout)
            let reported = Set((report["errors"] as? [[String: Any]] ?? []).compactMap { $0["code"] as? String })
            #expect(reported == vector.codes, "\(vector.name)")
            #expect((report["signatures"] as? [[String: Any]] ?? []).compactMap { $0["status"] as? String } == vector.statuses)
        }
    }

    @Test("Environment patterns: * is any run, the whole ID must match, case counts; hostile patterns stay fast")
    func patterns() throws {
        let table: [(String, String, Bool)] = [
            ("*", "lab-arm-01", true), ("lab-arm-*", "lab-arm-01", true), ("lab-arm-*", "lab-arm-", true),
            ("lab-arm-*", "lab-arm", false), ("*-01", "lab-arm-01", true), ("*-01", "lab-arm-011", false),
            ("lab*01", "lab01", true), ("l*a*b", "lab", true), ("l*a*b", "lb", false), ("**", "x", true),
            ("LAB-*", "lab-arm-01", false), ("lab-arm-01", "lab-arm-01", true), ("lab-arm-01", "lab-arm-012", false),
            ("a*b*c", "aXbYbZc", true), ("a*b*c", "aXbYbZ", false),
        ]
        for (pattern, id, expected) in table {
            #expect(try #require(EnvironmentPattern(pattern)).matches(id) == expected, "\(pattern) ~ \(id)")
        }
        for bad in ["", "lab arm", "lab/arm", "é", String(repeating: "a", count: 129), "lab\u{0}"] {
            #expect(EnvironmentPattern(bad) == nil, "\(bad)")
        }
        // The classic exponential case for backtracking matchers: 64 stars against 128 characters.
        let hostile = try #require(EnvironmentPattern(String(repeating: "a*", count: 63) + "b"))
        let clock = ContinuousClock()
        let elapsed = clock.measure { #expect(!hostile.matches(String(repeating: "a", count: 128))) }
        #expect(elapsed < .milliseconds(200))
    }

    @Test("Enrollment story: keygen on the robot, trust add by the operator, its packages verify; another robot's environment does not")
    func enrollment() throws {
        let dir = try TemporaryDirectory()
        let policy = dir.file("fleet.json")
        #expect(try cli(["trust", "init", "--policy", policy]).status == 0)
        #expect(try cli(["trust", "init", "--policy", policy]).status == 2, "init never overwrites")
        // Robot A makes its key on the device; the operator enrolls its public half for robot A's environment.
        #expect(try cli(["keygen", "--private-key", dir.file("robot-a.key"), "--public-key", dir.file("robot-a.pub")]).status == 0)
        let added = try cli(["trust", "add", "--policy", policy, "--public-key", dir.file("robot-a.pub"),
                             "--environment", "lab-arm-01", "--comment", "robot A"])
        #expect(added.status == 0, "\(added.stderr)")
        let again = try cli(["trust", "add", "--policy", policy, "--public-key", dir.file("robot-a.pub"), "--environment", "*"])
        #expect(again.status == 2 && again.stderr.contains("--replace"))
        let episodes = try dir.subdirectory("episodes")
        _ = try dir.write("episodes/steps.bin", Array("episode".utf8))
        func pack(_ environment: String, _ out: String) throws -> String {
            let result = try cli(["pack", episodes, "--key", dir.file("robot-a.key"), "--output", dir.file(out),
                                  "--environment-id", environment, "--runtime-version", "1.0.0", "--app-version", "1.0.0"])
            #expect(result.status == 0, "\(result.stderr)")
            return result.text.split(separator: "\n").last.map(String.init) ?? ""
        }
        let own = try pack("lab-arm-01", "own")
        let forged = try pack("lab-arm-02", "forged")
        #expect(try cli(["verify", own, "--trust-policy", policy]).status == 0)
        let refused = try cli(["verify", forged, "--trust-policy", policy, "--json"])
        #expect(refused.status == 1)
        #expect(refused.text.contains("signature.environment_not_allowed"))
        let check = try cli(["trust", "check", "--policy", policy, forged])
        #expect(check.status == 1 && check.text.contains("may sign for lab-arm-01, not for environment \"lab-arm-02\""), "\(check.text)")
        // Every edit raised the version and kept the file canonical.
        let document = try readBytes(policy)
        let decoded = try TrustPolicy.decode(document)
        #expect(decoded.version == 2)
        #expect(decoded.canonicalBytes() == document)
        let listed = try json(try cli(["trust", "list", "--policy", policy, "--json"]).stdout)
        #expect((listed["keys"] as? [[String: Any]])?.first?["comment"] as? String == "robot A")
        #expect(listed["sha256"] as? String == SHA256Hasher.hash(document).hex)
    }

    @Test("revoke keeps the key on record and refuses its signatures; remove drops it; a revoked key is not re-added")
    func revokeAndRemove() throws {
        let dir = try TemporaryDirectory()
        let policy = dir.file("p.json")
        try makeTestKeyPolicy(policy)
        let keyID = try Ed25519PublicKey(pemRepresentation: try readBytes(Repo.testPublicKey)).keyID
        let package = Repo.path("TestVectors/valid/package-none.cpkg")
        #expect(try cli(["verify", package, "--trust-policy", policy]).status == 0)
        #expect(try cli(["trust", "revoke", "--policy", policy, "--key-id", keyID, "--reason", "robot stolen"]).status == 0)
        let refused = try cli(["verify", package, "--trust-policy", policy, "--json"])
        #expect(refused.status == 1 && refused.text.contains("signature.key_revoked"))
        let readd = try cli(["trust", "add", "--policy", policy, "--public-key", Repo.testPublicKey, "--environment", "*", "--replace"])
        #expect(readd.status == 2 && readd.stderr.contains("revoked"))
        #expect(try cli(["trust", "remove", "--policy", policy, "--key-id", keyID]).status == 0)
        #expect(try TrustPolicy.decode(try readBytes(policy)).keysByID.isEmpty)
        #expect(try cli(["trust", "remove", "--policy", policy, "--key-id", keyID]).status == 2)
        #expect(try TrustPolicy.decode(try readBytes(policy)).version == 4)
        #expect(try dir.entries() == ["p.json"], "edits leave no temporary files")
    }

    @Test("trust sign: a plain policy becomes a signed one; a second root adds its signature; signed files are not edited")
    func signing() throws {
        let dir = try TemporaryDirectory()
        let policy = dir.file("p.json"), signed = dir.file("signed.json")
        try makeTestKeyPolicy(policy)
        let root1 = TrustVector.path("roots/root-1.pem"), root2 = TrustVector.path("roots/root-2.pem")
        let noExpiry = try cli(["trust", "sign", "--policy", policy, "--key", root1, "--output", signed])
        #expect(noExpiry.status == 2 && noExpiry.stderr.contains("--expires"))
        #expect(try cli(["trust", "set-expiry", "--policy", policy, "--expires", "2099-01-01T00:00:00Z"]).status == 0)
        #expect(try cli(["trust", "sign", "--policy", policy, "--key", root1, "--output", signed]).status == 0)
        #expect(try cli(["trust", "sign", "--policy", policy, "--key", root1, "--output", signed]).status == 2, "never overwrites")
        let package = Repo.path("TestVectors/valid/package-none.cpkg")
        let bothRoots = ["--trust-root", TrustVector.path("roots/root-1.pub"), "--trust-root", TrustVector.path("roots/root-2.pub"),
                         "--trust-root-threshold", "2"]
        let oneRoot = try cli(["verify", package, "--trust-policy", signed] + bothRoots)
        #expect(oneRoot.status == 2 && oneRoot.stderr.contains("trust.policy_signature"))
        #expect(try cli(["trust", "sign", "--policy", signed, "--key", root2]).status == 0)
        #expect(try cli(["verify", package, "--trust-policy", signed] + bothRoots).status == 0)
        let unsigned = try cli(["verify", package, "--trust-policy", policy] + bothRoots)
        #expect(unsigned.status == 2 && unsigned.stderr.contains("trust.policy_unsigned"))
        let edit = try cli(["trust", "add", "--policy", signed, "--public-key", Repo.path("TestVectors/keys/second-ed25519.pub"), "--environment", "*"])
        #expect(edit.status == 2 && edit.stderr.contains("signed policy"))
    }

    @Test("promote --trust-policy: robot A's package is promoted, its key's package for another environment refused")
    func promote() throws {
        let dir = try TemporaryDirectory()
        let staging = try dir.subdirectory("staging")
        let verifier = PackageVerifier(trustedKeys: [try Ed25519PublicKey(pemRepresentation: try readBytes(Repo.testPublicKey))])
        var ids: [String: String] = [:]
        for name in ["key1", "key1-env02"] {
            let path = TrustVector.path("packages/\(name).cpkg")
            let id = try #require(try verifier.verify(path: path).packageID)
            try FileManager.default.copyItem(atPath: path, toPath: staging + "/" + id + ".cpkg")
            ids[name] = id
        }
        let result = try cli(["promote", "--from", staging, "--to", dir.file("training"), "--json",
                              "--trust-policy", TrustVector.path("policies/key1-env01.json")])
        #expect(result.status == 1, "\(result.stderr)")
        let outcomes = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout)) as? [[String: Any]])
        let byID = Dictionary(uniqueKeysWithValues: outcomes.map { ($0["package_id"] as? String ?? "?", $0) })
        #expect(byID[ids["key1"] ?? ""]?["status"] as? String == "promoted")
        #expect(byID[ids["key1-env02"] ?? ""]?["status"] as? String == "refused")
        #expect(result.text.contains("signature.environment_not_allowed"))
        #expect(FileManager.default.fileExists(atPath: dir.file("training/vector-env-01/\(ids["key1"] ?? "")/_provenance.json")))
        #expect(!FileManager.default.fileExists(atPath: dir.file("training/vector-env-02")))
    }

    @Test("--trust-state: a signed policy older than the newest accepted is refused after a restart too")
    func stateAcrossRestarts() throws {
        let dir = try TemporaryDirectory()
        let state = dir.file("trust-state.json")
        let package = Repo.path("TestVectors/valid/package-none.cpkg")
        let roots = ["--trust-root", TrustVector.path("roots/root-1.pub"), "--trust-state", state]
        func verify(_ policy: String) throws -> ProcessResult {
            try cli(["verify", package, "--trust-policy", TrustVector.path(policy)] + roots)
        }
        #expect(try verify("signed/v2-root1.json").status == 0)
        #expect(try TrustFloor.read(path: state)?.version == 2)
        #expect(try verify("signed/v3-root1.json").status == 0)
        let rolledBack = try verify("signed/v2-root1.json")
        #expect(rolledBack.status == 2 && rolledBack.stderr.contains("trust.policy_rollback"), "\(rolledBack.stderr)")
        #expect(try verify("signed/v3-root1.json").status == 0, "the same policy again is fine")
        try Data("{".utf8).write(to: URL(fileURLWithPath: state))
        let damaged = try verify("signed/v3-root1.json")
        #expect(damaged.status == 2 && damaged.stderr.contains("trust state file is damaged"))
    }

    @Test("Eight trust add at once: every key lands, one version each (edits are serialized)")
    func concurrentEdits() throws {
        let dir = try TemporaryDirectory()
        let policy = dir.file("p.json")
        _ = try cli(["trust", "init", "--policy", policy])
        var processes: [Process] = []
        for index in 0..<8 {
            let key = try Ed25519PrivateKey(seed: [UInt8](repeating: UInt8(index + 1), count: 32))
            let pub = try dir.write("k\(index).pub", Array(try key.publicKey.pemRepresentation().utf8))
            processes.append(try launchCLI(["trust", "add", "--policy", policy, "--public-key", pub, "--environment", "robot-\(index)"]))
        }
        for process in processes { process.waitUntilExit() }
        #expect(processes.allSatisfy { $0.terminationStatus == 0 })
        let decoded = try TrustPolicy.decode(try readBytes(policy))
        #expect(decoded.keysByID.count == 8)
        #expect(decoded.version == 9)
    }

    @Test("Hostile policy files: too many JSON values, a FIFO, a directory are refused quickly, never read forever")
    func hostileFiles() throws {
        let dir = try TemporaryDirectory()
        let many = Array("[".utf8) + Array(repeating: Array("0,".utf8), count: TrustPolicy.maxJSONValues).flatMap { $0 } + Array("0]".utf8)
        let refusal = Result { () throws(ContinuonPackError) in
            try TrustPolicyLoader.load(many, roots: nil, now: TrustPolicyLoader.currentTime())
        }
        guard case let .failure(error) = refusal else {
            Issue.record("accepted")
            return
        }
        #expect(error.code == .trustPolicyInvalid)
        let fifo = dir.file("fifo.json")
        #expect(mkfifo(fifo, 0o600) == 0)
        for path in [fifo, dir.path] {
            let result = try cli(["verify", Repo.path("TestVectors/valid/package-none.cpkg"), "--trust-policy", path])
            #expect(result.status == 2 && result.stderr.contains("trust.policy_invalid"), "\(path): \(result.stderr)")
        }
    }

    @Test("A 10,000-key policy loads in well under a second and verifies like a one-key policy")
    func largePolicy() throws {
        var policy = TrustPolicy(expires: nil)
        for index in 0..<10_000 {
            var seed = [UInt8](repeating: 0, count: 32)
            seed[0] = UInt8(index & 0xff)
            seed[1] = UInt8(index >> 8)
            policy.set(.init(publicKey: try Ed25519PrivateKey(seed: seed).publicKey, environments: [.any]))
        }
        policy.set(.init(publicKey: try Ed25519PublicKey(pemRepresentation: try readBytes(Repo.testPublicKey)),
                         environments: [try #require(EnvironmentPattern("vector-*"))]))
        let bytes = policy.canonicalBytes()
        let loaded = try TrustPolicyLoader.load(bytes, roots: nil, now: TrustPolicyLoader.currentTime())
        #expect(loaded.policy.keysByID.count == 10_001)
        #expect(loaded.policy == policy)
        let report = try PackageVerifier(policy: loaded.policy).verify(path: Repo.path("TestVectors/valid/package-none.cpkg"))
        #expect(report.valid)
    }
}

/// `serve --trust-policy` while it runs (spec section 14.5).
@Suite("Trust policies in a running service", .serialized)
struct TrustServeTests {
    var keyID: String { (try? Ed25519PublicKey(pemRepresentation: try readBytes(Repo.testPublicKey)).keyID) ?? "?" }

    func health(_ server: PeerServer) throws -> [String: Any] {
        let body = try json(try run("curl", ["-sf", server.baseURL.absoluteString + "/healthz"]).stdout)
        return body["trust_policy"] as? [String: Any] ?? [:]
    }

    /// Packs a new package (its own blob, so its own package ID) signed by the test key for vector-env-01.
    func freshPackage(_ dir: TemporaryDirectory, _ label: String) throws -> String {
        let episodes = try dir.subdirectory("episodes-" + label)
        _ = try dir.write("episodes-\(label)/steps.bin", Array("episode \(label)".utf8))
        let result = try cli(["pack", episodes, "--key", Repo.path("TestVectors/keys/test-ed25519.pem"), "--output", dir.file("out-" + label),
                              "--environment-id", "vector-env-01", "--runtime-version", "1.0.0", "--app-version", "1.0.0"])
        return result.text.split(separator: "\n").last.map(String.init) ?? ""
    }

    /// Uploads a new package with a fresh outbox; returns the rejection's code, or nil when it was accepted.
    func upload(_ server: PeerServer, _ dir: TemporaryDirectory, _ label: String) throws -> String? {
        let package = try freshPackage(dir, label)
        let result = try cli(["upload", package, "--to", server.baseURL.absoluteString, "--outbox", dir.file("outbox-" + label),
                              "--json", "--deadline", "20"])
        let state = (try JSONSerialization.jsonObject(with: Data(result.stdout)) as? [[String: Any]])?.first ?? [:]
        if result.status == 0 { return nil }
        let problem = try json(Array((state["rejection_body"] as? String ?? "").utf8))
        return problem["code"] as? String ?? "exit \(result.status): \(result.stderr)"
    }

    /// Waits up to `seconds` for `condition`.
    func eventually(_ seconds: Double = 5, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return true }
            usleep(50_000)
        }
        return try condition()
    }

    @Test("Revocation without a restart: SIGHUP, and a change of the file alone, put the new policy in force; nothing is stored")
    func revocation() throws {
        let dir = try TemporaryDirectory()
        let policy = dir.file("fleet.json")
        try makeTestKeyPolicy(policy, environment: "vector-*")
        let server = try startServe(dir, trusting: [], extra: ["--trust-policy", policy])
        #expect(try health(server)["version"] as? Int == 2)
        #expect(try health(server)["sha256"] as? String == SHA256Hasher.hash(try readBytes(policy)).hex)
        #expect(try upload(server, dir, "1") == nil)
        #expect(storedPackages(dir).count == 1)
        // Revoke, and tell the service.
        _ = try cli(["trust", "revoke", "--policy", policy, "--key-id", keyID, "--reason", "robot stolen"])
        kill(server.process.processIdentifier, SIGHUP)
        #expect(try eventually { try health(server)["version"] as? Int == 3 })
        #expect(try upload(server, dir, "2") == "signature.key_revoked")
        #expect(storedPackages(dir).count == 1)
        // Trust it again through an edit the service notices by itself (remove, then add: no signal).
        _ = try cli(["trust", "remove", "--policy", policy, "--key-id", keyID])
        _ = try cli(["trust", "add", "--policy", policy, "--public-key", Repo.testPublicKey, "--environment", "*"])
        #expect(try eventually { try health(server)["version"] as? Int == 5 })
        #expect(try upload(server, dir, "3") == nil)
        #expect(storedPackages(dir).count == 2)
        #expect(server.process.isRunning)
        let log = String(decoding: try readBytes(dir.file("serve.log")), as: UTF8.self)
        #expect(log.contains("trust policy in force"))
    }

    @Test("A revocation loaded while an upload is under way applies to it: refused at its last chunk, nothing stored")
    func revocationMidUpload() throws {
        let dir = try TemporaryDirectory()
        let policy = dir.file("fleet.json")
        try makeTestKeyPolicy(policy)
        let server = try startServe(dir, trusting: [], extra: ["--trust-policy", policy])
        // A package of about 600 KiB: its first 256 KiB (the envelope and more) arrive under the old policy.
        let episodes = try dir.subdirectory("big")
        _ = try dir.write("big/frames.bin", (0..<600_000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        let packed = try cli(["pack", episodes, "--key", Repo.path("TestVectors/keys/test-ed25519.pem"), "--output", dir.file("out"),
                              "--environment-id", "vector-env-01", "--runtime-version", "1.0.0", "--app-version", "1.0.0",
                              "--compression", "none"])
        let package = try #require(packed.text.split(separator: "\n").last.map(String.init))
        let bytes = try readBytes(package)
        try #require(bytes.count > 262_144)
        let name = (package as NSString).lastPathComponent
        let base = server.baseURL.absoluteString
        let started = try run("curl", ["-s", "-D", "-", "-o", "/dev/null", "-X", "POST", "-H", "Content-Type: application/json",
                                       "-d", "{}", base + "/upload/storage/v1/b/staging/o?uploadType=resumable&name=" + name])
        let location = try #require(started.text.split(separator: "\r\n").first { $0.lowercased().hasPrefix("location:") })
            .dropFirst("location:".count).trimmingCharacters(in: .whitespaces)
        let first = try dir.write("first", Array(bytes[0..<262_144]))
        let rest = try dir.write("rest", Array(bytes[262_144...]))
        let firstAnswer = try run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "--data-binary", "@" + first,
                                           "-H", "Content-Range: bytes 0-262143/*", location])
        #expect(firstAnswer.text == "308")
        _ = try cli(["trust", "revoke", "--policy", policy, "--key-id", keyID, "--reason", "stolen mid-upload"])
        kill(server.process.processIdentifier, SIGHUP)
        #expect(try eventually { try health(server)["version"] as? Int == 3 })
        let last = try run("curl", ["-s", "-w", "\n%{http_code}", "-X", "PUT", "--data-binary", "@" + rest,
                                    "-H", "Content-Range: bytes 262144-\(bytes.count - 1)/\(bytes.count)", location])
        let lines = last.text.split(separator: "\n")
        #expect(lines.last == "422", "\(last.text)")
        #expect(try json(Array(lines.dropLast().joined(separator: "\n").utf8))["code"] as? String == "signature.key_revoked")
        #expect(storedPackages(dir).isEmpty)
    }

    @Test("A policy that does not load keeps the one in force (never fails open), and is logged with its code")
    func corruptPolicy() throws {
        let dir = try TemporaryDirectory()
        let policy = dir.file("fleet.json")
        try makeTestKeyPolicy(policy)
        let server = try startServe(dir, trusting: [], extra: ["--trust-policy", policy])
        for (label, bytes) in [("truncated", Array(try readBytes(policy).prefix(40))), ("empty", []),
                               ("other schema", Array(#"{"schema":"x","version":9,"threshold":1,"keys":[]}"#.utf8))] {
            try Data(bytes).write(to: URL(fileURLWithPath: policy))
            kill(server.process.processIdentifier, SIGHUP)
            usleep(1_500_000)
            #expect(try health(server)["version"] as? Int == 2, "\(label)")
        }
        try FileManager.default.removeItem(atPath: policy)
        kill(server.process.processIdentifier, SIGHUP)
        usleep(1_500_000)
        #expect(try upload(server, dir, "1") == nil, "the last good policy is in force")
        let log = String(decoding: try readBytes(dir.file("serve.log")), as: UTF8.self)
        #expect(log.contains("trust.policy_invalid"))
        #expect((try health(server)["last_refused"] as? [String: Any])?["code"] != nil)
        #expect(server.process.isRunning)
    }

    @Test("A signed policy: an older or expired one offered while running is refused; a newer one is taken; an unsigned one never")
    func signedPolicy() throws {
        let dir = try TemporaryDirectory()
        let plain = dir.file("plain.json"), live = dir.file("live.json")
        let root = TrustVector.path("roots/root-1.pem")
        func signed(_ name: String) throws -> String {
            let out = dir.file(name)
            let result = try cli(["trust", "sign", "--policy", plain, "--key", root, "--output", out])
            #expect(result.status == 0, "\(result.stderr)")
            return out
        }
        try makeTestKeyPolicy(plain, initArguments: ["--expires", "2099-01-01T00:00:00Z"])
        let version2 = try signed("v2.json")
        _ = try cli(["trust", "revoke", "--policy", plain, "--key-id", keyID, "--reason", "stolen"])
        let version3 = try signed("v3.json")
        try FileManager.default.copyItem(atPath: version2, toPath: live)
        let roots = ["--trust-root", TrustVector.path("roots/root-1.pub")]
        let unsignedStart = try cli(["serve", "--listen", "127.0.0.1:0", "--store", dir.file("s0"), "--trust-policy", plain] + roots)
        #expect(unsignedStart.status == 2 && unsignedStart.stderr.contains("trust.policy_unsigned"))
        let server = try startServe(dir, trusting: [], extra: ["--trust-policy", live] + roots)
        #expect(try health(server)["signed"] as? Bool == true)
        #expect(try upload(server, dir, "1") == nil)
        // The newer policy (the revocation) goes in force.
        try replace(live, with: version3)
        #expect(try eventually { try health(server)["version"] as? Int == 3 })
        // Someone who can write the file puts the old one back: refused, the revocation stays.
        try replace(live, with: version2)
        kill(server.process.processIdentifier, SIGHUP)
        usleep(1_500_000)
        #expect(try health(server)["version"] as? Int == 3)
        // So is an unsigned policy, whatever it says.
        try replace(live, with: plain)
        usleep(1_500_000)
        #expect(try health(server)["version"] as? Int == 3)
        let log = String(decoding: try readBytes(dir.file("serve.log")), as: UTF8.self)
        #expect(log.contains("trust.policy_rollback") && log.contains("trust.policy_unsigned"))
    }

    func replace(_ path: String, with source: String) throws {
        let temporary = path + ".new"
        try? FileManager.default.removeItem(atPath: temporary)
        try FileManager.default.copyItem(atPath: source, toPath: temporary)
        guard rename(temporary, path) == 0 else { throw ContinuonPackError(.ioError, "rename") }
    }

    @Test("When the policy in force expires, new uploads get 503 trust.policy_expired")
    func expiry() throws {
        let dir = try TemporaryDirectory()
        let policy = dir.file("p.json")
        // Expires two seconds from now.
        let soon = PackageWriter.timestamp(secondsSinceEpoch: Int64(Date().timeIntervalSince1970) + 2)
        try makeTestKeyPolicy(policy, initArguments: ["--expires", soon])
        let server = try startServe(dir, trusting: [], extra: ["--trust-policy", policy])
        usleep(3_000_000)
        // A device's uploader retries a 503 until its deadline, keeping its copy; ask the way it does, once.
        let answer = try run("curl", ["-s", "-w", "\n%{http_code}", "-X", "POST", "-H", "Content-Type: application/json", "-d", "{}",
                                      server.baseURL.absoluteString + "/upload/storage/v1/b/staging/o?uploadType=resumable&name=x.cpkg"])
        let lines = answer.text.split(separator: "\n")
        #expect(lines.last == "503")
        #expect(try json(Array(lines.dropLast().joined(separator: "\n").utf8))["code"] as? String == "trust.policy_expired")
        #expect(storedPackages(dir).isEmpty)
    }
}
