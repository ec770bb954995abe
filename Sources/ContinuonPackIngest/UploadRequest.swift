import ContinuonPack

/// The query parameters the service reads, from the raw query string: `&`-separated `key=value` pairs,
/// percent-decoded strictly. A parameter the service reads may appear once; a repeated one is refused (two readers
/// of one URL must not see different values). Other parameters (Google's clients send `fields`, `userProject`,
/// `predefinedAcl`, ...) are ignored.
public struct UploadQuery: Sendable, Equatable {
    public var uploadType: String?
    public var name: String?
    public var uploadID: String?
    public var ifGenerationMatch: String?
    public var alt: String?

    static let maxParameters = 64

    public init(rawQuery: String?) throws(IngestProblem) {
        guard let rawQuery, !rawQuery.isEmpty else { return }
        let pairs = rawQuery.utf8.split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: true)
        guard pairs.count <= Self.maxParameters else {
            throw IngestProblem(400, "request.query_invalid", "The query string has too many parameters.")
        }
        var seen: Set<String> = []
        for pair in pairs {
            let equals = pair.firstIndex(of: UInt8(ascii: "="))
            let rawKey = equals.map { pair[..<$0] } ?? pair[...]
            let rawValue = equals.map { pair[pair.index(after: $0)...] } ?? pair[pair.endIndex...]
            guard let keyBytes = PackageObjectName.percentDecode(Array(rawKey)),
                  let valueBytes = PackageObjectName.percentDecode(Array(rawValue)),
                  let key = String(validating: keyBytes, as: UTF8.self),
                  let value = String(validating: valueBytes, as: UTF8.self)
            else {
                throw IngestProblem(400, "request.query_invalid", "The query string is not valid percent-encoded UTF-8.")
            }
            let known = ["uploadType", "name", "upload_id", "ifGenerationMatch", "alt"]
            guard known.contains(key) else { continue }
            guard seen.insert(key).inserted else {
                throw IngestProblem(400, "request.query_invalid", "The query string repeats a parameter.",
                                    detail: "\(key) appears more than once.")
            }
            switch key {
            case "uploadType": uploadType = value
            case "name": name = value
            case "upload_id": uploadID = value
            case "ifGenerationMatch": ifGenerationMatch = value
            default: alt = value
            }
        }
    }
}

/// The JSON object resource a client may send when it starts an upload (resumable initiation or the first part of
/// a multipart upload). Only `name`, `md5Hash` and `crc32c` are read; the rest is ignored, but the whole must be a
/// JSON object (duplicate keys refused) of at most `maxBytes`.
public struct UploadMetadata: Sendable, Equatable {
    public var name: String?
    /// Base64 of the MD5 digest (24 characters).
    public var md5Hash: String?
    /// Base64 of the big-endian CRC-32C (8 characters).
    public var crc32c: String?

    public static let maxBytes = 64 * 1024

    public init(name: String? = nil, md5Hash: String? = nil, crc32c: String? = nil) {
        self.name = name
        self.md5Hash = md5Hash
        self.crc32c = crc32c
    }

    /// - Throws: 413 `upload.metadata_too_large`, 400 `upload.metadata_invalid`.
    public init(json bytes: [UInt8]) throws(IngestProblem) {
        guard bytes.count <= Self.maxBytes else { throw Self.tooLarge }
        guard !bytes.isEmpty else { return }
        let value: JSONValue
        do {
            value = try StrictJSONParser.parse(bytes)
        } catch {
            throw IngestProblem(400, "upload.metadata_invalid", "The object metadata is not valid JSON (duplicate keys are refused).")
        }
        guard case .object = value else {
            throw IngestProblem(400, "upload.metadata_invalid", "The object metadata is not a JSON object.")
        }
        func string(_ key: String, length: Int? = nil) throws(IngestProblem) -> String? {
            switch value[key] {
            case nil, .null?: return nil
            case let .string(text)?:
                if let length, text.utf8.count != length || !text.utf8.allSatisfy(Self.isBase64) {
                    throw IngestProblem(400, "upload.metadata_invalid", "The object metadata's \(key) is not a base64 digest.")
                }
                return text
            default:
                throw IngestProblem(400, "upload.metadata_invalid", "The object metadata's \(key) is not a string.")
            }
        }
        name = try string("name")
        md5Hash = try string("md5Hash", length: 24)
        crc32c = try string("crc32c", length: 8)
    }

    public static let tooLarge = IngestProblem(
        413, "upload.metadata_too_large", "The object metadata is larger than 64 KiB."
    ).closingConnection()

    static func isBase64(_ byte: UInt8) -> Bool {
        (65...90).contains(byte) || (97...122).contains(byte) || (48...57).contains(byte)
            || byte == UInt8(ascii: "+") || byte == UInt8(ascii: "/") || byte == UInt8(ascii: "=")
    }
}

/// Which object an upload creates: the query's `name` or the metadata's (equal if both are given), validated.
/// - Throws: 400 `upload.name_missing`, 400 `upload.metadata_invalid` (two different names), 422
///   `upload.object_name_invalid`.
public func uploadObjectName(query: UploadQuery, metadata: UploadMetadata) throws(IngestProblem) -> PackageObjectName {
    if let a = query.name, let b = metadata.name, a != b {
        throw IngestProblem(400, "upload.metadata_invalid", "The query and the metadata name different objects.")
    }
    guard let text = query.name ?? metadata.name else {
        throw IngestProblem(400, "upload.name_missing", "The object name is missing.")
    }
    guard let name = PackageObjectName(text) else {
        throw IngestProblem(422, "upload.object_name_invalid", "The object name must be <package_id>.cpkg.",
                            detail: "\(ContinuonPackError.quote(text)) is not 64 lowercase hex digits followed by .cpkg.")
    }
    return name
}

/// `Host` header values the service may put in a `Location` (when no public URL is configured): a DNS name or an
/// IPv4 or bracketed IPv6 literal, optionally `:PORT` (1 to 65535), at most 255 bytes.
public enum HostAuthority {
    public static func isValid(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty, bytes.count <= 255 else { return false }
        var host = bytes[...]
        var port: ArraySlice<UInt8>?
        if bytes.first == UInt8(ascii: "[") {
            guard let close = bytes.firstIndex(of: UInt8(ascii: "]")), close > 1 else { return false }
            let literal = bytes[1..<close]
            guard literal.allSatisfy({ PackageObjectName.hexValue($0) != nil || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: ".") })
            else { return false }
            host = bytes[...close]
            let rest = bytes[(close + 1)...]
            if !rest.isEmpty {
                guard rest.first == UInt8(ascii: ":") else { return false }
                port = rest.dropFirst()
            }
        } else {
            if let colon = bytes.firstIndex(of: UInt8(ascii: ":")) {
                host = bytes[..<colon]
                port = bytes[(colon + 1)...]
            }
            guard !host.isEmpty, host.allSatisfy({ (48...57).contains($0) || (65...90).contains($0) || (97...122).contains($0)
                || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") }),
                host.first != UInt8(ascii: "-"), host.first != UInt8(ascii: ".")
            else { return false }
        }
        if let port {
            guard port.count <= 5, let value = StrictDecimal.parse(bytes: port), (1...65535).contains(value) else { return false }
        }
        return true
    }
}
