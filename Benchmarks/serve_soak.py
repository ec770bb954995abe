#!/usr/bin/env python3
"""Soak benchmark of `continuon-pack serve` (a benchmark, not a unit test): honest uploads under sustained hostile
pressure.

    python3 Benchmarks/serve_soak.py --binary PATH [--seconds 60] [--honest 2] [--quick] [--json FILE]

Starts one `serve --max-connections 512 --idle-timeout 10` on 127.0.0.1 with a fresh store under /tmp, pre-packs a
pool of distinct valid packages (random bytes, compression none), a decompression bomb (a sparse file of zeros,
zstd, signed by an untrusted key) and a tampered package (one byte flipped in its archive). Then, for --seconds,
all at once:

  honest uploaders (--honest threads) upload the pool by the raw resumable protocol (initiation with
      X-Upload-Content-Length, 1 MiB chunks), paced so that the pool lasts the run; every upload must end in 200;
  hostile workers, one thread each, at a modest rate (the machine may have 2 cores: pressure, not saturation):
      traversal   GET ..%2F..%2Fetc%2Fhostname and %2Fdev%2Fzero, with and without ?alt=media: 4xx
      overflow    Content-Range bytes 0-18446744073709551615/* on a fresh session: 4xx
      tiny        1-byte uploads (bytes 0-0/1): 4xx
      never_send  initiations that never send a byte: 200
      bomb        the untrusted zstd bomb uploaded whole: 422 signature.untrusted
      tampered    the tampered package uploaded whole: 422
      idle        N idle TCP connections held open and renewed: closed by the server near --idle-timeout
      trickle     a PUT body trickled 1 byte/s: cut by the server near --rate-grace (its session is then finished
                  with junk, which is refused, so that its spool file goes)
      media_stall GET ?alt=media of a stored object, never read: let go by the server near --rate-grace (seen
                  in /proc/net/tcp: the server's end of the connection leaves ESTABLISHED)
  a monitor samples every 0.5 s the descriptors, RSS and CPU of the process (the PID started: continuon-pack
      execs continuon-pack-net in place), the spool (STORE/.spool) and the latency of GET /healthz.

Then it stops the workers, waits up to 15 s for the service to settle and prints a Markdown table (and with --json
the same figures as JSON). --quick: 10 s, a smaller pool, 50 idle connections, a 128 MiB bomb.

Exit status 1 when an invariant broke: a 5xx anywhere, a failed honest upload (any non-200, connection refused or
lost), /healthz not answering ok within 2 s, stored objects other than the honest uploads (count or bytes), a
spool not empty after settling, descriptors not back within baseline + 16 after settling, a traversal answered 2xx,
or the process died. Other unexpected hostile answers are listed but do not fail the run. Python 3.11 standard
library only.
"""
import argparse
import collections
import hashlib
import http.client
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = os.path.join(ROOT, "TestVectors", "keys")
TRUSTED_KEY = os.path.join(KEYS, "test-ed25519.pem")
TRUSTED_PUB = os.path.join(KEYS, "test-ed25519.pub")
UNTRUSTED_KEY = os.path.join(KEYS, "second-ed25519.pem")

BUCKET_UPLOAD = "/upload/storage/v1/b/staging/o"
BUCKET_OBJECTS = "/storage/v1/b/staging/o/"
MIB = 1 << 20
CHUNK = MIB  # honest chunk size: a multiple of the protocol's 256 KiB granule
IDLE_TIMEOUT = 10  # --idle-timeout (the default --rate-grace is 10 s as well)
MAX_CONNECTIONS = 512
FD_SLACK = 16
SETTLE_SECONDS = 15.0
SAMPLE_SECONDS = 0.5
HEALTHZ_TIMEOUT = 2.0
# A connection the server should have dropped (idle, trickling, not reading) still open this long is unexpected.
CUT_DEADLINE = 2 * IDLE_TIMEOUT + 5
TRAVERSALS = ["..%2F..%2Fetc%2Fhostname", "%2Fdev%2Fzero"]
HOSTILE_CLASSES = [
    ("traversal", "traversal GETs (4xx)"),
    ("overflow", "overflow Content-Range (4xx)"),
    ("tiny", "refused 1-byte uploads (4xx)"),
    ("never_send", "initiations never sending a byte (200)"),
    ("bomb", "untrusted zstd bomb (422 signature.untrusted)"),
    ("tampered", "tampered package (422)"),
    ("idle", "idle connections opened (closed by the server)"),
    ("trickle", "bodies trickled 1 byte/s (cut by the server)"),
    ("media_stall", "media GETs never read (let go by the server)"),
]


# ---------------------------------------------------------------------------------------------------------------
# HTTP over raw sockets (the hostile side)

class NoAnswer(Exception):
    """No complete answer: the connection was refused, reset or closed, or the answer did not come in time."""


class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lowercase name -> value
        self.body = body

    def code(self):
        """The problem+json `code`, if any."""
        try:
            return json.loads(self.body).get("code")
        except (ValueError, AttributeError):
            return None

    def label(self):
        code = self.code()
        return f"{self.status} {code}" if code else str(self.status)


