import ContinuonPack

// The whole verifier on arbitrary bytes: outer tar, envelope, manifest, decompression, inner tar.
// A crash, hang, leak past the limits or a "valid" verdict is a finding.
nonisolated(unsafe) let trustedKey = try! Ed25519PrivateKey(seed: [UInt8](
    repeating: 0x42, count: 32)).publicKey

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVerifier(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let report = PackageVerifier(trustedKeys: [trustedKey]).verify(bytes: bytes)
    // No input can be valid: nobody holds the fuzzing key's signatures.
    precondition(!report.valid, "the fuzzer found a package that verifies")
    return 0
}
