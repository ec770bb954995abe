import ArgumentParser
import ContinuonPackCLI

// `upload`, `outbox` and `serve` as this executable's help lists them. `main` hands them (and `help upload` etc.)
// over to continuon-pack-net before any parsing (NetworkHandover), so these types are never run.
extension ContinuonPackCommand {
    struct Upload: ParsableCommand {
        static let configuration = NetworkCommand.upload.listing
    }

    struct Outbox: ParsableCommand {
        static let configuration = NetworkCommand.outbox.listing
    }

    struct Serve: ParsableCommand {
        static let configuration = NetworkCommand.serve.listing
    }
}

extension NetworkCommand {
    /// The name and abstract, as `continuon-pack --help` lists them.
    var listing: CommandConfiguration { CommandConfiguration(commandName: rawValue, abstract: abstract) }
}
