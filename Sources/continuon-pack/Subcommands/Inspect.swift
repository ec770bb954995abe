import ArgumentParser
import ContinuonPack
import ContinuonPackCLI

extension ContinuonPackCommand {
    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a package's provenance and blobs without verifying it.",
            discussion: "Nothing shown here is verified: use `verify` for that.")

        @Argument(help: "The .cpkg file.")
        var package: String

        @Flag(name: .long, help: "Print JSON.")
        var json = false

        func run() throws {
            let contents = try PackageInspector.inspect(path: package)
            if json {
                printJSON(.object([
                    ("verified", .bool(false)),
                    ("path", .string(package)),
                    ("payload_type", .string(contents.envelope.payloadType)),
                    ("signature_key_ids", .array(contents.envelope.signatures.map { .string($0.keyID) })),
                    ("manifest", contents.manifest.jsonValue),
                ]))
                return
            }
            let manifest = contents.manifest
            print("NOT VERIFIED: run `continuon-pack verify` to check signatures and digests.")
            print("package id:            \(manifest.packageID)")
            print("created at:            \(manifest.createdAt)")
            print("environment id:        \(manifest.provenance.environmentID)")
            print("brain runtime version: \(manifest.provenance.brainRuntimeVersion)")
            print("ai app version:        \(manifest.provenance.aiAppVersion)")
            for (key, value) in manifest.provenance.extra.sorted(by: { $0.key < $1.key }) { print("\(key): \(value)") }
            print("signature key ids:     \(contents.envelope.signatures.map(\.keyID).joined(separator: ", "))")
            print("archive:               \(manifest.archive.name) (\(manifest.archive.compression.rawValue)), \(manifest.archive.size) bytes, sha256 \(manifest.archive.sha256)")
            let total = manifest.blobs.reduce(UInt64(0)) { $0 &+ $1.size }
            print("blobs:                 \(manifest.blobs.count), \(total) bytes")
            for blob in manifest.blobs { print("  \(blob.size)\t\(blob.sha256)\t\(blob.path)") }
        }
    }
}
