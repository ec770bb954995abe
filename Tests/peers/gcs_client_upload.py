#!/usr/bin/env python3
"""Uploads a file with Google's own client (google-cloud-storage) to a custom endpoint.

    python3 gcs_client_upload.py ENDPOINT BUCKET OBJECT_NAME FILE [--mode plain|resumable]

`plain` (the default) is what a user writes: `blob.upload_from_filename(path)`, no precondition, no chunk size;
the client sends one `uploadType=multipart` request up to 8 MiB and a resumable upload above.
`resumable` streams the file without a size (`upload_from_file`, always resumable, 256 KiB chunks) with
`if_generation_match=0`.

Prints {"ok": true, "object": {...}, "requests": [...]} or {"ok": false, "status": N, "message": "...",
"requests": [...]}, where requests lists the uploadType of every upload request the client sent; exit 0 either
way unless the client itself could not run.
"""
import argparse
import json
import urllib.parse

from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
import google.auth.transport.requests as transport


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("bucket")
    parser.add_argument("name")
    parser.add_argument("path")
    parser.add_argument("--mode", choices=["plain", "resumable"], default="plain")
    args = parser.parse_args()

    seen = []
    original = transport.AuthorizedSession.request

    def recording(self, method, url, *rest, **kwargs):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        if "uploadType" in query:
            seen.append(method + " " + query["uploadType"][0])
        return original(self, method, url, *rest, **kwargs)

    transport.AuthorizedSession.request = recording
    client = storage.Client(project="continuon-test", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": args.endpoint})
    try:
        if args.mode == "plain":
            blob = client.bucket(args.bucket).blob(args.name)
            blob.upload_from_filename(args.path)
        else:
            blob = client.bucket(args.bucket).blob(args.name, chunk_size=256 * 1024)
            with open(args.path, "rb") as stream:
                blob.upload_from_file(stream, if_generation_match=0, content_type="application/octet-stream")
        print(json.dumps({"ok": True, "object": {"name": blob.name, "size": blob.size, "md5Hash": blob.md5_hash,
                                                 "crc32c": blob.crc32c}, "requests": seen}))
    except exceptions.GoogleAPICallError as error:
        print(json.dumps({"ok": False, "status": error.code, "message": str(error.message), "requests": seen}))


if __name__ == "__main__":
    main()
