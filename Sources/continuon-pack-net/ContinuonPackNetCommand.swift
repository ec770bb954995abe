import ArgumentParser
import ContinuonPack
import ContinuonPackCLI
#if canImport(Glibc)
import Glibc
#endif

@main
struct ContinuonPackNetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: NetworkCommand.executableName,
        abstract: "The network commands of continuon-pack: upload packages, queue them in an outbox, serve ingestion.",
        discussion: """
            continuon-pack runs this executable for `continuon-pack upload`, `outbox`, `serve` and `promote --from gs://…`, with the same \
            arguments. Exit codes: 0 success; 1 a package was rejected or is invalid; 2 usage or I/O error.
            """,
        version: continuonPackVersion,
        subcommands: [Upload.self, OutboxCommand.self, Serve.self, Promote.self]
    )

    static func main() async {
        // Upload chunks (8 MiB by default) come and go: with glibc's dynamic mmap threshold they end up on the heap
        // after the first few, which never shrinks (88 MiB peak for a 256 MiB upload); fixed at 1 MiB, every chunk
        // buffer is its own mapping, returned when freed (60 MiB).
        MemoryTuning.returnLargeBuffersToTheSystem()
        // This process holds access tokens and, with --credentials, private keys in memory: no core file may carry
        // them to disk.
        var noCore = rlimit(rlim_cur: 0, rlim_max: 0)
        _ = setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &noCore)
        await runMappingExitCodes()
    }
}
