import Foundation
import Testing
@testable import ContinuonPack

/// Paths of the repository and of the tools the tests run.
enum Repo {
    static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    static func path(_ relative: String) -> String { root + "/" + relative }

    /// The continuon-pack executable built beside the test bundle (override with CONTINUON_PACK_BIN).
    static let cli: String = {
        if let override = ProcessInfo.processInfo.environment["CONTINUON_PACK_BIN"] { return override }
        let directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for candidate in [directory, directory.deletingLastPathComponent()] {
            let path = candidate.appendingPathComponent("continuon-pack").path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return root + "/.build/debug/continuon-pack"
    }()

    /// continuon-pack-net, which continuon-pack runs for upload, outbox and serve: beside continuon-pack.
    static var networkCLI: String {
        URL(fileURLWithPath: cli).deletingLastPathComponent().appendingPathComponent("continuon-pack-net").path
    }

    static let testKey = path("TestVectors/keys/test-ed25519.pem")
    static let testPublicKey = path("TestVectors/keys/test-ed25519.pub")
    static let secondKey = path("TestVectors/keys/second-ed25519.pem")
    static let secondPublicKey = path("TestVectors/keys/second-ed25519.pub")
}

/// A fresh directory, removed when the value is released.
final class TemporaryDirectory {
    let path: String

    init() throws {
        var template = Array((NSTemporaryDirectory() + "/continuon-pack-test-XXXXXX").utf8CString)
        guard let result = mkdtemp(&template) else { throw ContinuonPackError(.ioError, "mkdtemp failed") }
        path = String(cString: result)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func file(_ name: String) -> String { path + "/" + name }

    @discardableResult
    func write(_ name: String, _ bytes: [UInt8]) throws -> String {
        let full = file(name)
        try FileManager.default.createDirectory(
            atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: full))
        return full
    }

    func subdirectory(_ name: String) throws -> String {
        let full = file(name)
        try FileManager.default.createDirectory(atPath: full, withIntermediateDirectories: true)
        return full
    }

    func entries() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: path).sorted() }
}

struct ProcessResult {
    let status: Int32
    let stdout: [UInt8]
    let stderr: String
    var text: String { String(decoding: stdout, as: UTF8.self) }
    var lastLine: String { text.split(separator: "\n").last.map(String.init) ?? "" }
}

/// Runs a program to completion; output goes through files, so large outputs cannot deadlock.
@discardableResult
func run(
    _ executable: String, _ arguments: [String], stdin: [UInt8]? = nil, environment: [String: String]? = nil,
    directory: String? = nil
) throws -> ProcessResult {
    let scratch = try TemporaryDirectory()
    let outURL = URL(fileURLWithPath: scratch.file("out")), errURL = URL(fileURLWithPath: scratch.file("err"))
    FileManager.default.createFile(atPath: outURL.path, contents: nil)
    FileManager.default.createFile(atPath: errURL.path, contents: nil)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable.hasPrefix("/") ? executable : "/usr/bin/env")
    process.arguments = executable.hasPrefix("/") ? arguments : [executable] + arguments
    if let environment { process.environment = environment }
    if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
    process.standardOutput = try FileHandle(forWritingTo: outURL)
    process.standardError = try FileHandle(forWritingTo: errURL)
    if let stdin {
        let inPath = try scratch.write("in", stdin)
        process.standardInput = try FileHandle(forReadingFrom: URL(fileURLWithPath: inPath))
    } else {
        process.standardInput = FileHandle.nullDevice
    }
    try process.run()
    process.waitUntilExit()
    return ProcessResult(
        status: process.terminationStatus, stdout: [UInt8](try Data(contentsOf: outURL)),
        stderr: String(decoding: try Data(contentsOf: errURL), as: UTF8.self))
}

/// Runs the continuon-pack CLI.
@discardableResult
func cli(_ arguments: [String], environment: [String: String]? = nil, directory: String? = nil) throws -> ProcessResult {
    try run(Repo.cli, arguments, environment: environment, directory: directory)
}

/// Starts the CLI in the background (output discarded); the caller waits for or kills it.
func launchCLI(_ arguments: [String]) throws -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: Repo.cli)
    process.arguments = arguments
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try process.run()
    return process
}

/// Runs one of the Python peers in Tests/peers.
func peer(_ script: String, _ arguments: [String]) throws -> ProcessResult {
    try run("python3", [Repo.path("Tests/peers/" + script)] + arguments)
}

func readBytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

func sha256Hex(_ path: String) throws -> String { SHA256Hasher.hash(try readBytes(path)).hex }

func hexBytes(_ text: String) -> [UInt8] { Hex.decode(text) ?? [] }

func json(_ bytes: [UInt8]) throws -> [String: Any] {
    try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] ?? [:]
}

/// Blobs with awkward properties: empty, larger than the 1 MiB buffer, non-ASCII, nested.
func sampleBlobs() -> [BlobSource] {
    var big = [UInt8](repeating: 0, count: 3 * (1 << 20) + 12345)
    var state: UInt32 = 2463534242
    for index in big.indices {
        state ^= state << 13; state ^= state >> 17; state ^= state << 5
        big[index] = UInt8(truncatingIfNeeded: state)
    }
    return [
        BlobSource(path: "episode-0001/steps.bin", content: .bytes(big)),
        BlobSource(path: "empty.bin", content: .bytes([])),
        BlobSource(path: "ünïcødé/日本語.txt", content: .bytes(Array("robot\n".utf8))),
        BlobSource(path: String(repeating: "deep/", count: 40) + "leaf.bin", content: .bytes([1, 2, 3])),
    ]
}

let sampleProvenance = Provenance(brainRuntimeVersion: "0.9.4", aiAppVersion: "2.1.0", environmentID: "lab-arm-01")

func loadKey(_ path: String) throws -> Ed25519PrivateKey {
    try Ed25519PrivateKey(pemRepresentation: try readBytes(path))
}

func codes(_ report: VerificationReport) -> Set<String> { Set(report.failures.map(\.code.rawValue)) }
