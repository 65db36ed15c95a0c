"""Clair v4.7.4's API port in combo mode (clair:httptransport), on a real socket.

Only what a client meets is served: the indexer routes, the matcher's vulnerability report, and
Go's plain-text 404 for everything else. Responses are written as Go writes them: JSON bodies
chunked with `Trailer: Clair-Error`, a sniffed `text/plain; charset=utf-8` where the handler
sets no Content-Type, empty bodies for 202/204/304/412.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any

from clairsim.fetch import DownloadRecord
from clairsim.store import Store

from . import matcher
from .indexer import SCANNERS, Indexer, IndexFailure
from .model import DigestError, IdTable, LayerSpec, Manifest, encode, error_body, parse_digest

INDEX_REPORT = "/indexer/api/v1/index_report"
INDEX_STATE = "/indexer/api/v1/index_state"
VULNERABILITY_REPORT = "/matcher/api/v1/vulnerability_report/"
UPDATE_OPERATION = "/matcher/api/v1/internal/update_operation"
VND_INDEX_REPORT = "application/vnd.clair.indexreport.v1+json"
VND_INDEX_STATE = "application/vnd.clair.indexstate.v1+json"
SNIFFED_TEXT = "text/plain; charset=utf-8"
CACHE_AGE = 21600  # matcher.cache_age defaults to the updater period, 6h


@dataclass
class RequestRecord:
    method: str
    path: str
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    api: bool = True  # an API handler's answer (declares the Clair-Error trailer)


def _error(status: int, message: str) -> Answer:
    return Answer(status, error_body(status, message), [("Content-Type", "application/json")])


def _not_found_page() -> Answer:
    return Answer(
        404,
        b"404 page not found\n",
        [("Content-Type", SNIFFED_TEXT), ("X-Content-Type-Options", "nosniff")],
        api=False,
    )


class _BadAccept(Exception):
    pass


def negotiate(accept: str | None, offers: list[str]) -> str | None:
    """The offer the Accept header picks: the first offer when there is none or `*/*`; None when
    nothing matches; _BadAccept for a malformed header."""
    if not accept or not accept.strip():
        return offers[0]
    ranges: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        if media.count("/") != 1 or not all(media.split("/")):
            raise _BadAccept(part.strip())
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    raise _BadAccept(part.strip()) from None
        if quality > 0:
            ranges.append((-quality, position, media.lower()))
    for _, _, media in sorted(ranges):
        kind = media.split("/")[0]
        for offer in offers:
            if media in ("*/*", offer) or (media == f"{kind}/*" and offer.startswith(kind + "/")):
                return offer
    return None


class ClairV4Simulator:
    """Clair v4.7.4 (combo mode) on 127.0.0.1. `store` holds the vulnerability data (a clairsim
    Store; an empty one answers 202 from the matcher until data is loaded into it)."""

    def __init__(
        self,
        store: Store,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        introspection_port: int | None = None,
        log_stream: IO[str] | None = None,
    ) -> None:
        self.store = store
        self.host = host
        self._requested_port = port
        self.ids = IdTable()
        self._lock = threading.Lock()
        self._requests: list[RequestRecord] = []
        self._downloads: list[DownloadRecord] = []
        self.indexer = Indexer(self.ids, self._record_download, self.state_for(SCANNERS))
        self.log_stream = log_stream
        self._introspection_port = introspection_port
        self.ready = True
        """What /readyz reports; Clair calls health.Ready() once its services are up (§1)."""
        self._server: _Server | None = None
        self._introspection: _Server | None = None
        self._threads: list[threading.Thread] = []

    @staticmethod
    def state_for(scanners: tuple[str, ...]) -> str:
        """The indexer state: an md5 over the scanners' names and versions."""
        return hashlib.md5("".join(scanners).encode()).hexdigest()

    @property
    def indexer_state(self) -> str:
        return self.indexer.state

    def upgrade_scanners(self, *scanners: str) -> str:
        """Act as a Clair restarted with other scanner versions: a new indexer state, under which
        earlier manifests and layers count as not scanned."""
        self.indexer.state = self.state_for(scanners)
        return self.indexer.state

    # lifecycle

    def start(self) -> ClairV4Simulator:
        self._server = self._serve(self._requested_port, introspection=False)
        if self._introspection_port is not None:
            self._introspection = self._serve(self._introspection_port, introspection=True)
        self._log(f"clairsim4 listening on {self.url}")
        return self

    def _serve(self, port: int, introspection: bool) -> _Server:
        server = _Server((self.host, port), _Handler)
        server.simulator = self
        server.introspection = introspection
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self._threads.append(thread)
        return server

    def stop(self) -> None:
        servers = [s for s in (self._server, self._introspection) if s is not None]
        self._server = self._introspection = None
        for server in servers:
            server.shutdown()
            server.server_close()
            server.close_connections()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def introspect(self, method: str, path: str) -> Answer:
        """The introspection port (§1): /healthz always "ok", /readyz empty 200 once serving
        (503 until `ready`), /metrics a small Prometheus text; only GET."""
        if path not in ("/healthz", "/readyz", "/metrics"):
            return _not_found_page()
        if method != "GET":
            return Answer(405, b"", api=False)
        if path == "/healthz":
            return Answer(200, b"ok", [("Content-Type", SNIFFED_TEXT)], api=False)
        if path == "/readyz":
            return Answer(200 if self.ready else 503, b"", api=False)
        text = f"clairsim4_index_reports {len(self.indexer.reports)}\n".encode()
        return Answer(200, text, [("Content-Type", "text/plain; version=0.0.4")], api=False)

    def __enter__(self) -> ClairV4Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return self._base(self.port)

    @property
    def introspection_url(self) -> str:
        assert self._introspection is not None, "started without an introspection_port"
        return self._base(int(self._introspection.server_address[1]))

    def _base(self, port: int) -> str:
        host = self.host if self.host not in ("", "0.0.0.0") else "127.0.0.1"
        return f"http://{host}:{port}"

    def _log(self, text: str) -> None:
        if self.log_stream is not None:
            print(text, file=self.log_stream, flush=True)

    # records (test-only)

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    @property
    def downloads(self) -> list[DownloadRecord]:
        with self._lock:
            return list(self._downloads)

    def clear_records(self) -> None:
        with self._lock:
            self._requests.clear()
            self._downloads.clear()

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    def _record_download(self, record: DownloadRecord) -> None:
        with self._lock:
            self._downloads.append(record)

    # routing

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes, query: str = "") -> Answer:
        if path == INDEX_REPORT:
            if method == "POST":
                return self._post_index_report(headers, body)
            if method == "DELETE":
                return self._delete_index_reports(body)
            return _error(405, f"method disallowed: {method}")
        if path.startswith(INDEX_REPORT + "/"):
            if method not in ("GET", "DELETE"):
                return _error(405, f"method disallowed: {method}")
            try:
                digest = parse_digest(path[len(INDEX_REPORT) + 1 :])
            except DigestError as err:
                return _error(400, f"malformed path: {err}")
            if method == "DELETE":
                self.indexer.delete(digest)
                return Answer(204)
            return self._get_index_report(digest, headers)
        if path == INDEX_STATE:
            if method != "GET":
                return _error(405, f"method disallowed: {method}")
            return self._index_state(headers)
        if path == UPDATE_OPERATION:
            if method != "GET":
                return _error(405, f"method disallowed: {method}")
            return self._update_operation(query, headers)
        if path.startswith(VULNERABILITY_REPORT):
            if method != "GET":
                return _error(405, "endpoint only allows GET")
            return self._vulnerability_report(path[len(VULNERABILITY_REPORT) :])
        return _not_found_page()

    def _etag(self) -> tuple[str, str]:
        return ("Etag", f'"{self.indexer.state}"')

    def _links(self, digest: str) -> list[tuple[str, str]]:
        return [
            ("Link", f'<{INDEX_REPORT}/{digest}>; rel="https://projectquay.io/clair/v1/index_report"'),
            (
                "Link",
                f'<{VULNERABILITY_REPORT}{digest}>; rel="https://projectquay.io/clair/v1/vulnerability_report"',
            ),
        ]

    def _post_index_report(self, headers: dict[str, str], body: bytes) -> Answer:
        try:
            manifest = decode_manifest(body)
        except ValueError as err:
            return _error(400, f"failed to deserialize manifest: {err}")
        if manifest is None:
            return _error(400, "bogus manifest")
        links = self._links(manifest.hash)
        if headers.get("if-none-match") == f'"{self.indexer.state}"':
            # Only the indexer state is compared: whether this manifest was ever indexed is not.
            return Answer(412, b"", links)
        try:
            record = self.indexer.index(manifest)
        except IndexFailure as err:
            answer = _error(err.status, f"failed to start scan: {err}")
            answer.headers[:0] = links
            return answer
        report = self.indexer.report_json(record)
        return Answer(
            201,
            encode(report),
            [
                *links,
                self._etag(),
                ("Location", f"{INDEX_REPORT}/{manifest.hash}"),
                ("Content-Type", SNIFFED_TEXT),
            ],
        )

    def _delete_index_reports(self, body: bytes) -> Answer:
        try:
            digests = [parse_digest(d) for d in json.loads(body)]
        except (ValueError, TypeError) as err:
            return _error(400, f"failed to deserialize bulk delete: {err}")
        deleted = [d for d in digests if self.indexer.delete(d)]
        return Answer(200, encode(deleted), [("Content-Type", SNIFFED_TEXT)])

    def _negotiated(self, headers: dict[str, str], offers: list[str]) -> str | Answer:
        try:
            chosen = negotiate(headers.get("accept"), offers)
        except _BadAccept as err:
            return _error(400, f"malformed accept header: {err}")
        if chosen is None:
            # The status goes out before the error helper sets its Content-Type: Go sniffs one.
            return Answer(
                415,
                error_body(415, "unable to negotiate common content-type"),
                [("Content-Type", SNIFFED_TEXT)],
            )
        return chosen

    def _get_index_report(self, digest: str, headers: dict[str, str]) -> Answer:
        chosen = self._negotiated(headers, [VND_INDEX_REPORT, "application/json"])
        if isinstance(chosen, Answer):
            return chosen
        if headers.get("if-none-match") == f'"{self.indexer.state}"':
            return Answer(304, b"", [self._etag()])  # before the lookup: even unknown digests
        record = self.indexer.get(digest)
        if record is None:
            return _error(404, "index report not found")
        body = encode(self.indexer.report_json(record))
        return Answer(200, body, [self._etag(), ("Content-Type", chosen)])

    def _index_state(self, headers: dict[str, str]) -> Answer:
        chosen = self._negotiated(headers, [VND_INDEX_STATE, "application/json"])
        if isinstance(chosen, Answer):
            return chosen
        if headers.get("if-none-match") == f'"{self.indexer.state}"':
            return Answer(304, b"", [self._etag()])
        return Answer(200, encode({"state": self.indexer.state}), [self._etag(), ("Content-Type", chosen)])

    def _update_operation(self, query: str, headers: dict[str, str]) -> Answer:
        """§4.3: {updater: [operation]}, ETag the latest ref, 304 when If-None-Match has it."""
        params = urllib.parse.parse_qs(query)
        kind = (params.get("kind") or ["vulnerability"])[0]
        if kind not in ("vulnerability", "enrichment"):
            return _error(400, f"unknown kind: {kind!r}")
        operations = matcher.update_operations(self.store, kind)
        latest = max((ops[0] for ops in operations.values()), key=lambda op: op["date"], default=None)
        etag = [("Etag", f'"{latest["ref"]}"')] if latest else []
        if latest and headers.get("if-none-match") == f'"{latest["ref"]}"':
            return Answer(304, b"", etag)
        return Answer(200, encode(operations), [*etag, ("Content-Type", SNIFFED_TEXT)])

    def _vulnerability_report(self, raw: str) -> Answer:
        try:
            digest = parse_digest(raw)
        except DigestError as err:
            return _error(400, f"malformed path: {err}")
        if not matcher.has_data(self.store):
            return Answer(202)  # checked before anything else: even unknown manifests get it
        record = self.indexer.get(digest)
        if record is None or record.state != "IndexFinished":
            return _error(404, f'index report for manifest "{digest}" not found')
        report = matcher.vulnerability_report(record, self.indexer.report_json(record), self.store, self.ids)
        return Answer(
            200,
            encode(report),
            [("Cache-Control", f"max-age={CACHE_AGE}"), ("Content-Type", "application/json")],
        )


