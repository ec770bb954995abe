import ArgumentParser
import ContinuonPack
import ContinuonPackCLI

extension PackageResigner.Mode: ExpressibleByArgument {}

extension ContinuonPackCommand {
    struct Resign: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Sign a package again with another key: same package ID and bytes, new signatures.",
            discussion: """
                Writes OUTDIR/<package_id>.cpkg with the same manifest (package ID, created_at, provenance, \
                digests) and the same episode archive bytes, signed by --key: the new signature replaces the old \
                ones, or with --add joins them (threshold setups). The package must first pass every check of \
                verify except trust; a damaged or tampered package is never re-signed (exit 1 with its codes, \
                nothing written). Never overwrites; prints the new path as the last line. Use it when a service \
                refused a package because its key was not trusted (signature.untrusted), or after a key rotation.
                """)

        @Argument(help: "The .cpkg file to re-sign.")
        var package: String

        @Option(name: .long, help: "The new signing key (PKCS#8 PEM).")
        var key: String

        @Option(name: .long, help: "Passphrase file for an encrypted key.")
        var passphraseFile: String?

        @Flag(name: .long, help: "Keep the existing signatures and add this one (a signature by the same key is replaced).")
        var add = false

        @Option(name: .long, help: "Directory to write the package into (created with its parents when missing; it must not already hold this package).")
        var output: String

        @Flag(name: .long, help: "Print a JSON summary instead of text.")
        var json = false

        func run() throws {
            let key = try loadPrivateKey(self.key, passphraseFile: passphraseFile)
            var resigner = PackageResigner(signingKey: key, mode: add ? .add : .replace)
            let progress = ProgressLine(label: "re-signing")
            // Read twice (checked, copied) and the result read back once.
            resigner.progress = progress.counter(total: fileSize(package) * 3)
            let outcome = Result { try resigner.resign(packageAt: package, toDirectory: output) }
            progress.finish()
            let result: ResignResult
            switch outcome {
            case let .success(value):
                result = value
            case let .failure(refused as PackageRefusedError):
                if json {
                    printJSON(refused.report.jsonValue)
                } else {
                    printError("\(package) was not re-signed: it fails checks that re-signing cannot repair.")
                    Verify.printText(refused.report)
                }
                throw ExitStatus.invalid
            case let .failure(error):
                throw error
            }
            if json {
                printJSON(.object([
                    ("package_id", .string(result.packageID)),
                    ("path", .string(result.path)),
                    ("size", .number(String(result.packageSize))),
                    ("key_id", .string(key.publicKey.keyID)),
                    ("signatures", .array(result.signatureKeyIDs.map(JSONValue.string))),
                    ("mode", .string(add ? "add" : "replace")),
                ]))
            } else {
                print("re-signed \(result.packageID)")
                print("signed by:  \(result.signatureKeyIDs.joined(separator: ", "))")
            }
            print(result.path)
        }
    }
}
