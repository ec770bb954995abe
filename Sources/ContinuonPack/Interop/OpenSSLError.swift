import COpenSSL

/// Drains OpenSSL's thread-local error queue into one line of text, for the `cause` of an error.
func openSSLErrorText() -> String? {
    var lines: [String] = []
    while true {
        let code = ERR_get_error()
        if code == 0 { break }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        lines.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
    return lines.isEmpty ? nil : lines.joined(separator: "; ")
}

func cryptoError(_ message: String, code: ContinuonPackError.Code = .cryptoFailure) -> ContinuonPackError {
    ContinuonPackError(code, message, cause: openSSLErrorText())
}
