// Packs a directory of episodes and verifies the package, with the Foundation-free ContinuonPack library only.
//
//   pack-and-verify EPISODE_DIR OUTPUT_DIR
//
// A real runtime loads its device key from secure storage instead of generating one per run.
import ContinuonPack
#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
guard arguments.count == 3 else {
    print("usage: pack-and-verify EPISODE_DIR OUTPUT_DIR")
    exit(2)
}

do {
    let key = try Ed25519PrivateKey.generate()
    let writer = PackageWriter(
        provenance: Provenance(brainRuntimeVersion: "0.9.4", aiAppVersion: "2.1.0", environmentID: "lab-arm-01"),
        signingKey: key, compression: .zstd, createdAt: try PackageWriter.createdAt())
    let result = try writer.write(blobs: try BlobSource.collect(in: arguments[1]), toDirectory: arguments[2])
    let report = try PackageVerifier(trustedKeys: [key.publicKey]).verify(path: result.path)
    print(report.valid ? "verified \(result.packageID)" : "INVALID \(report.failures.map(\.code))")
    print(result.path)
    exit(report.valid ? 0 : 1)
} catch {
    print("error: \(error)")
    exit(2)
}
