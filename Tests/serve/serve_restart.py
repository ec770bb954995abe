#!/usr/bin/env python3
"""`continuon-pack serve` survives its own crashes and runs as several instances on one store (run by scripts/test).

    python3 Tests/serve/serve_restart.py --binary PATH [--only NAME]

Each case starts real `serve` processes on 127.0.0.1 and drives them with Tests/peers/resumable_client.py (written
from the protocol):

  crash-<point>   serve is killed (SIGKILL, by itself: CONTINUON_PACK_TEST_CRASH_AT) during a chunk, after the last
                  byte before the verdict, between the verdict and the commit, during the commit (the package linked
                  into the store, its record not yet written) and after the commit; then restarted on the same port.
                  While it is down the store holds no partial or unverified object; afterwards the client's upload
                  ends in 200, the store holds the package exactly once with its bytes, the client re-sent at most
                  one chunk, and the spool holds no bytes.
  crash-refused   the same for a tampered package: 422 after the restart, nothing stored, no bytes left.
  reclaim         what a crash leaves (spool bytes without a journal, a journal that cannot be read, an expired
                  session, a single-request upload's files) is removed at start; a live session is kept and resumed.
  expiry          a session whose expiry passed while the service was down is gone after the restart (404), with its
                  bytes.
  takeover        two instances share the store and its spool: a session begun on one continues on the other
                  after the first is killed, re-sending at most one chunk.
  alternate       two instances share the store and spool, and every chunk of one session goes to the other
                  instance (no session affinity): the upload ends in 200 with nothing re-sent; each instance takes
                  the session up from its journal once and after that reads only the bytes the other appended.
  two-instances   the same package uploaded to both instances at once: stored once, both clients get 200; a package
                  re-signed (same package ID, other bytes) raced against the original: one stored, the other
                  412 upload.object_conflict.
  two-on-bucket   two instances (own spools) forwarding to one bucket (gcp-storage-emulator behind a proxy that
                  enforces ifGenerationMatch=0 as Cloud Storage does): the same package raced through both is
                  created once and both clients get 200.

Exit status 1 when a case fails. Python 3.11 standard library only.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "Tests", "peers"))
import resumable_client  # noqa: E402
from serve_process import Serve, pack  # noqa: E402

KEYS = os.path.join(ROOT, "TestVectors", "keys")
PUB = os.path.join(KEYS, "test-ed25519.pub")
SECOND_KEY = os.path.join(KEYS, "second-ed25519.pem")
SECOND_PUB = os.path.join(KEYS, "second-ed25519.pub")
CHUNK = 1 << 20


def read(path):
    with open(path, "rb") as f:
        return f.read()


def tampered(path, work):
    data = bytearray(read(path))
    data[len(data) * 3 // 4] ^= 0x01  # inside the episode archive: found only when the verifier reaches it
    out = os.path.join(work, "tampered-" + os.path.basename(path))
    with open(out, "wb") as f:
        f.write(data)
    return out


def spool_files(spool):
    if not os.path.isdir(spool):
        return []
    return sorted(n for n in os.listdir(spool) if n.endswith(".part") or n.endswith(".session"))


def spool_bytes(spool):
    return [n for n in spool_files(spool) if n.endswith(".part")]


def open_sessions(spool):
    """Journals of sessions that have not ended (no outcome line)."""
    names = []
    for name in spool_files(spool):
        if name.endswith(".session"):
            with open(os.path.join(spool, name), "rb") as f:
                lines = [l for l in f.read().split(b"\n") if l]
            if lines and b'"stored"' not in lines[-1] and b'"refused"' not in lines[-1]:
                names.append(name)
    return names


def stored(store):
    return sorted(n for n in os.listdir(store) if n.endswith(".cpkg"))


class Failures:
    def __init__(self):
        self.items = []

    def check(self, condition, what):
        if not condition:
            self.items.append(what)
            print("    FAIL: " + what, flush=True)
        return condition


def run_upload(base, name, data, chunk=CHUNK, deadline=90, cut=None):
    session = resumable_client.initiate(base, "staging", name, len(data), deadline=time.time() + 30)
    return session, resumable_client.upload(session, data, chunk=chunk, deadline=time.time() + deadline, cut=cut)


def in_thread(function, *args, **kwargs):
    box = {}

    def target():
        try:
            box["value"] = function(*args, **kwargs)
        except Exception as error:  # reported by the case
            box["error"] = error
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


# MARK: - Cases

def case_crash(binary, work, point, failures, refused=False):
    store = os.path.join(work, "store")
    package = pack(binary, work, "p", 6 * CHUNK + 12345)
    path = tampered(package, work) if refused else package
    data = read(path)
    name = os.path.basename(package)
    service = Serve(binary, store).start(crash_at=point)
    thread, box = in_thread(run_upload, service.base, name, data)
    code = service.wait_killed()
    failures.check(code == -signal.SIGKILL, "%s: serve was killed at the crash point (exit %s)" % (point, code))
    # While it is down: nothing partial or unverified in the store.
    for item in stored(store):
        failures.check(not refused and read(os.path.join(store, item)) == data,
                       "%s: the store holds only complete, verified packages while serve is down (%s)" % (point, item))
    service.start()
    thread.join(120)
    result = box.get("value")
    failures.check(result is not None, "%s: the upload ended (%r)" % (point, box.get("error")))
    if result is None:
        service.stop()
        return
    session, outcome = result
    print("    %s: status %s, faults %d, re-sent %d bytes (chunk %d)" % (point, outcome.status, outcome.faults, outcome.resent, CHUNK))
    if refused:
        failures.check(outcome.status == 422, "%s: the tampered package is refused with 422 (%s)" % (point, outcome.status))
        failures.check(stored(store) == [], "%s: nothing stored" % point)
    else:
        failures.check(outcome.status == 200, "%s: the upload ends in 200 (%s %r)" % (point, outcome.status, outcome.body))
        failures.check(stored(store) == [name], "%s: stored exactly once (%s)" % (point, stored(store)))
        if stored(store) == [name]:
            failures.check(read(os.path.join(store, name)) == data, "%s: the stored bytes are the package's" % point)
    failures.check(outcome.resent <= CHUNK, "%s: at most one chunk re-sent (%d bytes)" % (point, outcome.resent))
    spool = os.path.join(store, ".spool")
    failures.check(spool_bytes(spool) == [] and open_sessions(spool) == [],
                   "%s: no spool bytes or open session left (%s)" % (point, spool_files(spool)))
    # A late status query gets the same answer from the journal, after another restart too.
    service.stop()
    service.start()
    status, _, _ = resumable_client._put(session, {"Content-Range": "bytes */%d" % len(data), "Content-Length": "0"}, b"", 10)
    failures.check(status == outcome.status, "%s: after another restart the session answers %s again (%s)" % (point, outcome.status, status))
    service.stop()


def case_reclaim(binary, work, failures):
    store = os.path.join(work, "store")
    spool = os.path.join(store, ".spool")
    package = pack(binary, work, "p", 3 * CHUNK)
    data = read(package)
    name = os.path.basename(package)
    # A live session: two chunks held, then the service killed.
    service = Serve(binary, store).start()
    session = resumable_client.initiate(service.base, "staging", name, len(data))
    cut = lambda offset, length: 0 if offset >= 2 * CHUNK else None  # noqa: E731
    half = resumable_client.upload(session, data, chunk=CHUNK, deadline=time.time() + 1, cut=cut)
    service.kill()
    live = spool_files(spool)
    failures.check(len(live) == 2, "reclaim: the live session has a journal and a spool file (%s)" % live)
    # What crashes leave.
    old = time.time() - 3600
    orphan = os.path.join(spool, "0" * 32 + ".part")
    with open(orphan, "wb") as f:
        f.write(b"x" * 1000)
    broken = os.path.join(spool, "1" * 32 + ".session")
    with open(broken, "wb") as f:
        f.write(b'{"schema":"continuon.serve-session/v1","obj')
    os.utime(broken, (old, old))
    expired = os.path.join(spool, "2" * 32)
    with open(expired + ".session", "wb") as f:
        f.write(b'{"created":"1","object":"%s","schema":"continuon.serve-session/v1"}\n{"held":"3","held_crc32c":"0"}\n' % name.encode())
    with open(expired + ".part", "wb") as f:
        f.write(b"abc")
    os.utime(expired + ".session", (time.time() - 200000, time.time() - 200000))
    single = os.path.join(spool, "3" * 32)
    with open(single + ".session", "wb") as f:
        f.write(b'{"created":"1","object":"%s","schema":"continuon.serve-session/v1","single":true}\n' % name.encode())
    with open(single + ".part", "wb") as f:
        f.write(b"abc")
    os.utime(single + ".session", (old, old))
    service.start()
    left = spool_files(spool)
    failures.check(left == live, "reclaim: at start only the live session's files remain (%s, expected %s)" % (left, live))
    rest = resumable_client.upload(session, data, chunk=CHUNK, deadline=time.time() + 30, resume=True)
    failures.check(rest.status == 200, "reclaim: the live session resumes to 200 (%r)" % rest)
    failures.check(rest.sent == len(data) - 2 * CHUNK, "reclaim: it sends only what the service did not hold (%d)" % rest.sent)
    failures.check(stored(store) == [name], "reclaim: stored once")
    failures.check(spool_bytes(spool) == [], "reclaim: no spool bytes left (%s)" % spool_files(spool))
    service.stop()
    del half


def case_expiry(binary, work, failures):
    store = os.path.join(work, "store")
    spool = os.path.join(store, ".spool")
    package = pack(binary, work, "p", 3 * CHUNK)
    data = read(package)
    service = Serve(binary, store, extra=["--session-expiry", "2"]).start()
    session = resumable_client.initiate(service.base, "staging", os.path.basename(package), len(data))
    cut = lambda offset, length: 0 if offset >= CHUNK else None  # noqa: E731
    resumable_client.upload(session, data, chunk=CHUNK, deadline=time.time() + 1, cut=cut)
    service.kill()
    failures.check(len(spool_bytes(spool)) == 1, "expiry: the session holds bytes when killed")
    time.sleep(3.5)
    service.start()
    failures.check(spool_files(spool) == [], "expiry: the expired session's files are gone at start (%s)" % spool_files(spool))
    status, _, _ = resumable_client._put(session, {"Content-Range": "bytes */%d" % len(data), "Content-Length": "0"}, b"", 10)
    failures.check(status == 404, "expiry: the session is unknown after the restart (%s)" % status)
    service.stop()


def case_takeover(binary, work, failures):
    store = os.path.join(work, "store")
    spool = os.path.join(store, ".spool")
    package = pack(binary, work, "p", 5 * CHUNK + 99)
    data = read(package)
    name = os.path.basename(package)
    first = Serve(binary, store).start()
    second = Serve(binary, store).start()
    session = resumable_client.initiate(first.base, "staging", name, len(data))
    cut = lambda offset, length: 0 if offset >= 3 * CHUNK else None  # noqa: E731
    resumable_client.upload(session, data, chunk=CHUNK, deadline=time.time() + 1, cut=cut)
    first.kill()
    elsewhere = session.replace(first.base, second.base)
    result = resumable_client.upload(elsewhere, data, chunk=CHUNK, deadline=time.time() + 30, resume=True)
    print("    takeover: status %s, sent %d of %d" % (result.status, result.sent, len(data)))
    failures.check(result.status == 200, "takeover: the other instance finishes the session (%r)" % result)
    failures.check(result.sent == len(data) - 3 * CHUNK, "takeover: only what it did not hold is sent (%d sent)" % result.sent)
    failures.check(stored(store) == [name] and read(os.path.join(store, name)) == data, "takeover: stored once, right bytes")
    failures.check(spool_bytes(spool) == [], "takeover: no spool bytes left")
    second.stop()


def case_alternate(binary, work, failures):
    store = os.path.join(work, "store")
    package = pack(binary, work, "p", 6 * CHUNK + 777)
    data = read(package)
    name = os.path.basename(package)
    instances = [Serve(binary, store).start(), Serve(binary, store).start()]
    session = resumable_client.initiate(instances[0].base, "staging", name, len(data))
    offset, index, answer = 0, 0, None
    while offset < len(data):
        end = min(len(data), offset + CHUNK)
        target = session.replace(instances[0].base, instances[index % 2].base)
        status, held, body = resumable_client._put(
            target, {"Content-Range": "bytes %d-%d/%d" % (offset, end - 1, len(data)), "Content-Length": str(end - offset)},
            data[offset:end], 30)
        index += 1
        if status == 308:
            if not failures.check(resumable_client._held(held) == end, "alternate: chunk %d held (%s)" % (index, held)):
                break
            offset = end
            continue
        answer = status
        break
    failures.check(answer == 200, "alternate: the last chunk is answered 200 (%s)" % answer)
    failures.check(stored(store) == [name] and read(os.path.join(store, name)) == data, "alternate: stored once, right bytes")
    for instance in instances:
        instance.stop()
        with open(os.path.join(work, "serve-%d.log" % instance.port), "rb") as f:
            log = f.read().decode(errors="replace")
        rebuilt = log.count("session rebuilt from its checkpoint")
        print("    alternate: instance %d rebuilt the session %d times, took it up %d times" % (instance.port, rebuilt, log.count("session taken up")))
        failures.check(rebuilt <= 1 and "cannot take a session up" not in log,
                       "alternate: instance %d re-read the session's bytes at most once (%d)" % (instance.port, rebuilt))
    failures.check(spool_bytes(os.path.join(store, ".spool")) == [], "alternate: no spool bytes left")


def race(bases, names_and_data):
    threads = []
    for base, (name, data) in zip(bases, names_and_data):
        threads.append(in_thread(run_upload, base, name, data, 256 * 1024))
    results = []
    for thread, box in threads:
        thread.join(120)
        results.append(box.get("value", (None, box.get("error")))[1])
    return results


def case_two_instances(binary, work, failures):
    store = os.path.join(work, "store")
    package = pack(binary, work, "p", 4 * CHUNK, seed=b"two")
    data = read(package)
    name = os.path.basename(package)
    resigned_dir = os.path.join(work, "resigned")
    result = subprocess.run([binary, "resign", package, "--key", SECOND_KEY, "--output", resigned_dir + "/"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError("resign failed: " + result.stderr[-400:])
    other = read(os.path.join(resigned_dir, name))
    assert other != data
    instances = [Serve(binary, store, keys=(PUB, SECOND_PUB)).start() for _ in range(2)]
    bases = [i.base for i in instances]
    outcomes = race(bases, [(name, data), (name, data)])
    statuses = [getattr(o, "status", o) for o in outcomes]
    # A client whose initiation comes after the other's commit gets 412 object_exists (then compares hashes).
    failures.check(all(s == 200 for s in statuses) or sorted(statuses) == [200, 412],
                   "two-instances: the same package through both ends in 200 (or 412 object_exists) (%s)" % statuses)
    failures.check(stored(store) == [name] and read(os.path.join(store, name)) == data, "two-instances: stored once")
    # Same package ID, other bytes, raced against the original in a fresh store.
    store2 = os.path.join(work, "store2")
    for i in instances:
        i.stop()
    instances = [Serve(binary, store2, keys=(PUB, SECOND_PUB)).start() for _ in range(2)]
    outcomes = race([i.base for i in instances], [(name, data), (name, other)])
    statuses = sorted(getattr(o, "status", o) for o in outcomes)
    codes = [((o.body or {}).get("code") if isinstance(getattr(o, "body", None), dict) else None) for o in outcomes]
    failures.check(statuses == [200, 412], "two-instances: original against re-signed: one 200, one 412 (%s %s)" % (statuses, codes))
    failures.check(any(c in ("upload.object_conflict", "upload.object_exists") for c in codes),
                   "two-instances: the loser is told object_conflict or object_exists (%s)" % codes)
    held = stored(store2)
    failures.check(held == [name] and read(os.path.join(store2, name)) in (data, other), "two-instances: one object, whole")
    for store_dir in (store, store2):
        failures.check(spool_bytes(os.path.join(store_dir, ".spool")) == [], "two-instances: no spool bytes left")
    for i in instances:
        i.stop()


def peer(script, *args):
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "Tests", "peers", script)] + list(args),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = process.stdout.readline().decode()
    if not line.startswith("PORT "):
        raise RuntimeError("%s did not start" % script)
    return process, int(line.split()[1])


def case_two_on_bucket(binary, work, failures):
    emulator, emulator_port = peer("emulator.py")
    proxy, proxy_port = peer("precondition_proxy.py", str(emulator_port))
    try:
        package = pack(binary, work, "p", 2 * CHUNK, seed=b"bucket")
        data = read(package)
        name = os.path.basename(package)
        endpoint = "http://127.0.0.1:%d" % proxy_port
        instances = []
        for index in range(2):
            spool = os.path.join(work, "spool-%d" % index)
            instances.append(Serve(binary, "gs://staging/accepted", spool=spool, log_dir=work,
                                   extra=["--store-endpoint", endpoint]).start())
        threads = [in_thread(lambda base: run_upload_bucket(base, name, data), i.base) for i in instances]
        outcomes = []
        for thread, box in threads:
            thread.join(120)
            outcomes.append(box.get("value", box.get("error")))
        statuses = [getattr(o, "status", o) for o in outcomes]
        failures.check(all(s == 200 for s in statuses) or sorted(statuses) == [200, 412],
                       "two-on-bucket: both clients get 200 (or 412 object_exists) (%s)" % statuses)
        with urllib.request.urlopen(endpoint + "/_proxy/stats") as response:
            stats = json.loads(response.read())
        failures.check(stats["created"] == 1, "two-on-bucket: the object was created exactly once (%s)" % stats)
        with urllib.request.urlopen("http://127.0.0.1:%d/storage/v1/b/staging/o/accepted%%2F%s?alt=media"
                                    % (emulator_port, name)) as response:
            failures.check(response.read() == data, "two-on-bucket: the bucket holds the package's bytes")
        print("    two-on-bucket: statuses %s, proxy %s" % (statuses, stats))
        for i in instances:
            i.stop()
    finally:
        proxy.kill()
        emulator.kill()


def run_upload_bucket(base, name, data):
    session = resumable_client.initiate(base, "staging", name, len(data), deadline=time.time() + 30)
    return resumable_client.upload(session, data, chunk=256 * 1024, deadline=time.time() + 90)


CRASH_POINTS = ["serve.during_chunk#40", "serve.before_verdict", "serve.before_commit", "serve.store_linked", "serve.after_commit"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--only")
    arguments = parser.parse_args()
    cases = [("crash-" + point.split(".", 1)[1].split("#")[0], lambda w, f, p=point: case_crash(arguments.binary, w, p, f))
             for point in CRASH_POINTS]
    cases += [
        ("crash-refused", lambda w, f: case_crash(arguments.binary, w, "serve.during_chunk#40", f, refused=True)),
        ("reclaim", lambda w, f: case_reclaim(arguments.binary, w, f)),
        ("expiry", lambda w, f: case_expiry(arguments.binary, w, f)),
        ("takeover", lambda w, f: case_takeover(arguments.binary, w, f)),
        ("alternate", lambda w, f: case_alternate(arguments.binary, w, f)),
        ("two-instances", lambda w, f: case_two_instances(arguments.binary, w, f)),
        ("two-on-bucket", lambda w, f: case_two_on_bucket(arguments.binary, w, f)),
    ]
    failed = []
    started = time.time()
    for name, run in cases:
        if arguments.only and arguments.only != name:
            continue
        work = tempfile.mkdtemp(prefix="serve-restart-")
        failures = Failures()
        print("  %s" % name, flush=True)
        try:
            run(work, failures)
        except Exception as error:
            failures.check(False, "%s raised %r" % (name, error))
        if failures.items:
            failed.append(name)
            for log in sorted(os.listdir(work)):
                if log.endswith(".log"):
                    with open(os.path.join(work, log), "rb") as f:
                        print("    --- %s (tail)\n%s" % (log, f.read()[-3000:].decode(errors="replace")))
        shutil.rmtree(work, ignore_errors=True)
    print("serve restart tests: %d failed%s, %.1f s" % (len(failed), (" (" + ", ".join(failed) + ")") if failed else "", time.time() - started))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
