import ContinuonPackCLI
#if canImport(Glibc)
import Glibc
#endif

/// Runs `upload`, `outbox`, `serve` and `promote` from a `gs://` staging area by replacing this process (execv) with `continuon-pack-net` from this
/// executable's directory, with the same arguments: the process ID, exit status and signals are that program's.
/// Linking Foundation and their HTTP stacks here would nearly double the memory every `pack` and `verify` starts
/// with (16.5 MiB instead of 29.4 for `--help`).
enum NetworkHandover {
    /// The network command that `arguments` (without the program name) run: `upload …`, or `help upload`.
    static func command(in arguments: [String]) -> NetworkCommand? {
        let name = arguments.first == "help" ? arguments.dropFirst().first : arguments.first
        return name.flatMap(NetworkCommand.init(rawValue:))
    }

    /// Replaces this process with `continuon-pack-net ARGUMENTS` when they name a network command; returns
    /// otherwise. Exits 2 with a message when that executable is missing or cannot be run.
    static func runIfNetworkCommand(_ arguments: [String]) {
        // `promote` from a Cloud Storage staging area needs the network executable; from a directory it runs here.
        let cloudPromote = arguments.first == "promote" && arguments.contains { $0.hasPrefix("gs://") || $0.hasPrefix("--from=gs://") }
        guard let name = command(in: arguments)?.rawValue ?? (cloudPromote ? "promote --from gs://…" : nil) else { return }
        let path = siblingPath()
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        execv(path, argv)
        let reason = String(cString: strerror(errno))
        printError("`\(name)` is run by \(NetworkCommand.executableName), which should be installed beside "
            + "this executable as \(path) (\(reason)).")
        exit(ExitStatus.usageOrIO.rawValue)
    }

    /// `continuon-pack-net` in the directory of the running executable (`/proc/self/exe`, links resolved).
    static func siblingPath() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let executable = count > 0 ? String(cString: buffer) : CommandLine.arguments[0]
        let directory = executable.lastIndex(of: "/").map { String(executable[..<$0]) } ?? "."
        return directory + "/" + NetworkCommand.executableName
    }
}