def build_request(method, target, port, headers=None, body=b""):
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    headers = dict(headers or {})
    if method in ("POST", "PUT") or body:
        headers.setdefault("Content-Length", str(len(body)))
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def read_reply(sock, deadline):
    """One HTTP/1.1 answer (Content-Length, chunked or up to the close), by `deadline` (time.monotonic())."""
    buffer = b""

    def receive():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NoAnswer("no answer in time")
        sock.settimeout(remaining)
        try:
            return sock.recv(65536)
        except socket.timeout:
            raise NoAnswer("no answer in time") from None
        except OSError as error:
            raise NoAnswer(f"connection error: {error}") from None

    while True:
        while b"\r\n\r\n" not in buffer:
            data = receive()
            if not data:
                raise NoAnswer("closed without an answer")
            buffer += data
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if not 100 <= status < 200:
            break
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(buffer) < length:
            data = receive()
            if not data:
                raise NoAnswer("closed in the middle of the body")
            buffer += data
        return Reply(status, headers, buffer[:length])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in buffer:
                data = receive()
                if not data:
                    raise NoAnswer("closed in the middle of a chunked body")
                buffer += data
            size_line, buffer = buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(buffer) < size + 2:
                data = receive()
                if not data:
                    raise NoAnswer("closed in the middle of a chunked body")
                buffer += data
            body, buffer = body + buffer[:size], buffer[size + 2:]
            if size == 0:
                return Reply(status, headers, body)
    while True:  # no length: the body ends with the connection
        data = receive()
        if not data:
            return Reply(status, headers, buffer)
        buffer += data


def connect(port, timeout=5.0, receive_buffer=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(timeout)
    try:
        sock.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        sock.close()
        raise NoAnswer("connection refused") from None
    except OSError as error:
        sock.close()
        raise NoAnswer(f"cannot connect: {error}") from None
    return sock


def exchange(port, method, target, headers=None, body=b"", timeout=10.0):
    """One request on a connection of its own. A server that answers before it took the whole body and closes is
    not an error here: the answer is read all the same."""
    deadline = time.monotonic() + timeout
    sock = connect(port, timeout)
    try:
        try:
            sock.sendall(build_request(method, target, port, headers, body))
        except OSError:
            pass
        return read_reply(sock, deadline)
    finally:
        sock.close()


def initiation_target(name):
    query = urllib.parse.urlencode({"uploadType": "resumable", "ifGenerationMatch": "0", "name": name})
    return f"{BUCKET_UPLOAD}?{query}"


def session_target(reply):
    """The path and query of the session URL in a 200 initiation answer (None otherwise)."""
    location = reply.headers.get("location") if reply.status == 200 else None
    if not location:
        return None
    url = urllib.parse.urlsplit(location)
    return f"{url.path}?{url.query}"


def random_name():
    return os.urandom(32).hex() + ".cpkg"


def percentile(values, fraction):
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


# ---------------------------------------------------------------------------------------------------------------
# The service under test

class Service:
    def __init__(self, binary, work):
        self.store = os.path.join(work, "store")
        self.spool = os.path.join(self.store, ".spool")
        self.stdout_path = os.path.join(work, "serve.stdout")
        self.stderr_path = os.path.join(work, "serve.stderr")
        command = [binary, "serve", "--listen", "127.0.0.1:0", "--store", self.store, "--trusted-key", TRUSTED_PUB,
                   "--max-connections", str(MAX_CONNECTIONS), "--idle-timeout", str(IDLE_TIMEOUT)]
        env = dict(os.environ)
        env.setdefault("SWIFT_BACKTRACE", "threads=crashed,registers=none,images=none,limit=8,top=4")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        self.pid = self.process.pid
        self.port = self.wait_listening()
        executable = os.path.basename(os.readlink(f"/proc/{self.pid}/exe"))
        if not executable.startswith("continuon-pack-net"):
            self.stop()
            sys.exit(f"process {self.pid} runs {executable}, not continuon-pack-net: cannot observe the server")

    def wait_listening(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"serve exited with {self.process.returncode} before listening:\n{self.stderr_tail()}")
            with open(self.stdout_path, "rb") as f:
                for line in f.read().decode(errors="replace").splitlines():
                    if line.startswith("listening on http://"):
                        return int(line.rsplit(":", 1)[1])
            time.sleep(0.05)
        self.stop()
        sys.exit("serve did not print 'listening on' within 30 s")

    def alive(self):
        return self.process.poll() is None

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def deleted_fds(self):
        count = 0
        for entry in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                count += os.readlink(f"/proc/{self.pid}/fd/{entry}").endswith("(deleted)")
            except OSError:
                pass  # closed while we looked
        return count

    def rss_mib(self):
        with open(f"/proc/{self.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    def cpu_seconds(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def spool_usage(self):
        """(files, bytes) in the spool directory (not counting the service's lock on it)."""
        files = size = 0
        for directory, _, names in os.walk(self.spool):
            for name in names:
                if directory == self.spool and (name == ".lock" or name.endswith((".session", ".session.new"))):
                    continue  # journals: kept with each session's answer for an hour
                try:
                    size += os.lstat(os.path.join(directory, name)).st_size
                    files += 1
                except OSError:
                    pass  # removed while we looked
        return files, size

    def stored(self):
        return sorted(name for name in os.listdir(self.store) if name.endswith(".cpkg"))

    def healthz_ms(self):
        """Milliseconds GET /healthz took to answer status ok (None: no ok within HEALTHZ_TIMEOUT)."""
        start = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HEALTHZ_TIMEOUT)
        try:
            connection.request("GET", "/healthz")
            reply = connection.getresponse()
            # {"status":"ok","trust_policy":{…}} (spec section 14.5)
            ok = reply.status == 200 and json.loads(reply.read()).get("status") == "ok"
        except (OSError, http.client.HTTPException, ValueError):
            ok = False
        finally:
            connection.close()
        elapsed = time.monotonic() - start
        return elapsed * 1000 if ok and elapsed <= HEALTHZ_TIMEOUT else None

    def settled_fds(self):
        """The descriptor count once a /healthz request came and went and the count stopped moving."""
        self.healthz_ms()
        previous = self.fds()
        for _ in range(20):
            time.sleep(0.1)
            current = self.fds()
            if current == previous:
                break
            previous = current
        return previous

    def server_side_state(self, client_port):
        """The TCP state (hex, /proc/net/tcp) of the server's end of the connection from `client_port`; None when
        the kernel no longer has it. "01" is ESTABLISHED."""
        local, remote = f":{self.port:04X}", f":{client_port:04X}"
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1].endswith(local) and fields[2].endswith(remote):
                    return fields[3]
        return None

    def stderr_tail(self, lines=20):
        try:
            with open(self.stderr_path, "rb") as f:
                return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


