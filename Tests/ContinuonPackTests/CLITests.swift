import Foundation
import Testing
@testable import ContinuonPack

@Suite("Command-line interface")
struct CLITests {
    let packArguments = ["--runtime-version", "0.9.4", "--app-version", "2.1.0", "--environment-id", "lab-arm-01"]

    @Test("keygen writes a 0600 PKCS#8 key and an SPKI key, prints the key ID last, never overwrites")
    func keygen() throws {
        let dir = try TemporaryDirectory()
        let result = try cli(["keygen", "--private-key", dir.file("k.pem"), "--public-key", dir.file("k.pub")])
        #expect(result.status == 0, "\(result.stderr)")
        var info = stat()
        stat(dir.file("k.pem"), &info)
        #expect(info.st_mode & 0o777 == 0o600)
        let key = try loadKey(dir.file("k.pem"))
        #expect(result.lastLine == key.publicKey.keyID)
        #expect(try Ed25519PublicKey(pemRepresentation: try readBytes(dir.file("k.pub"))) == key.publicKey)
        let before = try readBytes(dir.file("k.pem"))
        let again = try cli(["keygen", "--private-key", dir.file("k.pem"), "--public-key", dir.file("other.pub")])
        #expect(again.status == 2)
        #expect(try readBytes(dir.file("k.pem")) == before)
        #expect(try dir.entries() == ["k.pem", "k.pub"])
    }

    @Test("keygen with a passphrase writes a key openssl decrypts")
    func keygenEncrypted() throws {
        let dir = try TemporaryDirectory()
        let pass = try dir.write("pass", Array("s3cret\n".utf8))
        #expect(try cli(["keygen", "--private-key", dir.file("k.pem"), "--public-key", dir.file("k.pub"), "--passphrase-file", pass]).status == 0)
        #expect(String(decoding: try readBytes(dir.file("k.pem")), as: UTF8.self).hasPrefix("-----BEGIN ENCRYPTED PRIVATE KEY-----"))
        let openssl = try run("openssl", ["pkey", "-in", dir.file("k.pem"), "-passin", "file:" + pass, "-pubout"])
        #expect(openssl.text == String(decoding: try readBytes(dir.file("k.pub")), as: UTF8.self))
        // pack needs the passphrase
        let episodes = try dir.subdirectory("episodes")
        try dir.write("episodes/a.bin", [1])
        let out = try dir.subdirectory("out")
        #expect(try cli(["pack", episodes, "--key", dir.file("k.pem"), "--output", out] + packArguments).status == 2)
        #expect(try cli(["pack", episodes, "--key", dir.file("k.pem"), "--passphrase-file", pass, "--output", out] + packArguments).status == 0)
    }

    @Test("pack prints the package path last; verify exits 0; inspect shows the manifest unverified")
    func packVerifyInspect() throws {
        let dir = try TemporaryDirectory()
        let out = try dir.subdirectory("out")
        let packed = try cli(["pack", Repo.path("Examples/episodes"), "--key", Repo.testKey, "--output", out] + packArguments)
        #expect(packed.status == 0, "\(packed.stderr)")
        let path = packed.lastLine
        #expect(path.hasPrefix(out + "/") && path.hasSuffix(".cpkg"))
        #expect(FileManager.default.fileExists(atPath: path))
        let verified = try cli(["verify", path, "--trusted-key", Repo.testPublicKey, "--json"])
        #expect(verified.status == 0)
        let report = try json(verified.stdout)
        #expect(report["valid"] as? Bool == true)
        #expect((report["errors"] as? [Any])?.isEmpty == true)
        #expect(report["key_ids"] as? [String] == [try loadKey(Repo.testKey).publicKey.keyID])
        #expect(path.hasSuffix((report["package_id"] as? String ?? "?") + ".cpkg"))
        let inspected = try json(try cli(["inspect", path, "--json"]).stdout)
        #expect(inspected["verified"] as? Bool == false)
        let manifest = try #require(inspected["manifest"] as? [String: Any])
        #expect((manifest["blobs"] as? [Any])?.count == 5)
        #expect(try cli(["inspect", path]).text.contains("NOT VERIFIED"))
    }

