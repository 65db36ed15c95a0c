"""Real container registries for tests: Debian's `docker-registry` (the CNCF distribution registry)
on 127.0.0.1, with no auth, htpasswd basic auth or token auth (a token server of our own), TLS
from a trustme CA, and a variant whose blob GETs are redirected to another host as object
storage would be.

Clients talk to a recording front on `Registry.host`: it passes every request through to the
registry unchanged and records method, path, status and whether an Authorization header came,
so tests can assert what a client fetched. Blob downloads redirected to the blob host are
recorded there too. The fixture's own setup calls (`put_image` and friends) go to the registry
directly and are not recorded; `docker push` goes through the front like any client.

`start_registry()` is the context manager behind the fixtures in registry_fixtures.py; leaving
it stops every server and process and removes every file it made (certs.d included).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.client
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import bcrypt
import jwt
import requests
import trustme
import yaml
import zstandard
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from imagebuild import Layer, image_config, write_layer

REGISTRY_BIN = "/usr/bin/docker-registry"
CERTS_D = Path("/etc/docker/certs.d")
SERVICE = "clair-scan-test-registry"
ISSUER = "clair-scan-test-token-issuer"
# distribution accepts a token up to this long after its `exp` (registry/auth/token/token.go).
REGISTRY_LEEWAY = 60

AuthMode = Literal["none", "basic", "token"]
Compression = Literal["gzip", "none", "zstd"]

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_IMAGE_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES: dict[tuple[bool, str], str] = {
    (False, "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
    (False, "none"): "application/vnd.docker.image.rootfs.diff.tar",
    (False, "zstd"): "application/vnd.docker.image.rootfs.diff.tar.zstd",
    (True, "gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
    (True, "none"): "application/vnd.oci.image.layer.v1.tar",
    (True, "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
}
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST, DOCKER_SCHEMA1_SIGNED])

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compress_layer(data: bytes, compress: Compression) -> bytes:
    """Layer bytes as stored in a registry; gzip without name or mtime so digests are stable."""
    if compress == "gzip":
        return gzip.compress(data, mtime=0)
    if compress == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    if compress == "none":
        return data
    raise ValueError(f"unknown compression {compress!r}")


# ---------------------------------------------------------------------------------------------
# Request records


@dataclass(frozen=True)
class RequestRecord:
    """One request a client made to the registry (host == Registry.host) or to the blob host of
    a redirecting registry (host == Registry.blob_host)."""

    host: str
    method: str
    path: str  # with the query string
    status: int
    authorization: bool  # an Authorization header came with it
    auth_scheme: str | None  # "Basic", "Bearer" or None
    user_agent: str


class _Recorder:
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []
        self._lock = threading.Lock()

    def add(self, handler: http.server.BaseHTTPRequestHandler, host: str, status: int) -> None:
        auth = handler.headers.get("Authorization")
        record = RequestRecord(
            host=host,
            method=handler.command,
            path=handler.path,
            status=status,
            authorization=auth is not None,
            auth_scheme=auth.split(" ", 1)[0] if auth else None,
            user_agent=handler.headers.get("User-Agent", ""),
        )
        with self._lock:
            self.records.append(record)

    def snapshot(self) -> list[RequestRecord]:
        with self._lock:
            return list(self.records)

    def clear(self) -> None:
        with self._lock:
            self.records.clear()


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that give up mid-request (or fail the TLS handshake on purpose) are expected.
        pass


def _serve(server: http.server.HTTPServer, name: str) -> threading.Thread:
    # A short poll interval: shutdown() waits for it, three servers per registry.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=name, daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------------------------
# The recording front


class _FrontServer(_QuietServer):
    upstream_port: int
    upstream_tls: ssl.SSLContext | None
    public_host: str
    recorder: _Recorder
    overrides: dict[str, tuple[int, str | None, bytes]]


class _FrontHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FrontServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _request_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length is not None else None

    def _forward(self) -> None:
        body = self._request_body()
        override = self.server.overrides.get(self.path.split("?", 1)[0])
        if override is not None:
            status, content_type, data = override
            # Recorded before the client has its answer, so a test reading the log after a
            # request sees that request.
            self.server.recorder.add(self, self.server.public_host, status)
            self.send_response(status)
            if content_type:
                self.send_header("Content-Type", content_type)
            self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            return
        conn: http.client.HTTPConnection
        if self.server.upstream_tls is not None:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.server.upstream_port, context=self.server.upstream_tls, timeout=120
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=120)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for key, value in self.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    conn.putheader(key, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            try:
                conn.endheaders(body)
                response = conn.getresponse()
            except OSError:
                # The registry is gone (a test may stop it): answer as a load balancer would.
                self.server.recorder.add(self, self.server.public_host, 502)
                self.send_error(502)
                return
            self.server.recorder.add(self, self.server.public_host, response.status)
            length = response.getheader("Content-Length")
            # Registry answers carry a length; anything else is read whole to give it one.
            data = None if length is not None else response.read()
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP:
                    self.send_header(key, value)
            self.send_header("Content-Length", length if length is not None else str(len(data or b"")))
            self.end_headers()
            if self.command != "HEAD":
                if data is None:
                    shutil.copyfileobj(response, self.wfile, 1 << 20)
                else:
                    self.wfile.write(data)
        finally:
            conn.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward


# ---------------------------------------------------------------------------------------------
# The blob host of the redirecting variant


class _BlobServer(_QuietServer):
    public_host: str
    recorder: _Recorder


class _BlobHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the registry's storage directory read-only, as object storage serves a presigned
    URL: the registry's redirect middleware sends clients to `baseurl + storage path`."""

    server: _BlobServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.server.recorder.add(self, self.server.public_host, int(code) if str(code).isdigit() else 0)

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        self.send_error(403)
        return None


