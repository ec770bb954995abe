#!/usr/bin/env python3
"""Reference verifier for continuon-pack signed episode packages (format v1).

This is an independent re-implementation written from docs/signed-ingestion.md
ONLY (never from the Swift sources), to show that the written specification is
complete enough for another team to build a verifier that reaches the same
verdict and the same error codes.

Usage:
    python3 Tests/peers/reference_verify.py PKG --trusted-key PUB.pem
            [--trusted-key ...] [--threshold N]

Prints one JSON object on stdout:
    {"valid": bool, "package_id": str|null, "key_ids": [...], "errors": [...],
     "checks": {check: "held"|"failed"|"not_checked"}, "ignored_key_ids": [...]}
Exit status: 0 valid, 1 invalid, 2 usage or I/O error (error code io.error).

Dependencies: Python 3.11 standard library, `cryptography`, and either the
`zstandard` module or the `zstd` command line tool for .zst archives.
Both tar layers are parsed by the strict streaming parser below; the `tarfile`
module is deliberately not used.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import unicodedata
import zlib
from dataclasses import dataclass

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

# Choices of this verifier for what the spec leaves open ("tar overhead").
MAX_PAX_HEADER = 8192                    # section 6: a pax header holds at most 8192 bytes
PAX_ALLOWANCE_PER_BLOB = 512 + 1536      # pax header block + data (path <= 1024 bytes)
TAR_RECORD_SLACK = 1024 + 10240          # end-of-archive marker + record padding
CHUNK = 64 * 1024

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)

IDENTIFIER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:@-]{0,127}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
TIMESTAMP_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")

CHECKS = ["package.structure", "envelope", "signature", "manifest", "package_id", "archive", "blobs"]


class UsageError(Exception):
    """Bad command line or unusable trusted key (exit 2)."""


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
        self.package_id: str | None = None

    def fail(self, check: str, code: str) -> None:
        if code not in self.errors:
            self.errors.append(code)
        if self.checks[check] != "not_checked":
            self.checks[check] = "failed"

    def not_checked(self, *checks: str) -> None:
        """Mark checks that could not run (a check that already failed stays failed)."""
        for check in checks:
            if self.checks[check] == "held":
                self.checks[check] = "not_checked"

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
        }


# --------------------------------------------------------------------------
# Strict streaming ustar/pax parser (used for both layers)
# --------------------------------------------------------------------------

NOT_TAR, CORRUPT, NO_MARKER, TRAILING = "not_tar", "corrupt", "no_marker", "trailing"


class TarProblem(Exception):
    """A structural tar failure; `kind` is one of the four constants above."""

    def __init__(self, kind: str, detail: str, members_complete: bool = True) -> None:
        super().__init__(detail)
        self.kind = kind
        # False when members may follow the problem (a lone zero block), so
        # "how many members / which are missing" cannot be judged.
        self.members_complete = members_complete


class LimitExceeded(Exception):
    """The decompressed archive grew past the declared sizes plus tar overhead."""


class DecompressError(Exception):
    """The compressed stream is damaged or truncated."""


class FileSource:
    """Byte source over a region of a seekable file; skip() seeks."""

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
    """Byte source over an iterator of chunks, with an optional byte limit."""

    def __init__(self, chunks, limit: int | None = None) -> None:
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
                break
            self.buf += chunk

    def read(self, n: int) -> bytes:
        """Up to n bytes (fewer only at the end). The limit counts bytes handed
        out, so where reading stops does not depend on chunk sizes."""
        if self.limit is not None:
            n = min(n, self.limit + 1 - self.consumed)   # consumed <= limit here
        self._fill(n)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        self.consumed += len(data)
        if self.limit is not None and self.consumed > self.limit:
            raise LimitExceeded(f"archive expands past {self.limit} bytes")
        return data

    def skip(self, n: int) -> bool:
        while n > 0:
            data = self.read(min(n, CHUNK))
            if not data:
                return False
            n -= len(data)
        return True

    def tell(self) -> int | None:
        return None


@dataclass
class Member:
    """One tar member as described by its (pax-extended) header."""

    name: bytes
    size: int
    typeflag: bytes
    regular: bool
    meta_ok: bool
    offset: int | None = None     # data offset when the source is a file


def parse_octal(raw: bytes) -> int | None:
    """Octal numeric field: optional leading spaces, digits, NUL/space terminated."""
    text = raw.rstrip(b"\0 ").lstrip(b" ")
    if not text or any(c not in b"01234567" for c in text):
        return None
    return int(text, 8)


def cstring(raw: bytes) -> bytes:
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def parse_header(block: bytes, first: bool) -> dict:
    """Validate checksum and magic of one 512-byte header and decode its fields."""
    bad = NOT_TAR if first else CORRUPT
    stored = parse_octal(block[148:156])
    computed = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    if stored is None or stored != computed:
        raise TarProblem(bad, "header checksum mismatch")
    if block[257:263] != b"ustar\0" or block[263:265] != b"00":
        raise TarProblem(bad, "not a POSIX ustar header")
    size = parse_octal(block[124:136])
    if size is None:
        raise TarProblem(CORRUPT, "bad size field")
    name = cstring(block[0:100])
    prefix = cstring(block[345:500])
    return {
        "name": prefix + b"/" + name if prefix else name,
        "size": size,
        "typeflag": block[156:157],
        "mode": parse_octal(block[100:108]),
        "uid": parse_octal(block[108:116]),
        "gid": parse_octal(block[116:124]),
        "mtime": parse_octal(block[136:148]),
        "uname": cstring(block[265:297]),
        "gname": cstring(block[297:329]),
    }


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """Length-prefixed pax records: '<len> <key>=<value>\\n'."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        if not digits or not digits.isdigit():
            raise TarProblem(CORRUPT, "bad pax record length")
        end = pos + int(digits)
        if end > len(data) or end <= space + 1 or data[end - 1:end] != b"\n":
            raise TarProblem(CORRUPT, "bad pax record framing")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq or not key:
            raise TarProblem(CORRUPT, "bad pax record")
        if key in records:
            raise TarProblem(CORRUPT, "repeated pax record")
        records[key] = value
        pos = end
    return records


