import ArgumentParser
import ContinuonPack
import ContinuonPackCLI

extension Compression: ExpressibleByArgument {}

extension ContinuonPackCommand {
    struct Pack: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Pack every regular file under a directory into a signed package.",
            discussion: """
                Each regular file under DIR becomes a blob named by its path relative to DIR. Writes \
                OUTDIR/<package_id>.cpkg atomically (never replacing an existing file) and prints its path as the \
                last line. created_at comes from SOURCE_DATE_EPOCH when it is set; with the same key, inputs and \
                SOURCE_DATE_EPOCH the package is byte-identical.
                """)

        @Argument(help: "The directory of episode files.")
        var directory: String

        @Option(name: .long, help: "The signing key (PKCS#8 PEM).")
        var key: String

        @Option(name: .long, help: "Passphrase file for an encrypted key.")
        var passphraseFile: String?

        @Option(name: .long, help: "Continuon Brain runtime version.")
        var runtimeVersion: String

        @Option(name: .long, help: "Continuon AI app version.")
        var appVersion: String

        @Option(name: .long, help: "Environment ID.")
        var environmentId: String

        @Option(name: .long, help: "Directory to write the package into (created with its parents when missing).")
        var output: String

        @Option(name: .long, help: "Compression of the episode archive: none, gzip or zstd.")
        var compression: Compression = .zstd

        @Option(name: .long, help: "zstd worker threads (the output is the same for any count of 1 or more; more help on machines with more than two cores).")
        var threads = 1

        @Flag(name: .long, help: "Follow symbolic links to regular files instead of refusing them.")
        var followSymlinks = false

        @Flag(name: .long, help: "Leave out FIFOs, sockets and devices instead of refusing them.")
        var skipSpecial = false

        @Flag(name: .long, help: "Do not check the framing of *.tfrecord blobs (checked by default: a corrupt TFRecord is never signed).")
        var noCheckTfrecord = false

        @Flag(name: .long, help: "Print a JSON summary instead of text.")
        var json = false

        func run() throws {
            let key = try loadPrivateKey(self.key, passphraseFile: passphraseFile)
            let blobs = try BlobSource.collect(
                in: directory, options: CollectOptions(followSymlinks: followSymlinks, skipSpecialFiles: skipSpecial))
            let writer = PackageWriter(
                provenance: Provenance(
                    brainRuntimeVersion: runtimeVersion, aiAppVersion: appVersion, environmentID: environmentId),
                signingKey: key, compression: compression,
                createdAt: try PackageWriter.createdAt(environment: processEnvironment()))
            var configured = writer
            configured.compressionThreads = max(1, threads)
            configured.checkTFRecords = !noCheckTfrecord
            let progress = ProgressLine(label: "packing")
            configured.progress = progress.counter(total: totalSize(blobs))
            let result: PackResult
            do {
                result = try configured.write(blobs: blobs, toDirectory: output)
                progress.finish()
            } catch {
                progress.finish()
                throw error
            }
            if json {
                printJSON(.object([
                    ("package_id", .string(result.packageID)),
                    ("path", .string(result.path)),
                    ("sha256", .string(try result.packageSHA256().hex)),
                    ("size", .number(String(result.packageSize))),
                    ("blobs", .number(String(result.manifest.blobs.count))),
                    ("key_id", .string(key.publicKey.keyID)),
                ]))
            } else {
                let total = result.manifest.blobs.reduce(UInt64(0)) { $0 + $1.size }
                print("packed \(result.manifest.blobs.count) blobs (\(total) bytes) into \(result.packageSize) bytes, \(compression.rawValue)")
                print("package id: \(result.packageID)")
                print("signed by:  \(key.publicKey.keyID)")
            }
            print(result.path)
        }

        /// The bytes the blobs hold (for the progress line; the writer checks each size again as it reads).
        private func totalSize(_ blobs: [BlobSource]) -> UInt64 {
            blobs.reduce(UInt64(0)) { sum, blob in
                switch blob.content {
                case let .bytes(bytes): return sum + UInt64(bytes.count)
                case let .file(path): return sum + fileSize(path)
                }
            }
        }
    }
}
