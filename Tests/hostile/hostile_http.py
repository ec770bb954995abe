#!/usr/bin/env python3
"""Hostile-HTTP regression suite for `continuon-pack serve` (the ingestion service).

    python3 Tests/hostile/hostile_http.py --binary PATH [--only N[,N]] [--list]

PATH is the `continuon-pack` executable (it execs `continuon-pack-net` beside it in place, same PID). Every check
starts its own `serve` (or several) in a fresh temporary directory under /tmp, attacks it, stops it (SIGTERM, then
SIGKILL after 5 s) whatever happens, and prints `PASS name (seconds)` or `FAIL name: reason (seconds)`; when a serve
died, the last 20 lines of its stderr follow. Every check has a wall-clock budget and every socket a timeout. The exit
status is 1 when any check failed. Python 3.11 standard library only.

Findings of the adversarial review, and what each check asserts:

 1. any_file_readable: the object name of GET /storage/v1/b/staging/o/NAME is percent-decoded and joined to the store
    directory, so `..%2FK.pem` reads any file the service can read. Asserts that traversal names (`..%2F...`, absolute
    `%2F...` names, names with `%00`), with and without `?alt=media`, answer 4xx and never a planted secret; and that
    a symlink `<64 hex>.cpkg` planted in the store (to the secret, and to /dev/zero) answers 4xx within 5 s: the store
    opens only regular files it created.
 2. crash_by_overflow: `Content-Range: bytes 0-18446744073709551615/*` overflows `last + 1` (a Swift trap kills the
    process), with and without a declared size; re-sending `bytes 0-262143/*` with a 524288-byte body while 524288
    bytes are held underflows. Asserts a 4xx (resp. any 3xx/4xx) and a live process. Each attack has its own serve.
 3. hang_on_device_file: `..%2F..%2F..%2F..%2Fdev%2Fzero` makes the store hash /dev/zero forever, even after the
    client left. Asserts /healthz answers within 1 s after two such clients closed, and that the process then uses
    less than 0.5 CPU-seconds in 2 seconds.
 4. handles_per_finished_session: a finished session keeps a descriptor on its deleted spool file until it is
    forgotten an hour later. Asserts that after 300 refused 1-byte uploads the descriptor count is back to its baseline
    and no descriptor points to a deleted file, and the same after 3 refused ~8 MiB uploads (on a fresh serve); and
    that the upload_ids of all sessions are distinct and not the all-zero UUID.
 5. size_limit_bypass: with no declared size, `bytes N-M/*` chunks are never held against --max-package-mib.
    Asserts (limit 1 MiB) a 413 by the time more than 1 MiB would be held, a spool never holding more than 1 MiB
    (measured after each chunk), and an empty spool after the 413.
 6. idle_sessions_lock_out: sessions that never send a byte count against --max-sessions for a day. Asserts (limit
    8) that after 8 such initiations an honest upload of package-none.cpkg is accepted (200), not refused with 429.
 7. media_memory: GET ?alt=media reads the whole object into memory for every request. Asserts that 4 clients
    asking for a 64 MiB object and never reading grow the process's RSS by less than 48 MiB.
 8. decompression_bomb_untrusted_signer: the package is decompressed and hashed before its signer is known to be
    untrusted, so anyone can make the service inflate 2 GiB. Asserts the refusal carries `signature.untrusted` and the
    service spent less than 0.6 CPU-seconds from the initiation to the refusal.
 9. low_severity (one check; the reason names each failing part):
    (a) a body trickled one byte every 3 s never trips --idle-timeout 5: asserts the server closes it within 20 s;
    (b) idle TCP connections are unbounded: asserts that with 3000 open the descriptor count stays below
        baseline + 1100 and /healthz answers within 1 s;
    (c) 100 KiB of upload metadata answers 500: asserts 413 or 400;
    (d) a Host header that is not a plain authority (space, `/`) must not reach Location: asserts the Location then
        starts with http://127.0.0.1:PORT/ (or that the initiation is refused with 400);
    (e) `Content-Range: bytes +0-+9/10` is accepted (Swift parses "+0"): asserts 400;
    (f) a status query `bytes */100` while 524288 bytes are held sets a total below what is held: asserts 400, and
        that a following status query (no Content-Range) still answers 308 with `Range: bytes=0-524287`.

10. held_slots_lock_out (found by the soak benchmark after the first fixes): four sessions that each took one byte
    and went silent held every slot of --max-sessions 4 for the whole --session-expiry. Asserts that once they have
    been quiet for a window (--idle-timeout 3), an honest upload is accepted (one of them makes room, 410).

11. stalled_heads_lock_out (second review): request heads whose body never comes held --max-connections busy until
    the idle timeout. Asserts (20 connections, --rate-grace 2) that /healthz answers within 1 s 3.5 s later.
12. shutdown_and_leftovers (second review): SIGTERM waited without bound for a trickling body; a killed process's
    spool files stayed for good. Asserts the bounded shutdown, the clean-up at restart, and one process per spool.

13. honest_but_slow_or_pipelined (third review): the guards' false positives. Asserts (--rate-grace 2,
    --idle-timeout 10) that a download read steadily at about 40 KB/s is not cut within 6 s, and that a PUT pipelined behind a GET is not evicted by the
    connection cap (--max-connections 2) while its body arrives.

Single-request uploads (`uploadType=media`, `uploadType=multipart`): each holds a spool file, two descriptors, a
verifier thread and a --max-sessions slot while its body streams in, and must give them all back whatever happens.
14. single_request_abandoned (--rate-grace 2): asserts that media (Content-Length and chunked) and multipart uploads
    whose client leaves in the middle of the body (FIN, RST, in the middle of a chunk, of the media, of the metadata)
    had a spool file while the body arrived and lose it within 3 s, with /healthz fast after each; and that three
    that stall after 1000 bytes are cut by the server (minimum body rate) within 8 s, nothing done by the client.
15. single_request_too_large (--max-package-mib 1): asserts a 413 upload.too_large from the head alone (no body
    byte sent) for a Content-Length over the limit (media: limit + 1 and 2^64 - 1; multipart: limit + 80 KiB + 1),
    then a closed connection; and, for chunked media bodies of 3 MiB (and one chunk announcing 1 TiB: 413 or 400
    upload.chunk_short), a chunked multipart body, and a multipart Content-Length inside the framing allowance whose
    media is limit + 60 KiB: a 413 while the client is sending, a spool never over the limit (sampled after every
    64 KiB), a closed connection, nothing stored.
16. multipart_hostile_framing: asserts (a) that media of near-delimiters (`CRLF--` + 69 of the 70 boundary
    characters, CRs, `CRLF-`, `CRLF--` + every prefix of the boundary), 4 MiB each, cost at most 3x the CPU of plain
    media + 0.5 s and answer 4xx; (b) that header blocks of 1 MiB without an empty line (one line, many lines,
    transport padding, in either part), 4 at a time, answer 400 upload.multipart_invalid within 2 s; (c) that 10 MiB
    of metadata (Content-Length or chunked) answers 413 upload.metadata_too_large within 3 s; RSS growing by less
    than 50 MiB through (a)-(c); (d) that a valid package framed wrongly (a third part, no closing delimiter with a
    Content-Length or chunked, a preamble, LF line ends, the delimiter followed by other bytes, a 1 MiB epilogue, a
    text/plain metadata part, two Content-Types, a folded header, base64 transfer encoding, a bare-LF delimiter)
    answers 400 upload.multipart_invalid, cut by EOF before its Content-Length a 4xx or nothing, and with wrong
    declared md5Hash/crc32c 400 upload.checksum_mismatch; nothing stored; and the well-framed control answers 200.
17. single_request_traversal_names: asserts that object names that try to leave the store (`../../etc/passwd`,
    `%2e%2e/x`, `../K.pem`, `../<valid>.cpkg`, absolute, NUL, uppercase, empty), in the media query, the multipart
    metadata, or both (agreeing or not), with a valid package as the body, answer 4xx; a non-string metadata name,
    two valid names that disagree, a repeated `name` or `uploadType` too (`request.query_invalid`); a valid package
    under another package's name answers 422 upload.object_name_mismatch; and that nothing outside the store
    changed (the tree beside it, /etc/passwd, names beside the server's directory), nothing stored.
18. single_request_fail_fast: a package signed by an untrusted key with 32 MiB of archive, sent by media and by
    multipart at once, paced (64 KiB per 2 ms, SO_SNDBUF 64 KiB). Asserts 422 signature.untrusted before half the
    body is sent, `Connection: close`, EOF after the answer, and sends failing within 5 s (the rest is not taken).
19. single_request_slots (--max-sessions 4, --rate-grace 2): four uploads (media and multipart) stall after their
    first 1000 bytes. Asserts four newcomers get 429 upload.too_many_sessions with Retry-After and a closed
    connection, at most 4 spool files, the stalled ones cut by the server within 8 s, the spool then empty, and an
    honest media upload then answered 200 (the slots were given back).
20. content_type_parameter_bomb (found while 14-19 were written; fixed before 3da49bf was committed): MediaType
    checked each parameter of the multipart request's Content-Type against every earlier one; 13,166 short
    parameters (a 79 KB header, under the HTTP layer's ~80 KiB head limit) cost 7.4 CPU-seconds per request on the
    debug build, and two at once starved /healthz for seconds.
    Asserts such a header costs at most 3x a same-length header with one long parameter (+0.2 CPU-s), and /healthz
    answers within 1 s while two of half the size are parsed.
21. single_request_shutdown (--shutdown-timeout 2): asserts SIGTERM while a media and a multipart body trickle in
    (8 KiB/s, above the minimum rate) ends the process within 5 s, leaving an empty spool.

Shared invariants, asserted after every attack: the process is alive; GET /healthz answers `{"status":"ok",…}` within 1 s; the
number of open descriptors of the process settles (polled for up to 5 s) to its baseline + 8; no descriptor points to
a "(deleted)" file; the spool (STORE/.spool) holds no bytes (no `.part` file; the sessions' journals are not counted)
once the sessions involved are finished or refused (the checks
complete the sessions they leave open with junk, which is refused); no response body carries a planted secret
(STORE/../K.pem with random content, a canary in the process's environment, /etc/hostname); no response is 5xx, and
a 5xx body never shows internals ("Error", "errno", "Swift", file paths).

Where a check needs the server to hold bytes without refusing them early, it sends neutral_bytes (a valid tar
header announcing a 12 MiB manifest, then whitespace), so that a verifier that refuses as early as it can does not
hide the finding. SWIFT_BACKTRACE is set (unless already set) so that a crash is reported quickly, with the crashing
frames in the last lines of stderr.
"""

import argparse
import http.client
import json
import os
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEYS = os.path.join(REPO, "TestVectors", "keys")
TEST_KEY = os.path.join(KEYS, "test-ed25519.pem")
TEST_PUB = os.path.join(KEYS, "test-ed25519.pub")
SECOND_KEY = os.path.join(KEYS, "second-ed25519.pem")
VALID_PACKAGE = os.path.join(REPO, "TestVectors", "valid", "package-none.cpkg")
VALID_NAME = "c7d7adb8f983eaba86ec4a57ed08fb22dfc98deb08e20a7d066ea9b8c619e267.cpkg"

BUCKET_UPLOAD = "/upload/storage/v1/b/staging/o"
BUCKET_OBJECTS = "/storage/v1/b/staging/o/"
CHUNK = 262144  # the protocol's chunk granularity (256 KiB)
MIB = 1 << 20
FD_SLACK = 8
SETTLE_SECONDS = 5.0
ZERO_UUID = "00000000-0000-4000-8000-000000000000"
# Text that must never appear in a 5xx body (internals: error types, errno, the language, file paths).
INTERNALS = [b"Error", b"errno", b"Swift", b"/work", b"/tmp", b"/proc", b"/etc", b"/dev", b".swift", b".spool"]


class CheckFailed(Exception):
    """A check cannot go on (its reason is the failure)."""


class NoResponse(Exception):
    """The server closed the connection, reset it or did not answer in time."""


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lowercase name -> value
        self.body = body

    def problem_code(self):
        try:
            return json.loads(self.body).get("code")
        except (ValueError, AttributeError):
            return None

    def __repr__(self):
        return f"{self.status} {self.body[:160]!r}"


