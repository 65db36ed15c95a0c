"""Opening a layer's `Path` as Clair's ext/imagefmt.Extract does.

http(s) URLs are fetched with a GET like Go's default client would send it: each `Headers` entry
set once (canonical key), `User-Agent: Go-http-client/1.1`, `Accept-Encoding: gzip` (transparently
decoded) unless given, proxies from HTTP_PROXY/HTTPS_PROXY/NO_PROXY except for loopback hosts,
up to 10 redirects, and Authorization/Cookie dropped when a redirect leaves the original host.
Any failure or a status outside 2xx is "could not find layer". Anything else is a local file path.
The body is streamed; Clair never checks its length, but Go's transport does: a body that ends
before its Content-Length reads as io.ErrUnexpectedEOF, so the extraction fails.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import io
import ipaddress
import os
import ssl
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, BinaryIO

MAX_REDIRECTS = 10
_SENSITIVE = ("Authorization", "Www-Authenticate", "Cookie", "Cookie2")


class FetchError(Exception):
    """The layer could not be downloaded or opened (answered with 400 "could not find layer")."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class DownloadRecord:
    """One layer download, for tests and benchmarks."""

    layer: str
    url: str  # the Path as given (query included)
    status: int | None = None  # final HTTP status; None for files and transport errors
    bytes_read: int = 0  # bytes taken from the response body or file (before decompression)
    elapsed: float = 0.0  # seconds from the request to the end of extraction
    error: str | None = None
    request_headers: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    response_headers: dict[str, str] = field(default_factory=dict)  # of the final response


def canonical_header_key(key: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey for ordinary header names."""
    if not key or any(not (ch.isalnum() or ch in "-!#$%&'*+.^_`|~") for ch in key):
        return key
    return "-".join(part[:1].upper() + part[1:].lower() for part in key.split("-"))


class CountingReader(io.RawIOBase):
    """A raw stream over a response or file that counts the bytes read from it."""

    def __init__(self, source: Any, record: DownloadRecord, closers: list[Any]) -> None:
        self._source = source
        self._record = record
        self._closers = closers

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._source.read(len(buffer))
        if not data:
            if getattr(self._source, "length", None):  # http.client: Content-Length bytes still due
                raise OSError("unexpected EOF")
            return 0
        buffer[: len(data)] = data
        self._record.bytes_read += len(data)
        return len(data)

    def close(self) -> None:
        for closer in self._closers:
            with contextlib.suppress(OSError):
                closer.close()
        super().close()


class _DirectoryReader(io.RawIOBase):
    """Go's os.Open succeeds on a directory; reading it then fails (so extraction fails)."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise IsADirectoryError("read: is a directory")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _proxy_for(url: urllib.parse.SplitResult) -> str | None:
    """Go's http.ProxyFromEnvironment: never for loopback hosts, else *_PROXY unless NO_PROXY."""
    host = url.hostname or ""
    if _is_loopback(host):
        return None
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(url.scheme)
    if not proxy:
        return None
    bypass = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009 - missing from typeshed
    if bypass(url.netloc):
        return None
    return proxy if "://" in proxy else "http://" + proxy


def _host_port(url: urllib.parse.SplitResult) -> str:
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"{(url.hostname or '').lower()}:{port}"


def _same_or_subdomain(dest: str, initial: str) -> bool:
    return dest == initial or dest.endswith("." + initial)


def _connect(url: urllib.parse.SplitResult, insecure_tls: bool) -> tuple[http.client.HTTPConnection, bool]:
    """A connection for `url` (through a proxy if configured); True if the target is absolute-form."""
    context = None
    if url.scheme == "https":
        context = ssl.create_default_context()
        if insecure_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    proxy = _proxy_for(url)
    host, port = url.hostname or "", url.port
    if proxy is None:
        if context is not None:
            return http.client.HTTPSConnection(host, port, context=context), False
        return http.client.HTTPConnection(host, port), False
    proxy_url = urllib.parse.urlsplit(proxy)
    if url.scheme == "https":
        connection = http.client.HTTPSConnection(
            proxy_url.hostname or "", proxy_url.port or 80, context=context
        )
        connection.set_tunnel(host, port or 443)
        return connection, False
    return http.client.HTTPConnection(proxy_url.hostname or "", proxy_url.port or 80), True


def open_layer(
    path: str,
    headers: dict[str, str] | dict[str, list[str]] | None,
    record: DownloadRecord,
    insecure_tls: bool = False,
) -> BinaryIO:
    """Open the layer for streaming; raise FetchError as Clair would answer 400.

    A header value may be a list (Go's http.Header, as Clair v4 takes it): one line per value."""
    if not path.startswith(("http://", "https://")):
        if os.path.isdir(path):
            return _DirectoryReader()  # type: ignore[return-value]
        try:
            handle = open(path, "rb")  # noqa: SIM115 - the caller closes the stream
        except OSError as err:
            raise FetchError(str(err)) from None
        return CountingReader(handle, record, [handle])  # type: ignore[return-value]

    request_headers: dict[str, str | list[str]] = {"User-Agent": "Go-http-client/1.1"}
    for key, value in (headers or {}).items():
        request_headers[canonical_header_key(key)] = value
    decode_gzip = "Accept-Encoding" not in request_headers
    if decode_gzip:
        request_headers["Accept-Encoding"] = "gzip"
    record.request_headers = {
        key: ", ".join(value) if isinstance(value, list) else value for key, value in request_headers.items()
    }

    initial = urllib.parse.urlsplit(path)
    url = initial
    for _ in range(MAX_REDIRECTS + 1):
        if url.scheme not in ("http", "https") or not url.hostname:
            raise FetchError(f"unsupported protocol scheme {url.scheme!r}")
        try:
            connection, absolute = _connect(url, insecure_tls)
            target = (
                urllib.parse.urlunsplit(url._replace(fragment=""))
                if absolute
                else (urllib.parse.urlunsplit(("", "", url.path or "/", url.query, "")))
            )
            sent = dict(request_headers)
            if _host_port(url) != _host_port(initial) and not _same_or_subdomain(
                _host_port(url), _host_port(initial)
            ):
                for key in _SENSITIVE:
                    sent.pop(key, None)
            connection.putrequest("GET", target, skip_accept_encoding=True)
            for key, value in sent.items():
                for one in value if isinstance(value, list) else [value]:
                    connection.putheader(key, one)
            connection.endheaders()
            response = connection.getresponse()
        except (OSError, http.client.HTTPException, ValueError) as err:
            raise FetchError(f"Get {path}: {err}") from None
        record.status = response.status
        record.response_headers = {key: value for key, value in reversed(response.getheaders())}
        location = response.getheader("Location")
        if response.status in (301, 302, 303, 307, 308) and location:
            response.close()
            connection.close()
            url = urllib.parse.urlsplit(urllib.parse.urljoin(urllib.parse.urlunsplit(url), location))
            continue
        if response.status // 100 != 2:
            response.close()
            connection.close()
            raise FetchError("expected 2XX", status=response.status)
        source: Any = response
        closers: list[Any] = [response, connection]
        if decode_gzip and (response.getheader("Content-Encoding") or "").lower() == "gzip":
            # Go's transport undoes a Content-Encoding it asked for; count the bytes on the wire.
            counted = CountingReader(response, record, closers)
            return gzip.GzipFile(fileobj=io.BufferedReader(counted), mode="rb")  # type: ignore[return-value]
        return CountingReader(source, record, closers)  # type: ignore[return-value]
    raise FetchError(f"Get {path}: stopped after {MAX_REDIRECTS} redirects")
