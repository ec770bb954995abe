import ContinuonPack
import ContinuonPackIngest
import HTTPTypes
import Hummingbird
import NIOCore

extension IngestProblem {
    /// A refusal from a verification report: 422 with the first failure's code, every failure listed.
    init(refusing report: VerificationReport) {
        self.init(refusing: report.failures)
    }

    init(refusing failures: [ContinuonPackError]) {
        let first = failures.first
        self.init(422, first?.code.rawValue ?? "package.invalid", "The package failed verification.", detail: first?.message)
        errors = failures.map { Failure(code: $0.code.rawValue, message: $0.message) }
    }

    /// `application/problem+json` (RFC 9457): `type`, `title`, `status`, `detail`, plus `code` and (for
    /// verification failures) `errors` [{code, message}], the same codes `continuon-pack verify --json` prints.
    /// `Connection: close` when the rest of the request should not be read.
    var response: Response {
        var fields = HTTPFields()
        fields[.contentType] = "application/problem+json"
        for (name, value) in headers { if let field = HTTPField.Name(name) { fields[field] = value } }
        if closesConnection { fields[.connection] = "close" }
        return Response(
            status: .init(code: status), headers: fields,
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: CanonicalJSON.encode(jsonValue))))
    }

    /// The problem-details object.
    var jsonValue: JSONValue {
        var members: [(String, JSONValue)] = [
            ("type", .string("urn:continuon-pack:error:" + code)), ("title", .string(title)),
            ("status", .number(String(status))), ("code", .string(code)),
        ]
        if let detail { members.append(("detail", .string(detail))) }
        if !errors.isEmpty {
            members.append(("errors", .array(errors.map { error in
                .object([("code", .string(error.code)), ("message", .string(error.message))])
            })))
        }
        return .object(members)
    }

    /// A problem read back from its details (a session's recorded answer); headers are not kept.
    init?(json value: JSONValue) {
        guard case let .string(code)? = value["code"], case let .string(title)? = value["title"],
              let status = value["status"]?.safeUnsignedInteger, (400...599).contains(status)
        else { return nil }
        var detail: String?
        if case let .string(text)? = value["detail"] { detail = text }
        self.init(Int(status), code, title, detail: detail)
        if case let .array(items)? = value["errors"] {
            for item in items {
                guard case let .string(code)? = item["code"], case let .string(message)? = item["message"] else { return nil }
                errors.append(Failure(code: code, message: message))
            }
        }
    }
}

func jsonResponse(_ status: Int, _ value: JSONValue, headers: HTTPFields = [:]) -> Response {
    var fields = headers
    fields[.contentType] = "application/json"
    return Response(status: .init(code: status), headers: fields, body: ResponseBody(byteBuffer: ByteBuffer(bytes: CanonicalJSON.encode(value))))
}