def is_4xx(response):
    return response is not None and 400 <= response.status < 500


def describe_exit(code):
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def crash_summary(text):
    """The runtime's reason and the crashing frame in our sources, from a Swift backtrace on stderr."""
    lines = text.splitlines()
    reasons = [line.strip(" *") for line in lines if "runtime failure" in line or "Fatal error" in line]
    frames = []
    crashed = False
    for line in lines:
        if line.rstrip().endswith("crashed:"):
            crashed = True
        elif crashed and "/Sources/" in line:
            words = line.split()
            address = next((i for i, word in enumerate(words) if word.startswith("0x")), 0)
            frames.append(" ".join(words[address + 1:]))
            break
    return "; ".join(reasons[:1] + frames)


def random_name():
    return os.urandom(32).hex() + ".cpkg"


_neutral = None  # built on first use by neutral_bytes


def neutral_bytes(first, length):
    """Upload bytes that a verifier reading the upload as it arrives cannot refuse before 12 MiB: the tar header of
    package-none.cpkg's first member (manifest.dsse.json) with its size raised to 12 MiB, then JSON whitespace.
    Checks that need the server to hold bytes send these, so that an early refusal cannot hide the finding."""
    global _neutral
    if _neutral is None:
        with open(VALID_PACKAGE, "rb") as f:
            header = bytearray(f.read(512))
        header[124:136] = b"%011o\0" % (12 * MIB)  # the member's size
        header[148:156] = b" " * 8  # the checksum is the byte sum with its own field as spaces
        header[148:156] = b"%06o\0 " % sum(header)
        _neutral = bytes(header) + b" " * (4 * MIB)
    assert first + length <= len(_neutral)
    return _neutral[first:first + length]


# ---------------------------------------------------------------------------------------------------------------
# HTTP over raw sockets

def build_request(method, target, port, headers=None, body=None, host=None):
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host if host is not None else f'127.0.0.1:{port}'}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None and not any(name.lower() == "content-length" for name in (headers or {})):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def read_response(sock, deadline, max_body=8 * MIB):
    """Reads one HTTP/1.1 response (skipping 1xx) until `deadline` (time.monotonic()). Raises NoResponse."""
    buffer = b""

    def receive():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NoResponse("no complete response in time")
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            raise NoResponse("no complete response in time") from None
        except OSError as error:
            raise NoResponse(f"connection error: {error}") from None
        return data

    while True:
        while b"\r\n\r\n" not in buffer:
            data = receive()
            if not data:
                raise NoResponse("connection closed without a response")
            buffer += data
            if len(buffer) > 65536:
                raise NoResponse("response head too long")
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            continue
        break

    if status in (204, 304):
        return Response(status, headers, b"")
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(buffer) < min(length, max_body):
            data = receive()
            if not data:
                raise NoResponse("connection closed in the middle of the body")
            buffer += data
        return Response(status, headers, buffer[:length])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in buffer:
                data = receive()
                if not data:
                    raise NoResponse("connection closed in the middle of a chunked body")
                buffer += data
            size_line, buffer = buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(buffer) < size + 2:
                data = receive()
                if not data:
                    raise NoResponse("connection closed in the middle of a chunked body")
                buffer += data
            body += buffer[:size]
            buffer = buffer[size + 2:]
            if size == 0 or len(body) >= max_body:
                return Response(status, headers, body)
    # No length: the body ends when the connection closes.
    while len(buffer) < max_body:
        data = receive()
        if not data:
            break
        buffer += data
    return Response(status, headers, buffer)


def send_all(sock, data):
    """Sends what the server takes; a server that answers early and closes is not an error here."""
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------------
# The service under test

class Server:
    """One `continuon-pack serve` in its own directory: ROOT/store is the store, ROOT/K.pem the planted secret."""

    def __init__(self, binary, extra_args):
        self.root = tempfile.mkdtemp(prefix="hostile-", dir="/tmp")
        self.store = os.path.join(self.root, "store")
        self.spool = os.path.join(self.store, ".spool")
        os.makedirs(self.store)
        self.secret = b"-----BEGIN PRIVATE KEY-----\n" + os.urandom(48).hex().encode() + b"\n-----END PRIVATE KEY-----\n"
        self.secret_path = os.path.join(self.root, "K.pem")
        with open(self.secret_path, "wb") as f:
            f.write(self.secret)
        self.canary = "canary-" + os.urandom(16).hex()
        with open("/etc/hostname", "rb") as f:
            hostname = f.read()
        # What must never be in a response body.
        self.secrets = {"STORE/../K.pem": self.secret.split(b"\n")[1], "the environment canary": self.canary.encode()}
        if hostname.strip():
            self.secrets["/etc/hostname"] = hostname
        self.responses = []  # (what, Response)
        self.lock = threading.Lock()
        self.stdout_path = os.path.join(self.root, "serve.stdout")
        self.stderr_path = os.path.join(self.root, "serve.stderr")
        self.died_on_its_own = None  # exit code, when it was not us who stopped it
        self.stopped_by_check = False  # a check stopped it on purpose
        self.final_stderr_tail = ""
        self.final_crash_summary = ""
        args = [binary, "serve", "--listen", "127.0.0.1:0", "--store", self.store, "--trusted-key", TEST_PUB] + extra_args
        env = dict(os.environ, HOSTILE_CANARY=self.canary)
        # A crash report that is quick to produce and shows the crashing frames in the last lines of stderr.
        env.setdefault("SWIFT_BACKTRACE", "threads=crashed,registers=none,images=none,limit=8,top=4")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        self.pid = self.process.pid
        self.port = None
        self.baseline_fds = None

    def start(self):
        """Waits until it listens, then takes the baseline descriptor count."""
        self.port = self.wait_listening()
        # continuon-pack execs continuon-pack-net in place: the PID we started is the server we observe.
        executable = os.readlink(f"/proc/{self.pid}/exe")
        if not os.path.basename(executable).startswith("continuon-pack-net"):
            raise CheckFailed(f"process {self.pid} runs {executable}, not continuon-pack-net: cannot observe the server")
        self.baseline_fds = self.settled_fd_count()

    def wait_listening(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CheckFailed(f"serve exited with {self.process.returncode} before listening: {self.stderr_tail(5)}")
            with open(self.stdout_path, "rb") as f:
                for line in f.read().decode(errors="replace").splitlines():
                    if line.startswith("listening on http://"):
                        return int(line.rsplit(":", 1)[1])
            time.sleep(0.05)
        raise CheckFailed("serve did not print 'listening on' within 30 s")

    def settled_fd_count(self):
        """The descriptor count once a /healthz request came and went and the count stopped moving."""
        self.call("GET", "/healthz", timeout=5)
        previous = self.fd_count()
        for _ in range(20):
            time.sleep(0.1)
            current = self.fd_count()
            if current == previous:
                return current
            previous = current
        return previous

    # --- process observation -------------------------------------------------------------------------------

    def alive(self):
        return self.process.poll() is None

    def survived(self, reply):
        """After an attack: False when the process died. A request that got no answer may have crashed it, and the
        Swift runtime takes a few seconds to print its backtrace before the process ends: wait for that."""
        if reply is None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        return self.alive()

    def fd_targets(self):
        targets = []
        directory = f"/proc/{self.pid}/fd"
        for entry in os.listdir(directory):
            try:
                targets.append(os.readlink(os.path.join(directory, entry)))
            except OSError:
                pass  # closed while we looked
        return targets

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def deleted_fds(self):
        return [target for target in self.fd_targets() if target.endswith("(deleted)")]

    def cpu_seconds(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # After the command name: state is field 3, utime field 14, stime field 15 (1-based, of the whole line).
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def spool_files(self):
        """(name, size) of every file in the spool directory."""
        if not os.path.isdir(self.spool):
            return []
        files = []
        for directory, _, names in os.walk(self.spool):
            for name in names:
                if directory == self.spool and (name == ".lock" or name.endswith((".session", ".session.new"))):
                    continue  # session journals: a few hundred bytes each, kept with the session or its answer
                try:
                    files.append((name, os.lstat(os.path.join(directory, name)).st_size))
                except OSError:
                    pass
        return files

    def spool_bytes(self):
        return sum(size for _, size in self.spool_files())

    def stderr_tail(self, lines=20):
        try:
            with open(self.stderr_path, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self):
        """SIGTERM (see wait_or_kill); notes whether the process had died on its own."""
        if self.process.poll() is not None:
            if self.died_on_its_own is None and not self.stopped_by_check:
                self.died_on_its_own = self.process.returncode
            return
        self.process.send_signal(signal.SIGTERM)

    def wait_or_kill(self, deadline):
        """SIGKILL when the process has not ended by `deadline` (time.monotonic())."""
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    # --- requests --------------------------------------------------------------------------------------------

    def record(self, what, response):
        with self.lock:
            self.responses.append((what, response))
        return response

    def call(self, method, target, headers=None, body=None, timeout=10.0):
        """A normal request (http.client). Raises NoResponse."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, target, body=body, headers=headers or {})
            reply = connection.getresponse()
            response = Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read())
        except (OSError, http.client.HTTPException) as error:
            raise NoResponse(f"{method} {target}: {type(error).__name__}: {error}") from None
        finally:
            connection.close()
        return self.record(f"{method} {target}", response)

    def raw(self, method, target, headers=None, body=None, timeout=10.0, host=None):
        """A hostile request over a raw socket. Raises NoResponse."""
        deadline = time.monotonic() + timeout
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        except OSError as error:
            raise NoResponse(f"cannot connect: {error}") from None
        try:
            send_all(sock, build_request(method, target, self.port, headers, body, host))
            response = read_response(sock, deadline)
        finally:
            sock.close()
        return self.record(f"{method} {target}", response)

    def send_request(self, method, target, headers=None, body=None, receive_buffer=None):
        """Opens a connection and sends a request without waiting for the answer; returns the socket."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", self.port))
        except OSError as error:
            sock.close()
            raise NoResponse(f"cannot connect: {error}") from None
        send_all(sock, build_request(method, target, self.port, headers, body))
        return sock

    def receive_response(self, sock, what, deadline):
        """The answer to send_request (raises NoResponse when none came by `deadline`)."""
        return self.record(what, read_response(sock, deadline))

    def healthz_seconds(self):
        """Seconds /healthz took to answer `ok` (None when it did not within 1 s)."""
        start = time.monotonic()
        try:
            response = self.call("GET", "/healthz", timeout=1.0)
        except NoResponse:
            return None
        elapsed = time.monotonic() - start
        if response.status != 200 or not response.body.startswith(b'{"status":"ok"') or elapsed > 1.0:
            return None
        return elapsed


# ---------------------------------------------------------------------------------------------------------------
# Protocol helpers

class Session:
    def __init__(self, target, upload_id, declared):
        self.target = target  # path and query of the session URL
        self.upload_id = upload_id
        self.declared = declared


def initiate(server, name, declared=None, headers=None, body=None):
    """POST the initiation; returns (Response, Session or None)."""
    query = urllib.parse.urlencode({"uploadType": "resumable", "ifGenerationMatch": "0", "name": name})
    all_headers = dict(headers or {})
    if declared is not None:
        all_headers["X-Upload-Content-Length"] = str(declared)
    if body is not None:
        all_headers["Content-Type"] = "application/json"
    response = server.call("POST", BUCKET_UPLOAD + "?" + query, all_headers, body)
    return response, session_from(response, declared)


def session_from(response, declared):
    location = response.headers.get("location")
    if response.status != 200 or not location:
        return None
    url = urllib.parse.urlsplit(location)
    upload_id = urllib.parse.parse_qs(url.query).get("upload_id", [""])[0]
    return Session(url.path + "?" + url.query, upload_id, declared)


def put(server, session, content_range, body, timeout=10.0):
    """A chunk (or status query) over a raw socket; None when the server answered nothing."""
    headers = {} if content_range is None else {"Content-Range": content_range}
    try:
        return server.raw("PUT", session.target, headers, body if body is not None else b"", timeout=timeout)
    except NoResponse:
        return None


