import ArgumentParser
import ContinuonPackCLI
import ContinuonPackPromote

extension ContinuonPackCommand {
    /// From a staging directory; a gs:// staging area is handed over to continuon-pack-net before parsing
    /// (NetworkHandover).
    struct Promote: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "promote", abstract: PromoteOptions.abstract, discussion: PromoteOptions.discussion)

        @OptionGroup var options: PromoteOptions

        func run() throws {
            try options.run { DirectoryPromoter(staging: options.from, training: options.to, verifier: $0) }
        }
    }
}
