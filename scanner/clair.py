"""The Clair v2 client: which layers Clair holds, submitting the missing ones, reading the findings.

Retries follow Clair's documented semantics: 5xx and dropped connections are retried unchanged
with backoff, 4xx never are. Every call is bounded by the deadline of the whole analysis.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import logging
import select
import ssl
import time
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import ClairError
from .names import normalize_url, redact
from .redact import register_secret

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({500, 502, 503, 504})
_CHUNK = 1 << 16
_LONGEST_WAIT = 1e6


class Deadline:
    def __init__(self, seconds: float, start: float | None = None) -> None:
        """`seconds` from `start` (time.monotonic()), by default from now."""
        self.seconds = seconds
        self._end = (time.monotonic() if start is None else start) + seconds

    def remaining(self) -> float:
        # Capped: socket and lock timeouts overflow on absurd values (--clair-timeout 1e300).
        return min(self._end - time.monotonic(), _LONGEST_WAIT)


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    body: bytes


class ClairClient:
    """Clair's API over one kept-alive connection (http.client, and with it ssl: the layer server
    loads both anyway, while requests would add ~60 ms of CPU to every start). https is verified against the
    system's CA certificates (SSL_CERT_FILE and SSL_CERT_DIR are honoured); credentials in the URL
    are sent as basic authentication. Proxy variables are ignored: Clair runs next to us or on a
    known host."""

    def __init__(self, url: str, retries: int = 4, backoff: float = 0.5) -> None:
        self.url = normalize_url(url)
        self.retries = retries
        self.backoff = backoff
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._address = (parts.hostname or "", parts.port or 0)
        self._prefix = parts.path
        # Clair gzips its answers when asked: the findings of a large image run to megabytes.
        self._headers = {"User-Agent": "clair-scan", "Accept": "application/json", "Accept-Encoding": "gzip"}
        if parts.username is not None or parts.password is not None:
            user, password = unquote(parts.username or ""), unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            register_secret(token)  # a server may echo the header back in an error
            self._headers["Authorization"] = f"Basic {token}"
        self._connection: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def layer(self, name: str, deadline: Deadline, vulnerabilities: bool = True) -> dict[str, Any] | None:
        """The layer with its (cumulative) features and their vulnerabilities, or None if unknown."""
        query = "?features&vulnerabilities" if vulnerabilities else ""
        response = self.call("GET", f"/v1/layers/{name}{query}", deadline, ok=(200, 404))
        if response.status == 404:
            return None
        layer = json_object(response).get("Layer")
        if not isinstance(layer, dict):
            raise ClairError(f"Clair at {redact(self.url)} answered GET /v1/layers without a layer")
        return layer

    def submit(
        self, name: str, path: str, parent: str, deadline: Deadline, headers: dict[str, str] | None = None
    ) -> None:
        """Have Clair download and index a layer. `headers` go with Clair's download (a
        registry's Authorization): sent, never logged or shown."""
        layer: dict[str, Any] = {"Name": name, "Path": path, "ParentName": parent, "Format": "Docker"}
        if headers:
            layer["Headers"] = headers
        try:
            self.call("POST", "/v1/layers", deadline, ok=(201,), body={"Layer": layer})
        except ClairError as exc:
            if "could not find layer" not in exc.message and "could not download" not in exc.message:
                raise
            where = urlsplit(path).netloc
            hint = (
                f"Clair could not download from {where}; if Clair cannot reach that registry, "
                "pass --relay-layers to send the layers through clair-scan"
                if headers is not None
                else f"Clair could not download from {where}; pass an --ip that Clair can reach"
            )
            raise ClairError(exc.message, hint=hint) from None

    def namespaces(self, deadline: Deadline) -> list[str]:
        response = self.call("GET", "/v1/namespaces", deadline, ok=(200,))
        return [str(n.get("Name")) for n in json_object(response).get("Namespaces") or []]

    def call(
        self,
        method: str,
        path: str,
        deadline: Deadline,
        ok: tuple[int, ...],
        body: Any = None,
        retry_status: frozenset[int] = _RETRY_STATUS,
    ) -> Response:
        """One API call, retried on `retry_status` and dropped connections within the deadline;
        any other status outside `ok` is a ClairError naming Clair's message."""
        where = f"{method} {path.split('?')[0]}"
        payload = None if body is None else json.dumps(body).encode()
        delay = self.backoff
        for attempt in range(self.retries + 1):
            if deadline.remaining() <= 0:
                raise self._timeout(deadline)
            try:
                response = self._request(method, path, payload, deadline)
            except TimeoutError:
                raise self._timeout(deadline) from None
            except ssl.SSLCertVerificationError as exc:
                raise ClairError(
                    f"cannot verify the certificate of Clair at {redact(self.url)}: {exc.verify_message}",
                    hint="trust its CA with SSL_CERT_FILE or SSL_CERT_DIR",
                ) from None
            except (OSError, EOFError, zlib.error, http.client.HTTPException) as exc:
                problem = f"cannot connect to Clair at {redact(self.url)}"
                log.debug("%s (%s): %r", problem, where, exc)
                error = ClairError(problem, hint="is Clair running, and is --clair / CLAIR_ADDR right?")
            else:
                if response.status in ok:
                    return response
                error = ClairError(f"Clair answered {response.status} to {where}: {_message(response)}")
                if response.status not in retry_status:
                    raise error
            if attempt < self.retries and deadline.remaining() > delay:
                log.debug("retrying %s in %.1fs after: %s", where, delay, error)
                time.sleep(delay)
                delay *= 2
            else:
                break
        raise error

    def _request(self, method: str, path: str, payload: bytes | None, deadline: Deadline) -> Response:
        connection = self._connect(deadline.remaining())
        headers = dict(self._headers)
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, self._prefix + path, body=payload, headers=headers)
            answer = connection.getresponse()
            body = _read(answer, connection, deadline)
            if answer.getheader("Content-Encoding", "").strip().lower() == "gzip":
                body = gzip.decompress(body)
            return Response(answer.status, answer.reason, body)
        except BaseException:
            self.close()  # a connection left mid-request cannot carry the next one
            raise

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        connection = self._connection
        if connection is not None and connection.sock is not None and _dropped(connection.sock):
            connection.close()  # Clair closed it while idle: a request on it would fail
        if connection is None:
            host, port = self._address
            if self._https:
                connection = http.client.HTTPSConnection(host, port, context=ssl.create_default_context())
            else:
                connection = http.client.HTTPConnection(host, port)
            self._connection = connection
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection

    def _timeout(self, deadline: Deadline) -> ClairError:
        return ClairError(
            f"Clair at {redact(self.url)} did not finish within {deadline.seconds:g} s",
            hint="raise --clair-timeout for very large images",
        )


