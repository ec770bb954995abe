import ArgumentParser
import ContinuonPack
import ContinuonPackCLI
import ContinuonPackPromote
import ContinuonPackPromoteCloud
import ContinuonPackUpload
import Foundation

/// `promote --from gs://BUCKET/PREFIX`: the staging area read through the one Cloud Storage client.
struct Promote: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "promote", abstract: PromoteOptions.abstract, discussion: PromoteOptions.discussion)

    @OptionGroup var options: PromoteOptions

    func run() async throws {
        let options = self.options
        var client: CloudStorageClient?
        if options.stagingIsCloud || options.trainingIsCloud {
            guard let base = URL(string: options.endpoint ?? "https://storage.googleapis.com"), base.scheme != nil, base.host != nil else {
                throw ValidationError("--endpoint must be a URL.")
            }
            var target = UploadTarget(baseURL: base)
            target.credentials = try await resolveCredentials(
                credentials: options.credentials, tokenFile: options.tokenFile, forGoogle: target.isGoogle)
            client = CloudStorageClient(target: target)
        }
        let shared = client
        // The verifier pulls bytes, and each cloud read blocks on a request: a thread of its own, not the pool.
        try await runOnOwnThread {
            try options.run { verifier in
                let staging: any StagingArea
                if options.stagingIsCloud, let shared {
                    let (bucket, prefix) = try Self.bucketAndPrefix(options.from)
                    staging = CloudStagingArea(client: shared.with(bucket: bucket), prefix: prefix)
                } else {
                    staging = DirectoryStagingArea(directory: options.from)
                }
                if options.trainingIsCloud, let shared {
                    let (bucket, prefix) = try Self.bucketAndPrefix(options.to)
                    return CloudPromoter(staging: staging, client: shared.with(bucket: bucket), prefix: prefix, verifier: verifier)
                }
                return DirectoryPromoter(stagingArea: staging, training: options.to, verifier: verifier)
            }
        }
    }

    static func bucketAndPrefix(_ location: String) throws -> (String, String) {
        guard let parsed = parseCloudLocation(location) else { throw ValidationError("\(location) names no bucket.") }
        return parsed
    }
}
