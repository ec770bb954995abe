#!/usr/bin/env python3
"""Reference verifier for continuon-pack signed episode packages (format v1).

This is an independent re-implementation written from docs/signed-ingestion.md
ONLY (never from the Swift sources), to show that the written specification is
complete enough for another team to build a verifier that reaches the same
verdict and the same error codes.

Usage:
    python3 Tests/peers/reference_verify.py PKG --trusted-key PUB.pem
            [--trusted-key ...] [--threshold N]
    python3 Tests/peers/reference_verify.py PKG --trust-policy POLICY.json
            [--trust-root ROOT.pem ...] [--root-threshold R]
            [--previous-policy OLD.json] [--threshold N]

Prints one JSON object on stdout:
    {"valid": bool, "package_id": str|null, "key_ids": [...], "errors": [...],
     "checks": {check: "held"|"failed"|"not_checked"},
     "ignored_key_ids": [...],
     "signatures": [{keyid, trusted, verified, status}]}
A refused trust policy (section 14, trust.* codes) prints instead
    {"valid": false, "policy_error": CODE, "errors": [CODE], "package_id": null, "key_ids": []}
Exit status: 0 valid, 1 invalid, 2 usage or I/O error (error code io.error) or a
refused trust policy.

Dependencies: Python 3.11 standard library, `cryptography`, and the `zstd`
command line tool for .tar.zst archives. Both tar layers are parsed by the
strict streaming parser below (the `tarfile` module is deliberately not used),
JSON by the strict parser below (document order decides which error is first),
nothing is extracted and nothing is written to disk.

Section numbers in comments refer to docs/signed-ingestion.md. Where the
specification leaves a choice open, the choice is marked "CHOICE:".
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import json.decoder
import os
import re
import subprocess
import sys
import threading
import time
import unicodedata
import zlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# --------------------------------------------------------------------------
# Constants from the specification
# --------------------------------------------------------------------------

ENVELOPE_NAME = b"manifest.dsse.json"
ARCHIVE_NAMES = {b"episodes.tar": "none", b"episodes.tar.gz": "gzip", b"episodes.tar.zst": "zstd"}
COMPRESSION_NAMES = {"none": "episodes.tar", "gzip": "episodes.tar.gz", "zstd": "episodes.tar.zst"}
SCHEMA = "continuon.episode-package/v1"
PAYLOAD_TYPE = "application/vnd.continuon.episode-manifest+json"

MAX_ENVELOPE = 16 * 1024 * 1024          # section 9
MAX_DEPTH = 16
MAX_SIGNATURES = 16
MAX_BLOBS = 1_000_000
MAX_BLOB_SIZE = 1 << 40                  # 1 TiB
MAX_TOTAL_SIZE = 4 << 40                 # 4 TiB
MAX_JSON_INT = (1 << 53) - 1

MAX_PAX_HEADER = 8192                    # section 6: pax records, at most 8192 bytes in all
MAX_TRAILING = 10240                     # section 6: bytes allowed after the end-of-archive marker
BOMB_PER_BLOB = 3584                     # section 9: header + pax header + padding per blob
BOMB_FIXED = 1024 + 10240                # section 9: end-of-archive marker + trailing zeros
ZSTD_MEMORY = "-M128MB"                  # section 6: zstd window at most 128 MiB

# Section 14: trust policies
POLICY_SCHEMA = "continuon.trust-policy/v1"
POLICY_PAYLOAD_TYPE = "application/vnd.continuon.trust-policy+json"
MAX_POLICY_VALUES = 4_000_000                 # 14.1: JSON values in a policy file
MAX_SIGNED_POLICY_BYTES = 96 * 1024 * 1024  # 14.2: a signed policy file
MAX_POLICY_BYTES = 64 * 1024 * 1024      # 14.1: at most 64 MiB
MAX_POLICY_KEYS = 100_000
MAX_KEY_PATTERNS = 256
MAX_TEXT_BYTES = 1024                    # revoked.reason (1..1024), comment (0..1024)

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
CHUNK = 64 * 1024

IDENTIFIER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:@-]{0,127}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
TIMESTAMP_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")
OCTAL_FIELD_RE = re.compile(rb" *([0-7]+)[ \0]*")
DECIMAL_RE = re.compile(rb"[0-9]{1,20}")       # section 6: decimal digits, leading zeros allowed

PATTERN_RE = re.compile(r"[A-Za-z0-9._+:@*-]{1,128}")   # 14.1; only validated by regex, never matched by one

CHECKS = ["package.structure", "envelope", "signature", "manifest", "package_id", "archive", "blobs"]


class UsageError(Exception):
    """Bad command line or unusable trusted key (exit 2)."""


class Stop(Exception):
    """Verification stops here (section 7): checks not yet done report nothing."""


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

class Report:
    """Collects error codes, per-check status and verified key IDs."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.checks: dict[str, str] = {name: "held" for name in CHECKS}
        self.key_ids: set[str] = set()
        self.ignored_key_ids: list[str] = []
        self.signatures: list[dict] = []
        self.package_id: str | None = None
        self.done: set[str] = set()       # checks that ran before a structure failure (their status stays)

    def fail(self, check: str, code: str) -> None:
        if code not in self.errors:
            self.errors.append(code)
        self.checks[check] = "failed"

    def not_checked(self, *checks: str) -> None:
        """Mark checks that could not run (a check that already failed stays failed)."""
        for check in checks:
            if self.checks[check] == "held":
                self.checks[check] = "not_checked"

    def stop_after(self, check: str) -> None:
        """Everything after `check` in section 7's order that has not run is not checked."""
        self.not_checked(*(c for c in CHECKS[CHECKS.index(check) + 1:] if c not in self.done))

    def drop_blob_codes(self) -> None:
        """Section 7.1: after a structure failure no blob code stays (which blobs were read can depend on
        buffering); the blobs check is then not checked."""
        self.errors = [code for code in self.errors if not code.startswith("blob.")]
        self.checks["blobs"] = "not_checked"

    @property
    def valid(self) -> bool:
        return not self.errors and all(v == "held" for v in self.checks.values())

    def as_json(self) -> dict:
        return {
            "valid": self.valid,
            "package_id": self.package_id,
            "key_ids": sorted(self.key_ids),
            "errors": self.errors,
            "checks": self.checks,
            "ignored_key_ids": self.ignored_key_ids,
            "signatures": self.signatures,
        }


# --------------------------------------------------------------------------
# Strict JSON (sections 4 and 5)
# --------------------------------------------------------------------------