def put_or_refusal(server, session, content_range, body, timeout=10.0):
    """A chunk. A server may refuse before it read the whole body and close the connection, so that the answer is
    lost: then a status query tells what became of the session."""
    reply = put(server, session, content_range, body, timeout)
    if reply is None and server.alive():
        reply = put(server, session, "bytes */*", b"")
    return reply


def held_bytes(response):
    """Bytes the server says it holds (from `Range: bytes=0-N` of a 308)."""
    value = response.headers.get("range", "")
    if not value.startswith("bytes=0-"):
        return 0
    return int(value[len("bytes=0-"):]) + 1


def finish_session(server, session):
    """Ends a session the attack left open: completes it with junk (refused) so that its spool can go."""
    status = put(server, session, "bytes */*", b"")
    if status is None or status.status != 308:
        return  # gone, refused or complete already
    held = held_bytes(status)
    total = session.declared if session.declared is not None else held + 1
    if total > held:
        put(server, session, f"bytes {held}-{total - 1}/{total}", b"\0" * (total - held))


def pack(binary, source, key, output, compression):
    """`continuon-pack pack`; returns the package path."""
    os.makedirs(output, exist_ok=True)
    result = subprocess.run(
        [binary, "pack", source, "--key", key, "--runtime-version", "0.9.4", "--app-version", "2.1.0",
         "--environment-id", "lab-arm-01", "--output", output + "/", "--compression", compression],
        capture_output=True, timeout=90)
    if result.returncode != 0:
        raise CheckFailed(f"pack failed ({result.returncode}): {result.stderr.decode(errors='replace')[-300:]}")
    return result.stdout.decode().strip().splitlines()[-1].replace("//", "/")


# ---------------------------------------------------------------------------------------------------------------
# One check's context: its servers, temporary directories and failures

class Check:
    def __init__(self, binary):
        self.binary = binary
        self.servers = []
        self.directories = []
        self.failures = []
        self.closed = False  # set when the check is over (or out of time): it may start nothing more

    def serve(self, *extra_args):
        if self.closed:
            raise CheckFailed("the check is over")
        server = Server(self.binary, list(extra_args))
        self.servers.append(server)  # before it can fail to start, so that close() stops it
        if self.closed:
            server.terminate()
            raise CheckFailed("the check is over")
        server.start()
        return server

    def tmpdir(self):
        if self.closed:
            raise CheckFailed("the check is over")
        directory = tempfile.mkdtemp(prefix="hostile-work-", dir="/tmp")
        self.directories.append(directory)
        return directory

    def expect(self, condition, reason):
        if not condition and reason not in self.failures:
            self.failures.append(reason)
        return condition

    def require_alive(self, server, after):
        if not server.alive():
            raise CheckFailed(f"serve died after {after} ({describe_exit(server.process.returncode)})")

    def invariants(self, server, label=""):
        """The shared invariants (see the header). `label` prefixes the failures."""
        prefix = label + ": " if label else ""
        with server.lock:
            responses = list(server.responses)
        for secret_name, secret in server.secrets.items():
            carriers = [what for what, response in responses if secret in response.body]
            self.expect(not carriers, f"{prefix}{len(carriers)} responses carry the bytes of {secret_name}"
                                      f" (first: {carriers[:1]})")
        for what, response in responses:
            if response.status >= 500:  # no check allows a 5xx
                self.expect(False, f"{prefix}{what} answered {response.status}")
                leaked = [text.decode() for text in INTERNALS if text in response.body]
                self.expect(not leaked, f"{prefix}the {response.status} body of {what} shows internals {leaked}")
        if not server.alive():
            self.expect(False, f"{prefix}serve died ({describe_exit(server.process.returncode)})")
            return
        self.expect(server.healthz_seconds() is not None, f"{prefix}/healthz did not answer ok within 1 s")
        limit = server.baseline_fds + FD_SLACK
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            count, deleted, spool = server.fd_count(), server.deleted_fds(), server.spool_files()
            if (count <= limit and not deleted and not spool) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.expect(count <= limit, f"{prefix}{count} open fds after {SETTLE_SECONDS:.0f} s, baseline {server.baseline_fds}"
                                    f" (+{count - server.baseline_fds})")
        self.expect(not deleted, f"{prefix}{len(deleted)} fds on deleted files (e.g. {deleted[:1]})")
        self.expect(not spool, f"{prefix}the spool still holds {len(spool)} files ({sum(s for _, s in spool)} bytes)")

    def close(self):
        """Stops every server (SIGTERM, SIGKILL after 5 s) and removes the temporary directories."""
        self.closed = True
        for server in self.servers:
            server.terminate()
        deadline = time.monotonic() + 5.0
        for server in self.servers:
            server.wait_or_kill(deadline)
            server.final_stderr_tail = server.stderr_tail(20)
            server.final_crash_summary = crash_summary(server.stderr_tail(100000))
        for server in self.servers:
            shutil.rmtree(server.root, ignore_errors=True)
        for directory in self.directories:
            shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# The checks

def any_file_readable(check):
    server = check.serve()
    names = [
        "..%2FK.pem",
        "%2E%2E%2FK.pem",
        "..%2F..%2F..%2F..%2Fetc%2Fhostname",
        "%2Fproc%2Fself%2Fenviron",
        "..%2F..%2F..%2F..%2Fproc%2Fself%2Fenviron",
        "%2Fetc%2Fhostname",
        "..%2FK.pem%00",
        "..%2FK.pem%00" + "0" * 64 + ".cpkg",
        "0" * 64 + ".cpkg%00..%2F..%2FK.pem",
    ]
    wrong = []  # "name -> status" of every answer that is not a 4xx
    for name in names:
        for suffix in ("?alt=media", ""):
            try:
                response = server.raw("GET", BUCKET_OBJECTS + name + suffix, timeout=5)
                if not is_4xx(response):
                    wrong.append(f"{name}{suffix} -> {response.status}")
            except NoResponse as error:
                wrong.append(f"{name}{suffix} -> {error}")
            check.require_alive(server, f"GET {name}{suffix}")
    check.expect(not wrong, f"traversal names not refused with 4xx: {', '.join(wrong)}")

    # Symlinks named like packages, planted in the store: the store must open only regular files it created.
    to_secret, to_zero = os.urandom(32).hex() + ".cpkg", os.urandom(32).hex() + ".cpkg"
    os.symlink(server.secret_path, os.path.join(server.store, to_secret))
    os.symlink("/dev/zero", os.path.join(server.store, to_zero))
    wrong = []
    requests = []  # all four at once, each answered within 5 s
    for label, name in (("symlink to the secret", to_secret), ("symlink to /dev/zero", to_zero)):
        for suffix in ("?alt=media", ""):
            requests.append((f"{label}{suffix}", server.send_request("GET", BUCKET_OBJECTS + name + suffix)))
    deadline = time.monotonic() + 5.0
    for label, sock in requests:
        try:
            response = server.receive_response(sock, f"GET {label}", deadline)
            if not is_4xx(response):
                wrong.append(f"{label} -> {response.status}")
        except NoResponse as error:
            wrong.append(f"{label} -> {error} (5 s)")
        finally:
            sock.close()
    check.expect(not wrong, f"symlinks in the store not refused with 4xx: {', '.join(wrong)}")
    check.invariants(server)


def crash_by_overflow(check):
    """Each of the three attacks on a server of its own, so that every one is seen even if the first kills it. All
    three are sent before any answer is awaited: a crashing Swift process takes seconds to print its backtrace."""
    attacks = []  # (what, server, session, socket with the attack sent)
    for declared in (None, 28160):
        server = check.serve()
        response, session = initiate(server, random_name(), declared)
        if session is None:
            raise CheckFailed(f"initiation answered {response.status}")
        what = f"bytes 0-18446744073709551615/* ({'declared size 28160' if declared else 'no declared size'})"
        headers = {"Content-Range": "bytes 0-18446744073709551615/*"}
        attacks.append((what, server, session, server.send_request("PUT", session.target, headers, b"x" * 16)))

    # Hold 524288 bytes, then re-send the first chunk with a body longer than its range.
    server = check.serve()
    response, session = initiate(server, random_name())
    if session is None:
        raise CheckFailed(f"initiation answered {response.status}")
    for first in (0, CHUNK):
        reply = put(server, session, f"bytes {first}-{first + CHUNK - 1}/*", neutral_bytes(first, CHUNK))
        check.expect(reply is not None and reply.status == 308,
                     f"chunk at {first} answered {reply.status if reply else 'nothing'}, not 308")
    what = "re-sending bytes 0-262143/* with a 524288-byte body after 524288 bytes"
    headers = {"Content-Range": "bytes 0-262143/*"}
    attacks.append((what, server, session, server.send_request("PUT", session.target, headers, os.urandom(2 * CHUNK))))

    deadline = time.monotonic() + 10.0
    for what, server, session, sock in attacks:
        try:
            reply = server.receive_response(sock, f"PUT {what}", deadline)
        except NoResponse:
            reply = None
        finally:
            sock.close()
        if not server.survived(reply):
            check.expect(False, f"serve died after {what} ({describe_exit(server.process.returncode)})")
            continue
        answer = reply.status if reply else "nothing"
        if what.startswith("re-sending"):
            check.expect(reply is not None and 300 <= reply.status < 500, f"{what} answered {answer}")
        else:
            check.expect(is_4xx(reply), f"{what} answered {answer}")
        finish_session(server, session)
        check.invariants(server, what)


def hang_on_device_file(check):
    server = check.serve()
    clients = []
    for suffix in ("?alt=media", ""):
        target = BUCKET_OBJECTS + "..%2F..%2F..%2F..%2Fdev%2Fzero" + suffix
        clients.append((suffix, server.send_request("GET", target)))
    deadline = time.monotonic() + 1.0
    for suffix, sock in clients:
        try:
            response = server.receive_response(sock, f"GET /dev/zero{suffix}", deadline)
            check.expect(is_4xx(response), f"GET ..%2F..%2F..%2F..%2Fdev%2Fzero{suffix} answered {response.status}")
        except NoResponse:
            pass  # no answer within 1 s: the client gives up, as the attacker would
    for _, sock in clients:
        sock.close()
    check.require_alive(server, "the /dev/zero requests")
    check.expect(server.healthz_seconds() is not None, "/healthz did not answer within 1 s after the clients left")
    before = server.cpu_seconds()
    time.sleep(2.0)
    spent = server.cpu_seconds() - before
    check.expect(spent < 0.5, f"serve used {spent:.2f} CPU-seconds in the 2 s after the clients left (still reading /dev/zero)")
    check.invariants(server)


def handles_per_finished_session(check):
    server = check.serve()
    upload_ids, statuses = [], {}
    for _ in range(300):
        response, session = initiate(server, random_name())
        if session is None:
            raise CheckFailed(f"initiation answered {response.status}")
        upload_ids.append(session.upload_id)
        reply = put(server, session, "bytes 0-0/1", b"\x00")
        status = reply.status if reply else "nothing"
        if not is_4xx(reply):
            statuses[status] = statuses.get(status, 0) + 1
    check.expect(not statuses, f"refused 1-byte uploads answered {statuses} instead of 4xx")
    check.expect(len(set(upload_ids)) == len(upload_ids), f"only {len(set(upload_ids))} distinct upload_ids in 300 sessions")
    check.expect(ZERO_UUID not in upload_ids, "a session has the all-zero upload_id")
    check.invariants(server, "after 300 refused 1-byte uploads")

    server = check.serve()  # a fresh one, so that what the 1-byte uploads left behind does not count here
    for _ in range(3):
        size = 8 * MIB + 12345
        data = os.urandom(size)
        response, session = initiate(server, random_name(), declared=size)
        if session is None:
            raise CheckFailed(f"initiation answered {response.status}")
        offset, refused = 0, False
        while offset < size:
            chunk = data[offset:offset + 2 * MIB]
            reply = put_or_refusal(server, session, f"bytes {offset}-{offset + len(chunk) - 1}/{size}", chunk, timeout=30)
            if is_4xx(reply):
                refused = True
                break
            if reply is None or reply.status not in (200, 308):
                break
            offset += len(chunk)
        check.expect(refused, "an 8 MiB upload of random bytes was not refused with a 4xx")
        if not refused:
            finish_session(server, session)
    check.invariants(server, "after 3 refused 8 MiB uploads")


