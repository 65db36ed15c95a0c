"""The two HTTP servers of Clair (main API and health), with Go's net/http behaviour where a
client can see it, plus test-only fault injection and records of requests and layer downloads.

Both servers wrap their handler in a time-out like Go's http.TimeoutHandler: a request still
running after `api_timeout` gets a 503 with Clair's timeout body, while the handler goes on in the
background (so a layer can still end up indexed, as with Clair).
"""

from __future__ import annotations

import contextlib
import email.utils
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any

from . import logs
from .api import Request, Response, Router, V1Api, error_response, json_response, not_found, plain_error
from .fetch import DownloadRecord
from .logs import Logger
from .model import BACKEND_ERROR
from .store import Store
from .worker import Worker

TIMEOUT_BODY = (
    b'{"Error":{"Message":"Clair failed to respond within the configured timeout window.","Type":"Timeout"}}'
)
CHUNK_THRESHOLD = 2048  # Go sends a Content-Length only for small bodies; larger ones are chunked
_READ_CHUNK = 1 << 16
_KEEP_BODY = 1 << 20


@dataclass
class RequestRecord:
    """One request handled by the simulator."""

    server: str  # "api" or "health"
    method: str
    path: str  # the request-target as sent, query included
    status: int | None  # what the client got; None while in flight or when dropped or held
    elapsed: float  # seconds until the answer was ready (or the connection dropped)
    started: float  # time.time() when the request was read
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""  # the first MiB of the request body
    fault: str | None = None  # the injected fault's action, if one answered
    remote: str = ""  # the client's address and port: one per connection