class JsonError(Exception):
    """The first JSON-level error in document order: kind is 'invalid', 'duplicate' or 'depth'."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class BadNumber:
    """A JSON number that is not a plain non-negative integer up to 2^53 - 1."""

    def __init__(self, text: str) -> None:
        self.text = text


_WS_RE = re.compile(r"[ \t\n\r]*")
_NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_PLAIN_INT_RE = re.compile(r"0|[1-9][0-9]{0,15}")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _ws(text: str, pos: int) -> int:
    return _WS_RE.match(text, pos).end()


def _json_string(text: str, pos: int) -> tuple[str, int]:
    """A string token starting at text[pos] == '"'. Invalid UTF-8 in the input
    (decoded with surrogateescape) and unpaired surrogate escapes both show up
    as lone surrogates, which are invalid (section 4)."""
    try:
        value, end = json.decoder.scanstring(text, pos + 1, True)
    except ValueError:
        raise JsonError("invalid") from None
    if _SURROGATE_RE.search(value):
        raise JsonError("invalid")
    return value, end


def _json_key(text: str, pos: int, obj: dict) -> tuple[str, int]:
    if text[pos:pos + 1] != '"':
        raise JsonError("invalid")
    key, pos = _json_string(text, pos)
    if key in obj:
        raise JsonError("duplicate")
    pos = _ws(text, pos)
    if text[pos:pos + 1] != ":":
        raise JsonError("invalid")
    return key, _ws(text, pos + 1)


def parse_json(data: bytes, max_values: int | None = None):
    """RFC 8259 with the rules of section 4: no duplicate keys, depth <= 16,
    valid UTF-8, no lone surrogates. Numbers that are not plain integers up to
    2^53 - 1 become BadNumber (a type error for the caller). Raises JsonError
    for the first error in document order. Iterative: no recursion limit."""
    # Invalid UTF-8 becomes lone surrogates: inside a string _json_string
    # refuses them, outside one they are an unexpected character (in order).
    text = data.decode("utf-8", "surrogateescape")
    stack: list[list] = []              # open containers: [container, current key]
    pos = _ws(text, 0)
    values = 0
    while True:
        # ---- one value at pos ----
        values += 1
        if max_values is not None and values > max_values:
            raise JsonError("too_many_values")
        c = text[pos:pos + 1]
        if c == "{" or c == "[":
            if len(stack) >= MAX_DEPTH:
                raise JsonError("depth")
            pos = _ws(text, pos + 1)
            if c == "{":
                if text[pos:pos + 1] == "}":
                    value, pos = {}, pos + 1
                else:
                    obj: dict = {}
                    key, pos = _json_key(text, pos, obj)
                    stack.append([obj, key])
                    continue
            else:
                if text[pos:pos + 1] == "]":
                    value, pos = [], pos + 1
                else:
                    stack.append([[], None])
                    continue
        elif c == '"':
            value, pos = _json_string(text, pos)
        elif c and c in "-0123456789":
            match = _NUMBER_RE.match(text, pos)
            if not match:
                raise JsonError("invalid")
            raw, pos = match.group(), match.end()
            if _PLAIN_INT_RE.fullmatch(raw) and int(raw) <= MAX_JSON_INT:
                value = int(raw)
            else:
                value = BadNumber(raw)
        elif text.startswith("true", pos):
            value, pos = True, pos + 4
        elif text.startswith("false", pos):
            value, pos = False, pos + 5
        elif text.startswith("null", pos):
            value, pos = None, pos + 4
        else:
            raise JsonError("invalid")
        # ---- attach it to its container; close containers as far as possible ----
        while True:
            if not stack:
                if _ws(text, pos) != len(text):
                    raise JsonError("invalid")
                return value
            top = stack[-1]
            container = top[0]
            if isinstance(container, dict):
                container[top[1]] = value
            else:
                container.append(value)
            pos = _ws(text, pos)
            sep = text[pos:pos + 1]
            if sep == ",":
                pos = _ws(text, pos + 1)
                if isinstance(container, dict):
                    top[1], pos = _json_key(text, pos, container)
                break
            if sep == ("}" if isinstance(container, dict) else "]"):
                pos += 1
                stack.pop()
                value = container
                continue
            raise JsonError("invalid")


def is_json_int(value) -> bool:
    return type(value) is int and 0 <= value <= MAX_JSON_INT


def is_str(value) -> bool:
    return type(value) is str


# --------------------------------------------------------------------------
# Section 2: identifiers, paths, digests, timestamps
# --------------------------------------------------------------------------

def is_identifier(value: str) -> bool:
    return IDENTIFIER_RE.fullmatch(value) is not None


def is_hex64(value: str) -> bool:
    return HEX64_RE.fullmatch(value) is not None


def is_timestamp(value: str) -> bool:
    match = TIMESTAMP_RE.fullmatch(value)
    if not match:
        return False
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    return (1 <= month <= 12 and 1 <= day <= days[month - 1]
            and hour <= 23 and minute <= 59 and second <= 59)


def is_valid_path(raw: bytes) -> bool:
    """Section 2, rules 1-6, on the path bytes."""
    if not 1 <= len(raw) <= 1024 or raw.startswith(b"/") or b"\\" in raw:
        return False
    try:
        text = raw.decode("utf-8")      # strict: no overlong forms, no surrogates
    except UnicodeDecodeError:
        return False
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text):
        return False
    if any(seg in ("", ".", "..") for seg in text.split("/")):
        return False
    return unicodedata.is_normalized("NFC", text)


def collision_key(value: str) -> str:
    # Section 2: each code point's default lowercase mapping on its own (no context rule such as Final_Sigma,
    # which str.lower() applies to a whole string), then NFC.
    return unicodedata.normalize("NFC", "".join(c.lower() for c in value))


# --------------------------------------------------------------------------
# Byte sources for the tar parser
# --------------------------------------------------------------------------

class LimitExceeded(Exception):
    """The decompressed archive grew past the section 9 limit. `partial` holds
    the bytes of the failed read that were still within the limit, so that the
    caller can check the tar rules on them first."""

    def __init__(self, partial: bytes = b"") -> None:
        super().__init__("decompressed archive exceeds the limit")
        self.partial = partial


class DecompressError(Exception):
    """The compressed stream is not in its format, damaged or truncated."""


class FileSource:
    """Bytes [start, end) of a seekable file; skip() seeks."""

    def __init__(self, f, start: int, end: int) -> None:
        self.f, self.pos, self.end = f, start, end
        f.seek(start)

    def read(self, n: int) -> bytes:
        n = max(0, min(n, self.end - self.pos))
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> bool:
        if self.pos + n > self.end:
            return False
        self.pos += n
        self.f.seek(self.pos)
        return True

    def tell(self) -> int:
        return self.pos


class StreamSource:
    """Bytes from an iterator of chunks, counted against a limit (section 9):
    a read that would hand out the first byte past the limit raises
    LimitExceeded instead (with the bytes before the limit); a read may come
    back short only at the end of the stream."""

    def __init__(self, chunks, limit: int) -> None:
        self.chunks = iter(chunks)
        self.buf = bytearray()
        self.consumed = 0
        self.limit = limit
        self.eof = False

    def _fill(self, n: int) -> None:
        while len(self.buf) < n and not self.eof:
            chunk = next(self.chunks, None)
            if chunk is None:
                self.eof = True
            else:
                self.buf += chunk

    def _take(self, n: int) -> bytes:
        data = bytes(self.buf[:n])
        del self.buf[:n]
        self.consumed += len(data)
        return data

    def read(self, n: int) -> bytes:
        if self.consumed + n > self.limit:
            allowed = self.limit - self.consumed
            self._fill(allowed + 1)
            if len(self.buf) > allowed:
                raise LimitExceeded(self._take(allowed))
        self._fill(n)
        return self._take(n)

    def skip(self, n: int) -> bool:
        while n > 0:
            data = self.read(min(n, CHUNK))
            if not data:
                return False
            n -= len(data)
        return True

    def tell(self) -> None:
        return None


# --------------------------------------------------------------------------
# Section 6: strict streaming ustar/pax parser (both layers)
# --------------------------------------------------------------------------

CORRUPT, TRAILING = "corrupt", "trailing"


class TarFault(Exception):
    """A tar rule broken in a way that is not about one member: kind CORRUPT
    (bad header, bad pax header, non-zero padding, truncated) or TRAILING
    (data after the end-of-archive marker)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass
class Member:
    """One member as described by its (pax-extended) header. `fault` is None for
    a plain regular file with normalized metadata, else 'member_type' or 'metadata'."""

    name: bytes
    size: int
    fault: str | None
    offset: int | None = None     # data offset when the source is a file


def parse_octal(raw: bytes) -> int | None:
    """Section 6: octal digits, optionally preceded by spaces and followed by NUL
    or space padding. Empty fields and base-256 numbers are refused (None)."""
    match = OCTAL_FIELD_RE.fullmatch(raw)
    return int(match.group(1), 8) if match else None


def cstring(raw: bytes) -> bytes:
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def checksum_ok(block: bytes) -> bool:
    stored = parse_octal(block[148:156])
    return stored is not None and stored == sum(block[:148]) + 8 * 0x20 + sum(block[156:])


NUMERIC_FIELDS = {"mode": (100, 108), "uid": (108, 116), "gid": (116, 124), "size": (124, 136),
                  "mtime": (136, 148)}


