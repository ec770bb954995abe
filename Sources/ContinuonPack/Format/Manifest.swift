/// Who and what produced the episodes.
public struct Provenance: Sendable, Equatable {
    public var brainRuntimeVersion: String
    public var aiAppVersion: String
    public var environmentID: String
    /// Further string fields a runtime wants to record (keys must not repeat the three above).
    public var extra: [String: String]

    public init(brainRuntimeVersion: String, aiAppVersion: String, environmentID: String, extra: [String: String] = [:]) {
        self.brainRuntimeVersion = brainRuntimeVersion
        self.aiAppVersion = aiAppVersion
        self.environmentID = environmentID
        self.extra = extra
    }

    static let fixedKeys: Set<String> = ["brain_runtime_version", "ai_app_version", "environment_id"]

    /// The `provenance` object of the manifest.
    var jsonValue: JSONValue {
        .object([
            ("ai_app_version", .string(aiAppVersion)),
            ("brain_runtime_version", .string(brainRuntimeVersion)),
            ("environment_id", .string(environmentID)),
        ] + extra.map { ($0.key, .string($0.value)) })
    }

    /// The first problem with these values, if any (`manifest.identifier_invalid`).
    public func problem() -> ContinuonPackError? {
        for (name, value) in [
            ("environment_id", environmentID), ("brain_runtime_version", brainRuntimeVersion),
            ("ai_app_version", aiAppVersion),
        ] where !FormatRules.isValidIdentifier(value) {
            return ContinuonPackError(
                .manifestIdentifier,
                "provenance.\(name) \(quoted(value)) does not match [A-Za-z0-9][A-Za-z0-9._+:@-]{0,127}.")
        }
        for key in extra.keys where Self.fixedKeys.contains(key) || key.isEmpty {
            return ContinuonPackError(.manifestField, "provenance has a duplicate or empty extra key \(quoted(key)).")
        }
        return nil
    }
}

/// The episode archive as the manifest describes it.
public struct ArchiveDescriptor: Sendable, Equatable {
    public var name: String
    public var compression: Compression
    public var size: UInt64
    public var sha256: String
}

/// One blob (one member of the episode archive).
public struct BlobDescriptor: Sendable, Equatable {
    public var path: String
    public var size: UInt64
    public var sha256: String

    public init(path: String, size: UInt64, sha256: String) {
        self.path = path
        self.size = size
        self.sha256 = sha256
    }
}

/// The signed provenance manifest (the DSSE payload), schema `continuon.episode-package/v1`.
public struct Manifest: Sendable, Equatable {
    public static let schema = "continuon.episode-package/v1"

    public var packageID: String
    public var createdAt: String
    public var provenance: Provenance
    public var archive: ArchiveDescriptor
    public var blobs: [BlobDescriptor]

    public init(packageID: String, createdAt: String, provenance: Provenance, archive: ArchiveDescriptor, blobs: [BlobDescriptor]) {
        self.packageID = packageID
        self.createdAt = createdAt
        self.provenance = provenance
        self.archive = archive
        self.blobs = blobs
    }

    /// The manifest as a JSON value.
    public var jsonValue: JSONValue {
        .object([
            ("archive", .object([
                ("compression", .string(archive.compression.rawValue)),
                ("name", .string(archive.name)),
                ("sha256", .string(archive.sha256)),
                ("size", .number(String(archive.size))),
            ])),
            ("blobs", .array(blobs.map { blob in
                .object([
                    ("path", .string(blob.path)), ("sha256", .string(blob.sha256)),
                    ("size", .number(String(blob.size))),
                ])
            })),
            ("created_at", .string(createdAt)),
            ("package_id", .string(packageID)),
            ("provenance", provenance.jsonValue),
            ("schema", .string(Self.schema)),
        ])
    }

