#!/usr/bin/env python3
"""Crash soak of `continuon-pack serve` (a benchmark, not a unit test): uploads through a service that is killed and
restarted under them.

    python3 Benchmarks/serve_crash_soak.py --binary PATH [--seconds 120] [--clients 16] [--kills 6] [--quick] [--json FILE]

Starts `serve` on a fixed 127.0.0.1 port with a fresh store under /tmp and pre-packs a pool of distinct packages
(random bytes, 1 to 6 MiB, compression none). Then --clients threads upload the pool with the resumable protocol
(Tests/peers/resumable_client.py: 1 MiB chunks; on any fault it asks what the service holds and goes on), each
package by exactly one client:

  valid      signed by the trusted key: must end in 200, stored exactly once with its bytes;
  tampered   one byte of the episode archive flipped: must end in 422 (found at the end, after every chunk);
  untrusted  signed by a key the service does not trust: must end in 422 (found from the envelope, at once);

each client paced so that the pool lasts --seconds (about 3.5 MiB per client every 10 s, as a cellular link
would), while a cutter drops about one chunk request in eight part-way through (the client's connection is closed after
a random share of the chunk), and the service is killed with SIGKILL --kills times at random moments, each time
restarted on the same port within half a second. After the last package the spool must hold no bytes and no open
session; a restart then finds nothing to sweep.

Prints a Markdown table (and with --json the same figures as JSON): packages by kind and outcome, faults seen by
clients (runs of failed attempts; a service that is down for a second is one fault per client in a request), bytes
re-sent in all and per fault (target: at most one chunk), the longest a client waited through a restart, and the
time to take sessions up. Exit status 1 when an invariant broke: a valid package not stored exactly once with its
bytes, a hostile one not refused, any other answer, a client that did not finish, spool garbage, or more than one
chunk re-sent for a fault on average. --quick: 15 s of pool, 8 clients, 2 kills (scripts/test runs it).
"""
import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "Tests", "peers"))
import resumable_client  # noqa: E402
from serve_process import Serve, pack  # noqa: E402

KEYS = os.path.join(ROOT, "TestVectors", "keys")
TRUSTED_KEY = os.path.join(KEYS, "test-ed25519.pem")
TRUSTED_PUB = os.path.join(KEYS, "test-ed25519.pub")
UNTRUSTED_KEY = os.path.join(KEYS, "second-ed25519.pem")
CHUNK = 1 << 20


