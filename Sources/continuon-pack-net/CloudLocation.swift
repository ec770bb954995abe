/// `gs://BUCKET[/PREFIX]` as `serve --store` and `promote` take it: the bucket, and the object-name prefix ("" or
/// ending in one `/`; empty segments dropped, so `gs://B/incoming` and `gs://B/incoming/` both mean `incoming/`).
/// nil when it names no bucket.
func parseCloudLocation(_ location: String) -> (bucket: String, prefix: String)? {
    guard location.hasPrefix("gs://") else { return nil }
    let rest = location.dropFirst(5)
    let bucket = String(rest.split(separator: "/", maxSplits: 1).first ?? "")
    let path = rest.split(separator: "/", maxSplits: 1).dropFirst().first.map(String.init) ?? ""
    let trimmed = path.split(separator: "/", omittingEmptySubsequences: true).joined(separator: "/")
    guard !bucket.isEmpty else { return nil }
    return (bucket, trimmed.isEmpty ? "" : trimmed + "/")
}
