/// The deterministic package ID: lowercase hex SHA-256 of
/// `continuon-package-id/v1\n environment_id=<id>\n brain_runtime_version=<v>\n ai_app_version=<v>\n` followed by
/// `<sha256> <size> <path>\n` for each blob in manifest order. Time, key, compression and file metadata do not
/// enter it, so re-packing the same episodes gives the same ID.
public enum PackageID {
    /// The exact text that is hashed.
    public static func preimage(provenance: Provenance, blobs: [BlobDescriptor]) -> [UInt8] {
        var bytes: [UInt8] = []
        write(provenance: provenance, blobs: blobs) { bytes.append(contentsOf: $0) }
        return bytes
    }

    public static func compute(provenance: Provenance, blobs: [BlobDescriptor]) -> String {
        let hasher = SHA256Hasher()
        write(provenance: provenance, blobs: blobs) { hasher.update(UnsafeRawBufferPointer($0)) }
        return hasher.finalize().hex
    }

    /// Hands the preimage to `sink` in pieces of about 32 KiB (a manifest may list a million blobs).
    private static func write(
        provenance: Provenance, blobs: [BlobDescriptor], to sink: (UnsafeBufferPointer<UInt8>) -> Void
    ) {
        var text = "continuon-package-id/v1\n"
        text += "environment_id=\(provenance.environmentID)\n"
        text += "brain_runtime_version=\(provenance.brainRuntimeVersion)\n"
        text += "ai_app_version=\(provenance.aiAppVersion)\n"
        var piece = Array(text.utf8)
        piece.reserveCapacity(1 << 16)
        func append(_ text: String) {
            var text = text
            text.withUTF8 { piece.append(contentsOf: $0) }
        }
        for blob in blobs {
            append(blob.sha256)
            piece.append(UInt8(ascii: " "))
            append(String(blob.size))
            piece.append(UInt8(ascii: " "))
            append(blob.path)
            piece.append(0x0a)
            if piece.count >= 1 << 15 {
                piece.withUnsafeBufferPointer(sink)
                piece.removeAll(keepingCapacity: true)
            }
        }
        piece.withUnsafeBufferPointer(sink)
    }
}
