import ArgumentParser
import ContinuonPackCLI

// `upload`, `outbox`, `serve` and `promote` as this executable's help lists them. `main` hands them (and `help upload` etc.)
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

    struct Promote: ParsableCommand {
        static let configuration = NetworkCommand.promote.listing
    }
}

extension NetworkCommand {
    /// The name and abstract, as `continuon-pack --help` lists them.
    var listing: CommandConfiguration { CommandConfiguration(commandName: rawValue, abstract: abstract) }
}
