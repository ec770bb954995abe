#!/usr/bin/env python3
"""Upload throughput and memory (a benchmark, not a test): `continuon-pack upload` of one large package over
loopback against gcp-storage-emulator and against `continuon-pack serve`, beside curl uploading the same file in
one request of the same protocol.

    python3 Benchmarks/upload_bench.py --binary PATH [--size-mb 1024]
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(command):
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline().strip()
    port = line.split()[-1].rsplit(":", 1)[-1]
    return process, "http://127.0.0.1:%s" % port


def timed(command):
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("failed: %s %s" % (command, process.stderr.read()[-400:]))
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def curl_upload(base, path, name):
    request = urllib.request.Request(
        "%s/upload/storage/v1/b/staging/o?uploadType=resumable&name=%s&ifGenerationMatch=0" % (base, name),
        data=b"{}", method="POST", headers={"Content-Type": "application/json",
                                             "X-Upload-Content-Length": str(os.path.getsize(path))})
    session = urllib.request.urlopen(request).headers["Location"]
    size = os.path.getsize(path)
    return timed(["curl", "-sf", "-o", "/dev/null", "-X", "PUT", "-H", "Content-Range: bytes 0-%d/%d" % (size - 1, size),
                  "-T", path, session])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--only", choices=["emulator", "serve"], help="run against one server only")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="continuon-upload-")
    episodes = os.path.join(work, "episodes")
    os.makedirs(episodes)
    with open(os.path.join(episodes, "big.bin"), "wb") as f:
        chunk = os.urandom(1 << 20)
        for index in range(args.size_mb):
            f.write(bytes([index & 0xFF]) + chunk[1:])
    key = os.path.join(ROOT, "TestVectors/keys/test-ed25519.pem")
    pub = os.path.join(ROOT, "TestVectors/keys/test-ed25519.pub")
    out = subprocess.run([args.binary, "pack", episodes, "--key", key, "--output", work, "--compression", "none",
                          "--runtime-version", "1", "--app-version", "1", "--environment-id", "upload-bench"],
                         check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    name = os.path.basename(out)
    size_mib = os.path.getsize(out) / (1 << 20)
    rows = []
    for label, command in (
            ("gcp-storage-emulator", [sys.executable, os.path.join(ROOT, "Tests/peers/emulator.py")]),
            ("continuon-pack serve", [args.binary, "serve", "--listen", "127.0.0.1:0", "--trusted-key", pub,
                                      "--store", os.path.join(work, "store")])):
        if args.only and args.only not in label:
            continue
        for tool in ("continuon-pack upload (8 MiB chunks)", "curl (one PUT)"):
            server, base = start(command)
            if tool.startswith("curl"):
                seconds, rss = curl_upload(base, out, name)
            else:
                seconds, rss = timed([args.binary, "upload", out, "--to", base, "--outbox",
                                      tempfile.mkdtemp(dir=work)])
            server.terminate()
            server.wait()
            shutil.rmtree(os.path.join(work, "store"), ignore_errors=True)
            rows.append((label, tool, seconds, size_mib / seconds, rss))
    print("| upload of a %.0f MiB package over loopback | client | s | MiB/s | client peak RSS MiB |" % size_mib)
    print("|---|---|---:|---:|---:|")
    for row in rows:
        print("| %s | %s | %.2f | %.0f | %.0f |" % row)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
