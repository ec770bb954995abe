// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "continuon-pack",
    products: [
        // Pack, verify, inspect, keys: no Foundation, no package dependencies.
        .library(name: "ContinuonPack", targets: ["ContinuonPack"]),
        // The outbox and uploader, Google credentials, the Cloud Storage client (Foundation, URLSession).
        .library(name: "ContinuonPackUpload", targets: ["ContinuonPackUpload"]),
        // The ingestion protocol's request parsing and arithmetic, without I/O (the service and its fuzz target).
        .library(name: "ContinuonPackIngest", targets: ["ContinuonPackIngest"]),
        .executable(name: "continuon-pack", targets: ["continuon-pack"]),
        .executable(name: "continuon-pack-net", targets: ["continuon-pack-net"]),
    ],
    // The CLI and the ingestion service need swift-argument-parser, Hummingbird, NIO and friends; the libraries need
    // none of them. A runtime that depends on this package with `traits: []` resolves, fetches and builds none.
    traits: [
        .default(enabledTraits: ["Tools"]),
        .trait(name: "Tools", description: "The continuon-pack executables and the ingestion service (serve)."),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
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
        .systemLibrary(
            name: "CCurl",
            pkgConfig: "libcurl",
            providers: [.apt(["libcurl4-openssl-dev"])]
        ),
        .target(name: "CContinuonSystem"),
        .target(
            name: "ContinuonPack",
            dependencies: ["COpenSSL", "CArchive", "CContinuonSystem"],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        // The uploader and its outbox: URLSession (FoundationNetworking). Kept out of ContinuonPack, which imports no
        // Foundation module, so that packing and verifying do not pay for Foundation's memory.
        .target(
            name: "ContinuonPackUpload",
            dependencies: ["ContinuonPack", "CCurl"],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        // Client text and client numbers of the ingestion protocol: names, Content-Range, queries, metadata, chunk
        // arithmetic. Pure functions, no Foundation, no NIO: what the fuzz target drives with in-memory requests.
        .target(
            name: "ContinuonPackIngest",
            dependencies: ["ContinuonPack"],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        .target(
            name: "ContinuonPackServer",
            dependencies: [
                "ContinuonPack",
                "ContinuonPackIngest",
                "ContinuonPackUpload",
                .product(name: "Hummingbird", package: "hummingbird", condition: .when(traits: ["Tools"])),
                .product(name: "Logging", package: "swift-log", condition: .when(traits: ["Tools"])),
                .product(name: "HTTPTypes", package: "swift-http-types", condition: .when(traits: ["Tools"])),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle", condition: .when(traits: ["Tools"])),
                .product(name: "NIOCore", package: "swift-nio", condition: .when(traits: ["Tools"])),
                .product(name: "NIOPosix", package: "swift-nio", condition: .when(traits: ["Tools"])),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio", condition: .when(traits: ["Tools"])),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras", condition: .when(traits: ["Tools"])),
            ],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        // Promotion from staging into training storage: verification plus a sink that writes each blob as it is
        // checked.
        .target(
            name: "ContinuonPackPromote",
            dependencies: ["ContinuonPack", "CContinuonSystem"],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        // Promotion's Cloud Storage staging area (the one client of ContinuonPackUpload): continuon-pack-net.
        .target(
            name: "ContinuonPackPromoteCloud",
            dependencies: ["ContinuonPackPromote", "ContinuonPackUpload"],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        // What both executables share: exit codes, output, key loading.
        .target(
            name: "ContinuonPackCLI",
            dependencies: ["ContinuonPack", "ContinuonPackPromote",
                           .product(name: "ArgumentParser", package: "swift-argument-parser", condition: .when(traits: ["Tools"])),
                           .product(name: "Logging", package: "swift-log", condition: .when(traits: ["Tools"]))],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        // keygen, pack, verify, inspect, sign-blob, verify-blob; hands upload, outbox and serve to continuon-pack-net.
        .executableTarget(
            name: "continuon-pack",
            dependencies: [
                "ContinuonPack",
                "ContinuonPackPromote",
                "ContinuonPackCLI",
                .product(name: "ArgumentParser", package: "swift-argument-parser", condition: .when(traits: ["Tools"])),
            ],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        // upload, outbox, serve: FoundationNetworking, Hummingbird and NIO.
        .executableTarget(
            name: "continuon-pack-net",
            dependencies: [
                "ContinuonPack",
                "ContinuonPackUpload",
                "ContinuonPackPromote",
                "ContinuonPackPromoteCloud",
                "ContinuonPackServer",
                "ContinuonPackCLI",
                .product(name: "ArgumentParser", package: "swift-argument-parser", condition: .when(traits: ["Tools"])),
                .product(name: "Logging", package: "swift-log", condition: .when(traits: ["Tools"])),
            ],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        .testTarget(
            name: "ContinuonPackTests",
            dependencies: ["ContinuonPack", "ContinuonPackUpload", "ContinuonPackIngest", "ContinuonPackServer", "ContinuonPackPromote",
                           "ContinuonPackPromoteCloud"],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
    ]
)
