import Foundation
import Testing
@testable import ContinuonPack

/// `FormatRules.nfc` (the standard library's NFC, so that ContinuonPack needs no Foundation) against Foundation's
/// `precomposedStringWithCanonicalMapping`, which the packer and verifier used before.
@Suite("NFC without Foundation")
struct NFCTests {
    /// Composed and decomposed text, singletons, composition exclusions, blocked and reordered combining marks,
    /// Hangul syllables and jamo, kana voicing marks, Indic nuktas and vowel signs, emoji sequences.
    static let corpus: [String] = [
        "café", "cafe\u{301}", "A\u{30A}", "\u{212B}", "\u{2126}", "\u{1F71}", "\u{F900}", "\u{2F800}",
        "e\u{323}\u{302}", "e\u{302}\u{323}", "\u{1E0B}\u{323}", "q\u{307}\u{323}", "a\u{301}\u{301}",
        "a\u{5AE}\u{300}\u{301}", "\u{344}", "\u{301}a", "\u{958}", "\u{915}\u{93C}", "\u{FB2A}", "\u{2ADC}",
        "\u{928}\u{93C}", "\u{BC6}\u{BBE}", "\u{BCA}", "\u{DD9}\u{DCF}\u{DCA}",
        "\u{1100}", "\u{1100}\u{1161}", "\u{1100}\u{1161}\u{11A8}", "\u{AC01}\u{11A8}",
        "\u{D4DB}", "\u{1112}\u{1175}\u{11C2}", "한국어", "\u{1112}\u{1161}\u{11AB}\u{1100}\u{116E}\u{11A8}",
        "か\u{3099}", "ハ\u{309A}", "が", "\u{30A6}\u{3099}", "Tiếng Việt", "Tie\u{302}\u{301}ng Vie\u{323}\u{302}t",
        "Ελληνικά", "\u{3B1}\u{313}\u{301}\u{345}", "\u{1F80}", "Ωμέγα", "Ω\u{301}",
        "👩‍👩‍👧", "🇯🇵", "👍🏽", "日本語.txt", "episodes/cafe\u{301}/日本語.bin", "ünïcødé/ﬁle",
    ]

    @Test("Agrees with Foundation on the corpus", arguments: corpus)
    func corpusAgrees(_ text: String) {
        let foundation = text.precomposedStringWithCanonicalMapping
        #expect(Array(FormatRules.nfc(text).utf8) == Array(foundation.utf8))
        let decomposed = text.decomposedStringWithCanonicalMapping
        #expect(Array(FormatRules.nfc(decomposed).utf8) == Array(foundation.utf8))
    }

    /// Every character of the Basic Multilingual Plane that Foundation's tables know (assigned in Unicode 15 or
    /// earlier): alone, decomposed, after a base letter, and followed by combining marks of different classes.
    @Test("Agrees with Foundation on every BMP character assigned in Unicode 15, with combining marks")
    func everyBMPCharacterAgrees() {
        var disagreements: [String] = []
        for value in 0x80...0xFFFF {
            guard let scalar = Unicode.Scalar(value), let age = scalar.properties.age, age.major <= 15 else { continue }
            let text = String(scalar)
            let variants = [
                text, text.decomposedStringWithCanonicalMapping, "a" + text, text + "\u{301}", text + "\u{323}\u{302}",
                text + "\u{3099}",
            ]
            for variant in variants
            where Array(FormatRules.nfc(variant).utf8) != Array(variant.precomposedStringWithCanonicalMapping.utf8) {
                disagreements.append(variant.unicodeScalars.map { "U+" + String($0.value, radix: 16) }.joined(separator: " "))
            }
        }
        #expect(disagreements.isEmpty, "\(disagreements.prefix(20))")
    }

    /// Foundation on Linux composes a supplementary-plane character followed by a combining mark as if it were the
    /// character of its low 16 bits, never composes a precomposed Hangul LV syllable with a trailing jamo, and
    /// drops or composes a trailing jamo outside U+11A8-U+11C2 after a decomposed syllable. `FormatRules.nfc` gives
    /// Unicode's answers (those of Python's `unicodedata`, the spec's reference).
    @Test("Where Foundation is wrong, the result is Unicode's", arguments: [
        ("\u{10041}\u{301}", "\u{10041}\u{301}"), ("\u{10041}\u{323}\u{302}", "\u{10041}\u{323}\u{302}"),
        ("\u{13046}\u{3099}", "\u{13046}\u{3099}"), ("\u{20041}\u{301}", "\u{20041}\u{301}"),
        ("\u{AC00}\u{11A8}", "\u{AC01}"), ("\u{D4CC}\u{11C2}", "\u{D4E7}"),
        ("\u{1100}\u{1161}\u{11A7}", "\u{AC00}\u{11A7}"), ("\u{1100}\u{1161}\u{11C3}", "\u{AC00}\u{11C3}"),
    ])
    func foundationBugs(_ text: String, _ expected: String) {
        #expect(Array(FormatRules.nfc(text).utf8) == Array(expected.utf8))
        #expect(Array(text.precomposedStringWithCanonicalMapping.utf8) != Array(expected.utf8))
        #expect((FormatRules.pathProblem(Array(text.utf8)) == nil) == (text.utf8.elementsEqual(expected.utf8)))
    }

    @Test("Paths not in NFC are refused")
    func decomposedPathRefused() {
        #expect(FormatRules.pathProblem(Array("cafe\u{301}.bin".utf8)) != nil)
        #expect(FormatRules.pathProblem(Array("\u{212B}.bin".utf8)) != nil)
        #expect(FormatRules.pathProblem(Array("e\u{302}\u{323}".utf8)) != nil)
        #expect(FormatRules.pathProblem(Array("café/한국어.bin".utf8)) == nil)
    }
}
