import Foundation
import Testing
@testable import ContinuonPack

struct WycheproofCase: Sendable, CustomTestStringConvertible {
    let id: Int
    let publicKey: [UInt8]
    let message: [UInt8]
    let signature: [UInt8]
    let valid: Bool
    let comment: String
    var testDescription: String { "tcId \(id) \(comment)" }

    /// Every test of TestVectors/wycheproof/ed25519_test.json (kept unmodified).
    static func all() throws -> [WycheproofCase] {
        let document = try json(try readBytes(Repo.path("TestVectors/wycheproof/ed25519_test.json")))
        var cases: [WycheproofCase] = []
        for group in document["testGroups"] as? [[String: Any]] ?? [] {
            let key = hexBytes((group["publicKey"] as? [String: Any])?["pk"] as? String ?? "")
            for test in group["tests"] as? [[String: Any]] ?? [] {
                cases.append(WycheproofCase(
                    id: test["tcId"] as? Int ?? -1, publicKey: key, message: hexBytes(test["msg"] as? String ?? ""),
                    signature: hexBytes(test["sig"] as? String ?? ""), valid: test["result"] as? String == "valid",
                    comment: test["comment"] as? String ?? ""))
            }
        }
        return cases
    }
}

@Suite("Project Wycheproof Ed25519")
struct WycheproofTests {
    @Test("All 151 vectors are loaded")
    func count() throws {
        let cases = try WycheproofCase.all()
        #expect(cases.count == 151)
        #expect(cases.filter(\.valid).count > 0 && cases.filter { !$0.valid }.count > 0)
    }

    @Test("Our verification agrees with every vector", arguments: try WycheproofCase.all())
    func vector(_ test: WycheproofCase) throws {
        let key = try Ed25519PublicKey(rawRepresentation: test.publicKey)
        #expect(key.isValidSignature(test.signature, for: test.message) == test.valid)
    }
}
