import ArgumentParser
import ContinuonPackCLI

@main
struct ContinuonPackCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "continuon-pack",
        abstract: "Pack robot episodes into signed, verifiable upload packages, and verify them offline.",
        discussion: """
            Exit codes: 0 success; 1 the package (or signature) is invalid; 2 usage or I/O error.
            The format is specified in docs/signed-ingestion.md.
            upload, outbox and serve are run by \(NetworkCommand.executableName), installed beside this executable.
            """,
        version: continuonPackVersion,
        subcommands: [
            Keygen.self, Pack.self, Verify.self, Resign.self, Inspect.self, SignBlob.self, VerifyBlob.self,
            Promote.self, Trust.self, Upload.self, Outbox.self, Serve.self,
        ]
    )

    /// Hands a network command over to `continuon-pack-net`; runs every other command here.
    static func main() async {
        NetworkHandover.runIfNetworkCommand(Array(CommandLine.arguments.dropFirst()))
        await runMappingExitCodes()
    }
}
