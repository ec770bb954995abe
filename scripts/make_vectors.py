#!/usr/bin/env python3
"""Regenerates TestVectors/ (run through scripts/make-vectors).

The valid packages come from the continuon-pack CLI with a fixed key, fixed blobs and a fixed SOURCE_DATE_EPOCH.
The invalid ones are built here, independently of the Swift code: this script writes its own ustar headers,
canonical JSON, DSSE envelopes and Ed25519 signatures (Python `cryptography`), so that each hostile package breaks
exactly one rule while everything else, including a good signature by the trusted key, is in order.
"""
import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VECTORS = os.path.join(ROOT, "TestVectors")
PAYLOAD_TYPE = "application/vnd.continuon.episode-manifest+json"
EPOCH = 1704067200  # 2024-01-01T00:00:00Z
PROVENANCE = {"environment_id": "vector-env-01", "brain_runtime_version": "1.0.0", "ai_app_version": "2.0.0"}
# RFC 8032 section 7.1, TEST 1 and TEST 2 secret keys: public, well-known, for test vectors only.
SEED_1 = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
SEED_2 = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
L = 2**252 + 27742317777372353535851937790883648493

KEY_1 = Ed25519PrivateKey.from_private_bytes(SEED_1)
KEY_2 = Ed25519PrivateKey.from_private_bytes(SEED_2)


# MARK: - Primitives written from docs/signed-ingestion.md

def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def raw_public(key):
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key):
    body = '{"keytype":"ed25519","keyval":{"public":"%s"},"scheme":"ed25519"}' % raw_public(key).hex()
    return hashlib.sha256(body.encode()).hexdigest()


def pae(payload_type, payload):
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def envelope(manifest_bytes, keys=(KEY_1,), payload_type=PAYLOAD_TYPE, sign_type=None, sig_filter=None):
    message = pae(sign_type or payload_type, manifest_bytes)
    signatures = []
    for key in keys:
        sig = key.sign(message)
        if sig_filter:
            sig = sig_filter(sig)
        signatures.append({"keyid": key_id(key), "sig": base64.b64encode(sig).decode()})
    return canonical_json({"payload": base64.b64encode(manifest_bytes).decode(), "payloadType": payload_type,
                           "signatures": signatures})


def package_id(provenance, blobs):
    text = "continuon-package-id/v1\nenvironment_id=%s\nbrain_runtime_version=%s\nai_app_version=%s\n" % (
        provenance["environment_id"], provenance["brain_runtime_version"], provenance["ai_app_version"])
    data = text.encode() + b"".join(
        b"%s %d %s\n" % (b["sha256"].encode(), b["size"], b["path"].encode()) for b in blobs)
    return hashlib.sha256(data).hexdigest()


def octal(value, width):
    return (("%0" + str(width - 1) + "o") % value).encode() + b"\0"


def ustar_header(name, size, typeflag=b"0", mode=0o644, uid=0, gid=0, mtime=0, uname=b"", linkname=b"",
                 magic=b"ustar\x0000", devmajor=0, devminor=0, patch=None):
    name = name if isinstance(name, bytes) else name.encode()
    prefix = b""
    if len(name) > 100:
        cut = name.rindex(b"/", 0, 156)
        prefix, name = name[:cut], name[cut + 1:]
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = octal(mode, 8)
    h[108:116] = octal(uid, 8)
    h[116:124] = octal(gid, 8)
    h[124:136] = octal(size, 12)
    h[136:148] = octal(mtime, 12)
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[157:157 + len(linkname)] = linkname
    h[257:265] = magic
    h[265:265 + len(uname)] = uname
    h[329:337] = octal(devmajor, 8)
    h[337:345] = octal(devminor, 8)
    h[345:345 + len(prefix)] = prefix
    for offset, raw in (patch or {}).items():  # raw bytes over a field, before the checksum
        h[offset:offset + len(raw)] = raw
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def pad(data):
    return data + b"\0" * (-len(data) % 512)


def pax_records(records):
    out = b""
    for key, value in records:
        body = b" %s=%s\n" % (key.encode(), value if isinstance(value, bytes) else value.encode())
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length += 1
        out += str(length).encode() + body
    return out


def member(name, data=b"", pax=None, pax_patch=None, **header):
    """One tar member (with an optional pax header) as bytes."""
    out = b""
    name = name if isinstance(name, bytes) else name.encode()
    if pax is not None:
        records = pax_records(pax)
        out += ustar_header(b"PaxHeader/x", len(records), typeflag=b"x", patch=pax_patch) + pad(records)
        if any(key == "path" for key, _ in pax):
            name = name[:100]  # the ustar name is only a stand-in (a byte prefix) for the pax path
    return out + ustar_header(name, len(data), **header) + pad(data)


def tar(*members, end=b"\0" * 1024):
    return b"".join(members) + end


# MARK: - The fixed inputs

def crc32c(data):
    """CRC-32C (Castagnoli), bit by bit: slow and obviously right, for a few kilobytes."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def tfrecord(records):
    """TFRecord framing (spec section 13.2) around each record."""
    def masked(data):
        crc = crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    out = b""
    for data in records:
        length = len(data).to_bytes(8, "little")
        out += length + masked(length).to_bytes(4, "little") + data + masked(data).to_bytes(4, "little")
    return out


BLOBS = {
    "empty.bin": b"",
    "episode-0001/steps.tfrecord": tfrecord([bytes(range(256)) * 4, b"", bytes(range(256)) * 16]),
    "episode-0001/camera/front.bin": hashlib.sha256(b"front").digest() * 300,
    "episode-0002/steps.tfrecord": tfrecord([b"step\n" * 777]),
    "notes/caf\u00e9-\u65e5\u672c.txt": "Pick and place, \u65e5\u672c.\n".encode(),
}


def write_inputs():
    directory = os.path.join(VECTORS, "valid", "episodes")
    shutil.rmtree(directory, ignore_errors=True)
    for path, data in BLOBS.items():
        full = os.path.join(directory, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
    return directory


def write_keys():
    keys = os.path.join(VECTORS, "keys")
    os.makedirs(keys, exist_ok=True)
    for name, key in (("test-ed25519", KEY_1), ("second-ed25519", KEY_2)):
        with open(os.path.join(keys, name + ".pem"), "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        with open(os.path.join(keys, name + ".pub"), "wb") as f:
            f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))


def run_cli(cli, *args):
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
    return subprocess.run([cli, *args], check=True, capture_output=True, env=env).stdout.decode()


def make_valid(cli):
    valid = os.path.join(VECTORS, "valid")
    inputs = write_inputs()
    expected = {"created_at": "2024-01-01T00:00:00Z", "provenance": PROVENANCE, "key_id": key_id(KEY_1),
                "public_key_hex": raw_public(KEY_1).hex(), "packages": {}}
    for compression in ("none", "gzip", "zstd"):
        scratch = os.path.join(valid, "tmp")
        os.makedirs(scratch, exist_ok=True)
        out = run_cli(cli, "pack", inputs, "--key", os.path.join(VECTORS, "keys", "test-ed25519.pem"),
                      "--runtime-version", PROVENANCE["brain_runtime_version"],
                      "--app-version", PROVENANCE["ai_app_version"],
                      "--environment-id", PROVENANCE["environment_id"],
                      "--compression", compression, "--output", scratch)
        produced = out.strip().splitlines()[-1]
        target = os.path.join(valid, "package-%s.cpkg" % compression)
        os.replace(produced, target)
        shutil.rmtree(scratch)
        with tarfile.open(target) as t:
            env_bytes = t.extractfile("manifest.dsse.json").read()
        manifest_bytes = base64.b64decode(json.loads(env_bytes)["payload"])
        manifest = json.loads(manifest_bytes)
        with open(target, "rb") as f:
            data = f.read()
        expected["package_id"] = manifest["package_id"]
        expected["packages"][compression] = {
            "file": os.path.basename(target), "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
            "archive_sha256": manifest["archive"]["sha256"], "archive_size": manifest["archive"]["size"],
            "byte_exact": compression == "none"}
        if compression == "none":
            with open(os.path.join(valid, "manifest-none.json"), "wb") as f:
                f.write(manifest_bytes)
            with open(os.path.join(valid, "envelope-none.json"), "wb") as f:
                f.write(env_bytes)
            blobs = manifest["blobs"]
            text = "continuon-package-id/v1\nenvironment_id=%s\nbrain_runtime_version=%s\nai_app_version=%s\n" % (
                PROVENANCE["environment_id"], PROVENANCE["brain_runtime_version"], PROVENANCE["ai_app_version"])
            preimage = text.encode() + b"".join(
                b"%s %d %s\n" % (b["sha256"].encode(), b["size"], b["path"].encode()) for b in blobs)
            with open(os.path.join(valid, "package-id-preimage.txt"), "wb") as f:
                f.write(preimage)
            assert hashlib.sha256(preimage).hexdigest() == manifest["package_id"], "package ID disagrees with spec"
            assert canonical_json(manifest) == manifest_bytes, "manifest is not canonical JSON as the spec says"
            expected["blobs"] = blobs
    with open(os.path.join(valid, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    return os.path.join(valid, "package-none.cpkg")


# MARK: - Hostile packages

class Base:
    """The valid `none` package taken apart, to be reassembled with one thing wrong."""

    def __init__(self, path):
        with tarfile.open(path) as t:
            self.envelope = t.extractfile("manifest.dsse.json").read()
            self.archive = t.extractfile("episodes.tar").read()
        self.manifest = json.loads(base64.b64decode(json.loads(self.envelope)["payload"]))
        self.blobs = dict(BLOBS)

    def manifest_for(self, archive, blobs, compression="none", name=None, fix_id=True):
        """A manifest describing `archive` holding `blobs` [(path, data)] in that order."""
        entries = [{"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for p, d in blobs]
        m = {"schema": "continuon.episode-package/v1", "created_at": "2024-01-01T00:00:00Z",
             "provenance": dict(PROVENANCE),
             "archive": {"name": name or {"none": "episodes.tar", "gzip": "episodes.tar.gz",
                                          "zstd": "episodes.tar.zst"}[compression],
                         "compression": compression, "size": len(archive),
                         "sha256": hashlib.sha256(archive).hexdigest()},
             "blobs": entries}
        m["package_id"] = package_id(m["provenance"], entries)
        return m


def make_promotion(cli, base_path):
    """TestVectors/promotion/training: what promoting package-none.cpkg writes (spec section 13), with
    promoted_at fixed by SOURCE_DATE_EPOCH; the promoter's own .promote/ directory is left out."""
    with open(os.path.join(VECTORS, "valid", "expected.json")) as f:
        package = json.load(f)["package_id"]
    root = os.path.join(VECTORS, "promotion")
    shutil.rmtree(root, ignore_errors=True)
    staging = os.path.join(root, "staging")
    os.makedirs(staging)
    shutil.copyfile(base_path, os.path.join(staging, package + ".cpkg"))
    training = os.path.join(root, "training")
    run_cli(cli, "promote", "--from", staging, "--to", training, "--trusted-key",
            os.path.join(VECTORS, "keys", "test-ed25519.pub"))
    shutil.rmtree(os.path.join(training, ".promote"))
    shutil.rmtree(staging)


