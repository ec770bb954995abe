#!/usr/bin/env python3
"""TFRecord fixtures written independently of the project (CRC-32C from google-crc32c), and TensorFlow's own verdict.

    tfrecord_fixtures.py write DIR     writes valid and corrupt TFRecord files (TestVectors/tfrecord/) and
                                       DIR/expected.json into DIR, and prints the same JSON object:
                                       {name: {"records": n, "corrupt": null | {"record": i, "offset": o}}}
    tfrecord_fixtures.py tensorflow FILE...
                                       reads each file with tf.data.TFRecordDataset and prints a JSON object:
                                       {file: {"records": n, "error": null | "DataLossError: ..."}}
"""
import hashlib
import json
import os
import struct
import sys


def masked_crc(data):
    import google_crc32c
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data):
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def write(directory):
    os.makedirs(directory, exist_ok=True)
    # Deterministic (TestVectors/tfrecord/ holds these very files): 70000 bytes from a SHA-256 chain last.
    chain = b"".join(hashlib.sha256(b"tfrecord vector %d" % i).digest() for i in range(2188))[:70000]
    payloads = [b"", b"x", bytes(range(256)) * 40, b"episode step " * 1000, chain]
    good = b"".join(record(p) for p in payloads)
    starts = []
    offset = 0
    for p in payloads:
        starts.append(offset)
        offset += 16 + len(p)
    third = starts[2]
    fixtures = {
        "valid.tfrecord": (good, None),
        "empty.tfrecord": (b"", None),
        "truncated-data.tfrecord": (good[:-10], {"record": 4, "offset": starts[4]}),
        "truncated-header.tfrecord": (good + b"\x05\x00\x00", {"record": 5, "offset": len(good)}),
        "flipped-data-byte.tfrecord": (flip(good, third + 12 + 100), {"record": 2, "offset": third}),
        "flipped-length-byte.tfrecord": (flip(good, third + 1), {"record": 2, "offset": third}),
        "bad-length-crc.tfrecord": (flip(good, third + 9), {"record": 2, "offset": third}),
        "bad-data-crc.tfrecord": (flip(good, starts[3] - 2), {"record": 2, "offset": third}),
    }
    summary = {}
    for name, (data, corrupt) in fixtures.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
        summary[name] = {"records": len(payloads) if corrupt is None and data else 0, "corrupt": corrupt}
    with open(os.path.join(directory, "expected.json"), "w") as f:
        f.write(json.dumps(summary, sort_keys=True, indent=1) + "\n")
    print(json.dumps(summary, sort_keys=True))


def flip(data, index):
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]


def tensorflow(files):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    result = {}
    for path in files:
        count = 0
        error = None
        try:
            for _ in tf.data.TFRecordDataset(path):
                count += 1
        except tf.errors.OpError as e:
            error = "%s: %s" % (type(e).__name__, e.message.splitlines()[0])
        result[path] = {"records": count, "error": error}
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2])
    else:
        tensorflow(sys.argv[2:])