def numeric_field_problem(block: bytes) -> str | None:
    """The first numeric field of a header that breaks section 6's syntax, or None."""
    for key, (a, b) in NUMERIC_FIELDS.items():
        if parse_octal(block[a:b]) is None:
            return key
    for key, (a, b) in (("devmajor", (329, 337)), ("devminor", (337, 345))):
        raw = block[a:b]
        if raw.strip(b"\0 ") and parse_octal(raw) is None:
            return key
    return None


def parse_header(block: bytes) -> dict:
    """Checksum, magic, version and numeric fields of one header (section 6)."""
    if not checksum_ok(block):
        raise TarFault(CORRUPT, "header checksum mismatch")
    if block[257:263] != b"ustar\0" or block[263:265] != b"00":
        raise TarFault(CORRUPT, "not a POSIX ustar header")
    typeflag = block[156:157]
    # Section 6: every header's numeric fields, pax headers' included, are
    # octal numbers (their values on a pax header are not interpreted);
    # devmajor and devminor may also be blank (all NUL or spaces).
    problem = numeric_field_problem(block)
    if problem:
        raise TarFault(CORRUPT, f"bad numeric field {problem}")
    hdr = {key: parse_octal(block[a:b]) for key, (a, b) in NUMERIC_FIELDS.items()}
    name, prefix = cstring(block[0:100]), cstring(block[345:500])
    hdr["name"] = prefix + b"/" + name if prefix else name
    hdr["typeflag"] = typeflag
    hdr["normalized"] = typeflag != b"x" and (
        hdr["mode"] & 0o7777 == 0o644 and hdr["uid"] == 0 and hdr["gid"] == 0
        and hdr["mtime"] == 0 and block[265:297] == bytes(32) and block[297:329] == bytes(32)
        and block[157:257] == bytes(100))
    return hdr


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """Well-formed '%d %s=%s\\n' records, each key at most once (section 6)."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 21)
        if space < 0 or not DECIMAL_RE.fullmatch(data[pos:space]):
            raise TarFault(CORRUPT, "bad pax record length")
        end = pos + int(data[pos:space])
        if end > len(data) or end <= space + 1 or data[end - 1] != 0x0A:
            raise TarFault(CORRUPT, "bad pax record framing")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq or not key:
            raise TarFault(CORRUPT, "bad pax record")
        if key in records:
            raise TarFault(CORRUPT, "repeated pax record")
        records[key] = value
        pos = end
    return records


def pad_len(size: int) -> int:
    return -size % BLOCK


def nonzero(data: bytes) -> bool:
    return data.count(0) != len(data)


class TarReader:
    """Pull parser over a byte source. members() yields Member objects; the
    caller may read a member's data with read_data() before asking for the next.
    Raises TarFault, and whatever the source raises (LimitExceeded,
    DecompressError). Stops when the caller stops iterating."""

    def __init__(self, src) -> None:
        self.src = src
        self.pending = 0          # unread data bytes of the current member
        self.padding = 0

    def read_data(self, n: int) -> bytes:
        n = min(n, self.pending)
        data = self.src.read(n)
        if len(data) != n:
            raise TarFault(CORRUPT, "member data truncated")
        self.pending -= n
        return data

    def _zero_bytes(self, n: int, kind: str) -> int:
        """Read up to n bytes that must be zero (a non-zero byte is `kind`);
        returns how many were read. Bytes before a limit overrun are checked first."""
        try:
            data = self.src.read(n)
        except LimitExceeded as exc:
            if nonzero(exc.partial):
                raise TarFault(kind, "non-zero bytes") from None
            raise
        if nonzero(data):
            raise TarFault(kind, "non-zero bytes")
        return len(data)

    def _finish_member(self) -> None:
        if self.pending and not self.src.skip(self.pending):
            raise TarFault(CORRUPT, "member data truncated")
        self.pending = 0
        if self.padding and self._zero_bytes(self.padding, CORRUPT) != self.padding:
            raise TarFault(CORRUPT, "member padding truncated")
        self.padding = 0

    def _read_pax(self, size: int) -> dict[bytes, bytes]:
        if size > MAX_PAX_HEADER:
            raise TarFault(CORRUPT, "pax header larger than 8192 bytes")
        data = self.src.read(size)
        if len(data) != size:
            raise TarFault(CORRUPT, "pax header truncated")
        self.padding = pad_len(size)
        self._finish_member()
        return parse_pax(data)

    def _end_of_archive(self) -> None:
        """After a first zero block: the second one, then at most 10240 zero bytes."""
        try:
            second = self.src.read(BLOCK)
        except LimitExceeded as exc:
            if nonzero(exc.partial):
                raise TarFault(TRAILING, "data after a lone zero block") from None
            raise
        # Section 6: fewer than 512 bytes after a lone zero block is a truncated marker, whatever they hold.
        if len(second) < BLOCK:
            raise TarFault(CORRUPT, "end-of-archive marker truncated")
        if nonzero(second):
            raise TarFault(TRAILING, "data after a lone zero block")
        after = 0
        while True:
            n = self._zero_bytes(min(CHUNK, MAX_TRAILING + 1 - after), TRAILING)
            if n == 0:
                return
            after += n
            if after > MAX_TRAILING:
                raise TarFault(TRAILING, "more than 10240 bytes after the end-of-archive marker")

    def members(self):
        pax: dict[bytes, bytes] | None = None
        while True:
            self._finish_member()
            block = self.src.read(BLOCK)
            if len(block) < BLOCK:
                raise TarFault(CORRUPT, "archive ends before the end-of-archive marker")
            if block == ZERO_BLOCK:
                if pax is not None:
                    raise TarFault(CORRUPT, "pax header followed by the end-of-archive marker")
                self._end_of_archive()
                return
            hdr = parse_header(block)
            if hdr["typeflag"] == b"x" and pax is None:
                pax = self._read_pax(hdr["size"])
                # Section 6: a pax header's records are judged when it is read: a record other than path and
                # size is a metadata error there (whatever the member after it is); a bad size value is corrupt.
                if any(key not in (b"path", b"size") for key in pax):
                    yield Member(hdr["name"], 0, "metadata")
                    return
                if b"size" in pax and not DECIMAL_RE.fullmatch(pax[b"size"]):
                    raise TarFault(CORRUPT, "bad pax size")
                continue
            if hdr["typeflag"] == b"x":
                # CHOICE: a second pax header in a row breaks "preceded at most
                # by one pax extended header" (the member-types rule).
                yield Member(hdr["name"], hdr["size"], "member_type")
                return
            yield self._member(hdr, pax or {})
            pax = None

    def _member(self, hdr: dict, pax: dict[bytes, bytes]) -> Member:
        name, size, normalized = hdr["name"], hdr["size"], hdr["normalized"]
        if hdr["typeflag"] not in (b"0", b"\0"):
            # Section 6: the member's type is judged before its pax path extends its name.
            self.pending, self.padding = size, pad_len(size)
            return Member(name, size, "member_type", self.src.tell())
        for key, value in pax.items():
            if key == b"path":
                if not value.startswith(name):
                    raise TarFault(CORRUPT, "ustar name is not a prefix of the pax path")
                name = value
            elif key == b"size":
                if not DECIMAL_RE.fullmatch(value):
                    raise TarFault(CORRUPT, "bad pax size")
                size = int(value)
            else:
                normalized = False        # xattrs, sparse maps, linkpath, mtime, ...
        if hdr["typeflag"] not in (b"0", b"\0"):
            fault = "member_type"
        elif not normalized:
            fault = "metadata"
        else:
            fault = None
        self.pending, self.padding = size, pad_len(size)
        return Member(name, size, fault, self.src.tell())


# --------------------------------------------------------------------------
# Section 5: envelope, base64, PAE, key IDs, signatures
# --------------------------------------------------------------------------

def canonical_b64decode(text: str) -> bytes | None:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == text else None


def pae(payload_type: str, payload: bytes) -> bytes:
    ptype = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(payload), payload)


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    text = '{"keytype":"ed25519","keyval":{"public":"%s"},"scheme":"ed25519"}' % raw.hex()
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass
class Envelope:
    payload_type: str
    payload: bytes
    signatures: list[tuple[str, bytes]] = field(default_factory=list)


def check_envelope(data: bytes, report: Report) -> Envelope | None:
    """Section 5. Returns None when the envelope is unusable (section 7 step 2:
    signatures and manifest are then not checked). A wrong payloadType is
    reported and the envelope stays usable."""
    fail = lambda code: report.fail("envelope", code)
    try:
        obj = parse_json(data)
    except JsonError as exc:
        fail({"invalid": "envelope.json_invalid", "duplicate": "envelope.duplicate_key",
              "depth": "envelope.shape"}[exc.kind])
        return None
    # CHOICE: shape errors make the envelope unusable and are reported alone
    # (as for the manifest); base64 errors of payload and of every sig are all
    # reported, together with a wrong payloadType.
    if not envelope_shape_ok(obj):
        fail("envelope.shape")
        return None
    if obj["payloadType"] != PAYLOAD_TYPE:
        fail("envelope.payload_type")
    env = decode_envelope(obj)
    if env is None:
        fail("envelope.base64_invalid")
        return None
    return env


def envelope_shape_ok(obj) -> bool:
    """Section 5 shape: exactly payload, payloadType, signatures; at most 16
    signatures of exactly the string members keyid and sig."""
    sigs = obj.get("signatures") if isinstance(obj, dict) else None
    return not (not isinstance(obj, dict) or set(obj) != {"payload", "payloadType", "signatures"}
                or not is_str(obj["payload"]) or not is_str(obj["payloadType"])
                or not isinstance(sigs, list) or len(sigs) > MAX_SIGNATURES
                or any(not isinstance(e, dict) or set(e) != {"keyid", "sig"}
                       or not is_str(e["keyid"]) or not is_str(e["sig"]) for e in sigs))


def decode_envelope(obj: dict) -> Envelope | None:
    """The base64 of a well-shaped envelope; None when any of it is not canonical."""
    payload = canonical_b64decode(obj["payload"])
    decoded = [(e["keyid"], canonical_b64decode(e["sig"])) for e in obj["signatures"]]
    if payload is None or any(sig is None for _, sig in decoded):
        return None
    return Envelope(obj["payloadType"], payload, decoded)


def verifies(key: Ed25519PublicKey, sig: bytes, message: bytes) -> bool:
    """Pure Ed25519 (section 5); pyca/cryptography rejects S >= L."""
    if len(sig) != 64:
        return False
    try:
        key.verify(sig, message)
    except InvalidSignature:
        return False
    return True


def check_signatures(env: Envelope, policy: "Policy", threshold: int,
                     manifest_obj: dict | None, report: Report) -> None:
    """Section 7 step 3 with the rules of section 14.3 (which are those of
    section 5 for the policy that a list of trusted keys makes).
    `manifest_obj` is the manifest when its shape decoded, else None (E and C
    unknown: steps 4 to 6 of 14.3 are skipped)."""
    fail = lambda code: report.fail("signature", code)
    if not env.signatures:
        fail("signature.missing")
        return
    message = pae(env.payload_type, env.payload)
    if manifest_obj is not None:
        env_id = manifest_obj["provenance"]["environment_id"]
        created = manifest_obj["created_at"]
    statuses = []
    for kid, sig in env.signatures:
        key = policy.keys.get(kid)
        entry = {"keyid": kid, "trusted": key is not None, "verified": False}
        report.signatures.append(entry)
        if key is None:
            report.ignored_key_ids.append(kid)
            status = "untrusted"
        else:
            # 14.3: "verified" is checked for revoked keys too.
            entry["verified"] = verifies(key.public(), sig, message)
            if key.revoked:
                status = "signature.key_revoked"
            elif not entry["verified"]:
                status = "signature.invalid"
            # CHOICE: when the shape decoded but created_at / environment_id
            # are bad values (manifest.created_at_invalid), steps 4 and 5 still
            # run on the text as written; an environment_id that is not an
            # identifier is matched only by patterns of "*" alone (14.3, step 6).
            elif manifest_obj is not None and key.not_before is not None \
                    and created < key.not_before:
                status = "signature.key_not_yet_valid"
            elif manifest_obj is not None and key.not_after is not None \
                    and created > key.not_after:
                status = "signature.key_expired"
            elif manifest_obj is not None and not (
                    any(set(p) == {"*"} for p in key.environments) if not is_identifier(env_id)
                    else any(pattern_matches(p, env_id) for p in key.environments)):
                status = "signature.environment_not_allowed"
            else:
                status = "counted"
                report.key_ids.add(kid)
        entry["status"] = status
        statuses.append(status)
    if "signature.invalid" in statuses:                   # always, even when the threshold is met
        fail("signature.invalid")
    if len(report.key_ids) < threshold:
        report.checks["signature"] = "failed"
        for code in ("signature.key_revoked", "signature.key_not_yet_valid",
                     "signature.key_expired", "signature.environment_not_allowed"):
            if code in statuses:
                fail(code)
        if threshold == 1:
            if all(st == "untrusted" for st in statuses):
                fail("signature.untrusted")
        else:
            fail("signature.threshold_not_met")


# --------------------------------------------------------------------------
# Section 4: the manifest
# --------------------------------------------------------------------------

@dataclass
class Blob:
    path: str
    raw: bytes
    size: int
    sha256: str


@dataclass
class Manifest:
    obj: dict
    blobs: list[Blob]


class ShapeError(Exception):
    """A manifest shape error (section 7 step 4): reported alone, manifest unusable."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _members(obj, required: tuple, optional_strings: bool = False) -> None:
    """An object with exactly `required` members (or more string members when
    optional_strings, as in provenance)."""
    if not isinstance(obj, dict):
        raise ShapeError("manifest.field_invalid")
    if any(name not in obj for name in required):
        raise ShapeError("manifest.field_invalid")
    extra = [k for k in obj if k not in required]
    if extra and not optional_strings:
        raise ShapeError("manifest.unknown_field")
    if any(not is_str(obj[k]) for k in extra):
        raise ShapeError("manifest.field_invalid")


