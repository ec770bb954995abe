import ArgumentParser
import ContinuonPack
import ContinuonPackPromote
import Logging

/// `promote`'s options, shared by both executables: `continuon-pack` promotes from a directory itself and hands a
/// `gs://` staging area over to `continuon-pack-net` (which holds the Cloud Storage client).
public struct PromoteOptions: ParsableArguments, Sendable {
    public static let abstract = "Promote verified packages from staging into training storage, checked again record by record."
    public static let discussion = """
        Every staged <package_id>.cpkg not yet promoted is read once: fully verified (TFRecord blobs record by \
        record) while its blobs are written to TRAINING/<environment_id>/<package_id>/, then _provenance.json \
        last (its presence means promoted). Create-only and restartable: nothing is overwritten, nothing in \
        staging is changed, a killed run is finished by the next. Exit 0 when every package was promoted (or \
        already was, or another promoter holds it), 1 when any was refused, 2 on usage or I/O errors (a package \
        that could not be read or written is retried by the next run).
        """

    @Option(name: .long, help: "The staging area: a directory (<package_id>.cpkg files, as serve --store keeps them) or gs://BUCKET/PREFIX.")
    public var from: String

    @Option(name: .long, help: "The training area: a directory or gs://BUCKET/PREFIX.")
    public var to: String

    @OptionGroup(title: "Trust")
    public var trust: TrustOptions

    @Option(name: .long, help: "This promoter's shard I/N of the package IDs (default: $CLOUD_RUN_TASK_INDEX/$CLOUD_RUN_TASK_COUNT, or $JOB_COMPLETION_INDEX with --shard-count; else all).")
    public var shard: String?

    @Option(name: .long, help: "The number of shards when $JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) gives the index.")
    public var shardCount: Int?

    @Option(name: .long, help: "For gs:// locations: the Cloud Storage JSON API endpoint (an emulator). (default: https://storage.googleapis.com)")
    public var endpoint: String?

    @Option(name: .long, help: "For gs:// locations: a service-account key or gcloud ADC JSON file (mode 0600), or 'metadata'. Default for Google's endpoint: Application Default Credentials.")
    public var credentials: String?

    @Option(name: .long, help: "For gs:// locations: a file holding an OAuth access token, re-read whenever it changes.")
    public var tokenFile: String?

    @Flag(name: .long, help: "Print one JSON object per package (an array).")
    public var json = false

    public init() {}

    /// Whether the staging area is in Cloud Storage.
    public var stagingIsCloud: Bool { from.hasPrefix("gs://") }
    /// Whether the training area is in Cloud Storage.
    public var trainingIsCloud: Bool { to.hasPrefix("gs://") }

    public func validate() throws {
        if !stagingIsCloud && !trainingIsCloud && (endpoint != nil || credentials != nil || tokenFile != nil) {
            throw ValidationError("--endpoint, --credentials and --token-file are for gs:// locations.")
        }
        if let shard, Shard(shard) == nil { throw ValidationError("--shard must be I/N with 0 <= I < N.") }
    }

    /// Promotes with the promoter `make` builds around the verifier of `trust`, and prints the outcomes.
    /// - Throws: the exit status: 1 when a package was refused, 2 when one failed (I/O) or on usage errors.
    public func run(_ make: (PackageVerifier) throws -> any Promoter) throws {
        var promoter = try make(trust.verifier())
        do {
            promoter.shard = try shard.flatMap(Shard.init) ?? Shard.fromEnvironment(processEnvironment(), count: shardCount) ?? .all
        } catch let error as ContinuonPackError {
            throw ValidationError(error.message)
        }
        // One log line per package on standard error, as serve logs (swift-log): what an operator's log pipeline reads.
        let logger = Logger(label: "continuon-pack.promote")
        let outcomes = try promoter.promoteAll { outcome in
            var metadata: Logger.Metadata = [
                "package_id": "\(outcome.packageID)", "outcome": "\(outcome.status.rawValue)",
                "environment_id": "\(outcome.environmentID ?? "-")", "blobs": "\(outcome.blobs)", "bytes": "\(outcome.bytes)",
            ]
            if !outcome.errors.isEmpty { metadata["codes"] = "\(outcome.errors.map(\.code.rawValue).joined(separator: ","))" }
            switch outcome.status {
            case .promoted, .alreadyPromoted, .busy: logger.info("package", metadata: metadata)
            case .refused: logger.warning("package refused", metadata: metadata)
            case .failed: logger.error("package failed", metadata: metadata)
            }
        }
        if json {
            printJSON(.array(outcomes.map(\.jsonValue)))
        } else {
            for outcome in outcomes {
                var line = "\(outcome.packageID)  \(outcome.status.rawValue)"
                if let environment = outcome.environmentID { line += "  \(environment)" }
                if outcome.status == .promoted { line += "  \(outcome.blobs) blobs, \(outcome.bytes) bytes" }
                print(line)
                for error in outcome.errors { print("  \(error.code.rawValue): \(error.message)") }
            }
            let count = { (status: PromotionOutcome.Status) in outcomes.filter { $0.status == status }.count }
            printError("promote \(promoter.staging.location) (shard \(promoter.shard)): \(count(.promoted)) promoted, "
                + "\(count(.alreadyPromoted)) already promoted, \(count(.refused)) refused, "
                + "\(count(.busy)) held by another promoter, \(count(.failed)) failed (I/O)")
        }
        if outcomes.contains(where: { $0.status == .failed }) { throw ExitStatus.usageOrIO }
        if outcomes.contains(where: { $0.status == .refused }) { throw ExitStatus.invalid }
    }
}
