// swift-tools-version:6.1
// libFuzzer targets for the parsers that face untrusted input. A separate package, so that the main build never
// links them without the fuzzer runtime. Run them with scripts/fuzz.
import Foundation
import PackageDescription

// SwiftPM names a path dependency after its folder, which differs between clones.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent.lowercased()

let package = Package(
    name: "continuon-pack-fuzz",
    // Only the libraries: none of the CLI's or the service's packages are resolved or built.
    dependencies: [.package(path: "..", traits: [])],
    targets: [
        .executableTarget(name: "FuzzVerifier", dependencies: [.product(name: "ContinuonPack", package: root)]),
        .executableTarget(name: "FuzzJSON", dependencies: [.product(name: "ContinuonPack", package: root)]),
        .executableTarget(name: "FuzzIngest", dependencies: [.product(name: "ContinuonPackIngest", package: root)]),
    ]
)
