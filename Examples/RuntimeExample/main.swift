// How a Continuon Brain runtime packs and checks episodes with the ContinuonPack library.
//
//   swift run runtime-example Examples/episodes /tmp/outbox
//
// A real runtime loads its device key from secure storage instead of generating one per run.
import ContinuonPack
import Foundation

let arguments = CommandLine.arguments
guard arguments.count == 3 else {
    print("usage: runtime-example EPISODE_DIR OUTPUT_DIR")
    exit(2)
}
let episodeDirectory = arguments[1]
let outputDirectory = arguments[2]

do {
    try FileManager.default.createDirectory(atPath: outputDirectory, withIntermediateDirectories: true)

    // 1. The device key (here: a fresh one; on a robot: PKCS#8 PEM from the secure store).
    let key = try Ed25519PrivateKey.generate()

    // 2. Every regular file under the episode directory becomes a blob; links and devices are refused.
    let blobs = try BlobSource.collect(in: episodeDirectory)

    // 3. Pack: each blob is read once, hashed and archived in one pass; the package appears atomically.
    let writer = PackageWriter(
        provenance: Provenance(brainRuntimeVersion: "0.9.4", aiAppVersion: "2.1.0", environmentID: "lab-arm-01"),
        signingKey: key,
        compression: .zstd,
        createdAt: try PackageWriter.createdAt(environment: ProcessInfo.processInfo.environment))
    let result = try writer.write(blobs: blobs, toDirectory: outputDirectory)
    print("packed \(result.manifest.blobs.count) blobs into \(result.path)")

    // 4. Verify before handing the package to the uploader, exactly as the ingestion service will.
    let report = try PackageVerifier(trustedKeys: [key.publicKey]).verify(path: result.path)
    print(report.valid ? "verified: package \(result.packageID)" : "INVALID: \(report.failures)")
    exit(report.valid ? 0 : 1)
} catch {
    print("error: \(error)")
    exit(2)
}
