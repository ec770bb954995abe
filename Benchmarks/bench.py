#!/usr/bin/env python3
"""Side-by-side benchmark of continuon-pack against the standard tools, on inputs it generates.

    scripts/bench [--size-mb 1024] [--small 20000] [--runs 5] [--huge-gb 8] [--workdir DIR] [--quick]

Runs every command interleaved (one of each per round, `--runs` rounds, page cache warm) and prints the median
wall time, ratios to the reference tool, and peak memory (max RSS from wait4). Not a test: numbers depend on the
machine. The README's performance table comes from one run of this script.
"""
import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(command, cwd=None, stdout=subprocess.DEVNULL, shell=False):
    """Wall seconds and peak RSS (MiB) of one command (the largest process of a pipeline, for shell=True).

    The command runs under GNU time, which reports its child's maximum resident set size. (Reading ru_maxrss
    from Python's own wait4 would not do: a child forked from Python starts with Python's resident pages, and
    the kernel keeps that high-water mark across exec, so every command would seem to need about 18 MiB.)
    """
    argv = ["sh", "-c", command] if shell else list(command)
    with tempfile.NamedTemporaryFile("w+") as report:
        start = time.perf_counter()
        process = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name] + argv, cwd=cwd, stdout=stdout,
                                 stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - start
        if process.returncode != 0:
            sys.exit("bench: %s failed: %s" % (command, process.stderr.decode()[-500:]))
        report.seek(0)
        peak_kib = int(report.read().split()[-1])
    return elapsed, peak_kib / 1024


