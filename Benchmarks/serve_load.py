#!/usr/bin/env python3
"""Load test of `continuon-pack serve` (a benchmark, not a unit test).

    python3 Benchmarks/serve_load.py --binary PATH [--valid 40] [--hostile 40] [--concurrency 16] [--blob-kib 512]

Packs distinct valid packages and tampered ones (a byte flipped inside the episode archive, so their signatures
are fine but a digest is not), uploads all of them at once with `continuon-pack upload` processes against one
`serve` on 127.0.0.1, then checks that every valid package is stored exactly once with the right bytes and every
hostile one was refused with 422 and stored nowhere. Prints throughput and the server's peak memory.
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--valid", type=int, default=40)
    parser.add_argument("--hostile", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--blob-kib", type=int, default=512)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="continuon-load-")
    key = os.path.join(ROOT, "TestVectors/keys/test-ed25519.pem")
    pub = os.path.join(ROOT, "TestVectors/keys/test-ed25519.pub")
    episodes = os.path.join(work, "episodes")
    os.makedirs(episodes)
    with open(os.path.join(episodes, "steps.bin"), "wb") as f:
        f.write(os.urandom(args.blob_kib * 1024))
    packages = []
    for index in range(args.valid + args.hostile):
        out = os.path.join(work, "packed", str(index))
        os.makedirs(out)
        result = subprocess.run([args.binary, "pack", episodes, "--key", key, "--output", out, "--compression", "none",
                                 "--runtime-version", "1", "--app-version", "1", "--environment-id", "load-%d" % index],
                                check=True, capture_output=True, text=True)
        path = result.stdout.strip().splitlines()[-1]
        hostile = index >= args.valid
        if hostile:
            with open(path, "r+b") as f:
                f.seek(os.path.getsize(path) - 1024 - 4096)
                byte = f.read(1)
                f.seek(-1, 1)
                f.write(bytes([byte[0] ^ 0xFF]))
        packages.append((path, hostile))
    store = os.path.join(work, "store")
    server = subprocess.Popen([args.binary, "serve", "--listen", "127.0.0.1:0", "--trusted-key", pub, "--store", store,
                               "--max-sessions", "512"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = server.stdout.readline().strip().split()[-1]

    def upload(item):
        path, hostile = item
        outbox = tempfile.mkdtemp(dir=work, prefix="outbox-")
        result = subprocess.run([args.binary, "upload", path, "--to", url, "--outbox", outbox, "--json",
                                 "--chunk-size", "262144"], capture_output=True, text=True)
        state = json.loads(result.stdout)[0] if result.stdout.strip() else {}
        return path, hostile, result.returncode, state

    total_bytes = sum(os.path.getsize(p) for p, _ in packages)
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(upload, packages))
    elapsed = time.perf_counter() - start
    with open("/proc/%d/status" % server.pid) as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    server.terminate()
    server.wait()
    stored = sorted(name for name in os.listdir(store) if name.endswith(".cpkg"))
    problems = []
    for path, hostile, code, state in results:
        name = os.path.basename(path)
        if hostile:
            if code != 1 or state.get("rejection_status") != 422 or name in stored:
                problems.append("hostile %s: exit %d, %s" % (name, code, state.get("rejection_status")))
        else:
            with open(path, "rb") as a, open(os.path.join(store, name), "rb") as b:
                if code != 0 or a.read() != b.read():
                    problems.append("valid %s: exit %d or bytes differ" % (name, code))
    if len(stored) != args.valid:
        problems.append("%d objects stored, expected %d" % (len(stored), args.valid))
    print("| serve load: %d valid + %d hostile packages, %d concurrent uploads | value |" % (args.valid, args.hostile, args.concurrency))
    print("|---|---:|")
    print("| wall time (s) | %.2f |" % elapsed)
    print("| packages per second | %.1f |" % (len(packages) / elapsed))
    print("| MiB per second | %.1f |" % (total_bytes / elapsed / (1 << 20)))
    print("| server peak RSS (MiB) | %.0f |" % peak)
    print("| stored exactly once, right bytes / refused with 422 | %s |" % ("all" if not problems else "NO"))
    shutil.rmtree(work, ignore_errors=True)
    for problem in problems:
        print("PROBLEM:", problem, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