# ---------------------------------------------------------------------------------------------
# The token server


@dataclass(frozen=True)
class IssuedToken:
    token: str
    account: str
    service: str
    scopes: tuple[str, ...]  # as requested, e.g. "repository:app:pull,push"
    access: tuple[dict[str, Any], ...]  # what the token grants
    expires_in: int
    issued_at: float


class _TokenHTTPServer(_QuietServer):
    owner: TokenServer


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TokenHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        owner = self.server.owner
        url = urllib.parse.urlsplit(self.path)
        owner.requests.append(self.path)
        if url.path != "/token":
            self._answer(404, {"errors": [{"code": "NOT_FOUND"}]})
            return
        header = self.headers.get("Authorization")
        account = owner.check(header)
        if account is None and header is None and owner.anonymous_actions:
            account = ""  # anonymous, as Docker Hub hands out pull tokens for public repositories
        if account is None:
            self._answer(
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                {"WWW-Authenticate": 'Basic realm="clair-scan-test-token"'},
            )
            return
        query = urllib.parse.parse_qs(url.query)
        scopes = tuple(s for value in query.get("scope", []) for s in value.split(" ") if s)
        allowed = owner.anonymous_actions if account == "" else owner.allowed_actions
        issued = owner.mint(account, query.get("service", [""])[0], scopes, allowed)
        owner.issued.append(issued)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(issued.issued_at))
        self._answer(
            200,
            {
                "token": issued.token,
                "access_token": issued.token,
                "expires_in": issued.expires_in,
                "issued_at": when,
            },
        )

    def do_POST(self) -> None:
        # Only the GET flow of the token protocol; OAuth2 clients fall back to it on 404.
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(404, {"errors": [{"code": "NOT_FOUND"}]})


