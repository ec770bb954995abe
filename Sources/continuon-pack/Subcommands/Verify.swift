import ArgumentParser
import ContinuonPack
import ContinuonPackCLI

extension ContinuonPackCommand {
    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify packages offline against trusted public keys.",
            discussion: """
                Checks everything docs/signed-ingestion.md specifies and reports each failure with a stable code. \
                Nothing is extracted. Exit 0 when every package is valid, 1 when any is not, 2 on usage or I/O errors.
                """)

        @Argument(help: "The .cpkg files to verify.")
        var packages: [String]

        @Option(name: .long, help: "A trusted public key (SPKI PEM); repeat for several.")
        var trustedKey: [String] = []

        @Option(name: .long, help: "How many distinct trusted keys must have signed.")
        var threshold = 1

        @Flag(name: .long, help: "Also check every *.tfrecord blob record by record (promote.tfrecord_corrupt).")
        var checkTfrecord = false

        @Flag(name: .long, help: "Print a JSON report (one object for one package, an array for several).")
        var json = false

        func validate() throws {
            guard !packages.isEmpty else { throw ValidationError("Name at least one package to verify.") }
            guard !trustedKey.isEmpty else { throw ValidationError("Give at least one --trusted-key.") }
            guard threshold >= 1 && threshold <= trustedKey.count else {
                throw ValidationError("--threshold must be between 1 and the number of --trusted-key options.")
            }
        }

        func run() throws {
            let keys = try trustedKey.map(loadPublicKey)
            guard threshold <= Set(keys).count else {
                throw ValidationError("--threshold \(threshold) is more than the \(Set(keys).count) distinct trusted keys.")
            }
            var verifier = PackageVerifier(trustedKeys: keys, threshold: threshold)
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
            for failure in report.failures { print("  error \(failure.code): \(failure.message)") }
        }
    }
}