def apply_pax(hdr: dict, pax: dict[bytes, bytes]) -> tuple[bool, bool]:
    """Apply pax records (section 6: only `path` and `size` are allowed).
    Returns (sparse, metadata_ok)."""
    sparse, meta_ok = False, True
    for key, value in pax.items():
        if key == b"path":
            if not value.startswith(hdr["name"]):
                raise TarProblem(CORRUPT, "ustar name is not a prefix of the pax path")
            hdr["name"] = value
        elif key == b"size":
            if not value.isdigit():
                raise TarProblem(CORRUPT, "bad pax size")
            hdr["size"] = int(value)
        elif key.startswith(b"GNU.sparse."):
            sparse = True                 # a sparse file: not a plain regular file
        else:
            meta_ok = False               # xattrs, mtime, uid, comment, ...: not normalized
    return sparse, meta_ok


def pad_len(size: int) -> int:
    return -size % BLOCK


class TarReader:
    """Pull parser: iterate members(); read member data with read_data()."""

    def __init__(self, src) -> None:
        self.src = src
        self.pending = 0
        self.padding = 0

    def read_data(self, n: int) -> bytes:
        n = min(n, self.pending)
        data = self.src.read(n)
        if len(data) != n:
            raise TarProblem(CORRUPT, "member data truncated")
        self.pending -= n
        return data

    def _finish_member(self) -> None:
        if self.pending and not self.src.skip(self.pending):
            raise TarProblem(CORRUPT, "member data truncated")
        self.pending = 0
        pad = self.src.read(self.padding)
        if len(pad) != self.padding:
            raise TarProblem(CORRUPT, "member padding truncated")
        if pad.count(0) != len(pad):
            raise TarProblem(CORRUPT, "non-zero member padding")
        self.padding = 0

    def _read_pax(self, hdr: dict) -> dict[bytes, bytes]:
        if hdr["size"] > MAX_PAX_HEADER:
            raise TarProblem(CORRUPT, "pax header too large")
        data = self.src.read(hdr["size"])
        if len(data) != hdr["size"]:
            raise TarProblem(CORRUPT, "pax header truncated")
        self.padding = pad_len(hdr["size"])
        self._finish_member()
        return parse_pax(data)

    def _end_of_archive(self) -> None:
        second = self.src.read(BLOCK)
        if len(second) < BLOCK:
            if second.count(0) == len(second):
                raise TarProblem(NO_MARKER, "end-of-archive marker incomplete")
            raise TarProblem(TRAILING, "non-zero bytes after a zero block", False)
        if second != ZERO_BLOCK:
            raise TarProblem(TRAILING, "lone zero block followed by data", False)
        while True:
            chunk = self.src.read(CHUNK)
            if not chunk:
                return
            if chunk.count(0) != len(chunk):
                raise TarProblem(TRAILING, "non-zero bytes after end-of-archive marker")

    def members(self):
        first = True
        pax = None
        while True:
            self._finish_member()
            block = self.src.read(BLOCK)
            if not block:
                raise TarProblem(NOT_TAR if first else NO_MARKER, "no end-of-archive marker")
            if len(block) < BLOCK:
                raise TarProblem(NOT_TAR if first else CORRUPT, "truncated header")
            if block == ZERO_BLOCK:
                if pax is not None:
                    raise TarProblem(CORRUPT, "pax header without a member")
                self._end_of_archive()
                return
            hdr = parse_header(block, first)
            first = False
            if hdr["typeflag"] == b"x":
                if pax is not None:
                    raise TarProblem(CORRUPT, "two pax headers in a row")
                pax = self._read_pax(hdr)
                continue
            yield self._member(hdr, pax or {})
            pax = None

    def _member(self, hdr: dict, pax: dict[bytes, bytes]) -> Member:
        sparse, pax_meta_ok = apply_pax(hdr, pax)
        meta_ok = pax_meta_ok and (
            hdr["mode"] == 0o644 and hdr["uid"] == 0 and hdr["gid"] == 0
            and hdr["mtime"] == 0 and hdr["uname"] == b"" and hdr["gname"] == b"")
        regular = hdr["typeflag"] in (b"0", b"\0") and not sparse
        self.pending = hdr["size"]
        self.padding = pad_len(hdr["size"])
        return Member(hdr["name"], hdr["size"], hdr["typeflag"], regular, meta_ok,
                      self.src.tell())


