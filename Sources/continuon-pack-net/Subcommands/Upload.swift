import ArgumentParser
import ContinuonPack
import ContinuonPackCLI
import ContinuonPackUpload
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where to upload, shared by `upload` and `outbox run`.
struct TargetOptions: ParsableArguments {
    @Option(name: .long, help: "The storage endpoint: https://storage.googleapis.com, an emulator, or continuon-pack serve (e.g. http://127.0.0.1:8080).")
    var to: String

    @Option(name: .long, help: "The bucket (the ingestion service's staging area).")
    var bucket = "staging"

    @Option(name: .long, help: "Prefix of the object name <prefix><package_id>.cpkg.")
    var prefix = ""

    @Option(name: .long, help: ArgumentHelp(
        "Google credentials: a service-account key or gcloud ADC JSON file (mode 0600), or 'metadata' for the metadata server.",
        discussion: "Default, for https://storage.googleapis.com only: $GOOGLE_APPLICATION_CREDENTIALS, gcloud's ADC file, the metadata server (other hosts get no Google token unless named here)."))
    var credentials: String?

    @Option(name: .long, help: "A file holding an OAuth access token, re-read whenever it changes (for an external refresher).")
    var tokenFile: String?

    @Option(name: .long, help: "Bytes per request, a multiple of 256 KiB.")
    var chunkSize = 8 << 20

    @Option(name: .long, help: "Seconds one package may keep failing in one run before it is left for a later run.")
    var deadline = 900

    func validate() throws {
        guard let url = URL(string: to), url.scheme == "http" || url.scheme == "https", url.host != nil else {
            throw ValidationError("--to must be an http or https URL, not \(to).")
        }
        guard chunkSize >= UploadTarget.chunkGranularity, chunkSize % UploadTarget.chunkGranularity == 0 else {
            throw ValidationError("--chunk-size must be a positive multiple of 262144 (256 KiB).")
        }
        guard deadline > 0 else { throw ValidationError("--deadline must be positive.") }
        guard credentials == nil || tokenFile == nil else {
            throw ValidationError("Give --credentials or --token-file, not both.")
        }
    }

    func target() async throws -> UploadTarget {
        var target = UploadTarget(baseURL: URL(string: to)!, bucket: bucket, prefix: prefix, chunkSize: chunkSize)
        target.credentials = try await resolveCredentials(credentials: credentials, tokenFile: tokenFile, forGoogle: target.isGoogle)
        return target
    }

    var policy: RetryPolicy { RetryPolicy(deadline: .seconds(deadline)) }
}

struct OutboxOption: ParsableArguments {
    @Option(name: .long, help: "The outbox directory (default: $CONTINUON_PACK_OUTBOX or ~/.local/share/continuon-pack/outbox).")
    var outbox: String?

    func open() throws -> Outbox { try Outbox(directory: outbox ?? Outbox.defaultDirectory()) }
}

/// The uploader's events drawn as one line on standard error when it is a terminal; nothing otherwise. Returns the
/// task that draws (cancel it when the work is done).
func drawProgress(of uploader: Uploader) async -> Task<Void, Never>? {
    guard isatty(2) == 1 else { return nil }
    let events = await uploader.events()
    return Task {
        for await event in events {
            let id = event.packageID.prefix(12) + "…"
            var text: String
            var final = false
            switch event {
            case let .started(_, size): text = "\(id) started (\(size) bytes)"
            case let .progress(_, confirmed, size):
                text = "\(id) \(size == 0 ? 100 : confirmed * 100 / size)% (\(confirmed)/\(size) bytes)"
            case let .retrying(_, attempt, delay, cause):
                text = "\(id) retrying in \(delay.components.seconds) s (attempt \(attempt)): \(cause.message)"
            case let .sessionRestarted(_, status): text = "\(id) the session is gone (HTTP \(status)); starting again"
            case .acknowledged: text = "\(id) acknowledged"; final = true
            case let .rejected(_, rejection):
                text = "\(id) rejected \(rejection.status) \(rejection.code ?? "")"; final = true
            case .existsUnverified: text = "\(id) exists_unverified"; final = true
            case let .deferred(_, cause): text = "\(id) left for a later run: \(cause.message)"; final = true
            }
            let line = "\r" + String(text.prefix(160)) + "\u{1b}[K" + (final ? "\n" : "")
            FileHandle.standardError.write(Data(line.utf8))
        }
    }
}

func printStates(_ states: [OutboxState], json: Bool) {
    if json {
        printJSON(.array(states.map(\.reportJSON)))
        return
    }
    for state in states {
        var line = "\(state.packageID)  \(state.summary)"
        if state.phase != .rejected {
            line += "  \(state.confirmed)/\(state.size) bytes  attempts \(state.attempts)"
            if let error = state.lastError { line += "  (\(error))" }
        }
        if !state.superseded.isEmpty { line += "  supersedes \(state.superseded.count) rejected" }
        print(line)
    }
    if states.contains(where: { $0.phase == .rejected }) {
        printError("a rejected package stays in the outbox. Fix the cause, then `continuon-pack outbox retry ID` sends the "
            + "same bytes again; or re-sign it (`continuon-pack resign PKG --key KEY --output DIR`) and upload the result, "
            + "which supersedes the rejected bytes.")
    }
}

