import ArgumentParser
import ContinuonPack
import ContinuonPackCLI
import ContinuonPackServer
import ContinuonPackUpload
import Foundation
import Logging

extension ContinuonPackNetCommand {
    struct Serve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: NetworkCommand.serve.abstract,
            discussion: """
                Speaks the Cloud Storage resumable-upload subset of docs/signed-ingestion.md section 12 under \
                /upload/storage/v1/b/BUCKET/o. Each package is verified completely (signature by a trusted key, \
                manifest, package ID, every digest, object name <package_id>.cpkg) before it is committed to the \
                store; a refusal is a 4xx with an RFC 9457 problem-details body carrying the verify error code. \
                Prints "listening on http://HOST:PORT" once it accepts connections; logs go to standard error.
                """)

        @Option(name: .long, help: "Address to listen on, HOST:PORT (port 0 picks a free one).")
        var listen = "127.0.0.1:8080"

        @Option(name: .long, help: "A trusted public key (SPKI PEM); repeat for several.")
        var trustedKey: [String] = []

        @Option(name: .long, help: "How many distinct trusted keys must have signed.")
        var threshold = 1

        @Option(name: .long, help: "Where verified packages go: a directory, or gs://BUCKET[/PREFIX].")
        var store: String

        @Option(name: .long, help: "For a gs:// store: the storage endpoint (an emulator, or https://storage.googleapis.com).")
        var storeEndpoint = "https://storage.googleapis.com"

        @Option(name: .long, help: "For a gs:// store: a file holding a bearer token.")
        var storeTokenFile: String?

        @Option(name: .long, help: "The bucket name clients upload to.")
        var bucket = "staging"

        @Option(name: .long, help: "Directory for partial uploads (default: STORE/.spool for a directory store).")
        var spool: String?

        @Option(name: .long, help: "Largest package accepted, in MiB.")
        var maxPackageMib = 65536

        @Option(name: .long, help: "Most uploads in progress at once.")
        var maxSessions = 64

        @Option(name: .long, help: "Seconds an idle upload session is kept.")
        var sessionExpiry = 86400

        @Option(name: .long, help: "Seconds a connection may stay idle (also mid-request) before it is closed.")
        var idleTimeout = 120

        func validate() throws {
            guard !trustedKey.isEmpty else { throw ValidationError("Give at least one --trusted-key.") }
            guard threshold >= 1 else { throw ValidationError("--threshold must be at least 1.") }
            guard listen.split(separator: ":").count == 2, Int(listen.split(separator: ":")[1]) != nil else {
                throw ValidationError("--listen must be HOST:PORT, not \(listen).")
            }
            guard maxSessions > 0, maxPackageMib > 0, sessionExpiry > 0, idleTimeout > 0 else {
                throw ValidationError("--max-sessions, --max-package-mib, --session-expiry and --idle-timeout must be positive.")
            }
        }

        func run() async throws {
            let keys = try trustedKey.map(loadPublicKey)
            guard threshold <= Set(keys).count else {
                throw ValidationError("--threshold \(threshold) is more than the \(Set(keys).count) distinct trusted keys.")
            }
            LoggingSystem.bootstrap(StreamLogHandler.standardError)
            let parts = listen.split(separator: ":")
            let ingestStore: any IngestStore
            let spoolDirectory: String
            if store.hasPrefix("gs://") {
                let rest = store.dropFirst(5)
                let bucketName = String(rest.split(separator: "/", maxSplits: 1).first ?? "")
                let prefix = rest.split(separator: "/", maxSplits: 1).dropFirst().first.map { String($0) + "/" } ?? ""
                guard !bucketName.isEmpty, let endpoint = URL(string: storeEndpoint) else {
                    throw ValidationError("--store gs://BUCKET[/PREFIX] needs a bucket and a valid --store-endpoint.")
                }
                var token: String?
                if let storeTokenFile {
                    token = String(decoding: try readSmallFile(storeTokenFile, limit: 65536), as: UTF8.self)
                        .trimmingCharacters(in: .whitespacesAndNewlines)
                }
                spoolDirectory = spool ?? NSTemporaryDirectory() + "/continuon-pack-spool"
                ingestStore = try CloudStorageStore(
                    target: UploadTarget(baseURL: endpoint, bucket: bucketName, prefix: prefix, bearerToken: token),
                    spoolDirectory: spoolDirectory)
            } else {
                spoolDirectory = spool ?? store + "/.spool"
                ingestStore = try LocalDirectoryStore(directory: store)
            }
            let server = try IngestServer(
                configuration: IngestConfiguration(
                    host: String(parts[0]), port: Int(parts[1]) ?? 8080, trustedKeys: keys, threshold: threshold,
                    bucket: bucket, spoolDirectory: spoolDirectory, maxPackageBytes: UInt64(maxPackageMib) << 20,
                    maxSessions: maxSessions, sessionExpiry: .seconds(sessionExpiry), idleTimeout: .seconds(idleTimeout)),
                store: ingestStore)
            let host = parts[0]
            try await server.run { port in
                FileHandle.standardOutput.write(Data("listening on http://\(host):\(port)\n".utf8))
            }
        }
    }
}