def size_limit_bypass(check):
    server = check.serve("--max-package-mib", "1")
    response, session = initiate(server, random_name())
    if session is None:
        raise CheckFailed(f"initiation answered {response.status}")
    refused_at = None
    most_spooled = 0
    for index in range(8):  # up to 2 MiB
        first = index * CHUNK
        reply = put_or_refusal(server, session, f"bytes {first}-{first + CHUNK - 1}/*", neutral_bytes(first, CHUNK))
        most_spooled = max(most_spooled, server.spool_bytes())
        if reply is not None and reply.status == 413:
            refused_at = first + CHUNK  # what would be held with this chunk
            break
        if reply is None or reply.status != 308:
            check.expect(False, f"chunk at {first} answered {reply.status if reply else 'nothing'}, not 308 or 413")
            break
    if refused_at is None:
        check.expect(False, "no 413 after 2 MiB sent with a 1 MiB limit")
    else:
        check.expect(refused_at <= MIB + CHUNK, f"the 413 came only when {refused_at} bytes would be held")
    check.expect(most_spooled <= MIB, f"the spool held {most_spooled} bytes with a 1 MiB limit")
    if refused_at is None:
        finish_session(server, session)
    check.invariants(server)


def idle_sessions_lock_out(check):
    server = check.serve("--max-sessions", "8")
    idle = []
    for _ in range(8):
        response, session = initiate(server, random_name())
        if session is None:
            raise CheckFailed(f"initiation of an idle session answered {response.status}")
        idle.append(session)
    with open(VALID_PACKAGE, "rb") as f:
        package = f.read()
    response, session = initiate(server, VALID_NAME, declared=len(package))
    if check.expect(session is not None, f"the honest initiation answered {response.status} {response.problem_code()}"
                                         " after 8 idle sessions"):
        reply = put(server, session, f"bytes 0-{len(package) - 1}/{len(package)}", package)
        check.expect(reply is not None and reply.status == 200,
                     f"the honest upload answered {reply.status if reply else 'nothing'}, not 200")
    for session in idle:
        finish_session(server, session)
    check.invariants(server)


def held_slots_lock_out(check):
    """Finding 10 (found by the soak after the first fixes): sessions that took one byte each and went silent held
    every --max-sessions slot until --session-expiry (a day), so an honest upload got 429 with Retry-After: 86394."""
    server = check.serve("--max-sessions", "4", "--idle-timeout", "3")
    squatters = []
    for _ in range(4):
        response, session = initiate(server, random_name())
        if session is None:
            raise CheckFailed(f"initiation of a squatting session answered {response.status}")
        sock = server.send_request("PUT", session.target, {"Content-Length": str(CHUNK),
                                                           "Content-Range": f"bytes 0-{CHUNK - 1}/*"}, b"\0")
        time.sleep(0.3)
        sock.close()
        squatters.append(session)
    time.sleep(4)  # longer than the window (= --idle-timeout): the squatters are quiet now
    with open(VALID_PACKAGE, "rb") as f:
        package = f.read()
    response, session = initiate(server, VALID_NAME, declared=len(package))
    if check.expect(session is not None, f"the honest initiation answered {response.status}"):
        reply = put(server, session, f"bytes 0-{len(package) - 1}/{len(package)}", package)
        check.expect(reply is not None and reply.status == 200,
                     f"the honest upload answered {reply.status if reply else 'nothing'} "
                     f"{reply.problem_code() if reply else ''} (Retry-After {reply.headers.get('retry-after') if reply else None}),"
                     " not 200, with 4 quiet one-byte sessions holding the slots")
    for squatter in squatters:
        finish_session(server, squatter)
    check.invariants(server)


def stalled_heads_lock_out(check):
    """Finding 11 (second review): request heads announcing a body that never comes kept their connections busy, so
    that at --max-connections nothing could connect (not even /healthz) until the idle timeout, again and again."""
    server = check.serve("--max-connections", "20", "--rate-grace", "2")
    held = []
    try:
        for _ in range(20):
            target = BUCKET_UPLOAD + "?" + urllib.parse.urlencode(
                {"uploadType": "resumable", "ifGenerationMatch": "0", "name": random_name()})
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(build_request("POST", target, server.port, {"Content-Length": "65536"}))
            held.append(sock)
        time.sleep(3.5)  # past the grace: a body that never started is cut
        seconds = server.healthz_seconds()
        check.expect(seconds is not None and seconds < 1.0,
                     f"/healthz took {seconds} s with 20 stalled request heads at --max-connections 20")
    finally:
        for sock in held:
            sock.close()
    check.invariants(server)


def shutdown_and_leftovers(check):
    """Finding 12 (second review): SIGTERM waited for requests in progress without a bound (a body trickling above
    the minimum rate kept the process, writing to its spool, for minutes), and spool files that a killed process
    left were never removed. Asserts: SIGTERM ends the process within --shutdown-timeout (2 s) plus 3 s while a body
    is still arriving, leaving the session's bytes in the spool with its journal (a restart takes it up: issue 15); a
    restart on the same store removes `<session>.part` files without a journal (and nothing else); a second process
    on the same store and spool starts and serves beside it (several instances share one store)."""
    server = check.serve("--shutdown-timeout", "2")
    response, session = initiate(server, random_name())
    if session is None:
        raise CheckFailed(f"initiation answered {response.status}")
    sock = server.send_request("PUT", session.target, {"Content-Length": str(4 * CHUNK),
                                                       "Content-Range": f"bytes 0-{4 * CHUNK - 1}/*"}, b"")
    stop = threading.Event()

    def trickle():  # 8 KiB/s: above the minimum rate, far from the end of the body
        sent = 0
        while not stop.is_set() and sent < 4 * CHUNK:
            try:
                sock.sendall(neutral_bytes(sent, 4096))
            except OSError:
                return
            sent += 4096
            time.sleep(0.5)

    worker = threading.Thread(target=trickle, daemon=True)
    worker.start()
    time.sleep(1.5)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=8)
    except subprocess.TimeoutExpired:
        pass
    stop.set()
    sock.close()
    elapsed = time.monotonic() - started
    exited = server.process.poll() is not None
    server.stopped_by_check = True
    check.expect(exited and elapsed <= 5.0, f"SIGTERM with a body still arriving: the process ran {elapsed:.1f} s more"
                                            f" ({'exited' if exited else 'still running'})")
    if not exited:
        return
    journals = sorted(n for n in os.listdir(server.spool) if n.endswith(".session"))
    parts = sorted(n for n, _ in server.spool_files() if n.endswith(".part"))
    check.expect(len(parts) <= 1 and all(p[:-5] + ".session" in journals for p in parts),
                 f"the spool after SIGTERM holds {parts} beside the journals {journals}")
    # What a killed process leaves, then a restart on the same store.
    leftover = os.path.join(server.spool, os.urandom(16).hex() + ".part")
    other = os.path.join(server.spool, "notes.txt")
    for path in (leftover, other):
        with open(path, "wb") as f:
            f.write(b"x" * 1000)
    args = [check.binary, "serve", "--listen", "127.0.0.1:0", "--store", server.store, "--trusted-key", TEST_PUB]
    restarted = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        line = restarted.stdout.readline().decode(errors="replace")
        check.expect(line.startswith("listening on"), f"the restarted serve printed {line!r}")
        check.expect(not os.path.exists(leftover), "a restart left a dead session's spool file in place")
        check.expect(os.path.exists(other), "a restart removed a spool file that was not a session's")
        second = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            line = second.stdout.readline().decode(errors="replace")
            check.expect(line.startswith("listening on"), f"a second serve on the same store printed {line!r}")
        finally:
            second.kill()
            second.wait()
    finally:
        restarted.terminate()
        try:
            restarted.wait(timeout=8)
        except subprocess.TimeoutExpired:
            restarted.kill()
            restarted.wait()


