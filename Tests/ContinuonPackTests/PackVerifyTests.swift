import Foundation
import Testing
@testable import ContinuonPack

@Suite("Pack and verify")
struct PackVerifyTests {
    let key: Ed25519PrivateKey
    init() throws { key = try loadKey(Repo.testKey) }

    func writer(_ compression: Compression, createdAt: String = "2024-01-01T00:00:00Z") -> PackageWriter {
        PackageWriter(provenance: sampleProvenance, signingKey: key, compression: compression, createdAt: createdAt)
    }

    @Test("Round trip for every compression", arguments: Compression.allCases)
    func roundTrip(_ compression: Compression) throws {
        let out = try TemporaryDirectory()
        let result = try writer(compression).write(blobs: sampleBlobs(), toDirectory: out.path)
        #expect(result.path == out.path + "/" + result.packageID + ".cpkg")
        #expect(try out.entries() == [result.packageID + ".cpkg"])
        #expect(result.manifest.blobs.map(\.path) == sampleBlobs().map(\.path).sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) })
        #expect(try sha256Hex(result.path) == (try result.packageSHA256()).hex) // read back; cross-checked below
        let report = try PackageVerifier(trustedKeys: [key.publicKey]).verify(path: result.path)
        #expect(report.valid, "\(report.failures)")
        #expect(report.packageID == result.packageID)
        #expect(report.verifiedKeyIDs == [key.publicKey.keyID])
        #expect(report.outcomes.values.allSatisfy { $0 == .held })
    }

    @Test("The package ID and the archive do not depend on time, compression or key")
    func packageIDIsContentOnly() throws {
        let out = try TemporaryDirectory()
        let a = try writer(.zstd, createdAt: "2024-01-01T00:00:00Z").write(blobs: sampleBlobs(), toDirectory: try out.subdirectory("a"))
        let b = try writer(.none, createdAt: "2030-06-01T12:00:00Z").write(blobs: sampleBlobs(), toDirectory: try out.subdirectory("b"))
        var other = writer(.gzip, createdAt: "2031-01-01T00:00:00Z")
        other.signingKeys = [try Ed25519PrivateKey.generate()]
        let c = try other.write(blobs: sampleBlobs(), toDirectory: try out.subdirectory("c"))
        let d = try writer(.zstd, createdAt: "2030-06-01T12:00:00Z").write(blobs: sampleBlobs(), toDirectory: try out.subdirectory("d"))
        #expect(Set([a.packageID, b.packageID, c.packageID, d.packageID]).count == 1)
        #expect(a.manifest.archive.sha256 == d.manifest.archive.sha256)
        #expect((try a.packageSHA256()) != (try d.packageSHA256())) // created_at differs, so the signed manifest does
    }

    @Test("Same inputs, same bytes: file metadata and creation order do not matter")
    func deterministicAcrossFileMetadata() throws {
        let root = try TemporaryDirectory()
        let names = ["b/2.bin", "a/1.bin", "c.bin", "ünï.bin"]
        for (order, directory) in [(names, "one"), (names.reversed(), "two")] {
            for (index, name) in order.enumerated() {
                let path = try root.write("\(directory)/\(name)", Array("content of \(name)".utf8))
                // Different mtimes and modes in each tree.
                chmod(path, directory == "one" ? 0o600 : 0o755)
                var times = [timespec(tv_sec: 1_000_000 + index * 1000, tv_nsec: 0), timespec(tv_sec: 2_000_000 * (index + 1), tv_nsec: 5)]
                _ = utimensat(AT_FDCWD, path, &times, 0)
            }
        }
        var digests: [String] = []
        for directory in ["one", "two"] {
            let blobs = try BlobSource.collect(in: root.file(directory))
            let result = try writer(.zstd).write(blobs: blobs, toDirectory: try root.subdirectory("out-" + directory))
            digests.append((try result.packageSHA256()).hex)
        }
        #expect(digests[0] == digests[1])
    }

