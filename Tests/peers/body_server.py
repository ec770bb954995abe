#!/usr/bin/env python3
"""A raw HTTP/1.1 server for the streamed chunk bodies (FileRangeSender) on 127.0.0.1: prints "PORT <n>".

    body_server.py MODE [--log FILE] [--cert CERT --key KEY]

Modes:
  record       reads the request by its Content-Length, answers 200 with a JSON document describing what arrived
               (connection number, method, path, headers, body length, SHA-256) and appends the same line to --log
  redirect     answers 307 to another path (a client that follows would send the body and its token twice)
  drip         after the headers, sends one byte of body every 0.5 s, forever
  silent       reads the request and never answers
  big-headers  answers with 100 KiB of headers
  big-body     answers 200 with a 4 MiB body
With --cert and --key the server speaks TLS (a certificate the client does not trust).
"""
import argparse
import hashlib
import json
import socket
import ssl
import sys
import threading
import time


def read_request(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, value = line.split(":", 1)
        headers[name.strip().lower()] = value.strip()
    digest = hashlib.sha256(rest)
    received = len(rest)
    length = int(headers.get("content-length", "0"))
    while received < length:
        chunk = conn.recv(min(1 << 20, length - received))
        if not chunk:
            break
        digest.update(chunk)
        received += len(chunk)
    return {"method": method, "path": path, "headers": headers, "length": received, "sha256": digest.hexdigest()}


def answer(conn, status, body=b"", extra=""):
    conn.sendall(("HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n" % (status, len(body), extra)).encode() + body)


def serve(conn, number, mode, log):
    try:
        while True:
            request = read_request(conn)
            if request is None:
                return
            request["connection"] = number
            if mode == "record":
                line = json.dumps(request, sort_keys=True)
                if log:
                    with open(log, "a") as f:
                        f.write(line + "\n")
                answer(conn, "200 OK", line.encode(), "Content-Type: application/json\r\n")
            elif mode == "redirect":
                answer(conn, "307 Temporary Redirect", b"", "Location: /elsewhere\r\n")
            elif mode == "drip":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                while True:
                    conn.sendall(b"x")
                    time.sleep(0.5)
            elif mode == "silent":
                time.sleep(3600)
            elif mode == "big-headers":
                headers = "".join("X-Filler-%d: %s\r\n" % (i, "f" * 100) for i in range(1000))
                answer(conn, "200 OK", b"{}", headers)
            elif mode == "big-body":
                answer(conn, "200 OK", b"x" * (4 << 20))
    except (OSError, ValueError):
        pass
    finally:
        conn.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("--log")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    context = None
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
    print("PORT %d" % listener.getsockname()[1], flush=True)
    number = 0
    while True:
        conn, _ = listener.accept()
        number += 1
        if context:
            try:
                conn = context.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                conn.close()
                continue
        threading.Thread(target=serve, args=(conn, number, args.mode, args.log), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
