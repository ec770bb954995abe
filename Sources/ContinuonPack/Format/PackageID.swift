/// The deterministic package ID: lowercase hex SHA-256 of
/// `continuon-package-id/v1\n environment_id=<id>\n brain_runtime_version=<v>\n ai_app_version=<v>\n` followed by
/// `<sha256> <size> <path>\n` for each blob in manifest order. Time, key, compression and file metadata do not
/// enter it, so re-packing the same episodes gives the same ID.
public enum PackageID {
    /// The exact text that is hashed.
    public static func preimage(provenance: Provenance, blobs: [BlobDescriptor]) -> [UInt8] {
        var text = "continuon-package-id/v1\n"
        text += "environment_id=\(provenance.environmentID)\n"
        text += "brain_runtime_version=\(provenance.brainRuntimeVersion)\n"
        text += "ai_app_version=\(provenance.aiAppVersion)\n"
        var bytes = Array(text.utf8)
        for blob in blobs {
            bytes.append(contentsOf: "\(blob.sha256) \(blob.size) ".utf8)
            bytes.append(contentsOf: blob.path.utf8)
            bytes.append(0x0a)
        }
        return bytes
    }

    public static func compute(provenance: Provenance, blobs: [BlobDescriptor]) -> String {
        SHA256Hasher.hash(preimage(provenance: provenance, blobs: blobs)).hex
    }
}
