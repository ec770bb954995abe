import ContinuonPack

// The strict JSON parser, envelope, manifest and trust policy decoders on arbitrary bytes. A parsed value must
// re-encode to canonical JSON that parses to the same value; so must a decoded trust policy.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJSON(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let value = try? StrictJSONParser.parse(bytes) {
        let canonical = CanonicalJSON.encode(value)
        guard let again = try? StrictJSONParser.parse(canonical, maxDepth: 64) else {
            preconditionFailure("canonical output does not parse")
        }
        precondition(CanonicalJSON.encode(again) == canonical, "canonical JSON is not stable")
    }
    if let envelope = try? Envelope.decode(bytes) {
        _ = try? Manifest.decode(envelope.payload).problems()
    }
    _ = try? Manifest.decode(bytes).problems()
    if let policy = try? TrustPolicy.decode(bytes) {
        guard let again = try? TrustPolicy.decode(policy.canonicalBytes()) else {
            preconditionFailure("a decoded policy's canonical bytes do not decode")
        }
        precondition(again == policy, "a policy does not survive its canonical encoding")
    }
    _ = try? TrustPolicyLoader.load(bytes, roots: nil, now: "2026-01-01T00:00:00Z")
    return 0
}
