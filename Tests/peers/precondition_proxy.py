#!/usr/bin/env python3
"""gcp-storage-emulator with the precondition Cloud Storage enforces and the emulator ignores: an upload sent with
ifGenerationMatch=0 (a resumable initiation or a one-request media upload) for a name that exists answers 412, and
so does the request that would complete a resumable upload started with ifGenerationMatch=0 when the object was
created meanwhile (Cloud Storage checks the precondition again when it finalizes the object: of two uploads
started at once, exactly one creates it).

    precondition_proxy.py EMULATOR_PORT      prints "PORT <n>" and forwards everything else unchanged
                                             (Location headers rewritten to point at this proxy)

GET /_proxy/stats answers {"created": N, "refused": M}: objects created through a conditional upload, and
conditional uploads refused with 412.
"""
import http.client
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UPSTREAM = ("127.0.0.1", int(sys.argv[1]))
# One conditional create at a time: the check and the create are one step, as in Cloud Storage.
CREATE = threading.Lock()
# upload_id -> (bucket, quoted name) of the resumable sessions started with ifGenerationMatch=0.
CONDITIONAL = {}
STATS = {"created": 0, "refused": 0}


def exists(bucket, name):
    status, _, _ = forward("GET", "/storage/v1/b/%s/o/%s" % (bucket, name), {}, None)
    return status == 200


def completes(content_range):
    """Whether a chunk's Content-Range ends the object (bytes F-L/T with L = T - 1)."""
    try:
        unit, spec = content_range.split(" ", 1)
        span, total = spec.split("/")
        return unit == "bytes" and span != "*" and total != "*" and int(span.split("-")[1]) + 1 == int(total)
    except (ValueError, IndexError):
        return False


def refusal():
    return json.dumps({"error": {"code": 412, "message": "At least one of the pre-conditions you specified did not hold.",
                                 "errors": [{"reason": "conditionNotMet"}]}}).encode()


def forward(method, path, headers, body):
    connection = http.client.HTTPConnection(*UPSTREAM, timeout=60)
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, response.getheaders(), data


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        if self.command == "GET" and url.path == "/_proxy/stats":
            with CREATE:
                data = json.dumps(STATS).encode()
            return self.reply(200, [("Content-Type", "application/json")], data)
        upload_id = query.get("upload_id", [None])[0]
        if (self.command == "POST" and url.path.startswith("/upload/storage/v1/b/")
                and query.get("ifGenerationMatch") == ["0"] and "name" in query):
            bucket = url.path.split("/")[5]
            name = urllib.parse.quote(query["name"][0], safe="")
            with CREATE:
                if exists(bucket, name):
                    STATS["refused"] += 1
                    return self.reply(412, [("Content-Type", "application/json")], refusal())
                status, response_headers, data = forward(self.command, self.path, headers, body)
                location = dict((k.lower(), v) for k, v in response_headers).get("location")
                if query.get("uploadType") == ["resumable"] and location:
                    session = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query).get("upload_id", [None])[0]
                    if session:
                        CONDITIONAL[session] = (bucket, name)
                elif status == 200:
                    STATS["created"] += 1
        elif self.command == "PUT" and upload_id in CONDITIONAL and completes(self.headers.get("Content-Range", "")):
            bucket, name = CONDITIONAL[upload_id]
            with CREATE:
                if exists(bucket, name):
                    STATS["refused"] += 1
                    return self.reply(412, [("Content-Type", "application/json")], refusal())
                status, response_headers, data = forward(self.command, self.path, headers, body)
                if status in (200, 201):
                    STATS["created"] += 1
                    CONDITIONAL.pop(upload_id, None)
        else:
            status, response_headers, data = forward(self.command, self.path, headers, body)
        here = "http://127.0.0.1:%d" % self.server.server_address[1]
        rewritten = []
        for name, value in response_headers:
            if name.lower() in ("content-length", "connection", "transfer-encoding"):
                continue
            if name.lower() == "location":
                value = value.replace("http://127.0.0.1:%d" % UPSTREAM[1], here).replace("http://localhost:%d" % UPSTREAM[1], here)
            rewritten.append((name, value))
        self.reply(status, rewritten, data)

    def reply(self, status, headers, data):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = handle_any


server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
print("PORT %d" % server.server_address[1], flush=True)
server.serve_forever()