def outer(env_bytes, archive_bytes, archive_name="episodes.tar", extra=b"", end=b"\0" * 1024):
    return tar(member("manifest.dsse.json", env_bytes), member(archive_name, archive_bytes), end=end) + extra


def signed_package(manifest, archive, archive_name=None, manifest_bytes=None, **env):
    body = manifest_bytes if manifest_bytes is not None else canonical_json(manifest)
    return outer(envelope(body, **env), archive, archive_name or manifest["archive"]["name"])


def sorted_blobs(blobs):
    return sorted(blobs, key=lambda item: item[0].encode())


def archive_of(blobs, **header):
    return tar(*(member(p, d, **header) for p, d in blobs))


def zstd_compress(data):
    return subprocess.run(["zstd", "-q", "-3", "-c"], input=data, capture_output=True, check=True).stdout


def make_invalid(base_path):
    base = Base(base_path)
    good_blobs = sorted_blobs(base.blobs.items())
    good_archive = base.archive
    cases = {}

    def add(name, data, codes, description, **params):
        cases[name] = (data, sorted(set(codes)), description, params)

    def with_manifest(mutate, archive=good_archive, blobs=good_blobs, fix_id=True, **env):
        m = base.manifest_for(archive, blobs)
        mutate(m)
        if fix_id and isinstance(m.get("blobs"), list) and isinstance(m.get("provenance"), dict):
            try:
                m["package_id"] = package_id(m["provenance"], m["blobs"])
            except (KeyError, TypeError):
                pass
        return signed_package(m, archive, **env)

    def blob_case(name, blobs_in_archive, manifest_blobs, codes, description, compression="none", **header):
        archive = archive_of(blobs_in_archive, **header)
        if compression == "zstd":
            archive = zstd_compress(archive)
        m = base.manifest_for(archive, manifest_blobs, compression=compression)
        add(name, signed_package(m, archive), codes, description)

    # Numeric fields of every header are octal (devmajor/devminor may be blank), checked wherever the header stands:
    # libarchive checks the first header of each tar, so these break a header other than the first.
    def later_member_case(name, codes, description, **member_args):
        members = [member(p, d) for p, d in good_blobs]
        path, data = good_blobs[1]
        members[1] = member(path, data, **member_args)
        archive = tar(*members)
        add(name, signed_package(base.manifest_for(archive, good_blobs), archive), codes, description)

    later_member_case("inner-mode-digits-nul-garbage", ["archive.corrupt"],
                      "The second member's mode is digits, a NUL, then a letter: not an octal field (not metadata).",
                      patch={100: b"000644\0Z"})
    later_member_case("inner-devmajor-garbage", ["archive.corrupt"],
                      "The second member's devmajor holds letters (its value is not interpreted, its syntax is).",
                      patch={329: b"zzzzzzz\0"})
    later_member_case("inner-pax-header-mode-garbage", ["archive.corrupt"],
                      "The second member's pax header has letters in its mode field (values of a pax header's fields are "
                      "not interpreted; their syntax is checked).",
                      pax=[("path", good_blobs[1][0])], pax_patch={100: b"zzzzzzz\0"})
    envelope_member = bytearray(member("manifest.dsse.json", base.envelope))
    envelope_member[0:512] = ustar_header("manifest.dsse.json", len(base.envelope), patch={100: b"0644\0xyz"})
    add("outer-first-header-numeric-garbage", bytes(envelope_member) + pad(b"") + member("episodes.tar", good_archive)
        + b"\0" * 1024, ["package.not_tar"],
        "The first header's mode is digits, a NUL, then letters: it cannot be read as a tar header.")

    # The cap of 20 listed blob failures: every code found still appears (spec section 7, report).
    blob_case("error-cap-every-code", [("u%02d" % i, b"") for i in range(25)], [("m.bin", b"listed")],
              ["blob.unexpected", "blob.missing"],
              "25 unlisted members, then the one listed blob missing: past the 20th failure the first of a new code is "
              "still listed.")

    # Structure of the outer package.
    add("empty-file", b"", ["package.not_tar"], "A zero-byte file.")
    add("not-a-tar", b"This is a text file, not a package.\n" * 20, ["package.not_tar"], "Text, not a tar.")
    add("members-swapped", tar(member("episodes.tar", good_archive), member("manifest.dsse.json", base.envelope)),
        ["package.member_name"], "The episode archive comes before the envelope.")
    add("third-member", tar(member("manifest.dsse.json", base.envelope), member("episodes.tar", good_archive),
                            member("extra.bin", b"smuggled")),
        ["package.member_count"], "A third member after the episode archive.")
    add("envelope-only", tar(member("manifest.dsse.json", base.envelope)), ["package.member_count"],
        "The episode archive is missing.")
    add("outer-zero-block-then-archive",
        member("manifest.dsse.json", base.envelope) + b"\0" * 512 + member("episodes.tar", good_archive) + b"\0" * 1024,
        ["package.trailing_data"],
        "The envelope, one zero block, then the archive member: a lone zero block followed by data (section 7.1).")
    add("outer-zero-block-then-short-data", outer(base.envelope, good_archive, end=b"\0" * 512) + b"x" * 100,
        ["package.corrupt"],
        "One zero block, then 100 bytes and the end of the file: fewer than 512 bytes after it, so a truncated marker.")
    add("outer-one-zero-block", b"\0" * 512, ["package.corrupt"],
        "One zero block and the end of the file: an end-of-archive marker cut short.")
    add("outer-trailing-garbage", outer(base.envelope, good_archive, extra=b"smuggled bytes"),
        ["package.trailing_data"], "Non-zero bytes after the end-of-archive marker.")
    add("outer-second-tar", outer(base.envelope, good_archive) + tar(member("evil.bin", b"evil")),
        ["package.trailing_data"], "A second tar concatenated after the package.")
    add("outer-too-many-zeros", outer(base.envelope, good_archive, extra=b"\0" * 20480),
        ["package.trailing_data"], "More than 10240 zero bytes after the end-of-archive marker.")
    full = outer(base.envelope, good_archive)
    add("truncated-in-archive", full[:2048 + 512 + 1000], ["package.corrupt"],
        "Cut in the middle of the episode archive's data.")
    add("truncated-before-end-marker", full[:-1024], ["package.corrupt"],
        "The end-of-archive marker is missing.")
    add("truncated-in-envelope", full[:700], ["package.corrupt"], "Cut in the middle of the envelope.")
    add("outer-member-symlink", tar(member("manifest.dsse.json", base.envelope),
                                    member("episodes.tar", b"", typeflag=b"2", linkname=b"/etc/passwd")),
        ["package.member_type"], "The second member is a symbolic link.")
    add("outer-metadata", tar(member("manifest.dsse.json", base.envelope, mtime=1700000000),
                              member("episodes.tar", good_archive)),
        ["package.metadata"], "The envelope member has a non-zero mtime.")
    add("outer-bad-checksum-first", bytearray(full), ["package.not_tar"],
        "The first header's checksum does not match (so the file is not recognizably a tar).")
    cases["outer-bad-checksum-first"][0][148:150] = b"77"
    second_header = 512 + len(pad(base.envelope))
    add("outer-bad-checksum", bytearray(full), ["package.corrupt"], "The second header's checksum does not match.")
    cases["outer-bad-checksum"][0][second_header + 148:second_header + 150] = b"77"
    add("outer-gnu-magic", tar(member("manifest.dsse.json", base.envelope, magic=b"ustar  \0"),
                               member("episodes.tar", good_archive)),
        ["package.corrupt"], "A GNU tar header instead of POSIX ustar.")
    add("unknown-archive-name", outer(base.envelope, good_archive, archive_name="episodes.zip"),
        ["package.member_name"], "The second member has a name the format does not allow.")

    # Envelope and signatures.
    manifest_bytes = canonical_json(base.manifest_for(good_archive, good_blobs))
    add("envelope-not-json", outer(b"{not json", good_archive), ["envelope.json_invalid"], "The envelope is not JSON.")
    env = json.loads(base.envelope)
    dup = base.envelope.replace(b'"payloadType":', b'"payloadType":"text/plain","payloadType":', 1)
    add("envelope-duplicate-key", outer(dup, good_archive), ["envelope.duplicate_key"],
        "payloadType appears twice (first and last differ).")
    add("envelope-unknown-field", outer(canonical_json(dict(env, extra="x")), good_archive), ["envelope.shape"],
        "An unknown envelope member.")
    add("wrong-payload-type", outer(envelope(manifest_bytes, payload_type="application/json"), good_archive),
        ["envelope.payload_type"], "A good signature over the wrong payload type.")
    noncanonical = dict(env, payload=env["payload"].rstrip("="))
    add("payload-base64-unpadded", outer(canonical_json(noncanonical), good_archive), ["envelope.base64_invalid"],
        "The payload base64 has no padding.")
    sig = base64.b64decode(env["signatures"][0]["sig"])
    bad_b64 = dict(env, signatures=[{"keyid": env["signatures"][0]["keyid"],
                                     "sig": base64.b64encode(sig).decode()[:-2] + "B="}])
    add("sig-base64-trailing-bits", outer(canonical_json(bad_b64), good_archive), ["envelope.base64_invalid"],
        "The signature base64 has non-zero trailing bits.")
    add("no-signatures", outer(envelope(manifest_bytes, keys=()), good_archive), ["signature.missing"],
        "The signatures array is empty.")
    add("untrusted-key", outer(envelope(manifest_bytes, keys=(KEY_2,)), good_archive), ["signature.untrusted"],
        "Signed only by a key the verifier does not trust.")
    add("signature-tampered", outer(envelope(manifest_bytes, sig_filter=lambda s: s[:10] + bytes([s[10] ^ 1]) + s[11:]),
                                    good_archive), ["signature.invalid"], "One bit of the signature flipped.")

    # Conformance decisions (spec section 7), one vector each.
    flip = lambda s: s[:10] + bytes([s[10] ^ 1]) + s[11:]
    tampered_full = outer(envelope(manifest_bytes, sig_filter=flip), good_archive)
    add("signature-tampered-and-truncated", tampered_full[:2048 + 512 + 1000], ["signature.invalid", "package.corrupt"],
        "A broken signature and a package cut inside the archive: the envelope was checked when its member was "
        "whole, so its code stays beside package.corrupt.")
    tampered_blob = dict(good_blobs)
    first_path = good_blobs[1][0]
    bad_archive = archive_of(sorted_blobs([(p, (d + b"!" if p == first_path else d)) for p, d in good_blobs]))
    m = base.manifest_for(good_archive, good_blobs)
    m["archive"]["size"], m["archive"]["sha256"] = len(bad_archive), hashlib.sha256(bad_archive).hexdigest()
    add("no-signatures-and-size-mismatch",
        outer(envelope(canonical_json(m), keys=()), bad_archive),
        ["signature.missing", "blob.size_mismatch"],
        "No signature, and a blob one byte longer than listed: signature.missing is the only signature code; the "
        "other checks go on.")
    add("manifest-shape-before-values",
        with_manifest(lambda m: (m.update(package_id="not-hex"), m["blobs"][0].update(size=1.5)), fix_id=False),
        ["manifest.field_invalid"],
        "A package_id that is not hex and a blob size of 1.5: the shape error alone (values are judged only on a "
        "decoded shape).")
    add("manifest-array", signed_package(None, good_archive, archive_name="episodes.tar", manifest_bytes=b"[]"),
        ["manifest.field_invalid"], "The payload is JSON but not an object.")
    add("manifest-bom", signed_package(None, good_archive, archive_name="episodes.tar",
                                       manifest_bytes=b"\xef\xbb\xbf" + manifest_bytes),
        ["manifest.json_invalid"], "The manifest starts with a UTF-8 byte-order mark.")
    linkpath = tar(*(member(p, d) for p, d in good_blobs[:1]),
                   member("link", b"", pax=[("linkpath", "target")], typeflag=b"2"))
    add("inner-pax-linkpath-then-symlink",
        signed_package(base.manifest_for(linkpath, good_blobs[:1]), linkpath), ["blob.metadata"],
        "A pax linkpath record before a symbolic link: records are judged when the pax header is read.")
    # A header straddling the decompression limit (section 9): one 100-byte blob, so the limit is
    # 100 + 3584 + 1024 + 10240 = 14948 bytes; 28 empty unlisted members end at 14848, and the next header straddles.
    small = [("a.bin", b"x" * 100)]
    straddle = tar(member(*small[0]), *(member("u%03d" % i) for i in range(27)), member("u999"))
    add("header-straddles-limit", signed_package(base.manifest_for(straddle, small), straddle),
        ["archive.limit_exceeded"],
        "A header whose 512 bytes straddle the decompression limit: judged only when whole, so the limit comes first.")

    def malleate(s):
        value = int.from_bytes(s[32:], "little") + L
        return s[:32] + value.to_bytes(32, "little")
    add("signature-malleable", outer(envelope(manifest_bytes, sig_filter=malleate), good_archive),
        ["signature.invalid"], "S replaced by S + L (the same signature, malleated).")
    add("signature-truncated", outer(envelope(manifest_bytes, sig_filter=lambda s: s[:63]), good_archive),
        ["signature.invalid"], "A 63-byte signature.")
    add("signed-over-other-payload", outer(envelope(manifest_bytes, sign_type="application/vnd.other"), good_archive),
        ["signature.invalid"], "The signature covers a PAE with another payload type.")
    add("threshold-not-met", outer(envelope(manifest_bytes, keys=(KEY_1, KEY_1)), good_archive),
        ["signature.threshold_not_met"], "Two signatures by the same key; the threshold is 2 distinct keys.",
        threshold=2, trusted_keys=["test-ed25519.pub", "second-ed25519.pub"])

    # Manifest.
    add("manifest-not-json", outer(envelope(b"[1,2"), good_archive), ["manifest.json_invalid"],
        "The payload is not JSON.")
    dup_manifest = manifest_bytes.replace(b'"schema":', b'"created_at":"2030-01-01T00:00:00Z","schema":', 1)
    add("manifest-duplicate-key", outer(envelope(dup_manifest), good_archive), ["manifest.duplicate_key"],
        "created_at appears twice (first and last differ).")
    add("manifest-unknown-schema", with_manifest(lambda m: m.update(schema="continuon.episode-package/v2")),
        ["manifest.schema"], "An unknown schema.")
    add("manifest-missing-created-at", with_manifest(lambda m: m.pop("created_at")), ["manifest.field_invalid"],
        "created_at is missing.")
    add("manifest-size-as-string", with_manifest(lambda m: m["blobs"][0].update(size="0"), fix_id=False),
        ["manifest.field_invalid"], "A blob size written as a string.")
    add("manifest-size-as-float", outer(envelope(manifest_bytes.replace(b'"size":0', b'"size":0.0', 1)), good_archive),
        ["manifest.field_invalid"], "A blob size written as 0.0.")
    add("manifest-unknown-field", with_manifest(lambda m: m.update(comment="hi")), ["manifest.unknown_field"],
        "An unknown top-level member.")
    add("manifest-unknown-field-and-schema",
        with_manifest(lambda m: m.update(comment="hi", schema="continuon.episode-package/v2")), ["manifest.unknown_field"],
        "An unknown top-level member and another schema: the unknown member comes first (section 7.4's order).")

    def upper(m):
        m["blobs"][1]["sha256"] = m["blobs"][1]["sha256"].upper()
    add("manifest-uppercase-hex", with_manifest(upper), ["manifest.digest_invalid", "blob.digest_mismatch"],
        "A blob digest in uppercase hex.")

    def short(m):
        m["archive"]["sha256"] = m["archive"]["sha256"][:63]
    add("manifest-short-hex", with_manifest(short), ["manifest.digest_invalid", "archive.digest_mismatch"],
        "The archive digest is 63 hex digits.")
    add("manifest-blobs-unsorted", with_manifest(lambda m: m["blobs"].reverse()),
        ["manifest.blobs_unsorted", "blob.out_of_order"], "The manifest lists the blobs in reverse order.")

    def duplicate_blob(m):
        m["blobs"].insert(1, dict(m["blobs"][1]))
    add("manifest-blob-duplicate", with_manifest(duplicate_blob), ["manifest.blob_duplicate", "blob.missing"],
        "The same blob listed twice.")
    add("package-id-mismatch", with_manifest(lambda m: m.update(package_id="0" * 64), fix_id=False),
        ["manifest.package_id_mismatch"], "The package ID is not the one the blobs give.")
    add("identifier-invalid", with_manifest(lambda m: m["provenance"].update(environment_id="lab 01")),
        ["manifest.identifier_invalid"], "An environment ID with a space.")
    add("created-at-invalid", with_manifest(lambda m: m.update(created_at="2024-02-30T00:00:00Z")),
        ["manifest.created_at_invalid"], "February 30th.")
    add("manifest-deep-nesting", with_manifest(lambda m: m["provenance"].update(note=json.loads("[" * 40 + "]" * 40))),
        ["manifest.limit_exceeded"], "Nesting 40 levels deep.")
    add("compression-invalid", with_manifest(lambda m: m["archive"].update(compression="bzip2")),
        ["manifest.field_invalid"], "An unknown compression.")
    add("archive-name-mismatch", with_manifest(lambda m: m["archive"].update(name="episodes.tar.gz")),
        ["archive.name_mismatch", "archive.corrupt"],
        "The manifest names episodes.tar.gz for compression none; the member is named so, and is not gzip.")

    # Episode archive and blobs, each under a good signature.
    tampered = list(good_blobs)
    tampered[2] = (tampered[2][0], tampered[2][1][:-1] + b"X")
    archive = archive_of(tampered)
    add("blob-digest-mismatch", signed_package(base.manifest_for(archive, good_blobs), archive),
        ["blob.digest_mismatch"], "One byte of one blob differs from the signed digest.")
    shorter = list(good_blobs)
    shorter[2] = (shorter[2][0], shorter[2][1][:-1])
    archive = archive_of(shorter)
    add("blob-size-mismatch", signed_package(base.manifest_for(archive, good_blobs), archive),
        ["blob.size_mismatch"], "One blob is a byte shorter than signed.")
    add("archive-digest-mismatch", with_manifest(lambda m: m["archive"].update(sha256="ab" * 32)),
        ["archive.digest_mismatch"], "The signed archive digest differs.")
    add("archive-size-mismatch", with_manifest(lambda m: m["archive"].update(size=m["archive"]["size"] + 1)),
        ["archive.size_mismatch"], "The signed archive size differs.")
    blob_case("blob-missing", good_blobs[:-1], good_blobs, ["blob.missing"], "A listed blob is not in the archive.")
    blob_case("blob-unexpected", good_blobs + [("zz-extra.bin", b"extra")], good_blobs, ["blob.unexpected"],
              "The archive holds a member the manifest does not list.")
    blob_case("blob-out-of-order", [good_blobs[1], good_blobs[0]] + good_blobs[2:], good_blobs, ["blob.out_of_order"],
              "Two members swapped.")
    blob_case("blob-duplicate-member", good_blobs[:2] + [good_blobs[1]] + good_blobs[2:], good_blobs,
              ["blob.duplicate_member"], "A member appears twice.")
    for name, flag, extra, what in (("symlink", b"2", {"linkname": b"/etc/passwd"}, "a symbolic link"),
                                     ("hardlink", b"1", {"linkname": b"empty.bin"}, "a hard link"),
                                     ("directory", b"5", {}, "a directory"),
                                     ("fifo", b"6", {}, "a FIFO"),
                                     ("chardev", b"3", {"devmajor": 1, "devminor": 3}, "a character device"),
                                     ("global-pax", b"g", {}, "a global pax header"),
                                     ("gnu-longname", b"L", {}, "a GNU long-name header"),
                                     ("gnu-sparse", b"S", {}, "a GNU sparse member")):
        archive = tar(*(member(p, d) for p, d in good_blobs[:1]), member("special", b"", typeflag=flag, **extra),
                      *(member(p, d) for p, d in good_blobs[1:]))
        add("member-" + name, signed_package(base.manifest_for(archive, good_blobs), archive), ["blob.member_type"],
            "The archive holds %s." % what)
    # A tampered blob and, right after it (in the same read), a forbidden member: the blob's check still counts.
    tampered = next(i for i, (_, d) in enumerate(good_blobs) if d)
    path, data = good_blobs[tampered]
    archive = tar(*(member(p, d) for p, d in good_blobs[:tampered]), member(path, bytes(b ^ 0xFF for b in data)),
                  member("special", b"", typeflag=b"1", linkname=path.encode()),
                  *(member(p, d) for p, d in good_blobs[tampered + 1:]))
    add("digest-then-hardlink", signed_package(base.manifest_for(archive, good_blobs), archive),
        ["blob.digest_mismatch", "blob.member_type"],
        "A tampered blob directly followed by a hard link: both are reported, whatever one read returns.")
    for name, path, what in (("dotdot", "../evil.bin", "a '..' segment"),
                             ("absolute", "/etc/evil.bin", "an absolute path"),
                             ("dot-segment", "a/./evil.bin", "a '.' segment"),
                             ("empty-segment", "a//evil.bin", "an empty segment"),
                             ("backslash", "a\\evil.bin", "a backslash"),
                             ("control-char", "a\nevil.bin", "a newline"),
                             ("c1-control", "a\u0085evil.bin", "U+0085"),
                             ("too-long", "d/" * 511 + "abc", "1025 bytes")):
        blobs = sorted_blobs(good_blobs + [(path, b"evil")])
        pax = [("path", path)] if len(path.encode()) > 100 or not path.isascii() else None
        archive = tar(*(member(p, d, pax=[("path", p)] if p == path and pax else None) for p, d in blobs))
        add("path-" + name, signed_package(base.manifest_for(archive, blobs), archive),
            ["manifest.path_invalid", "blob.path_invalid"], "A blob path with %s (in manifest and archive)." % what)
    bad_utf8 = good_blobs[:1] + [(b"caf\xe9.bin", b"latin-1")] + good_blobs[1:]
    archive = tar(*(member(p, d) for p, d in bad_utf8))
    add("path-not-utf8", signed_package(base.manifest_for(archive, good_blobs), archive),
        ["blob.path_invalid"], "An extra archive member whose name is not UTF-8 (Latin-1).")
    collide = sorted_blobs([("Readme.txt", b"one"), ("readme.txt", b"two")])
    archive = archive_of(collide)
    add("path-case-collision", signed_package(base.manifest_for(archive, collide), archive),
        ["manifest.path_collision"], "Two paths that differ only in case.")
    umlaut = sorted_blobs([("\u00c4rger.txt", b"upper"), ("\u00e4rger.txt", b"lower")])
    archive = tar(*(member(p, d, pax=[("path", p)]) for p, d in umlaut))
    add("path-unicode-case-collision", signed_package(base.manifest_for(archive, umlaut), archive),
        ["manifest.path_collision"], "Two NFC paths that differ only in the case of a non-ASCII letter.")
    # Lowercase mapping per code point, without context (spec section 2): Σ maps to σ wherever it stands, so ΑΣ and
    # ασ collide (Python's str.lower() would map a final Σ to ς and miss it).
    sigma = sorted_blobs([("\u0391\u03a3", b"upper"), ("\u03b1\u03c3", b"lower")])
    archive = tar(*(member(p, d, pax=[("path", p)]) for p, d in sigma))
    add("path-sigma-collision", signed_package(base.manifest_for(archive, sigma), archive),
        ["manifest.path_collision"], "ΑΣ and ασ: a final capital sigma lowercases to σ (no context rule), so they collide.")
    nfd = sorted_blobs(good_blobs + [("cafe\u0301.txt", b"nfd")])
    archive = tar(*(member(p, d, pax=[("path", p)] if not p.isascii() else None) for p, d in nfd))
    add("path-not-nfc", signed_package(base.manifest_for(archive, nfd), archive),
        ["manifest.path_invalid", "blob.path_invalid"], "A decomposed (NFD) path, in manifest and archive.")
    overridden = tar(*(member(p, d) for p, d in good_blobs[:-1]),
                     member(good_blobs[-1][0].encode()[:5], good_blobs[-1][1],
                            pax=[("path", "../../" + good_blobs[-1][0])]))
    add("pax-path-override", signed_package(base.manifest_for(overridden, good_blobs), overridden),
        ["archive.corrupt"], "A pax path record overrides a harmless ustar name with '../../...'.")
    for name, pax, code, what in (("pax-xattr", [("SCHILY.xattr.user.evil", "1")], "blob.metadata", "an xattr record"),
                                  ("pax-linkpath", [("linkpath", "/etc/passwd")], "blob.metadata", "a linkpath record"),
                                  ("pax-sparse", [("GNU.sparse.size", "1073741824")], "blob.metadata", "a sparse record"),
                                  ("pax-mtime", [("mtime", "1700000000")], "blob.metadata", "an mtime record")):
        archive = tar(*(member(p, d, pax=pax if i == 1 else None) for i, (p, d) in enumerate(good_blobs)))
        add(name, signed_package(base.manifest_for(archive, good_blobs), archive), [code],
            "A member's pax header carries %s." % what)
    for name, header, what in (("member-mtime", {"mtime": 1700000000}, "a non-zero mtime"),
                               ("member-mode", {"mode": 0o755}, "mode 0755"),
                               ("member-owner", {"uid": 1000, "uname": b"robot"}, "an owner")):
        archive = tar(*(member(p, d, **(header if i == 1 else {})) for i, (p, d) in enumerate(good_blobs)))
        add(name, signed_package(base.manifest_for(archive, good_blobs), archive), ["blob.metadata"],
            "A member with %s." % what)
    archive = good_archive + b"smuggled"
    add("inner-trailing-garbage", signed_package(base.manifest_for(archive, good_blobs), archive),
        ["archive.trailing_data"], "Non-zero bytes after the episode archive's end-of-archive marker.")
    archive = good_archive + tar(member("evil.bin", b"evil"))
    add("inner-second-tar", signed_package(base.manifest_for(archive, good_blobs), archive),
        ["archive.trailing_data"], "A second tar concatenated after the episode archive.")
    archive = gzip.compress(good_archive, mtime=0) + b"trailing"
    add("gzip-trailing-garbage", signed_package(base.manifest_for(archive, good_blobs, compression="gzip"), archive),
        ["archive.trailing_data"], "Bytes after the end of the gzip stream.")
    for name, tail, codes, description in (
            ("gzip-tail-1f", b"\x1f", ["archive.trailing_data"], "One byte 1f after the gzip member: not a second member."),
            ("gzip-tail-1f8b", b"\x1f\x8b", ["archive.corrupt"],
             "Bytes 1f 8b after the gzip member: a second member begins (too short for a header), so corrupt.")):
        archive = gzip.compress(good_archive, mtime=0) + tail
        add(name, signed_package(base.manifest_for(archive, good_blobs, compression="gzip"), archive), codes, description)
    archive = zstd_compress(good_archive) + b"trailing"
    add("zstd-trailing-garbage", signed_package(base.manifest_for(archive, good_blobs, compression="zstd"), archive),
        ["archive.corrupt"], "Bytes after the last zstd frame (not a frame: the stream does not decode).")
    archive = gzip.compress(good_archive, mtime=0)
    add("compression-lies", signed_package(base.manifest_for(archive, good_blobs, compression="zstd"), archive,
                                           archive_name="episodes.tar.zst"),
        ["archive.corrupt"], "A gzip stream in a member named .zst.")
    bomb = zstd_compress(tar(member("empty.bin", b"\0" * (64 << 20))))
    add("decompression-bomb", signed_package(base.manifest_for(bomb, good_blobs[:1], compression="zstd"), bomb),
        ["archive.limit_exceeded"],
        "A 2,190-byte zstd archive whose one member expands to 64 MiB while the manifest declares 0 bytes.")
    zeros = zstd_compress(good_archive + b"\0" * (64 << 20))
    add("zero-trailer-bomb", signed_package(base.manifest_for(zeros, good_blobs, compression="zstd"), zeros),
        ["archive.trailing_data"], "64 MiB of zeros after the end-of-archive marker, compressed to a few KB.")
    gz = bytearray(gzip.compress(good_archive, mtime=0))
    gz[-8] ^= 1
    add("gzip-bad-crc", signed_package(base.manifest_for(bytes(gz), good_blobs, compression="gzip"), bytes(gz)),
        ["archive.corrupt"], "The gzip trailer's CRC-32 does not match the data.")
    gz = gzip.compress(good_archive[:5120], mtime=0) + gzip.compress(good_archive[5120:], mtime=0)
    add("gzip-two-members", signed_package(base.manifest_for(gz, good_blobs, compression="gzip"), gz),
        ["archive.corrupt"], "The gzip stream is two concatenated members.")
    add("plain-tar-as-gzip", signed_package(base.manifest_for(good_archive, good_blobs, compression="gzip"), good_archive),
        ["archive.corrupt"], "An uncompressed tar in a member named .tar.gz.")
    add("plain-tar-as-zstd", signed_package(base.manifest_for(good_archive, good_blobs, compression="zstd"), good_archive),
        ["archive.corrupt"], "An uncompressed tar in a member named .tar.zst.")
    slash = sorted_blobs(good_blobs + [("zz/", b"")])
    archive = archive_of(slash)
    add("path-trailing-slash", signed_package(base.manifest_for(archive, slash), archive),
        ["manifest.path_invalid", "blob.path_invalid"],
        "A regular-file member named 'zz/' (old tars read it as a directory), listed in the manifest.")
    twice = [good_blobs[0], good_blobs[0]] + good_blobs[1:]
    archive = archive_of(twice)
    add("same-blob-twice-both", signed_package(base.manifest_for(archive, twice), archive),
        ["manifest.blob_duplicate"], "The same path twice in the manifest and twice in the archive.")
    huge = tar(ustar_header("manifest.dsse.json", 300 << 20), end=b"")
    add("envelope-huge-declared", huge, ["envelope.too_large"],
        "The envelope member declares 300 MiB (the file is truncated after the header).")
    big = [(good_blobs[0][0], b"")]
    big_manifest = base.manifest_for(b"", big)
    big_manifest["blobs"][0]["size"] = (8 << 30) + 1
    big_manifest["package_id"] = package_id(big_manifest["provenance"], big_manifest["blobs"])
    archive = member(big[0][0], b"", pax=[("size", str((8 << 30) + 1))])[:-0 or None] + b"\1" * 4096
    big_manifest["archive"].update(size=len(archive), sha256=hashlib.sha256(archive).hexdigest())
    add("declared-8gib", signed_package(big_manifest, archive), ["archive.corrupt"],
        "A blob declared (in manifest and pax size) as 8 GiB + 1 byte whose data stops after 4 KiB.")
    archive = archive_of(good_blobs)[:-1024]
    add("inner-no-end-marker", signed_package(base.manifest_for(archive, good_blobs), archive), ["archive.corrupt"],
        "The episode archive has no end-of-archive marker.")
    return cases