    @Test("Exit codes: 1 for an invalid package, 2 for usage and I/O errors")
    func exitCodes() throws {
        let valid = Repo.path("TestVectors/valid/package-none.cpkg")
        let invalid = Repo.path("TestVectors/invalid/blob-digest-mismatch.cpkg")
        #expect(try cli(["verify", valid, "--trusted-key", Repo.testPublicKey]).status == 0)
        let bad = try cli(["verify", invalid, "--trusted-key", Repo.testPublicKey, "--json"])
        #expect(bad.status == 1)
        let errors = try json(bad.stdout)["errors"] as? [[String: Any]]
        #expect(errors?.first?["code"] as? String == "blob.digest_mismatch")
        #expect(errors?.first?["message"] is String)
        // Several packages: exit 1 when any is invalid, and a JSON array.
        let both = try cli(["verify", valid, invalid, "--trusted-key", Repo.testPublicKey, "--json"])
        #expect(both.status == 1)
        #expect((try JSONSerialization.jsonObject(with: Data(both.stdout)) as? [Any])?.count == 2)
        #expect(try cli(["verify", valid, "--trusted-key", Repo.secondPublicKey]).status == 1)
        #expect(try cli(["verify", valid]).status == 2) // no trusted key
        #expect(try cli(["verify", "/nonexistent.cpkg", "--trusted-key", Repo.testPublicKey]).status == 2)
        #expect(try cli(["verify", valid, "--trusted-key", Repo.testPublicKey, "--threshold", "2"]).status == 2)
        #expect(try cli(["pack"]).status == 2)
        #expect(try cli(["no-such-command"]).status == 2)
        #expect(try cli(["--help"]).status == 0)
        #expect(try cli(["verify", valid, "--trusted-key", "/nonexistent.pub"]).status == 2)
    }

    @Test("pack never overwrites, refuses symlinks unless asked, and leaves nothing behind on failure")
    func packSafety() throws {
        let dir = try TemporaryDirectory()
        let episodes = try dir.subdirectory("episodes")
        try dir.write("episodes/a.bin", [1, 2, 3])
        let out = try dir.subdirectory("out")
        let first = try cli(["pack", episodes, "--key", Repo.testKey, "--output", out] + packArguments)
        #expect(first.status == 0)
        let again = try cli(["pack", episodes, "--key", Repo.testKey, "--output", out] + packArguments)
        #expect(again.status == 2)
        #expect(again.stderr.contains("io.output_exists"))
        symlink(dir.file("episodes/a.bin"), episodes + "/link.bin")
        let refused = try cli(["pack", episodes, "--key", Repo.testKey, "--output", try dir.subdirectory("out2")] + packArguments)
        #expect(refused.status == 2)
        #expect(refused.stderr.contains("symbolic link"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.file("out2")).isEmpty)
        let followed = try cli(["pack", episodes, "--key", Repo.testKey, "--follow-symlinks", "--output", dir.file("out2")] + packArguments)
        #expect(followed.status == 0)
        #expect(try cli(["pack", episodes, "--key", Repo.testKey, "--output", out, "--runtime-version", "bad version", "--app-version", "1", "--environment-id", "e"]).status == 2)
    }

    @Test("Byte-identical packages whatever mtimes, modes, umask, TZ, locale or working directory")
    func reproducibleCLI() throws {
        let dir = try TemporaryDirectory()
        let base = ProcessInfo.processInfo.environment
        var digests: [String] = []
        for (index, (tz, locale)) in [("UTC", "C"), ("Asia/Tokyo", "C.UTF-8"), ("America/New_York", "POSIX")].enumerated() {
            let episodes = try dir.subdirectory("episodes\(index)")
            let names = index == 1 ? ["z/ü.bin", "a.bin"] : ["a.bin", "z/ü.bin"]
            for name in names {
                let path = try dir.write("episodes\(index)/\(name)", Array("bytes of \(name)".utf8))
                chmod(path, index == 2 ? 0o700 : 0o644)
                var times = [timespec(tv_sec: 10_000 * (index + 1), tv_nsec: 0), timespec(tv_sec: 99_999 * (index + 1), tv_nsec: 0)]
                _ = utimensat(AT_FDCWD, path, &times, 0)
            }
            let out = try dir.subdirectory("out\(index)")
            var environment = base
            environment["SOURCE_DATE_EPOCH"] = "1714557600"
            environment["TZ"] = tz
            environment["LC_ALL"] = locale
            let umask = ["022", "077", "000"][index]
            let command = "umask \(umask) && exec \"$0\" \"$@\""
            let result = try run("/bin/sh", ["-c", command, Repo.cli, "pack", episodes, "--key", Repo.testKey, "--output", out] + packArguments,
                                 environment: environment, directory: index == 0 ? "/" : dir.path)
            #expect(result.status == 0, "\(result.stderr)")
            digests.append(try sha256Hex(result.lastLine))
        }
        #expect(Set(digests).count == 1, "\(digests)")
    }
}

@Suite("Two executables: continuon-pack hands upload, outbox and serve to continuon-pack-net")
struct HandoverTests {
    /// The SUBCOMMANDS entries of upload, outbox and serve in a help text.
    func networkEntries(_ help: String) -> [Substring] {
        let lines = help.split(separator: "\n", omittingEmptySubsequences: false)
        guard let start = lines.firstIndex(where: { $0.hasPrefix("  upload ") }),
              let serve = lines.firstIndex(where: { $0.hasPrefix("  serve ") }) else { return [] }
        return Array(lines[start...serve]) + lines[(serve + 1)...].prefix { $0.hasPrefix("      ") }
    }

