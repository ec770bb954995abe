#!/usr/bin/env python3
"""Stand-ins for Google's OAuth token endpoint, the GCE metadata server and a Cloud Storage front with IAM rights,
all on one 127.0.0.1 port, checking what the real services check, so Google credentials can be tested offline.

    python3 google_standins.py (--emulator-port N | --start-emulator) [--port N] [--service-account FILE]
        [--authorized-user FILE] [--token-lifetime SECONDS] [--role objectCreator|objectAdmin] [--delay SECONDS]
        [--session-auth required|optional] [--log FILE]
    python3 google_standins.py make-service-account OUT.json [--token-uri URL]
    python3 google_standins.py make-authorized-user OUT.json [--token-uri URL]

Prints "PORT <n>" once it listens and exits when its parent dies. --start-emulator runs gcp-storage-emulator (in
memory, bucket "staging") as a child that the kernel kills with this process; --emulator-port uses a running one.

POST /token (form-encoded, or JSON) answers 200 {"access_token", "expires_in" (--token-lifetime, default 3600),
  "token_type": "Bearer"}, or Google's errors:
  grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT: three unpadded base64url parts; header alg
    RS256, typ JWT, kid = private_key_id; RS256 signature valid under --service-account's key; iss = client_email;
    aud = http://127.0.0.1:<port>/token, https://oauth2.googleapis.com/token or the key file's token_uri; iat within
    300 s of now, exp > now, 0 < exp - iat <= 3600: else 400 invalid_grant. A scope without devstorage.read_write,
    devstorage.full_control or cloud-platform: 400 invalid_scope.
  grant_type=refresh_token: client_id (else 401 invalid_client), client_secret (else 401 invalid_client) and
    refresh_token (else 400 invalid_grant) of --authorized-user.
  Other grant types: 400 unsupported_grant_type.
Metadata server: GET / answers 200 with Metadata-Flavor: Google (google-auth's ping); below /computeMetadata/v1/
  the request needs Metadata-Flavor: Google and no X-Forwarded-For (else 403). .../instance/service-accounts/
  default/token issues a token; .../default/?recursive=true, /email, /scopes, project/project-id and
  universe/universe-domain answer what google-auth reads. Every answer carries Metadata-Flavor: Google.
Cloud Storage (/storage/v1/, /upload/storage/v1/, /download/storage/v1/): a bearer token issued here and not expired
  is required (else 401, reason authError); on resumable session URIs too unless --session-auth optional.
  --role objectCreator (default) holds storage.objects.create only: uploads (POST uploadType=resumable|multipart|
  media, then the session's PUTs) go through; reads, lists, deletes, updates and bucket calls answer 403 (reason
  forbidden) naming the missing permission; replacing an existing object without ifGenerationMatch answers 403
  storage.objects.delete (checked on multipart/media uploads and on a resumable session's last chunk).
  --role objectAdmin holds storage.objects.* (no bucket permissions). ifGenerationMatch on an upload is enforced
  (the emulator ignores it): 0 and the object exists, or N and its generation differs, answer 412 conditionNotMet,
  at initiation and again at a session's last chunk. The emulator's Location is rewritten to this front; a finished
  session answers further PUTs with the object resource. --delay sleeps before forwarding each upload request.

--log FILE appends one JSON line per request: {"method", "path", "query", "auth" ("ok"|"missing"|"expired"|"unknown"
on storage paths, null elsewhere), "status", "role_denied", "content_range"} (plus "error" for refused token
requests), and one per token issued: {"event": "token", "grant": "jwt-bearer"|"refresh_token"|"metadata",
"expires_in", "principal"}. Token values are never logged (an access_token query parameter is redacted).
"""
import argparse
import base64
import ctypes
import email.parser
import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
STORAGE_WRITE_SCOPES = {"https://www.googleapis.com/auth/devstorage.read_write",
                        "https://www.googleapis.com/auth/devstorage.full_control",
                        "https://www.googleapis.com/auth/cloud-platform"}
SERVICE_ACCOUNT_EMAIL = "ingest-uploader@continuon-test.iam.gserviceaccount.com"
PROJECT_ID = "continuon-test"
USER_PRINCIPAL = "uploader@continuon-test.example"
DEFAULT_COMPUTE_ACCOUNT = "123456789012-compute@developer.gserviceaccount.com"
CLOCK_SKEW = 300
MAX_ASSERTION_LIFETIME = 3600
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length", "authorization", "expect"}
PIECE = 65536
ROLE_PERMISSIONS = {"objectCreator": {"storage.objects.create"},
                    "objectAdmin": {"storage.objects.create", "storage.objects.get", "storage.objects.list",
                                    "storage.objects.delete", "storage.objects.update",
                                    "storage.objects.getIamPolicy", "storage.objects.setIamPolicy"}}