# --------------------------------------------------------------------------
# JSON (strict)
# --------------------------------------------------------------------------

class BadNumber:
    """A JSON number that is not a plain non-negative integer."""

    def __init__(self, text: str) -> None:
        self.text = text


def _json_int(text: str):
    if text.startswith("-") or len(text) > 20:
        return BadNumber(text)
    return int(text)


def _json_constant(text: str):
    raise ValueError(f"{text} is not JSON")


@dataclass
class JsonDoc:
    value: object = None
    invalid: bool = False
    duplicate: bool = False
    too_deep: bool = False


def _strings_ok(value) -> bool:
    """No lone surrogates anywhere (keys and values)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _depth(value) -> int:
    """Nesting depth: a scalar is 0, each object/array adds one level."""
    best = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            best = max(best, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return best


def parse_json(data: bytes) -> JsonDoc:
    doc = JsonDoc()

    def pairs(items):
        keys = [k for k, _ in items]
        if len(set(keys)) != len(keys):
            doc.duplicate = True
        return dict(items)

    try:
        text = data.decode("utf-8")
        doc.value = json.loads(text, object_pairs_hook=pairs, parse_int=_json_int,
                               parse_float=BadNumber, parse_constant=_json_constant)
    except RecursionError:
        doc.too_deep = True
        return doc
    except (ValueError, UnicodeDecodeError):
        doc.invalid = True
        return doc
    if not _strings_ok(doc.value):
        doc.invalid = True
    elif _depth(doc.value) > MAX_DEPTH:
        doc.too_deep = True
    return doc


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
    if not 1 <= len(raw) <= 1024 or raw.startswith(b"/") or b"\\" in raw:
        return False
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text):
        return False
    if any(seg in ("", ".", "..") for seg in text.split("/")):
        return False
    return unicodedata.is_normalized("NFC", text)


def path_bytes(value: str) -> bytes | None:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        return None


def collision_key(value: str) -> str:
    return unicodedata.normalize("NFC", value.lower())


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
    text = ('{"keytype":"ed25519","keyval":{"public":"%s"},"scheme":"ed25519"}' % raw.hex())
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass
class Envelope:
    payload_type: str | None = None
    payload: bytes | None = None
    signatures: list | None = None       # well-formed entries: (keyid, sig bytes | None)
    signature_count: int = 0             # all entries, well-formed or not


def check_envelope(data: bytes, report: Report) -> Envelope | None:
    fail = lambda code: report.fail("envelope", code)
    doc = parse_json(data)
    if doc.invalid:
        fail("envelope.json_invalid")
    if doc.duplicate:
        fail("envelope.duplicate_key")
    if doc.too_deep:
        fail("envelope.shape")
    if doc.invalid or doc.duplicate or doc.too_deep:
        return None
    obj = doc.value
    if not isinstance(obj, dict):
        fail("envelope.shape")
        return None
    if set(obj) != {"payload", "payloadType", "signatures"}:
        fail("envelope.shape")
    env = Envelope()
    ptype = obj.get("payloadType")
    if is_str(ptype):
        env.payload_type = ptype
        if ptype != PAYLOAD_TYPE:
            fail("envelope.payload_type")
    else:
        fail("envelope.shape")
    payload = obj.get("payload")
    if is_str(payload):
        env.payload = canonical_b64decode(payload)
        if env.payload is None:
            fail("envelope.base64_invalid")
    else:
        fail("envelope.shape")
    sigs = obj.get("signatures")
    env.signature_count = len(sigs) if isinstance(sigs, list) else 0
    env.signatures = _envelope_signatures(sigs, report)
    return env


def _envelope_signatures(sigs, report: Report) -> list | None:
    """Well-formed signature entries, or None when the list breaks section 5."""
    if (not isinstance(sigs, list) or len(sigs) > MAX_SIGNATURES
            or any(not isinstance(e, dict) or set(e) != {"keyid", "sig"}
                   or not is_str(e["keyid"]) or not is_str(e["sig"]) for e in sigs)):
        report.fail("envelope", "envelope.shape")
        return None
    result = []
    for entry in sigs:
        sig = canonical_b64decode(entry["sig"])
        if sig is None:
            report.fail("envelope", "envelope.base64_invalid")
        result.append((entry["keyid"], sig))
    return result


def check_signatures(env: Envelope, sig_count: int, trusted: dict, threshold: int,
                     report: Report) -> None:
    fail = lambda code: report.fail("signature", code)
    if sig_count == 0:
        fail("signature.missing")
        return
    message = pae(env.payload_type, env.payload)
    names_trusted = False
    for kid, sig in env.signatures:
        key = trusted.get(kid)
        if key is None:
            report.ignored_key_ids.append(kid)
            continue
        names_trusted = True
        if sig is None:
            continue                      # already reported as envelope.base64_invalid
        try:
            if len(sig) != 64:
                raise InvalidSignature()
            key.verify(sig, message)
            report.key_ids.add(kid)
        except InvalidSignature:
            fail("signature.invalid")
    if not names_trusted:
        fail("signature.untrusted")
    if threshold > 1 and len(report.key_ids) < threshold:
        fail("signature.threshold_not_met")
    elif len(report.key_ids) < threshold:
        report.checks["signature"] = "failed"


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
    blobs: list[Blob] | None = None       # None when the list is unusable


def check_manifest(payload: bytes, report: Report) -> Manifest | None:
    fail = lambda code: report.fail("manifest", code)
    doc = parse_json(payload)
    if doc.invalid:
        fail("manifest.json_invalid")
    if doc.duplicate:
        fail("manifest.duplicate_key")
    if doc.too_deep:
        fail("manifest.limit_exceeded")
    if doc.invalid or doc.duplicate or doc.too_deep:
        return None
    obj = doc.value
    if not isinstance(obj, dict):
        fail("manifest.field_invalid")
        return None
    _check_members(obj, {"schema", "package_id", "created_at", "provenance", "archive", "blobs"},
                   report)
    _check_top_strings(obj, report)
    _check_provenance(obj.get("provenance"), report)
    _check_archive_object(obj.get("archive"), report)
    return Manifest(obj, _check_blob_list(obj.get("blobs"), report))


def _check_members(obj: dict, required: set, report: Report) -> None:
    if not required <= set(obj):
        report.fail("manifest", "manifest.field_invalid")
    if set(obj) - required:
        report.fail("manifest", "manifest.unknown_field")


def _check_top_strings(obj: dict, report: Report) -> None:
    fail = lambda code: report.fail("manifest", code)
    for name, rule, code in (("schema", lambda v: v == SCHEMA, "manifest.schema"),
                             ("package_id", is_hex64, "manifest.digest_invalid"),
                             ("created_at", is_timestamp, "manifest.created_at_invalid")):
        value = obj.get(name)
        if name not in obj:
            continue                      # reported by _check_members
        if not is_str(value):
            fail("manifest.field_invalid")
        elif not rule(value):
            fail(code)
    pid = obj.get("package_id")
    if is_str(pid) and is_hex64(pid):
        report.package_id = pid


def _check_provenance(prov, report: Report) -> None:
    fail = lambda code: report.fail("manifest", code)
    if prov is None:
        return
    if not isinstance(prov, dict):
        fail("manifest.field_invalid")
        return
    for name in ("brain_runtime_version", "ai_app_version", "environment_id"):
        value = prov.get(name)
        if not is_str(value):
            fail("manifest.field_invalid")
        elif not is_identifier(value):
            fail("manifest.identifier_invalid")
    if any(not is_str(v) for v in prov.values()):
        fail("manifest.field_invalid")


def _check_archive_object(arc, report: Report) -> None:
    fail = lambda code: report.fail("manifest", code)
    if arc is None:
        return
    if not isinstance(arc, dict):
        fail("manifest.field_invalid")
        return
    _check_members(arc, {"name", "compression", "size", "sha256"}, report)
    comp, name = arc.get("compression"), arc.get("name")
    if "compression" in arc and (not is_str(comp) or comp not in COMPRESSION_NAMES):
        fail("manifest.field_invalid")
    if "name" in arc and not is_str(name):
        fail("manifest.field_invalid")
    if is_str(name) and is_str(comp) and COMPRESSION_NAMES.get(comp, name) != name:
        report.fail("archive", "archive.name_mismatch")
    if "size" in arc and not is_json_int(arc["size"]):
        fail("manifest.field_invalid")
    sha = arc.get("sha256")
    if "sha256" in arc:
        if not is_str(sha):
            fail("manifest.field_invalid")
        elif not is_hex64(sha):
            fail("manifest.digest_invalid")


def _check_blob_list(blobs, report: Report) -> list[Blob] | None:
    fail = lambda code: report.fail("manifest", code)
    if blobs is None:
        return None
    if not isinstance(blobs, list):
        fail("manifest.field_invalid")
        return None
    if len(blobs) > MAX_BLOBS:
        fail("manifest.limit_exceeded")
        return None
    result: list[Blob] | None = []
    total = 0
    for entry in blobs:
        blob = _check_blob_entry(entry, report)
        if blob is None:
            result = None
            continue
        total += blob.size
        if blob.size > MAX_BLOB_SIZE:
            fail("manifest.limit_exceeded")
            result = None
        if result is not None:
            result.append(blob)
    if total > MAX_TOTAL_SIZE:
        fail("manifest.limit_exceeded")
        result = None
    _check_blob_paths([b for b in blobs if isinstance(b, dict) and is_str(b.get("path"))],
                      report)
    return result


def _check_blob_entry(entry, report: Report) -> Blob | None:
    fail = lambda code: report.fail("manifest", code)
    if not isinstance(entry, dict):
        fail("manifest.field_invalid")
        return None
    _check_members(entry, {"path", "size", "sha256"}, report)
    path, size, sha = entry.get("path"), entry.get("size"), entry.get("sha256")
    ok = True
    if not is_str(path):
        ok = False
        if "path" in entry:
            fail("manifest.field_invalid")
    elif not is_valid_path(path_bytes(path) or b""):
        fail("manifest.path_invalid")
    if not is_json_int(size):
        ok = False
        if "size" in entry:
            fail("manifest.field_invalid")
    if not is_str(sha):
        ok = False
        if "sha256" in entry:
            fail("manifest.field_invalid")
    elif not is_hex64(sha):
        fail("manifest.digest_invalid")
    return Blob(path, path_bytes(path) or b"", size, sha) if ok else None


def _check_blob_paths(entries: list[dict], report: Report) -> None:
    """Order, exact duplicates and case/normalization collisions."""
    fail = lambda code: report.fail("manifest", code)
    raws = [path_bytes(e["path"]) or b"" for e in entries]
    for prev, cur in zip(raws, raws[1:]):
        if prev > cur:
            fail("manifest.blobs_unsorted")
    if len(set(raws)) != len(raws):
        fail("manifest.blob_duplicate")
    seen: dict[str, str] = {}
    for entry in entries:
        key = collision_key(entry["path"])
        other = seen.setdefault(key, entry["path"])
        if other != entry["path"]:
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


def check_package_id(manifest: Manifest | None, report: Report) -> None:
    if manifest is None:
        report.not_checked("package_id")
        return
    prov, pid = manifest.obj.get("provenance"), manifest.obj.get("package_id")
    names = ("environment_id", "brain_runtime_version", "ai_app_version")
    if (not isinstance(prov, dict) or not all(is_str(prov.get(n)) for n in names)
            or manifest.blobs is None or not is_str(pid)):
        report.not_checked("package_id")
        return
    if compute_package_id(prov, manifest.blobs) != pid:
        report.fail("package_id", "manifest.package_id_mismatch")


# --------------------------------------------------------------------------
# Section 6: decompression of the episode archive
# --------------------------------------------------------------------------

def raw_chunks(path: str, start: int, end: int):
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        while pos < end:
            chunk = f.read(min(CHUNK * 16, end - pos))
            if not chunk:
                raise OSError("package shrank while reading")
            pos += len(chunk)
            yield chunk


class Decoded:
    """Decompressed chunk stream; sets `trailing` when data follows the stream."""

    def __init__(self) -> None:
        self.trailing = False


def gunzip_chunks(path: str, start: int, end: int, state: Decoded):
    """One gzip member (RFC 1952); any byte after it sets state.trailing."""
    dec = zlib.decompressobj(wbits=31)
    for chunk in raw_chunks(path, start, end):
        if dec.eof:
            state.trailing = True
            return
        data = chunk
        while not dec.eof:
            try:
                out = dec.decompress(data, CHUNK)
            except zlib.error as exc:
                raise DecompressError(str(exc)) from exc
            data = dec.unconsumed_tail
            if out:
                yield out
            elif not data:
                break
        if dec.eof and (dec.unused_data or data):
            state.trailing = True
            return
    if not dec.eof:
        raise DecompressError("gzip stream truncated")


ZSTD_MAGIC = 0xFD2FB528


def scan_zstd_frames(path: str, start: int, end: int) -> tuple[int, str]:
    """Walk zstd frames (RFC 8878) without decoding. Returns (frames_end, status)
    with status 'ok', 'trailing' (non-frame bytes after >= 1 frame) or 'corrupt'."""
    frames = 0
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
                pos = _zstd_frame_end(read_at, pos)
            elif value >= 0 and value & 0xFFFFFFF0 == 0x184D2A50:
                size = read_at(pos + 4, 4)
                pos = pos + 8 + int.from_bytes(size, "little") if size else end + 1
            else:
                return pos, "trailing" if frames else "corrupt"
            if pos > end:
                return end, "corrupt"
            frames += 1
    return pos, "ok" if frames else "corrupt"


def _zstd_frame_end(read_at, pos: int) -> int:
    """End offset of the zstd frame starting at pos (a huge value when truncated)."""
    bad = 1 << 62
    fhd = read_at(pos + 4, 1)
    if fhd is None or fhd[0] & 0x08:
        return bad
    d = fhd[0]
    single = (d >> 5) & 1
    fcs = [1 if single else 0, 2, 4, 8][d >> 6]
    pos += 4 + 1 + (0 if single else 1) + [0, 1, 2, 4][d & 3] + fcs
    while True:
        head = read_at(pos, 3)
        if head is None:
            return bad
        v = int.from_bytes(head, "little")
        btype, bsize = (v >> 1) & 3, v >> 3
        if btype == 3:
            return bad
        pos += 3 + (1 if btype == 1 else bsize)
        if v & 1:
            break
    return pos + (4 if d & 0x04 else 0)


def unzstd_chunks(path: str, start: int, end: int):
    try:
        import zstandard  # type: ignore
    except ImportError:
        zstandard = None
    if zstandard is not None:
        yield from _unzstd_module(zstandard, path, start, end)
    else:
        yield from _unzstd_cli(path, start, end)


def _unzstd_module(zstandard, path: str, start: int, end: int):
    dctx = zstandard.ZstdDecompressor()
    reader = dctx.stream_reader(_RegionReader(path, start, end), read_across_frames=True)
    try:
        while True:
            out = reader.read(CHUNK)
            if not out:
                return
            yield out
    except zstandard.ZstdError as exc:
        raise DecompressError(str(exc)) from exc


class _RegionReader:
    def __init__(self, path: str, start: int, end: int) -> None:
        self.it = raw_chunks(path, start, end)
        self.buf = b""

    def read(self, n: int = -1) -> bytes:
        while not self.buf:
            self.buf = next(self.it, b"")
            if not self.buf:
                return b""
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def _unzstd_cli(path: str, start: int, end: int):
    proc = subprocess.Popen(["zstd", "-dc", "-q"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    writer = threading.Thread(target=_feed_process, args=(proc, path, start, end), daemon=True)
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
        raise DecompressError("zstd reported an error")


def _feed_process(proc, path: str, start: int, end: int) -> None:
    try:
        for chunk in raw_chunks(path, start, end):
            proc.stdin.write(chunk)
    except (BrokenPipeError, OSError, ValueError):
        pass
    finally:
        try:
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass


# --------------------------------------------------------------------------
# Sections 6 and 7: archive and blob checks
# --------------------------------------------------------------------------

def hash_region(path: str, start: int, end: int) -> str:
    h = hashlib.sha256()
    for chunk in raw_chunks(path, start, end):
        h.update(chunk)
    return h.hexdigest()


def check_archive(pkg: str, member: Member | None, manifest: Manifest | None,
                  report: Report) -> None:
    if member is None or manifest is None:
        report.not_checked("archive", "blobs")
        return
    fail = lambda code: report.fail("archive", code)
    arc = manifest.obj.get("archive")
    arc = arc if isinstance(arc, dict) else {}
    start, end = member.offset, member.offset + member.size
    if is_str(arc.get("name")) and arc["name"].encode("utf-8", "replace") != member.name:
        fail("archive.name_mismatch")
    declared_size = arc.get("size") if is_json_int(arc.get("size")) else None
    if declared_size is not None and declared_size != member.size:
        fail("archive.size_mismatch")
    if declared_size is not None and member.size > declared_size:
        # Reading stops at the declared size (section 9): nothing more is read.
        report.not_checked("archive", "blobs")
        return
    sha = arc.get("sha256")
    if declared_size == member.size and is_str(sha):
        # Compared as written: a malformed declared digest never matches.
        if hash_region(pkg, start, end) != sha:
            fail("archive.digest_mismatch")
    else:
        report.not_checked("archive")
    if manifest.blobs is None:
        report.not_checked("blobs")
        return
    check_archive_contents(pkg, member, manifest.blobs, report)


def archive_limit(blobs: list[Blob]) -> int:
    return TAR_RECORD_SLACK + sum(BLOCK + b.size + pad_len(b.size) + PAX_ALLOWANCE_PER_BLOB
                                  for b in blobs)


def check_archive_contents(pkg: str, member: Member, blobs: list[Blob], report: Report) -> None:
    fail = lambda code: report.fail("archive", code)
    start, end = member.offset, member.offset + member.size
    compression = ARCHIVE_NAMES[member.name]
    state = Decoded()
    if compression == "none":
        chunks = raw_chunks(pkg, start, end)
    elif compression == "gzip":
        chunks = gunzip_chunks(pkg, start, end, state)
    else:
        frames_end, status = scan_zstd_frames(pkg, start, end)
        if status == "corrupt":
            fail("archive.corrupt")
            report.not_checked("blobs")
            return
        state.trailing = status == "trailing"
        chunks = unzstd_chunks(pkg, start, frames_end)
    try:
        check_blobs(TarReader(StreamSource(chunks, archive_limit(blobs))), blobs, report)
        complete = True
    except TarProblem:
        fail("archive.corrupt")
        complete = False
    except DecompressError:
        fail("archive.corrupt")
        complete = False
    except LimitExceeded:
        fail("archive.limit_exceeded")
        complete = False
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()
    if state.trailing:
        fail("archive.trailing_data")
    if not complete:
        report.not_checked("blobs")


def check_blobs(reader: TarReader, blobs: list[Blob], report: Report) -> None:
    """Match archive members against the manifest blobs (section 7, check 7).
    Returns normally when every member was read (problems after the last member,
    such as trailing bytes or a missing marker, are reported here); other tar
    problems propagate to the caller as archive.corrupt."""
    fail = lambda code: report.fail("blobs", code)
    index = {}
    for i, blob in enumerate(blobs):
        index.setdefault(blob.raw, (i, blob))
    seen: set[bytes] = set()
    highest = -1
    tail_code = None                      # a problem found after the last member
    try:
        for m in reader.members():
            if not m.regular:
                fail("blob.member_type")
                seen.add(m.name)          # present, but not as a file: not also "missing"
                continue
            if not m.meta_ok:
                fail("blob.metadata")
            if not is_valid_path(m.name):
                fail("blob.path_invalid")
            if m.name in seen:
                fail("blob.duplicate_member")
                continue
            seen.add(m.name)
            entry = index.get(m.name)
            if entry is None:
                fail("blob.unexpected")
                continue
            i, blob = entry
            if i < highest:
                fail("blob.out_of_order")
            highest = max(highest, i)
            _check_blob_data(reader, m, blob, report)
    except TarProblem as exc:
        if exc.kind not in (TRAILING, NO_MARKER):
            raise
        tail_code = "archive.trailing_data" if exc.kind == TRAILING else "archive.corrupt"
        if not exc.members_complete:      # members may hide behind a lone zero block
            report.fail("archive", tail_code)
            report.not_checked("blobs")
            return
    if any(b.raw not in seen for b in blobs):
        fail("blob.missing")
    if tail_code:
        report.fail("archive", tail_code)


def _check_blob_data(reader: TarReader, m: Member, blob: Blob, report: Report) -> None:
    if m.size != blob.size:
        report.fail("blobs", "blob.size_mismatch")
        return                            # data is skipped, not hashed
    h = hashlib.sha256()
    remaining = m.size
    while remaining:
        data = reader.read_data(min(CHUNK, remaining))
        h.update(data)
        remaining -= len(data)
    if h.hexdigest() != blob.sha256:
        report.fail("blobs", "blob.digest_mismatch")


# --------------------------------------------------------------------------
# Section 6: the outer package
# --------------------------------------------------------------------------

OUTER_CODES = {NOT_TAR: "package.not_tar", CORRUPT: "package.corrupt",
               NO_MARKER: "package.trailing_data", TRAILING: "package.trailing_data"}


def scan_package(f, size: int, report: Report) -> list[Member]:
    """Parse the outer tar; returns the members whose data is complete."""
    fail = lambda code: report.fail("package.structure", code)
    reader = TarReader(FileSource(f, 0, size))
    members: list[Member] = []
    complete = True
    try:
        for m in reader.members():
            if m.offset + m.size > size:
                raise TarProblem(CORRUPT, "member data truncated")
            members.append(m)
    except TarProblem as exc:
        fail(OUTER_CODES[exc.kind])
        complete = exc.kind in (TRAILING, NO_MARKER) and exc.members_complete
    if complete and len(members) != 2:
        fail("package.member_count")
    for pos, m in enumerate(members):
        if not m.regular:
            fail("package.member_type")
        elif not m.meta_ok:
            fail("package.metadata")
        if (pos == 0 and m.name != ENVELOPE_NAME) or (pos == 1 and m.name not in ARCHIVE_NAMES):
            fail("package.member_name")
    return members


def pick_member(members: list[Member], names) -> Member | None:
    for m in members:
        if m.regular and m.name in names:
            return m
    return None


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

def verify(pkg: str, trusted: dict, threshold: int) -> Report:
    report = Report()
    with open(pkg, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        members = guarded(report, "package.structure", "package.corrupt",
                          lambda: scan_package(f, size, report)) or []
        env_member = pick_member(members, {ENVELOPE_NAME})
        arc_member = pick_member(members, ARCHIVE_NAMES)
        env = None
        if env_member is None:
            report.not_checked("envelope")
        elif env_member.size > MAX_ENVELOPE:
            report.fail("envelope", "envelope.too_large")
            report.not_checked("envelope")
        else:
            f.seek(env_member.offset)
            data = f.read(env_member.size)
            env = guarded(report, "envelope", "envelope.json_invalid",
                          lambda: check_envelope(data, report))
    run_signature(env, trusted, threshold, report)
    manifest = None
    if env is None or env.payload is None:
        report.not_checked("manifest")
    else:
        manifest = guarded(report, "manifest", "manifest.json_invalid",
                           lambda: check_manifest(env.payload, report))
        if manifest is None:
            report.not_checked("manifest")
    guarded(report, "package_id", "manifest.package_id_mismatch",
            lambda: check_package_id(manifest, report))
    guarded(report, "archive", "archive.corrupt",
            lambda: check_archive(pkg, arc_member, manifest, report))
    return report


def run_signature(env: Envelope | None, trusted: dict, threshold: int, report: Report) -> None:
    if env is None or env.payload is None or env.payload_type is None or env.signatures is None:
        report.not_checked("signature")
        return
    guarded(report, "signature", "signature.invalid",
            lambda: check_signatures(env, env.signature_count, trusted, threshold, report))


def guarded(report: Report, check: str, code: str, func):
    """Run one stage; an unexpected exception on hostile input becomes `code`."""
    try:
        return func()
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - never crash on hostile input
        report.fail(check, code)
        report.not_checked(check)
        print(f"reference_verify: internal failure in {check}: {exc!r}", file=sys.stderr)
        return None


def load_trusted_keys(paths: list[str]) -> dict:
    keys = {}
    for path in paths:
        with open(path, "rb") as f:
            pem = f.read()
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{path}: not an SPKI PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise UsageError(f"{path}: not an Ed25519 public key")
        keys[key_id(key)] = key
    return keys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package")
    parser.add_argument("--trusted-key", action="append", default=[])
    parser.add_argument("--threshold", type=int, default=1)
    args = parser.parse_args(argv)
    if args.threshold < 1:
        parser.error("--threshold must be at least 1")
    try:
        trusted = load_trusted_keys(args.trusted_key)
        report = verify(args.package, trusted, args.threshold)
    except UsageError as exc:
        print(f"reference_verify: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"reference_verify: {exc}", file=sys.stderr)
        print(json.dumps({"valid": False, "package_id": None, "key_ids": [],
                          "errors": ["io.error"]}))
        return 2
    print(json.dumps(report.as_json(), sort_keys=True))
    return 0 if report.valid else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