def server_socket_state(server_port, client_port):
    """The TCP state (hex, as in /proc/net/tcp: 01 established) of the server's end of a loopback connection."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
                return state
    return None


def honest_but_slow_or_pipelined(check):
    """Finding 13 (third review), the guards' false positives: a download read slowly but steadily was cut after the
    grace (the channel stayed unwritable although bytes kept leaving), and a PUT pipelined behind a GET counted as
    idle once the GET was answered, so the connection cap evicted the upload while it was arriving."""
    server = check.serve("--max-connections", "2", "--rate-grace", "2", "--idle-timeout", "10")
    name = random_name()
    with open(os.path.join(server.store, name), "wb") as f:
        f.write(os.urandom(4 * MIB))
    reader = server.send_request("GET", f"/storage/v1/b/staging/o/{name}?alt=media", receive_buffer=16384)
    client_port = reader.getsockname()[1]
    got = 0
    start = time.monotonic()
    cut_at = None
    try:
        while time.monotonic() - start < 6.0:  # three graces at about 40 KB/s
            data = reader.recv(4096)
            if not data:
                break
            got += len(data)
            time.sleep(0.1)
            # The kernel buffers megabytes on loopback: the server's end of the connection tells whether it let go.
            if cut_at is None and server_socket_state(server.port, client_port) != "01":
                cut_at = time.monotonic() - start
    except OSError:
        pass
    finally:
        reader.close()
    check.expect(cut_at is None and got > 100_000,
                 f"a download read at about 40 KB/s was cut by the server after {cut_at} s ({got} bytes read)")
    response, session = initiate(server, random_name())
    if session is None:
        raise CheckFailed(f"initiation answered {response.status}")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    put_head = build_request("PUT", session.target, server.port,
                             {"Content-Range": f"bytes 0-{CHUNK - 1}/*", "Content-Length": str(CHUNK)})
    sock.sendall(build_request("GET", "/healthz", server.port) + put_head + neutral_bytes(0, 8192))
    others = []
    try:
        sent = 8192
        time.sleep(0.5)
        for _ in range(2):  # two newcomers at --max-connections 2: an idle connection would be evicted
            others.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            time.sleep(0.3)
        while sent < CHUNK:
            piece = min(16384, CHUNK - sent)
            sock.sendall(neutral_bytes(sent, piece))
            sent += piece
            time.sleep(0.05)
        answers = b""
        while answers.count(b"HTTP/1.1 ") < 2:
            data = sock.recv(65536)
            if not data:
                break
            answers += data
    except OSError as error:
        answers = b"(" + str(error).encode() + b")"
    finally:
        sock.close()
        for other in others:
            other.close()
    check.expect(b"Range: bytes=0-262143" in answers or b"range: bytes=0-262143" in answers.lower(),
                 f"a PUT pipelined behind a GET did not complete: {answers[-200:]!r}")
    finish_session(server, session)
    check.invariants(server)


def media_memory(check):
    work = check.tmpdir()
    episodes = os.path.join(work, "episodes")
    os.makedirs(episodes)
    for index in range(4):
        with open(os.path.join(episodes, f"episode-{index}.bin"), "wb") as f:
            f.write(os.urandom(16 * MIB))
    package = pack(check.binary, episodes, TEST_KEY, os.path.join(work, "out"), "none")
    name = os.path.basename(package)
    server = check.serve()
    upload = subprocess.run(
        [check.binary, "upload", package, "--to", f"http://127.0.0.1:{server.port}", "--outbox", os.path.join(work, "outbox")],
        capture_output=True, timeout=90)
    if upload.returncode != 0:
        raise CheckFailed(f"upload exited {upload.returncode}: {upload.stderr.decode(errors='replace')[-300:]}")

    time.sleep(0.5)
    before = server.rss_bytes()
    clients = []
    for _ in range(4):
        clients.append(server.send_request("GET", BUCKET_OBJECTS + name + "?alt=media", receive_buffer=4096))
    time.sleep(3.0)
    grown = server.rss_bytes() - before
    check.expect(grown < 48 * MIB, f"RSS grew by {grown / MIB:.0f} MiB with 4 clients not reading a 64 MiB object")
    for sock in clients:
        sock.close()
    check.invariants(server)


def decompression_bomb_untrusted_signer(check):
    work = check.tmpdir()
    bomb = os.path.join(work, "bomb")
    os.makedirs(bomb)
    with open(os.path.join(bomb, "episode.bin"), "wb"):
        pass
    os.truncate(os.path.join(bomb, "episode.bin"), 2 << 30)  # 2 GiB of zeros, sparse
    package = pack(check.binary, bomb, SECOND_KEY, os.path.join(work, "out"), "zstd")
    with open(package, "rb") as f:
        data = f.read()

    server = check.serve()  # trusts test-ed25519.pub only
    before = server.cpu_seconds()
    response, session = initiate(server, os.path.basename(package), declared=len(data))
    if session is None:
        raise CheckFailed(f"initiation answered {response.status}")
    reply = put_or_refusal(server, session, f"bytes 0-{len(data) - 1}/{len(data)}", data, timeout=60)
    spent = server.cpu_seconds() - before
    if reply is None:
        check.expect(False, "the upload got no answer within 60 s")
    else:
        check.expect(is_4xx(reply) and reply.problem_code() == "signature.untrusted",
                     f"the refusal is {reply.status} {reply.problem_code()}, not 4xx signature.untrusted")
    check.expect(spent < 0.6, f"serve spent {spent:.2f} CPU-seconds refusing a {len(data)}-byte package by an untrusted signer")
    check.invariants(server)


def low_severity(check):
    def part(letter, condition, reason):
        return check.expect(condition, f"({letter}) {reason}")

    # (a) runs on its own server, beside the others (it takes up to 20 s).
    slow_server = check.serve("--idle-timeout", "5")
    slow_result = {}
    slow = threading.Thread(target=trickled_body_is_closed, args=(slow_server, slow_result), daemon=True)
    slow.start()

    server = check.serve()

    # (b) 3000 idle connections, opened 200 at a time so that the listen backlog (256) does not drop them.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 3000 + 500
    if soft < wanted and (hard == resource.RLIM_INFINITY or hard >= wanted):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    idle = []
    most_fds = 0
    try:
        for _ in range(15):
            for _ in range(200):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", server.port))  # completes in the background; never waited for
                idle.append(sock)
            # Give the server up to 0.5 s to take this batch (a server that refuses more does not slow us down much).
            batch_deadline = time.monotonic() + 0.5
            while server.fd_count() < server.baseline_fds + len(idle) - 20 and time.monotonic() < batch_deadline:
                time.sleep(0.02)
            most_fds = max(most_fds, server.fd_count())
        time.sleep(1.0)
        most_fds = max(most_fds, server.fd_count())
        part("b", most_fds < server.baseline_fds + 1100,
             f"{most_fds} fds with 3000 idle connections open (baseline {server.baseline_fds})")
        part("b", server.healthz_seconds() is not None, "/healthz did not answer within 1 s with 3000 idle connections")
    finally:
        for sock in idle:
            sock.close()

    # (c) 100 KiB of upload metadata.
    metadata = json.dumps({"name": random_name(), "x": "a" * (100 * 1024)}).encode()
    query = "?uploadType=resumable&ifGenerationMatch=0"
    try:
        reply = server.raw("POST", BUCKET_UPLOAD + query, {"Content-Type": "application/json"}, metadata)
        part("c", reply.status in (400, 413), f"100 KiB of metadata answered {reply.status}, not 413 or 400")
    except NoResponse as error:
        part("c", False, f"100 KiB of metadata: {error}")

    # (d) a Host that is not a plain authority.
    open_sessions = []
    for host in ("evil host/?#", "evil/host"):
        target = BUCKET_UPLOAD + query + "&name=" + random_name()
        try:
            reply = server.raw("POST", target, host=host)
        except NoResponse as error:
            part("d", False, f"Host {host!r}: {error}")
            continue
        location = reply.headers.get("location", "")
        if reply.status == 200:
            if session_from(reply, None) is not None:
                open_sessions.append(session_from(reply, None))
            part("d", location.startswith(f"http://127.0.0.1:{server.port}/"),
                 f"Host {host!r} gave Location {location!r}")
        else:
            part("d", reply.status == 400, f"Host {host!r} answered {reply.status}")

    # (e) signs in Content-Range numbers.
    response, session = initiate(server, random_name())
    if part("e", session is not None, f"initiation answered {response.status}"):
        open_sessions.append(session)
        reply = put(server, session, "bytes +0-+9/10", b"0123456789")
        part("e", reply is not None and reply.status == 400,
             f"Content-Range bytes +0-+9/10 answered {reply.status if reply else 'nothing'}, not 400")

    # (f) a status query naming a total below what is held.
    response, session = initiate(server, random_name())
    if part("f", session is not None, f"initiation answered {response.status}"):
        open_sessions.append(session)
        for first in (0, CHUNK):
            reply = put(server, session, f"bytes {first}-{first + CHUNK - 1}/*", neutral_bytes(first, CHUNK))
            part("f", reply is not None and reply.status == 308,
                 f"chunk at {first} answered {reply.status if reply else 'nothing'}, not 308")
        reply = put(server, session, "bytes */100", b"")
        part("f", reply is not None and reply.status == 400,
             f"status query bytes */100 with 524288 held answered {reply.status if reply else 'nothing'}, not 400")
        reply = put(server, session, None, b"")
        part("f", reply is not None and reply.status == 308 and reply.headers.get("range") == "bytes=0-524287",
             f"the next status query answered {reply!r} {reply.headers.get('range') if reply else ''}, "
             "not 308 with Range bytes=0-524287")

    for session in open_sessions:
        finish_session(server, session)
    check.invariants(server, "(b-f)")

    slow.join(30)
    part("a", slow_result.get("closed", False), slow_result.get("reason", "the trickle thread did not finish"))
    check.invariants(slow_server, "(a)")


def trickled_body_is_closed(server, result):
    """(a) of low_severity: a PUT body sent one byte every 3 s must be cut off within 20 s (idle timeout 5 s).
    Sets result["closed"] and result["reason"]."""
    result["closed"] = False
    result["reason"] = "the server kept a PUT trickling one byte every 3 s open for 20 s (idle timeout 5 s)"
    try:
        response, session = initiate(server, random_name())
        if session is None:
            result["reason"] = f"initiation answered {response.status}"
            return
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    except (NoResponse, OSError) as error:
        result["reason"] = f"could not start the trickled PUT: {error}"
        return
    head = build_request("PUT", session.target, server.port,
                         {"Content-Length": str(CHUNK), "Content-Range": f"bytes 0-{CHUNK - 1}/*"})
    start = time.monotonic()
    try:
        send_all(sock, head)
        while time.monotonic() - start < 20:
            if not send_all(sock, b"x"):
                result["closed"] = True
                break
            # Wait up to 3 s for the server to close (or answer and then close), then send the next byte.
            sock.settimeout(3.0)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                result["closed"] = True  # reset
                break
            if not data:
                result["closed"] = True
                break
            if data.startswith(b"HTTP/1.1 4"):
                server.record("trickled PUT", Response(int(data[9:12]), {}, data))
                # A 4xx answer: the connection must then close.
                sock.settimeout(max(0.1, 20 - (time.monotonic() - start)))
                try:
                    while sock.recv(65536):
                        pass
                    result["closed"] = True
                except socket.timeout:
                    result["reason"] = "the server answered the trickled PUT with a 4xx but kept the connection open"
                except OSError:
                    result["closed"] = True
                break
    finally:
        sock.close()
        finish_session(server, session)


# ---------------------------------------------------------------------------------------------------------------
# Single-request uploads (uploadType=media, uploadType=multipart): helpers

BOUNDARY = "hostile-boundary"
MULTIPART_TYPE = f"multipart/related; boundary={BOUNDARY}"
MULTIPART_TARGET = BUCKET_UPLOAD + "?uploadType=multipart"


def media_target(query_name):
    """The media upload target; `query_name` goes into the query as given (percent-encode it yourself)."""
    return BUCKET_UPLOAD + "?uploadType=media&name=" + query_name


def multipart_prefix(metadata, boundary=BOUNDARY):
    """A multipart/related body up to the first byte of the media: the metadata part (a dict, or raw bytes), then
    the media part's headers."""
    if not isinstance(metadata, bytes):
        metadata = json.dumps(metadata).encode()
    b = boundary.encode()
    return (b"--" + b + b"\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n" + metadata
            + b"\r\n--" + b + b"\r\nContent-Type: application/octet-stream\r\n\r\n")


def multipart_close(boundary=BOUNDARY):
    return b"\r\n--" + boundary.encode() + b"--\r\n"


def http_chunk(data):
    """One chunk of a `Transfer-Encoding: chunked` body."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


def stored_objects(server):
    return sorted(name for name in os.listdir(server.store) if name != ".spool")


def wait_for(condition, seconds, step=0.05):
    """Polls `condition` until it holds (True) or `seconds` passed (False)."""
    deadline = time.monotonic() + seconds
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


def wait_closed(sock, deadline):
    """Reads until the server closes the connection (FIN or reset): (True, what arrived), or (False, what arrived)
    when it is still open at `deadline`."""
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False, data
        sock.settimeout(remaining)
        try:
            received = sock.recv(65536)
        except socket.timeout:
            return False, data
        except OSError:
            return True, data
        if not received:
            return True, data
        data += received


def record_raw(server, what, data):
    """Records an answer read by hand (for the shared invariants: no 5xx, no secret)."""
    if data.startswith(b"HTTP/1.1 ") and data[9:12].isdigit():
        server.record(what, Response(int(data[9:12]), {}, data.split(b"\r\n\r\n", 1)[-1]))


def open_upload(server, target, headers, first=b""):
    """Connects, sends a request head (no Content-Length added) and the first body bytes; returns the socket."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(build_request("POST", target, server.port, headers) + first)
    return sock


def post_as_is(server, target, headers, body, timeout=5.0):
    """A POST whose head is exactly `headers` (no Content-Length added: for chunked bodies). Raises NoResponse."""
    try:
        sock = open_upload(server, target, headers)
    except OSError as error:
        raise NoResponse(f"cannot connect: {error}") from None
    try:
        send_all(sock, body)
        return server.receive_response(sock, f"POST {target}", time.monotonic() + timeout)
    finally:
        sock.close()


def send_watching(server, sock, what, pieces, pace=0.002, observe=None):
    """Sends `pieces` one by one, waiting up to `pace` s after each for an answer, and stops at the first answer
    (or when the server no longer takes bytes). Returns (bytes sent, Response or None). `observe` is called after
    each piece (to sample the spool)."""
    sent = 0
    for piece in pieces:
        if not send_all(sock, piece):
            break
        sent += len(piece)
        if observe is not None:
            observe()
        readable, _, _ = select.select([sock], [], [], pace)
        if readable:
            break
    try:
        return sent, server.receive_response(sock, what, time.monotonic() + 5)
    except NoResponse:
        return sent, None


def describe(response):
    return f"{response.status} {response.problem_code()}" if response is not None else "no answer"


# ---------------------------------------------------------------------------------------------------------------
# Single-request uploads: the checks