def _typed(obj: dict, types: dict) -> None:
    for name, check in types.items():
        if not check(obj[name]):
            raise ShapeError("manifest.field_invalid")


def check_manifest_shape(payload: bytes) -> Manifest:
    """Shape errors, in a fixed order; the first one raises ShapeError.
    The order is section 7.4's: JSON (document order: syntax, duplicate key,
    nesting), not an object, the first unknown top-level member, then top level
    (schema, members, types), provenance, archive, blob count, then each blob
    entry in order."""
    try:
        obj = parse_json(payload)
    except JsonError as exc:
        raise ShapeError({"invalid": "manifest.json_invalid", "duplicate": "manifest.duplicate_key",
                          "depth": "manifest.limit_exceeded"}[exc.kind]) from None
    if not isinstance(obj, dict):
        raise ShapeError("manifest.field_invalid")
    # Section 7.4's order: not an object; the first unknown top-level member; `schema`; …
    if any(k not in ("schema", "package_id", "created_at", "provenance", "archive", "blobs") for k in obj):
        raise ShapeError("manifest.unknown_field")
    if "schema" in obj and is_str(obj["schema"]) and obj["schema"] != SCHEMA:
        raise ShapeError("manifest.schema")
    _members(obj, ("schema", "package_id", "created_at", "provenance", "archive", "blobs"))
    _typed(obj, {"schema": is_str, "package_id": is_str, "created_at": is_str,
                 "provenance": lambda v: isinstance(v, dict), "archive": lambda v: isinstance(v, dict),
                 "blobs": lambda v: isinstance(v, list)})
    prov = obj["provenance"]
    _members(prov, ("brain_runtime_version", "ai_app_version", "environment_id"), True)
    _typed(prov, {"brain_runtime_version": is_str, "ai_app_version": is_str,
                  "environment_id": is_str})
    _members(obj["archive"], ("name", "compression", "size", "sha256"))
    _typed(obj["archive"], {"name": is_str, "compression": is_str, "size": is_json_int,
                            "sha256": is_str})
    if obj["archive"]["compression"] not in COMPRESSION_NAMES:
        raise ShapeError("manifest.field_invalid")
    if len(obj["blobs"]) > MAX_BLOBS:
        raise ShapeError("manifest.limit_exceeded")
    blobs = []
    for entry in obj["blobs"]:
        _members(entry, ("path", "size", "sha256"))
        _typed(entry, {"path": is_str, "size": is_json_int, "sha256": is_str})
        blobs.append(Blob(entry["path"], entry["path"].encode("utf-8"), entry["size"],
                          entry["sha256"]))
    return Manifest(obj, blobs)


