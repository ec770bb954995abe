import Foundation
import Testing
@testable import ContinuonPack
@testable import ContinuonPackUpload

/// The story the staging rules ask for, end to end against `continuon-pack serve`: a package signed by a key the
/// service does not trust is refused (422) and kept; re-signed with the enrolled key and uploaded again, it
/// supersedes the rejected entry and is acknowledged; only then, and only when asked, are both local copies
/// released. And the same with a `kill -9` at every durable step.
@Suite("The re-upload lifecycle (rejected, re-signed, re-uploaded)", .serialized)
struct ReuploadLifecycleTests {
    static let packageID = "c7d7adb8f983eaba86ec4a57ed08fb22dfc98deb08e20a7d066ea9b8c619e267"
    static let original = Repo.path("TestVectors/valid/package-zstd.cpkg") // signed by the test key
    static let enrolledKey = Repo.path("TestVectors/keys/second-ed25519.pem")
    static let enrolledPublicKey = Repo.path("TestVectors/keys/second-ed25519.pub")

    /// A service trusting only the enrolled key, an outbox, and the original package rejected in it.
    struct Setup {
        let dir: TemporaryDirectory
        let server: PeerServer
        let outbox: String
        var entry: String { outbox + "/" + ReuploadLifecycleTests.packageID }

        init() throws {
            dir = try TemporaryDirectory()
            server = try startServe(dir, trusting: [ReuploadLifecycleTests.enrolledPublicKey])
            outbox = dir.file("outbox")
            let refused = try cli(upload(ReuploadLifecycleTests.original))
            #expect(refused.status == 1, "\(refused.text) \(refused.stderr)")
            #expect(refused.text.contains("rejected 422 signature.untrusted: "), "\(refused.text)")
        }

        func upload(_ package: String, json: Bool = false) -> [String] {
            ["upload", package, "--to", server.baseURL.absoluteString, "--outbox", outbox] + (json ? ["--json"] : [])
        }

        func drain(_ retention: String) -> [String] {
            ["outbox", "run", "--once", "--retention", retention, "--to", server.baseURL.absoluteString, "--outbox", outbox]
        }

        func resign() throws -> String {
            let result = try cli(["resign", ReuploadLifecycleTests.original, "--key", ReuploadLifecycleTests.enrolledKey,
                                  "--output", dir.file("resigned/new")])
            #expect(result.status == 0, "\(result.stderr)")
            return result.lastLine
        }

        func state() throws -> OutboxState { try Outbox(directory: outbox).state(of: ReuploadLifecycleTests.packageID) }

        /// SHA-256 of every package file the entry holds (package.cpkg, superseded/, incoming-).
        func heldDigests() throws -> Set<String> {
            var files = try FileManager.default.contentsOfDirectory(atPath: entry).filter { $0.hasSuffix(".cpkg") }
            if let kept = try? FileManager.default.contentsOfDirectory(atPath: entry + "/superseded") {
                files += kept.map { "superseded/" + $0 }
            }
            return Set(try files.map { try sha256Hex(entry + "/" + $0) })
        }

        func stored() -> [String] { storedPackages(dir) }
    }

    @Test("Untrusted key: 422 and kept; re-signed: supersedes, acknowledged; copies released only with --retention remove")
    func story() throws {
        let setup = try Setup()
        let oldDigest = try sha256Hex(Self.original)
        let rejected = try setup.state()
        #expect(rejected.phase == .rejected && rejected.rejectionStatus == 422)
        #expect(rejected.rejectionCode == "signature.untrusted")
        #expect(rejected.rejectionDetail?.contains("trusted key") == true)
        let status = try cli(["outbox", "status", "--outbox", setup.outbox, "--json"])
        let listed = try #require((try JSONSerialization.jsonObject(with: Data(status.stdout)) as? [[String: Any]])?.first)
        #expect(listed["rejection_code"] as? String == "signature.untrusted")
        #expect(setup.stored().isEmpty)

        let resigned = try setup.resign()
        let newDigest = try sha256Hex(resigned)
        #expect(newDigest != oldDigest)
        let accepted = try cli(setup.upload(resigned, json: true))
        #expect(accepted.status == 0, "\(accepted.text) \(accepted.stderr)")
        let state = try setup.state()
        #expect(state.phase == .acknowledged && state.sha256 == newDigest)
        #expect(state.superseded.map(\.sha256) == [oldDigest])
        #expect(state.superseded.first?.rejectionCode == "signature.untrusted")
        #expect(try readBytes(setup.dir.file("store/" + Self.packageID + ".cpkg")) == (try readBytes(resigned)))
        // Acknowledged, but nothing is released unless asked.
        #expect(try setup.heldDigests() == [oldDigest, newDigest])
        #expect(try cli(setup.drain("keep")).status == 0)
        #expect(try setup.heldDigests() == [oldDigest, newDigest])
        #expect(try cli(setup.drain("remove")).status == 0)
        #expect(try setup.heldDigests().isEmpty)
        #expect(try setup.state().phase == .acknowledged) // the receipt stays
        // The user's own files are never touched.
        #expect(try sha256Hex(resigned) == newDigest && (try sha256Hex(Self.original)) == oldDigest)
    }

