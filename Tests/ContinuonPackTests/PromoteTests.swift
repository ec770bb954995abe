import Foundation
import Testing
@testable import ContinuonPack
@testable import ContinuonPackPromote
@testable import ContinuonPackUpload

/// `promote`, directory to directory: staged packages verified again, record by record, and published create-only.
@Suite("Promotion to training storage", .serialized)
struct PromoteTests {
    /// A staging directory: one valid package per environment in `valid`, and the refused kinds.
    struct Staged {
        let dir: TemporaryDirectory
        let staging: String
        let training: String
        /// Package ID -> its episode directory, for the valid ones.
        var valid: [String: String] = [:]
        /// Package ID -> the code promotion must refuse it with.
        var refused: [String: String] = [:]
    }

    static func pack(_ episodes: String, into output: String, environment: String, key: String = Repo.testKey,
                     extra: [String] = []) throws -> String {
        let result = try cli(["pack", episodes, "--key", key, "--runtime-version", "1", "--app-version", "1",
                              "--environment-id", environment, "--output", output] + extra)
        #expect(result.status == 0, "\(result.stderr)")
        return result.lastLine
    }

    static func stage(valid count: Int, refusedKinds: Bool) throws -> Staged {
        let dir = try TemporaryDirectory()
        var staged = Staged(dir: dir, staging: try dir.subdirectory("staging"), training: dir.path + "/training")
        let fixtures = try TFRecordTests.fixtures(try TemporaryDirectory())
        let good = try #require(fixtures.first { $0.name == "valid.tfrecord" }).bytes
        let bad = try #require(fixtures.first { $0.name == "flipped-data-byte.tfrecord" }).bytes
        for index in 0..<count {
            let episodes = try dir.subdirectory("episodes-\(index)")
            _ = try dir.write("episodes-\(index)/steps.tfrecord-00000-of-00001", good)
            _ = try dir.write("episodes-\(index)/camera/frame-\(index).bin", Array("frame \(index)".utf8))
            let path = try pack(episodes, into: staged.staging, environment: "robot-\(index % 3)")
            staged.valid[URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent] = episodes
        }
        guard refusedKinds else { return staged }
        func id(_ path: String) -> String { URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent }
        // A corrupt TFRecord, signed anyway (--no-check-tfrecord).
        let corrupt = try dir.subdirectory("corrupt")
        _ = try dir.write("corrupt/steps.tfrecord", bad)
        // A good blob before the bad one: a promoter that committed blobs before the verdict would leave it behind.
        _ = try dir.write("corrupt/a-first.bin", Array("checked, and fine".utf8))
        staged.refused[id(try pack(corrupt, into: staged.staging, environment: "robot-0", extra: ["--no-check-tfrecord"]))] =
            "promote.tfrecord_corrupt"
        // Signed by a key promotion does not trust.
        let untrusted = try dir.subdirectory("untrusted")
        _ = try dir.write("untrusted/a.bin", Array("untrusted".utf8))
        staged.refused[id(try pack(untrusted, into: staged.staging, environment: "robot-0", key: Repo.secondKey))] =
            "signature.untrusted"
        // A byte of the archive changed after signing (written straight into staging, as objectCreator could).
        let tampered = try dir.subdirectory("tampered")
        _ = try dir.write("tampered/a.bin", [UInt8](repeating: 7, count: 5000))
        let tamperedPath = try pack(tampered, into: try dir.subdirectory("elsewhere"), environment: "robot-0",
                                    extra: ["--compression", "none"])
        var bytes = try readBytes(tamperedPath)
        bytes[bytes.count - 2048 - 600] ^= 1
        _ = try dir.write("staging/" + URL(fileURLWithPath: tamperedPath).lastPathComponent, bytes)
        staged.refused[id(tamperedPath)] = "blob.digest_mismatch"
        return staged
    }

    static func promote(_ staged: Staged, _ extra: [String] = [], environment: [String: String]? = nil) throws -> (Int32, [[String: Any]]) {
        let result = try cli(["promote", "--from", staged.staging, "--to", staged.training, "--trusted-key", Repo.testPublicKey,
                              "--json"] + extra, environment: environment)
        let data = Data(result.stdout)
        let outcomes = (try? JSONSerialization.jsonObject(with: data) as? [[String: Any]]) ?? []
        #expect(!outcomes.isEmpty || result.status == 2, "\(result.text) \(result.stderr)")
        return (result.status, outcomes)
    }

