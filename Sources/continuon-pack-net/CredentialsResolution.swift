import ContinuonPack
import ContinuonPackCLI
import ContinuonPackUpload

/// The access tokens a command sends, from its options, as Google's client libraries decide:
/// `--credentials FILE|metadata`, else `--token-file` (re-read when it changes); else, for Google's endpoint only,
/// Application Default Credentials (`$GOOGLE_APPLICATION_CREDENTIALS`, gcloud's ADC file, the metadata server);
/// else none. A Google token is never sent to another host unless the operator named the credentials: the
/// ingestion service and emulators need none.
/// - Throws: `credentials.*` with what was tried.
func resolveCredentials(credentials: String?, tokenFile: String?, forGoogle: Bool) async throws -> (any AccessTokenProvider)? {
    let environment = processEnvironment()
    if let credentials {
        if credentials == "metadata" { return GoogleCredentials.metadataServer(environment: environment) }
        return try GoogleCredentials.load(file: credentials)
    }
    if let tokenFile {
        let file = TokenFile(path: tokenFile)
        _ = try await file.accessToken(refresh: false) // unreadable or empty: say so now, not mid-upload
        return file
    }
    guard forGoogle else { return nil }
    return try await GoogleCredentials.applicationDefault(environment: environment)
}
