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
        guard options.stagingIsCloud else {
            let options = self.options
            try await runOnOwnThread { try options.run(staging: DirectoryStagingArea(directory: options.from)) }
            return
        }
        let location = options.from.dropFirst("gs://".count)
        let bucket = String(location.prefix { $0 != "/" })
        let prefix = String(location.dropFirst(bucket.count).drop { $0 == "/" })
        guard !bucket.isEmpty else { throw ValidationError("--from gs://BUCKET/PREFIX names no bucket.") }
        guard let base = URL(string: options.endpoint ?? "https://storage.googleapis.com"), base.scheme != nil, base.host != nil else {
            throw ValidationError("--endpoint must be a URL.")
        }
        var target = UploadTarget(baseURL: base, bucket: bucket, prefix: prefix)
        target.credentials = try await resolveCredentials(
            credentials: options.credentials, tokenFile: options.tokenFile, forGoogle: target.isGoogle)
        let client = CloudStorageClient(target: target)
        let options = self.options
        // The verifier pulls bytes, and each read blocks on a request: a thread of its own, not the pool.
        try await runOnOwnThread { try options.run(staging: CloudStagingArea(client: client, prefix: prefix)) }
    }
}