def check_manifest_values(manifest: Manifest, report: Report) -> None:
    """Value errors: all reported, the checks go on (section 7 step 4)."""
    fail = lambda code: report.fail("manifest", code)
    obj = manifest.obj
    if not is_hex64(obj["package_id"]):
        fail("manifest.digest_invalid")
    if not is_timestamp(obj["created_at"]):
        fail("manifest.created_at_invalid")
    prov = obj["provenance"]
    if not all(is_identifier(prov[n]) for n in ("brain_runtime_version", "ai_app_version",
                                                 "environment_id")):
        fail("manifest.identifier_invalid")
    arc = obj["archive"]
    # Section 7.4: an unknown compression is a shape error (check_manifest_shape); the
    # name/compression pair is a manifest value error.
    if COMPRESSION_NAMES[arc["compression"]] != arc["name"]:
        fail("archive.name_mismatch")
    if not is_hex64(arc["sha256"]):
        fail("manifest.digest_invalid")
    total = 0
    for blob in manifest.blobs:
        if not is_valid_path(blob.raw):
            fail("manifest.path_invalid")
        if not is_hex64(blob.sha256):
            fail("manifest.digest_invalid")
        if blob.size > MAX_BLOB_SIZE:
            fail("manifest.limit_exceeded")
        total += blob.size
    if total > MAX_TOTAL_SIZE:
        fail("manifest.limit_exceeded")
    raws = [b.raw for b in manifest.blobs]
    if any(prev > cur for prev, cur in zip(raws, raws[1:])):
        fail("manifest.blobs_unsorted")
    if len(set(raws)) != len(raws):
        fail("manifest.blob_duplicate")
    seen: dict[str, str] = {}
    for blob in manifest.blobs:
        if seen.setdefault(collision_key(blob.path), blob.path) != blob.path:
            fail("manifest.path_collision")


# --------------------------------------------------------------------------
# Section 3: the package ID
# --------------------------------------------------------------------------

def compute_package_id(prov: dict, blobs: list[Blob]) -> str:
    h = hashlib.sha256()
    h.update(b"continuon-package-id/v1\n")
    for name in ("environment_id", "brain_runtime_version", "ai_app_version"):
        h.update(b"%s=%s\n" % (name.encode(), prov[name].encode("utf-8")))
    for blob in blobs:
        h.update(b"%s %d %s\n" % (blob.sha256.encode("utf-8"), blob.size, blob.raw))
    return h.hexdigest()


# --------------------------------------------------------------------------
# Section 6: decompression of the episode archive
# --------------------------------------------------------------------------

def raw_chunks(path: str, start: int, end: int):
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        while pos < end:
            chunk = f.read(min(CHUNK, end - pos))
            if not chunk:
                raise OSError("package shrank while reading")
            pos += len(chunk)
            yield chunk


class GzipState:
    def __init__(self) -> None:
        self.trailing = False     # bytes after the gzip member that are not a second member


def gunzip_chunks(path: str, start: int, end: int, state: GzipState):
    """Exactly one gzip member (RFC 1952); zlib checks CRC-32 and ISIZE. After
    the member: a second member (gzip magic 1f 8b) is corrupt, anything else
    sets state.trailing. Errors come in stream order, after the output before them."""
    dec = zlib.decompressobj(wbits=31)
    chunks = raw_chunks(path, start, end)
    for chunk in chunks:
        data = chunk
        while True:
            try:
                out = dec.decompress(data, CHUNK)
            except zlib.error as exc:
                raise DecompressError(f"gzip: {exc}") from None
            data = dec.unconsumed_tail
            if out:
                yield out
            if dec.eof:
                rest = dec.unused_data
                for more in chunks:
                    if len(rest) >= 2:
                        break
                    rest += more
                # CHOICE: "a second concatenated member" is recognized by the
                # gzip magic; any other bytes are not consumed by a gzip decoder.
                if rest[:2] == b"\x1f\x8b":
                    raise DecompressError("gzip: a second member")
                state.trailing = bool(rest)
                return
            if not data and not out:
                break
    raise DecompressError("gzip: stream truncated")


ZSTD_MAGIC = 0xFD2FB528


def zstd_frames_end(path: str, start: int, end: int) -> int:
    """Walks zstd frames (RFC 8878) without decoding and returns where the run
    of zstd and skippable frames ends: the first position that does not start
    with a frame magic, or `end` when a frame cannot be walked (zstd itself
    then reports the damage). Needed because the zstd CLI also decodes gzip,
    xz and lz4 data, which section 6 does not allow."""
    with open(path, "rb") as f:
        def read_at(pos: int, n: int) -> bytes | None:
            if pos + n > end:
                return None
            f.seek(pos)
            data = f.read(n)
            return data if len(data) == n else None

        pos = start
        while pos < end:
            magic = read_at(pos, 4)
            value = int.from_bytes(magic, "little") if magic else -1
            if value == ZSTD_MAGIC:
                nxt = _zstd_frame_end(read_at, pos)
            elif value >= 0 and value & 0xFFFFFFF0 == 0x184D2A50:
                size = read_at(pos + 4, 4)
                nxt = pos + 8 + int.from_bytes(size, "little") if size else None
            else:
                return pos
            if nxt is None or nxt > end:
                return end
            pos = nxt
    return pos


def _zstd_frame_end(read_at, pos: int) -> int | None:
    fhd = read_at(pos + 4, 1)
    if fhd is None or fhd[0] & 0x08:
        return None
    d = fhd[0]
    single = (d >> 5) & 1
    fcs = [1 if single else 0, 2, 4, 8][d >> 6]
    pos += 4 + 1 + (0 if single else 1) + [0, 1, 2, 4][d & 3] + fcs
    while True:
        head = read_at(pos, 3)
        if head is None:
            return None
        v = int.from_bytes(head, "little")
        btype, bsize = (v >> 1) & 3, v >> 3
        if btype == 3:
            return None
        pos += 3 + (1 if btype == 1 else bsize)
        if v & 1:
            break
    return pos + (4 if d & 0x04 else 0)