# ---------------------------------------------------------------------------------------------------------------
# Packages

def pack(binary, episodes, key, output, environment, compression):
    os.makedirs(output, exist_ok=True)
    result = subprocess.run([binary, "pack", episodes, "--key", key, "--runtime-version", "1", "--app-version", "1",
                             "--environment-id", environment, "--output", output + "/", "--compression", compression],
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"pack {environment} failed ({result.returncode}): {result.stderr[-400:]}")
    return os.path.normpath(result.stdout.strip().splitlines()[-1])


class Package:
    def __init__(self, path):
        self.path = path
        self.name = os.path.basename(path)
        with open(path, "rb") as f:
            self.data = f.read()
        self.size = len(self.data)
        self.sha256 = hashlib.sha256(self.data).hexdigest()


def make_packages(binary, work, count, package_mib, bomb_mib):
    """(the honest pool, the bomb, the tampered package)."""
    bomb_episodes = os.path.join(work, "bomb-episodes")
    os.makedirs(bomb_episodes)
    with open(os.path.join(bomb_episodes, "episode.bin"), "wb"):
        pass
    os.truncate(os.path.join(bomb_episodes, "episode.bin"), bomb_mib * MIB)  # zeros, sparse
    bomb = {}
    bomb_thread = threading.Thread(target=lambda: bomb.update(path=pack(
        binary, bomb_episodes, UNTRUSTED_KEY, os.path.join(work, "bomb"), "soak-bomb", "zstd")))
    bomb_thread.start()

    paths = []
    for index in range(count + 1):  # the last one becomes the tampered package
        episodes = os.path.join(work, "episodes", str(index))
        os.makedirs(episodes)
        with open(os.path.join(episodes, "steps.bin"), "wb") as f:
            f.write(os.urandom(package_mib * MIB))
        paths.append(pack(binary, episodes, TRUSTED_KEY, os.path.join(work, "packed", str(index)),
                          f"soak-{index}", "none"))
        shutil.rmtree(episodes)
    tampered = paths.pop()
    with open(tampered, "r+b") as f:  # a byte of the episode archive: signature fine, a digest not
        f.seek(os.path.getsize(tampered) - 1024 - 4096)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    bomb_thread.join()
    if "path" not in bomb:
        sys.exit("packing the bomb failed")
    return [Package(path) for path in paths], Package(bomb["path"]), Package(tampered)


# ---------------------------------------------------------------------------------------------------------------
# Counting