    @Test("A wrong layout prediction falls back to copying, with the same bytes", arguments: Compression.allCases)
    func layoutFallback(_ compression: Compression) throws {
        let out = try TemporaryDirectory()
        let predicted = try writer(compression).write(blobs: sampleBlobs(), toDirectory: try out.subdirectory("predicted"))
        var forced = writer(compression)
        forced.reservedOverride = 512 * 7
        let copied = try forced.write(blobs: sampleBlobs(), toDirectory: try out.subdirectory("copied"))
        #expect(try readBytes(copied.path) == (try readBytes(predicted.path)))
        #expect(try out.entries() == ["copied", "predicted"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: out.file("copied")) == [copied.packageID + ".cpkg"])
        #expect(try PackageVerifier(trustedKeys: [key.publicKey]).verify(path: copied.path).valid)
    }

    @Test("zstd output is the same bytes for 1 and 2 worker threads")
    func zstdThreadCountDoesNotMatter() throws {
        let out = try TemporaryDirectory()
        var digests: [String] = []
        for threads in [1, 2, 3] {
            var packer = writer(.zstd)
            packer.compressionThreads = threads
            let result = try packer.write(blobs: sampleBlobs(), toDirectory: try out.subdirectory("t\(threads)"))
            digests.append(try result.packageSHA256().hex)
        }
        #expect(Set(digests).count == 1)
    }

    @Test("The uncompressed test vector is reproduced byte for byte")
    func testVector() throws {
        let expected = try json(try readBytes(Repo.path("TestVectors/valid/expected.json")))
        let packages = try #require(expected["packages"] as? [String: [String: Any]])
        let provenance = try #require(expected["provenance"] as? [String: String])
        let out = try TemporaryDirectory()
        let vectorWriter = PackageWriter(
            provenance: Provenance(
                brainRuntimeVersion: provenance["brain_runtime_version"] ?? "", aiAppVersion: provenance["ai_app_version"] ?? "",
                environmentID: provenance["environment_id"] ?? ""),
            signingKey: key, compression: .none, createdAt: expected["created_at"] as? String ?? "")
        let result = try vectorWriter.write(
            blobs: try BlobSource.collect(in: Repo.path("TestVectors/valid/episodes")), toDirectory: out.path)
        #expect(result.packageID == expected["package_id"] as? String)
        #expect(result.manifest.canonicalBytes() == (try readBytes(Repo.path("TestVectors/valid/manifest-none.json"))))
        #expect(result.envelopeBytes == (try readBytes(Repo.path("TestVectors/valid/envelope-none.json"))))
        #expect((try result.packageSHA256()).hex == packages["none"]?["sha256"] as? String)
        #expect(try readBytes(result.path) == (try readBytes(Repo.path("TestVectors/valid/package-none.cpkg"))))
    }

    @Test("The committed valid vectors verify", arguments: ["none", "gzip", "zstd"])
    func validVectors(_ compression: String) throws {
        let report = try PackageVerifier(trustedKeys: [key.publicKey])
            .verify(path: Repo.path("TestVectors/valid/package-\(compression).cpkg"))
        #expect(report.valid, "\(report.failures)")
    }

