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
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
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
        .target(name: "CContinuonSystem"),
        .target(
            name: "ContinuonPack",
            dependencies: ["COpenSSL", "CArchive", "CContinuonSystem"],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        .target(
            name: "ContinuonPackServer",
            dependencies: [
                "ContinuonPack",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        .executableTarget(
            name: "continuon-pack",
            dependencies: [
                "ContinuonPack",
                "ContinuonPackServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
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
