"""How the scanner names what it talks about: layers by chain ID, Clair by URL, the Docker engine
by its socket. Standard library only: the head start needs these before anything else is loaded."""

from __future__ import annotations

import hashlib
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import UsageError
from .redact import register_secret

DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"


def chain_ids(diff_ids: list[str]) -> list[str]:
    """Chain IDs as the OCI image spec defines them: each names a layer together with its parents."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            digest = hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest()
            chain.append(f"sha256:{digest}")
    return chain


def manifest_hash(state: str, digests: list[str]) -> str:
    """The name of an image's Clair v4 manifest: its layers' digests under Clair's indexer state
    (see clairv4.py for why the state is part of it)."""
    text = "\n".join(["clair-scan manifest v1", state, *digests])
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def normalize_url(url: str) -> str:
    """Accept what klar's CLAIR_ADDR accepts: `host:port` without a scheme means http."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a port that is not a number, or out of range
        raise UsageError(f"not a Clair URL: {redact(url)}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"not a Clair URL: {redact(url)}")
    # Printed nowhere, whatever message or log line it turns up in.
    register_secret(unquote(parts.password or ""))
    register_secret(parts.password)
    if port is None:
        netloc = parts.netloc + ":6060"
        url = urlunsplit(parts._replace(netloc=netloc))
    return url


def redact(url: str) -> str:
    """The URL without credentials, for messages and logs (whatever else is wrong with it)."""
    scheme, separator, rest = url.partition("://")
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    _, at, host = rest[:end].rpartition("@")
    if not separator or not at:
        return url
    return f"{scheme}://***@{host}{rest[end:]}"


def plain_docker_endpoint(environ: dict[str, str]) -> str | tuple[str, int] | None:
    """The engine the docker SDK's from_env() would use, as a unix socket path or a TCP (host,
    port), when it is reached without TLS or ssh; None otherwise."""
    if environ.get("DOCKER_TLS_VERIFY") or environ.get("DOCKER_CERT_PATH"):
        return None
    host = environ.get("DOCKER_HOST") or f"unix://{DEFAULT_DOCKER_SOCKET}"
    if host.startswith("unix://"):
        return host[len("unix://") :] or None
    if host.startswith("tcp://"):
        parts = urlsplit(host)
        try:
            port = parts.port or 2375
        except ValueError:
            return None
        return (parts.hostname, port) if parts.hostname and parts.path in ("", "/") else None
    return None