    @Test("Nothing is overwritten and a failure leaves nothing behind")
    func atomicity() throws {
        let out = try TemporaryDirectory()
        let first = try writer(.none).write(blobs: sampleBlobs(), toDirectory: out.path)
        let before = try readBytes(first.path)
        do {
            _ = try writer(.none).write(blobs: sampleBlobs(), toDirectory: out.path)
            Issue.record("an existing package was overwritten")
        } catch let error as ContinuonPackError {
            #expect(error.code == .outputExists)
        }
        #expect(try readBytes(first.path) == before)
        #expect(try out.entries() == [first.packageID + ".cpkg"])
        // A blob that cannot be read half-way through the list: no package, no temporary file.
        let failing = try TemporaryDirectory()
        var blobs = sampleBlobs()
        blobs.append(BlobSource(path: "zz-missing.bin", content: .file(failing.file("does-not-exist"))))
        #expect(throws: ContinuonPackError.self) { try writer(.zstd).write(blobs: blobs, toDirectory: failing.path) }
        #expect(try failing.entries().isEmpty)
        // A file that changes size while it is archived (stat says 0 bytes, reading gives more), after other bytes
        // are under way: refused, no package, no temporary file.
        for compression in [Compression.none, .zstd] {
            var changing = sampleBlobs()
            changing.append(BlobSource(path: "zz-big.bin", content: .bytes(Array(repeating: 7, count: 600_000))))
            changing.append(BlobSource(path: "zz-status", content: .file("/proc/self/status")))
            #expect { try writer(compression).write(blobs: changing, toDirectory: failing.path) } throws: { error in
                (error as? ContinuonPackError)?.code == .sourceChanged
            }
            #expect(try failing.entries().isEmpty)
        }
    }

    @Test("Bad input is refused before anything is written")
    func packerValidation() throws {
        let out = try TemporaryDirectory()
        let cases: [([BlobSource], Provenance, ContinuonPackError.Code)] = [
            ([BlobSource(path: "../x", content: .bytes([]))], sampleProvenance, .manifestPath),
            ([BlobSource(path: "cafe\u{301}", content: .bytes([]))], sampleProvenance, .manifestPath),
            ([BlobSource(path: "a", content: .bytes([])), BlobSource(path: "a", content: .bytes([1]))], sampleProvenance, .manifestBlobDuplicate),
            ([BlobSource(path: "Readme", content: .bytes([])), BlobSource(path: "README", content: .bytes([1]))], sampleProvenance, .manifestPathCollision),
            ([BlobSource(path: "a", content: .bytes([]))], Provenance(brainRuntimeVersion: "1 0", aiAppVersion: "1", environmentID: "e"), .manifestIdentifier),
            ([], sampleProvenance, .sourceEmpty),
        ]
        for (blobs, provenance, code) in cases {
            var packer = writer(.none)
            packer.provenance = provenance
            do {
                _ = try packer.write(blobs: blobs, toDirectory: out.path)
                Issue.record("accepted: \(blobs.map(\.path))")
            } catch let error as ContinuonPackError {
                #expect(error.code == code)
            }
        }
        #expect(try out.entries().isEmpty)
    }

    @Test("Symlinks and special files are refused unless asked for")
    func collectRefusesLinksAndSpecials() throws {
        let root = try TemporaryDirectory()
        let episodes = try root.subdirectory("episodes")
        try root.write("episodes/real.bin", [1, 2, 3])
        try root.write("outside.bin", [9])
        symlink(root.file("outside.bin"), episodes + "/link.bin")
        #expect(throws: ContinuonPackError.self) { try BlobSource.collect(in: episodes) }
        let followed = try BlobSource.collect(in: episodes, options: CollectOptions(followSymlinks: true))
        #expect(followed.map(\.path) == ["link.bin", "real.bin"])
        mkfifo(episodes + "/pipe", 0o644)
        #expect(throws: ContinuonPackError.self) { try BlobSource.collect(in: episodes, options: CollectOptions(followSymlinks: true)) }
        let skipped = try BlobSource.collect(in: episodes, options: CollectOptions(followSymlinks: true, skipSpecialFiles: true))
        #expect(skipped.map(\.path) == ["link.bin", "real.bin"])
    }

    @Test("Thresholds count distinct trusted keys")
    func thresholds() throws {
        let out = try TemporaryDirectory()
        let second = try loadKey(Repo.secondKey)
        var twoSigners = writer(.none)
        twoSigners.signingKeys = [key, second]
        let result = try twoSigners.write(blobs: sampleBlobs(), toDirectory: out.path)
        let both = [key.publicKey, second.publicKey]
        #expect(try PackageVerifier(trustedKeys: both, threshold: 2).verify(path: result.path).valid)
        let one = try PackageVerifier(trustedKeys: [key.publicKey], threshold: 1).verify(path: result.path)
        #expect(one.valid)
        #expect(one.signatures.map(\.trusted) == [true, false])
        let stranger = try Ed25519PrivateKey.generate().publicKey
        let notMet = try PackageVerifier(trustedKeys: [key.publicKey, stranger], threshold: 2).verify(path: result.path)
        #expect(codes(notMet) == ["signature.threshold_not_met"])
        let untrusted = try PackageVerifier(trustedKeys: [stranger]).verify(path: result.path)
        #expect(codes(untrusted) == ["signature.untrusted"])
    }

    @Test("PackageLimits are enforced")
    func limits() throws {
        let out = try TemporaryDirectory()
        let result = try writer(.zstd).write(blobs: sampleBlobs(), toDirectory: out.path)
        var small = PackageLimits()
        small.maxEnvelopeBytes = 100
        #expect(codes(try PackageVerifier(trustedKeys: [key.publicKey], limits: small).verify(path: result.path)) == ["envelope.too_large"])
        small = PackageLimits()
        small.maxBlobCount = 2
        #expect(codes(try PackageVerifier(trustedKeys: [key.publicKey], limits: small).verify(path: result.path)) == ["manifest.limit_exceeded"])
        small = PackageLimits()
        small.maxBlobBytes = 1000
        #expect(codes(try PackageVerifier(trustedKeys: [key.publicKey], limits: small).verify(path: result.path)).contains("manifest.limit_exceeded"))
    }

    @Test("A missing file is an I/O error, not a verdict")
    func ioErrors() throws {
        #expect(throws: ContinuonPackError.self) {
            try PackageVerifier(trustedKeys: [key.publicKey]).verify(path: "/nonexistent/x.cpkg")
        }
    }

    @Test("Every single-byte change anywhere in a package is detected")
    func everyByteMatters() throws {
        let out = try TemporaryDirectory()
        let blobs = [BlobSource(path: "a.bin", content: .bytes(Array(repeating: 7, count: 700))),
                     BlobSource(path: "ü/b.bin", content: .bytes(Array("episode".utf8)))]
        let result = try writer(.none).write(blobs: blobs, toDirectory: out.path)
        let original = try readBytes(result.path)
        let verifier = PackageVerifier(trustedKeys: [key.publicKey])
        let path = out.file("mutated.cpkg")
        var undetected: [Int] = []
        var offset = 0
        while offset < original.count {
            var mutated = original
            // XOR 1 changes every byte's meaning (a NUL and a space ending a numeric header field are
            // interchangeable by the spec, so XOR 0x20 would not always).
            mutated[offset] ^= 0x01
            try Data(mutated).write(to: URL(fileURLWithPath: path))
            if try verifier.verify(path: path).valid { undetected.append(offset) }
            offset += offset < 4096 ? 3 : 97
        }
        #expect(undetected.isEmpty, "undetected changes at offsets \(undetected.prefix(20))")
        // And every truncation.
        for length in stride(from: 0, to: original.count, by: 37) {
            try Data(original[0..<length]).write(to: URL(fileURLWithPath: path))
            #expect(!(try verifier.verify(path: path).valid), "truncation to \(length) bytes was accepted")
        }
    }

    @Test("A blob path libarchive would write with a non-conforming ustar fallback name is refused before packing; long paths that split are packed and verify")
    func longPaths() throws {
        let key = try loadKey(Repo.path("TestVectors/keys/test-ed25519.pem"))
        let writer = PackageWriter(provenance: sampleProvenance, signingKey: key, compression: .none, createdAt: "2024-01-01T00:00:00Z")
        let out = try TemporaryDirectory()
        // 155 + "/" + 100 bytes: a ustar prefix and name hold it; 156 + "/" + 99 fits neither split.
        let fits = String(repeating: "p", count: 155) + "/" + String(repeating: "n", count: 100)
        let result = try writer.write(blobs: [BlobSource(path: fits, content: .bytes([1]))], toDirectory: out.path)
        let verifier = PackageVerifier(trustedKeys: [key.publicKey])
        #expect(try verifier.verify(path: result.path).valid)
        for unwritable in [String(repeating: "p", count: 156) + "/" + String(repeating: "n", count: 99),
                           Array(repeating: String(repeating: "d", count: 50), count: 5).joined(separator: "/") + "/b.bin"] {
            let empty = try TemporaryDirectory()
            #expect(throws: ContinuonPackError.self) {
                try writer.write(blobs: [BlobSource(path: unwritable, content: .bytes([1]))], toDirectory: empty.path)
            }
            #expect(try empty.entries().isEmpty, "nothing left behind")
            do {
                _ = try writer.write(blobs: [BlobSource(path: unwritable, content: .bytes([1]))], toDirectory: empty.path)
            } catch let error as ContinuonPackError {
                #expect(error.code == .sourcePathUnwritable)
            }
        }
    }
}