def make_blobs(directory, count, size_of):
    os.makedirs(directory, exist_ok=True)
    with open("/dev/urandom", "rb") as random:
        seed = random.read(1 << 20)
    for index in range(count):
        size = size_of(index)
        path = os.path.join(directory, "episode-%05d" % (index // 100), "blob-%05d.bin" % index)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            written = 0
            while written < size:
                piece = seed[: min(len(seed), size - written)]
                # Vary the content so that zstd cannot collapse repeats across 1 MiB.
                f.write(bytes([index & 0xFF, written >> 20 & 0xFF]) + piece[2:])
                written += len(piece)


def write_policy(path, pub, count):
    """A trust policy (spec section 14) of `count` keys: the test key (every environment) and random robots' keys,
    each allowed its own environment, as a fleet's would be."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    def entry(raw, environments):
        body = '{"keytype":"ed25519","keyval":{"public":"%s"},"scheme":"ed25519"}' % raw.hex()
        return {"key_id": hashlib.sha256(body.encode()).hexdigest(), "public_key": raw.hex(),
                "environments": environments, "comment": "bench robot"}

    with open(pub, "rb") as f:
        test = serialization.load_pem_public_key(f.read())
    raw = test.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    keys = [entry(raw, ["*"])]
    for index in range(count - 1):
        other = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        keys.append(entry(other, ["robot-%05d" % index]))
    keys.sort(key=lambda k: k["key_id"])
    document = {"schema": "continuon.trust-policy/v1", "version": 1, "threshold": 1, "keys": keys}
    with open(path, "wb") as f:
        f.write(json.dumps(document, sort_keys=True, separators=(",", ":")).encode() + b"\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--small", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--huge-gb", type=int, default=0,
                        help="also pack and verify one sparse blob of this many GiB (memory must not grow with size)")
    parser.add_argument("--workdir", default=os.path.join(ROOT, ".build-bench"))
    parser.add_argument("--binary", required=True)
    parser.add_argument("--quick", action="store_true", help="tiny inputs, one run: a smoke test of the script")
    parser.add_argument("--only", help="run only the tables whose title contains this text (their inputs are still made)")
    args = parser.parse_args()
    if args.quick:
        args.size_mb, args.small, args.runs = 16, 200, 1
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    key = os.path.join(ROOT, "TestVectors/keys/test-ed25519.pem")
    pub = os.path.join(ROOT, "TestVectors/keys/test-ed25519.pub")
    ident = ["--runtime-version", "1", "--app-version", "1", "--environment-id", "bench"]
    big = os.path.join(work, "big")
    small = os.path.join(work, "small")
    make_blobs(big, 100, lambda i: args.size_mb * (1 << 20) // 100)
    make_blobs(small, args.small, lambda i: 1024 + (i * 7919) % (15 * 1024))
    out = os.path.join(work, "out")

    vector = os.path.join(ROOT, "TestVectors/valid/package-none.cpkg")
    fleet = os.path.join(work, "fleet-10000.json")
    single = os.path.join(work, "fleet-1.json")
    write_policy(fleet, pub, 10000)
    write_policy(single, pub, 1)

    def fresh(name):
        path = os.path.join(out, name)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return path

    def pack(source, compression, name):
        target = fresh(name)
        return [args.binary, "pack", source, "--key", key, "--output", target, "--compression", compression] + ident

    def package(name):
        directory = os.path.join(out, name)
        return os.path.join(directory, os.listdir(directory)[0])

    cases = [
        ("pack none, %d MiB in 100 blobs" % args.size_mb, [
            ("tar cf", lambda: ["tar", "cf", os.path.join(fresh("tar-big"), "x.tar"), "-C", big, "."]),
            ("tar cf + sync (durable, as pack is)", lambda: "tar cf %s/x.tar -C %s . && sync -f %s/x.tar" % (fresh("tarsync-big"), big, os.path.join(out, "tarsync-big"))),
            ("tar cf + sha256sum (blobs, archive)", lambda: "tar cf %s/x.tar -C %s . && find %s -type f -exec sha256sum {} + >/dev/null && sha256sum %s/x.tar >/dev/null" % (fresh("tarsum-big"), big, big, os.path.join(out, "tarsum-big"))),
            ("continuon-pack pack --compression none", lambda: pack(big, "none", "pack-big")),
        ]),
        ("pack zstd, %d MiB in 100 blobs" % args.size_mb, [
            ("tar cf - | zstd -3 -T2", lambda: "tar cf - -C %s . | zstd -q -3 -T2 -o %s/x.tar.zst" % (big, fresh("tarzst-big"))),
            ("tar cf - | zstd -3 -T2 + sync", lambda: "tar cf - -C %s . | zstd -q -3 -T2 -o %s/x.tar.zst && sync -f %s/x.tar.zst" % (big, fresh("tarzstsync-big"), os.path.join(out, "tarzstsync-big"))),
            ("continuon-pack pack --compression zstd", lambda: pack(big, "zstd", "packzst-big")),
        ]),
        ("verify, %d MiB package" % args.size_mb, [
            ("openssl dgst -sha256", lambda: ["openssl", "dgst", "-sha256", package("pack-big")]),
            ("sha256sum", lambda: ["sha256sum", package("pack-big")]),
            ("continuon-pack verify", lambda: [args.binary, "verify", package("pack-big"), "--trusted-key", pub]),
        ]),
        ("promote, %d MiB package, directory to directory" % args.size_mb, [
            ("continuon-pack verify", lambda: [args.binary, "verify", package("pack-big"), "--trusted-key", pub]),
            ("cp + sync -f (the same bytes written durably)", lambda: "cp %s %s/ && sync -f %s" % (
                package("pack-big"), fresh("cp-training"), os.path.join(out, "cp-training"))),
            ("continuon-pack promote (verify + write + sync)", lambda: [
                args.binary, "promote", "--from", os.path.dirname(package("pack-big")), "--to", fresh("training"),
                "--trusted-key", pub]),
        ]),
        ("verify with a trust policy, %d MiB package" % args.size_mb, [
            ("verify --trusted-key (1 key)", lambda: [args.binary, "verify", package("pack-big"), "--trusted-key", pub]),
            ("verify --trust-policy (10,000 keys)", lambda: [args.binary, "verify", package("pack-big"), "--trust-policy", fleet]),
        ]),
        ("verify a 23 KiB package: loading the policy", [
            ("verify --trusted-key (1 key)", lambda: [args.binary, "verify", vector, "--trusted-key", pub]),
            ("verify --trust-policy (1 key)", lambda: [args.binary, "verify", vector, "--trust-policy", single]),
            ("verify --trust-policy (10,000 keys)", lambda: [args.binary, "verify", vector, "--trust-policy", fleet]),
        ]),
        ("pack none, %d small blobs (1-16 KiB)" % args.small, [
            ("tar cf", lambda: ["tar", "cf", os.path.join(fresh("tar-small"), "x.tar"), "-C", small, "."]),
            ("tar cf + sync", lambda: "tar cf %s/x.tar -C %s . && sync -f %s/x.tar" % (fresh("tarsync-small"), small, os.path.join(out, "tarsync-small"))),
            ("continuon-pack pack --compression none", lambda: pack(small, "none", "pack-small")),
        ]),
        ("verify, %d small blobs" % args.small, [
            ("openssl dgst -sha256", lambda: ["openssl", "dgst", "-sha256", package("pack-small")]),
            ("continuon-pack verify", lambda: [args.binary, "verify", package("pack-small"), "--trusted-key", pub]),
        ]),
    ]
    print("continuon-pack benchmark: %d runs each, interleaved; median wall seconds; ratio to the first row; peak RSS"
          % args.runs)
    print("machine: %s, %d cores" % (os.uname().machine, os.cpu_count()))
    if args.only:
        # The tables that read packages need them packed once.
        for source, name in ((big, "pack-big"), (small, "pack-small")):
            if not os.path.isdir(os.path.join(out, name)) or not os.listdir(os.path.join(out, name)):
                subprocess.run(pack(source, "none", name), check=True, stdout=subprocess.DEVNULL)
    for title, commands in cases:
        if args.only and args.only not in title:
            continue
        times = {name: [] for name, _ in commands}
        rss = {name: 0 for name, _ in commands}
        for _ in range(args.runs):
            for name, make in commands:
                command = make()
                elapsed, peak = timed(command, shell=isinstance(command, str))
                times[name].append(elapsed)
                rss[name] = max(rss[name], peak)
        reference = statistics.median(times[commands[0][0]])
        print("\n| %s | median s | ratio | peak RSS MiB |" % title)
        print("|---|---:|---:|---:|")
        for name, _ in commands:
            median = statistics.median(times[name])
            print("| %s | %.3f | %.2f | %.0f |" % (name, median, median / reference, rss[name]))

    if args.only:
        return
    # Batch verification: many small packages in one process vs one process each.
    batch = fresh("batch")
    episodes = os.path.join(work, "one")
    make_blobs(episodes, 2, lambda i: 4096)
    count = 50 if args.quick else 1000
    for index in range(count):
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(1700000000 + index))
        subprocess.run([args.binary, "pack", episodes, "--key", key, "--output", batch, "--compression", "none",
                        "--runtime-version", "1", "--app-version", "1", "--environment-id", "b%d" % index],
                       check=True, stdout=subprocess.DEVNULL, env=env)
    packages = [os.path.join(batch, name) for name in sorted(os.listdir(batch))]
    one, _ = timed([args.binary, "verify", "--trusted-key", pub] + packages)
    start = time.perf_counter()
    for path in packages:
        subprocess.run([args.binary, "verify", path, "--trusted-key", pub], check=True, stdout=subprocess.DEVNULL)
    separate = time.perf_counter() - start
    print("\n| batch verify, %d small packages | s | speed-up |" % count)
    print("|---|---:|---:|")
    print("| %d separate runs | %.3f | 1.00 |" % (count, separate))
    print("| one run | %.3f | %.1f |" % (one, separate / one))

    if args.huge_gb:
        # One sparse blob: reading it costs no disk, writing the package does (once).
        huge = os.path.join(work, "huge")
        os.makedirs(huge)
        with open(os.path.join(huge, "episode.bin"), "wb") as f:
            f.truncate(args.huge_gb << 30)
        shutil.rmtree(out, ignore_errors=True)
        packed = timed(pack(huge, "none", "pack-huge"))
        checked = timed([args.binary, "verify", package("pack-huge"), "--trusted-key", pub])
        print("\n| %d GiB blob (sparse), one run | s | peak RSS MiB |" % args.huge_gb)
        print("|---|---:|---:|")
        print("| continuon-pack pack --compression none | %.1f | %.0f |" % packed)
        print("| continuon-pack verify | %.1f | %.0f |" % checked)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
