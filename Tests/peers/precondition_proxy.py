#!/usr/bin/env python3
"""gcp-storage-emulator with the precondition Cloud Storage enforces and the emulator ignores: an upload sent with
ifGenerationMatch=0 (a resumable initiation or a one-request media upload) for a name that exists answers 412.

    precondition_proxy.py EMULATOR_PORT      prints "PORT <n>" and forwards everything else unchanged
                                             (Location headers rewritten to point at this proxy)
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
        if (self.command == "POST" and url.path.startswith("/upload/storage/v1/b/")
                and query.get("ifGenerationMatch") == ["0"] and "name" in query):
            bucket = url.path.split("/")[5]
            name = urllib.parse.quote(query["name"][0], safe="")
            with CREATE:
                status, _, _ = forward("GET", "/storage/v1/b/%s/o/%s" % (bucket, name), {}, None)
                if status == 200:
                    data = json.dumps({"error": {"code": 412, "message": "At least one of the pre-conditions you specified did not hold.",
                                                 "errors": [{"reason": "conditionNotMet"}]}}).encode()
                    return self.reply(412, [("Content-Type", "application/json")], data)
                status, response_headers, data = forward(self.command, self.path, headers, body)
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