def single_request_abandoned(check):
    """Check 14: single-request uploads whose client leaves or stalls give back their spool file, descriptors,
    verifier thread and slot."""
    server = check.serve("--rate-grace", "2")
    first = neutral_bytes(0, 1000)  # below --min-body-rate (1 KiB/s) once the grace is over
    started = time.monotonic()
    stalled = [
        ("stalled media upload", open_upload(server, media_target(random_name()), {"Content-Length": str(MIB)}, first)),
        ("stalled chunked media upload",
         open_upload(server, media_target(random_name()), {"Transfer-Encoding": "chunked"}, http_chunk(first))),
        ("stalled multipart upload",
         open_upload(server, MULTIPART_TARGET, {"Content-Type": MULTIPART_TYPE, "Content-Length": str(MIB)},
                     multipart_prefix({"name": random_name()}) + first)),
    ]
    try:
        check.expect(wait_for(lambda: len(server.spool_files()) >= len(stalled), 1.5),
                     f"{len(stalled)} stalled single-request uploads hold {len(server.spool_files())} spool files"
                     " (each should hold one while its body arrives)")

        prefix = multipart_prefix({"name": random_name()})
        leavers = [
            # label, target, headers, body sent before leaving, reset instead of FIN, holds a spool file by then
            ("media upload left after 1 MiB of 4 MiB", media_target(random_name()),
             {"Content-Length": str(4 * MIB)}, neutral_bytes(0, MIB), False, True),
            ("media upload reset after 1 MiB of 4 MiB", media_target(random_name()),
             {"Content-Length": str(4 * MIB)}, neutral_bytes(0, MIB), True, True),
            ("chunked media upload left in the middle of a chunk", media_target(random_name()),
             {"Transfer-Encoding": "chunked"}, http_chunk(neutral_bytes(0, MIB)) + b"10000\r\n" + neutral_bytes(MIB, 100),
             False, True),
            ("multipart upload left in the middle of the media", MULTIPART_TARGET,
             {"Content-Type": MULTIPART_TYPE, "Content-Length": str(4 * MIB)}, prefix + neutral_bytes(0, MIB), False, True),
            ("multipart upload left in the middle of the metadata", MULTIPART_TARGET,
             {"Content-Type": MULTIPART_TYPE, "Content-Length": str(4 * MIB)}, prefix[:60], False, False),
        ]
        def spool_names():
            return {name for name, _ in server.spool_files()}

        for label, target, headers, body, reset, holds in leavers:
            before = spool_names()
            sock = open_upload(server, target, headers)
            send_all(sock, body)
            if holds:
                check.expect(wait_for(lambda: spool_names() - before, 2.0),
                             f"{label}: no spool file appeared while the body arrived")
            else:
                time.sleep(0.3)
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            check.expect(wait_for(lambda: not (spool_names() - before), 3.0),
                         f"{label}: the spool still holds {sorted(spool_names() - before)} 3 s after the client left")
            check.require_alive(server, label)
            check.expect(server.healthz_seconds() is not None, f"{label}: /healthz did not answer within 1 s after")

        # The stalled ones: cut by the minimum body rate (--rate-grace 2), without the client doing anything.
        for label, sock in stalled:
            closed, data = wait_closed(sock, started + 8.0)
            record_raw(server, label, data)
            check.expect(closed, f"the {label} (1000 bytes, then nothing) was still open after"
                                 f" {time.monotonic() - started:.1f} s with --rate-grace 2")
    finally:
        for _, sock in stalled:
            sock.close()
    check.invariants(server)


def single_request_too_large(check):
    """Check 15: the size limit on single-request uploads, declared or streamed (--max-package-mib 1)."""
    server = check.serve("--max-package-mib", "1")
    limit = MIB

    # (a) A declared Content-Length over the limit is refused from the head alone: no body byte is sent.
    for label, target, headers in (
            ("media, Content-Length limit + 1", media_target(random_name()), {"Content-Length": str(limit + 1)}),
            ("media, Content-Length 2^64 - 1", media_target(random_name()), {"Content-Length": str(2 ** 64 - 1)}),
            ("multipart, Content-Length limit + 80 KiB + 1", MULTIPART_TARGET,
             {"Content-Type": MULTIPART_TYPE, "Content-Length": str(limit + 80 * 1024 + 1)})):
        sock = server.send_request("POST", target, headers)
        try:
            try:
                reply = server.receive_response(sock, f"POST {label}", time.monotonic() + 3)
            except NoResponse as error:
                reply = None
                check.expect(False, f"{label}, no body sent: no answer within 3 s ({error})")
            if reply is not None:
                check.expect(reply.status == 413 and reply.problem_code() == "upload.too_large",
                             f"{label}, no body sent: answered {describe(reply)}, not 413 upload.too_large")
                closed, _ = wait_closed(sock, time.monotonic() + 3)
                check.expect(closed, f"{label}: the connection stayed open after the 413")
        finally:
            sock.close()

    # (b-e) Bodies that keep going past the limit.
    streamed = [
        ("chunked media upload of 3 MiB", media_target(random_name()), {"Transfer-Encoding": "chunked"},
         [http_chunk(neutral_bytes(i * 65536, 65536)) for i in range(48)]),
        ("chunked media upload in one chunk announcing 1 TiB", media_target(random_name()),
         {"Transfer-Encoding": "chunked"}, [b"10000000000\r\n"] + [neutral_bytes(i * 65536, 65536) for i in range(48)]),
        ("chunked multipart upload of 3 MiB of media", MULTIPART_TARGET,
         {"Content-Type": MULTIPART_TYPE, "Transfer-Encoding": "chunked"},
         [http_chunk(multipart_prefix({"name": random_name()}))]
         + [http_chunk(neutral_bytes(i * 65536, 65536)) for i in range(48)]),
    ]
    # A Content-Length within the multipart framing allowance (limit + 80 KiB) whose media alone is over the limit.
    prefix = multipart_prefix({"name": random_name()})
    media = neutral_bytes(0, limit + 60 * 1024)
    body = prefix + media + multipart_close()
    streamed.append(("multipart upload with limit + 60 KiB of media in the framing allowance", MULTIPART_TARGET,
                     {"Content-Type": MULTIPART_TYPE, "Content-Length": str(len(body))},
                     [body[i:i + 65536] for i in range(0, len(body), 65536)]))
    for label, target, headers, pieces in streamed:
        most = [0]

        def observe():
            most[0] = max(most[0], server.spool_bytes())

        sock = open_upload(server, target, headers)
        try:
            sent, reply = send_watching(server, sock, f"POST {label}", pieces, observe=observe)
            allowed = ("upload.too_large", "upload.chunk_short") if "1 TiB" in label else ("upload.too_large",)
            check.expect(reply is not None and reply.status in (400, 413) and reply.problem_code() in allowed,
                         f"{label}: answered {describe(reply)} after {sent} bytes sent, not 413 upload.too_large")
            check.expect(most[0] <= limit, f"{label}: the spool held {most[0]} bytes with a limit of {limit}")
            if reply is not None:
                closed, _ = wait_closed(sock, time.monotonic() + 3)
                check.expect(closed, f"{label}: the connection stayed open after the {reply.status}")
        finally:
            sock.close()
        check.require_alive(server, label)
    check.expect(stored_objects(server) == [], f"the store holds {stored_objects(server)} after refused uploads")
    check.invariants(server)


class RSSSampler:
    """The largest RSS of a process, sampled every 20 ms while it runs."""

    def __init__(self, server):
        self.server = server
        self.most = server.rss_bytes()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                self.most = max(self.most, self.server.rss_bytes())
            except OSError:
                return
            time.sleep(0.02)

    def finish(self):
        self.stop.set()
        self.thread.join(2)
        return self.most


