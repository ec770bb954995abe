import ContinuonPack

/// What a verification report lets promotion do with a staged package, whatever the training area: publish the
/// manifest's blobs, or refuse the package (spec section 13).
public enum PromotionVerdict {
    case publish(Manifest)
    case refuse(PromotionOutcome)

    /// - Parameter stagedPath: names the staged package in messages.
    public init(report: VerificationReport, packageID: String, stagedPath: String) {
        guard report.valid, let manifest = report.manifest else {
            let environment = report.manifest?.provenance.environmentID
            self = .refuse(.refused(packageID, environment.flatMap { FormatRules.isValidIdentifier($0) ? $0 : nil },
                                    report.failures))
            return
        }
        let environment = manifest.provenance.environmentID
        guard manifest.packageID == packageID else {
            self = .refuse(.refused(packageID, environment, [ContinuonPackError(
                .promoteNameMismatch, "\(stagedPath) holds the package \(manifest.packageID), not \(packageID).")]))
            return
        }
        // The marker's name is the layout's: no blob may take it (or sit below it).
        if let blob = manifest.blobs.first(where: { Self.isReserved($0.path) }) {
            self = .refuse(.refused(packageID, environment, [ContinuonPackError(
                .promoteReservedPath, "The blob \(quoted(blob.path)) would take the place of \(PromotionMarker.fileName).")]))
            return
        }
        self = .publish(manifest)
    }

    /// Whether a blob path takes the marker's place: `_provenance.json` or below it, compared as a case-insensitive
    /// file system would.
    public static func isReserved(_ path: String) -> Bool {
        let first = path.split(separator: "/", maxSplits: 1).first.map(String.init) ?? path
        return FormatRules.collisionKey(first) == FormatRules.collisionKey(PromotionMarker.fileName)
    }
}

extension PromotionOutcome {
    public static func refused(_ packageID: String, _ environmentID: String?, _ errors: [ContinuonPackError]) -> Self {
        PromotionOutcome(packageID: packageID, status: .refused, environmentID: environmentID, blobs: 0, bytes: 0, errors: errors)
    }

    public static func alreadyPromoted(_ packageID: String, _ environmentID: String) -> Self {
        PromotionOutcome(packageID: packageID, status: .alreadyPromoted, environmentID: environmentID, blobs: 0, bytes: 0, errors: [])
    }

    public static func promoted(_ packageID: String, _ manifest: Manifest) -> Self {
        PromotionOutcome(packageID: packageID, status: .promoted, environmentID: manifest.provenance.environmentID,
                         blobs: manifest.blobs.count, bytes: manifest.blobs.reduce(0) { $0 + $1.size }, errors: [])
    }
}

extension PromotionMarker {
    /// The marker of a package `package` was read through, verified by `report`, at `promotedAt`.
    public init(manifest: Manifest, report: VerificationReport, package: HashingStream, promotedAt: String) {
        self.init(packageID: manifest.packageID, environmentID: manifest.provenance.environmentID,
                  packageSHA256: package.digest().hex, packageSize: package.size, keyIDs: report.verifiedKeyIDs,
                  promotedAt: promotedAt, manifest: manifest.jsonValue)
    }
}
