"""The export's head start.

Loading the CLI, the docker SDK and requests takes ~150 ms: a third of what the engine needs to
export a 100 MB image, and all of it before the export could begin. So `begin` runs first, with
the standard library only. It reads the command line as `clair-scan scan` will, and given an image
and an explicit Clair (--clair or CLAIR_ADDR), asks the engine for the image's layers and Clair
whether it holds the top one. If Clair lacks it, `begin` sends the engine the `docker save`
request and returns: the engine exports while the rest of the scanner loads, and the pipeline
claims the response instead of asking again. A rescan sends nothing.

Anything unusual (TLS or ssh to the engine, credentials in Clair's URL, an option it does not
know, any error, a slow answer) means no head start. The scan then takes its normal way, which
also reports the errors properly.

Every save from an engine reached without TLS or ssh, head start or not, is asked for the same
way (`send_save`): over HTTP/1.0 on a connection of its own, so that the answer is not chunked
and ends when the connection closes. Its bytes then go from the socket straight to the spool.
"""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import quote, urlsplit

from .errors import DockerError, ScanError
from .names import chain_ids, normalize_url, plain_docker_endpoint

# Every import here delays the save request: typing and contextlib would cost ~3 ms of the ~20.
# mypy reads any constant named TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .archive import SocketBody

# The `scan` command's options, as the CLI declares them (a test keeps the two in step).
VALUE_OPTIONS = frozenset(
    {
        "--archive", "--clair", "--ip", "--bind", "--port", "--clair-timeout", "--whitelist", "-w",
        "--threshold", "-t", "--report", "-r", "--format", "--log", "-l", "--db-image",
        "--clair-image", "--pull", "--network", "--db-port", "--clair-port", "--ready-timeout",
        "--max-db-age",
    }
)  # fmt: skip
FLAG_OPTIONS = frozenset({"--ignore-unfixed", "--no-report", "--keep"})

# Both answers come from local daemons in milliseconds; one that takes longer is left to the
# normal path, which has proper timeouts and messages.
TIMEOUT = 2.0


class SaveRequest:
    """A `docker save` request sent: the connection its answer comes on."""

    def __init__(self, image_id: str, sock: socket.socket) -> None:
        self.image_id = image_id
        self.sock = sock

    def body(self) -> SocketBody:
        """The saved image as the engine streams it; a refusal raises DockerError."""
        import contextlib

        from .archive import SocketBody

        # The engine answers once it has exported the whole image.
        status, reason, rest = _read_head(self.sock)
        if status != 200:
            text = _read_rest(self.sock, rest, 2000).decode("utf-8", "replace")
            with contextlib.suppress(ValueError, KeyError, TypeError):
                text = json.loads(text)["message"]
            raise DockerError(f"docker save failed: {status} {reason}: {text}".strip())
        return SocketBody(rest, self.sock)

    def close(self) -> None:
        # shutdown() also wakes a thread blocked reading the stream; the engine drops the export
        # when its next write fails.
        import contextlib

        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def send_save(engine: str | tuple[str, int], image_id: str, timeout: float) -> SaveRequest:
    """Ask the engine (see names.plain_docker_endpoint) for `docker save` of one image."""
    sock = _connect(engine, time.monotonic() + timeout)
    try:
        sock.sendall(_request(_engine_host(engine), f"/images/{quote(image_id, safe=':')}/get"))
    except OSError:
        sock.close()
        raise
    sock.settimeout(None)  # the pipeline reads the stream with its own deadline
    return SaveRequest(image_id, sock)


class HeadStart:
    """The save `begin` sent, for the scan of `ref` against the Clair at `clair_url`."""

    def __init__(self, ref: str, clair_url: str, save: SaveRequest) -> None:
        self.ref = ref
        self.clair_url = clair_url
        self.save = save


_started: HeadStart | None = None


def scan_request(argv: list[str], environ: dict[str, str]) -> tuple[str, str] | None:
    """(first image, Clair URL) if argv is a `scan` of an engine image against an explicit Clair;
    None if it is anything else, or anything this reading cannot be sure of."""
    if not argv or argv[0] != "scan":
        return None
    images: list[str] = []
    clair = environ.get("CLAIR_ADDR") or None
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":
            images.extend(args)
        elif not arg.startswith("-") or arg == "-":
            images.append(arg)
        elif arg in FLAG_OPTIONS:
            continue
        else:
            name, equals, attached = arg.partition("=")
            if name not in VALUE_OPTIONS or (equals and not name.startswith("--")):
                return None
            value = attached if equals else next(args, None)
            if value is None:
                return None
            if name == "--clair":
                clair = value
    if not images or not clair:
        return None
    return images[0], clair