def unzstd_chunks(path: str, start: int, end: int):
    """One or more zstd frames, decoded by the zstd CLI (window at most 128 MiB).
    Anything after the frames is corrupt, reported after the frames' output."""
    cut = zstd_frames_end(path, start, end)
    if cut == start:
        raise DecompressError("zstd: not a zstd frame")
    proc = subprocess.Popen(["zstd", "-d", "-c", "-q", "--no-progress", ZSTD_MEMORY],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    writer = threading.Thread(target=_feed_process, args=(proc, path, start, cut), daemon=True)
    writer.start()
    finished = False
    try:
        while True:
            out = os.read(proc.stdout.fileno(), CHUNK)
            if not out:
                break
            yield out
        finished = True
    finally:
        if not finished:
            proc.kill()
        proc.stdout.close()
        proc.wait()
        writer.join()
    if proc.returncode != 0:
        raise DecompressError("zstd: the stream does not decode")
    if cut != end:
        raise DecompressError("zstd: bytes after the last frame")


def _feed_process(proc, path: str, start: int, end: int) -> None:
    try:
        for chunk in raw_chunks(path, start, end):
            proc.stdin.write(chunk)
    except (OSError, ValueError):
        pass
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# Section 7 steps 6 and 7: archive and blobs
# --------------------------------------------------------------------------

def hash_region(path: str, start: int, end: int) -> str:
    h = hashlib.sha256()
    for chunk in raw_chunks(path, start, end):
        h.update(chunk)
    return h.hexdigest()


def archive_limit(blobs: list[Blob]) -> int:
    """Section 9: sum(blob sizes) + 3584 * (number of blobs) + 1024 + 10240."""
    return sum(b.size for b in blobs) + BOMB_PER_BLOB * len(blobs) + BOMB_FIXED


def check_archive(pkg: str, member: Member, manifest: Manifest, report: Report) -> None:
    arc = manifest.obj["archive"]
    start, end = member.offset, member.offset + member.size
    if arc["name"].encode("utf-8") != member.name:
        report.fail("archive", "archive.name_mismatch")
    if arc["size"] != member.size:
        report.fail("archive", "archive.size_mismatch")
    if hash_region(pkg, start, end) != arc["sha256"]:        # compared as written
        report.fail("archive", "archive.digest_mismatch")

    compression = ARCHIVE_NAMES[member.name]                 # the member name decides
    gz = GzipState()
    if compression == "none":
        chunks = raw_chunks(pkg, start, end)
    elif compression == "gzip":
        chunks = gunzip_chunks(pkg, start, end, gz)
    else:
        chunks = unzstd_chunks(pkg, start, end)
    walk = BlobWalk(manifest.blobs)
    try:
        walk.run(TarReader(StreamSource(chunks, archive_limit(manifest.blobs))))
    except (TarFault, DecompressError):                      # TarFault here is CORRUPT
        report.fail("archive", "archive.corrupt")
        report.not_checked("blobs")
        return
    except LimitExceeded:
        report.fail("archive", "archive.limit_exceeded")
        report.not_checked("blobs")
        return
    finally:
        chunks.close()
    for code in walk.codes:
        report.fail("blobs", code)
    if walk.trailing or gz.trailing:
        report.fail("archive", "archive.trailing_data")


class BlobWalk:
    """Section 7 step 7. Codes are collected in `codes` and only reported when
    the archive was neither corrupt nor over the limit."""

    def __init__(self, blobs: list[Blob]) -> None:
        self.blobs = blobs
        self.listings: dict[bytes, list[int]] = {}
        for i, blob in enumerate(blobs):
            self.listings.setdefault(blob.raw, []).append(i)
        self.next_listing: dict[bytes, int] = {}   # per path: listings already matched
        self.matched = [False] * len(blobs)
        self.highest = -1
        self.codes: list[str] = []
        self.trailing = False

    def _code(self, code: str) -> None:
        if code not in self.codes:
            self.codes.append(code)

    def _match(self, name: bytes) -> int | None:
        """The first listing of `name` not yet matched (None if none is left)."""
        listings = self.listings.get(name, [])
        k = self.next_listing.get(name, 0)
        if k >= len(listings):
            return None
        self.next_listing[name] = k + 1
        self.matched[listings[k]] = True
        return listings[k]

    def run(self, reader: TarReader) -> None:
        try:
            for m in reader.members():
                if m.fault is not None:
                    # Tar rules (section 6): stop the walk, keep earlier codes,
                    # no blob.missing; nothing more is read.
                    self._code("blob." + m.fault)
                    return
                self._member(reader, m)
        except TarFault as exc:
            if exc.kind != TRAILING:
                raise
            self.trailing = True          # the walk ended at the end-of-archive marker
        if not all(self.matched):
            self._code("blob.missing")

    def _member(self, reader: TarReader, m: Member) -> None:
        if not is_valid_path(m.name):
            self._code("blob.path_invalid")
            self._match(m.name)           # counts as present; nothing else is checked
            return
        if m.name not in self.listings:
            self._code("blob.unexpected")
            return
        i = self._match(m.name)
        if i is None:
            self._code("blob.duplicate_member")
            return
        if i < self.highest:
            self._code("blob.out_of_order")
        self.highest = max(self.highest, i)
        blob = self.blobs[i]
        if m.size != blob.size:
            self._code("blob.size_mismatch")
            return                        # data not checked
        h = hashlib.sha256()
        remaining = m.size
        while remaining:
            data = reader.read_data(min(CHUNK, remaining))
            h.update(data)
            remaining -= len(data)
        if h.hexdigest() != blob.sha256:
            self._code("blob.digest_mismatch")


def check_envelope_and_manifest(env_bytes: bytes, policy: Policy, threshold: int, report: Report):
    """Steps 2 to 5; returns the manifest when its shape decoded (for steps 6 and 7), else None."""
    # 2. Envelope
    env = check_envelope(env_bytes, report)
    if env is None:
        report.not_checked("signature", "manifest", "package_id", "archive", "blobs")
        return None
    # The manifest's shape is decoded first: 14.3 needs its environment_id
    # and created_at. Codes are still reported in section 7's order.
    manifest, shape_error = None, None
    try:
        manifest = check_manifest_shape(env.payload)
    except ShapeError as exc:
        shape_error = exc
    # 3. Signature (a failure does not stop the other checks)
    check_signatures(env, policy, threshold, manifest.obj if manifest else None, report)
    # 4. Manifest
    if shape_error is not None:
        report.fail("manifest", shape_error.code)
        report.not_checked("package_id", "archive", "blobs")
        return None
    report.package_id = manifest.obj["package_id"]
    check_manifest_values(manifest, report)
    # 5. Package ID
    if compute_package_id(manifest.obj["provenance"], manifest.blobs) != manifest.obj["package_id"]:
        report.fail("package_id", "manifest.package_id_mismatch")
    return manifest


# --------------------------------------------------------------------------
# Section 7 step 1: the outer package
# --------------------------------------------------------------------------

def scan_package(f, size: int, report: Report, on_envelope=None, on_archive=None) -> tuple[Member, Member, bool]:
    """Reads the outer tar from its first byte to its last. Returns the two
    members and whether trailing data follows the end-of-archive marker (that is
    reported last). Every other violation raises Stop after reporting its code."""
    def stop(code: str, check: str = "package.structure"):
        report.fail(check, code)
        if code != "package.trailing_data":
            report.drop_blob_codes()
        report.stop_after("package.structure")
        raise Stop(code)

    first = f.read(BLOCK)
    # Section 7.1: a first header whose checksum or numeric fields are broken is not a tar header.
    if len(first) < BLOCK or (first != ZERO_BLOCK and (not checksum_ok(first) or numeric_field_problem(first))):
        stop("package.not_tar")
    if first == ZERO_BLOCK:
        # Section 7.1: a first zero block begins the end-of-archive marker, judged as any (section 6).
        second = f.read(BLOCK)
        if len(second) < BLOCK:
            stop("package.corrupt")
        stop("package.member_count" if second == ZERO_BLOCK else "package.trailing_data")
        f.seek(0)

    reader = TarReader(FileSource(f, 0, size))
    members: list[Member] = []
    trailing = False
    try:
        for m in reader.members():
            # CHOICE: when one header breaks several rules: type, metadata,
            # count, name, envelope size, in that order.
            if m.fault == "member_type":
                stop("package.member_type")
            if m.fault == "metadata":
                stop("package.metadata")
            if len(members) == 2:
                stop("package.member_count")
            if (m.name != ENVELOPE_NAME) if not members else (m.name not in ARCHIVE_NAMES):
                stop("package.member_name")
            if not members and m.size > MAX_ENVELOPE:
                # Section 6: refused before anything is read.
                report.not_checked("package.structure")
                stop("envelope.too_large", "envelope")
            members.append(m)
            if m.offset + m.size > size:
                stop("package.corrupt")   # a member cut short
            if len(members) == 1 and on_envelope is not None:
                on_envelope(m)
            if len(members) == 2 and on_archive is not None:
                on_archive(m)
    except TarFault as exc:
        if exc.kind != TRAILING:
            stop("package.corrupt")
        trailing = True
        # Section 7.1: a lone zero block followed by data before two members is trailing data; the member count
        # is not judged then.
        if len(members) != 2:
            stop("package.trailing_data")
    if len(members) != 2:
        stop("package.member_count")
    return members[0], members[1], trailing


# --------------------------------------------------------------------------
# Section 14: trust policies
# --------------------------------------------------------------------------

class PolicyRefused(Exception):
    """A trust.* code of section 14.6: the CLI exits 2 and verifies nothing."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


@dataclass
class PolicyKey:
    key_id: str
    raw: bytes                              # the 32-byte public key
    environments: list[str]
    not_before: str | None = None
    not_after: str | None = None
    revoked: bool = False
    _key: Ed25519PublicKey | None = None

    def public(self) -> Ed25519PublicKey:
        if self._key is None:
            # CHOICE: a public_key that is 32 bytes but no point of the curve
            # is not refused by the document rules (14.1 asks for 64 lowercase
            # hex only); such a key simply never verifies (signature.invalid).
            self._key = Ed25519PublicKey.from_public_bytes(self.raw)
        return self._key


@dataclass
class Policy:
    version: int
    threshold: int
    expires: str | None
    keys: dict[str, PolicyKey]
    signed: bool = False
    payload: bytes = b""                    # the signed payload bytes (14.4 rollback rule)


def policy_from_trusted_keys(trusted: dict) -> Policy:
    """14: the policy a list of trusted keys makes: every key allowed `*`, no
    validity period, no revocation (the threshold is passed separately)."""
    keys = {}
    for kid, key in trusted.items():
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        keys[kid] = PolicyKey(kid, raw, ["*"], _key=key)
    return Policy(version=1, threshold=1, expires=None, keys=keys)


def key_id_of_hex(public_hex: str) -> str:
    """Section 5 key ID of a raw public key given as 64 lowercase hex."""
    text = '{"keytype":"ed25519","keyval":{"public":"%s"},"scheme":"ed25519"}' % public_hex
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def pattern_matches(pattern: str, value: str) -> bool:
    """14.1: `*` stands for any run of characters (possibly empty), every other
    character for itself, case-sensitive, the whole value. Greedy two-pointer
    matching with one backtrack point (the last `*`): O(len(pattern) * len(value))
    at worst, no regex and no exponential backtracking."""
    p = v = 0
    star = -1           # position in pattern just after the last `*` seen
    mark = 0            # position in value the last `*` is extended to
    while v < len(value):
        if p < len(pattern) and pattern[p] == "*":
            star, mark = p + 1, v
            p += 1
        elif p < len(pattern) and pattern[p] == value[v]:
            p += 1
            v += 1
        elif star >= 0:
            mark += 1
            p, v = star, mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def parse_policy_document(data: bytes) -> Policy:
    """14.1, strictly; any violation is trust.policy_invalid."""
    def invalid(detail: str):
        raise PolicyRefused("trust.policy_invalid", detail)

    if len(data) > MAX_POLICY_BYTES:
        invalid("larger than 64 MiB")
    try:
        obj = parse_json(data)
    except JsonError as exc:
        invalid(f"JSON: {exc.kind}")
    return _policy_from_object(obj, invalid)


def _policy_from_object(obj, invalid) -> Policy:
    if not isinstance(obj, dict):
        invalid("not a JSON object")
    required = {"schema", "version", "threshold", "keys"}
    if not required <= set(obj) or not set(obj) <= required | {"expires"}:
        invalid("missing or unknown top-level members")
    if obj["schema"] != POLICY_SCHEMA or not is_str(obj["schema"]):
        invalid("schema")
    for name in ("version", "threshold"):
        if not is_json_int(obj[name]) or obj[name] < 1:
            invalid(name)
    expires = obj.get("expires")
    if "expires" in obj and not (is_str(expires) and is_timestamp(expires)):
        invalid("expires")
    entries = obj["keys"]
    if not isinstance(entries, list) or len(entries) > MAX_POLICY_KEYS:
        invalid("keys")
    keys: dict[str, PolicyKey] = {}
    key_required = {"key_id", "public_key", "environments"}
    key_optional = {"not_before", "not_after", "revoked", "comment"}
    for entry in entries:
        if not isinstance(entry, dict):
            invalid("a key is not an object")
        members = set(entry)
        if not key_required <= members or not members <= key_required | key_optional:
            invalid("missing or unknown key members")
        kid, pub = entry["key_id"], entry["public_key"]
        if not (is_str(kid) and is_hex64(kid) and is_str(pub) and is_hex64(pub)):
            invalid("key_id / public_key not 64 lowercase hex")
        if key_id_of_hex(pub) != kid:
            invalid("key_id is not the key ID of public_key")
        if kid in keys:
            invalid("two keys with the same key_id")
        patterns = entry["environments"]
        if not isinstance(patterns, list) or len(patterns) > MAX_KEY_PATTERNS:
            invalid("environments")
        # CHOICE: the same pattern twice in one key is allowed (14.1 forbids
        # only repeated key_id values; a repeated pattern changes nothing).
        if any(not is_str(p) or PATTERN_RE.fullmatch(p) is None for p in patterns):
            invalid("environment pattern")
        for name in ("not_before", "not_after"):
            if name in entry and not (is_str(entry[name]) and is_timestamp(entry[name])):
                invalid(name)
        nb, na = entry.get("not_before"), entry.get("not_after")
        if nb is not None and na is not None and na < nb:    # equal is allowed
            invalid("not_after earlier than not_before")
        revoked = "revoked" in entry
        if revoked:
            rev = entry["revoked"]
            if not isinstance(rev, dict) or set(rev) != {"at", "reason"}:
                invalid("revoked is not exactly {at, reason}")
            if not (is_str(rev["at"]) and is_timestamp(rev["at"])):
                invalid("revoked.at")
            if not is_str(rev["reason"]) or not 1 <= _utf8_len(rev["reason"]) <= MAX_TEXT_BYTES:
                invalid("revoked.reason")
        if "comment" in entry and not (is_str(entry["comment"])
                                       and _utf8_len(entry["comment"]) <= MAX_TEXT_BYTES):
            invalid("comment")
        keys[kid] = PolicyKey(kid, bytes.fromhex(pub), list(patterns), nb, na, revoked)
    # CHOICE: a threshold above the number of keys (or of unrevoked keys) does
    # not make the document invalid (14.1 asks only "at least 1"); packages are
    # then refused with signature.threshold_not_met.
    return Policy(version=obj["version"], threshold=obj["threshold"], expires=expires, keys=keys)


def utc_now_text() -> str:
    """The current time in the format of section 2 (whole seconds, truncated):
    `expires <= now` on this text is the same as `expires` at or before now."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def load_policy(path: str, roots: dict, root_threshold: int, check_expiry: bool = True) -> Policy:
    """14.2 and 14.4. Raises PolicyRefused with the trust.* code, OSError when
    the file cannot be read (io.error)."""
    with open(path, "rb") as f:
        data = f.read(MAX_SIGNED_POLICY_BYTES + 1)
    # 14.2 step 1: a signed file is at most 96 MiB, a plain one (and a signed payload) at most 64 MiB.
    if len(data) > MAX_SIGNED_POLICY_BYTES:
        raise PolicyRefused("trust.policy_invalid", "file larger than 96 MiB")
    try:
        obj = parse_json(data, max_values=MAX_POLICY_VALUES)
    except JsonError as exc:
        raise PolicyRefused("trust.policy_invalid", f"JSON: {exc.kind}") from None
    if not isinstance(obj, dict):
        raise PolicyRefused("trust.policy_invalid", "not a JSON object")
    # 14.2 step 2: a JSON object with a `payloadType` member is a signed policy.
    signed = "payloadType" in obj
    if not signed and len(data) > MAX_POLICY_BYTES:
        raise PolicyRefused("trust.policy_invalid", "plain policy larger than 64 MiB")
    # With roots, any plain policy (even an invalid one) is trust.policy_unsigned.
    if roots and not signed:
        raise PolicyRefused("trust.policy_unsigned")

    def invalid(detail: str):
        raise PolicyRefused("trust.policy_invalid", detail)

    if not signed:
        policy = _policy_from_object(obj, invalid)
    else:
        # 14.4: the shape and encoding rules of section 5.
        # CHOICE: a malformed envelope, non-canonical base64 and a wrong
        # payloadType value are all trust.policy_invalid ("not a valid policy
        # (or envelope)"), checked before any root signature.
        if not envelope_shape_ok(obj):
            invalid("envelope shape")
        if obj["payloadType"] != POLICY_PAYLOAD_TYPE:
            invalid("payloadType")
        env = decode_envelope(obj)
        if env is None:
            invalid("envelope base64")
        # 14.4 step 2: without roots a signed policy cannot be checked.
        if not roots:
            raise PolicyRefused("trust.policy_signature", "no trust roots given")
        # CHOICE: an envelope with no signatures is well-formed (as for
        # packages, section 7 step 3) and fails the root threshold:
        # trust.policy_signature.
        message = pae(env.payload_type, env.payload)
        counted = set()
        for kid, sig in env.signatures:
            root = roots.get(kid)
            if root is None:
                continue                                    # names no root: ignored
            if not verifies(root, sig, message):
                raise PolicyRefused("trust.policy_signature", "a root signature does not verify")
            counted.add(kid)
        if len(counted) < root_threshold:
            raise PolicyRefused("trust.policy_signature",
                                f"{len(counted)} of {root_threshold} root signatures")
        if len(env.payload) > MAX_POLICY_BYTES:
            invalid("payload larger than 64 MiB")
        try:
            payload_obj = parse_json(env.payload)
        except JsonError as exc:
            raise PolicyRefused("trust.policy_invalid", f"payload JSON: {exc.kind}") from None
        policy = _policy_from_object(payload_obj, invalid)
        if policy.expires is None:
            invalid("a signed policy without expires")
        policy.signed, policy.payload = True, env.payload
    if check_expiry and policy.expires is not None and policy.expires <= utc_now_text():
        raise PolicyRefused("trust.policy_expired", policy.expires)
    return policy


def check_rollback(new: Policy, previous: Policy) -> None:
    """14.4: the new policy replaces one held from the same roots only with a
    greater version, or an equal version with identical payload bytes."""
    # CHOICE: the rule is applied only between signed policies (14.4 speaks of
    # "a policy from the same roots"); without roots the previous policy is
    # still loaded and checked, but sets no floor.
    if not (new.signed and previous.signed):
        return
    if new.version < previous.version or (new.version == previous.version
                                          and new.payload != previous.payload):
        raise PolicyRefused("trust.policy_rollback",
                            f"version {new.version} after version {previous.version}")


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

def verify(pkg: str, policy: Policy, threshold: int) -> Report:
    report = Report()
    try:
        _verify(pkg, policy, threshold, report)
    except Stop:
        pass
    return report


def _verify(pkg: str, policy: Policy, threshold: int, report: Report) -> None:
    state: dict = {}

    def on_envelope(env_member: Member) -> None:
        """Section 7.1: the envelope is checked as soon as its member is complete; its codes stay even when the
        outer tar breaks later (only blob codes are dropped then)."""
        with open(pkg, "rb") as g:
            g.seek(env_member.offset)
            env_bytes = g.read(env_member.size)
        if len(env_bytes) != env_member.size:
            raise OSError("package shrank while reading")
        state["manifest"] = check_envelope_and_manifest(env_bytes, policy, threshold, report)
        report.done.update(("envelope", "signature", "manifest", "package_id"))

    def on_archive(arc_member: Member) -> None:
        """Steps 6 and 7 as soon as the archive member is whole; the outer tar's end is judged after them."""
        manifest = state.get("manifest")
        if manifest is not None:
            check_archive(pkg, arc_member, manifest, report)
            report.done.add("archive")

    with open(pkg, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        _, _, trailing = scan_package(f, size, report, on_envelope, on_archive)

    # 1, found last: trailing data after the outer end-of-archive marker.
    if trailing:
        report.fail("package.structure", "package.trailing_data")


def load_trusted_keys(paths: list[str]) -> dict:
    keys = {}
    for path in paths:
        with open(path, "rb") as f:
            pem = f.read(1 << 20)
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{path}: not an SPKI PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise UsageError(f"{path}: not an Ed25519 public key")
        keys[key_id(key)] = key
    return keys


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package")
    parser.add_argument("--trusted-key", action="append", default=[])
    parser.add_argument("--trust-policy", metavar="FILE")
    parser.add_argument("--trust-root", action="append", default=[], metavar="PEM")
    parser.add_argument("--root-threshold", type=positive_int, default=None, metavar="R")
    parser.add_argument("--previous-policy", metavar="FILE")
    parser.add_argument("--threshold", type=positive_int, default=None, metavar="N")
    args = parser.parse_args(argv)
    try:
        if bool(args.trusted_key) == bool(args.trust_policy):
            raise UsageError("exactly one of --trusted-key (one or more) and --trust-policy is required")
        if args.trusted_key:
            if args.trust_root or args.root_threshold is not None or args.previous_policy:
                raise UsageError("--trust-root, --root-threshold and --previous-policy "
                                 "go with --trust-policy only")
            trusted = load_trusted_keys(args.trusted_key)
            threshold = 1 if args.threshold is None else args.threshold
            # Section 11: a threshold above the number of trusted keys is a usage error.
            if not 1 <= threshold <= len(trusted):
                raise UsageError(f"--threshold must be between 1 and the number of distinct "
                                 f"trusted keys ({len(trusted)})")
            policy = policy_from_trusted_keys(trusted)
        else:
            roots = load_trusted_keys(args.trust_root)
            root_threshold = 1 if args.root_threshold is None else args.root_threshold
            # CHOICE: as for --threshold (section 11), a root threshold above
            # the number of distinct roots is a usage error; so is
            # --root-threshold without any --trust-root.
            if args.root_threshold is not None and root_threshold > len(roots):
                raise UsageError(f"--root-threshold must be between 1 and the number of "
                                 f"distinct trust roots ({len(roots)})")
            try:
                previous = None
                if args.previous_policy:
                    # CHOICE: the previous policy is the one in force; it must
                    # load under the same roots (signature and document), but its
                    # own expiry is not checked: an expired policy in force still
                    # sets the rollback floor (14.5: serve keeps it until a newer
                    # one loads).
                    previous = load_policy(args.previous_policy, roots, root_threshold,
                                           check_expiry=False)
                policy = load_policy(args.trust_policy, roots, root_threshold)
                if previous is not None:
                    check_rollback(policy, previous)
            except PolicyRefused as exc:
                print(f"reference_verify: trust policy refused: {exc}", file=sys.stderr)
                print(json.dumps({"valid": False, "policy_error": exc.code, "errors": [exc.code],
                                  "package_id": None, "key_ids": []}, sort_keys=True))
                return 2
            # 14.3: the verifier's --threshold overrides the policy's.
            # CHOICE: with a policy, --threshold is not bounded by the number of
            # policy keys (section 11's usage error is about --trusted-key
            # lists); a threshold no key set can meet gives
            # signature.threshold_not_met.
            threshold = policy.threshold if args.threshold is None else args.threshold
        report = verify(args.package, policy, threshold)
    except UsageError as exc:
        print(f"reference_verify: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"reference_verify: {exc}", file=sys.stderr)
        print(json.dumps({"valid": False, "package_id": None, "key_ids": [],
                          "errors": ["io.error"]}))
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug here must not look like a verdict
        print(f"reference_verify: internal error: {exc!r}", file=sys.stderr)
        print(json.dumps({"valid": False, "package_id": None, "key_ids": [],
                          "errors": ["internal.error"]}))
        return 2
    print(json.dumps(report.as_json(), sort_keys=True))
    return 0 if report.valid else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
