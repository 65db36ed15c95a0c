"""The Docker engine's HTTP API, spoken with the standard library.

An engine reached without TLS or ssh (the local socket, or tcp:// as under docker-in-docker) is
asked directly. The docker SDK and requests take ~80 ms of CPU to load: a cold scan would spend
them while the engine exports the image, on the same CPUs, and a rescan for two small GETs.
Engines behind TLS or ssh are left to the SDK (see image.Engine).

Every request is HTTP/1.0 on a connection of its own: the answer is not chunked and ends when the
connection closes, so there is nothing to decode. For `docker save` that matters: taking apart the
engine's 32 KiB chunks in Python costs a third of the stream's time. A cut-off save still fails,
as a truncated tar.
"""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import quote

from .errors import DockerError

# The head start imports this module before its request: the same trick as there.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from .archive import SocketBody

    class Sink(Protocol):
        """Where a response body is written (a file, or a wrapper of one)."""

        def write(self, data: bytes, /) -> int: ...


Address = str | tuple[str, int]
"""A unix socket's path, or a TCP (host, port) (see names.plain_docker_endpoint)."""


class SaveRequest:
    """A `docker save` request sent: the connection its answer comes on."""

    def __init__(self, image_id: str, sock: socket.socket) -> None:
        self.image_id = image_id
        self.sock = sock

    def body(self) -> SocketBody:
        """The saved image as the engine streams it; a refusal raises DockerError."""
        from .archive import SocketBody

        # The engine answers once it has exported the whole image.
        status, reason, rest = _read_head(self.sock)
        if status != 200:
            text = message(_read_rest(self.sock, rest, 2000))
            raise DockerError(f"docker save failed: {status} {reason}: {text}".strip())
        return SocketBody(rest, self.sock)

    def close(self) -> None:
        # shutdown() also wakes a thread blocked reading the stream; the engine drops the export
        # when its next write fails.
        import contextlib

        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def send_save(engine: Address, image_id: str, timeout: float) -> SaveRequest:
    """Ask the engine for `docker save` of one image; its answer is read later (SaveRequest)."""
    sock = connect(engine, time.monotonic() + timeout)
    try:
        sock.sendall(_request(host(engine), f"/images/{quote(image_id, safe=':')}/get"))
    except OSError:
        sock.close()
        raise
    sock.settimeout(None)  # the pipeline reads the stream with its own deadline
    return SaveRequest(image_id, sock)


def get(address: Address, path: str, deadline: float) -> tuple[int, bytes]:
    """One GET on a fresh connection, read to its end: (status, body)."""
    status, _, body = request(address, "GET", path, deadline)
    return status, body


def request(
    address: Address,
    method: str,
    path: str,
    deadline: float,
    body: bytes | None = None,
    sink: Sink | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection, read to its end: (status, headers, body). Header names
    are lower-cased; a body is sent as JSON. A 200's body goes into `sink` if one is given."""
    with connect(address, deadline) as sock:
        sock.sendall(_request(host(address), path, method, body))
        status, _, headers, rest = _read_response_head(sock, deadline)
        if method == "HEAD":
            return status, headers, b""
        if sink is None or status != 200:
            return status, headers, _read_rest(sock, rest, 1 << 26, deadline)
        sink.write(rest)
        while chunk := _recv(sock, deadline):
            sink.write(chunk)
        return status, headers, b""


def message(body: bytes) -> str:
    """The engine's error text: the `message` of its JSON, or the body as it came."""
    text = body.decode("utf-8", "replace").strip()
    try:
        found = json.loads(text)["message"]
    except (ValueError, KeyError, TypeError):
        return text
    return str(found)


def host(address: Address) -> str:
    """The Host header for the address."""
    if isinstance(address, str):
        return "localhost"
    name, port = address
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


def connect(address: Address, deadline: float) -> socket.socket:
    timeout = max(deadline - time.monotonic(), 0.001)
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock
    return socket.create_connection(address, timeout=timeout)


def _request(host: str, path: str, method: str = "GET", body: bytes | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.0\r\nHost: {host}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + (body or b"")


def _read_head(sock: socket.socket, deadline: float | None = None) -> tuple[int, str, bytes]:
    """An HTTP response's status line and headers: (status, reason, body bytes that came along)."""
    status, reason, _, rest = _read_response_head(sock, deadline)
    return status, reason, rest


def _read_response_head(
    sock: socket.socket, deadline: float | None = None
) -> tuple[int, str, dict[str, str], bytes]:
    """(status, reason, headers by lower-cased name, body bytes that came along)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = _recv(sock, deadline)
        if not chunk or len(data) > 1 << 16:
            raise ConnectionError("the connection ended before the response's headers did")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    status, _, reason = status_line.partition(" ")[2].partition(" ")
    if not status.isdigit():
        raise ConnectionError(f"not an HTTP response: {status_line[:80]!r}")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status), reason, headers, rest


def _read_rest(sock: socket.socket, data: bytes, limit: int, deadline: float | None = None) -> bytes:
    """The body up to `limit` bytes, read until the peer closes the connection."""
    body = bytearray(data)
    while len(body) < limit:
        chunk = _recv(sock, deadline)
        if not chunk:
            break
        body += chunk
    return bytes(body[:limit])


def _recv(sock: socket.socket, deadline: float | None) -> bytes:
    if deadline is not None:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
    return sock.recv(65536)