def make_pool(binary, work, count, rng):
    pool = []
    for index in range(count):
        kind = "valid" if index % 5 < 3 else ("tampered" if index % 5 == 3 else "untrusted")
        size = rng.randint(1 * CHUNK, 6 * CHUNK)
        path = pack(binary, work, str(index), size, UNTRUSTED_KEY if kind == "untrusted" else TRUSTED_KEY, environment="soak")
        with open(path, "rb") as f:
            data = bytearray(f.read())
        if kind == "tampered":
            data[len(data) * 3 // 4] ^= 0x01
        pool.append({"kind": kind, "name": os.path.basename(path), "data": bytes(data)})
    return pool


def spool_state(spool):
    parts, open_sessions = [], []
    for name in (os.listdir(spool) if os.path.isdir(spool) else []):
        if name.endswith(".part"):
            parts.append(name)
        elif name.endswith(".session"):
            with open(os.path.join(spool, name), "rb") as f:
                lines = [line for line in f.read().split(b"\n") if line]
            if lines and b'"stored"' not in lines[-1] and b'"refused"' not in lines[-1]:
                open_sessions.append(name)
    return parts, open_sessions


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--seed", type=int, default=None)
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.seconds, arguments.clients, arguments.kills = 15, 8, 2
    seed = arguments.seed if arguments.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    work = tempfile.mkdtemp(prefix="serve-crash-soak-")
    store = os.path.join(work, "store")
    # A package per client every 10 s or so, at least two each: every client stays busy through the kills.
    count = max(arguments.clients * 2, int(arguments.seconds * arguments.clients / 10))
    print("packing %d packages (seed %d)..." % (count, seed), file=sys.stderr, flush=True)
    pool = make_pool(arguments.binary, work, count, rng)
    service = Serve(arguments.binary, store, keys=(TRUSTED_PUB,), log_dir=work)
    service.start()
    queue = list(pool)
    queue_lock = threading.Lock()
    results = []
    restarts = []
    cut_rng = random.Random(seed + 1)
    cut_lock = threading.Lock()

    # Each client is paced (as over a cellular link) so that the pool lasts the run and the kills find uploads
    # in every state.
    rate = sum(len(item["data"]) for item in pool) / (arguments.seconds * arguments.clients)

    cuts = [0]

    def cut(offset, length):
        time.sleep(length / rate)
        with cut_lock:
            if cut_rng.random() < 1 / 8:
                cuts[0] += 1
                return cut_rng.randrange(0, length)
        return None

    stop_at = time.time() + arguments.seconds + 300

    def client():
        while True:
            with queue_lock:
                if not queue:
                    return
                item = queue.pop(0)
            started = time.time()
            try:
                session = resumable_client.initiate(service.base, "staging", item["name"], len(item["data"]), deadline=stop_at)
                outcome = resumable_client.upload(session, item["data"], chunk=CHUNK, deadline=stop_at, cut=cut)
            except Exception as error:  # reported as an invariant broken
                outcome = resumable_client.Result()
                outcome.status = "error: %r" % error
            results.append((item, outcome, time.time() - started))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(arguments.clients)]
    started = time.time()
    for thread in threads:
        thread.start()
    # Kills at random moments within the first 80% of the run.
    moments = sorted(rng.uniform(0.1, 0.8) * arguments.seconds for _ in range(arguments.kills))
    for moment in moments:
        delay = started + moment - time.time()
        if delay > 0:
            time.sleep(delay)
        if not any(t.is_alive() for t in threads):
            break
        service.kill()
        down = time.time()
        time.sleep(rng.uniform(0.05, 0.5))
        service.start()
        restarts.append(time.time() - down)
    for thread in threads:
        thread.join(max(1, stop_at - time.time()))
    elapsed = time.time() - started
    broken = []
    if any(t.is_alive() for t in threads):
        broken.append("clients did not finish")
    # Invariants.
    stored = {name for name in os.listdir(store) if name.endswith(".cpkg")}
    tally = {}
    sent = resent = faults = 0
    worst_fault = 0
    for item, outcome, _ in results:
        key = (item["kind"], outcome.status)
        tally[key] = tally.get(key, 0) + 1
        sent += outcome.sent
        resent += outcome.resent
        faults += outcome.faults
        if outcome.faults:
            worst_fault = max(worst_fault, outcome.resent / outcome.faults)
        if item["kind"] == "valid":
            if outcome.status != 200:
                broken.append("%s (valid) ended %s" % (item["name"], outcome.status))
            elif item["name"] not in stored:
                broken.append("%s (valid) answered 200 but is not stored" % item["name"])
            else:
                with open(os.path.join(store, item["name"]), "rb") as f:
                    if f.read() != item["data"]:
                        broken.append("%s is stored with other bytes" % item["name"])
        else:
            if outcome.status != 422:
                broken.append("%s (%s) ended %s" % (item["name"], item["kind"], outcome.status))
            if item["name"] in stored:
                broken.append("%s (%s) was stored" % (item["name"], item["kind"]))
    valid_names = {item["name"] for item in pool if item["kind"] == "valid"}
    if stored - valid_names:
        broken.append("the store holds objects that no valid upload made: %s" % sorted(stored - valid_names))
    if len(results) != len(pool):
        broken.append("%d of %d uploads ended" % (len(results), len(pool)))
    spool = os.path.join(store, ".spool")
    parts, open_sessions = spool_state(spool)
    if parts or open_sessions:
        broken.append("spool garbage: %d spool files, %d open sessions" % (len(parts), len(open_sessions)))
    service.stop()
    # A restart finds nothing to sweep.
    before = os.path.getsize(service.log_path)
    service.start()
    service.stop()
    with open(service.log_path, "rb") as f:
        text = f.read().decode(errors="replace")
    if "spool swept at start" in text[before:]:
        broken.append("a restart after the soak still found files to sweep")
    takeups = text.count("session rebuilt from its checkpoint")
    per_fault = resent / faults if faults else 0.0
    if per_fault > CHUNK:
        broken.append("%.0f bytes re-sent per fault on average (more than one %d-byte chunk)" % (per_fault, CHUNK))
    figures = {
        "seconds": round(elapsed, 1), "clients": arguments.clients, "kills": len(restarts), "seed": seed,
        "packages": len(pool), "package_mib": round(sum(len(i["data"]) for i in pool) / (1 << 20), 1),
        "outcomes": {"%s %s" % key: value for key, value in sorted(tally.items(), key=str)},
        "faults": faults, "connection_cuts": cuts[0], "faults_from_kills": max(0, faults - cuts[0]),
        "bytes_sent": sent, "bytes_resent": resent, "resent_per_fault": round(per_fault),
        "resent_per_kill_fault": round(resent / (faults - cuts[0])) if faults > cuts[0] else 0,
        "worst_client_resent_per_fault": round(worst_fault), "chunk": CHUNK, "sessions_rebuilt": takeups,
        "restart_gap_s_max": round(max(restarts), 2) if restarts else 0,
        "spool_files_left": len(parts), "open_sessions_left": len(open_sessions), "broken": broken,
    }
    print("| figure | value |\n|---|---|")
    for key, value in figures.items():
        if key != "broken":
            print("| %s | %s |" % (key, value))
    if arguments.json:
        with open(arguments.json, "w") as f:
            json.dump(figures, f, indent=2)
    if broken:
        print("\nBROKEN:\n  " + "\n  ".join(broken[:30]))
        print("service log: " + service.log_path)
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)
    print("\ncrash soak: every valid package stored once with its bytes, every hostile one refused, no spool garbage")


if __name__ == "__main__":
    main()