def _read(
    answer: http.client.HTTPResponse, connection: http.client.HTTPConnection, deadline: Deadline
) -> bytes:
    """The body, within the deadline: a socket timeout bounds each read, not the whole answer, and
    a server sending a byte now and then would otherwise keep us waiting for ever."""
    chunks = []
    while chunk := answer.read1(_CHUNK):  # what one read of the socket gives, not a full 64 KiB
        chunks.append(chunk)
        left = deadline.remaining()
        if left <= 0:
            raise TimeoutError
        if connection.sock is not None:
            connection.sock.settimeout(left)
    chunks.append(answer.read())  # nothing left, but it marks the answer done: the connection is reused
    return b"".join(chunks)


def _dropped(sock: Any) -> bool:
    """Whether the peer closed an idle connection: it is readable, with nothing to read but EOF."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def json_object(response: Response) -> dict[str, Any]:
    try:
        data = json.loads(response.body)
    except ValueError:
        raise ClairError(f"Clair answered {response.status} with a body that is not JSON") from None
    if not isinstance(data, dict):
        raise ClairError(f"Clair answered {response.status} with unexpected JSON")
    return data


def _message(response: Response) -> str:
    """Clair's error envelope, v2's `{"Error": {"Message": ...}}` or v4's `{"code", "message"}`,
    or the first line of a plain body."""
    try:
        data = json.loads(response.body)
        message = data["Error"]["Message"] if "Error" in data else data["message"]
        if isinstance(message, str) and message:
            return message
    except (ValueError, KeyError, TypeError):
        pass
    text = response.body.decode("utf-8", "replace").strip().splitlines()
    return text[0][:200] if text else response.reason or "no details"