def write_invalid(cases):
    directory = os.path.join(VECTORS, "invalid")
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    index = []
    for name, (data, codes, description, params) in sorted(cases.items()):
        with open(os.path.join(directory, name + ".cpkg"), "wb") as f:
            f.write(bytes(data))
        expected = {"codes": codes, "description": description, "valid": False,
                    "trusted_keys": params.get("trusted_keys", ["test-ed25519.pub"]),
                    "threshold": params.get("threshold", 1)}
        with open(os.path.join(directory, name + ".expected.json"), "w") as f:
            json.dump(expected, f, indent=2, sort_keys=True)
            f.write("\n")
        index.append((name, codes, description, params))
    return index


README_TEMPLATE = """# Test vectors for format v1

Everything here is data for building and checking an implementation of `docs/signed-ingestion.md`. The files are
regenerated by `scripts/make-vectors` (this file too); the tests in `Tests/ContinuonPackTests/VectorTests.swift` and
`PackVerifyTests.swift` read them unmodified.

## Keys (`keys/`)

| file | what |
|---|---|
| `test-ed25519.pem` / `.pub` | PKCS#8 / SPKI PEM of the RFC 8032 TEST 1 key (seed `9d61b19d…7f60`). Public and well known: for tests only. Key ID `{key_id}`. |
| `second-ed25519.pem` / `.pub` | the RFC 8032 TEST 2 key, used as an untrusted or second signer; key ID `eaf1e23f6c823132f437a2eaa299a7950f7386631deff273db195bbd26209e2b`. |

## Known answers (`valid/`)

Inputs: the blobs under `valid/episodes/` (five files: an empty one, a non-ASCII path, nested directories),
provenance `environment_id={environment_id}`, `brain_runtime_version={runtime}`, `ai_app_version={app}`,
`created_at={created_at}` (`SOURCE_DATE_EPOCH={epoch}`), the test key.

| file | what |
|---|---|
| `package-id-preimage.txt` | the exact bytes hashed into the package ID |
| `manifest-none.json` | the exact manifest bytes (canonical JSON) for compression `none` |
| `envelope-none.json` | the exact `manifest.dsse.json` for compression `none` |
| `package-none.cpkg` | the package, byte-exact: SHA-256 `{none_sha256}` |
| `package-gzip.cpkg`, `package-zstd.cpkg` | valid packages; their compressed bytes depend on the compressor version, so only the package ID (the same for all three: `{package_id}`) and validity are fixed |
| `expected.json` | all of the above as values, plus every blob's path, size and SHA-256 |

An implementation that packs must reproduce `package-id-preimage.txt`, the package ID and, for `none`, the manifest
(if it writes canonical JSON), the envelope (Ed25519 is deterministic) and the `.cpkg` bytes (if it writes tar
headers as `continuon-pack` does: section 6). An implementation that verifies must accept all three packages with
`test-ed25519.pub` as the trusted key, and refuse them (`signature.untrusted`) with only `second-ed25519.pub`.

## Hostile packages (`invalid/`)

Each `NAME.cpkg` has a `NAME.expected.json`:

```json
{{"codes": ["blob.digest_mismatch"], "description": "…", "threshold": 1, "trusted_keys": ["test-ed25519.pub"], "valid": false}}
```

Verify `NAME.cpkg` with the keys in `trusted_keys` (files in `keys/`) and the given `threshold`: the verdict must be
invalid and the set of error codes reported must equal `codes` exactly (order and repetition do not matter).
Unless the description says otherwise, everything but the one broken rule is in order, including a good signature
by the trusted key over a manifest that describes the hostile archive: these cases test the verifier, not the
signature. Where one fault necessarily breaks two rules (an invalid path in both manifest and archive; a blob
listed twice, so that one listing has no member), both codes are listed.

| vector | codes | what is wrong |
|---|---|---|
{rows}

## Promotion (`promotion/`)

Spec section 13. `promotion/training/` is exactly what `continuon-pack promote` writes into an empty training
directory for a staging directory holding `valid/package-none.cpkg` as `<package_id>.cpkg`, trusting the test key,
with `SOURCE_DATE_EPOCH` set (so `promoted_at` is `{created_at}`): `{environment_id}/<package_id>/` with every blob,
and `_provenance.json`, the marker, byte for byte (the promoter's own `.promote/` directory left out).

## Trust policies (`trust/`)

Spec section 14. `cases.json` lists {trust_cases} cases; each names a package (`packages/`), a policy (`policies/`
plain, `signed/` signed), optionally `roots` (SPKI PEM files under `roots/`; `root-1.pem` and `root-2.pem` are their
private keys, public and for tests only, seeds SHA-256 of `continuon-pack test vector root 1` and `… 2`),
`root_threshold` (default 1), `threshold` (the verifier's own, overriding the policy's) and `previous_policy` (a
signed policy already in force, for the rollback rule), and what must follow: `{{"policy_error": CODE}}` (the policy
is refused, the CLI exits 2), or `{{"valid", "codes", "statuses"}}` (the package's verdict, the set of error codes,
and each signature's status in envelope order). The packages are `valid/package-none.cpkg` (`key1.cpkg`) and
variants signed by the two keys of `keys/` in other orders, for another environment or with a broken signature.
Plain policies that expire do so in 2020; the others in 2099, so the cases hold at any time in between.

## TFRecord framing (`tfrecord/`)

Spec section 13.2. Written by `Tests/peers/tfrecord_fixtures.py` (Python, CRC-32C from google-crc32c; deterministic),
five records of 0, 1, 10240, 13000 and 70000 bytes: `valid.tfrecord`, `empty.tfrecord` (no records: valid), and
six broken copies. `expected.json` gives, for each file, `corrupt`: null, or the record index and the byte offset of
the record start that `promote.tfrecord_corrupt` must name. TensorFlow's reader fails on each broken file but
`truncated-header.tfrecord` (a partial header at the end, which it drops silently and the format refuses).

## Conformance: running the whole suite against another verifier

One command runs every vector above (`valid/`, `invalid/`, `trust/cases.json`) through a verifier and prints one
line per disagreement, then `N passed, M failed` (exit 0 only when nothing failed):

```sh
python3 Tests/peers/check_reference_vectors.py --command "/path/to/your-verifier"
```

Without `--command` it checks `Tests/peers/reference_verify.py`, a verifier written from `docs/signed-ingestion.md`
alone, which agrees on every vector; `--command "continuon-pack verify --json"` checks ours, which does too. The verifier under test is called once per vector as
`COMMAND PKG --trusted-key PEM… --threshold N` or, for trust cases,
`COMMAND PKG --trust-policy FILE [--trust-root PEM…] [--root-threshold N] [--threshold N] [--previous-policy FILE]`
(`--previous-policy`: a signed policy already in force, for the rollback rule). It prints one JSON object on
standard output: `valid` (boolean), `errors` (the error codes, as strings or as objects with a `code`),
`signatures` (each with its `status`, for trust cases) and, when it refuses the policy, `policy_error` (the
`trust.*` code). Its exit status is 0 for valid, 1 for invalid, 2 for a refused policy or a usage or I/O error.
What is compared: the exit status, `valid`, the set of error codes, and for trust cases the statuses in envelope
order or the policy's refusal code.

## Third-party vectors (`rfc8032/`)

`rfc8032/ed25519.json`: the four Ed25519 test vectors of RFC 8032 section 7.1 (TEST 1, 2, 3 and SHA(abc)),
copied from the RFC and checked against pyca/cryptography when the file was made.
"""