def begin(argv: list[str], environ: dict[str, str]) -> bool:
    """Start the export of the scan's first image if Clair lacks it (see the module's docstring).
    True if argv is a scan of an engine image, whether or not an export had to start."""
    global _started
    request = scan_request(argv, environ)
    engine = plain_docker_endpoint(environ)
    if request is None or engine is None:
        return request is not None
    ref, clair = request
    try:
        clair_url = normalize_url(clair)
        parts = urlsplit(clair_url)
        if parts.scheme != "http" or parts.username or parts.password:
            return True
        deadline = time.monotonic() + TIMEOUT
        inspect = f"/images/{quote(ref, safe='/:')}/json"
        status, body = _get(_connect(engine, deadline), _engine_host(engine), inspect, deadline)
        if status != 200:
            return True
        attrs = json.loads(body)
        image_id, diff_ids = attrs["Id"], attrs["RootFS"]["Layers"]
        top = chain_ids(diff_ids)[-1]
        clair_sock = _connect((parts.hostname, parts.port), deadline)  # type: ignore[arg-type]
        if _get(clair_sock, parts.netloc, f"{parts.path}/v1/layers/{top}", deadline)[0] != 404:
            return True  # held (a rescan: nothing to export), or an answer the normal path should see
        _started = HeadStart(ref, clair_url, send_save(engine, image_id, TIMEOUT))
    except (OSError, ValueError, KeyError, TypeError, IndexError, ScanError):
        pass
    return True


def claim(ref: str, clair_url: str | None) -> HeadStart | None:
    """The head start for this image and this Clair, if there is one; it is handed out once."""
    global _started
    started, _started = _started, None
    if started is None or (started.ref, started.clair_url) == (ref, clair_url):
        return started
    started.save.close()
    return None


def _engine_host(engine: str | tuple[str, int]) -> str:
    return "localhost" if isinstance(engine, str) else f"{engine[0]}:{engine[1]}"


def _connect(engine: str | tuple[str, int], deadline: float) -> socket.socket:
    timeout = max(deadline - time.monotonic(), 0.001)
    if isinstance(engine, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(engine)
        except OSError:
            sock.close()
            raise
        return sock
    return socket.create_connection(engine, timeout=timeout)


def _request(host: str, path: str) -> bytes:
    # HTTP/1.0: the answer is not chunked and ends when the connection closes, so there is nothing
    # to decode. For the save that matters: taking apart the engine's 32 KiB chunks in Python
    # costs a third of the stream's time. A cut-off save still fails, as a truncated tar.
    return f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()


def _get(sock: socket.socket, host: str, path: str, deadline: float) -> tuple[int, bytes]:
    """One GET on a fresh connection, read to its end: (status, body)."""
    with sock:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.sendall(_request(host, path))
        status, _, rest = _read_head(sock, deadline)
        return status, _read_rest(sock, rest, 1 << 24, deadline)


def _read_head(sock: socket.socket, deadline: float | None = None) -> tuple[int, str, bytes]:
    """An HTTP response's status line and headers: (status, reason, body bytes that came along)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = _recv(sock, deadline)
        if not chunk or len(data) > 1 << 16:
            raise ConnectionError("the connection ended before the response's headers did")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    status, _, reason = status_line.partition(" ")[2].partition(" ")
    if not status.isdigit():
        raise ConnectionError(f"not an HTTP response: {status_line[:80]!r}")
    return int(status), reason, rest


def _read_rest(sock: socket.socket, data: bytes, limit: int, deadline: float | None = None) -> bytes:
    """The body up to `limit` bytes, read until the peer closes the connection."""
    while len(data) < limit:
        chunk = _recv(sock, deadline)
        if not chunk:
            break
        data += chunk
    return data[:limit]


def _recv(sock: socket.socket, deadline: float | None) -> bytes:
    if deadline is not None:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
    return sock.recv(65536)