    @Test("continuon-pack --help lists the network commands with the abstracts continuon-pack-net shows")
    func helpListsNetworkCommands() throws {
        let light = try cli(["--help"])
        let network = try run(Repo.networkCLI, ["--help"])
        #expect(light.status == 0 && network.status == 0)
        #expect(networkEntries(light.text).count >= 3)
        #expect(networkEntries(light.text) == networkEntries(network.text), "\(light.text)")
    }

    @Test("upload --help, help serve and outbox run --help show continuon-pack-net's full help", arguments: [
        (["upload", "--help"], "--chunk-size"), (["help", "serve"], "--store <store>"),
        (["outbox", "run", "--help"], "--retention"),
    ])
    func networkHelp(_ arguments: [String], _ option: String) throws {
        let result = try cli(arguments)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.text.contains("USAGE: continuon-pack-net " + arguments.filter { $0 != "help" && $0 != "--help" }.joined(separator: " ")))
        #expect(result.text.contains(option), "\(result.text)")
        #expect(result.text == (try run(Repo.networkCLI, arguments)).text)
    }

    @Test("Arguments and exit codes pass through unchanged")
    func exitCodesPassThrough() throws {
        let missing = try cli(["upload", "/nonexistent.cpkg", "--to", "http://127.0.0.1:9", "--outbox", try TemporaryDirectory().path])
        #expect(missing.status == 2)
        #expect(missing.stderr.contains("/nonexistent.cpkg"))
        #expect(try cli(["serve", "--store", "/nonexistent"]).status == 2) // no --trusted-key
        #expect(try cli(["outbox", "no-such-subcommand"]).status == 2)
    }

    @Test("Without continuon-pack-net beside it, a network command exits 2 and says what is missing; the rest works")
    func missingNetworkExecutable() throws {
        let dir = try TemporaryDirectory()
        let lone = dir.file("continuon-pack")
        try FileManager.default.copyItem(atPath: Repo.cli, toPath: lone)
        chmod(lone, 0o755)
        let result = try run(lone, ["upload", "x.cpkg", "--to", "http://127.0.0.1:9"])
        #expect(result.status == 2)
        let expected = dir.file("continuon-pack-net").replacingOccurrences(of: "//", with: "/")
        #expect(result.stderr.contains(expected), "\(result.stderr)")
        #expect(result.text.isEmpty)
        #expect(try run(lone, ["verify", Repo.path("TestVectors/valid/package-none.cpkg"), "--trusted-key", Repo.testPublicKey]).status == 0)
    }

    @Test("continuon-pack links neither Foundation nor FoundationNetworking (nor curl)")
    func lightLinkage() throws {
        let linked = try run("ldd", [Repo.cli])
        #expect(linked.status == 0)
        for library in ["libFoundation.so", "libFoundationNetworking.so", "libcurl"] {
            #expect(!linked.text.contains(library), "\(linked.text)")
        }
    }
}

@Suite("Bounded memory")
struct MemoryTests {
    @Test("pack and verify of a 256 MiB blob stay under 32 MiB of resident memory", arguments: [Compression.none, .gzip])
    func boundedMemory(_ compression: Compression) throws {
        let dir = try TemporaryDirectory()
        let episodes = try dir.subdirectory("episodes")
        let big = episodes + "/big.bin"
        #expect(truncate(big, 256 << 20) == 0 || creat(big, 0o644) >= 0 && truncate(big, 256 << 20) == 0)
        try dir.write("episodes/small.bin", [1, 2, 3])
        let out = try dir.subdirectory("out")
        let pack = try peer("maxrss.py", [
            Repo.cli, "pack", episodes, "--key", Repo.testKey, "--output", out, "--compression", compression.rawValue,
            "--runtime-version", "1", "--app-version", "1", "--environment-id", "e",
        ])
        let packed = try json(pack.stdout)
        #expect(packed["status"] as? Int == 0)
        let package = try #require(try FileManager.default.contentsOfDirectory(atPath: out).first)
        let verify = try peer("maxrss.py", [Repo.cli, "verify", out + "/" + package, "--trusted-key", Repo.testPublicKey])
        let verified = try json(verify.stdout)
        #expect(verified["status"] as? Int == 0)
        #expect((packed["maxrss_kib"] as? Int ?? .max) < 32 * 1024, "pack peak RSS \(packed)")
        #expect((verified["maxrss_kib"] as? Int ?? .max) < 32 * 1024, "verify peak RSS \(verified)")
    }
}