class TokenServer:
    """The Docker token protocol on 127.0.0.1: GET /token?service=S&scope=repository:NAME:pull,push
    with basic auth of a known user → a JWT the registry trusts (signed by a key whose
    certificate, sent in the `x5c` header, chains to the registry's `rootcertbundle`).

    `lifetime` (seconds, settable) is the `expires_in` of tokens issued from then on; the JWT's
    `exp` is set so that the registry, which allows REGISTRY_LEEWAY seconds past `exp`, rejects
    the token `lifetime` seconds after issue. `issued` records every token handed out, `requests`
    every path asked for. `allowed_actions` limits what any token grants; `anonymous_actions`
    (empty: anonymous requests get 401) what a request without credentials gets."""

    def __init__(self, ca: trustme.CA, users: dict[str, str]) -> None:
        self.users = dict(users)
        self.lifetime = 300
        self.allowed_actions: set[str] = {"pull", "push", "*"}
        self.anonymous_actions: set[str] = set()
        self.issued: list[IssuedToken] = []
        self.requests: list[str] = []
        signer = ca.issue_cert("clair-scan-token-signer")
        self._key = serialization.load_pem_private_key(signer.private_key_pem.bytes(), None)
        leaf = x509.load_pem_x509_certificate(signer.cert_chain_pems[0].bytes())
        self._x5c = [base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()]
        self._server = _TokenHTTPServer(("127.0.0.1", 0), _TokenHandler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = _serve(self._server, f"token-server-{self.port}")

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def check(self, header: str | None) -> str | None:
        """The account named by a basic Authorization header with the right password, else None."""
        if not header or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        return user if user in self.users and self.users[user] == password else None

    def mint(
        self, account: str, service: str, scopes: Sequence[str], allowed: set[str] | None = None
    ) -> IssuedToken:
        """A signed token granting `scopes` (within `allowed`, default allowed_actions); not
        recorded in `issued`."""
        allowed = self.allowed_actions if allowed is None else allowed
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = [a for a in actions.split(",") if a in allowed]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        lifetime = int(self.lifetime)
        claims = {
            "iss": ISSUER,
            "sub": account,
            "aud": service,
            "exp": now + lifetime - REGISTRY_LEEWAY,
            "nbf": now,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"typ": "JWT", "x5c": self._x5c})
        return IssuedToken(token, account, service, tuple(scopes), tuple(access), lifetime, float(now))


