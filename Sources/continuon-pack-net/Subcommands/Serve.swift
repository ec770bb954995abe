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

        @OptionGroup(title: "Trust (a --trust-policy is re-read on SIGHUP and when the file changes)")
        var trust: TrustOptions

        @Option(name: .long, help: "Where verified packages go: a directory, or gs://BUCKET[/PREFIX].")
        var store: String

        @Option(name: .long, help: "For a gs:// store: the storage endpoint (an emulator, or https://storage.googleapis.com).")
        var storeEndpoint = "https://storage.googleapis.com"

        @Option(name: .long, help: "For a gs:// store: Google credentials (a service-account key or gcloud ADC file, or 'metadata'); default as for upload.")
        var storeCredentials: String?

        @Option(name: .long, help: "For a gs:// store: a file holding an OAuth access token, re-read whenever it changes.")
        var storeTokenFile: String?

        @Option(name: .long, help: "The bucket name clients upload to.")
        var bucket = "staging"

        @Option(name: .long, help: "Directory for upload sessions: their journals and the bytes they hold (default: STORE/.spool for a directory store, $TMPDIR/continuon-pack-spool for gs://). Sessions survive a restart of the service as long as this directory does; instances on one file system may share it.")
        var spool: String?

        @Option(name: .long, help: "Largest package accepted, in MiB.")
        var maxPackageMib = 65536

        @Option(name: .long, help: "Most uploads holding bytes at once (each: a spool file, two descriptors, a verifier thread); at the limit one that sent nothing new for --idle-timeout, or less than --min-body-rate on average, makes room.")
        var maxSessions = 64

        @Option(name: .long, help: "Seconds an upload session holding bytes is kept while nothing arrives.")
        var sessionExpiry = 86400

        @Option(name: .long, help: "Seconds a started upload that never sent a byte is kept (such sessions cost no file or thread).")
        var emptySessionExpiry = 600

        @Option(name: .long, help: "Seconds a connection may stay idle between requests (or within a request head), or leave a response unread, before it is closed.")
        var idleTimeout = 120

        @Option(name: .long, help: "Most connections open at once; at the limit the longest-idle connection without a request is closed.")
        var maxConnections = 1024

        @Option(name: .long, help: "A request body must average at least this many bytes per second, counted from --rate-grace after its head; slower ones are cut.")
        var minBodyRate = 1024

        @Option(name: .long, help: "Seconds a request body may take before --min-body-rate applies (a body that never starts is cut then).")
        var rateGrace = 10

        @Option(name: .long, help: "Seconds requests in progress may take to finish after SIGTERM or SIGINT; then they are cut.")
        var shutdownTimeout = 5

        @Option(name: .long, help: "The service's public base URL (for example https://ingest.example.com), used in upload session URLs instead of the Host header.")
        var publicURL: String?

        func validate() throws {
            guard listen.split(separator: ":").count == 2, Int(listen.split(separator: ":")[1]) != nil else {
                throw ValidationError("--listen must be HOST:PORT, not \(listen).")
            }
            guard maxSessions > 0, maxPackageMib > 0, sessionExpiry > 0, emptySessionExpiry > 0, idleTimeout > 0,
                  maxConnections > 0, minBodyRate >= 0, rateGrace > 0, shutdownTimeout >= 0
            else {
                throw ValidationError(
                    "--max-sessions, --max-package-mib, --session-expiry, --empty-session-expiry, --idle-timeout, "
                        + "--max-connections and --rate-grace must be positive, --min-body-rate at least 0.")
            }
            guard maxPackageMib <= 1 << 30 else { throw ValidationError("--max-package-mib is at most \(1 << 30).") }
            if let publicURL {
                guard let url = URL(string: publicURL), ["http", "https"].contains(url.scheme ?? ""), url.host != nil,
                      url.query == nil, url.fragment == nil, !publicURL.hasSuffix("/")
                else {
                    throw ValidationError("--public-url must be an http(s) URL without a trailing slash, query or fragment, not \(publicURL).")
                }
            }
        }

        func run() async throws {
            // SIGHUP re-reads the trust policy; until its handler is installed (and without a policy file) it must
            // not end the process.
            signal(SIGHUP, SIG_IGN)
            let trustInForce: TrustInForce
            if let path = trust.trustPolicy {
                trustInForce = try TrustInForce(
                    source: .init(path: path, roots: trust.rootOptions.roots(), statePath: trust.rootOptions.trustState),
                    threshold: trust.threshold)
            } else {
                trustInForce = TrustInForce(try trust.load(), threshold: trust.threshold)
            }
            try ensureDescriptors()
            LoggingSystem.bootstrap(StreamLogHandler.standardError)
            if trust.trustPolicy != nil && trust.rootOptions.trustRoot.isEmpty {
                Logger(label: "continuon-pack.serve").warning(
                    "the trust policy is not signed: whoever can write its file decides which keys count (sign it and give --trust-root)")
            }
            let parts = listen.split(separator: ":")
            let ingestStore: any IngestStore
            let spoolDirectory: String
            if store.hasPrefix("gs://") {
                guard let (bucketName, prefix) = parseCloudLocation(store), let endpoint = URL(string: storeEndpoint) else {
                    throw ValidationError("--store gs://BUCKET[/PREFIX] needs a bucket and a valid --store-endpoint.")
                }
                var target = UploadTarget(baseURL: endpoint, bucket: bucketName, prefix: prefix)
                target.credentials = try await resolveCredentials(
                    credentials: storeCredentials, tokenFile: storeTokenFile, forGoogle: target.isGoogle)
                spoolDirectory = spool ?? NSTemporaryDirectory() + "/continuon-pack-spool"
                ingestStore = try CloudStorageStore(target: target, spoolDirectory: spoolDirectory)
            } else {
                spoolDirectory = spool ?? store + "/.spool"
                ingestStore = try LocalDirectoryStore(directory: store)
            }
            let server = try IngestServer(
                configuration: IngestConfiguration(
                    host: String(parts[0]), port: Int(parts[1]) ?? 8080, trust: trustInForce,
                    bucket: bucket, spoolDirectory: spoolDirectory, maxPackageBytes: UInt64(maxPackageMib) << 20,
                    sessions: SessionLimits(
                        maxActive: maxSessions, expiry: .seconds(sessionExpiry), emptyExpiry: .seconds(emptySessionExpiry),
                        quietAfter: .seconds(idleTimeout), minBytesPerSecond: UInt64(minBodyRate), grace: .seconds(rateGrace)),
                    connections: ConnectionLimits(
                        maxConnections: maxConnections, minBodyBytesPerSecond: minBodyRate, grace: .seconds(Int64(rateGrace)),
                        unreadTimeout: .seconds(Int64(idleTimeout))),
                    idleTimeout: .seconds(idleTimeout), shutdownTimeout: .seconds(shutdownTimeout), publicURL: publicURL),
                store: ingestStore)
            let host = parts[0]
            try await server.run { port in
                FileHandle.standardOutput.write(Data("listening on http://\(host):\(port)\n".utf8))
            }
        }

        /// Every connection, spool file, verifier and stored object read takes a descriptor: raise the soft limit to
        /// the hard one, then refuse to start if the configured limits could still exhaust it.
        private func ensureDescriptors() throws {
            var limit = rlimit()
            guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
            if limit.rlim_cur < limit.rlim_max {
                var raised = limit
                raised.rlim_cur = min(limit.rlim_max, 1 << 20)
                if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
            }
            // Per connection its socket, its session's journal and at most two store files (a package and its
            // sidecar, or a stored object being sent); per session holding bytes, the spool file twice (writer and
            // verifier); 64 for the rest.
            let needed = UInt64(maxConnections) * 4 + UInt64(maxSessions) * 2 + 64
            guard UInt64(limit.rlim_cur) >= needed else {
                throw ValidationError(
                    "The process may open \(limit.rlim_cur) files, but --max-connections \(maxConnections) and "
                        + "--max-sessions \(maxSessions) need up to \(needed); lower them or raise the limit (ulimit -n).")
            }
        }
    }
}
