#!/usr/bin/env python3
"""A strict, scripted Cloud Storage resumable-upload server for the faults the emulator cannot produce.

    python3 fake_gcs.py --scenario NAME [--log FILE] [--preload FILE] [--delay SECONDS]

Prints "PORT <n>" when it listens on 127.0.0.1. Every request is appended to --log as one JSON line
(method, path, content_range, bytes received, status, offset held after). Objects live in memory and can be read
back with GET /storage/v1/b/BUCKET/o/NAME?alt=media.

Scenarios: ok, partial (keeps only half of the 2nd chunk), no-range (drops the first chunk and answers 308 without Range),
throttle (429 + Retry-After: 1 on the 2nd chunk), unavailable (503 + Retry-After: 1 on initiation and on the 2nd
chunk), expire (the session is gone, 410, after the 1st chunk), exists-same / exists-different (--preload holds the
object's bytes; initiation answers 412), hash-mismatch (400 at finalization), forbidden (403 at initiation), slow
(--delay seconds per chunk).
"""
import argparse
import base64
import hashlib
import json
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def crc32c(data):
    table = crc32c.table
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


crc32c.table = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    crc32c.table.append(c)


def object_resource(bucket, name, data, metadata):
    return {"kind": "storage#object", "bucket": bucket, "name": name, "size": str(len(data)),
            "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),
            "crc32c": base64.b64encode(crc32c(data).to_bytes(4, "big")).decode(),
            "metadata": metadata.get("metadata", {}), "generation": "1"}


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.objects = {}
        self.sessions = {}
        self.chunks = 0
        self.initiations = 0
        self.next_id = 0
        if args.preload:
            with open(args.preload, "rb") as f:
                self.preload = f.read()
        else:
            self.preload = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=None, headers=None):
        payload = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.status = status

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def record(self, received, held=None):
        if STATE.args.log:
            with open(STATE.args.log, "a") as f:
                f.write(json.dumps({"method": self.command, "path": self.path.split("?")[0],
                                    "content_range": self.headers.get("Content-Range"), "received": received,
                                    "status": getattr(self, "status", None), "held": held}) + "\n")

    def do_GET(self):
        parsed = urllib.parse.urlparse(self.path)
        match = re.fullmatch(r"/storage/v1/b/([^/]+)/o/(.+)", parsed.path)
        key = (match.group(1), urllib.parse.unquote(match.group(2))) if match else None
        with STATE.lock:
            stored = STATE.objects.get(key) if key else None
        if stored is None:
            self.reply(404, {"error": {"code": 404, "message": "No such object"}})
        elif "alt=media" in parsed.query:
            data = stored[0]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self.reply(200, object_resource(key[0], key[1], stored[0], stored[1]))
        self.record(0)

    def do_POST(self):
        parsed = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(parsed.query)
        match = re.fullmatch(r"/upload/storage/v1/b/([^/]+)/o", parsed.path)
        metadata = json.loads(self.body() or b"{}")
        scenario = STATE.args.scenario
        with STATE.lock:
            STATE.initiations += 1
            first = STATE.initiations == 1
        if not match or query.get("uploadType") != ["resumable"] or "name" not in query:
            self.reply(400, {"error": {"message": "bad initiation"}})
        elif scenario == "forbidden":
            self.reply(403, {"error": {"code": 403, "message": "the key is not allowed to write here"}})
        elif scenario == "unavailable" and first:
            self.reply(503, {"error": {"message": "try later"}}, {"Retry-After": "1"})
        else:
            bucket, name = match.group(1), query["name"][0]
            total = int(self.headers.get("X-Upload-Content-Length"))
            with STATE.lock:
                if STATE.preload is not None and (bucket, name) not in STATE.objects:
                    STATE.objects[(bucket, name)] = (STATE.preload, {})
                exists = (bucket, name) in STATE.objects
                if not exists:
                    STATE.next_id += 1
                    session = "s%d" % STATE.next_id
                    STATE.sessions[session] = {"bucket": bucket, "name": name, "total": total, "data": bytearray(),
                                               "metadata": metadata}
            if exists and query.get("ifGenerationMatch") == ["0"]:
                self.reply(412, {"error": {"code": 412, "message": "conditionNotMet"}})
            else:
                host = self.headers.get("Host")
                self.reply(200, None, {"Location": "http://%s/upload/session/%s" % (host, session)})
        self.record(0)

    def do_PUT(self):
        match = re.fullmatch(r"/upload/session/(\w+)", self.path)
        chunk = self.body()
        content_range = self.headers.get("Content-Range", "")
        scenario = STATE.args.scenario
        with STATE.lock:
            session = STATE.sessions.get(match.group(1)) if match else None
            if session is not None and not (chunk == b"" and content_range.startswith("bytes */")):
                STATE.chunks += 1
            chunk_number = STATE.chunks
        if session is None or session.get("expired"):
            self.reply(410, {"error": {"code": 410, "message": "session expired"}})
            return self.record(len(chunk))
        if scenario == "slow" and chunk:
            time.sleep(STATE.args.delay)
        if scenario == "expire" and chunk_number == 2 and chunk:
            session["expired"] = True
            self.reply(410, {"error": {"code": 410, "message": "session expired"}})
            return self.record(len(chunk))
        if scenario == "throttle" and chunk_number == 2 and chunk:
            self.reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})
            return self.record(len(chunk))
        if scenario == "unavailable" and chunk_number == 2 and chunk:
            self.reply(503, {"error": {"message": "try later"}}, {"Retry-After": "1"})
            return self.record(len(chunk))
        data = session["data"]
        total = session["total"]
        status_query = re.fullmatch(r"bytes \*/(\d+)", content_range)
        chunk_range = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", content_range)
        if status_query:
            if int(status_query.group(1)) != total:
                self.reply(400, {"error": {"message": "total differs from initiation"}})
            elif len(data) == total and (total == 0 or session.get("done")):
                self.finish(session)
            else:
                self.incomplete(data)
            return self.record(len(chunk), len(data))
        if not chunk_range or int(chunk_range.group(3)) != total:
            self.reply(400, {"error": {"message": "bad Content-Range %r" % content_range}})
            return self.record(len(chunk))
        start, end = int(chunk_range.group(1)), int(chunk_range.group(2))
        if end - start + 1 != len(chunk) or start > len(data):
            self.reply(400, {"error": {"message": "chunk does not fit what is held"}})
            return self.record(len(chunk), len(data))
        new = chunk[len(data) - start:]  # drop what is already held
        if scenario == "partial" and chunk_number == 2 and len(new) > 262144 and end + 1 < total:
            new = new[: (len(new) // 2) // 262144 * 262144]
        if scenario == "no-range" and chunk_number == 1:
            new = b""
        data.extend(new)
        if len(data) == total:
            session["done"] = True
            self.finish(session)
        elif scenario == "no-range" and chunk_number == 1:
            self.reply(308)  # nothing kept, no Range header
        else:
            self.incomplete(data)
        self.record(len(chunk), len(data))

    def incomplete(self, data):
        self.reply(308, None, {"Range": "bytes=0-%d" % (len(data) - 1)} if data else {})

    def finish(self, session):
        data = bytes(session["data"])
        declared = session["metadata"]
        resource = object_resource(session["bucket"], session["name"], data, declared)
        if STATE.args.scenario == "hash-mismatch" or (
                declared.get("md5Hash") and declared["md5Hash"] != resource["md5Hash"]):
            self.reply(400, {"error": {"code": 400, "message": "Provided MD5 hash does not match the data"}})
            return
        with STATE.lock:
            STATE.objects[(session["bucket"], session["name"])] = (data, declared)
        self.reply(200, resource)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", default="ok")
    parser.add_argument("--log")
    parser.add_argument("--preload")
    parser.add_argument("--delay", type=float, default=0.2)
    args = parser.parse_args()
    global STATE
    STATE = State(args)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print("PORT %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