    /// Puts `path` into the emulator's bucket `staging` as `name` (percent-encoded), in one media upload.
    static func putObject(_ path: String, as name: String, base: String) throws {
        let result = try run("curl", ["-sf", "-o", "/dev/null", "-X", "POST", "-H", "Content-Type: application/octet-stream",
                                      "--data-binary", "@" + path, base + "/upload/storage/v1/b/staging/o?uploadType=media&name=" + name])
        #expect(result.status == 0, "\(result.stderr)")
    }

    /// Runs `continuon-pack` with each argument list at once (each prints `--json` outcomes); every run must exit 0
    /// and report only `allowed` statuses when given. Returns how many runs promoted each package.
    static func promoteConcurrently(_ runs: [[String]], in dir: TemporaryDirectory, allowed: Set<String>? = nil) throws -> [String: Int] {
        let processes = try runs.enumerated().map { index, arguments -> (Process, URL) in
            let output = URL(fileURLWithPath: dir.file("concurrent-\(index).json"))
            FileManager.default.createFile(atPath: output.path, contents: nil)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: Repo.cli)
            process.arguments = arguments
            process.standardOutput = try FileHandle(forWritingTo: output)
            process.standardError = FileHandle.nullDevice
            try process.run()
            return (process, output)
        }
        var promoted: [String: Int] = [:]
        for (process, output) in processes {
            process.waitUntilExit()
            #expect(process.terminationStatus == 0)
            let outcomes = try JSONSerialization.jsonObject(with: Data(contentsOf: output)) as? [[String: Any]] ?? []
            if let allowed {
                #expect(outcomes.allSatisfy { allowed.contains($0["status"] as? String ?? "") }, "\(outcomes)")
            }
            for outcome in outcomes where outcome["status"] as? String == "promoted" {
                promoted[outcome["package_id"] as? String ?? "", default: 0] += 1
            }
        }
        return promoted
    }

    static func sha256(_ path: String) throws -> String {
        let hasher = SHA256Hasher()
        hasher.update(try readBytes(path))
        return hasher.finalize().hex
    }

    /// Every file under `root` (relative paths) and its SHA-256, skipping the promoter's own `.promote/`.
    static func tree(_ root: String) throws -> [String: String] {
        var files: [String: String] = [:]
        guard let walker = FileManager.default.enumerator(atPath: root) else { return [:] }
        for case let relative as String in walker where !relative.hasPrefix(".promote") {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: root + "/" + relative, isDirectory: &isDirectory), !isDirectory.boolValue {
                files[relative] = try sha256(root + "/" + relative)
            }
        }
        return files
    }

    /// Checks the training tree holds exactly the valid packages, byte for byte, each with its marker.
    static func expectPromoted(_ staged: Staged) throws {
        let tree = try tree(staged.training)
        var expected = 0
        for (id, episodes) in staged.valid {
            let marker = try #require(tree.keys.first { $0.hasSuffix(id + "/_provenance.json") }, "no marker for \(id)")
            let environment = String(marker.split(separator: "/")[0])
            let frame = "camera/" + (try #require(try FileManager.default.contentsOfDirectory(atPath: episodes + "/camera").first))
            for name in ["steps.tfrecord-00000-of-00001", frame] {
                #expect(tree["\(environment)/\(id)/\(name)"] == (try sha256(episodes + "/" + name)), "\(id)/\(name)")
            }
            let value = try json(try readBytes(staged.training + "/" + marker))
            #expect(value["schema"] as? String == "continuon.promotion/v1")
            #expect(value["package_id"] as? String == id)
            #expect(value["package_sha256"] as? String == (try sha256(staged.staging + "/" + id + ".cpkg")))
            #expect(value["key_ids"] as? [String] == ["74c181c7ad8a0855d4b55e44d2ba87aabdddb196832571f15f92fece332e4916"])
            expected += 3
        }
        #expect(tree.count == expected, "only the valid packages: \(tree.keys.sorted())")
        #expect((try? FileManager.default.contentsOfDirectory(atPath: staged.training + "/.promote"))?.allSatisfy { $0.hasSuffix(".lock") } ?? true,
                "no partial directory left")
    }

    @Test("Staging to training: valid packages promoted byte for byte with their marker; corrupt TFRecord, untrusted and tampered packages promoted nowhere; staging unchanged; a second run changes nothing")
    func story() throws {
        let staged = try Self.stage(valid: 3, refusedKinds: true)
        let before = try Self.tree(staged.staging)
        let (status, outcomes) = try Self.promote(staged)
        #expect(status == 1)
        for outcome in outcomes {
            let id = try #require(outcome["package_id"] as? String)
            if let code = staged.refused[id] {
                #expect(outcome["status"] as? String == "refused")
                let codes = (outcome["errors"] as? [[String: Any]])?.compactMap { $0["code"] as? String } ?? []
                #expect(codes.contains(code), "\(id): \(codes)")
            } else {
                #expect(outcome["status"] as? String == "promoted", "\(outcome)")
            }
        }
        #expect(outcomes.count == 6)
        try Self.expectPromoted(staged)
        #expect(try Self.tree(staged.staging) == before, "staging is never changed")

        let (again, second) = try Self.promote(staged)
        #expect(again == 1)
        #expect(second.filter { $0["status"] as? String == "already_promoted" }.count == 3)
        try Self.expectPromoted(staged)

        // TensorFlow reads every record of every promoted TFRecord.
        let files = try Self.tree(staged.training).keys.filter { $0.contains(".tfrecord") }.map { staged.training + "/" + $0 }
        #expect(files.count == 3)
        let read = try run("/usr/bin/env", ["python3", Repo.path("Tests/peers/tfrecord_fixtures.py"), "tensorflow"] + files)
        let verdicts = try json(Array(read.text.utf8))
        for file in files {
            let verdict = try #require(verdicts[file] as? [String: Any])
            #expect(verdict["error"] is NSNull && verdict["records"] as? Int == 5, "\(file): \(verdict)")
        }
    }

    @Test("Create-only: the same bytes already in place count as done; other bytes are promote.conflict, never overwritten, no marker")
    func conflicts() throws {
        let staged = try Self.stage(valid: 1, refusedKinds: false)
        let (id, episodes) = try #require(staged.valid.first)
        let place = staged.training + "/robot-0/" + id
        try FileManager.default.createDirectory(atPath: place, withIntermediateDirectories: true)
        _ = try FileManager.default.copyItem(atPath: episodes + "/steps.tfrecord-00000-of-00001", toPath: place + "/steps.tfrecord-00000-of-00001")
        try FileManager.default.createDirectory(atPath: place + "/camera", withIntermediateDirectories: true)
        try Data("someone else's frame".utf8).write(to: URL(fileURLWithPath: place + "/camera/frame-0.bin"))
        let (status, outcomes) = try Self.promote(staged)
        #expect(status == 1)
        let codes = (outcomes.first?["errors"] as? [[String: Any]])?.compactMap { $0["code"] as? String }
        #expect(codes == ["promote.conflict"])
        #expect(try String(contentsOfFile: place + "/camera/frame-0.bin", encoding: .utf8) == "someone else's frame")
        #expect(!FileManager.default.fileExists(atPath: place + "/_provenance.json"))

        try FileManager.default.removeItem(atPath: place + "/camera/frame-0.bin")
        try FileManager.default.copyItem(atPath: episodes + "/camera/frame-0.bin", toPath: place + "/camera/frame-0.bin")
        let (fixed, after) = try Self.promote(staged)
        #expect(fixed == 0 && after.first?["status"] as? String == "promoted")
        try Self.expectPromoted(staged)
    }

    @Test("kill -9 at every step: no marker without its blobs, and the next run finishes the package",
          arguments: ["promote.verified", "promote.blob", "promote.blobs_synced", "promote.marked"])
    func crashes(_ point: String) throws {
        let staged = try Self.stage(valid: 2, refusedKinds: false)
        var environment = ProcessInfo.processInfo.environment
        environment["CONTINUON_PACK_TEST_CRASH_AT"] = point
        let crashed = try cli(["promote", "--from", staged.staging, "--to", staged.training, "--trusted-key", Repo.testPublicKey],
                              environment: environment)
        #expect(crashed.status == 9 || crashed.status == -9 || crashed.status == 137, "killed: \(crashed.status)")
        // Whatever is there, a marker never stands without every blob of its package.
        for (relative, _) in try Self.tree(staged.training) where relative.hasSuffix("_provenance.json") {
            let directory = staged.training + "/" + (relative as NSString).deletingLastPathComponent
            #expect(FileManager.default.fileExists(atPath: directory + "/steps.tfrecord-00000-of-00001"))
        }
        let (status, _) = try Self.promote(staged)
        #expect(status == 0)
        try Self.expectPromoted(staged)
    }

    @Test("Four promoters at once, sharded and overlapping: each package promoted exactly once, nothing torn")
    func concurrent() throws {
        let staged = try Self.stage(valid: 12, refusedKinds: false)
        let shards = [["--shard", "0/2"], ["--shard", "1/2"], [], []]
        let promoted = try Self.promoteConcurrently(shards.map {
            ["promote", "--from", staged.staging, "--to", staged.training, "--trusted-key", Repo.testPublicKey, "--json"] + $0
        }, in: staged.dir)
        #expect(promoted.count == 12 && promoted.values.allSatisfy { $0 == 1 }, "\(promoted)")
        try Self.expectPromoted(staged)
    }

    @Test("Hostile training and staging directories: a planted link is never written through, a FIFO never read, a blob never takes the marker's place")
    func hostileDirectories() throws {
        // A link planted where an environment directory goes.
        let staged = try Self.stage(valid: 1, refusedKinds: false)
        let outside = try staged.dir.subdirectory("outside")
        try FileManager.default.createDirectory(atPath: staged.training, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: staged.training + "/robot-0", withDestinationPath: outside)
        let (status, outcomes) = try Self.promote(staged)
        #expect(status == 1)
        let codes = (outcomes.first?["errors"] as? [[String: Any]])?.compactMap { $0["code"] as? String }
        #expect(codes == ["promote.conflict"], "\(outcomes)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: outside).isEmpty, "nothing written through the link")

        // A FIFO and a link in staging under package names: failed (exit 2), never a hang, nothing promoted.
        let other = try Self.stage(valid: 0, refusedKinds: false)
        #expect(mkfifo(other.staging + "/" + String(repeating: "a", count: 64) + ".cpkg", 0o644) == 0)
        try FileManager.default.createSymbolicLink(atPath: other.staging + "/" + String(repeating: "b", count: 64) + ".cpkg",
                                                   withDestinationPath: Repo.path("TestVectors/valid/package-none.cpkg"))
        let (fifoStatus, fifoOutcomes) = try Self.promote(other)
        #expect(fifoStatus == 2)
        #expect(fifoOutcomes.map { $0["status"] as? String } == ["failed", "failed"])

        // A signed package whose blob is named like the marker.
        let sneaky = try Self.stage(valid: 0, refusedKinds: false)
        let episodes = try sneaky.dir.subdirectory("sneaky")
        _ = try sneaky.dir.write("sneaky/_provenance.json", Array("{\"package_id\":\"forged\"}".utf8))
        _ = try sneaky.dir.write("sneaky/steps.bin", Array("steps".utf8))
        _ = try Self.pack(episodes, into: sneaky.staging, environment: "robot-0")
        let (sneakyStatus, sneakyOutcomes) = try Self.promote(sneaky)
        #expect(sneakyStatus == 1)
        let sneakyCodes = (sneakyOutcomes.first?["errors"] as? [[String: Any]])?.compactMap { $0["code"] as? String }
        #expect(sneakyCodes == ["promote.reserved_path"])
        #expect(try Self.tree(sneaky.training).isEmpty)
    }

    @Test("gs:// staging (gcp-storage-emulator): listed, read in ranges, verified; the same outcomes as from a directory; a second run reads only envelopes")
    func cloudStaging() throws {
        let staged = try Self.stage(valid: 2, refusedKinds: true)
        let emulator = try PeerServer("emulator.py")
        let base = emulator.baseURL.absoluteString
        func put(_ path: String, as name: String) throws { try Self.putObject(path, as: name, base: base) }
        for name in try FileManager.default.contentsOfDirectory(atPath: staged.staging) {
            try put(staged.staging + "/" + name, as: "incoming%2F" + name)
        }
        // Not staged packages: below the prefix's next level, and under another prefix.
        let first = try #require(staged.valid.keys.sorted().first)
        try put(staged.staging + "/" + first + ".cpkg", as: "incoming%2Fold%2F" + String(repeating: "d", count: 64) + ".cpkg")
        try put(staged.staging + "/" + first + ".cpkg", as: "elsewhere%2F" + String(repeating: "e", count: 64) + ".cpkg")
        let arguments = ["promote", "--from", "gs://staging/incoming/", "--to", staged.training, "--endpoint", base,
                         "--trusted-key", Repo.testPublicKey, "--json"]
        let result = try cli(arguments)
        #expect(result.status == 1, "\(result.stderr)")
        let outcomes = try JSONSerialization.jsonObject(with: Data(result.stdout)) as? [[String: Any]] ?? []
        #expect(outcomes.count == 5)
        for outcome in outcomes {
            let id = try #require(outcome["package_id"] as? String)
            let codes = (outcome["errors"] as? [[String: Any]])?.compactMap { $0["code"] as? String } ?? []
            if let code = staged.refused[id] {
                #expect(outcome["status"] as? String == "refused" && codes.contains(code), "\(id): \(codes)")
            } else {
                #expect(outcome["status"] as? String == "promoted", "\(outcome)")
            }
        }
        try Self.expectPromoted(staged)
        let again = try cli(arguments)
        let second = try JSONSerialization.jsonObject(with: Data(again.stdout)) as? [[String: Any]] ?? []
        #expect(second.filter { $0["status"] as? String == "already_promoted" }.count == 2)
        // A listing the credentials may not read is an I/O error (exit 2), not an empty staging area.
        let missing = try cli(["promote", "--from", "gs://no-such-bucket/", "--to", staged.training, "--endpoint", base,
                               "--trusted-key", Repo.testPublicKey])
        #expect(missing.status == 2, "\(missing.stderr)")
    }

    @Test("gs:// to gs:// (gcp-storage-emulator behind a proxy that enforces ifGenerationMatch=0): blobs streamed into sessions committed only after the verdict; refused packages commit no object; other bytes under a name are a conflict; a second run changes nothing")
    func cloudToCloud() throws {
        var staged = try Self.stage(valid: 2, refusedKinds: true)
        // A package with a 20 MiB blob: two 8 MiB pieces before the verdict, the last 4 MiB after it.
        let big = try staged.dir.subdirectory("big")
        _ = try randomFile(staged.dir, "big/camera/long.bin", size: 20 * 1024 * 1024 + 333, seed: 9)
        let bigPath = try Self.pack(big, into: staged.staging, environment: "robot-9", extra: ["--compression", "none"])
        staged.valid[URL(fileURLWithPath: bigPath).deletingPathExtension().lastPathComponent] = big
        let emulator = try PeerServer("emulator.py")
        let proxy = try PeerServer("precondition_proxy.py", [String(emulator.port)])
        let base = proxy.baseURL.absoluteString
        func put(_ path: String, as name: String) throws { try Self.putObject(path, as: name, base: base) }
        func objects(_ prefix: String) throws -> [String: Int] {
            let listing = try run("curl", ["-sf", base + "/storage/v1/b/staging/o?prefix=" + prefix])
            let items = (try json(listing.stdout)["items"] as? [[String: Any]]) ?? []
            return Dictionary(uniqueKeysWithValues: items.map { ($0["name"] as! String, Int($0["size"] as! String)!) })
        }
        for name in try FileManager.default.contentsOfDirectory(atPath: staged.staging) {
            try put(staged.staging + "/" + name, as: "incoming%2F" + name)
        }
        // Someone else's bytes where one valid package's frame goes.
        let (blockedID, _) = try #require(staged.valid.filter { $0.value.hasSuffix("episodes-1") }.first)
        let squatter = try staged.dir.write("squatter", Array("not this frame".utf8))
        try put(squatter, as: "training%2Frobot-1%2F\(blockedID)%2Fcamera%2Fframe-1.bin")

        let arguments = ["promote", "--from", "gs://staging/incoming", "--to", "gs://staging/training", "--endpoint", base,
                         "--trusted-key", Repo.testPublicKey, "--json"]
        let result = try cli(arguments)
        #expect(result.status == 1, "\(result.stderr)")
        let outcomes = try JSONSerialization.jsonObject(with: Data(result.stdout)) as? [[String: Any]] ?? []
        #expect(outcomes.count == 6)
        for outcome in outcomes {
            let id = try #require(outcome["package_id"] as? String)
            let codes = (outcome["errors"] as? [[String: Any]])?.compactMap { $0["code"] as? String } ?? []
            let expected = staged.refused[id] ?? (id == blockedID ? "promote.conflict" : nil)
            if let expected {
                #expect(outcome["status"] as? String == "refused" && codes.contains(expected), "\(id): \(codes)")
            } else {
                #expect(outcome["status"] as? String == "promoted", "\(outcome)")
            }
        }
        // Exactly the promoted packages' objects, byte for byte, and the squatter untouched; nothing of a refused one.
        let training = try objects("training/")
        var expected: [String: Int] = ["training/robot-1/\(blockedID)/camera/frame-1.bin": 14]
        for (id, episodes) in staged.valid where id != blockedID {
            let walker = FileManager.default.enumerator(atPath: episodes)!
            var environment = ""
            for case let relative as String in walker {
                var isDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: episodes + "/" + relative, isDirectory: &isDirectory), !isDirectory.boolValue else { continue }
                environment = episodes.hasSuffix("big") ? "robot-9" : "robot-\(episodes.last!)"
                let name = "training/\(environment)/\(id)/\(relative)"
                expected[name] = try readBytes(episodes + "/" + relative).count
                let downloaded = try run("curl", ["-sf", base + "/storage/v1/b/staging/o/" + UploadTarget.escapeComponent(name) + "?alt=media"])
                #expect(downloaded.stdout == (try readBytes(episodes + "/" + relative)), "\(name)")
            }
            let marker = "training/\(environment)/\(id)/_provenance.json"
            expected[marker] = training[marker]
            #expect(training[marker] != nil, "no marker for \(id)")
        }
        #expect(training == expected, "\(training.keys.sorted())")
        let again = try cli(arguments)
        let second = try JSONSerialization.jsonObject(with: Data(again.stdout)) as? [[String: Any]] ?? []
        #expect(second.filter { $0["status"] as? String == "already_promoted" }.count == 2)
        #expect(try objects("training/") == training)
    }

    @Test("gs:// to gs://: kill -9 between two blob commits is finished by the next run; two promoters at once promote each package once")
    func cloudCrashAndRace() throws {
        let staged = try Self.stage(valid: 3, refusedKinds: false)
        let emulator = try PeerServer("emulator.py")
        let proxy = try PeerServer("precondition_proxy.py", [String(emulator.port)])
        let base = proxy.baseURL.absoluteString
        for name in try FileManager.default.contentsOfDirectory(atPath: staged.staging) {
            try Self.putObject(staged.staging + "/" + name, as: "incoming%2F" + name, base: base)
        }
        func arguments(_ to: String) -> [String] {
            ["promote", "--from", "gs://staging/incoming", "--to", to, "--endpoint", base, "--trusted-key", Repo.testPublicKey, "--json"]
        }
        var environment = ProcessInfo.processInfo.environment
        environment["CONTINUON_PACK_TEST_CRASH_AT"] = "promote.cloud_blob"
        let crashed = try cli(arguments("gs://staging/crash"), environment: environment)
        #expect(crashed.status != 0 && crashed.status != 1 && crashed.status != 2, "killed: \(crashed.status)")
        let finished = try cli(arguments("gs://staging/crash"))
        #expect(finished.status == 0, "\(finished.stderr)")
        let outcomes = try JSONSerialization.jsonObject(with: Data(finished.stdout)) as? [[String: Any]] ?? []
        #expect(outcomes.count == 3 && outcomes.allSatisfy { $0["status"] as? String == "promoted" }, "\(outcomes)")

        // Two promoters at once on a fresh prefix.
        let promoted = try Self.promoteConcurrently([arguments("gs://staging/race"), arguments("gs://staging/race")],
                                                    in: staged.dir, allowed: ["promoted", "already_promoted"])
        #expect(promoted.count == 3 && promoted.values.allSatisfy { $0 == 1 }, "\(promoted)")
    }

    @Test("A valid package whose blob paths cannot all be files (a beside a/b) is refused promote.conflict, and leaves nothing published")
    func fileBesideDirectory() throws {
        let dir = try TemporaryDirectory()
        let staging = try dir.subdirectory("staging")
        // The format allows these two paths; a file system cannot hold both.
        let result = try PackageWriter(provenance: sampleProvenance, signingKey: try loadKey(Repo.path("TestVectors/keys/test-ed25519.pem")),
                                       compression: .none, createdAt: "2024-01-01T00:00:00Z")
            .write(blobs: [BlobSource(path: "a", content: .bytes(Array("file".utf8))),
                           BlobSource(path: "a/b", content: .bytes(Array("below".utf8)))], toDirectory: staging)
        let (status, outcomes) = try Self.promote(Staged(dir: dir, staging: staging, training: dir.path + "/training"))
        #expect(status == 1)
        #expect(outcomes.first?["status"] as? String == "refused")
        #expect((outcomes.first?["errors"] as? [[String: Any]])?.first?["code"] as? String == "promote.conflict")
        let published = dir.path + "/training/" + sampleProvenance.environmentID + "/" + result.packageID
        #expect(!FileManager.default.fileExists(atPath: published + "/_provenance.json"))
        #expect(!FileManager.default.fileExists(atPath: published + "/a"))
    }

    @Test("TestVectors/promotion: promoting the known-answer package writes exactly those files, marker byte for byte")
    func vector() throws {
        let dir = try TemporaryDirectory()
        let expected = try json(try readBytes(Repo.path("TestVectors/valid/expected.json")))
        let id = try #require(expected["package_id"] as? String)
        let staging = try dir.subdirectory("staging")
        try FileManager.default.copyItem(atPath: Repo.path("TestVectors/valid/package-none.cpkg"), toPath: staging + "/" + id + ".cpkg")
        var environment = ProcessInfo.processInfo.environment
        environment["SOURCE_DATE_EPOCH"] = "1704067200"
        let result = try cli(["promote", "--from", staging, "--to", dir.path + "/training", "--trusted-key", Repo.testPublicKey],
                             environment: environment)
        #expect(result.status == 0, "\(result.stderr)")
        let committed = try Self.tree(Repo.path("TestVectors/promotion/training"))
        #expect(committed.count == 6)
        #expect(try Self.tree(dir.path + "/training") == committed)
    }

    @Test("Shards split package IDs disjointly and completely; the environment of Cloud Run and Kubernetes names them")
    func shards() throws {
        let ids = (0..<200).map { index in String(repeating: String(format: "%02x", index % 256), count: 32) }
        for count in [1, 2, 3, 7] {
            var taken = [Int](repeating: 0, count: ids.count)
            for index in 0..<count {
                let shard = Shard(index: index, count: count)
                for (position, id) in ids.enumerated() where shard.contains(packageID: id) { taken[position] += 1 }
            }
            #expect(taken.allSatisfy { $0 == 1 })
        }
        #expect(Shard("1/4") == Shard(index: 1, count: 4))
        for bad in ["4/4", "-1/2", "1/0", "1", "a/b", "1/2/3"] { #expect(Shard(bad) == nil, "\(bad)") }
        #expect(try Shard.fromEnvironment(["CLOUD_RUN_TASK_INDEX": "2", "CLOUD_RUN_TASK_COUNT": "5"], count: nil) == Shard(index: 2, count: 5))
        #expect(try Shard.fromEnvironment(["JOB_COMPLETION_INDEX": "3"], count: 4) == Shard(index: 3, count: 4))
        #expect(try Shard.fromEnvironment([:], count: 4) == nil)
        // Set but unusable: an error, not every package for every task.
        #expect(throws: ContinuonPackError.self) { try Shard.fromEnvironment(["JOB_COMPLETION_INDEX": "3"], count: nil) }
        #expect(throws: ContinuonPackError.self) { try Shard.fromEnvironment(["CLOUD_RUN_TASK_INDEX": "5", "CLOUD_RUN_TASK_COUNT": "5"], count: nil) }
    }
}
