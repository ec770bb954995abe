import ContinuonPack

/// Which packages one of N promoters takes: package IDs split by their first 16 hex digits, modulo N. Disjoint
/// and covering for any N, so N tasks of a Cloud Run job or a Kubernetes Indexed Job promote in parallel.
public struct Shard: Sendable, Equatable, CustomStringConvertible {
    public let index: Int
    public let count: Int

    public static let all = Shard(index: 0, count: 1)

    public init(index: Int, count: Int) {
        precondition(count >= 1 && index >= 0 && index < count)
        self.index = index
        self.count = count
    }

    /// `I/N` with 0 <= I < N.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let index = Int(parts[0]), let count = Int(parts[1]), count >= 1, count <= 1_000_000,
              index >= 0, index < count
        else { return nil }
        self.init(index: index, count: count)
    }

    /// The shard the environment gives: Cloud Run jobs (`CLOUD_RUN_TASK_INDEX`, `CLOUD_RUN_TASK_COUNT`), else a
    /// Kubernetes Indexed Job (`JOB_COMPLETION_INDEX`, with `count` from `--shard-count`); nil when neither is set.
    /// - Throws: a usage error naming the variables when they are set but do not make a shard (every task would
    ///   otherwise take every package).
    public static func fromEnvironment(_ environment: [String: String], count: Int?) throws -> Shard? {
        func number(_ name: String) -> Int? { environment[name].flatMap { Int($0) } }
        if environment["CLOUD_RUN_TASK_INDEX"] != nil || environment["CLOUD_RUN_TASK_COUNT"] != nil {
            guard let index = number("CLOUD_RUN_TASK_INDEX"), let total = number("CLOUD_RUN_TASK_COUNT"),
                  total >= 1, index >= 0, index < total
            else { throw ContinuonPackError("usage.shard", "CLOUD_RUN_TASK_INDEX and CLOUD_RUN_TASK_COUNT do not make a shard I/N with 0 <= I < N.") }
            return Shard(index: index, count: total)
        }
        if environment["JOB_COMPLETION_INDEX"] != nil {
            guard let index = number("JOB_COMPLETION_INDEX"), let count, count >= 1, index >= 0, index < count else {
                throw ContinuonPackError("usage.shard", "JOB_COMPLETION_INDEX needs --shard-count N greater than it.")
            }
            return Shard(index: index, count: count)
        }
        return nil
    }

    public func contains(packageID: String) -> Bool {
        guard count > 1 else { return true }
        let prefix = UInt64(packageID.prefix(16), radix: 16) ?? 0
        return Int(prefix % UInt64(count)) == index
    }

    public var description: String { "\(index)/\(count)" }
}
