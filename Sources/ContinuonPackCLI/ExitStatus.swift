import ArgumentParser
import ContinuonPack
#if canImport(Glibc)
import Glibc
#endif

/// The exit codes of both executables: 0 success, 1 the package (or signature) is invalid, 2 usage or I/O error.
public enum ExitStatus {
    public static let ok = ExitCode(0)
    public static let invalid = ExitCode(1)
    public static let usageOrIO = ExitCode(2)
}

extension ParsableCommand {
    /// Parses the process's arguments as this root command and runs the chosen subcommand, mapping every failure to
    /// the documented exit codes (`ExitStatus`) instead of ArgumentParser's defaults. Each executable's `main`.
    public static func runMappingExitCodes() async {
        do {
            var command = try parseAsRoot()
            if var asynchronous = command as? any AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
        } catch let exit as ExitCode {
            Glibc.exit(exit.rawValue)
        } catch let error as ContinuonPackError {
            printError(error.description)
            Glibc.exit(ExitStatus.usageOrIO.rawValue)
        } catch {
            if exitCode(for: error) == .success { self.exit(withError: error) }
            printError(fullMessage(for: error))
            Glibc.exit(ExitStatus.usageOrIO.rawValue)
        }
    }
}
