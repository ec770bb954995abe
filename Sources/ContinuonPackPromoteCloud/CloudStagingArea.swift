import ContinuonPack
import ContinuonPackPromote
import ContinuonPackUpload
import Foundation

/// A staging area in Cloud Storage, `gs://BUCKET/PREFIX`: the objects `PREFIX<package_id>.cpkg` (not below a further
/// `/`), listed once per run and each read with ranged GETs of one pinned generation (`ifGenerationMatch`): a
/// package replaced while it is read fails as an I/O error instead of mixing two versions. Reads are blocking (the
/// verifier pulls bytes): run the promoter on a thread of its own (`runOnOwnThread`), never on the cooperative pool.
public final class CloudStagingArea: StagingArea {
    let client: CloudStorageClient
    let prefix: String
    private var listed: [String: CloudStorageClient.ListedObject] = [:]

    /// - Parameter client: its target names the bucket; `prefix` is the objects' name prefix ("" or ending in `/`).
    public init(client: CloudStorageClient, prefix: String) {
        self.client = client
        self.prefix = prefix
    }

    public var location: String { "gs://\(client.target.bucket)/\(prefix)" }

    public func packageIDs() throws -> [String] {
        let client = self.client, prefix = self.prefix
        let objects = try blocking { try await retrying { try await client.list(prefix: prefix) } }
        listed = [:]
        for object in objects where object.name.hasPrefix(prefix) {
            let rest = String(object.name.dropFirst(prefix.count))
            if !rest.contains("/"), let id = stagedPackageID(name: rest) { listed[id] = object }
        }
        return Array(listed.keys)
    }

    public func open(packageID: String) throws -> any StagedPackage {
        if listed[packageID] == nil { _ = try packageIDs() }
        guard let object = listed[packageID] else {
            throw ContinuonPackError(.ioError, "\(location)\(packageID).cpkg is not in the staging bucket.")
        }
        return CloudStagedPackage(client: client, object: object)
    }
}

/// One pinned version of a staged object, read in ranges: 256 KiB first (the envelope: enough to see whether the
/// package was promoted already), then 8 MiB.
final class CloudStagedPackage: StagedPackage {
    private let client: CloudStorageClient
    private let object: CloudStorageClient.ListedObject
    private var offset: UInt64 = 0
    private var buffer = Data()
    private var position = 0
    private var rangeSize = 256 * 1024

    init(client: CloudStorageClient, object: CloudStorageClient.ListedObject) {
        self.client = client
        self.object = object
    }

    func read(into target: UnsafeMutableRawBufferPointer) throws -> Int {
        if position == buffer.count {
            guard offset < object.size else { return 0 }
            let length = Int(min(UInt64(rangeSize), object.size - offset))
            let client = self.client, object = self.object, start = offset
            buffer = try blocking { try await retrying { try await client.read(object, offset: start, length: length) } }
            offset += UInt64(length)
            position = 0
            rangeSize = 8 << 20
        }
        let count = min(target.count, buffer.count - position)
        buffer.withUnsafeBytes { raw in
            target.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[position..<(position + count)]))
        }
        position += count
        return count
    }
}

/// Retries transport failures (connection errors, 408, 429, 5xx) five times with growing, jittered pauses.
func retrying<T: Sendable>(_ work: @escaping @Sendable () async throws -> T) async throws -> T {
    var delay = 0.5
    for _ in 0..<5 {
        do {
            return try await work()
        } catch is CloudStorageClient.TransportFailure {
            try await Task.sleep(for: .seconds(Double.random(in: 0...delay)))
            delay = min(delay * 2, 8)
        }
    }
    do {
        return try await work()
    } catch let failure as CloudStorageClient.TransportFailure {
        throw ContinuonPackError(.ioError, failure.message)
    }
}

/// Runs async work from a blocking caller (the verifier's thread) and waits for it.
func blocking<T: Sendable>(_ work: @escaping @Sendable () async throws -> T) throws -> T {
    let box = ResultBox<T>()
    let done = DispatchSemaphore(value: 0)
    Task {
        box.result = await Result(catching: { try await work() })
        done.signal()
    }
    done.wait()
    return try box.result!.get()
}

private final class ResultBox<T>: @unchecked Sendable {
    var result: Result<T, any Error>?
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