class Tally:
    """Thread-safe counts: answers per hostile class, unexpected answers, broken invariants."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = collections.Counter()  # class -> requests (or connections) sent
        self.answers = collections.defaultdict(collections.Counter)  # class -> label -> count
        self.unexpected = collections.defaultdict(list)  # class -> descriptions
        self.broken = []  # invariants broken (each a description)
        self.notes = collections.defaultdict(list)  # class -> numbers (e.g. seconds until cut)

    def answer(self, cls, label):
        with self.lock:
            self.sent[cls] += 1
            self.answers[cls][label] += 1

    def surprise(self, cls, description):
        with self.lock:
            self.unexpected[cls].append(description)

    def breaks(self, description):
        with self.lock:
            self.broken.append(description)

    def note(self, cls, value):
        with self.lock:
            self.notes[cls].append(value)


# ---------------------------------------------------------------------------------------------------------------
# The soak

class Soak:
    def __init__(self, service, tally, pool, bomb, tampered, seconds, honest, idle_connections):
        self.service = service
        self.port = service.port
        self.tally = tally
        self.pool = collections.deque(pool)
        self.pool_lock = threading.Lock()
        self.bomb = bomb
        self.tampered = tampered
        self.seconds = seconds
        self.honest = honest
        self.idle_connections = idle_connections
        self.interval = seconds * honest / max(1, len(pool))  # each uploader starts one upload per interval
        self.stop = threading.Event()  # the hostile workers and the pacing stop
        self.done = threading.Event()  # the monitor stops
        self.uploads = []  # (package, seconds) of honest uploads answered 200
        self.failures = []  # honest failures (descriptions)
        self.stored_names = []  # objects an honest upload stored (for the media reader)
        self.samples = []  # monitor samples (dicts)
        self.started = None  # time.monotonic() when the run started
        self.cpu_at_stop = None  # the process's CPU seconds when the run stopped
        self.lock = threading.Lock()

    # --- hostile requests --------------------------------------------------------------------------------------

    def request(self, cls, method, target, headers=None, body=b"", timeout=10.0, expect=None, what=None, kind=None,
                busy_ok=False):
        """A hostile request, counted by class under `kind` (default: the method) and the answer. `expect(reply)`
        says whether the answer is as it should be; a 5xx breaks an invariant, except 503 upload.session_busy when
        `busy_ok` (a request racing our own cut one). Returns the Reply (None when there was none)."""
        what = what or f"{method} {target[:80]}"
        kind = kind or method
        try:
            reply = exchange(self.port, method, target, headers, body, timeout)
        except NoAnswer as error:
            self.tally.answer(cls, f"{kind} no answer")
            self.tally.surprise(cls, f"{what}: {error}")
            return None
        self.tally.answer(cls, f"{kind} {reply.label()}")
        if reply.status >= 500 and not (busy_ok and reply.code() == "upload.session_busy"):
            self.tally.breaks(f"{cls}: {what} answered {reply.label()}")
        elif expect is not None and not expect(reply):
            self.tally.surprise(cls, f"{what} answered {reply.label()}")
        return reply

    def initiate(self, cls, name, declared=None):
        """A hostile initiation; the session target, or None."""
        headers = {} if declared is None else {"X-Upload-Content-Length": str(declared)}
        reply = self.request(cls, "POST", initiation_target(name), headers, expect=lambda r: r.status == 200,
                             what="initiation")
        return session_target(reply) if reply is not None else None

    def upload_whole(self, cls, package, expect):
        """A package in one PUT. When the answer is lost (the server refused early and closed while we sent), a
        status query asks for the answer the session ended with."""
        target = self.initiate(cls, package.name, package.size)
        if target is None:
            return
        headers = {"Content-Range": f"bytes 0-{package.size - 1}/{package.size}"}
        try:
            reply = exchange(self.port, "PUT", target, headers, package.data, timeout=60)
        except NoAnswer:
            reply = None
        if reply is None:
            self.tally.answer(cls, "PUT answer lost")
            self.request(cls, "PUT", target, {"Content-Range": "bytes */*"}, expect=expect, kind="status query",
                         what=f"status query after the {cls} upload lost its answer")
            return
        self.tally.answer(cls, f"PUT {reply.label()}")
        if reply.status >= 500:
            self.tally.breaks(f"{cls}: the upload answered {reply.label()}")
        elif not expect(reply):
            self.tally.surprise(cls, f"the upload answered {reply.label()}")

    def finish_session(self, cls, target):
        """Ends a session we left holding bytes: completes it with one junk byte (refused), so its spool goes."""
        expected = lambda r: r.status == 308 or 400 <= r.status < 500 or r.code() == "upload.session_busy"
        for _ in range(20):
            reply = self.request(cls, "PUT", target, {"Content-Range": "bytes */*"}, what="cleanup status query",
                                 kind="cleanup query", busy_ok=True, expect=expected)
            if reply is None or reply.code() != "upload.session_busy":
                break
            time.sleep(0.5)  # 503 session_busy: the cut request has not let go of the session yet
        if reply is None or reply.status != 308 or not reply.headers.get("range", "").startswith("bytes=0-"):
            return  # ended, refused, or never held a byte
        held = int(reply.headers["range"][len("bytes=0-"):]) + 1
        self.request(cls, "PUT", target, {"Content-Range": f"bytes {held}-{held}/{held + 1}"}, b"\0",
                     what="cleanup completion", kind="cleanup PUT", expect=lambda r: 400 <= r.status < 500)

    def pace(self, seconds):
        """Sleeps unless stopped; False when stopped."""
        return not self.stop.wait(seconds)

    # --- hostile workers ---------------------------------------------------------------------------------------

    def traversal(self):
        four = lambda r: 400 <= r.status < 500
        while not self.stop.is_set():
            for name in TRAVERSALS:
                for suffix in ("?alt=media", ""):
                    reply = self.request("traversal", "GET", BUCKET_OBJECTS + name + suffix, timeout=5, expect=four)
                    if reply is not None and 200 <= reply.status < 300:
                        self.tally.breaks(f"traversal GET {name}{suffix} answered {reply.status}")
            self.pace(0.5)

    def overflow(self):
        while self.pace(0.5):
            target = self.initiate("overflow", random_name())
            if target is not None:
                self.request("overflow", "PUT", target, {"Content-Range": "bytes 0-18446744073709551615/*"}, b"x" * 16,
                             expect=lambda r: 400 <= r.status < 500, what="PUT bytes 0-18446744073709551615/*")

    def tiny(self):
        while self.pace(0.5):
            target = self.initiate("tiny", random_name())
            if target is not None:
                self.request("tiny", "PUT", target, {"Content-Range": "bytes 0-0/1"}, b"\0",
                             expect=lambda r: 400 <= r.status < 500, what="PUT bytes 0-0/1")

    def never_send(self):
        while self.pace(0.5):
            self.initiate("never_send", random_name())

    def bomb_uploads(self):
        untrusted = lambda r: r.status == 422 and r.code() == "signature.untrusted"
        while self.pace(1.0):
            self.upload_whole("bomb", self.bomb, untrusted)

    def tampered_uploads(self):
        while self.pace(1.0):
            self.upload_whole("tampered", self.tampered, lambda r: r.status == 422)

    def idle(self):
        """Holds `idle_connections` connections that never send a byte; each one the server closes is renewed."""
        selector = selectors.DefaultSelector()
        opened = {}  # socket -> time opened
        flagged = set()
        try:
            while not self.stop.is_set():
                for _ in range(min(50, self.idle_connections - len(opened))):  # at most 50 at a time (the backlog)
                    try:
                        sock = connect(self.port, timeout=2.0)
                    except NoAnswer as error:
                        self.tally.answer("idle", "connect failed")
                        self.tally.surprise("idle", f"connect: {error}")
                        break
                    sock.setblocking(False)
                    selector.register(sock, selectors.EVENT_READ)
                    opened[sock] = time.monotonic()
                    self.tally.answer("idle", "opened")
                for key, _ in selector.select(timeout=0.5):
                    sock = key.fileobj
                    try:
                        data = sock.recv(4096)
                        label = "closed by the server" if not data else "answered with bytes"
                    except BlockingIOError:
                        continue
                    except OSError:
                        label = "reset by the server"
                    lifetime = time.monotonic() - opened.pop(sock)
                    self.tally.note("idle", lifetime)
                    with self.tally.lock:
                        self.tally.answers["idle"][label] += 1
                    if label == "answered with bytes":
                        self.tally.surprise("idle", f"an idle connection received {data[:40]!r}")
                    selector.unregister(sock)
                    sock.close()
                now = time.monotonic()
                for sock, since in opened.items():
                    if now - since > CUT_DEADLINE and sock not in flagged:
                        flagged.add(sock)
                        self.tally.surprise("idle", f"an idle connection still open after {now - since:.0f} s")
        finally:
            for sock in opened:
                selector.unregister(sock)
                sock.close()
            selector.close()

    def trickle(self):
        """A PUT announcing 256 KiB whose body comes one byte a second, until the server cuts it; then the session
        is finished (refused) so that its spool file goes, and the next one starts."""
        while not self.stop.is_set():
            target = self.initiate("trickle", random_name())
            if target is None:
                self.pace(1.0)
                continue
            try:
                sock = connect(self.port)
            except NoAnswer as error:
                self.tally.answer("trickle", "connect failed")
                self.tally.surprise("trickle", f"connect: {error}")
                self.pace(1.0)
                continue
            head = build_request("PUT", target, self.port, {"Content-Length": "262144",
                                                             "Content-Range": "bytes 0-262143/*"})
            start = time.monotonic()
            outcome = None
            try:
                sock.sendall(head)
                while outcome is None and not self.stop.is_set():
                    if time.monotonic() - start > CUT_DEADLINE:
                        outcome = "not cut"
                        self.tally.surprise("trickle", f"a body trickled at 1 byte/s was not cut in {CUT_DEADLINE} s")
                        break
                    try:
                        sock.sendall(b"x")
                    except OSError:
                        outcome = "reset by the server"
                        break
                    sock.settimeout(1.0)
                    try:
                        data = sock.recv(65536)
                    except socket.timeout:
                        continue
                    except OSError:
                        outcome = "reset by the server"
                        break
                    if not data:
                        outcome = "closed by the server"
                    elif data.startswith(b"HTTP/1.1 "):
                        outcome = "answered " + data[9:12].decode(errors="replace")
                        if data[9:10] == b"5":
                            self.tally.breaks(f"trickle: the trickled PUT answered {data[:40]!r}")
                    else:
                        outcome = "answered garbage"
                        self.tally.surprise("trickle", f"the trickled PUT received {data[:40]!r}")
            except OSError:
                outcome = "reset by the server"
            finally:
                sock.close()
            if outcome is None:
                outcome = "stopped (run over)"
            elif outcome != "not cut":
                self.tally.note("trickle", time.monotonic() - start)
            self.tally.answer("trickle", "PUT " + outcome)
            self.finish_session("trickle", target)

    def media_stall(self):
        """GET ?alt=media of a stored object with a 4 KiB receive buffer, never read; waits until the server's end
        of the connection leaves ESTABLISHED (it let go of the response), then starts again."""
        while not self.stored_names and self.pace(0.2):
            pass
        while not self.stop.is_set():
            with self.lock:
                name = self.stored_names[-1]
            try:
                sock = connect(self.port, receive_buffer=4096)
            except NoAnswer as error:
                self.tally.answer("media_stall", "connect failed")
                self.tally.surprise("media_stall", f"connect: {error}")
                self.pace(1.0)
                continue
            try:
                sock.sendall(build_request("GET", BUCKET_OBJECTS + name + "?alt=media", self.port))
                client_port = sock.getsockname()[1]
                start = time.monotonic()
                outcome = "stopped (run over)"
                while self.pace(0.5):
                    held = time.monotonic() - start
                    if self.service.server_side_state(client_port) != "01":
                        outcome = "let go by the server"
                        self.tally.note("media_stall", held)
                        break
                    if held > CUT_DEADLINE:
                        outcome = "not let go"
                        self.tally.surprise("media_stall", f"a media response not read was held {held:.0f} s")
                        break
            except OSError as error:
                outcome = "connection error"
                self.tally.surprise("media_stall", f"{error}")
            finally:
                sock.close()
            self.tally.answer("media_stall", "GET " + outcome)

    # --- honest uploaders --------------------------------------------------------------------------------------

    def honest_uploader(self, index):
        next_start = time.monotonic() + index * self.interval / self.honest
        while True:
            if self.stop.wait(max(0.0, next_start - time.monotonic())):
                return
            with self.pool_lock:
                if not self.pool:
                    return
                package = self.pool.popleft()
            self.honest_upload(package)
            next_start = max(next_start + self.interval, time.monotonic())

    def honest_upload(self, package):
        start = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        step = "initiation"
        try:
            connection.request("POST", initiation_target(package.name),
                               headers={"X-Upload-Content-Length": str(package.size)})
            reply = connection.getresponse()
            reply.read()
            location = reply.getheader("Location")
            if reply.status != 200 or not location:
                return self.honest_failed(package, f"initiation answered {reply.status}")
            url = urllib.parse.urlsplit(location)
            target = f"{url.path}?{url.query}"
            for offset in range(0, package.size, CHUNK):
                last = min(offset + CHUNK, package.size) - 1
                step = f"chunk bytes {offset}-{last}"
                connection.request("PUT", target, body=package.data[offset:last + 1],
                                   headers={"Content-Range": f"bytes {offset}-{last}/{package.size}"})
                reply = connection.getresponse()
                body = reply.read()
                if last + 1 < package.size:
                    if reply.status != 308 or reply.getheader("Range") != f"bytes=0-{last}":
                        return self.honest_failed(package, f"{step} answered {reply.status} "
                                                           f"(Range {reply.getheader('Range')}) {body[:120]!r}")
                elif reply.status != 200 or json.loads(body).get("name") != package.name:
                    return self.honest_failed(package, f"{step} answered {reply.status} {body[:160]!r}")
        except (OSError, http.client.HTTPException, ValueError) as error:
            return self.honest_failed(package, f"{step}: {type(error).__name__}: {error}")
        finally:
            connection.close()
        with self.lock:
            self.uploads.append((package, time.monotonic() - start))
            self.stored_names.append(package.name)

    def honest_failed(self, package, reason):
        """Every failure breaks an invariant (check_invariants lists them)."""
        with self.lock:
            self.failures.append(f"{package.name[:16]}…: {reason}")

    # --- monitor ------------------------------------------------------------------------------------------------

    def monitor(self):
        while not self.done.is_set():
            sample = self.sample()
            if sample is None:
                self.stop.set()
                return
            with self.lock:
                self.samples.append(sample)
            if sample["healthz_ms"] is None:
                self.tally.breaks(f"/healthz did not answer ok within {HEALTHZ_TIMEOUT:.0f} s "
                                  f"(at {sample['t']:.1f} s)")
            self.done.wait(SAMPLE_SECONDS)

    def sample(self):
        """One sample of the process (None when it is gone)."""
        try:
            files, size = self.service.spool_usage()
            sample = {"t": time.monotonic() - self.started, "fds": self.service.fds(),
                      "rss_mib": self.service.rss_mib(), "cpu_s": self.service.cpu_seconds(),
                      "spool_files": files, "spool_bytes": size}
        except (OSError, StopIteration):
            return None
        sample["healthz_ms"] = self.service.healthz_ms()
        return sample

    # --- the run ------------------------------------------------------------------------------------------------

    def run(self):
        """Runs every thread for `seconds`; returns the run's duration."""
        self.started = time.monotonic()
        hostile = [self.traversal, self.overflow, self.tiny, self.never_send, self.bomb_uploads,
                   self.tampered_uploads, self.idle, self.trickle, self.media_stall]
        threads = [threading.Thread(target=self.monitor, daemon=True)]
        threads += [threading.Thread(target=worker, daemon=True) for worker in hostile]
        honest = [threading.Thread(target=self.honest_uploader, args=(i,), daemon=True) for i in range(self.honest)]
        for thread in threads + honest:
            thread.start()
        self.stop.wait(self.seconds)  # set early by the monitor when the process died
        self.stop.set()
        for thread in honest:  # an upload in flight is finished, never cut
            thread.join(120)
        duration = time.monotonic() - self.started
        if self.service.alive():
            self.cpu_at_stop = self.service.cpu_seconds()
        for thread in threads[1:]:
            thread.join(70)
        return duration