# ---------------------------------------------------------------------------------------------------- key files

def write_private_json(path, info):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")


def make_service_account(path, token_uri=None):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    quoted = urllib.parse.quote(SERVICE_ACCOUNT_EMAIL)
    write_private_json(path, {
        "type": "service_account",
        "project_id": PROJECT_ID,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": SERVICE_ACCOUNT_EMAIL,
        "client_id": str(secrets.randbelow(9 * 10 ** 20) + 10 ** 20),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri or GOOGLE_TOKEN_URI,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/" + quoted,
        "universe_domain": "googleapis.com",
    })


def make_authorized_user(path, token_uri=None):
    info = {
        "type": "authorized_user",
        "client_id": "%d-%s.apps.googleusercontent.com" % (secrets.randbelow(9 * 10 ** 11) + 10 ** 11,
                                                           secrets.token_hex(16)),
        "client_secret": "GOCSPX-" + secrets.token_urlsafe(21),
        "refresh_token": "1//" + secrets.token_urlsafe(72),
        "universe_domain": "googleapis.com",
    }
    if token_uri:
        info["token_uri"] = token_uri
    write_private_json(path, info)


# ---------------------------------------------------------------------------------------------------- state

class State:
    def __init__(self, args):
        self.args = args
        self.port = None
        self.emulator_port = None
        self.lock = threading.Lock()
        self.log_lock = threading.Lock()
        self.tokens = {}    # access token -> (expiry epoch seconds, principal)
        self.sessions = {}  # emulator upload_id -> {"bucket", "name", "if_generation_match", "resource"}
        self.service_account = None
        self.public_key = None
        if args.service_account:
            with open(args.service_account) as f:
                self.service_account = json.load(f)
            if self.service_account.get("type") != "service_account":
                raise SystemExit("%s is not a service_account key file" % args.service_account)
            key = serialization.load_pem_private_key(self.service_account["private_key"].encode(), password=None)
            self.public_key = key.public_key()
        self.authorized_user = None
        if args.authorized_user:
            with open(args.authorized_user) as f:
                self.authorized_user = json.load(f)
            if self.authorized_user.get("type") != "authorized_user":
                raise SystemExit("%s is not an authorized_user file" % args.authorized_user)

    def token_url(self):
        return "http://127.0.0.1:%d/token" % self.port

    def issue(self, grant, principal):
        token = "ya29." + secrets.token_urlsafe(48)
        lifetime = self.args.token_lifetime
        with self.lock:
            self.tokens[token] = (time.time() + lifetime, principal)
        self.log({"event": "token", "grant": grant, "expires_in": lifetime, "principal": principal})
        return {"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}

    def check_bearer(self, header):
        """Returns ("ok"|"missing"|"expired"|"unknown", principal or None)."""
        if not header:
            return "missing", None
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "missing", None
        with self.lock:
            entry = self.tokens.get(token.strip())
        if entry is None:
            return "unknown", None
        if entry[0] <= time.time():
            return "expired", entry[1]
        return "ok", entry[1]

    def log(self, record):
        if not self.args.log:
            return
        line = json.dumps(record) + "\n"
        with self.log_lock:
            with open(self.args.log, "a") as f:
                f.write(line)


STATE = None


# ---------------------------------------------------------------------------------------------------- JWT

class GrantError(Exception):
    def __init__(self, description, error="invalid_grant", status=400):
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


def b64url_decode(part, what):
    if not part or not re.fullmatch(r"[A-Za-z0-9_-]+", part):
        raise GrantError("Invalid JWT: %s is not unpadded base64url." % what)
    if len(part) % 4 == 1:
        raise GrantError("Invalid JWT: %s is not unpadded base64url." % what)
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_assertion(assertion):
    """Checks a jwt-bearer assertion as Google's token endpoint does; returns the principal."""
    if STATE.service_account is None:
        raise GrantError("Invalid grant: account not found")
    parts = assertion.split(".")
    if len(parts) != 3:
        raise GrantError("Invalid JWT: the assertion must have three parts.")
    try:
        header = json.loads(b64url_decode(parts[0], "header"))
        claims = json.loads(b64url_decode(parts[1], "claim set"))
    except (ValueError, UnicodeDecodeError):
        raise GrantError("Invalid JWT: the header or claim set is not JSON.")
    signature = b64url_decode(parts[2], "signature")
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise GrantError("Invalid JWT: the header or claim set is not a JSON object.")
    if header.get("alg") != "RS256":
        raise GrantError("Invalid JWT: alg must be RS256.")
    if header.get("typ") != "JWT":
        raise GrantError("Invalid JWT: typ must be JWT.")
    if header.get("kid") != STATE.service_account["private_key_id"]:
        raise GrantError("Invalid JWT Signature.")  # Google: the key id names no key of the account
    try:
        STATE.public_key.verify(signature, (parts[0] + "." + parts[1]).encode("ascii"), padding.PKCS1v15(),
                                hashes.SHA256())
    except InvalidSignature:
        raise GrantError("Invalid JWT Signature.")
    if claims.get("iss") != STATE.service_account["client_email"]:
        raise GrantError("Invalid grant: account not found")
    audiences = {STATE.token_url(), GOOGLE_TOKEN_URI}
    if STATE.service_account.get("token_uri"):
        audiences.add(STATE.service_account["token_uri"])
    if claims.get("aud") not in audiences:
        raise GrantError("Invalid JWT: Failed audience check. The right audience is %s" % GOOGLE_TOKEN_URI)
    iat, exp = claims.get("iat"), claims.get("exp")
    now = time.time()
    if (not isinstance(iat, (int, float)) or not isinstance(exp, (int, float)) or isinstance(iat, bool)
            or isinstance(exp, bool) or abs(iat - now) > CLOCK_SKEW or exp <= now or exp <= iat
            or exp - iat > MAX_ASSERTION_LIFETIME):
        raise GrantError("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                         "timeframe. Check your iat and exp values in the JWT claim.")
    scopes = claims.get("scope")
    if not isinstance(scopes, str) or not STORAGE_WRITE_SCOPES & set(scopes.split()):
        raise GrantError("Invalid OAuth scope or ID token audience provided.", error="invalid_scope")
    return claims["iss"]


def check_refresh(form):
    user = STATE.authorized_user
    if user is None or form.get("client_id") != user["client_id"]:
        raise GrantError("The OAuth client was not found.", error="invalid_client", status=401)
    if form.get("client_secret") != user["client_secret"]:
        raise GrantError("Unauthorized", error="invalid_client", status=401)
    if form.get("refresh_token") != user["refresh_token"]:
        raise GrantError("Bad Request")
    return USER_PRINCIPAL


# ---------------------------------------------------------------------------------------------------- errors

def gcs_error(code, message, reason, **extra):
    error = {"message": message, "domain": "global", "reason": reason}
    error.update(extra)
    return {"error": {"code": code, "message": message, "errors": [error]}}


def denied(principal, permission):
    message = ("%s does not have %s access to the Google Cloud Storage object. Permission '%s' denied on resource "
               "(or it may not exist)." % (principal or "Anonymous caller", permission, permission))
    return gcs_error(403, message, "forbidden")


PRECONDITION = gcs_error(412, "At least one of the pre-conditions you specified did not hold.", "conditionNotMet",
                         locationType="header", location="If-Match")


def needed_permission(method, path):
    """The IAM permission a Cloud Storage JSON API request needs."""
    m = re.fullmatch(r"/(upload/|download/)?storage/v1/b(?:/([^/]+)(?:(/o)(?:/(.+))?|/(.*))?)?/?", path)
    if m is None:
        return "storage.objects.get"
    prefix, bucket, objects, obj, bucket_sub = m.groups()
    if prefix == "upload/":
        return "storage.objects.create"
    if prefix == "download/":
        return "storage.objects.get"
    if bucket is None:
        return "storage.buckets.list" if method == "GET" else "storage.buckets.create"
    if objects is None:
        if bucket_sub and bucket_sub.startswith("iam"):
            return "storage.buckets.getIamPolicy" if method == "GET" else "storage.buckets.setIamPolicy"
        return {"GET": "storage.buckets.get", "DELETE": "storage.buckets.delete"}.get(method,
                                                                                        "storage.buckets.update")
    if obj is None:
        return "storage.objects.create" if method == "POST" else "storage.objects.list"
    if method == "GET":
        return "storage.objects.getIamPolicy" if obj.endswith("/acl") else "storage.objects.get"
    if method == "DELETE":
        return "storage.objects.delete"
    if method == "POST" and (re.search(r"/(copyTo|rewriteTo)/b/", obj) or obj.endswith("/compose")):
        return "storage.objects.get"  # reading the source(s); objectCreator lacks it
    return "storage.objects.update"


# ---------------------------------------------------------------------------------------------------- handler

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def version_string(self):
        return "GoogleStandins"

    def log_message(self, *args):
        pass

    # ---- plumbing

    def dispatch(self):
        parsed = urllib.parse.urlsplit(self.path)
        self.url_path = parsed.path
        self.query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        self.record = {"method": self.command, "path": self.url_path,
                       "query": redact_query(parsed.query), "auth": None, "status": None, "role_denied": False,
                       "content_range": self.headers.get("Content-Range")}
        self.body = self.body_pieces()
        try:
            path = self.url_path
            if path == "/token":
                self.token_endpoint()
            elif path == "/" or path.startswith("/computeMetadata/"):
                self.metadata()
            elif re.match(r"/(upload/|download/)?storage/v1(/|$)", path):
                self.storage()
            else:
                self.reply(404, {"error": {"code": 404, "message": "Not Found", "errors": [
                    {"message": "Not Found", "domain": "global", "reason": "notFound"}]}})
        except BadRequestBody as error:
            self.close_connection = True
            self.reply(400, {"error": {"code": 400, "message": str(error)}}, drain=False)
        except EmulatorDown as error:
            self.close_connection = True
            self.reply(502, {"error": {"code": 502, "message": "emulator unreachable: %s" % error}}, drain=False)
        except (ConnectionError, socket.timeout):
            self.close_connection = True  # the client went away
        except Exception:
            traceback.print_exc()
            self.close_connection = True
            if self.record["status"] is None:
                self.reply(500, {"error": {"code": 500, "message": "stand-in failure"}}, drain=False)
        finally:
            STATE.log(self.record)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = dispatch

    def body_pieces(self):
        """The request body as pieces (Content-Length or chunked), read lazily."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("client went away")
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise BadRequestBody("bad chunk size line")
                if size == 0:
                    while True:
                        trailer = self.rfile.readline(65537)
                        if trailer in (b"\r\n", b"\n", b""):
                            return
                while size:
                    data = self.rfile.read(min(size, PIECE))
                    if not data:
                        raise ConnectionError("client went away")
                    size -= len(data)
                    yield data
                self.rfile.readline(3)
        else:
            try:
                remaining = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise BadRequestBody("bad Content-Length")
            if remaining < 0:
                raise BadRequestBody("bad Content-Length")
            while remaining:
                data = self.rfile.read(min(remaining, PIECE))
                if not data:
                    raise ConnectionError("client went away")
                remaining -= len(data)
                yield data

    def read_body(self):
        return b"".join(self.body)

    def drain(self):
        for _ in self.body:
            pass

    def reply(self, status, body=None, headers=None, raw=None, reason=None, drain=True):
        if drain:
            self.drain()
        if raw is not None:
            payload = raw
        elif body is not None:
            payload = json.dumps(body).encode()
        else:
            payload = b""
        self.send_response(status, reason)
        content_type_sent = False
        for key, value in (headers or []):
            if key.lower() == "content-type":
                content_type_sent = True
            self.send_header(key, value)
        if body is not None and not content_type_sent:
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()
        self.record["status"] = status

    def front_host(self):
        return self.headers.get("Host") or "127.0.0.1:%d" % STATE.port

    # ---- 1. OAuth token endpoint

    def token_endpoint(self):
        if self.command != "POST":
            return self.reply(405, {"error": "invalid_request", "error_description": "POST required"})
        raw = self.read_body()
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            if content_type == "application/json":
                form = {k: str(v) for k, v in json.loads(raw or b"{}").items()}
            else:
                form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode("utf-8"), keep_blank_values=True).items()}
        except (ValueError, AttributeError, UnicodeDecodeError):
            return self.token_error(GrantError("Malformed request body", error="invalid_request"))
        grant_type = form.get("grant_type")
        try:
            if grant_type == JWT_BEARER:
                if not form.get("assertion"):
                    raise GrantError("Missing required parameter: assertion", error="invalid_request")
                principal = verify_assertion(form["assertion"])
                grant = "jwt-bearer"
            elif grant_type == "refresh_token":
                principal = check_refresh(form)
                grant = "refresh_token"
            elif not grant_type:
                raise GrantError("Missing required parameter: grant_type", error="invalid_request")
            else:
                raise GrantError("Invalid grant_type: %s" % grant_type, error="unsupported_grant_type")
        except GrantError as error:
            return self.token_error(error)
        self.reply(200, STATE.issue(grant, principal), [("Cache-Control", "no-cache, no-store, max-age=0")])

    def token_error(self, error):
        self.record["error"] = "%s: %s" % (error.error, error.description)
        self.reply(error.status, {"error": error.error, "error_description": error.description})

    # ---- 2. metadata server

    def metadata(self):
        flavor = [("Metadata-Flavor", "Google")]
        path = self.url_path
        if path == "/":
            return self.reply(200, raw=b"computeMetadata/\n", headers=flavor + [("Content-Type", "application/text")])
        if self.headers.get("Metadata-Flavor") != "Google" or self.headers.get("X-Forwarded-For"):
            self.record["error"] = "Metadata-Flavor: Google missing"
            return self.reply(403, raw=b"Missing required header: Metadata-Flavor\n",
                              headers=flavor + [("Content-Type", "text/html; charset=UTF-8")])
        if self.command not in ("GET", "HEAD"):
            return self.reply(405, raw=b"", headers=flavor)
        email = STATE.service_account["client_email"] if STATE.service_account else DEFAULT_COMPUTE_ACCOUNT
        scopes = sorted(STORAGE_WRITE_SCOPES)
        rest = path[len("/computeMetadata/v1"):]
        account = re.fullmatch(r"/instance/service-accounts/([^/]+)(/.*)?", rest)
        text = None
        if rest in ("", "/"):
            text = "instance/\noauth2/\nproject/\nuniverse/\n"
        elif rest == "/project/project-id":
            text = PROJECT_ID
        elif rest == "/project/numeric-project-id":
            text = "123456789012"
        elif rest == "/universe/universe-domain":
            text = "googleapis.com"
        elif rest in ("/instance/service-accounts", "/instance/service-accounts/"):
            text = "default/\n%s/\n" % email
        elif account and account.group(1) in ("default", email):
            sub = account.group(2) or "/"
            if sub == "/token":
                return self.reply(200, STATE.issue("metadata", email), flavor)
            if sub == "/" and self.query.get("recursive") == ["true"]:
                return self.reply(200, {"aliases": ["default"], "email": email, "scopes": scopes}, flavor)
            text = {"/": "aliases\nemail\nidentity\nscopes\ntoken\n", "/email": email, "/aliases": "default",
                    "/scopes": "\n".join(scopes) + "\n"}.get(sub)
        if text is None:
            return self.reply(404, raw=b"Not Found\n", headers=flavor + [("Content-Type", "text/html; charset=UTF-8")])
        self.reply(200, raw=text.encode(), headers=flavor + [("Content-Type", "application/text")])

    # ---- 3. Cloud Storage front

    def storage(self):
        path, query, method = self.url_path, self.query, self.command
        upload_id = (query.get("upload_id") or [None])[0]
        is_session = upload_id is not None and path.startswith("/upload/")
        auth, principal = STATE.check_bearer(self.headers.get("Authorization"))
        self.record["auth"] = auth
        if auth != "ok" and not (is_session and STATE.args.session_auth == "optional"):
            if auth == "missing":
                permission = "storage.objects.create" if is_session else needed_permission(method, path)
                message = ("Anonymous caller does not have %s access to the Google Cloud Storage object. "
                           "Permission '%s' denied on resource (or it may not exist)." % (permission, permission))
            else:
                message = "Invalid Credentials"
            return self.reply(401, gcs_error(401, message, "authError", locationType="header",
                                             location="Authorization"),
                              [("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/", '
                                                    'error="invalid_token"')])
        if is_session:
            return self.session(upload_id, principal)
        permission = needed_permission(method, path)
        upload = method == "POST" and permission == "storage.objects.create" and "uploadType" in query
        if permission not in ROLE_PERMISSIONS[STATE.args.role]:
            self.record["role_denied"] = True
            return self.reply(403, denied(principal, permission))
        if upload:
            return self.upload(principal)
        self.forward(method, self.path, body=self.read_body() if method in ("POST", "PUT", "PATCH") else None)

    def upload(self, principal):
        """An upload request: a resumable initiation, or a whole multipart/media upload."""
        m = re.fullmatch(r"/(?:upload/)?storage/v1/b/([^/]+)/o", self.url_path)
        upload_type = self.query["uploadType"][0]
        bucket = urllib.parse.unquote(m.group(1)) if m else None
        stream = upload_type == "media" and "chunked" not in (self.headers.get("Transfer-Encoding") or "").lower()
        body = None if stream else self.read_body()
        name = (self.query.get("name") or [None])[0]
        if name is None and body:
            name = object_name_from_body(body, self.headers.get("Content-Type") or "", upload_type)
        match = (self.query.get("ifGenerationMatch") or [None])[0]
        if bucket and name is not None:
            refusal = self.precondition(bucket, name, match, principal, check_overwrite=upload_type != "resumable")
            if refusal:
                return refusal()
        if STATE.args.delay:
            time.sleep(STATE.args.delay)
        status, reason, headers, data = self.forward(self.command, self.path, body=body, stream=stream,
                                                     answer=False)
        if upload_type == "resumable" and status == 200:
            for i, (key, value) in enumerate(headers):
                if key.lower() == "location":
                    location = urllib.parse.urlsplit(value)
                    session_id = (urllib.parse.parse_qs(location.query).get("upload_id") or [None])[0]
                    if session_id:
                        with STATE.lock:
                            STATE.sessions[session_id] = {"bucket": bucket, "name": name,
                                                          "if_generation_match": match, "resource": None}
                    front = "http://%s%s" % (self.front_host(), location.path)
                    headers[i] = (key, front + ("?" + location.query if location.query else ""))
        self.reply(status, raw=data, headers=headers, reason=reason, drain=False)

    def session(self, upload_id, principal):
        """A request on a resumable session URI (chunk PUT, status query)."""
        with STATE.lock:
            session = STATE.sessions.get(upload_id)
        if session is not None and session["resource"] is not None and self.command in ("PUT", "POST"):
            # Like GCS: a finished session answers any further request with the object resource.
            return self.reply(200, raw=session["resource"],
                              headers=[("Content-Type", "application/json; charset=UTF-8")])
        content_range = self.headers.get("Content-Range") or ""
        final = False
        chunk = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", content_range.strip())
        empty = re.fullmatch(r"bytes \*/(\d+)", content_range.strip())
        if chunk and int(chunk.group(2)) + 1 == int(chunk.group(3)):
            final = True
        if empty and int(empty.group(1)) == 0:
            final = True
        if final and session is not None and session["name"] is not None:
            refusal = self.precondition(session["bucket"], session["name"], session["if_generation_match"],
                                        principal, check_overwrite=True)
            if refusal:
                return refusal()
        stream = "chunked" not in (self.headers.get("Transfer-Encoding") or "").lower()
        if STATE.args.delay and self.command in ("PUT", "POST"):
            time.sleep(STATE.args.delay)
        status, reason, headers, data = self.forward(
            self.command, self.path, stream=stream, body=None if stream else self.read_body(), answer=False)
        if session is not None and status in (200, 201):
            with STATE.lock:
                session["resource"] = data
        self.reply(status, raw=data, headers=headers, reason=reason, drain=False)

    def precondition(self, bucket, name, match, principal, check_overwrite):
        """Returns a callable that sends the refusal, or None when the upload may go on."""
        may_replace = "storage.objects.delete" in ROLE_PERMISSIONS[STATE.args.role]
        if match is None and (may_replace or not check_overwrite):
            return None
        generation = emulator_generation(bucket, name)
        if match is not None:
            if (match == "0" and generation is not None) or (match != "0" and generation != match):
                return lambda: self.reply(412, PRECONDITION)
            return None
        if generation is not None:
            # Replacing an object needs storage.objects.delete too (objectCreator has only create).
            def refuse():
                self.record["role_denied"] = True
                self.reply(403, denied(principal, "storage.objects.delete"))
            return refuse
        return None

    def forward(self, method, path_and_query, body=None, stream=False, answer=True):
        """Sends the request to the emulator. body: bytes, or stream=True to copy the request body through."""
        conn = emulator_connection(600)
        try:
            conn.putrequest(method, path_and_query, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", self.front_host())
            for key, value in self.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    conn.putheader(key, value)
            if stream:
                conn.putheader("Content-Length", str(int(self.headers.get("Content-Length") or 0)))
                conn.endheaders()
                for piece in self.body:
                    conn.send(piece)
            elif body is not None:
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders()
                if body:
                    conn.send(body)
            else:
                conn.endheaders()
            response = conn.getresponse()
            data = response.read()
            headers = [(k, v) for k, v in response.getheaders()
                       if k.lower() not in HOP_BY_HOP and k.lower() not in ("server", "date")]
            status, reason = response.status, response.reason
        finally:
            conn.close()
        if answer:
            self.reply(status, raw=data, headers=headers, reason=reason)
        return status, reason, headers, data


class BadRequestBody(Exception):
    pass


class EmulatorDown(Exception):
    pass


def emulator_connection(timeout):
    conn = http.client.HTTPConnection("127.0.0.1", STATE.emulator_port, timeout=timeout)
    try:
        conn.connect()
    except OSError as error:
        raise EmulatorDown(str(error))
    return conn


def redact_query(query):
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    if not any(k == "access_token" for k, _ in pairs):
        return query
    return urllib.parse.urlencode([(k, "REDACTED" if k == "access_token" else v) for k, v in pairs])


def object_name_from_body(body, content_type, upload_type):
    try:
        if upload_type == "multipart" and content_type.lower().startswith("multipart/"):
            message = email.parser.BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n"
                                                            + body)
            parts = message.get_payload()
            return json.loads(parts[0].get_payload(decode=True)).get("name")
        if upload_type == "resumable":
            return json.loads(body).get("name")
    except (ValueError, IndexError, AttributeError, TypeError):
        pass
    return None


def emulator_generation(bucket, name):
    """The generation of BUCKET/NAME in the emulator (asked directly, without auth), or None when it is absent."""
    conn = emulator_connection(60)
    try:
        conn.request("GET", "/storage/v1/b/%s/o/%s" % (urllib.parse.quote(bucket, safe=""),
                                                       urllib.parse.quote(name, safe="")))
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status != 200:
        return None
    try:
        return str(json.loads(data).get("generation", "1"))
    except ValueError:
        return "1"


# ---------------------------------------------------------------------------------------------------- process

def die_with_parent():
    """Runs in the emulator child: the kernel kills it when this process dies (even by SIGKILL)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def watch_parent():
    parent = os.getppid()
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def start_emulator():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    child = subprocess.Popen(["gcp-storage-emulator", "start", "--port", str(port), "--host", "127.0.0.1",
                              "--default-bucket", "staging", "--in-memory", "--quiet"], preexec_fn=die_with_parent,
                             stdout=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port, child
        except OSError:
            if child.poll() is not None or time.time() > deadline:
                raise SystemExit("gcp-storage-emulator did not start")
            time.sleep(0.1)


def serve(argv):
    parser = argparse.ArgumentParser(prog="google_standins.py")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--emulator-port", type=int)
    source.add_argument("--start-emulator", action="store_true")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    parser.add_argument("--service-account")
    parser.add_argument("--authorized-user")
    parser.add_argument("--token-lifetime", type=int, default=3600)
    parser.add_argument("--role", choices=["objectCreator", "objectAdmin"], default="objectCreator")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--session-auth", choices=["required", "optional"], default="required")
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    global STATE
    STATE = State(args)
    threading.Thread(target=watch_parent, daemon=True).start()
    child = None
    if args.start_emulator:
        STATE.emulator_port, child = start_emulator()
    else:
        STATE.emulator_port = args.emulator_port
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    STATE.port = server.server_address[1]
    if child is not None:
        def emulator_watch():
            child.wait()
            os._exit(1)
        threading.Thread(target=emulator_watch, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # the emulator child follows through PDEATHSIG
    print("PORT %d" % STATE.port, flush=True)
    server.serve_forever()


def main():
    argv = sys.argv[1:]
    if argv and argv[0] in ("make-service-account", "make-authorized-user"):
        parser = argparse.ArgumentParser(prog="google_standins.py " + argv[0])
        parser.add_argument("out")
        parser.add_argument("--token-uri")
        args = parser.parse_args(argv[1:])
        (make_service_account if argv[0] == "make-service-account" else make_authorized_user)(args.out,
                                                                                              args.token_uri)
        return
    serve(argv)


if __name__ == "__main__":
    main()
