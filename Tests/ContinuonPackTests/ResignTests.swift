import Foundation
import Testing
@testable import ContinuonPack

/// `PackageResigner` and `continuon-pack resign`: the same manifest payload and archive bytes under new signatures,
/// and never a signature over a package that fails any check but trust.
@Suite("Re-signing packages")
struct ResignTests {
    static let source = Repo.path("TestVectors/valid/package-gzip.cpkg") // signed by the test key

    /// The envelope and the archive member of a package, read with Python's tarfile (not our reader).
    static func members(_ path: String) throws -> (envelope: [String: Any], archive: [UInt8]) {
        let script = """
            import json, sys, tarfile
            with tarfile.open(sys.argv[1]) as tar:
                names = tar.getnames()
                envelope = tar.extractfile(names[0]).read()
                archive = tar.extractfile(names[1]).read()
            sys.stdout.write(json.dumps({"names": names, "envelope": json.loads(envelope), "archive": archive.hex()}))
            """
        let result = try run("python3", ["-c", script, path])
        let value = try json(result.stdout)
        let envelope = try #require(value["envelope"] as? [String: Any])
        return (envelope, hexBytes(value["archive"] as? String ?? ""))
    }

    @Test("Replace and add: same payload and archive bytes; the result verifies under the new key (and both, with --add), here and in the reference verifier")
    func replaceAndAdd() throws {
        let dir = try TemporaryDirectory()
        let key = try loadKey(Repo.secondKey)
        let replaced = try PackageResigner(signingKey: key).resign(packageAt: Self.source, toDirectory: dir.file("a/b"))
        let added = try PackageResigner(signingKey: key, mode: .add).resign(packageAt: Self.source, toDirectory: dir.file("c"))
        let original = try Self.members(Self.source)
        for result in [replaced, added] {
            let resigned = try Self.members(result.path)
            #expect(resigned.envelope["payload"] as? String == original.envelope["payload"] as? String)
            #expect(resigned.archive == original.archive)
            #expect(result.packageID == "c7d7adb8f983eaba86ec4a57ed08fb22dfc98deb08e20a7d066ea9b8c619e267")
            #expect(UInt64(try readBytes(result.path).count) == result.packageSize)
        }
        let testKeyID = try loadKey(Repo.testKey).publicKey.keyID
        #expect(replaced.signatureKeyIDs == [key.publicKey.keyID])
        #expect(added.signatureKeyIDs == [testKeyID, key.publicKey.keyID])

        let onlyNew = try PackageVerifier(trustedKeys: [key.publicKey]).verify(path: replaced.path)
        #expect(onlyNew.valid)
        let oldKey = try PackageVerifier(trustedKeys: [try loadKey(Repo.testKey).publicKey]).verify(path: replaced.path)
        #expect(codes(oldKey) == ["signature.untrusted"])
        let both = try PackageVerifier(trustedKeys: [key.publicKey, try loadKey(Repo.testKey).publicKey], threshold: 2)
            .verify(path: added.path)
        #expect(both.valid && both.verifiedKeyIDs.count == 2)
        let reference = try peer("reference_verify.py", [added.path, "--trusted-key", Repo.secondPublicKey,
                                                         "--trusted-key", Repo.testPublicKey, "--threshold", "2"])
        #expect(reference.status == 0, "\(reference.text)")
        // Re-signing with a key that already signed replaces its signature in place (Ed25519 is deterministic).
        let again = try PackageResigner(signingKey: key, mode: .add).resign(packageAt: added.path, toDirectory: dir.file("d"))
        #expect(again.signatureKeyIDs == added.signatureKeyIDs)
        #expect(try readBytes(again.path) == (try readBytes(added.path)))
    }

    /// Every hostile vector except those whose only fault is a signature (which re-signing legitimately fixes).
    static func damaged() throws -> [InvalidVector] {
        try InvalidVector.all().filter { !$0.codes.allSatisfy { $0.hasPrefix("signature.") } }
    }

    @Test("A package failing any check but trust is never re-signed: its codes, and nothing written", arguments: try damaged())
    func refusesDamaged(_ vector: InvalidVector) throws {
        let dir = try TemporaryDirectory()
        let output = dir.file("out")
        do {
            _ = try PackageResigner(signingKey: try loadKey(Repo.secondKey)).resign(packageAt: vector.path, toDirectory: output)
            Issue.record("re-signed a damaged package")
        } catch let refused as PackageRefusedError {
            let found = codes(refused.report)
            #expect(!found.isEmpty && found.isSubset(of: vector.codes), "\(found) vs \(vector.codes)")
            #expect(!found.contains { $0.hasPrefix("signature.") })
        } catch let error as ContinuonPackError {
            // Only when the package cannot be read as a package at all.
            #expect(error.code != .outputExists, "\(error)")
        }
        #expect(!FileManager.default.fileExists(atPath: output))
    }

    @Test("Signature-only faults are what re-signing is for: unsigned, tampered or untrusted packages are re-signed")
    func repairsSignatures() throws {
        let dir = try TemporaryDirectory()
        let key = try loadKey(Repo.secondKey)
        let signatureOnly = try InvalidVector.all().filter { $0.codes.allSatisfy { $0.hasPrefix("signature.") } }
        #expect(!signatureOnly.isEmpty)
        for (index, vector) in signatureOnly.enumerated() {
            let result = try PackageResigner(signingKey: key).resign(packageAt: vector.path, toDirectory: dir.file("\(index)"))
            #expect(try PackageVerifier(trustedKeys: [key.publicKey]).verify(path: result.path).valid, "\(vector.name)")
        }
    }

    @Test("The CLI: refuses to overwrite, exits 1 with the codes for a damaged package, prints the path last")
    func command() throws {
        let dir = try TemporaryDirectory()
        let ok = try cli(["resign", Self.source, "--key", Repo.secondKey, "--output", dir.file("out"), "--json"])
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(ok.lastLine == dir.file("out") + "/c7d7adb8f983eaba86ec4a57ed08fb22dfc98deb08e20a7d066ea9b8c619e267.cpkg")
        #expect(ok.stderr.isEmpty) // no progress line when standard error is not a terminal
        let exists = try cli(["resign", Self.source, "--key", Repo.secondKey, "--output", dir.file("out")])
        #expect(exists.status == 2 && exists.stderr.contains("io.output_exists"))
        let damaged = try cli(["resign", Repo.path("TestVectors/invalid/archive-digest-mismatch.cpkg"), "--key", Repo.secondKey,
                               "--output", dir.file("bad"), "--json"])
        #expect(damaged.status == 1)
        let report = try json(damaged.stdout)
        #expect((report["errors"] as? [[String: Any]])?.compactMap { $0["code"] as? String }.contains("archive.digest_mismatch") == true)
        #expect(!FileManager.default.fileExists(atPath: dir.file("bad")))
    }

    @Test("At most 16 signatures: --add past the limit is refused")
    func signatureLimit() throws {
        let dir = try TemporaryDirectory()
        var path = Self.source
        for index in 0..<15 {
            path = try PackageResigner(signingKey: try Ed25519PrivateKey.generate(), mode: .add)
                .resign(packageAt: path, toDirectory: dir.file("\(index)")).path
        }
        #expect(throws: ContinuonPackError.self) {
            try PackageResigner(signingKey: try Ed25519PrivateKey.generate(), mode: .add).resign(packageAt: path, toDirectory: dir.file("x"))
        }
    }
}
