"""The layer server: Clair downloads each layer tar from us, straight out of the spool file.

Only `/<token>/<chain id>/layer.tar` for layers of this scan is served; the random token keeps
other clients from reading images through a server that may listen on a shared network.
"""

from __future__ import annotations

import errno
import hmac
import logging
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from .archive import Blob
from .errors import ScanError, UsageError
from .threads import start_daemon

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stream:
    """A layer relayed from elsewhere (a registry) as Clair downloads it: `size` bytes, which
    `open` yields afresh for each download. An error while yielding ends the download short."""

    size: int
    open: Callable[[], Iterator[bytes]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A download in progress must not hold up the end of the scan (Ctrl-C, Clair gone).
    block_on_close = False
    layers: dict[str, Blob | Stream]
    token: str

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback on stderr for any error in a request, a client that
        # hung up mid-answer included. A download that failed is Clair's to report.
        log.debug("layer server: request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "clair-scan"
    # Headers and body go out in separate writes; with Nagle on, the body would wait for
    # Clair's delayed ACK.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        parts = self.path.split("?", 1)[0].split("/")
        blob = None
        if (
            len(parts) == 4
            and parts[0] == ""
            and parts[3] == "layer.tar"
            and hmac.compare_digest(parts[1].encode(), self.server.token.encode())
        ):
            blob = self.server.layers.get(parts[2])
        if blob is None:
            self.send_error(404)
            return
        self.send_response(200)
        # Clair v4 compares the Content-Type exactly with the body's magic bytes; this one lets
        # the bytes decide, so a gzipped layer blob from an archive is not refused as mismatched.
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(blob.size))
        self.end_headers()
        if not body:
            return
        if isinstance(blob, Stream):
            self._relay(blob, parts[2])
            return
        try:
            with open(blob.path, "rb") as handle:
                sent = 0
                while sent < blob.size:
                    # A layer still streaming out of the engine is sent as it arrives.
                    ready = blob.available(sent)
                    # socket.sendfile uses sendfile(2): the kernel copies from the page cache.
                    self.connection.sendfile(handle, blob.offset + sent, ready - sent)
                    sent = ready
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client went away while downloading %s", parts[2])
        except ScanError as exc:
            # Closing short of Content-Length makes Clair fail this download rather than index
            # half a layer.
            log.debug("cannot finish sending %s: %s", parts[2], exc)

    def _relay(self, stream: Stream, name: str) -> None:
        sent = 0
        try:
            for chunk in stream.open():
                self.wfile.write(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client went away while downloading %s", name)
        except ScanError as exc:
            log.debug("cannot finish relaying %s after %d bytes: %s", name, sent, exc)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("layer server: %s - %s", self.address_string(), format % args)


class LayerServer:
    """Use as a context manager: it listens from entry and is shut down on exit, whatever happened."""

    def __init__(self, ip: str, bind: str | None = None, port: int = 0) -> None:
        self.ip = ip
        self.bind = bind or ip
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._published: dict[str, int] = {}

    def __enter__(self) -> LayerServer:
        family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        server_class = type("_LayerHTTPServer", (_Server,), {"address_family": family})
        try:
            server = server_class((self.bind, self.port), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"cannot serve layers on {self.bind}:{self.port}: the port is in use",
                    hint="choose another --port, or 0 for any free port",
                ) from None
            raise UsageError(
                f"cannot serve layers on {self.bind}:{self.port}: {exc.strerror or exc}",
                hint="--bind must be an address of this host",
            ) from None
        server.layers = {}
        server.token = secrets.token_urlsafe(18)
        self.port = server.server_address[1]
        self._server = server
        # shutdown() waits for the loop's next poll; at 5 ms that is no part of a scan's time.
        self._thread = start_daemon(server.serve_forever, "layer-server", poll_interval=0.005)
        log.debug("layer server listening on %s:%d", self.bind, self.port)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def withdraw(self, name: str) -> None:
        """Undo one publish(): the layer goes when every image that published it withdrew it."""
        with self._lock:
            left = self._published.get(name, 0) - 1
            if left > 0:
                self._published[name] = left
                return
            self._published.pop(name, None)
            if self._server is not None:
                self._server.layers.pop(name, None)

    def publish(self, name: str, blob: Blob | Stream) -> str:
        """Make `blob` downloadable and return the URL Clair should fetch it from. Images scanned
        in parallel may publish the same layer (same name, same bytes): it stays served until
        each has withdrawn it."""
        assert self._server is not None, "publish() on a server that is not running"
        with self._lock:
            self._published[name] = self._published.get(name, 0) + 1
            self._server.layers.setdefault(name, blob)
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}/{self._server.token}/{name}/layer.tar"


def route_address(url_or_host: str) -> str:
    """The local address the kernel would use to reach a host: the one that host can reach us on.
    No packet is sent; connecting a UDP socket only picks the route."""
    from urllib.parse import urlsplit

    host = urlsplit(url_or_host).hostname if "://" in url_or_host else url_or_host
    if not host:
        raise UsageError(f"cannot tell which address {url_or_host} reaches us on", hint="pass --ip")
    try:
        infos = socket.getaddrinfo(host, 80, type=socket.SOCK_DGRAM)
        family, _, _, _, address = infos[0]
        if family == socket.AF_INET and str(address[0]).startswith("127."):
            return "127.0.0.1"
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            return str(probe.getsockname()[0])
    except OSError as exc:
        raise UsageError(
            f"cannot find the local address that reaches {host}: {exc.strerror or exc}", hint="pass --ip"
        ) from None
