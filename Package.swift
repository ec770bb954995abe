// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "continuon-pack",
    products: [
        .library(name: "ContinuonPack", targets: ["ContinuonPack"]),
        .executable(name: "continuon-pack", targets: ["continuon-pack"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        .systemLibrary(
            name: "CArchive",
            pkgConfig: "libarchive",
            providers: [.apt(["libarchive-dev"])]
        ),
        .target(
            name: "ContinuonPack",
            dependencies: ["COpenSSL", "CArchive"],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        .executableTarget(
            name: "continuon-pack",
            dependencies: [
                "ContinuonPack",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        .executableTarget(
            name: "runtime-example",
            dependencies: ["ContinuonPack"],
            path: "Examples/RuntimeExample"
        ),
        .testTarget(
            name: "ContinuonPackTests",
            dependencies: ["ContinuonPack"],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
    ]
)
