import ArgumentParser
import ContinuonPack
import ContinuonPackCLI

extension ContinuonPackCommand {
    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify packages offline against trusted public keys or a trust policy.",
            discussion: """
                Checks everything docs/signed-ingestion.md specifies and reports each failure with a stable code. \
                Nothing is extracted. Exit 0 when every package is valid, 1 when any is not, 2 on usage or I/O errors.
                """)

        @Argument(help: "The .cpkg files to verify.")
        var packages: [String]

        @OptionGroup(title: "Trust")
        var trust: TrustOptions

        @Flag(name: .long, help: "Also check every *.tfrecord blob record by record (promote.tfrecord_corrupt).")
        var checkTfrecord = false

        @Flag(name: .long, help: "Print a JSON report (one object for one package, an array for several).")
        var json = false

        func validate() throws {
            guard !packages.isEmpty else { throw ValidationError("Name at least one package to verify.") }
        }

        func run() throws {
            var verifier: PackageVerifier
            do {
                verifier = try trust.verifier()
            } catch let error as ContinuonPackError where json && error.code.rawValue.hasPrefix("trust.") {
                // A refused policy is not a verdict; with --json it is still reported as JSON (exit 2).
                printJSON(.object([
                    ("valid", .bool(false)), ("policy_error", .string(error.code.rawValue)),
                    ("errors", .array([.object([("code", .string(error.code.rawValue)), ("message", .string(error.message))])])),
                ]))
                throw ExitStatus.usageOrIO
            }
            verifier.checkTFRecords = checkTfrecord
            var reports: [VerificationReport] = []
            for package in packages {
                let progress = ProgressLine(label: "verifying \(package)")
                verifier.progress = progress.counter(total: fileSize(package))
                let report = Result { try verifier.verify(path: package) }
                progress.finish()
                reports.append(try report.get())
            }
            if json {
                printJSON(reports.count == 1 ? reports[0].jsonValue : .array(reports.map(\.jsonValue)))
            } else {
                for report in reports { Self.printText(report) }
            }
            if !reports.allSatisfy(\.valid) { throw ExitStatus.invalid }
        }

        static func printText(_ report: VerificationReport) {
            print("\(report.path): \(report.valid ? "VALID" : "INVALID")")
            if let id = report.packageID { print("  package id: \(id)") }
            if !report.verifiedKeyIDs.isEmpty { print("  signed by:  \(report.verifiedKeyIDs.joined(separator: ", "))") }
            for check in VerificationReport.Check.allCases {
                print("  \(check.rawValue): \(report.outcomes[check]?.rawValue ?? "not_checked")")
            }
            for signature in report.signatures where signature.status != .counted {
                print("  signature by \(signature.keyID): \(signature.status)")
            }
            for failure in report.failures { print("  error \(failure.code): \(failure.message)") }
        }
    }
}
