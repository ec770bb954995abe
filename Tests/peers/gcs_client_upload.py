#!/usr/bin/env python3
"""Uploads a file with Google's own client (google-cloud-storage), resumable, to a custom endpoint.

    python3 gcs_client_upload.py ENDPOINT BUCKET OBJECT_NAME FILE

Prints {"ok": true, "object": {...}} or {"ok": false, "status": N, "message": "..."}; exit 0 either way unless the
client itself could not run.
"""
import json
import sys

from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage


def main():
    endpoint, bucket_name, name, path = sys.argv[1:5]
    client = storage.Client(project="continuon-test", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": endpoint})
    blob = client.bucket(bucket_name).blob(name, chunk_size=256 * 1024)
    try:
        # Without a size the client always uses its resumable upload (with a size under 8 MB it would send one
        # multipart request, which the service does not accept).
        with open(path, "rb") as stream:
            blob.upload_from_file(stream, if_generation_match=0, content_type="application/octet-stream")
        print(json.dumps({"ok": True, "object": {"name": blob.name, "size": blob.size, "md5Hash": blob.md5_hash,
                                                 "crc32c": blob.crc32c}}))
    except exceptions.GoogleAPICallError as error:
        print(json.dumps({"ok": False, "status": error.code, "message": str(error.message)}))


if __name__ == "__main__":
    main()
