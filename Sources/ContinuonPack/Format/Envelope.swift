/// A DSSE v1 envelope (`{"payloadType", "payload", "signatures": [{"keyid", "sig"}]}`) as it was read or written.
public struct Envelope: Sendable, Equatable {
    public static let payloadType = "application/vnd.continuon.episode-manifest+json"

    public struct Signature: Sendable, Equatable {
        public var keyID: String
        public var signature: [UInt8]
        public init(keyID: String, signature: [UInt8]) {
            self.keyID = keyID
            self.signature = signature
        }
    }

    public var payloadType: String
    /// The exact payload bytes (the manifest as signed, never re-encoded).
    public var payload: [UInt8]
    public var signatures: [Signature]

    public init(payloadType: String = Envelope.payloadType, payload: [UInt8], signatures: [Signature]) {
        self.payloadType = payloadType
        self.payload = payload
        self.signatures = signatures
    }

    /// DSSE's pre-authentication encoding: `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`.
    public static func preAuthenticationEncoding(payloadType: String, payload: [UInt8]) -> [UInt8] {
        let type = Array(payloadType.utf8)
        var out = Array("DSSEv1 \(type.count) ".utf8)
        out += type
        out += Array(" \(payload.count) ".utf8)
        out += payload
        return out
    }

    /// The PAE bytes this envelope's signatures cover.
    public var signedBytes: [UInt8] { Self.preAuthenticationEncoding(payloadType: payloadType, payload: payload) }

    /// Signs `payload` with `key` and returns the envelope.
    public static func sign(payload: [UInt8], payloadType: String = Envelope.payloadType, with keys: [Ed25519PrivateKey]) throws -> Envelope {
        let pae = preAuthenticationEncoding(payloadType: payloadType, payload: payload)
        let signatures = try keys.map { key in
            Signature(keyID: key.publicKey.keyID, signature: try key.signature(for: pae))
        }
        return Envelope(payloadType: payloadType, payload: payload, signatures: signatures)
    }

    /// Canonical JSON bytes (sorted keys, no white space), as written into `manifest.dsse.json`: the canonical
    /// encoding of `jsonValue`, written directly (the payload's base64 goes straight into the output).
    public func jsonBytes() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity((payload.count + 2) / 3 * 4 + payloadType.utf8.count + 64 + signatures.count * 192)
        out.append(contentsOf: #"{"payload":""#.utf8)
        Base64.encode(payload, into: &out)
        out.append(contentsOf: #"","payloadType":"#.utf8)
        CanonicalJSON.writeString(payloadType, into: &out)
        out.append(contentsOf: #","signatures":["#.utf8)
        for (index, signature) in signatures.enumerated() {
            out.append(contentsOf: (index == 0 ? #"{"keyid":"# : #",{"keyid":"#).utf8)
            CanonicalJSON.writeString(signature.keyID, into: &out)
            out.append(contentsOf: #","sig":""#.utf8)
            Base64.encode(signature.signature, into: &out)
            out.append(contentsOf: #""}"#.utf8)
        }
        out.append(contentsOf: "]}".utf8)
        return out
    }

    /// The envelope as a JSON value.
    public var jsonValue: JSONValue {
        .object([
            ("payload", .string(Base64.encode(payload))),
            ("payloadType", .string(payloadType)),
            ("signatures", .array(signatures.map { signature in
                .object([("keyid", .string(signature.keyID)), ("sig", .string(Base64.encode(signature.signature)))])
            })),
        ])
    }

    /// Parses an untrusted envelope. The payload type is returned as found; the verifier checks it.
    /// - Throws: `envelope.json_invalid`, `envelope.duplicate_key`, `envelope.shape`, `envelope.base64_invalid`,
    ///   `envelope.too_large`.
    public static func decode(_ bytes: [UInt8], limits: PackageLimits = .default) throws(ContinuonPackError) -> Envelope {
        guard bytes.count <= limits.maxEnvelopeBytes else {
            throw ContinuonPackError(.envelopeTooLarge, "The envelope is \(bytes.count) bytes; the limit is \(limits.maxEnvelopeBytes).")
        }
        let root: JSONValue
        do {
            root = try StrictJSONParser.parse(bytes, maxDepth: limits.maxJSONDepth)
        } catch {
            switch error.kind {
            case .duplicateKey:
                throw ContinuonPackError(.envelopeDuplicateKey, "The envelope repeats a JSON key: \(error.reason).")
            case .tooDeep:
                throw ContinuonPackError(.envelopeShape, "The envelope nests JSON deeper than \(limits.maxJSONDepth).")
            default:
                throw ContinuonPackError(.envelopeJSON, "The envelope is not valid JSON: \(error.reason) at byte \(error.offset).")
            }
        }
        guard case let .object(members) = root else {
            throw ContinuonPackError(.envelopeShape, "The envelope is not a JSON object.")
        }
        if let unknown = members.first(where: { !["payloadType", "payload", "signatures"].contains($0.0) }) {
            throw ContinuonPackError(.envelopeShape, "The envelope has an unknown field \(quoted(unknown.0)).")
        }
        guard case let .string(payloadType)? = root["payloadType"] else {
            throw ContinuonPackError(.envelopeShape, "The envelope has no string payloadType.")
        }
        guard case let .string(payloadText)? = root["payload"] else {
            throw ContinuonPackError(.envelopeShape, "The envelope has no string payload.")
        }
        guard let payload = Base64.decodeCanonical(payloadText) else {
            throw ContinuonPackError(.envelopeBase64, "The envelope payload is not canonical standard base64.")
        }
        guard case let .array(signatureValues)? = root["signatures"] else {
            throw ContinuonPackError(.envelopeShape, "The envelope has no signatures array.")
        }
        guard signatureValues.count <= limits.maxSignatures else {
            throw ContinuonPackError(.envelopeShape, "The envelope carries \(signatureValues.count) signatures; the limit is \(limits.maxSignatures).")
        }
        var signatures: [Signature] = []
        for (index, value) in signatureValues.enumerated() {
            guard case let .object(fields) = value else {
                throw ContinuonPackError(.envelopeShape, "signatures[\(index)] is not an object.")
            }
            if let unknown = fields.first(where: { !["keyid", "sig"].contains($0.0) }) {
                throw ContinuonPackError(.envelopeShape, "signatures[\(index)] has an unknown field \(quoted(unknown.0)).")
            }
            guard case let .string(keyID)? = value["keyid"], case let .string(sigText)? = value["sig"] else {
                throw ContinuonPackError(.envelopeShape, "signatures[\(index)] needs string keyid and sig.")
            }
            guard let sig = Base64.decodeCanonical(sigText) else {
                throw ContinuonPackError(.envelopeBase64, "signatures[\(index)].sig is not canonical standard base64.")
            }
            signatures.append(Signature(keyID: keyID, signature: sig))
        }
        return Envelope(payloadType: payloadType, payload: payload, signatures: signatures)
    }
}