    @Test("outbox retry sends a rejected entry again, unchanged, once the service trusts its key")
    func retry() throws {
        let setup = try Setup()
        // Re-queued as it is (same bytes, fresh session).
        #expect(try cli(["outbox", "retry", Self.packageID, "--outbox", setup.outbox]).status == 0)
        #expect(try setup.state().phase == .queued)
        let unknown = try cli(["outbox", "retry", String(repeating: "0", count: 64), "--outbox", setup.outbox])
        #expect(unknown.status == 2 && unknown.stderr.contains("outbox.unknown_entry"))
        // Still untrusted: rejected again, with the same code.
        #expect(try cli(setup.drain("keep")).status == 1)
        #expect(try setup.state().rejectionCode == "signature.untrusted")
        // The service is fixed (now trusting the test key too); retry, drain: acknowledged, the same bytes.
        let fixed = try startServe(setup.dir, trusting: [Self.enrolledPublicKey, Repo.testPublicKey],
                                   store: setup.dir.file("store2"))
        #expect(try cli(["outbox", "retry", "--rejected", "--outbox", setup.outbox]).status == 0)
        let drained = try cli(["outbox", "run", "--once", "--to", fixed.baseURL.absoluteString, "--outbox", setup.outbox])
        #expect(drained.status == 0, "\(drained.text) \(drained.stderr)")
        #expect(try setup.state().phase == .acknowledged)
        #expect(try setup.state().sha256 == (try sha256Hex(Self.original)))
    }

    @Test("A second package under an ID that is queued or acknowledged (not rejected) is still a conflict")
    func conflictUnlessRejected() throws {
        let setup = try Setup()
        let resigned = try setup.resign()
        #expect(try cli(setup.upload(resigned)).status == 0)
        // Acknowledged: the original (other bytes) cannot take its place.
        let again = try cli(setup.upload(Self.original))
        #expect(again.status == 2 && again.stderr.contains("outbox.conflict"), "\(again.stderr)")
        #expect(try setup.state().sha256 == (try sha256Hex(resigned)))
    }

    /// Where the crash tests kill the process (`CrashPoint`), and which command reaches it.
    struct Crash: Sendable, CustomTestStringConvertible {
        let point: String
        let during: Step
        enum Step: Sendable { case upload, release }
        var testDescription: String { point }
    }

    @Test("kill -9 at every durable step: nothing is lost, nothing released early, and the next run finishes", arguments: [
        Crash(point: "supersede.kept", during: .upload),
        Crash(point: "supersede.incoming", during: .upload),
        Crash(point: "supersede.state_saved", during: .upload),
        Crash(point: "supersede.done", during: .upload),
        Crash(point: "upload.saved.uploading", during: .upload),
        Crash(point: "upload.saved.acknowledged", during: .upload),
        Crash(point: "release.package_removed", during: .release),
    ])
    func crash(_ crash: Crash) throws {
        let setup = try Setup()
        let oldDigest = try sha256Hex(Self.original)
        let resigned = try setup.resign()
        let newDigest = try sha256Hex(resigned)
        var environment = ProcessInfo.processInfo.environment
        environment["CONTINUON_PACK_TEST_CRASH_AT"] = crash.point
        if crash.during == .release {
            #expect(try cli(setup.upload(resigned)).status == 0)
        }
        let killed = try cli(crash.during == .upload ? setup.upload(resigned) : setup.drain("remove"), environment: environment)
        #expect(killed.status == SIGKILL, "the crash point was not reached: \(killed.status) \(killed.stderr)")

        // After the crash: the state is one of the two sides of the step, and what it names is on disk.
        let state = try setup.state()
        let held = try setup.heldDigests()
        if state.phase != .acknowledged {
            #expect(held.contains(oldDigest), "the rejected bytes are gone before acknowledgement")
            if state.sha256 == newDigest { #expect(held.contains(newDigest)) } else { #expect(state.phase == .rejected) }
        } else if crash.during == .upload {
            #expect(held == [oldDigest, newDigest])
        }
        #expect(try sha256Hex(resigned) == newDigest && (try sha256Hex(Self.original)) == oldDigest)

        // The next runs finish the story.
        let resumed = try cli(setup.upload(resigned))
        #expect(resumed.status == 0, "\(resumed.text) \(resumed.stderr)")
        #expect(try setup.state().phase == .acknowledged && (try setup.state().sha256) == newDigest)
        if crash.during == .upload { #expect(try sha256Hex(setup.entry + "/package.cpkg") == newDigest) }
        #expect(try readBytes(setup.dir.file("store/" + Self.packageID + ".cpkg")) == (try readBytes(resigned)))
        #expect(try cli(setup.drain("remove")).status == 0)
        #expect(try setup.heldDigests().isEmpty)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: setup.entry).filter { $0.hasPrefix("incoming-") }
        #expect(leftovers.isEmpty)
    }
}