# MARK: - Trust policies (spec section 14)

ROOT_1 = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"continuon-pack test vector root 1").digest())
ROOT_2 = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"continuon-pack test vector root 2").digest())
POLICY_TYPE = "application/vnd.continuon.trust-policy+json"
FUTURE = "2099-12-31T23:59:59Z"
PAST = "2020-01-01T00:00:00Z"


def policy_key(key, environments, **extra):
    entry = {"key_id": key_id(key), "public_key": raw_public(key).hex(), "environments": environments}
    entry.update(extra)
    return entry


def policy(keys, version=1, threshold=1, **extra):
    document = {"schema": "continuon.trust-policy/v1", "version": version, "threshold": threshold, "keys": keys}
    document.update(extra)
    return canonical_json(document) + b"\n"


def signed_policy(document, keys, payload_type=POLICY_TYPE, tamper=False):
    message = pae(payload_type, document)
    signatures = []
    for key in keys:
        sig = key.sign(message)
        if tamper:
            sig = bytes([sig[0] ^ 1]) + sig[1:]
        signatures.append({"keyid": key_id(key), "sig": base64.b64encode(sig).decode()})
    return canonical_json({"payload": base64.b64encode(document).decode(), "payloadType": payload_type,
                           "signatures": signatures}) + b"\n"


