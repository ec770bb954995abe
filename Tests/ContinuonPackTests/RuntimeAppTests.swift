import Foundation
import Testing
@testable import ContinuonPack

/// Examples/RuntimeApp: a separate package depending on this one by path, with `traits: []`, as a robot team would
/// depend on it. It must resolve no other package, link no Foundation when it uses only `ContinuonPack`, and run
/// the re-upload story through the public API with typed events and awaited results.
@Suite("A runtime app depending on the library by path (Examples/RuntimeApp)", .serialized)
struct RuntimeAppTests {
    static let scratch = Repo.path(".build-runtime-app")

    /// Builds the example package once (incrementally after the first time); returns its binary directory.
    static func build() throws -> String {
        let arguments = ["build", "--package-path", Repo.path("Examples/RuntimeApp"), "--scratch-path", scratch]
        let built = try run("swift", arguments)
        #expect(built.status == 0, "\(built.text.suffix(2000)) \(built.stderr.suffix(2000))")
        return try run("swift", arguments + ["--show-bin-path"]).lastLine
    }

    @Test("It resolves no package besides this one, and the Foundation-free product links no Foundation")
    func dependencyGraph() throws {
        let bin = try Self.build()
        let graph = try run("swift", ["package", "--package-path", Repo.path("Examples/RuntimeApp"), "--scratch-path", Self.scratch,
                                      "show-dependencies", "--format", "flatlist"])
        let packages = graph.text.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
        #expect(packages.count == 1, "resolved: \(packages)")
        let checkouts = (try? FileManager.default.contentsOfDirectory(atPath: Self.scratch + "/checkouts")) ?? []
        #expect(checkouts.isEmpty, "fetched: \(checkouts)")
        let libraries = try run("ldd", [bin + "/pack-and-verify"]).text
        #expect(!libraries.contains("Foundation"), "\(libraries)")
        #expect(libraries.contains("libcrypto") && libraries.contains("libarchive"))
        let dir = try TemporaryDirectory()
        let packed = try run(bin + "/pack-and-verify", [Repo.path("Examples/episodes"), dir.file("out")])
        #expect(packed.status == 0 && packed.text.hasPrefix("verified "), "\(packed.text) \(packed.stderr)")
    }

    @Test("Upload with typed events and awaited results: rejected (untrusted), retried, re-signed, superseded, acknowledged")
    func reuploadStory() throws {
        let bin = try Self.build()
        let dir = try TemporaryDirectory()
        let server = try startServe(dir, trusting: [Repo.secondPublicKey])
        let result = try run(bin + "/runtime-uploader", [Repo.path("Examples/episodes"), dir.file("work"),
                                                         server.baseURL.absoluteString, Repo.secondKey])
        #expect(result.status == 0, "\(result.text) \(result.stderr)")
        let results = result.text.split(separator: "\n").filter { $0.hasPrefix("result:") }
        #expect(results == ["result: rejected signature.untrusted", "result: rejected signature.untrusted",
                            "result: acknowledged superseded 1"], "\(result.text)")
        let events = result.text.split(separator: "\n").filter { $0.hasPrefix("event:") }.map { $0.split(separator: " ")[1] }
        #expect(events.filter { $0 == "rejected" }.count == 2 && events.contains("acknowledged") && events.contains("started"),
                "\(result.text)")
        #expect(storedPackages(dir).count == 1)
    }
}

/// Every ```swift block of the README compiles, in a package that depends on this one as a runtime would.
@Suite("README snippets")
struct ReadmeSnippetTests {
    @Test("Every Swift block of the README compiles against the library products (traits: [])")
    func snippetsCompile() throws {
        let readme = String(decoding: try readBytes(Repo.path("README.md")), as: UTF8.self)
        var blocks: [String] = []
        var current: [Substring]?
        for line in readme.split(separator: "\n", omittingEmptySubsequences: false) {
            if current == nil, line == "```swift" { current = [] } else if line == "```", let block = current {
                blocks.append(block.joined(separator: "\n"))
                current = nil
            } else if current != nil { current?.append(line) }
        }
        let code = blocks.filter { !$0.hasPrefix("// Package.swift") }
        #expect(code.count >= 2)
        let imports = Set(code.flatMap { $0.split(separator: "\n").filter { $0.hasPrefix("import ") }.map(String.init) })
        let bodies = code.map { block in
            block.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.hasPrefix("import ") }.joined(separator: "\n")
        }
        let source = imports.sorted().joined(separator: "\n") + """

            // Generated from README.md by ReadmeSnippetTests: the blocks in order, as one story (later blocks use
            // what earlier ones made), with the names the prose assumes declared first.
            let pemBytes: [UInt8] = []
            let enrolledKey = try! Ed25519PrivateKey.generate()

            func readme() async throws {

            """ + bodies.joined(separator: "\n") + "\n}\n"
        let root = URL(fileURLWithPath: Repo.root).lastPathComponent.lowercased()
        let package = Repo.path(".build-readme-snippets/package")
        try FileManager.default.createDirectory(atPath: package + "/Sources/Snippets", withIntermediateDirectories: true)
        let manifest = """
            // swift-tools-version:6.1
            import PackageDescription
            let package = Package(name: "snippets", dependencies: [.package(path: "\(Repo.root)", traits: [])],
                targets: [.target(name: "Snippets", dependencies: [.product(name: "ContinuonPack", package: "\(root)"),
                                                               .product(name: "ContinuonPackUpload", package: "\(root)")])])
            """
        try Data(manifest.utf8).write(to: URL(fileURLWithPath: package + "/Package.swift"))
        try Data(source.utf8).write(to: URL(fileURLWithPath: package + "/Sources/Snippets/Snippets.swift"))
        let built = try run("swift", ["build", "--package-path", package, "--scratch-path", Repo.path(".build-readme-snippets/scratch")])
        #expect(built.status == 0, "\(built.text.suffix(3000))")
    }
}