/// 0 when every package is acknowledged, 1 when any was rejected, 2 when any is still pending.
func exitStatus(_ states: [OutboxState]) -> ExitCode {
    if states.contains(where: { $0.phase == .rejected || $0.phase == .existsUnverified }) { return ExitStatus.invalid }
    if states.contains(where: { $0.phase != .acknowledged }) { return ExitStatus.usageOrIO }
    return ExitStatus.ok
}

extension ContinuonPackNetCommand {
    struct Upload: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: NetworkCommand.upload.abstract,
            discussion: """
                Each package is first added to the outbox (a hard link or copy with a durable state record), so an \
                interrupted upload resumes from what the server holds on the next run. Exit 0 when every package \
                is acknowledged (the server's size and hashes equal ours), 1 when any was rejected (4xx; the \
                package stays in the outbox with the server's reason), 2 when any is still pending.
                """)

        @Argument(help: "The .cpkg files.")
        var packages: [String]

        @OptionGroup var target: TargetOptions
        @OptionGroup var outboxOption: OutboxOption

        @Flag(name: .long, help: "Print the final states as JSON.")
        var json = false

        func run() async throws {
            let outbox = try outboxOption.open()
            var ids: [String] = []
            for package in packages { ids.append(try await outbox.add(packageAt: package).packageID) }
            let uploader = Uploader(outbox: outbox, target: try await target.target(), policy: target.policy)
            let progress = await drawProgress(of: uploader)
            var states: [OutboxState] = []
            for id in ids { states.append(try await uploader.upload(packageID: id)) }
            progress?.cancel()
            printStates(states, json: json)
            throw exitStatus(states)
        }
    }

    struct OutboxCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: NetworkCommand.outbox.rawValue,
            abstract: NetworkCommand.outbox.abstract,
            subcommands: [Add.self, Run.self, Status.self, Retry.self])

        struct Add: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Add packages to the outbox (a hard link or fsynced copy: the caller may then delete theirs).")

            @Argument(help: "The .cpkg files.")
            var packages: [String]
            @OptionGroup var outboxOption: OutboxOption

            func run() throws {
                let outbox = try outboxOption.open()
                for package in packages {
                    let state = try outbox.add(packageAt: package)
                    print("\(state.packageID)  \(state.phase.rawValue)")
                }
            }
        }

        struct Run: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Upload what the outbox holds; keep watching for new entries unless --once.")

            @OptionGroup var target: TargetOptions
            @OptionGroup var outboxOption: OutboxOption

            @Flag(name: .long, help: "Drain what is queued and exit (0 when all are acknowledged).")
            var once = false

            @Option(name: .long, help: "Seconds between looks for new entries.")
            var interval = 5

            @Option(name: .long, help: "After acknowledgement: keep the package, or remove it (the state record stays).")
            var retention: Retention = .keep

            @Flag(name: .long, help: "Print the final states as JSON (with --once).")
            var json = false

            enum Retention: String, ExpressibleByArgument { case keep, remove }

            func run() async throws {
                let outbox = try outboxOption.open()
                let uploader = Uploader(outbox: outbox, target: try await target.target(), policy: target.policy)
                let progress = await drawProgress(of: uploader)
                defer { progress?.cancel() }
                if once {
                    let states = try await uploader.uploadQueued()
                    if retention == .remove { try outbox.removeAcknowledged() }
                    printStates(states, json: json)
                    throw exitStatus(states)
                }
                while true {
                    _ = try await uploader.uploadQueued()
                    if retention == .remove { try outbox.removeAcknowledged() }
                    try await Task.sleep(for: .seconds(interval))
                }
            }
        }

        struct Retry: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Queue rejected entries again, unchanged (after the service's trust or configuration was fixed).",
                discussion: """
                    A rejected package is never sent again by itself. Name the entries by package ID, or give \
                    --rejected for all of them; entries that are not rejected are left as they are. To send other \
                    bytes (a re-signed package), add or upload them instead: they supersede the rejected entry.
                    """)

            @Argument(help: "Package IDs of rejected entries.")
            var packageIDs: [String] = []

            @Flag(name: .long, help: "Every rejected (or exists_unverified) entry.")
            var rejected = false

            @OptionGroup var outboxOption: OutboxOption

            @Flag(name: .long, help: "Print the resulting states as JSON.")
            var json = false

            func validate() throws {
                guard rejected != !packageIDs.isEmpty else {
                    throw ValidationError("Name package IDs or give --rejected (not both).")
                }
            }

            func run() throws {
                let outbox = try outboxOption.open()
                let ids = rejected
                    ? try outbox.entries().filter { $0.phase == .rejected || $0.phase == .existsUnverified }.map(\.packageID)
                    : packageIDs
                var states: [OutboxState] = []
                for id in ids { states.append(try outbox.retry(packageID: id)) }
                if json {
                    printJSON(.array(states.map(\.reportJSON)))
                } else {
                    for state in states { print("\(state.packageID)  \(state.summary)") }
                }
            }
        }

        struct Status: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Show each entry: package ID, state, bytes confirmed, attempts, last error.")

            @OptionGroup var outboxOption: OutboxOption
            @Flag(name: .long, help: "Print JSON.")
            var json = false

            func run() throws {
                printStates(try outboxOption.open().entries(), json: json)
            }
        }
    }
}