def make_trust(base_path):
    """TestVectors/trust: policies, signed policies and packages, with what a verifier must conclude (cases.json)."""
    root = os.path.join(VECTORS, "trust")
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("packages", "policies", "signed", "roots"):
        os.makedirs(os.path.join(root, sub))
    files = {}

    def put(relative, data):
        assert relative not in files, relative
        files[relative] = data
        with open(os.path.join(root, relative), "wb") as f:
            f.write(data)
        return relative

    for name, key in (("root-1", ROOT_1), ("root-2", ROOT_2)):
        put("roots/%s.pub" % name, key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        put("roots/%s.pem" % name, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    # Packages: the valid `none` package (KEY_1, vector-env-01, 2024-01-01T00:00:00Z) and variants of it.
    base = Base(base_path)
    blobs = sorted_blobs(base.blobs.items())

    def package(name, keys, environment="vector-env-01", tamper=False):
        m = base.manifest_for(base.archive, blobs)
        m["provenance"]["environment_id"] = environment
        m["package_id"] = package_id(m["provenance"], m["blobs"])
        flip = (lambda sig: bytes([sig[0] ^ 1]) + sig[1:]) if tamper else None
        return put("packages/%s.cpkg" % name, signed_package(m, base.archive, keys=keys, sig_filter=flip))

    with open(base_path, "rb") as f:
        key1 = put("packages/key1.cpkg", f.read())
    key1_key2 = package("key1-key2", (KEY_1, KEY_2))
    key2_key1 = package("key2-key1", (KEY_2, KEY_1))
    key1_env02 = package("key1-env02", (KEY_1,), environment="vector-env-02")
    key1_tampered = package("key1-tampered", (KEY_1,), tamper=True)
    with open(os.path.join(VECTORS, "invalid", "no-signatures.cpkg"), "rb") as f:
        unsigned = put("packages/unsigned.cpkg", f.read())
    with open(os.path.join(VECTORS, "invalid", "manifest-unknown-field.cpkg"), "rb") as f:
        shapeless = put("packages/manifest-unknown-field.cpkg", f.read())
    with open(os.path.join(VECTORS, "invalid", "manifest-unknown-field.expected.json")) as f:
        shapeless_codes = json.load(f)["codes"]

    def copy_invalid(name):
        with open(os.path.join(VECTORS, "invalid", name + ".cpkg"), "rb") as f:
            path = put("packages/%s.cpkg" % name, f.read())
        with open(os.path.join(VECTORS, "invalid", name + ".expected.json")) as f:
            return path, json.load(f)["codes"]

    bad_time, bad_time_codes = copy_invalid("created-at-invalid")
    bad_env, bad_env_codes = copy_invalid("identifier-invalid")

    cases = []

    def case(name, description, package_path, policy_path, expected, **options):
        entry = {"name": name, "description": description, "package": package_path, "policy": policy_path,
                 "expected": expected}
        entry.update(options)
        cases.append(entry)

    def verdict(codes, statuses):
        return {"valid": not codes, "codes": sorted(set(codes)), "statuses": statuses}

    def plain(name, document):
        return put("policies/%s.json" % name, document)

    # Which signatures count (14.3).
    p = plain("key1-env01", policy([policy_key(KEY_1, ["vector-env-01"])]))
    case("counted", "The key is allowed exactly this environment.", key1, p, verdict([], ["counted"]))
    p = plain("key1-prefix", policy([policy_key(KEY_1, ["vector-*"])]))
    case("pattern-prefix", "vector-* matches vector-env-01.", key1, p, verdict([], ["counted"]))
    p = plain("key1-suffix", policy([policy_key(KEY_1, ["lab-*", "*-01"])]))
    case("pattern-suffix", "The second pattern, *-01, matches.", key1, p, verdict([], ["counted"]))
    p = plain("key1-star", policy([policy_key(KEY_1, ["*"])]))
    case("pattern-star", "* matches every environment.", key1, p, verdict([], ["counted"]))
    p = plain("key1-middle", policy([policy_key(KEY_1, ["v*e*v*-*1"])]))
    case("pattern-several-stars", "Several * each stand for a run of characters.", key1, p, verdict([], ["counted"]))
    p = plain("key1-partial", policy([policy_key(KEY_1, ["vector-env-0"])]))
    case("pattern-whole-id", "A pattern matches the whole ID, not a prefix.", key1, p,
         verdict(["signature.environment_not_allowed"], ["signature.environment_not_allowed"]))
    p = plain("key1-uppercase", policy([policy_key(KEY_1, ["VECTOR-*"])]))
    case("pattern-case-sensitive", "Patterns are case-sensitive.", key1, p,
         verdict(["signature.environment_not_allowed"], ["signature.environment_not_allowed"]))
    p = plain("key1-other-env", policy([policy_key(KEY_1, ["vector-env-01"])]))
    case("robot-a-for-robot-b", "Robot A's key (allowed vector-env-01) signs for vector-env-02.", key1_env02, p,
         verdict(["signature.environment_not_allowed"], ["signature.environment_not_allowed"]))
    p = plain("key1-no-env", policy([policy_key(KEY_1, [])]))
    case("no-environment", "A key with no environment may sign for none.", key1, p,
         verdict(["signature.environment_not_allowed"], ["signature.environment_not_allowed"]))
    p = plain("key1-expired", policy([policy_key(KEY_1, ["*"], not_after="2023-12-31T23:59:59Z")]))
    case("key-expired", "not_after is one second before created_at.", key1, p,
         verdict(["signature.key_expired"], ["signature.key_expired"]))
    p = plain("key1-not-yet", policy([policy_key(KEY_1, ["*"], not_before="2024-01-01T00:00:01Z")]))
    case("key-not-yet-valid", "not_before is one second after created_at.", key1, p,
         verdict(["signature.key_not_yet_valid"], ["signature.key_not_yet_valid"]))
    p = plain("key1-boundary", policy([policy_key(KEY_1, ["*"], not_before="2024-01-01T00:00:00Z",
                                                  not_after="2024-01-01T00:00:00Z")]))
    case("validity-inclusive", "not_before and not_after equal to created_at: both bounds are inclusive.", key1, p,
         verdict([], ["counted"]))
    p = plain("key1-expired-other-env", policy([policy_key(KEY_1, ["lab-*"], not_after="2023-01-01T00:00:00Z")]))
    case("expiry-before-environment", "Expired and not allowed the environment: the validity step comes first.",
         key1, p, verdict(["signature.key_expired"], ["signature.key_expired"]))
    revoked = {"at": "2024-06-01T00:00:00Z", "reason": "robot stolen"}
    p = plain("key1-revoked", policy([policy_key(KEY_1, ["*"], revoked=revoked, comment="robot 1")]))
    case("key-revoked", "A revoked key never counts, though revoked.at is after created_at.", key1, p,
         verdict(["signature.key_revoked"], ["signature.key_revoked"]))
    case("revoked-before-invalid", "A revoked key's broken signature is reported as revoked.", key1_tampered, p,
         verdict(["signature.key_revoked"], ["signature.key_revoked"]))
    p = plain("key1-env01-again", policy([policy_key(KEY_1, ["vector-env-01"])], version=2))
    case("invalid-signature", "A policy key's signature that does not verify.", key1_tampered, p,
         verdict(["signature.invalid"], ["signature.invalid"]))
    p = plain("key2-only", policy([policy_key(KEY_2, ["*"])]))
    case("untrusted", "The signer is not in the policy.", key1, p,
         verdict(["signature.untrusted"], ["untrusted"]))
    case("no-signature", "No signature at all.", unsigned, p, verdict(["signature.missing"], []))
    p = plain("empty", policy([]))
    case("empty-policy", "An empty policy trusts no key.", key1, p, verdict(["signature.untrusted"], ["untrusted"]))
    p = plain("key1-lab-only", policy([policy_key(KEY_1, ["lab-*"])]))
    case("rules-skipped-without-manifest",
         "The manifest's shape does not decode: the validity and environment steps are skipped.",
         shapeless, p, verdict(shapeless_codes, ["counted"]))

    p = plain("key1-until-feb-29", policy([policy_key(KEY_1, ["*"], not_after="2024-02-29T23:59:59Z")]))
    case("invalid-created-at-compared-as-written",
         "created_at 2024-02-30T00:00:00Z is not a date, but the shape decoded: it is compared as written.",
         bad_time, p, verdict(bad_time_codes + ["signature.key_expired"], ["signature.key_expired"]))
    p = plain("key1-lab", policy([policy_key(KEY_1, ["lab*"])]))
    case("invalid-environment-lab-star",
         "environment_id \"lab 01\" is not an identifier: only a pattern of * alone matches it, not lab*.",
         bad_env, p, verdict(bad_env_codes + ["signature.environment_not_allowed"], ["signature.environment_not_allowed"]))
    case("invalid-environment-star", "environment_id \"lab 01\" is not an identifier, and * matches it.",
         bad_env, "policies/key1-star.json", verdict(bad_env_codes, ["counted"]))

    # Thresholds.
    p = plain("both-threshold-2", policy([policy_key(KEY_1, ["*"]), policy_key(KEY_2, ["*"])], threshold=2))
    case("threshold-met", "Two distinct keys counted; the policy's threshold is 2.", key1_key2, p,
         verdict([], ["counted", "counted"]))
    case("threshold-not-met", "One key counted; the policy's threshold is 2.", key1, p,
         verdict(["signature.threshold_not_met"], ["counted"]))
    p = plain("both-threshold-1", policy([policy_key(KEY_1, ["*"]), policy_key(KEY_2, ["*"])]))
    case("threshold-override", "The verifier's threshold (2) overrides the policy's (1).", key1, p,
         verdict(["signature.threshold_not_met"], ["counted"]), threshold=2)
    p = plain("key2-revoked-threshold-2",
              policy([policy_key(KEY_1, ["*"]), policy_key(KEY_2, ["*"], revoked=revoked)], threshold=2))
    case("refusals-reported-when-not-met", "Threshold 2, one key revoked: both codes.", key1_key2, p,
         verdict(["signature.key_revoked", "signature.threshold_not_met"], ["counted", "signature.key_revoked"]))
    p = plain("key1-revoked-key2-ok", policy([policy_key(KEY_1, ["*"], revoked=revoked), policy_key(KEY_2, ["*"])]))
    case("refusals-silent-when-met", "Threshold 1 met by key 2: key 1's revocation is a status, not an error.",
         key1_key2, p, verdict([], ["signature.key_revoked", "counted"]))
    case("status-order", "Statuses follow the envelope's order.", key2_key1, p,
         verdict([], ["counted", "signature.key_revoked"]))
    p = plain("key1-other-env-key2-absent", policy([policy_key(KEY_1, ["lab-*"])]))
    case("refusal-and-untrusted", "Threshold 1, one signer not allowed, the other not in the policy: no untrusted code.",
         key1_key2, p, verdict(["signature.environment_not_allowed"], ["signature.environment_not_allowed", "untrusted"]))

    # Documents that are not valid policies (14.1), and expiry (14.2).
    good = policy_key(KEY_1, ["*"])

    def refused(name, description, document, code="trust.policy_invalid", **options):
        path = put("policies/invalid-%s.json" % name, document)
        case("policy-" + name, description, key1, path, {"policy_error": code}, **options)

    refused("not-json", "Not JSON.", b"{\"schema\":")
    refused("not-object", "A JSON array.", b"[]\n")
    refused("schema", "Another schema.", policy([good]).replace(b"trust-policy/v1", b"trust-policy/v2"))
    refused("unknown-member", "An unknown top-level member.", policy([good], extra="x"))
    refused("unknown-key-member", "An unknown member in a key.", policy([dict(good, weight=1)]))
    refused("missing-environments", "A key without environments.",
            policy([{k: v for k, v in good.items() if k != "environments"}]))
    refused("key-id-mismatch", "key_id is another key's ID.", policy([dict(good, key_id=key_id(KEY_2))]))
    refused("public-key-uppercase", "public_key in uppercase hex.",
            policy([dict(good, public_key=raw_public(KEY_1).hex().upper())]))
    refused("duplicate-key", "The same key twice.", policy([good, good]))
    refused("duplicate-json-key", "A JSON key twice.", policy([good]).replace(b"\"threshold\":1", b"\"threshold\":1,\"threshold\":1"))
    refused("threshold-zero", "threshold 0.", policy([good], threshold=0))
    refused("version-zero", "version 0.", policy([good], version=0))
    refused("version-float", "version 1.0.", policy([good]).replace(b"\"version\":1", b"\"version\":1.0"))
    refused("pattern-space", "A pattern with a space.", policy([policy_key(KEY_1, ["lab arm"])]))
    refused("pattern-empty", "An empty pattern.", policy([policy_key(KEY_1, [""])]))
    refused("pattern-too-long", "A pattern of 129 bytes.", policy([policy_key(KEY_1, ["a" * 129])]))
    refused("not-after-before-not-before", "not_after earlier than not_before.",
            policy([policy_key(KEY_1, ["*"], not_before="2024-01-02T00:00:00Z", not_after="2024-01-01T00:00:00Z")]))
    refused("bad-timestamp", "not_after is not a timestamp.", policy([policy_key(KEY_1, ["*"], not_after="2024-02-30T00:00:00Z")]))
    refused("revoked-no-reason", "revoked without reason.", policy([policy_key(KEY_1, ["*"], revoked={"at": PAST})]))
    refused("revoked-empty-reason", "revoked with an empty reason.",
            policy([policy_key(KEY_1, ["*"], revoked={"at": PAST, "reason": ""})]))
    refused("comment-too-long", "A comment of 1025 bytes.", policy([policy_key(KEY_1, ["*"], comment="x" * 1025)]))
    refused("expired", "A plain policy whose expires has passed.", policy([good], expires=PAST), "trust.policy_expired")
    p = plain("key1-expires-future", policy([good], expires=FUTURE))
    case("plain-with-expires", "A plain policy that has not expired.", key1, p, verdict([], ["counted"]))

    # Signed policies (14.4).
    roots_1 = ["roots/root-1.pub"]
    both_roots = ["roots/root-1.pub", "roots/root-2.pub"]
    v2 = policy([good], version=2, expires=FUTURE)
    v3 = policy([good, policy_key(KEY_2, ["*"])], version=3, expires=FUTURE)
    v2_other = policy([policy_key(KEY_1, ["vector-*"])], version=2, expires=FUTURE)

    def signed(name, document, keys, **options):
        return put("signed/%s.json" % name, signed_policy(document, keys, **options))

    s_v2 = signed("v2-root1", v2, (ROOT_1,))
    s_v3 = signed("v3-root1", v3, (ROOT_1,))
    s_v2_other = signed("v2-other-root1", v2_other, (ROOT_1,))
    case("signed", "Signed by root 1, checked against root 1.", key1, s_v2, verdict([], ["counted"]), roots=roots_1)
    case("signed-without-roots", "A signed policy and no roots to check it.", key1, s_v2,
         {"policy_error": "trust.policy_signature"})
    case("unsigned-with-roots", "Roots given, plain policy.", key1, "policies/key1-star.json",
         {"policy_error": "trust.policy_unsigned"}, roots=roots_1)
    s = signed("v2-root2", v2, (ROOT_2,))
    case("signed-by-other-root", "Signed by root 2, checked against root 1.", key1, s,
         {"policy_error": "trust.policy_signature"}, roots=roots_1)
    case("root-threshold-not-met", "One root signed; two must.", key1, s_v2,
         {"policy_error": "trust.policy_signature"}, roots=both_roots, root_threshold=2)
    s = signed("v2-both-roots", v2, (ROOT_1, ROOT_2))
    case("root-threshold-met", "Both roots signed; two must.", key1, s, verdict([], ["counted"]),
         roots=both_roots, root_threshold=2)
    s = signed("v2-tampered", v2, (ROOT_1,), tamper=True)
    case("root-signature-tampered", "The root's signature does not verify.", key1, s,
         {"policy_error": "trust.policy_signature"}, roots=roots_1)
    s = signed("expired", policy([good], version=2, expires=PAST), (ROOT_1,))
    case("signed-expired", "A signed policy past its expires.", key1, s, {"policy_error": "trust.policy_expired"},
         roots=roots_1)
    s = signed("no-expires", policy([good], version=2), (ROOT_1,))
    case("signed-no-expires", "A signed policy without expires.", key1, s, {"policy_error": "trust.policy_invalid"},
         roots=roots_1)
    s = signed("wrong-type", v2, (ROOT_1,), payload_type="application/json")
    case("signed-wrong-payload-type", "Another payload type.", key1, s, {"policy_error": "trust.policy_invalid"},
         roots=roots_1)
    s = signed("invalid-payload", policy([good], version=2, threshold=0, expires=FUTURE), (ROOT_1,))
    case("signed-invalid-payload", "Signed, but the payload breaks a rule (threshold 0).", key1, s,
         {"policy_error": "trust.policy_invalid"}, roots=roots_1)
    case("rollback", "Version 2 offered while version 3 is in force.", key1, s_v2,
         {"policy_error": "trust.policy_rollback"}, roots=roots_1, previous_policy=s_v3)
    case("same-version-other-bytes", "Version 2 with other contents while version 2 is in force.", key1, s_v2_other,
         {"policy_error": "trust.policy_rollback"}, roots=roots_1, previous_policy=s_v2)
    case("same-policy-again", "The policy in force read again.", key1, s_v2, verdict([], ["counted"]),
         roots=roots_1, previous_policy=s_v2)
    case("newer-version", "Version 3 replaces version 2.", key1_key2, s_v3, verdict([], ["counted", "counted"]),
         roots=roots_1, previous_policy=s_v2)

    s = put("signed/malformed.json", b'{"payloadType":1}\n')
    case("signed-malformed-without-roots", "An envelope that breaks section 5, and no roots: its shape comes first.",
         key1, s, {"policy_error": "trust.policy_invalid"})
    case("plain-invalid-with-roots", "Roots given, and a plain policy that is not even valid: unsigned comes first.",
         key1, "policies/invalid-threshold-zero.json", {"policy_error": "trust.policy_unsigned"}, roots=roots_1)
    s = signed("no-signatures", v2, ())
    case("signed-no-signatures", "A signed policy without signatures.", key1, s,
         {"policy_error": "trust.policy_signature"}, roots=roots_1)
    good_sig = json.loads(signed_policy(v2, (ROOT_1,)))["signatures"]
    bad_sig = json.loads(signed_policy(v2, (ROOT_2,), tamper=True))["signatures"]
    s = put("signed/one-root-broken.json", canonical_json({
        "payload": base64.b64encode(v2).decode(), "payloadType": POLICY_TYPE, "signatures": good_sig + bad_sig}) + b"\n")
    case("root-signature-broken-threshold-met", "Root 1 signed; root 2's signature does not verify: refused, though R = 1.",
         key1, s, {"policy_error": "trust.policy_signature"}, roots=both_roots)

    with open(os.path.join(root, "cases.json"), "w") as f:
        json.dump({"cases": cases}, f, indent=2, sort_keys=True)
        f.write("\n")
    return len(cases)


def write_readme(index, trust_cases):
    with open(os.path.join(VECTORS, "valid", "expected.json")) as f:
        exp = json.load(f)
    rows = []
    for name, codes, description, params in index:
        extra = ""
        if params:
            extra = " (trusted: %s; threshold %d)" % (", ".join(params.get("trusted_keys", ["test-ed25519.pub"])),
                                                      params.get("threshold", 1))
        rows.append("| `%s` | %s | %s%s |" % (name, ", ".join("`%s`" % c for c in codes), description, extra))
    text = README_TEMPLATE.format(
        key_id=exp["key_id"], environment_id=PROVENANCE["environment_id"],
        runtime=PROVENANCE["brain_runtime_version"], app=PROVENANCE["ai_app_version"], created_at=exp["created_at"],
        epoch=EPOCH, none_sha256=exp["packages"]["none"]["sha256"], package_id=exp["package_id"],
        rows="\n".join(rows), trust_cases=trust_cases)
    with open(os.path.join(VECTORS, "README.md"), "w") as f:
        f.write(text)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_vectors.py PATH_TO_continuon-pack")
    write_keys()
    base_path = make_valid(sys.argv[1])
    make_promotion(sys.argv[1], base_path)
    index = write_invalid(make_invalid(base_path))
    trust_cases = make_trust(base_path)
    write_readme(index, trust_cases)
    subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "peers",
                    "tfrecord_fixtures.py"), "write", os.path.join(VECTORS, "tfrecord")], check=True,
                   stdout=subprocess.DEVNULL)
    print("valid: 3 packages; invalid: %d packages; trust: %d cases" % (len(index), trust_cases))


if __name__ == "__main__":
    main()
