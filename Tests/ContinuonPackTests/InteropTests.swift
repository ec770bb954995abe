import Foundation
import Testing
@testable import ContinuonPack

/// Our packages read by tools we did not write: Python tarfile + securesystemslib + pyca/cryptography, bsdtar,
/// GNU tar, zstd and gzip.
@Suite("Cross-checks against independent implementations")
struct InteropTests {
    let key: Ed25519PrivateKey
    init() throws { key = try loadKey(Repo.testKey) }

    func pack(_ compression: Compression, into directory: TemporaryDirectory) throws -> PackResult {
        try PackageWriter(provenance: sampleProvenance, signingKey: key, compression: compression, createdAt: "2024-05-01T10:00:00Z")
            .write(blobs: sampleBlobs(), toDirectory: directory.path)
    }

    @Test("Python (tarfile, securesystemslib DSSE, cryptography) accepts our packages", arguments: Compression.allCases)
    func pythonPeers(_ compression: Compression) throws {
        let out = try TemporaryDirectory()
        let result = try pack(compression, into: out)
        let check = try peer("check_package.py", [result.path, Repo.testPublicKey])
        #expect(check.status == 0, "\(check.text) \(check.stderr)")
        let summary = try json(check.stdout)
        #expect(summary["ok"] as? Bool == true)
        #expect(summary["package_id"] as? String == result.packageID)
        #expect(summary["key_id"] as? String == key.publicKey.keyID)
        #expect(summary["canonical_manifest"] as? Bool == true)
    }

    @Test("The Python peer refuses a tampered package (it can fail)")
    func pythonPeerCanFail() throws {
        let check = try peer("check_package.py", [Repo.path("TestVectors/invalid/blob-digest-mismatch.cpkg"), Repo.testPublicKey])
        #expect(check.status == 1)
    }

    @Test("bsdtar and GNU tar list exactly the two members; the episode archive lists the blobs in order",
          arguments: Compression.allCases)
    func tarTools(_ compression: Compression) throws {
        let out = try TemporaryDirectory()
        let result = try pack(compression, into: out)
        let expectedOuter = "manifest.dsse.json\n\(compression.archiveName)\n"
        #expect(try run("bsdtar", ["-tf", result.path]).text == expectedOuter)
        #expect(try run("tar", ["-tf", result.path]).text == expectedOuter)
        // Extract the episode archive with GNU tar and list it with bsdtar (which decompresses by itself).
        let extracted = try run("tar", ["-xOf", result.path, compression.archiveName])
        let archivePath = try out.write("archive", extracted.stdout)
        #expect(SHA256Hasher.hash(extracted.stdout).hex == result.manifest.archive.sha256)
        let listing = try run("bsdtar", ["-tvf", archivePath], environment: ["LC_ALL": "C.UTF-8"])
        let names = listing.text.split(separator: "\n").map { line in
            line.split(separator: " ", omittingEmptySubsequences: true).dropFirst(8).joined(separator: " ")
        }
        #expect(names == result.manifest.blobs.map(\.path))
        #expect(listing.text.split(separator: "\n").allSatisfy { $0.hasPrefix("-rw-r--r--  0 0      0") }, "\(listing.text)")
        // The compressed streams are accepted by the reference tools.
        if compression == .zstd { #expect(try run("zstd", ["-t", "-q", archivePath]).status == 0) }
        if compression == .gzip { #expect(try run("gzip", ["-t", archivePath]).status == 0) }
    }

    @Test("Non-ASCII paths survive in any locale (libarchive under the C locale)")
    func nonASCIIPathsInCLocale() throws {
        // Swift programs start in the C locale, where libarchive 3.6.2 blanks or crashes on such names.
        let out = try TemporaryDirectory()
        let blobs = [BlobSource(path: "日本/ünï café.bin", content: .bytes([1])), BlobSource(path: String(repeating: "é", count: 300), content: .bytes([2]))]
        let result = try PackageWriter(provenance: sampleProvenance, signingKey: key, compression: .none, createdAt: "2024-01-01T00:00:00Z")
            .write(blobs: blobs, toDirectory: out.path)
        let inner = try run("tar", ["-xOf", result.path, "episodes.tar"])
        let listing = try run("python3", [
            "-c", "import sys,tarfile,io; print('\\n'.join(m.name for m in tarfile.open(fileobj=io.BytesIO(sys.stdin.buffer.read()))))",
        ], stdin: inner.stdout)
        #expect(listing.text == blobs.map(\.path).sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }.joined(separator: "\n") + "\n")
    }

    @Test("sign-blob signatures verify with openssl pkeyutl -rawin, and openssl's verify with verify-blob")
    func blobSignatures() throws {
        let dir = try TemporaryDirectory()
        let message = try dir.write("message.bin", Array("episode notes\n".utf8) + [0, 255])
        let signed = try cli(["sign-blob", message, "--key", Repo.testKey])
        #expect(signed.status == 0, "\(signed.stderr)")
        let raw = try #require(BlobSignature.decode(Array(signed.lastLine.utf8)))
        let rawPath = try dir.write("ours.sig", raw)
        let opensslVerify = try run("openssl", ["pkeyutl", "-verify", "-pubin", "-inkey", Repo.testPublicKey, "-rawin", "-in", message, "-sigfile", rawPath])
        #expect(opensslVerify.status == 0, "\(opensslVerify.text) \(opensslVerify.stderr)")
        let theirs = dir.file("theirs.sig")
        #expect(try run("openssl", ["pkeyutl", "-sign", "-inkey", Repo.testKey, "-rawin", "-in", message, "-out", theirs]).status == 0)
        #expect(try readBytes(theirs) == raw) // Ed25519 is deterministic
        #expect(try cli(["verify-blob", message, "--signature", theirs, "--public-key", Repo.testPublicKey]).status == 0)
        let base64Path = try dir.write("ours.b64", signed.stdout)
        #expect(try cli(["verify-blob", message, "--signature", base64Path, "--public-key", Repo.testPublicKey]).status == 0)
        try dir.write("message.bin", Array("episode notes?".utf8))
        #expect(try cli(["verify-blob", message, "--signature", theirs, "--public-key", Repo.testPublicKey]).status == 1)
        #expect(try run("openssl", ["pkeyutl", "-verify", "-pubin", "-inkey", Repo.testPublicKey, "-rawin", "-in", message, "-sigfile", rawPath]).status != 0)
    }
}