# ---------------------------------------------------------------------------------------------------------------
# Settling, figures, report

def settle(service, baseline):
    """Waits up to SETTLE_SECONDS for the descriptors and the spool to come back; returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < SETTLE_SECONDS and service.alive():
        if service.fds() <= baseline + FD_SLACK and service.spool_usage() == (0, 0):
            break
        time.sleep(0.25)
    return time.monotonic() - start


def figures(args, soak, tally, service, start, settled, duration, settle_seconds, pool_size):
    samples = soak.samples
    latencies = [seconds for _, seconds in soak.uploads]
    honest_bytes = sum(package.size for package, _ in soak.uploads)
    healthz = [s["healthz_ms"] for s in samples if s["healthz_ms"] is not None]
    hostile = {}
    for cls, _ in HOSTILE_CLASSES:
        notes = tally.notes.get(cls, [])
        hostile[cls] = {"sent": tally.sent[cls], "answers": dict(tally.answers[cls]),
                        "unexpected": len(tally.unexpected[cls]), "unexpected_examples": tally.unexpected[cls][:5]}
        if notes:
            hostile[cls]["seconds_until_cut_p50"] = percentile(notes, 0.5)
            hostile[cls]["seconds_until_cut_max"] = max(notes)
    return {
        "binary": os.path.abspath(args.binary), "seconds": args.seconds, "honest_uploaders": args.honest,
        "duration_s": duration, "settle_s": settle_seconds,
        "honest": {"pool": pool_size, "done": len(soak.uploads), "failed": len(soak.failures),
                   "failures": soak.failures[:20], "package_bytes": soak.uploads[0][0].size if soak.uploads else None,
                   "latency_p50_s": percentile(latencies, 0.5), "latency_p95_s": percentile(latencies, 0.95),
                   "latency_max_s": max(latencies, default=None),
                   "throughput_mib_s": honest_bytes / MIB / duration if duration else None,
                   "per_upload_mib_s_p50": percentile([p.size / MIB / s for p, s in soak.uploads], 0.5)},
        "hostile": {"sent": sum(tally.sent.values()), "unexpected": sum(len(v) for v in tally.unexpected.values()),
                    "classes": hostile},
        "healthz_ms": {"p50": percentile(healthz, 0.5), "max": max(healthz, default=None),
                       "failed": sum(1 for s in samples if s["healthz_ms"] is None)},
        "fds": {"start": start["fds"], "max": max([s["fds"] for s in samples] + [start["fds"]]),
                "after": settled.get("fds"), "deleted_after": settled.get("deleted_fds")},
        "rss_mib": {"start": start["rss_mib"], "max": max([s["rss_mib"] for s in samples] + [start["rss_mib"]]),
                    "after": settled.get("rss_mib")},
        "cpu_s": {"run": soak.cpu_at_stop - start["cpu_s"] if soak.cpu_at_stop is not None else None,
                  "total": settled["cpu_s"] - start["cpu_s"] if "cpu_s" in settled else None},
        "spool_after": {"files": settled.get("spool_files"), "bytes": settled.get("spool_bytes"),
                        "max_bytes": max((s["spool_bytes"] for s in samples), default=0)},
        "stored": {"objects": settled.get("stored"), "honest_done": len(soak.uploads)},
        "alive": service.alive(),
        "broken": tally.broken,
        "samples": samples,
    }


def check_invariants(result, soak, service, tally):
    """Adds the end-of-run invariants to tally.broken."""
    if not result["alive"]:
        tally.breaks(f"the process died (exit status {service.process.returncode})")
    for failure in soak.failures:
        tally.breaks(f"honest upload failed: {failure}")
    if not result["alive"]:
        return
    stored = result["stored"]["objects"]
    if stored != result["stored"]["honest_done"]:
        tally.breaks(f"{stored} objects stored, {result['stored']['honest_done']} honest uploads done")
    for package, _ in soak.uploads:
        path = os.path.join(service.store, package.name)
        try:
            with open(path, "rb") as f:
                same = hashlib.sha256(f.read()).hexdigest() == package.sha256
        except OSError:
            same = False
        if not same:
            tally.breaks(f"{package.name} is not stored with the bytes uploaded")
    spool = result["spool_after"]
    if spool["files"] or spool["bytes"]:
        tally.breaks(f"the spool holds {spool['files']} files ({spool['bytes']} bytes) after settling")
    fds = result["fds"]
    if fds["after"] > fds["start"] + FD_SLACK:
        tally.breaks(f"{fds['after']} fds after settling, baseline {fds['start']} (+{fds['after'] - fds['start']})")


def show(value, digits=1):
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def answers_text(answers):
    return ", ".join(f"{label} ×{count}" for label, count in sorted(answers.items(), key=lambda kv: -kv[1])) or "-"


def print_table(result):
    honest, hostile = result["honest"], result["hostile"]
    rows = [
        ("duration: run / settling (s)", f"{result['duration_s']:.1f} / {result['settle_s']:.1f}"),
        ("honest uploads done / failed (pool)", f"{honest['done']} / {honest['failed']} ({honest['pool']})"),
        ("honest upload latency p50 / p95 / max (s)",
         " / ".join(show(honest[k], 3) for k in ("latency_p50_s", "latency_p95_s", "latency_max_s"))),
        ("honest throughput over the run (MiB/s)", show(honest["throughput_mib_s"], 2)),
        ("honest upload speed, median of size / latency (MiB/s)", show(honest["per_upload_mib_s_p50"], 1)),
        ("hostile requests (and idle connections) sent / unexpected answers",
         f"{hostile['sent']} / {hostile['unexpected']}"),
    ]
    for cls, title in HOSTILE_CLASSES:
        figures_of = hostile["classes"][cls]
        text = f"{figures_of['sent']}: {answers_text(figures_of['answers'])}"
        if "seconds_until_cut_p50" in figures_of:
            text += (f"; cut after p50 {figures_of['seconds_until_cut_p50']:.1f} s,"
                     f" max {figures_of['seconds_until_cut_max']:.1f} s")
        if figures_of["unexpected"]:
            text += f"; **{figures_of['unexpected']} unexpected**"
        rows.append((f"— {cls}: {title}", text))
    healthz, fds, rss = result["healthz_ms"], result["fds"], result["rss_mib"]
    cpu, spool, stored = result["cpu_s"], result["spool_after"], result["stored"]
    rows += [
        ("/healthz latency p50 / max (ms); failed",
         f"{show(healthz['p50'])} / {show(healthz['max'])}; {healthz['failed']}"),
        ("fds at start / max / after settling", f"{fds['start']} / {fds['max']} / {show(fds['after'])}"),
        ("RSS (MiB) at start / max / after settling",
         f"{rss['start']:.0f} / {rss['max']:.0f} / {show(rss['after'], 0)}"),
        ("server CPU seconds: run / with settling", f"{show(cpu['run'])} / {show(cpu['total'])}"),
        ("spool files / bytes after settling (max bytes during the run)",
         f"{show(spool['files'])} / {show(spool['bytes'])} ({spool['max_bytes']})"),
        ("stored objects / honest uploads done", f"{show(stored['objects'])} / {stored['honest_done']}"),
        ("invariants", "all held" if not result["broken"] else f"**{len(result['broken'])} broken**"),
    ]
    print(f"| serve soak: {result['seconds']:g} s, {result['honest_uploaders']} honest uploaders, "
          f"{len(HOSTILE_CLASSES)} hostile workers | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def main():
    parser = argparse.ArgumentParser(description="Soak benchmark of continuon-pack serve under hostile load.")
    parser.add_argument("--binary", required=True, help="the continuon-pack executable")
    parser.add_argument("--seconds", type=float, default=None, help="length of the run (default 60; 10 with --quick)")
    parser.add_argument("--honest", type=int, default=2, help="honest uploader threads")
    parser.add_argument("--quick", action="store_true",
                        help="10 s, a smaller pool, fewer idle connections, a smaller bomb")
    parser.add_argument("--packages", type=int, default=None,
                        help="honest package pool, spread over the run (default: one per second, at least 12)")
    parser.add_argument("--package-mib", type=int, default=2, help="random bytes per honest package")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.seconds is None:
        args.seconds = 10.0 if args.quick else 60.0
    pool_size = args.packages or max(12, int(args.seconds))
    idle_connections = 50 if args.quick else 200
    bomb_mib = 128 if args.quick else 512
    binary = os.path.abspath(args.binary)

    wall = time.monotonic()
    work = tempfile.mkdtemp(prefix="continuon-soak-", dir="/tmp")
    service = None
    try:
        pool, bomb, tampered = make_packages(binary, work, pool_size, args.package_mib, bomb_mib)
        print(f"packed {len(pool)} packages of {pool[0].size} bytes, a {bomb.size}-byte bomb ({bomb_mib} MiB "
              f"inflated) and a tampered package in {time.monotonic() - wall:.1f} s", file=sys.stderr, flush=True)
        service = Service(binary, work)
        baseline = service.settled_fds()
        start = {"fds": baseline, "rss_mib": service.rss_mib(), "cpu_s": service.cpu_seconds()}
        tally = Tally()
        soak = Soak(service, tally, pool, bomb, tampered, args.seconds, args.honest, idle_connections)
        duration = soak.run()
        settle_seconds = settle(service, baseline) if service.alive() else 0.0
        soak.done.set()
        settled = {}
        if service.alive():
            try:
                files, size = service.spool_usage()
                settled = {"fds": service.fds(), "deleted_fds": service.deleted_fds(), "rss_mib": service.rss_mib(),
                           "cpu_s": service.cpu_seconds(), "spool_files": files, "spool_bytes": size,
                           "stored": len(service.stored())}
            except (OSError, StopIteration):
                settled = {}
        result = figures(args, soak, tally, service, start, settled, duration, settle_seconds, len(pool))
        check_invariants(result, soak, service, tally)
        result["broken"] = tally.broken
        result["wall_s"] = time.monotonic() - wall
        print_table(result)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
        for cls, _ in HOSTILE_CLASSES:
            for description in tally.unexpected[cls][:5]:
                print(f"UNEXPECTED {cls}: {description}", file=sys.stderr)
            if len(tally.unexpected[cls]) > 5:
                print(f"UNEXPECTED {cls}: … and {len(tally.unexpected[cls]) - 5} more", file=sys.stderr)
        for problem in tally.broken[:30]:
            print("PROBLEM:", problem, file=sys.stderr)
        if len(tally.broken) > 30:
            print(f"PROBLEM: … and {len(tally.broken) - 30} more", file=sys.stderr)
        if not result["alive"]:
            print("last lines of the serve's stderr:\n" + service.stderr_tail(), file=sys.stderr)
        print(f"wall time {result['wall_s']:.1f} s", file=sys.stderr)
        return 1 if tally.broken else 0
    finally:
        if service is not None:
            service.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
