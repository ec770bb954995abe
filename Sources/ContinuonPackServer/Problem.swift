import ContinuonPack
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// A refusal: an HTTP status and an RFC 9457 problem-details body carrying our stable error code.
struct Problem: Error {
    let status: Int
    let code: String
    let title: String
    var detail: String?
    var errors: [ContinuonPackError] = []
    var headers: [String: String] = [:]

    init(_ status: Int, _ code: String, _ title: String, detail: String? = nil, errors: [ContinuonPackError] = [],
         headers: [String: String] = [:]) {
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.errors = errors
        self.headers = headers
    }

    /// `application/problem+json`: `type`, `title`, `status`, `detail`, plus `code` and (for verification
    /// failures) `errors` [{code, message}], the same codes `continuon-pack verify --json` prints.
    var response: Response {
        var members: [(String, JSONValue)] = [
            ("type", .string("urn:continuon-pack:error:" + code)), ("title", .string(title)),
            ("status", .number(String(status))), ("code", .string(code)),
        ]
        if let detail { members.append(("detail", .string(detail))) }
        if !errors.isEmpty {
            members.append(("errors", .array(errors.map { error in
                .object([("code", .string(error.code.rawValue)), ("message", .string(error.message))])
            })))
        }
        var fields = HTTPFields()
        fields[.contentType] = "application/problem+json"
        for (name, value) in headers { if let field = HTTPField.Name(name) { fields[field] = value } }
        return Response(
            status: .init(code: status), headers: fields,
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: CanonicalJSON.encode(.object(members)))))
    }
}

func jsonResponse(_ status: Int, _ value: JSONValue, headers: HTTPFields = [:]) -> Response {
    var fields = headers
    fields[.contentType] = "application/json"
    return Response(status: .init(code: status), headers: fields, body: ResponseBody(byteBuffer: ByteBuffer(bytes: CanonicalJSON.encode(value))))
}
