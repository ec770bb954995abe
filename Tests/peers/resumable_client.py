"""A resumable-upload client written from the protocol (docs/signed-ingestion.md section 12), not from our code: the
crash, restart and soak tests drive `continuon-pack serve` with it and count what it sends.

    session = initiate("http://127.0.0.1:8080", "staging", name, size)
    result = upload(session, data, chunk=1 << 20, deadline=time.time() + 60)
    result.status, result.body, result.sent, result.faults, result.resent

On a fault (connection refused, reset or cut, a 5xx, a 503 session_busy) it waits a little, asks the service what it
holds (`Content-Range: bytes */T`) and goes on from there: exactly what Google's clients do. `faults` counts runs of
failed attempts (a service that is down for two seconds is one fault); `resent` counts the bytes it sent beyond the
package's size. Python 3.11 standard library only.
"""
import http.client
import json
import time
import urllib.parse


class Result:
    def __init__(self):
        self.status = None
        self.body = None
        self.sent = 0
        self.faults = 0
        self.resent = 0
        self.not_found = False

    def __repr__(self):
        return "Result(status=%r, sent=%d, faults=%d, resent=%d, body=%r)" % (
            self.status, self.sent, self.faults, self.resent, self.body)


def _connection(url, timeout):
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def initiate(base, bucket, name, size=None, timeout=30, deadline=None):
    """Starts a session; returns its URL (the Location), or raises RuntimeError with the answer. Retries while the
    service is unreachable, until `deadline`."""
    while True:
        try:
            connection = _connection(base, timeout)
            headers = {"Content-Type": "application/json"}
            if size is not None:
                headers["X-Upload-Content-Length"] = str(size)
            body = json.dumps({"name": name}).encode()
            connection.request("POST", "/upload/storage/v1/b/%s/o?uploadType=resumable&name=%s" % (bucket, name),
                               body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            connection.close()
            if response.status == 200:
                return response.getheader("Location")
            if response.status >= 500 and deadline and time.time() < deadline:
                time.sleep(0.2)
                continue
            raise RuntimeError("initiation answered %d: %s" % (response.status, data[:300]))
        except (ConnectionError, OSError, http.client.HTTPException):
            if deadline is None or time.time() >= deadline:
                raise
            time.sleep(0.2)


def _held(range_header):
    if not range_header:
        return 0
    return int(range_header.split("-")[1]) + 1


def _put(session, headers, body, timeout):
    parts = urllib.parse.urlsplit(session)
    connection = _connection(session, timeout)
    try:
        connection.request("PUT", parts.path + "?" + parts.query, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        return response.status, response.getheader("Range"), data
    finally:
        connection.close()


def upload(session, data, chunk=1 << 20, deadline=None, timeout=30, cut=None, resume=False):
    """Sends `data` to `session` in chunks of `chunk` bytes (a multiple of 256 KiB), resuming after faults until
    `deadline`. `cut(offset, length)` may return a number of bytes after which the chunk's connection is dropped
    (a simulated link failure), or None. `resume`: a session begun earlier: ask what the service holds first."""
    result = Result()
    size = len(data)
    offset = 0
    need_status = resume
    while True:
        if deadline is not None and time.time() > deadline:
            result.status = "timeout"
            return result
        try:
            if need_status:
                status, held, body = _put(session, {"Content-Range": "bytes */%d" % size, "Content-Length": "0"}, b"", timeout)
                if status == 308:
                    offset = _held(held)
                    need_status = False
                elif status in (200, 201) or 400 <= status < 500 and status != 429:
                    return _finish(result, status, body, size)
                else:
                    raise ConnectionError("status query answered %d" % status)
            end = min(size, offset + chunk)
            piece = data[offset:end]
            headers = {"Content-Range": "bytes %d-%d/%d" % (offset, end - 1, size) if end > offset else "bytes */%d" % size,
                       "Content-Length": str(len(piece))}
            drop = cut(offset, len(piece)) if cut else None
            if drop is not None and drop < len(piece):
                _send_partial(session, headers, piece[:drop], timeout)
                result.sent += drop
                raise ConnectionError("cut by the test")
            result.sent += len(piece)
            status, held, body = _put(session, headers, piece, timeout)
            if status == 308:
                offset = _held(held)
                continue
            if status in (200, 201) or 400 <= status < 500 and status != 429:
                return _finish(result, status, body, size)
            raise ConnectionError("chunk answered %d" % status)
        except (ConnectionError, OSError, http.client.HTTPException, TimeoutError):
            # A run of failed attempts (the service down for a while) is one fault.
            if not need_status:
                result.faults += 1
            need_status = True
            time.sleep(0.2)


def _finish(result, status, body, size):
    result.status = status
    result.resent = max(0, result.sent - size)
    try:
        result.body = json.loads(body) if body else None
    except ValueError:
        result.body = body[:300]
    return result


def _send_partial(session, headers, piece, timeout):
    """Sends a request head and only part of its body, then closes the connection."""
    parts = urllib.parse.urlsplit(session)
    connection = _connection(session, timeout)
    try:
        connection.putrequest("PUT", parts.path + "?" + parts.query)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        connection.send(piece)
    finally:
        connection.close()