def multipart_hostile_framing(check):
    """Check 16: multipart/related framing built to cost the parser time or memory, or to slip a body past it."""
    server = check.serve()
    with open(VALID_PACKAGE, "rb") as f:
        package = f.read()
    good_metadata = {"name": VALID_NAME}
    server.raw("POST", MULTIPART_TARGET, {"Content-Type": MULTIPART_TYPE},
               multipart_prefix({"name": random_name()}) + b"x" + multipart_close())  # warm up
    baseline_rss = server.rss_bytes()
    sampler = RSSSampler(server)
    try:
        # (a) Boundary search bombs: media made of near-delimiters. Each must cost about what plain media costs.
        boundary = "b" * 70
        content_type = f'multipart/related; boundary="{boundary}"'
        size = 4 * MIB
        header = neutral_bytes(0, 512)  # the verifier waits for a 12 MiB envelope: the parser sees every byte
        bombs = [
            ("plain media", b" "),
            ("CRLF--<69 of 70 boundary chars>, repeated", b"\r\n--" + boundary[:69].encode()),
            ("CR, repeated", b"\r"),
            ("CRLF-, repeated", b"\r\n-"),
            ("CRLF--<k of 70 boundary chars> for k = 0..69, repeated",
             b"".join(b"\r\n--" + boundary[:k].encode() for k in range(70))),
        ]
        costs = {}
        for label, unit in bombs:
            media = header + (unit * (size // len(unit) + 1))[:size]
            body = multipart_prefix({"name": random_name()}, boundary) + media + multipart_close(boundary)
            before, start = server.cpu_seconds(), time.monotonic()
            try:
                reply = server.raw("POST", MULTIPART_TARGET, {"Content-Type": content_type}, body, timeout=20)
            except NoResponse as error:
                reply = None
                check.expect(False, f"boundary bomb {label}: {error}")
            costs[label] = (server.cpu_seconds() - before, time.monotonic() - start)
            check.require_alive(server, f"boundary bomb {label}")
            if reply is not None:
                check.expect(is_4xx(reply), f"boundary bomb {label}: answered {describe(reply)}, not a 4xx")
        plain_cpu = costs.get("plain media", (0.0, 0.0))[0]
        for label, (cpu, wall) in costs.items():
            check.expect(cpu <= 3 * plain_cpu + 0.5 and wall < 10,
                         f"boundary bomb {label}: {cpu:.2f} CPU-s, {wall:.1f} s for 4 MiB (plain media:"
                         f" {plain_cpu:.2f} CPU-s): not linear")

        # (b) Header blocks of 1 MiB without an empty line, 4 at a time: 400 upload.multipart_invalid, quickly.
        line = b"X-Pad: " + b"a" * 77 + b"\r\n"
        blocks = [
            ("a 1 MiB metadata header line", b"--" + BOUNDARY.encode() + b"\r\nX-Pad: " + b"a" * MIB),
            ("1 MiB of metadata header lines", b"--" + BOUNDARY.encode() + b"\r\n" + line * (MIB // len(line))),
            ("1 MiB of transport padding after the first delimiter", b"--" + BOUNDARY.encode() + b" " * MIB),
            ("1 MiB of media header lines",
             multipart_prefix(good_metadata)[:-len(b"Content-Type: application/octet-stream\r\n\r\n")]
             + line * (MIB // len(line))),
        ]
        for label, body in blocks:
            start = time.monotonic()
            sockets = [server.send_request("POST", MULTIPART_TARGET, {"Content-Type": MULTIPART_TYPE}, body)
                       for _ in range(4)]
            for sock in sockets:
                try:
                    reply = server.receive_response(sock, f"POST {label}", start + 5)
                    check.expect(reply.status == 400 and reply.problem_code() == "upload.multipart_invalid",
                                 f"{label}: answered {describe(reply)}, not 400 upload.multipart_invalid")
                except NoResponse as error:
                    check.expect(False, f"{label}: {error}")
                finally:
                    sock.close()
            elapsed = time.monotonic() - start
            check.expect(elapsed < 2.0, f"{label}: 4 refusals took {elapsed:.1f} s")

        # (c) Metadata of 10 MiB (with a Content-Length, and chunked): 413 upload.metadata_too_large.
        big = b'{"name": "' + VALID_NAME.encode() + b'", "x": "' + b"a" * (10 * MIB) + b'"}'
        body = multipart_prefix(big) + package + multipart_close()
        for label, headers, data in (
                ("10 MiB of metadata", {"Content-Type": MULTIPART_TYPE}, body),
                ("10 MiB of metadata, chunked", {"Content-Type": MULTIPART_TYPE, "Transfer-Encoding": "chunked"},
                 http_chunk(body) + b"0\r\n\r\n")):
            start = time.monotonic()
            try:
                if "Transfer-Encoding" not in headers:
                    headers = dict(headers, **{"Content-Length": str(len(data))})
                reply = post_as_is(server, MULTIPART_TARGET, headers, data)
                check.expect(reply.status == 413 and reply.problem_code() == "upload.metadata_too_large",
                             f"{label}: answered {describe(reply)}, not 413 upload.metadata_too_large")
            except NoResponse as error:
                check.expect(False, f"{label}: {error}")
            check.expect(time.monotonic() - start < 3.0, f"{label}: the refusal took {time.monotonic() - start:.1f} s")
    finally:
        grown = sampler.finish() - baseline_rss
    check.expect(grown < 50 * MIB, f"RSS grew by {grown / MIB:.0f} MiB under the framing attacks")

    # (d) Framings that wrap a valid package (VALID_NAME) but break the grammar: 400, and nothing stored. A parser
    # that is lenient here would store the package.
    close = multipart_close()
    good = multipart_prefix(good_metadata) + package
    lf_only = good.replace(b"\r\n", b"\n")
    malformed = [
        ("a third part", {}, good + b"\r\n--" + BOUNDARY.encode() + b"\r\nContent-Type: text/plain\r\n\r\nx" + close),
        ("no closing delimiter (Content-Length)", {}, good),
        ("no closing delimiter (chunked)", {"Transfer-Encoding": "chunked"}, http_chunk(good) + b"0\r\n\r\n"),
        ("a preamble", {}, b"preamble\r\n" + good + close),
        ("LF line ends", {}, lf_only + b"\n--" + BOUNDARY.encode() + b"--"),
        ("the delimiter followed by other bytes in the media", {},
         good + b"\r\n--" + BOUNDARY.encode() + b"xyz" + package + close),
        ("an epilogue of 1 MiB", {}, good + close + b"e" * MIB),
        ("a text/plain metadata part", {}, good.replace(b"application/json", b"text/plain", 1) + close),
        ("two Content-Types in the metadata part", {},
         good.replace(b"charset=UTF-8\r\n", b"charset=UTF-8\r\nContent-Type: application/json\r\n", 1) + close),
        ("a folded header line", {}, good.replace(b"charset=UTF-8\r\n", b"charset=UTF-8\r\n X-Folded: 1\r\n", 1) + close),
        ("a base64 Content-Transfer-Encoding on the media", {},
         good.replace(b"octet-stream\r\n", b"octet-stream\r\nContent-Transfer-Encoding: base64\r\n", 1) + close),
        ("the delimiter in a bare-LF form inside the media", {},
         multipart_prefix(good_metadata) + package[:512] + b"\n--" + BOUNDARY.encode() + b"--\r\n"),
    ]
    for label, extra, body in malformed:
        headers = dict({"Content-Type": MULTIPART_TYPE}, **(extra or {"Content-Length": str(len(body))}))
        try:
            reply = post_as_is(server, MULTIPART_TARGET, headers, body)
            check.expect(reply.status == 400 and reply.problem_code() == "upload.multipart_invalid",
                         f"multipart with {label}: answered {describe(reply)}, not 400 upload.multipart_invalid")
        except NoResponse as error:
            check.expect(False, f"multipart with {label}: {error}")
        check.require_alive(server, f"multipart with {label}")
    # No closing delimiter, and the client half-closes before its Content-Length.
    sock = server.send_request("POST", MULTIPART_TARGET,
                               {"Content-Type": MULTIPART_TYPE, "Content-Length": str(len(good) + len(close))}, good)
    try:
        sock.shutdown(socket.SHUT_WR)
        try:
            reply = server.receive_response(sock, "POST multipart cut before its close", time.monotonic() + 5)
            check.expect(is_4xx(reply), f"multipart cut before its close delimiter (EOF): answered {describe(reply)}")
        except NoResponse:
            pass  # the service may just close: the client left
    finally:
        sock.close()
    # Well framed, but the declared checksums are of other bytes: 400 upload.checksum_mismatch.
    for label, metadata in (("md5Hash", {"name": VALID_NAME, "md5Hash": "1B2M2Y8AsgTpgAmY7PhCfg=="}),
                            ("crc32c", {"name": VALID_NAME, "crc32c": "AAAAAA=="})):
        try:
            reply = server.raw("POST", MULTIPART_TARGET, {"Content-Type": MULTIPART_TYPE},
                               multipart_prefix(metadata) + package + close, timeout=5)
            check.expect(reply.status == 400 and reply.problem_code() == "upload.checksum_mismatch",
                         f"a valid package with a wrong declared {label}: answered {describe(reply)},"
                         " not 400 upload.checksum_mismatch")
        except NoResponse as error:
            check.expect(False, f"a valid package with a wrong declared {label}: {error}")
    check.expect(stored_objects(server) == [], f"malformed multipart bodies stored {stored_objects(server)}")
    # The control: the same package, well framed, is accepted (so that the refusals above are the framing's).
    reply = server.raw("POST", MULTIPART_TARGET, {"Content-Type": MULTIPART_TYPE}, good + close, timeout=10)
    check.expect(reply.status == 200, f"the well-framed control upload answered {describe(reply)}, not 200")
    check.invariants(server)


def single_request_traversal_names(check):
    """Check 17: object names that try to leave the store, in the media query, the multipart metadata or both,
    with a valid package as the body."""
    server = check.serve()
    with open(VALID_PACKAGE, "rb") as f:
        package = f.read()

    def outside():
        """Everything under the server's root except the store and the logs, and /etc/passwd: (path, size, mtime)."""
        seen = []
        for directory, _, names in os.walk(server.root):
            if directory.startswith(server.store):
                continue
            for name in names:
                path = os.path.join(directory, name)
                if path in (server.stdout_path, server.stderr_path):
                    continue
                st = os.lstat(path)
                seen.append((path, st.st_size, st.st_mtime_ns))
        st = os.stat("/etc/passwd")
        seen.append(("/etc/passwd", st.st_size, st.st_mtime_ns))
        return sorted(seen)

    # Names that land outside the store if joined: relative to STORE, ROOT is .., /tmp is ../..
    tmp_probes = [os.path.join(os.path.dirname(server.root), name) for name in ("etc", "x", VALID_NAME)]
    tmp_before = {path: os.path.lexists(path) for path in tmp_probes}
    before = outside()
    names = ["../../etc/passwd", "%2e%2e/x", "%2e%2e%2f" + VALID_NAME, "../K.pem", "../" + VALID_NAME,
             "../../" + VALID_NAME, ".spool/../../" + VALID_NAME, "./" + VALID_NAME, "/tmp/" + VALID_NAME,
             VALID_NAME + "/", VALID_NAME + "\0../x", VALID_NAME.upper().replace(".CPKG", ".cpkg"), ""]
    wrong = []
    for name in names:
        encoded = urllib.parse.quote(name, safe="")
        attempts = [
            ("media, name in the query (encoded)", media_target(encoded), {}, package),
            ("multipart, name in the metadata", MULTIPART_TARGET, {"Content-Type": MULTIPART_TYPE},
             multipart_prefix({"name": name}) + package + multipart_close()),
            ("multipart, the same name in query and metadata", MULTIPART_TARGET + "&name=" + encoded,
             {"Content-Type": MULTIPART_TYPE}, multipart_prefix({"name": name}) + package + multipart_close()),
            ("multipart, a valid query name and this metadata name", MULTIPART_TARGET + "&name=" + VALID_NAME,
             {"Content-Type": MULTIPART_TYPE}, multipart_prefix({"name": name}) + package + multipart_close()),
            ("multipart, this query name and a valid metadata name", MULTIPART_TARGET + "&name=" + encoded,
             {"Content-Type": MULTIPART_TYPE}, multipart_prefix({"name": VALID_NAME}) + package + multipart_close()),
        ]
        if "%" in name:  # also as sent raw (the service decodes it once)
            attempts.append(("media, name in the query (raw)", media_target(name.replace("/", "%2F")), {}, package))
        for mode, target, headers, body in attempts:
            try:
                reply = server.raw("POST", target, headers, body, timeout=5)
                if not is_4xx(reply):
                    wrong.append(f"{name!r} ({mode}) -> {describe(reply)}")
            except NoResponse as error:
                wrong.append(f"{name!r} ({mode}) -> {error}")
            check.require_alive(server, f"name {name!r} ({mode})")
    # Two valid names that disagree, a valid package under another package's name, repeated query parameters.
    other = random_name()
    mp = {"Content-Type": MULTIPART_TYPE}
    traversal = urllib.parse.quote("../K.pem", safe="")
    for label, target, headers, body, code in (
            ("query and metadata naming different packages", MULTIPART_TARGET + "&name=" + VALID_NAME, mp,
             multipart_prefix({"name": other}) + package + multipart_close(), None),
            ("a valid package under another package's name (media)", media_target(other), {}, package,
             "upload.object_name_mismatch"),
            ("a valid package under another package's name (multipart)", MULTIPART_TARGET, mp,
             multipart_prefix({"name": other}) + package + multipart_close(), "upload.object_name_mismatch"),
            ("name twice in the query, the traversal second", media_target(VALID_NAME) + "&name=" + traversal, {},
             package, "request.query_invalid"),
            ("name twice in the query, the traversal first", media_target(traversal) + "&name=" + VALID_NAME, {},
             package, "request.query_invalid"),
            ("uploadType twice (multipart, then media)", MULTIPART_TARGET + "&uploadType=media&name=" + VALID_NAME, mp,
             package, "request.query_invalid")):
        try:
            reply = server.raw("POST", target, headers, body, timeout=5)
            if not is_4xx(reply) or (code is not None and reply.problem_code() != code):
                wrong.append(f"{label} -> {describe(reply)}{'' if code is None else ', not ' + code}")
        except NoResponse as error:
            wrong.append(f"{label} -> {error}")
    # A metadata name that is not a string.
    for value in (["../K.pem"], {"a": 1}, 7, None):
        try:
            reply = server.raw("POST", MULTIPART_TARGET, {"Content-Type": MULTIPART_TYPE},
                               multipart_prefix({"name": value}) + package + multipart_close(), timeout=5)
            if not is_4xx(reply):
                wrong.append(f"metadata name {value!r} -> {describe(reply)}")
        except NoResponse as error:
            wrong.append(f"metadata name {value!r} -> {error}")
    check.expect(not wrong, f"names not refused with 4xx: {'; '.join(wrong[:6])}")
    after = outside()
    check.expect(before == after, f"files outside the store changed: {sorted(set(after) ^ set(before))[:4]}")
    changed = [path for path in tmp_probes if os.path.lexists(path) != tmp_before[path]]
    check.expect(not changed, f"files appeared beside the server's directory: {changed}")
    check.expect(stored_objects(server) == [], f"the store holds {stored_objects(server)} after traversal names")
    check.invariants(server)


def single_request_fail_fast(check):
    """Check 18: a package by an untrusted signer, with 32 MiB of archive behind its envelope, is refused while the
    client is still sending (media and multipart, at once), and the connection is then closed."""
    work = check.tmpdir()
    source = os.path.join(work, "episodes")
    os.makedirs(source)
    with open(os.path.join(source, "episode.bin"), "wb"):
        pass
    os.truncate(os.path.join(source, "episode.bin"), 32 * MIB)  # zeros, sparse
    path = pack(check.binary, source, SECOND_KEY, os.path.join(work, "out"), "none")
    name = os.path.basename(path)
    size = os.path.getsize(path)
    server = check.serve()  # trusts test-ed25519.pub only
    piece = 65536
    prefix = multipart_prefix({"name": name})
    attacks = [
        ("media", media_target(name), {"Content-Length": str(size)}, b""),
        ("multipart", MULTIPART_TARGET,
         {"Content-Type": MULTIPART_TYPE, "Content-Length": str(len(prefix) + size + len(multipart_close()))}, prefix),
    ]
    results = {}

    def attack(label, target, headers, first):
        result = results.setdefault(label, {})
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, piece)
        try:
            sock.settimeout(5)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(build_request("POST", target, server.port, headers) + first)
            with open(path, "rb") as f:
                pieces = iter(lambda: f.read(piece), b"")
                result["sent"], result["reply"] = send_watching(server, sock, f"POST {label} untrusted", pieces)
                if result["reply"] is None:
                    return
                closed, _ = wait_closed(sock, time.monotonic() + 3)
                result["half_closed"] = closed
                # Keep sending the rest: the service discards it for a moment, then closes for good.
                start = time.monotonic()
                result["still_taking"] = True
                while time.monotonic() - start < 5:
                    try:
                        sock.sendall(f.read(piece) or b"\0" * piece)
                    except OSError:
                        result["still_taking"] = False
                        break
                    time.sleep(0.05)
        except OSError as error:
            result["error"] = str(error)
        finally:
            sock.close()

    threads = [threading.Thread(target=attack, args=a, daemon=True) for a in attacks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for label, _, _, _ in attacks:
        result = results.get(label, {})
        reply, sent = result.get("reply"), result.get("sent", 0)
        if "error" in result:
            check.expect(False, f"{label}: {result['error']}")
        check.expect(reply is not None and reply.status == 422 and reply.problem_code() == "signature.untrusted",
                     f"{label}: an untrusted {size}-byte package answered {describe(reply)}, not 422 signature.untrusted")
        if reply is None:
            continue
        check.expect(sent < size // 2, f"{label}: the refusal came only after {sent} of {size} bytes were sent"
                                       " (not fail-fast)")
        check.expect(reply.headers.get("connection", "").lower() == "close", f"{label}: the 422 lacks Connection: close")
        check.expect(result.get("half_closed", False), f"{label}: the connection was not closed after the 422")
        check.expect(not result.get("still_taking", True),
                     f"{label}: the service still took the rest of the body 5 s after its refusal")
    check.expect(stored_objects(server) == [], f"the store holds {stored_objects(server)}")
    check.invariants(server)


def single_request_slots(check):
    """Check 19: single-request uploads that stall after their first bytes, more than --max-sessions."""
    server = check.serve("--max-sessions", "4", "--rate-grace", "2")
    first = neutral_bytes(0, 1000)

    def squatter(kind):
        if kind == "media":
            return open_upload(server, media_target(random_name()), {"Content-Length": str(MIB)}, first)
        return open_upload(server, MULTIPART_TARGET, {"Content-Type": MULTIPART_TYPE, "Content-Length": str(MIB)},
                           multipart_prefix({"name": random_name()}) + first)

    started = time.monotonic()
    squatters = [squatter(kind) for kind in ("media", "multipart", "media", "multipart")]
    newcomers = []
    most = 0
    try:
        check.expect(wait_for(lambda: len(server.spool_files()) >= 4, 1.5),
                     f"4 stalled uploads hold {len(server.spool_files())} spool files, not 4")
        newcomers = [squatter(kind) for kind in ("media", "multipart", "media", "multipart")]
        for index, sock in enumerate(newcomers):
            most = max(most, len(server.spool_files()))
            try:
                reply = server.receive_response(sock, "POST newcomer", time.monotonic() + 2)
            except NoResponse as error:
                check.expect(False, f"newcomer {index} at --max-sessions 4: {error}")
                continue
            check.expect(reply.status == 429 and reply.problem_code() == "upload.too_many_sessions",
                         f"newcomer {index} at --max-sessions 4 answered {describe(reply)}, not 429"
                         " upload.too_many_sessions")
            check.expect("retry-after" in reply.headers, f"newcomer {index}: the 429 has no Retry-After")
            closed, _ = wait_closed(sock, time.monotonic() + 3)
            check.expect(closed, f"newcomer {index}: the connection stayed open after the 429")
        most = max(most, len(server.spool_files()))
        check.expect(most <= 4, f"the spool held {most} files at --max-sessions 4")
        # The squatters are cut by the minimum body rate, with nothing from their clients.
        for index, sock in enumerate(squatters):
            closed, data = wait_closed(sock, started + 8.0)
            record_raw(server, f"squatter {index}", data)
            check.expect(closed, f"squatter {index} (1000 bytes, then nothing) was not cut within 8 s (--rate-grace 2)")
        check.expect(wait_for(lambda: not server.spool_files(), 3.0),
                     f"the spool still holds {len(server.spool_files())} files after the squatters were cut")
        # Their slots are free again: an honest upload goes through.
        with open(VALID_PACKAGE, "rb") as f:
            package = f.read()
        reply = server.raw("POST", media_target(VALID_NAME), {}, package)
        check.expect(reply.status == 200, f"an honest media upload after the squatters were cut answered {describe(reply)}")
    finally:
        for sock in squatters + newcomers:
            sock.close()
    check.invariants(server)


def content_type_parameter_bomb(check):
    """Check 20: the multipart request's Content-Type is parsed before anything else, and its duplicate-parameter
    test compares every parameter with every earlier one: about 13,000 short distinct parameters (the most that fit
    the HTTP layer's ~80 KiB head) cost seconds of CPU per request. Asserts that such a header costs at most 3x a
    header of the same length with one long parameter (+0.2 CPU-s), and that /healthz answers within 1 s while two
    are being parsed (of half as many parameters)."""
    server = check.serve()
    names = (a + b + c for a in "abcdefghijklmnopqrstuvwxyz" for b in "abcdefghijklmnopqrstuvwxyz0123456789"
             for c in "abcdefghijklmnopqrstuvwxyz0123456789")
    parameters = []
    length = 0
    for name in names:
        if length + len(name) + 3 > 79000:
            break
        parameters.append(name + "=1;")
        length += len(name) + 3
    bomb = "multipart/related;" + "".join(parameters) + "boundary=x"
    plain = "multipart/related; x=" + "a" * (len(bomb) - 35) + "; boundary=x"
    costs = {}
    for label, content_type in (("one long parameter", plain), (f"{len(parameters)} parameters", bomb)):
        before = server.cpu_seconds()
        try:
            reply = server.raw("POST", MULTIPART_TARGET, {"Content-Type": content_type}, b"--x\r\n", timeout=40)
            check.expect(is_4xx(reply), f"a {len(content_type)}-byte Content-Type with {label}: answered {describe(reply)}")
        except NoResponse as error:
            check.expect(False, f"a {len(content_type)}-byte Content-Type with {label}: {error}")
        costs[label] = server.cpu_seconds() - before
        check.require_alive(server, f"a Content-Type with {label}")
    plain_cpu, bomb_cpu = costs["one long parameter"], costs[f"{len(parameters)} parameters"]
    check.expect(bomb_cpu <= 3 * plain_cpu + 0.2,
                 f"a {len(bomb)}-byte Content-Type of {len(parameters)} parameters cost {bomb_cpu:.2f} CPU-s"
                 f" (one long parameter: {plain_cpu:.2f}): quadratic (MediaType's duplicate-parameter test)")
    # Half as many parameters (a quarter of the cost) are enough to starve /healthz, two at a time on two cores.
    smaller = "multipart/related;" + "".join(parameters[:len(parameters) // 2]) + "boundary=x"
    sockets = [server.send_request("POST", MULTIPART_TARGET, {"Content-Type": smaller}, b"--x\r\n") for _ in range(2)]
    try:
        time.sleep(0.3)
        check.expect(server.healthz_seconds() is not None,
                     f"/healthz did not answer within 1 s while two Content-Types of {len(parameters) // 2} parameters"
                     " were parsed")
        for sock in sockets:  # let them end before the shared invariants
            try:
                server.receive_response(sock, "POST parameter bomb", time.monotonic() + 40)
            except NoResponse:
                pass
    finally:
        for sock in sockets:
            sock.close()
    check.invariants(server)


def single_request_shutdown(check):
    """Check 21: SIGTERM while single-request bodies are still arriving (above the minimum rate) ends the process
    within --shutdown-timeout (2 s) plus 3 s and leaves an empty spool."""
    server = check.serve("--shutdown-timeout", "2")
    uploads = [
        open_upload(server, media_target(random_name()), {"Content-Length": str(4 * MIB)}),
        open_upload(server, MULTIPART_TARGET, {"Content-Type": MULTIPART_TYPE, "Content-Length": str(4 * MIB)},
                    multipart_prefix({"name": random_name()})),
    ]
    stop = threading.Event()

    def trickle(sock):  # 8 KiB/s: above the minimum rate, far from the end of the body
        sent = 0
        while not stop.is_set() and sent < 2 * MIB:
            if not send_all(sock, neutral_bytes(sent, 4096)):
                return
            sent += 4096
            time.sleep(0.5)

    workers = [threading.Thread(target=trickle, args=(sock,), daemon=True) for sock in uploads]
    for worker in workers:
        worker.start()
    try:
        check.expect(wait_for(lambda: len(server.spool_files()) >= 2, 2.0),
                     f"two trickling single-request uploads hold {len(server.spool_files())} spool files, not 2")
        time.sleep(0.5)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=8)
        except subprocess.TimeoutExpired:
            pass
        elapsed = time.monotonic() - started
        exited = server.process.poll() is not None
        server.stopped_by_check = True
        check.expect(exited and elapsed <= 5.0,
                     f"SIGTERM with single-request bodies still arriving: the process ran {elapsed:.1f} s more"
                     f" ({'exited' if exited else 'still running'})")
        if exited:
            left = sorted(n for n in os.listdir(server.spool) if n != ".lock")
            check.expect(left == [], f"the spool after SIGTERM holds {left} (single-request uploads cannot be resumed)")
    finally:
        stop.set()
        for sock in uploads:
            sock.close()


CHECKS = [
    # number, function, wall-clock budget in seconds
    (1, any_file_readable, 45),
    (2, crash_by_overflow, 30),
    (3, hang_on_device_file, 30),
    (4, handles_per_finished_session, 90),
    (5, size_limit_bypass, 30),
    (6, idle_sessions_lock_out, 30),
    (7, media_memory, 90),
    (8, decompression_bomb_untrusted_signer, 120),
    (9, low_severity, 75),
    (10, held_slots_lock_out, 45),
    (11, stalled_heads_lock_out, 45),
    (12, shutdown_and_leftovers, 60),
    (13, honest_but_slow_or_pipelined, 45),
    (14, single_request_abandoned, 30),
    (15, single_request_too_large, 30),
    (16, multipart_hostile_framing, 60),
    (17, single_request_traversal_names, 30),
    (18, single_request_fail_fast, 45),
    (19, single_request_slots, 30),
    (20, content_type_parameter_bomb, 60),
    (21, single_request_shutdown, 30),
]


def run_check(binary, function, budget):
    check = Check(binary)

    def body():
        try:
            function(check)
        except CheckFailed as error:
            check.failures.insert(0, str(error))
        except NoResponse as error:
            check.failures.insert(0, f"no response: {error}")
        except Exception as error:  # a bug here or a server that vanished; either way the check failed
            check.failures.insert(0, f"{type(error).__name__}: {error}")

    start = time.monotonic()
    worker = threading.Thread(target=body, daemon=True)
    worker.start()
    worker.join(budget)
    timed_out = worker.is_alive()
    check.close()
    elapsed = time.monotonic() - start
    failures = list(check.failures)
    if timed_out:
        failures.insert(0, f"exceeded its {budget} s budget")
    dead = [server for server in check.servers if server.died_on_its_own is not None]
    for server in dead:
        crash = f": {server.final_crash_summary}" if server.final_crash_summary else ""
        failures.append(f"serve on port {server.port} died ({describe_exit(server.died_on_its_own)}{crash})")
    if failures:
        print(f"FAIL {function.__name__}: {'; '.join(failures)} ({elapsed:.1f} s)", flush=True)
        for server in dead:
            print(f"    last 20 lines of the stderr of serve on port {server.port}:", flush=True)
            for line in server.final_stderr_tail.splitlines():
                print("    | " + line, flush=True)
        return False
    print(f"PASS {function.__name__} ({elapsed:.1f} s)", flush=True)
    return True


def main():
    parser = argparse.ArgumentParser(description="Hostile-HTTP regression suite for continuon-pack serve.")
    parser.add_argument("--binary", help="the continuon-pack executable")
    parser.add_argument("--only", help="check numbers to run, e.g. 1,4")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    args = parser.parse_args()
    if args.list:
        for number, function, _ in CHECKS:
            print(f"{number} {function.__name__}")
        return 0
    if not args.binary:
        parser.error("--binary is required")
    binary = os.path.abspath(args.binary)
    selected = CHECKS
    if args.only:
        wanted = {int(n) for n in args.only.split(",") if n.strip()}
        selected = [entry for entry in CHECKS if entry[0] in wanted]
        if not selected:
            parser.error(f"no check numbered {args.only}; see --list")
    start = time.monotonic()
    results = [run_check(binary, function, budget) for _, function, budget in selected]
    print(f"{results.count(True)} passed, {results.count(False)} failed in {time.monotonic() - start:.1f} s", flush=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
