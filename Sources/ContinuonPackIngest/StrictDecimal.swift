/// Client numbers: ASCII digits only (no sign, no space, no hex, no empty string), at most 20 of them, and a value
/// that fits in `UInt64`. `UInt64("+5")` and `Int(" 5")`-style leniency never applies to request fields.
public enum StrictDecimal {
    public static func parse(_ text: some StringProtocol) -> UInt64? {
        parse(bytes: text.utf8)
    }

    public static func parse(bytes: some Collection<UInt8>) -> UInt64? {
        guard !bytes.isEmpty, bytes.count <= 20 else { return nil }
        var value: UInt64 = 0
        for byte in bytes {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(UInt64(byte - UInt8(ascii: "0")))
            guard !overflow1, !overflow2 else { return nil }
            value = sum
        }
        return value
    }
}
