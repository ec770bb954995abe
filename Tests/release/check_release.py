#!/usr/bin/env python3
"""Checks the release binaries a robot runs (scripts/release writes them into dist/), as a robot would run them.

    python3 Tests/release/check_release.py [DIST]

1. `ldd` lists no Swift runtime library (libswift*, libFoundation*, libdispatch) and nothing "not found";
   dist/SHA256SUMS matches the files.
2. With the Swift toolchain hidden (a private mount namespace with an empty tmpfs over the toolchain's directory,
   so nothing of it is on any loader path), the binaries run: keygen, pack of Examples/episodes, verify, inspect,
   and upload of the package to gcp-storage-emulator (started here, on 127.0.0.1) through `continuon-pack upload`
   (which execs continuon-pack-net from the same directory), then the object read back byte for byte.
3. Prints each binary's size and each command's peak RSS (GNU time) as a table for the README.

Exit 0 when everything held; 1 with the failed checks listed.
"""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIST = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "dist"))
BINARIES = ["continuon-pack", "continuon-pack-net"]
failures = []


def check(condition, what):
    print(("ok    " if condition else "FAIL  ") + what, flush=True)
    if not condition:
        failures.append(what)


def toolchain_directory():
    """The directory holding the Swift toolchain (/opt/swift for /opt/swift/usr/bin/swift), or None."""
    swift = shutil.which("swift")
    if not swift:
        return None
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(swift))))


def hidden_runner():
    """A command prefix that runs a program with the toolchain's directory hidden, or [] when it cannot be done."""
    toolchain = toolchain_directory()
    if not toolchain or toolchain == "/" or os.geteuid() != 0 or not shutil.which("unshare"):
        return [], None
    probe = subprocess.run(["unshare", "-m", "sh", "-c", 'mount -t tmpfs none "$0" && ! ls "$0"/usr >/dev/null 2>&1',
                            toolchain], capture_output=True)
    if probe.returncode != 0:
        return [], None
    return ["unshare", "-m", "sh", "-c", 'mount -t tmpfs none "$0" && shift && exec "$@"', toolchain, "--"], toolchain


def run(prefix, arguments, **kwargs):
    """Runs a dist binary (hidden toolchain), measuring peak RSS with GNU time. Returns (result, rss_kib)."""
    with tempfile.NamedTemporaryFile("w+") as report:
        result = subprocess.run(prefix + ["/usr/bin/time", "-f", "%M", "-o", report.name] + arguments,
                                capture_output=True, text=True, **kwargs)
        report.seek(0)
        lines = report.read().split()
    return result, int(lines[-1]) if lines and lines[-1].isdigit() else None


def start_emulator():
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "Tests/peers/emulator.py")], stdout=subprocess.PIPE,
                               text=True)
    line = process.stdout.readline().strip()
    if not line.startswith("PORT "):
        process.kill()
        raise SystemExit("the emulator did not start: " + line)
    return process, int(line.split()[1])


def main():
    for name in BINARIES:
        path = os.path.join(DIST, name)
        check(os.access(path, os.X_OK), f"{name} exists and is executable")
        if not os.access(path, os.X_OK):
            return
        libraries = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
        swift = [line.strip() for line in libraries.splitlines()
                 if any(marker in line for marker in ("libswift", "libFoundation", "libdispatch", "libBlocksRuntime"))]
        check(not swift, f"{name} needs no Swift runtime library {swift}")
        check("not found" not in libraries, f"{name} finds every library it links")
    sums = {}
    with open(os.path.join(DIST, "SHA256SUMS")) as listing:
        for line in listing:
            digest, name = line.split()
            sums[name] = digest
    for name in BINARIES:
        with open(os.path.join(DIST, name), "rb") as binary:
            check(hashlib.sha256(binary.read()).hexdigest() == sums.get(name), f"SHA256SUMS matches {name}")

    prefix, toolchain = hidden_runner()
    check(bool(prefix), "the Swift toolchain can be hidden (root, unshare, a mount namespace)")
    if toolchain:
        hidden = subprocess.run(prefix + ["ls", os.path.join(toolchain, "usr")], capture_output=True)
        check(hidden.returncode != 0, f"inside the namespace {toolchain} is empty")

    tool = os.path.join(DIST, "continuon-pack")
    rows = []
    emulator, port = start_emulator()
    try:
        with tempfile.TemporaryDirectory() as work:
            env = {"PATH": "/usr/bin:/bin", "HOME": work, "SOURCE_DATE_EPOCH": "1700000000"}
            steps = [
                ("keygen", ["keygen", "--private-key", f"{work}/k.pem", "--public-key", f"{work}/k.pub"]),
                ("pack (Examples/episodes, zstd)", ["pack", os.path.join(ROOT, "Examples/episodes"), "--key", f"{work}/k.pem",
                                                    "--runtime-version", "0.9.4", "--app-version", "2.1.0",
                                                    "--environment-id", "lab-arm-01", "--output", f"{work}/out"]),
            ]
            package = None
            for label, arguments in steps:
                result, rss = run(prefix, [tool] + arguments, env=env)
                check(result.returncode == 0, f"{label}: exit 0 {result.stderr.strip()[:300]}")
                rows.append((label, rss))
                if label.startswith("pack"):
                    package = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else None
            if package is None:
                return
            for label, arguments in [
                ("verify", ["verify", package, "--trusted-key", f"{work}/k.pub"]),
                ("inspect", ["inspect", package, "--json"]),
                ("upload (to the emulator)", ["upload", package, "--to", f"http://127.0.0.1:{port}", "--bucket", "staging",
                                              "--outbox", f"{work}/outbox", "--json"]),
            ]:
                result, rss = run(prefix, [tool] + arguments, env=env)
                check(result.returncode == 0, f"{label}: exit 0 {result.stderr.strip()[:300]}")
                rows.append((label, rss))
            name = os.path.basename(package)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/storage/v1/b/staging/o/{name}?alt=media", timeout=30) as response:
                stored = response.read()
            with open(package, "rb") as original:
                check(stored == original.read(), "the emulator holds the uploaded package byte for byte")
    finally:
        emulator.kill()

    print()
    print("| binary | size |")
    print("|---|---|")
    for name in BINARIES:
        print(f"| `{name}` | {os.path.getsize(os.path.join(DIST, name)) / 1048576:.1f} MiB |")
    print()
    print("| command (release binary, toolchain hidden) | peak RSS |")
    print("|---|---|")
    for label, rss in rows:
        print(f"| {label} | {rss / 1024:.1f} MiB |" if rss else f"| {label} | ? |")
    if failures:
        print(f"\n{len(failures)} check(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
