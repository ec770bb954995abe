// swift-tools-version:6.1
// A Continuon Brain runtime as a separate app depending on continuon-pack by path, as a robot team would:
//   pack-and-verify     the Foundation-free ContinuonPack library alone (no Foundation in its link line)
//   runtime-uploader    ContinuonPackUpload: the outbox, typed upload events, awaited results, the re-upload story
// `traits: []` turns off continuon-pack's default "Tools" trait: none of the CLI's or the service's packages
// (argument-parser, Hummingbird, NIO, ...) are resolved, fetched or built.
//
//   swift build --package-path Examples/RuntimeApp
import Foundation
import PackageDescription

// SwiftPM names a path dependency after its folder, which differs between clones.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().lastPathComponent.lowercased()

let package = Package(
    name: "runtime-app",
    dependencies: [.package(path: "../..", traits: [])],
    targets: [
        .executableTarget(name: "pack-and-verify", dependencies: [.product(name: "ContinuonPack", package: root)]),
        .executableTarget(name: "runtime-uploader", dependencies: [
            .product(name: "ContinuonPack", package: root), .product(name: "ContinuonPackUpload", package: root),
        ]),
    ]
)
