/// Reads a package's envelope and manifest without verifying anything, for display.
public enum PackageInspector {
    public struct Contents: Sendable {
        public let envelope: Envelope
        public let manifest: Manifest
    }

    /// - Throws: `io.error`; the structure, envelope and manifest codes when they cannot be read at all.
    public static func inspect(path: String, limits: PackageLimits = .default) throws -> Contents {
        try inspect(source: FileByteSource(file: try FileDescriptor.openForReading(path)), path: path, limits: limits)
    }

    /// Reads the package from `stream`'s start (the envelope member only). `path` labels the errors.
    public static func inspect(stream: any PackageStream, path: String, limits: PackageLimits = .default) throws -> Contents {
        try inspect(source: StreamByteSource(stream: stream), path: path, limits: limits)
    }

    static func inspect(source: any ArchiveByteSource, path: String, limits: PackageLimits) throws -> Contents {
        try withUTF8Locale {
            let reader: ArchiveReader
            let next: ArchiveReader.Next
            do {
                reader = try ArchiveReader(source: source, compression: .none)
                next = try reader.next()
            } catch {
                throw ContinuonPackError(.packageNotTar, "\(path) is not a tar archive.", cause: "\(error)")
            }
            guard case let .entry(info) = next, info.pathBytes.elementsEqual("manifest.dsse.json".utf8) else {
                throw ContinuonPackError(.packageMemberName, "The first member of \(path) is not manifest.dsse.json.")
            }
            guard let size = info.size, size <= limits.maxEnvelopeBytes else {
                throw ContinuonPackError(.envelopeTooLarge, "manifest.dsse.json is larger than \(limits.maxEnvelopeBytes) bytes.")
            }
            var bytes = [UInt8](repeating: 0, count: Int(size))
            var filled = 0
            while filled < bytes.count {
                let count = try bytes.withUnsafeMutableBytes { raw in
                    try reader.readData(into: UnsafeMutableRawBufferPointer(rebasing: raw[filled...]))
                }
                guard count > 0 else { break }
                filled += count
            }
            guard filled == bytes.count else {
                throw ContinuonPackError(.packageCorrupt, "manifest.dsse.json is truncated.")
            }
            let envelope = try Envelope.decode(bytes, limits: limits)
            return Contents(envelope: envelope, manifest: try Manifest.decode(envelope.payload, limits: limits))
        }
    }
}