    /// The exact bytes the packer signs: canonical JSON (see `CanonicalJSON`), equal to
    /// `CanonicalJSON.encode(jsonValue)` but written directly, without building the tree (a manifest may list
    /// tens of thousands of blobs).
    public func canonicalBytes() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(512 + blobs.count * (100 + (blobs.first?.path.utf8.count ?? 0)))
        func literal(_ text: StaticString) {
            out.append(contentsOf: UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
        }
        func number(_ value: UInt64) { out.append(contentsOf: String(value).utf8) }
        literal(#"{"archive":{"compression":"#)
        CanonicalJSON.writeString(archive.compression.rawValue, into: &out)
        literal(#","name":"#)
        CanonicalJSON.writeString(archive.name, into: &out)
        literal(#","sha256":"#)
        CanonicalJSON.writeString(archive.sha256, into: &out)
        literal(#","size":"#)
        number(archive.size)
        literal(#"},"blobs":["#)
        for (index, blob) in blobs.enumerated() {
            literal(index == 0 ? #"{"path":"# : #",{"path":"#)
            CanonicalJSON.writeString(blob.path, into: &out)
            literal(#","sha256":"#)
            CanonicalJSON.writeString(blob.sha256, into: &out)
            literal(#","size":"#)
            number(blob.size)
            literal("}")
        }
        literal(#"],"created_at":"#)
        CanonicalJSON.writeString(createdAt, into: &out)
        literal(#","package_id":"#)
        CanonicalJSON.writeString(packageID, into: &out)
        literal(#","provenance":"#)
        CanonicalJSON.write(provenance.jsonValue, into: &out, indent: nil, level: 0)
        literal(#","schema":"#)
        CanonicalJSON.writeString(Self.schema, into: &out)
        literal("}")
        return out
    }

    // MARK: - Decoding untrusted manifests

    /// Decodes a manifest's shape: every required field present with the right JSON type, no unknown field.
    /// Value rules (identifiers, paths, digests, order, package ID) are checked by `problems()`.
    /// - Throws: `manifest.json_invalid`, `manifest.duplicate_key`, `manifest.schema`, `manifest.field_invalid`,
    ///   `manifest.unknown_field`, `manifest.limit_exceeded`.
    public static func decode(_ bytes: [UInt8], limits: PackageLimits = .default) throws(ContinuonPackError) -> Manifest {
        // The blobs are decoded as the parser reads them (never held as JSON); their first shape error waits until
        // the whole text parsed, as JSON errors come first and the blobs' errors last.
        var blobs: [BlobDescriptor] = []
        var blobCount = 0
        var blobError: ContinuonPackError?
        let root: JSONValue
        do {
            root = try StrictJSONParser.parse(bytes, maxDepth: limits.maxJSONDepth, streaming: "blobs") { value in
                defer { blobCount += 1 }
                guard blobError == nil, blobCount < limits.maxBlobCount else { return }
                do throws(ContinuonPackError) {
                    blobs.append(try decodeBlob(value, index: blobCount))
                } catch {
                    blobError = error
                }
            }
        } catch {
            switch error.kind {
            case .duplicateKey:
                throw ContinuonPackError(.manifestDuplicateKey, "The manifest repeats a JSON key: \(error.reason).")
            case .tooDeep:
                throw ContinuonPackError(.manifestLimit, "The manifest nests JSON deeper than \(limits.maxJSONDepth).")
            default:
                throw ContinuonPackError(
                    .manifestJSON, "The manifest is not valid JSON: \(error.reason) at byte \(error.offset).")
            }
        }
        guard case let .object(members) = root else {
            throw ContinuonPackError(.manifestField, "The manifest is not a JSON object.")
        }
        let known: Set<String> = ["schema", "package_id", "created_at", "provenance", "archive", "blobs"]
        if let unknown = members.first(where: { !known.contains($0.0) }) {
            throw ContinuonPackError(.manifestUnknownField, "The manifest has an unknown field \(quoted(unknown.0)).")
        }
        guard case let .string(schema)? = root["schema"] else { throw missing("schema", "a string") }
        guard schema == Self.schema else {
            throw ContinuonPackError(.manifestSchema, "The manifest schema is \(quoted(schema)), not \(Self.schema).")
        }
        guard case let .string(packageID)? = root["package_id"] else { throw missing("package_id", "a string") }
        guard case let .string(createdAt)? = root["created_at"] else { throw missing("created_at", "a string") }
        let provenance = try decodeProvenance(root["provenance"])
        let archive = try decodeArchive(root["archive"])
        guard case .array? = root["blobs"] else { throw missing("blobs", "an array") }
        guard blobCount <= limits.maxBlobCount else {
            throw ContinuonPackError(
                .manifestLimit, "The manifest lists \(blobCount) blobs; the limit is \(limits.maxBlobCount).")
        }
        if let blobError { throw blobError }
        return Manifest(packageID: packageID, createdAt: createdAt, provenance: provenance, archive: archive, blobs: blobs)
    }

    private static func decodeProvenance(_ value: JSONValue?) throws(ContinuonPackError) -> Provenance {
        guard case let .object(members)? = value else { throw missing("provenance", "an object") }
        var fixed: [String: String] = [:]
        var extra: [String: String] = [:]
        for (key, member) in members {
            guard case let .string(text) = member else {
                throw ContinuonPackError(.manifestField, "provenance.\(key) must be a string.")
            }
            if Provenance.fixedKeys.contains(key) { fixed[key] = text } else { extra[key] = text }
        }
        for key in Provenance.fixedKeys.sorted() where fixed[key] == nil {
            throw missing("provenance.\(key)", "a string")
        }
        return Provenance(
            brainRuntimeVersion: fixed["brain_runtime_version"]!, aiAppVersion: fixed["ai_app_version"]!,
            environmentID: fixed["environment_id"]!, extra: extra)
    }

    private static func decodeArchive(_ value: JSONValue?) throws(ContinuonPackError) -> ArchiveDescriptor {
        guard case let .object(members)? = value else { throw missing("archive", "an object") }
        let known: Set<String> = ["name", "compression", "size", "sha256"]
        if let unknown = members.first(where: { !known.contains($0.0) }) {
            throw ContinuonPackError(.manifestUnknownField, "archive has an unknown field \(quoted(unknown.0)).")
        }
        guard case let .string(name)? = value?["name"] else { throw missing("archive.name", "a string") }
        guard case let .string(compressionText)? = value?["compression"] else {
            throw missing("archive.compression", "a string")
        }
        guard let compression = Compression(rawValue: compressionText) else {
            throw ContinuonPackError(
                .manifestField, "archive.compression \(quoted(compressionText)) is not none, gzip or zstd.")
        }
        guard let size = value?["size"]?.safeUnsignedInteger else {
            throw missing("archive.size", "an unsigned integer below 2^53")
        }
        guard case let .string(sha256)? = value?["sha256"] else { throw missing("archive.sha256", "a string") }
        return ArchiveDescriptor(name: name, compression: compression, size: size, sha256: sha256)
    }

    private static func decodeBlob(_ value: JSONValue, index: Int) throws(ContinuonPackError) -> BlobDescriptor {
        guard case let .object(members) = value else { throw missing("blobs[\(index)]", "an object") }
        if let unknown = members.first(where: { $0.0 != "path" && $0.0 != "size" && $0.0 != "sha256" }) {
            throw ContinuonPackError(.manifestUnknownField, "blobs[\(index)] has an unknown field \(quoted(unknown.0)).")
        }
        guard case let .string(path)? = value["path"] else { throw missing("blobs[\(index)].path", "a string") }
        guard let size = value["size"]?.safeUnsignedInteger else {
            throw missing("blobs[\(index)].size", "an unsigned integer below 2^53")
        }
        guard case let .string(sha256)? = value["sha256"] else { throw missing("blobs[\(index)].sha256", "a string") }
        return BlobDescriptor(path: path, size: size, sha256: sha256)
    }

    private static func missing(_ field: String, _ type: String) -> ContinuonPackError {
        ContinuonPackError(.manifestField, "The manifest field \(field) is missing or is not \(type).")
    }

    /// Every value-level problem: identifiers, created_at, digests, blob paths, order and uniqueness, limits, and
    /// the package ID recomputed from the blobs. An empty result means the manifest is well-formed.
    public func problems(limits: PackageLimits = .default) -> [ContinuonPackError] {
        var found: [ContinuonPackError] = []
        if let problem = provenance.problem() { found.append(problem) }
        if !FormatRules.isValidTimestamp(createdAt) {
            found.append(ContinuonPackError(
                .manifestCreatedAt, "created_at \(quoted(createdAt)) is not an RFC 3339 UTC time YYYY-MM-DDTHH:MM:SSZ."))
        }
        if !Hex.isLowercaseDigest(packageID) {
            found.append(ContinuonPackError(.manifestDigest, "package_id is not 64 lowercase hex digits."))
        }
        if !Hex.isLowercaseDigest(archive.sha256) {
            found.append(ContinuonPackError(.manifestDigest, "archive.sha256 is not 64 lowercase hex digits."))
        }
        if archive.name != archive.compression.archiveName {
            found.append(ContinuonPackError(
                .archiveName,
                "archive.name \(quoted(archive.name)) is not \(archive.compression.archiveName), the name for "
                    + "compression \(archive.compression.rawValue)."))
        }
        var total: UInt64 = 0
        var previous: String?
        // Swift string equality and hashing are canonical-equivalence aware, so a lowercased key finds paths that
        // are equal after lowercase mapping and NFC normalization.
        var folded: [String: Int] = [:]
        folded.reserveCapacity(blobs.count)
        for (index, blob) in blobs.enumerated() {
            if let problem = FormatRules.pathProblem(blob.path) {
                found.append(ContinuonPackError(.manifestPath, "blobs[\(index)].path \(quoted(blob.path)): \(problem)."))
            }
            if !Hex.isLowercaseDigest(blob.sha256) {
                found.append(ContinuonPackError(.manifestDigest, "blobs[\(index)].sha256 is not 64 lowercase hex digits."))
            }
            if blob.size > limits.maxBlobBytes {
                found.append(ContinuonPackError(
                    .manifestLimit, "blobs[\(index)] declares \(blob.size) bytes; the limit is \(limits.maxBlobBytes)."))
            }
            total = total &+ blob.size
            let key = FormatRules.collisionKey(blob.path)
            if let other = folded[key] {
                if !blobs[other].path.utf8Equals(blob.path) {
                    found.append(ContinuonPackError(
                        .manifestPathCollision,
                        "blobs[\(index)].path \(quoted(blob.path)) collides with \(quoted(blobs[other].path)) after lowercase mapping and NFC normalization."))
                }
            } else {
                folded[key] = index
            }
            if let previous {
                if previous.utf8Equals(blob.path) {
                    found.append(ContinuonPackError(.manifestBlobDuplicate, "The blob path \(quoted(blob.path)) appears twice."))
                } else if !previous.utf8Precedes(blob.path) {
                    found.append(ContinuonPackError(
                        .manifestBlobOrder, "blobs[\(index)] \(quoted(blob.path)) is out of order (paths sort by UTF-8 bytes)."))
                }
            }
            previous = blob.path
        }
        if total > limits.maxTotalBlobBytes {
            found.append(ContinuonPackError(
                .manifestLimit, "The blobs declare \(total) bytes in all; the limit is \(limits.maxTotalBlobBytes)."))
        }
        let expectedID = PackageID.compute(provenance: provenance, blobs: blobs)
        if expectedID != packageID {
            found.append(ContinuonPackError(
                .packageIDMismatch, "package_id \(quoted(packageID)) does not match the provenance and blobs (expected \(expectedID))."))
        }
        return found
    }
}

/// Quotes untrusted text for a message, escaping anything that could disturb a terminal or a log line.
package func quoted(_ text: String, limit: Int = 200) -> String {
    var out = "\""
    for scalar in text.unicodeScalars.prefix(limit) {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case _ where scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value):
            out += "\\u{\(String(scalar.value, radix: 16))}"
        default: out.unicodeScalars.append(scalar)
        }
    }
    if text.unicodeScalars.count > limit { out += "…" }
    return out + "\""
}
