// The re-upload story through the library, as a runtime would run it:
//
//   runtime-uploader EPISODE_DIR WORK_DIR ENDPOINT ENROLLED_KEY.pem
//
// 1. pack with this device's key (not enrolled at the service yet), queue, upload: rejected, kept;
// 2. the service still refuses the same bytes after `outbox.retry`;
// 3. re-sign with the enrolled key and add: the new bytes supersede the rejected ones; upload: acknowledged.
// Every event is printed as it arrives (typed, from `uploader.events()`); results are awaited.
import ContinuonPack
import ContinuonPackUpload
import Foundation

let arguments = CommandLine.arguments
guard arguments.count == 5, let endpoint = URL(string: arguments[3]) else {
    print("usage: runtime-uploader EPISODE_DIR WORK_DIR ENDPOINT ENROLLED_KEY.pem")
    exit(2)
}
let (episodes, work, enrolledKeyFile) = (arguments[1], arguments[2], arguments[4])

func describe(_ event: UploadEvent) -> String {
    switch event {
    case let .started(id, size): "started \(id.prefix(8)) \(size) bytes"
    case let .progress(_, confirmed, size): "progress \(confirmed)/\(size)"
    case let .retrying(_, attempt, delay, cause): "retrying #\(attempt) in \(delay): \(cause)"
    case let .sessionRestarted(_, status): "session restarted (\(status))"
    case let .acknowledged(id, _): "acknowledged \(id.prefix(8))"
    case let .rejected(_, rejection): "rejected \(rejection.status) \(rejection.code ?? "?")"
    case .existsUnverified: "exists_unverified"
    case let .deferred(_, cause): "deferred: \(cause)"
    }
}

do {
    let deviceKey = try Ed25519PrivateKey.generate()
    let writer = PackageWriter(
        provenance: Provenance(brainRuntimeVersion: "0.9.4", aiAppVersion: "2.1.0", environmentID: "lab-arm-01"),
        signingKey: deviceKey, compression: .zstd, createdAt: try PackageWriter.createdAt())
    let packed = try writer.write(blobs: try BlobSource.collect(in: episodes), toDirectory: work + "/packages")

    let outbox = try Outbox(directory: work + "/outbox")
    try outbox.add(packageAt: packed.path)
    let uploader = Uploader(outbox: outbox, target: UploadTarget(baseURL: endpoint, chunkSize: 256 << 10))
    let events = await uploader.events()
    let printer = Task { for await event in events { print("event:", describe(event)) } }

    var state = try await uploader.upload(packageID: packed.packageID)
    print("result:", state.phase.rawValue, state.rejectionCode ?? "")

    try outbox.retry(packageID: packed.packageID)              // the same bytes again
    state = try await uploader.upload(packageID: packed.packageID)
    print("result:", state.phase.rawValue, state.rejectionCode ?? "")

    let enrolled = try Ed25519PrivateKey(pemRepresentation: Array(try Data(contentsOf: URL(fileURLWithPath: enrolledKeyFile))))
    let resigned = try PackageResigner(signingKey: enrolled).resign(packageAt: outbox.packagePath(packed.packageID),
                                                                    toDirectory: work + "/resigned")
    try outbox.add(packageAt: resigned.path)                     // supersedes the rejected entry
    state = try await uploader.upload(packageID: packed.packageID)
    print("result:", state.phase.rawValue, "superseded \(state.superseded.count)")
    try await Task.sleep(for: .milliseconds(200))                // let the printer catch up before exiting
    printer.cancel()
    exit(state.phase == .acknowledged ? 0 : 1)
} catch {
    print("error: \(error)")
    exit(2)
}
