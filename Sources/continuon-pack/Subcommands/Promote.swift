import ArgumentParser
import ContinuonPack
import ContinuonPackCLI
import ContinuonPackPromote
#if canImport(Glibc)
import Glibc
#endif

extension ContinuonPackCommand {
struct Promote: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "promote",
        abstract: "Promote verified packages from staging into training storage, checked again record by record.",
        discussion: """
            Every staged <package_id>.cpkg not yet promoted is read once: fully verified (TFRecord blobs record by \
            record) while its blobs are written to TRAINING/<environment_id>/<package_id>/, then \
            _provenance.json last (its presence means promoted). Create-only and restartable: nothing is \
            overwritten, nothing in staging is changed, a killed run is finished by the next. Exit 0 when every \
            package was promoted (or already was, or another promoter holds it), 1 when any was refused, 2 on \
            usage or I/O errors (a package that could not be read or written is retried by the next run).
            """
    )

    @Option(name: .long, help: "The staging directory (<package_id>.cpkg files, as serve --store keeps them).")
    var from: String

    @Option(name: .long, help: "The training directory.")
    var to: String

    @Option(name: .long, help: "A trusted public key (SPKI PEM); repeat for several.")
    var trustedKey: [String] = []

    @Option(name: .long, help: "How many distinct trusted keys must have signed.")
    var threshold = 1

    @Option(name: .long, help: "This promoter's shard I/N of the package IDs (default: $CLOUD_RUN_TASK_INDEX/$CLOUD_RUN_TASK_COUNT, or $JOB_COMPLETION_INDEX with --shard-count; else all).")
    var shard: String?

    @Option(name: .long, help: "The number of shards when $JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) gives the index.")
    var shardCount: Int?

    @Flag(name: .long, help: "Print one JSON object per package (an array).")
    var json = false

    func validate() throws {
        guard !trustedKey.isEmpty else { throw ValidationError("Give at least one --trusted-key.") }
        guard threshold >= 1 && threshold <= trustedKey.count else {
            throw ValidationError("--threshold must be between 1 and the number of --trusted-key options.")
        }
        for location in [from, to] where location.hasPrefix("gs://") {
            throw ValidationError("\(location): Cloud Storage locations are not supported by promote yet; give directories.")
        }
        if let shard, Shard(shard) == nil { throw ValidationError("--shard must be I/N with 0 <= I < N.") }
    }

    func run() throws {
        let keys = try trustedKey.map(loadPublicKey)
        guard threshold <= Set(keys).count else {
            throw ValidationError("--threshold \(threshold) is more than the \(Set(keys).count) distinct trusted keys.")
        }
        var promoter = DirectoryPromoter(staging: from, training: to,
                                         verifier: PackageVerifier(trustedKeys: keys, threshold: threshold))
        do {
            promoter.shard = try shard.flatMap(Shard.init) ?? Shard.fromEnvironment(processEnvironment(), count: shardCount) ?? .all
        } catch let error as ContinuonPackError {
            throw ValidationError(error.message)
        }
        let outcomes = try promoter.promoteAll()
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
            printError("promote (shard \(promoter.shard)): \(count(.promoted)) promoted, \(count(.alreadyPromoted)) already promoted, "
                + "\(count(.refused)) refused, \(count(.busy)) held by another promoter, \(count(.failed)) failed (I/O)")
        }
        if outcomes.contains(where: { $0.status == .failed }) { throw ExitStatus.usageOrIO }
        if outcomes.contains(where: { $0.status == .refused }) { throw ExitStatus.invalid }
    }
}
}