def decode_manifest(body: bytes) -> Manifest | None:
    """cc:manifest.go as Clair decodes it: unknown keys ignored; None for a manifest with no hash
    or no layers ("bogus manifest"); ValueError when it does not decode."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    if not data.get("hash") or not data.get("layers"):
        return None
    manifest_hash = parse_digest(data["hash"])
    layers = data["layers"]
    if not isinstance(layers, list):
        raise ValueError("layers: expected an array")
    specs = []
    for item in layers:
        if not isinstance(item, dict):
            raise ValueError("layer: expected an object")
        headers = item.get("headers") or {}
        if not isinstance(headers, dict) or not all(
            isinstance(values, list) and all(isinstance(v, str) for v in values)
            for values in headers.values()
        ):
            raise ValueError("headers: values must be arrays of strings")
        uri = item.get("uri") or ""
        if not isinstance(uri, str):
            raise ValueError("uri: expected a string")
        specs.append(
            LayerSpec(parse_digest(item.get("hash")), uri, {str(k): list(v) for k, v in headers.items()})
        )
    return Manifest(manifest_hash, tuple(specs))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    simulator: ClairV4Simulator
    introspection = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        with self.connections_lock:
            self.connections.add(connection)
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        simulator = self.server.simulator
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        record = RequestRecord(self.command, self.path, None, dict(self.headers.items()), body)
        simulator._record(record)
        headers = {key.lower(): value for key, value in reversed(self.headers.items())}
        path, _, query = self.path.partition("?")
        try:
            if self.server.introspection:
                answer = simulator.introspect(self.command, path)
            else:
                answer = simulator.answer(self.command, path, headers, body, query)
        except Exception as err:  # a simulator bug: answer 500 rather than hang the client
            print(f"clairsim4: handler failed: {err!r}", file=sys.stderr)
            answer = _error(500, f"simulator error: {err!r}")
        record.status = answer.status
        self._write(answer)

    def _write(self, answer: Answer) -> None:
        self.send_response_only(answer.status)
        for key, value in answer.headers:
            self.send_header(key, value)
        self.send_header("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()))
        if self.request_version != "HTTP/1.1" and answer.status not in (204, 304):
            # An HTTP/1.0 client gets no chunks: Go ends the body by closing the connection.
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(answer.body)
            self.close_connection = True
            return
        if answer.api and answer.body and answer.status not in (204, 304):
            # Clair's handlers declare the trailer, so Go sends their bodies chunked.
            self.send_header("Trailer", "Clair-Error")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(f"{len(answer.body):x}\r\n".encode() + answer.body + b"\r\n0\r\n\r\n")
            return
        if answer.status not in (204, 304):
            self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)
