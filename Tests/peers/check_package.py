#!/usr/bin/env python3
"""Independent check of a .cpkg with libraries we did not write.

Reads the package with Python's tarfile (and `zstd -dc` for .zst), verifies the DSSE envelope with
securesystemslib's DSSE implementation and again with pyca/cryptography over a PAE built here, recomputes the
package ID and every digest, and prints a JSON summary. Exit 0 when everything agrees with the manifest.
"""
import base64
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile

from cryptography.hazmat.primitives.serialization import load_pem_public_key
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey


def fail(message):
    print(json.dumps({"ok": False, "error": message}))
    sys.exit(1)


def main():
    package, public_key_path = sys.argv[1], sys.argv[2]
    public_key = load_pem_public_key(open(public_key_path, "rb").read())
    with tarfile.open(package, mode="r:") as outer:
        members = outer.getmembers()
        names = [m.name for m in members]
        if len(members) != 2 or names[0] != "manifest.dsse.json":
            fail("members are %r" % names)
        envelope_bytes = outer.extractfile(members[0]).read()
        archive_bytes = outer.extractfile(members[1]).read()
    envelope_json = json.loads(envelope_bytes)

    # securesystemslib: DSSE verification with its own key ID rules.
    key = SSlibKey.from_crypto(public_key)
    envelope = Envelope.from_dict(json.loads(envelope_bytes))  # from_dict consumes its argument
    accepted = envelope.verify([key], 1)
    if key.keyid not in accepted:
        fail("securesystemslib did not accept the signature")

    # pyca/cryptography over a PAE built from the DSSE specification.
    payload = base64.b64decode(envelope_json["payload"], validate=True)
    payload_type = envelope_json["payloadType"].encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(payload), payload)
    public_key.verify(base64.b64decode(envelope_json["signatures"][0]["sig"]), pae)

    manifest = json.loads(payload)
    archive = manifest["archive"]
    if names[1] != archive["name"] or len(archive_bytes) != archive["size"]:
        fail("archive member does not match the manifest")
    if hashlib.sha256(archive_bytes).hexdigest() != archive["sha256"]:
        fail("archive digest mismatch")
    if archive["compression"] == "zstd":
        tar_bytes = subprocess.run(["zstd", "-dc"], input=archive_bytes, capture_output=True, check=True).stdout
    elif archive["compression"] == "gzip":
        tar_bytes = gzip.decompress(archive_bytes)
    else:
        tar_bytes = archive_bytes
    blobs = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as inner:
        for m in inner.getmembers():
            if not m.isreg() or m.mode != 0o644 or m.mtime != 0 or m.uid != 0 or m.gid != 0 or m.uname or m.gname:
                fail("member %r is not a normalized regular file" % m.name)
            data = inner.extractfile(m).read()
            blobs.append({"path": m.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    if blobs != manifest["blobs"]:
        fail("blobs differ from the manifest")
    provenance = manifest["provenance"]
    preimage = ("continuon-package-id/v1\nenvironment_id=%s\nbrain_runtime_version=%s\nai_app_version=%s\n" % (
        provenance["environment_id"], provenance["brain_runtime_version"], provenance["ai_app_version"])).encode()
    preimage += b"".join(("%s %d %s\n" % (b["sha256"], b["size"], b["path"])).encode() for b in blobs)
    if hashlib.sha256(preimage).hexdigest() != manifest["package_id"]:
        fail("package ID mismatch")
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    print(json.dumps({"ok": True, "package_id": manifest["package_id"], "blobs": len(blobs),
                      "key_id": key.keyid, "canonical_manifest": canonical == payload}))


if __name__ == "__main__":
    main()