# ---------------------------------------------------------------------------------------------
# The registry


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Registry:
    host: str  # "127.0.0.1:PORT", what clients use
    url: str  # "http(s)://127.0.0.1:PORT"
    scheme: str
    ca_file: str | None
    username: str | None
    password: str | None
    auth: AuthMode
    token_server: TokenServer | None
    blob_host: str | None = None  # "127.0.0.2:PORT" for the redirecting variant
    pid: int = 0  # of the docker-registry process
    storage: Path = field(default=Path(), repr=False)
    log_file: Path = field(default=Path(), repr=False)
    _upstream: str = field(default="", repr=False)
    _recorder: _Recorder = field(default_factory=_Recorder, repr=False)
    _front: _FrontServer | None = field(default=None, repr=False)
    _cleanups: list[Any] = field(default_factory=list, repr=False)

    # -- what clients did -----------------------------------------------------------------------

    def requests_log(self) -> list[RequestRecord]:
        """Every request that reached the front (and the blob host), oldest first."""
        return self._recorder.snapshot()

    def clear_log(self) -> None:
        """Forget recorded requests and issued tokens (say, after pushing test images)."""
        self._recorder.clear()
        if self.token_server is not None:
            self.token_server.issued.clear()
            self.token_server.requests.clear()

    def override(self, path: str, body: bytes, *, status: int = 200, content_type: str | None = None) -> None:
        """Answer requests for `path` (query ignored) with `body` instead of the registry's answer:
        for content a registry would refuse to store, such as a manifest whose digest is wrong."""
        assert self._front is not None
        self._front.overrides[path] = (status, content_type, body)

    # -- filling it (straight to the registry, not recorded) -----------------------------------

    def _session(self, repo: str) -> requests.Session:
        session = requests.Session()
        session.trust_env = False
        session.verify = self.ca_file or True
        if self.auth == "basic":
            session.auth = (self.username or "", self.password or "")
        elif self.auth == "token":
            assert self.token_server is not None and self.username is not None
            token = self.token_server.mint(self.username, SERVICE, [f"repository:{repo}:pull,push"])
            session.headers["Authorization"] = f"Bearer {token.token}"
        return session

    def _api(self, repo: str, path: str) -> str:
        return f"{self.scheme}://{self._upstream}/v2/{repo}/{path}"

    def put_blob(self, repo: str, data: bytes) -> str:
        """Upload one blob (monolithic POST + PUT); returns its digest."""
        digest = sha256_digest(data)
        with self._session(repo) as session:
            if session.head(self._api(repo, f"blobs/{digest}"), timeout=60).status_code == 200:
                return digest
            started = session.post(self._api(repo, "blobs/uploads/"), timeout=60)
            _check(started, "start blob upload")
            location = urllib.parse.urljoin(self._api(repo, ""), started.headers["Location"])
            sep = "&" if "?" in location else "?"
            done = session.put(
                f"{location}{sep}digest={digest}",
                data=data,
                headers={"Content-Type": "application/octet-stream"},
                timeout=120,
            )
            _check(done, "upload blob")
        return digest

    def put_raw_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        """PUT `body` as the manifest `ref` (tag or digest); returns the digest the registry gave
        it. Raises RuntimeError with the registry's answer if it refuses."""
        with self._session(repo) as session:
            response = session.put(
                self._api(repo, f"manifests/{ref}"),
                data=body,
                headers={"Content-Type": media_type},
                timeout=60,
            )
        _check(response, "put manifest")
        return response.headers.get("Docker-Content-Digest") or sha256_digest(body)

    def put_image(
        self,
        repo: str,
        tag: str,
        layers: list[bytes],
        config: dict[str, Any] | None = None,
        oci: bool = False,
        compress: Compression = "gzip",
    ) -> str:
        """Upload an image of uncompressed layer tars (compressed as asked), its config (built with
        rootfs.diff_ids and one history entry per layer if None) and a Docker schema 2 or OCI
        manifest tagged `tag`; returns the manifest digest."""
        if config is None:
            config = image_config([sha256_digest(layer) for layer in layers])
        raw_config = json.dumps(config, separators=(",", ":")).encode()
        descriptors = []
        for layer in layers:
            blob = compress_layer(layer, compress)
            descriptors.append(
                {
                    "mediaType": LAYER_TYPES[(oci, compress)],
                    "size": len(blob),
                    "digest": self.put_blob(repo, blob),
                }
            )
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG if oci else DOCKER_IMAGE_CONFIG,
                "size": len(raw_config),
                "digest": self.put_blob(repo, raw_config),
            },
            "layers": descriptors,
        }
        body = json.dumps(manifest, indent=3).encode()
        return self.put_raw_manifest(repo, tag, body, str(manifest["mediaType"]))

    def put_index(
        self, repo: str, tag: str, manifests: list[tuple[str, dict[str, Any]]], oci: bool = True
    ) -> str:
        """Tag an OCI index (or Docker manifest list) of manifests already in `repo`, each given as
        (digest, platform), e.g. ("sha256:…", {"os": "linux", "architecture": "arm64",
        "variant": "v8"}); returns its digest."""
        entries = []
        with self._session(repo) as session:
            for digest, platform in manifests:
                head = session.head(
                    self._api(repo, f"manifests/{digest}"), headers={"Accept": MANIFEST_ACCEPT}, timeout=60
                )
                _check(head, f"look up manifest {digest}")
                entries.append(
                    {
                        "mediaType": head.headers["Content-Type"],
                        "size": int(head.headers["Content-Length"]),
                        "digest": digest,
                        "platform": platform,
                    }
                )
        media_type = OCI_INDEX if oci else DOCKER_LIST
        index = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
        return self.put_raw_manifest(repo, tag, json.dumps(index, indent=3).encode(), media_type)

    # -- pushing from the Docker engine -------------------------------------------------------

    def push_engine_image(self, local_tag: str, repo_tag: str) -> str:
        """`docker tag` + `docker push` an engine image as HOST/repo_tag (logging in first with a
        private DOCKER_CONFIG when the registry has users); returns the pushed manifest digest.
        The HOST/… tag is removed from the engine when the registry stops."""
        target = f"{self.host}/{repo_tag}"
        env = {**os.environ, "DOCKER_CONFIG": self._docker_config_dir()}
        subprocess.run(["docker", "tag", local_tag, target], check=True, capture_output=True, env=env)
        self._cleanups.append(
            lambda: subprocess.run(["docker", "rmi", target], check=False, capture_output=True, env=env)
        )
        done = subprocess.run(["docker", "push", target], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"docker push {target} failed: {done.stderr.strip() or done.stdout.strip()}")
        for line in done.stdout.splitlines():
            if "digest: sha256:" in line:
                return "sha256:" + line.split("digest: sha256:", 1)[1].split()[0]
        raise RuntimeError(f"docker push {target} printed no digest: {done.stdout}")

    def _docker_config_dir(self) -> str:
        path = self.storage.parent / "docker-config"
        if path.exists():
            return str(path)
        path.mkdir()
        if self.ca_file is not None:
            certs = CERTS_D / self.host
            made_parent = not CERTS_D.exists()
            certs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.ca_file, certs / "ca.crt")

            def remove_certs() -> None:
                shutil.rmtree(certs, ignore_errors=True)
                if made_parent:
                    with contextlib.suppress(OSError):  # another registry's CA may be there now
                        CERTS_D.rmdir()

            self._cleanups.append(remove_certs)
        if self.username is not None:
            done = subprocess.run(
                [
                    "docker",
                    "--config",
                    str(path),
                    "login",
                    "-u",
                    self.username,
                    "--password-stdin",
                    self.host,
                ],
                input=self.password,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(f"docker login {self.host} failed: {done.stderr.strip()}")
        return str(path)


def _check(response: requests.Response, what: str) -> None:
    if response.status_code >= 300:
        raise RuntimeError(f"{what}: HTTP {response.status_code}: {response.text.strip()[:500]}")


def _registry_config(
    storage: Path,
    port: int,
    auth: AuthMode,
    tls: tuple[str, str] | None,
    htpasswd: Path | None,
    token: TokenServer | None,
    ca_file: str | None,
    blob_base: str | None,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex},
    }
    if tls is not None:
        config["http"]["tls"] = {"certificate": tls[0], "key": tls[1]}
    if auth == "basic":
        config["auth"] = {"htpasswd": {"realm": "clair-scan-test", "path": str(htpasswd)}}
    elif auth == "token":
        assert token is not None
        config["auth"] = {
            "token": {"realm": token.realm, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": ca_file}
        }
    if blob_base is not None:
        config["middleware"] = {"storage": [{"name": "redirect", "options": {"baseurl": blob_base}}]}
    return config


@contextlib.contextmanager
def start_registry(auth: AuthMode = "none", tls: bool = False, redirect: bool = False) -> Iterator[Registry]:
    """A distribution registry on 127.0.0.1 behind a recording front, stopped and removed on exit."""
    if not os.path.exists(REGISTRY_BIN):
        raise RuntimeError(f"{REGISTRY_BIN} is missing: apt-get install docker-registry")
    stack = contextlib.ExitStack()
    with stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clair-scan-registry-")))
        storage = work / "storage"
        storage.mkdir()
        username = password = None
        if auth != "none":
            username, password = f"tester-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
        ca = trustme.CA()
        ca_file = str(work / "ca.pem") if tls or auth == "token" else None
        if ca_file is not None:
            ca.cert_pem.write_to_path(ca_file)
        tls_files = None
        server_ctx = None
        if tls:
            cert = ca.issue_cert("127.0.0.1", "127.0.0.2", "localhost")
            cert.private_key_and_cert_chain_pem.write_to_path(str(work / "server.pem"))
            cert.private_key_pem.write_to_path(str(work / "server.key"))
            tls_files = (str(work / "server.pem"), str(work / "server.key"))
            server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert.configure_cert(server_ctx)
        htpasswd = None
        if auth == "basic":
            assert username is not None and password is not None
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
            htpasswd = work / "htpasswd"
            htpasswd.write_text(f"{username}:{hashed}\n")
        token_server = None
        if auth == "token":
            assert username is not None and password is not None
            token_server = TokenServer(ca, {username: password})
            token_server.start()
            stack.callback(token_server.stop)
        recorder = _Recorder()
        blob_host = blob_base = None
        if redirect:
            blob_server = _BlobServer(
                ("127.0.0.2", 0),
                lambda *args: _BlobHandler(*args, directory=str(storage)),  # type: ignore[misc]
            )
            if server_ctx is not None:
                blob_server.socket = server_ctx.wrap_socket(
                    blob_server.socket, server_side=True, do_handshake_on_connect=False
                )
            blob_host = f"127.0.0.2:{blob_server.server_address[1]}"
            blob_server.public_host = blob_host
            blob_server.recorder = recorder
            _serve(blob_server, f"blob-host-{blob_host}")
            stack.callback(blob_server.server_close)
            stack.callback(blob_server.shutdown)
            blob_base = f"{'https' if tls else 'http'}://{blob_host}/"

        front = _FrontServer(("127.0.0.1", 0), _FrontHandler)
        stack.callback(front.server_close)
        host = f"127.0.0.1:{front.server_address[1]}"
        if server_ctx is not None:
            front.socket = server_ctx.wrap_socket(
                front.socket, server_side=True, do_handshake_on_connect=False
            )
        front.public_host = host
        front.recorder = recorder
        front.overrides = {}
        client_ctx = None
        if tls:
            client_ctx = ssl.create_default_context(cafile=ca_file)
        front.upstream_tls = client_ctx

        log_file = work / "registry.log"
        process, upstream_port = _start_process(
            work, storage, auth, tls_files, htpasswd, token_server, ca_file, blob_base, log_file
        )
        stack.callback(_stop_process, process)
        front.upstream_port = upstream_port
        _serve(front, f"registry-front-{host}")
        stack.callback(front.shutdown)

        scheme = "https" if tls else "http"
        registry = Registry(
            host=host,
            url=f"{scheme}://{host}",
            scheme=scheme,
            ca_file=ca_file if tls else None,
            username=username,
            password=password,
            auth=auth,
            token_server=token_server,
            blob_host=blob_host,
            pid=process.pid,
            storage=storage,
            log_file=log_file,
            _upstream=f"127.0.0.1:{upstream_port}",
            _recorder=recorder,
            _front=front,
        )
        # Ordered before everything above: engine tags and certs.d go while the registry still runs.
        stack.callback(lambda: [cleanup() for cleanup in reversed(registry._cleanups)])
        yield registry


def _start_process(
    work: Path,
    storage: Path,
    auth: AuthMode,
    tls: tuple[str, str] | None,
    htpasswd: Path | None,
    token: TokenServer | None,
    ca_file: str | None,
    blob_base: str | None,
    log_file: Path,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the registry on a free port, retrying if another process took the port first."""
    for _ in range(5):
        port = _free_port()
        config = work / "config.yml"
        config.write_text(
            yaml.safe_dump(_registry_config(storage, port, auth, tls, htpasswd, token, ca_file, blob_base))
        )
        with open(log_file, "ab") as log:
            process = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=work,
            )
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/v2/"
        for _ in range(200):
            if process.poll() is not None:
                break
            try:
                requests.get(url, verify=ca_file or True, timeout=2)
                return process, port
            except requests.ConnectionError:
                time.sleep(0.05)
        _stop_process(process)
    raise RuntimeError(f"docker-registry did not start: {log_file.read_text()[-2000:]}")


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------------------------
# Layers and Docker client configuration


def layer_bytes(layer: Layer) -> bytes:
    """An imagebuild Layer as the uncompressed tar put_image takes."""
    with tempfile.TemporaryDirectory(prefix="clair-scan-layer-") as scratch:
        return write_layer(layer, Path(scratch) / "layer.tar").path.read_bytes()


CREDENTIAL_HELPER = "cstest"
_NOT_FOUND = "credentials not found in native keychain"

# The docker-credential-helpers protocol (github.com/docker/docker-credential-helpers): the
# action is the only argument; `get` and `erase` read a server URL on stdin, `store` a JSON
# {ServerURL, Username, Secret}, `list` prints {ServerURL: Username}. Every call is appended to
# calls.log beside the script, so tests can tell that a client asked the helper.
_HELPER_SOURCE = """#!{python}
import json, sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STORE = HERE / "cstest-store.json"


def key(url):
    url = url.strip()
    for prefix in ("https://", "http://"):
        if url.startswith(prefix):
            url = url[len(prefix):]
    return url.split("/", 1)[0]


def load():
    return json.loads(STORE.read_text()) if STORE.exists() else {{}}


action = sys.argv[1] if len(sys.argv) > 1 else ""
data = sys.stdin.read() if action in ("get", "store", "erase") else ""
with open(HERE / "cstest-calls.log", "a") as log:
    log.write(action + " " + (data.strip() if action != "store" else "") + "\\n")
creds = load()
if action == "get":
    entry = creds.get(key(data))
    if entry is None:
        print("{not_found}")
        sys.exit(1)
    print(json.dumps({{"ServerURL": data.strip(), "Username": entry[0], "Secret": entry[1]}}))
elif action == "store":
    doc = json.loads(data)
    creds[key(doc["ServerURL"])] = [doc["Username"], doc["Secret"]]
    STORE.write_text(json.dumps(creds))
elif action == "erase":
    creds.pop(key(data), None)
    STORE.write_text(json.dumps(creds))
elif action == "list":
    print(json.dumps({{server: entry[0] for server, entry in creds.items()}}))
else:
    print("unknown credential action " + repr(action))
    sys.exit(1)
"""

ConfigMode = Literal["auths", "credsStore", "credHelpers"]


def docker_config(tmp_path: Path, registry: Registry, mode: ConfigMode) -> tuple[str, str]:
    """A Docker client config dir holding the registry's credentials, for DOCKER_CONFIG:
    "auths" as `docker login` writes them (base64 user:password), or through the credential
    helper docker-credential-cstest as "credsStore" or "credHelpers". Returns (config dir, the
    bin dir holding the helper, to put first on PATH); the helper keeps cstest-store.json and
    cstest-calls.log in that bin dir."""
    if registry.username is None or registry.password is None:
        raise ValueError("an anonymous registry has no credentials to configure")
    base = tmp_path / f"docker-config-{uuid.uuid4().hex[:8]}"
    config_dir, bin_dir = base / "config", base / "bin"
    config_dir.mkdir(parents=True)
    bin_dir.mkdir()
    helper = bin_dir / f"docker-credential-{CREDENTIAL_HELPER}"
    helper.write_text(_HELPER_SOURCE.format(python=sys.executable, not_found=_NOT_FOUND))
    helper.chmod(0o755)
    config: dict[str, Any]
    if mode == "auths":
        secret = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
        config = {"auths": {registry.host: {"auth": secret}}}
    else:
        (bin_dir / "cstest-store.json").write_text(
            json.dumps({registry.host: [registry.username, registry.password]})
        )
        if mode == "credsStore":
            config = {"auths": {registry.host: {}}, "credsStore": CREDENTIAL_HELPER}
        elif mode == "credHelpers":
            config = {"credHelpers": {registry.host: CREDENTIAL_HELPER}}
        else:
            raise ValueError(f"unknown mode {mode!r}")
    (config_dir / "config.json").write_text(json.dumps(config, indent=2))
    return str(config_dir), str(bin_dir)
