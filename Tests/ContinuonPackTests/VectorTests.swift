import Foundation
import Testing
@testable import ContinuonPack

struct InvalidVector: Sendable, CustomTestStringConvertible {
    let name: String
    let codes: Set<String>
    let trustedKeys: [String]
    let threshold: Int
    var testDescription: String { name }
    var path: String { Repo.path("TestVectors/invalid/\(name).cpkg") }

    /// Every TestVectors/invalid/NAME.cpkg with its NAME.expected.json, through one loader.
    static func all() throws -> [InvalidVector] {
        let directory = Repo.path("TestVectors/invalid")
        return try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".expected.json") }.sorted()
            .map { file in
                let expected = try json(try readBytes(directory + "/" + file))
                return InvalidVector(
                    name: String(file.dropLast(".expected.json".count)),
                    codes: Set(expected["codes"] as? [String] ?? []),
                    trustedKeys: (expected["trusted_keys"] as? [String] ?? []).map { Repo.path("TestVectors/keys/" + $0) },
                    threshold: expected["threshold"] as? Int ?? 1)
            }
    }
}

@Suite("Test vectors")
struct VectorTests {
    @Test("There are hostile vectors for every area of the spec")
    func coverage() throws {
        let vectors = try InvalidVector.all()
        #expect(vectors.count >= 80)
        let prefixes = Set(vectors.flatMap(\.codes).map { String($0.split(separator: ".")[0]) })
        #expect(prefixes == ["package", "envelope", "signature", "manifest", "archive", "blob"])
    }

    @Test("Each hostile package gives exactly its expected error codes", arguments: try InvalidVector.all())
    func invalid(_ vector: InvalidVector) throws {
        let keys = try vector.trustedKeys.map { try Ed25519PublicKey(pemRepresentation: try readBytes($0)) }
        let report = try PackageVerifier(trustedKeys: keys, threshold: vector.threshold).verify(path: vector.path)
        #expect(!report.valid)
        #expect(codes(report) == vector.codes)
    }

    @Test("An independent Python verifier, written from docs/signed-ingestion.md alone, agrees on every vector")
    func referenceVerifierAgrees() throws {
        let result = try peer("check_reference_vectors.py", [])
        #expect(result.status == 0, "\(result.text)")
        #expect(result.lastLine.hasSuffix(" 0 failed"), "\(result.lastLine)")
    }

    @Test("continuon-pack verify --json passes the conformance suite through the one command another verifier would run")
    func conformanceCommand() throws {
        let result = try peer("check_reference_vectors.py", ["--command", Repo.cli + " verify --json"])
        #expect(result.status == 0, "\(result.text)")
        #expect(result.lastLine.hasSuffix(" 0 failed"), "\(result.lastLine)")
    }

    @Test("The reference verifier reports the same check statuses (held, failed, not_checked) on every hostile vector")
    func referenceStatusesAgree() throws {
        for vector in try InvalidVector.all() {
            let keys = try vector.trustedKeys.map { try Ed25519PublicKey(pemRepresentation: try readBytes($0)) }
            let report = try PackageVerifier(trustedKeys: keys, threshold: vector.threshold).verify(path: vector.path)
            let ours = Dictionary(uniqueKeysWithValues: VerificationReport.Check.allCases.map {
                ($0.rawValue, report.outcomes[$0]?.rawValue ?? "not_checked")
            })
            let reference = try peer("reference_verify.py", [vector.path, "--threshold", String(vector.threshold)]
                + vector.trustedKeys.flatMap { ["--trusted-key", $0] })
            let theirs = try json(reference.stdout)["checks"] as? [String: String] ?? [:]
            #expect(ours == theirs, "\(vector.name)")
        }
    }

    @Test("Each documented error code of a vector appears in the spec")
    func codesAreDocumented() throws {
        let spec = String(decoding: try readBytes(Repo.path("docs/signed-ingestion.md")), as: UTF8.self)
        for code in Set(try InvalidVector.all().flatMap(\.codes)) {
            #expect(spec.contains("`\(code)`"), "\(code) is not in docs/signed-ingestion.md")
        }
    }
}