@dataclass
class Fault:
    """Test-only: how to answer requests matching method, path prefix and server."""

    action: str  # "respond", "hang", "drop", "delay" or "gather"
    method: str | None = None
    path: str = "/"
    server: str = "api"
    remaining: int | None = 1  # None: every matching request
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    respect_timeout: bool = False
    hits: int = 0
    gather: int = 0  # "gather": how many matching requests must be held at once
    gathered: threading.Event = field(default_factory=threading.Event)

    def matches(self, server: str, method: str, path: str) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        return (
            server == self.server
            and (self.method is None or self.method == method)
            and path.startswith(self.path)
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], simulator: ClairSimulator, kind: str) -> None:
        self.simulator = simulator
        self.kind = kind
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

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
        pass  # a client that went away mid-answer is not worth a traceback

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Go's net/http sets TCP_NODELAY on every connection; without it each answer sent in two
    # writes waits for the client's delayed ACK (about 40 ms).
    disable_nagle_algorithm = True
    server: _Server

    def __getattr__(self, name: str) -> Any:
        # Go's server accepts any method token; route them all to one place.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # Clair logs requests itself, as JSON

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests: Go answers a short plain-text status and closes."""
        text = f"{code} {self.responses.get(code, ('',))[0]}".encode()
        with contextlib.suppress(OSError):
            self.wfile.write(
                f"HTTP/1.1 {code} {self.responses.get(code, ('',))[0]}\r\n".encode()
                + b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
                + text
            )
        self.close_connection = True

    def _read_body(self) -> bytes:
        kept = bytearray()
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                size_line = self.rfile.readline(65537)
                try:
                    size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                except ValueError:
                    self.close_connection = True
                    return bytes(kept)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(kept)
                chunk = self.rfile.read(size)
                self.rfile.readline(3)
                if len(kept) < _KEEP_BODY:
                    kept += chunk[: _KEEP_BODY - len(kept)]
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, _READ_CHUNK))
            if not chunk:
                self.close_connection = True
                break
            remaining -= len(chunk)
            if len(kept) < _KEEP_BODY:
                kept += chunk[: _KEEP_BODY - len(kept)]
        return bytes(kept)

    def _serve(self) -> None:
        simulator = self.server.simulator
        started, wall = time.monotonic(), time.time()
        body = self._read_body()
        request = Request(
            method=self.command,
            target=self.path,
            headers={key.lower(): value for key, value in reversed(self.headers.items())},
            body=body,
            remote=f"{self.client_address[0]}:{self.client_address[1]}",
        )
        record = RequestRecord(
            server=self.server.kind,
            method=request.method,
            path=request.target,
            status=None,
            elapsed=0.0,
            started=wall,
            headers={key: value for key, value in self.headers.items()},
            body=body,
            remote=request.remote,
        )
        simulator._record(record)  # visible while in flight; completed below
        fault = simulator._take_fault(self.server.kind, request.method, request.path)
        if fault is not None:
            record.fault = fault.action
        try:
            if fault is not None and fault.action == "drop":
                self.close_connection = True
                return
            if fault is not None and fault.action == "gather":
                if not simulator._gather(fault):
                    self.close_connection = True
                    return
                fault = None  # then answered as Clair answers it
            if fault is not None and fault.action == "hang" and not fault.respect_timeout:
                simulator._stopping.wait()
                self.close_connection = True
                return
            response = simulator._answer(self.server.kind, request, fault)
            # Complete the record before the client can see the answer.
            record.status = response.status
            record.elapsed = time.monotonic() - started
            self._write(request, response)
        finally:
            if record.status is None:
                record.elapsed = time.monotonic() - started

    def _write(self, request: Request, response: Response) -> None:
        headers = list(response.headers)
        headers.append(("Date", email.utils.formatdate(usegmt=True)))
        body = response.body
        chunked = len(body) > CHUNK_THRESHOLD and self.request_version == "HTTP/1.1"
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            headers.append(("Content-Length", str(len(body))))
        self.send_response_only(response.status)
        for key, value in sorted(headers):
            self.send_header(key, value)
        self.end_headers()
        if request.method == "HEAD":
            return
        if chunked:
            self.wfile.write(f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        else:
            self.wfile.write(body)


class ClairSimulator:
    """A Clair v2.1.8 stand-in serving the main API and the health API on real sockets.

    >>> sim = ClairSimulator(MemoryStore.from_json("vulns.json")).start()
    >>> sim.url, sim.health_url      # "http://127.0.0.1:PORT" (no /v1), health server base URL
    >>> sim.stop()
    """

    def __init__(
        self,
        store: Store,
        host: str = "127.0.0.1",
        port: int = 0,
        health_port: int = 0,
        api_timeout: float = 900.0,
        *,
        insecure_tls: bool = False,
        pagination_key: str = "",
        logger: Logger | None = None,
        log_stream: IO[str] | None = sys.stdout,
        log_level: str = "info",
    ) -> None:
        self.store = store
        self.host = host
        self.api_timeout = api_timeout
        self.logger = logger or Logger(stream=log_stream, level=log_level)
        store.logger = self.logger
        self.worker = Worker(store, self.logger, insecure_tls=insecure_tls, on_download=self._record_download)
        self.api = V1Api(store, self.worker, pagination_key)
        self._v1 = Router(self.api.routes)
        self._health = Router([("GET", "/health", self._health_handler)])
        self._requested_ports = (port, health_port)
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._requests: list[RequestRecord] = []
        self._downloads: list[DownloadRecord] = []

    # lifecycle

    def start(self) -> ClairSimulator:
        if self._servers:
            return self
        self._stopping.clear()
        api = _Server((self.host, self._requested_ports[0]), self, "api")
        health = _Server((self.host, self._requested_ports[1]), self, "health")
        self._servers = [api, health]
        self.logger.info("starting main API", port=self.port)
        self.logger.info("starting health API", port=self.health_port)
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Close both servers and every open connection (held requests are released unanswered)."""
        self._stopping.set()
        servers, self._servers = self._servers, []
        for server in servers:
            server.shutdown()
            server.server_close()
            server.close_connections()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        if servers:
            self.logger.info("main API stopped")
            self.logger.info("health API stopped")

    def __enter__(self) -> ClairSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._servers[0].server_address[1])

    @property
    def health_port(self) -> int:
        return int(self._servers[1].server_address[1])

    def _base(self, port: int) -> str:
        host = self.host if self.host not in ("", "0.0.0.0") else "127.0.0.1"
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        """Base URL of the main API (append /v1/...)."""
        return self._base(self.port)

    @property
    def health_url(self) -> str:
        """Base URL of the health API (append /health)."""
        return self._base(self.health_port)

    # records (test-only)

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    @property
    def downloads(self) -> list[DownloadRecord]:
        with self._lock:
            return list(self._downloads)

    @property
    def logs(self) -> list[dict[str, Any]]:
        return list(self.logger.records)

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

    # fault injection (test-only)

    def _add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail_next(
        self,
        status: int = 500,
        body: Any = None,
        *,
        count: int | None = 1,
        method: str | None = None,
        path: str = "/",
        server: str = "api",
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """Answer the next `count` matching requests with `status` and `body`.

        `body` None gives Clair's error envelope with the masked database error; a dict or list
        is sent as Clair JSON (gzip when accepted); str or bytes is sent as given (text/plain
        unless `headers` sets Content-Type).
        """
        return self._add_fault(
            Fault("respond", method, path, server, count, status, body, dict(headers or {}), delay)
        )

    def hang(
        self,
        *,
        count: int | None = None,
        method: str | None = None,
        path: str = "/",
        server: str = "api",
        respect_timeout: bool = False,
    ) -> Fault:
        """Never answer matching requests: hold the connection until stop() (then close it).

        With respect_timeout=True the hang happens inside the handler instead, so the request
        gets Clair's 503 after `api_timeout`, like a Clair that is stuck.
        """
        return self._add_fault(Fault("hang", method, path, server, count, respect_timeout=respect_timeout))

    def drop(
        self, *, count: int | None = 1, method: str | None = None, path: str = "/", server: str = "api"
    ) -> Fault:
        """Close matching connections without any answer (a crashed Clair)."""
        return self._add_fault(Fault("drop", method, path, server, count))

    def delay(
        self,
        seconds: float,
        *,
        count: int | None = None,
        method: str | None = None,
        path: str = "/",
        server: str = "api",
    ) -> Fault:
        """Make matching requests slower by `seconds` (counted against `api_timeout`)."""
        return self._add_fault(Fault("delay", method, path, server, count, delay=seconds))

    def gather(self, count: int, *, method: str | None = None, path: str = "/", server: str = "api") -> Fault:
        """Hold matching requests until `count` of them are held at the same time, then answer
        them all (and every later one) as Clair does. A held request is answered only if
        `count` clients had one in flight together: a proof of concurrency that needs no clock.
        `fault.gathered` is set once they were."""
        return self._add_fault(Fault("gather", method, path, server, None, gather=count))

    def _gather(self, fault: Fault) -> bool:
        """Wait for the gathering; False if the simulator stopped first."""
        with self._lock:
            if fault.hits >= fault.gather:
                fault.gathered.set()
        while not fault.gathered.wait(0.05):
            if self._stopping.is_set():
                return False
        return True

    def close_connections(self) -> None:
        """Close every client connection now, as a proxy or load balancer in front of Clair
        closes idle keep-alive connections."""
        for server in self._servers:
            server.close_connections()

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, server: str, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(server, method, path):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    fault.hits += 1
                    return fault
        return None

    # answering

    def _answer(self, kind: str, request: Request, fault: Fault | None) -> Response:
        """Run the handler under the time-out, as http.TimeoutHandler does."""
        holder: list[Response] = []
        done = threading.Event()

        def run() -> None:
            try:
                holder.append(self._handle(kind, request, fault))
            except Exception as err:  # a simulator bug: answer 500 rather than hang
                self.logger.error("simulator handler failed", error=repr(err))
                holder.append(error_response(request, 500, str(err)))
            finally:
                done.set()

        threading.Thread(target=run, daemon=True).start()
        if done.wait(self.api_timeout) and holder:
            return holder[0]
        return Response(503, TIMEOUT_BODY, [("Content-Type", "text/plain; charset=utf-8")])

    def _handle(self, kind: str, request: Request, fault: Fault | None) -> Response:
        if kind == "health":
            return self._dispatch(self._health, request, request.path, log=False, fault=fault)
        path = request.path
        if not path.startswith("/v1"):
            self.logger.log(
                "info",
                "Served HTTP request",
                {
                    "status": 404,
                    "method": request.method,
                    "request uri": request.target,
                    "remote addr": request.remote,
                },
            )
            return not_found()
        return self._dispatch(self._v1, request, path.replace("/v1", "", 1), log=True, fault=fault)

    def _dispatch(
        self, router: Router, request: Request, path: str, *, log: bool, fault: Fault | None
    ) -> Response:
        started = time.monotonic()
        if fault is not None and fault.action == "hang":
            self._stopping.wait()
            return plain_error(503, "stopping")
        if fault is not None and fault.delay:
            self._stopping.wait(fault.delay)
        if fault is not None and fault.action == "respond":
            response = self._fault_response(request, fault)
        else:
            resolved = router.resolve(request, path)
            if isinstance(resolved, Response):
                return resolved  # httprouter's own 404/405/redirects are not logged by Clair
            handler, params = resolved
            response = handler(request, params)
        if log:
            elapsed = time.monotonic() - started
            self.api.observe(response.route, response.status, elapsed)
            self.logger.log(
                "info",
                "Handled HTTP request",
                {
                    "remote addr": request.remote,
                    "method": request.method,
                    "request uri": request.target,
                    "status": str(response.status) if response.status else "???",
                    "elapsed time": logs.duration_ns(elapsed),
                },
            )
        return response

    def _fault_response(self, request: Request, fault: Fault) -> Response:
        if fault.body is None:
            if fault.status >= 400:
                response = error_response(request, fault.status, BACKEND_ERROR)
            else:
                response = Response(fault.status)
        elif isinstance(fault.body, dict | list):
            response = json_response(request, fault.status, fault.body)
        else:
            raw = fault.body.encode() if isinstance(fault.body, str) else bytes(fault.body)
            response = Response(fault.status, raw, [("Content-Type", "text/plain; charset=utf-8")])
        if fault.headers:
            names = {key.lower() for key in fault.headers}
            response.headers = [(k, v) for k, v in response.headers if k.lower() not in names]
            response.headers.extend(fault.headers.items())
        return response

    def _health_handler(self, request: Request, params: dict[str, str]) -> Response:
        return Response(200 if self.store.ping() else 500, b"", [("Server", "clair")])


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll `condition` until true or `timeout` seconds passed (a helper for tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
