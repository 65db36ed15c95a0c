"""The Clair client on its own, against the simulator: the connection it keeps, what it sends,
and how it reads Clair's answers."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import ssl
import tempfile
import threading
import time
from urllib.parse import urlsplit

import pytest
import trustme

from clairsim import wait_until
from scanner.clair import ClairClient, Deadline
from scanner.errors import ClairError


@pytest.fixture
def client(clair):
    client = ClairClient(clair.url, retries=0)
    yield client
    client.close()


def test_calls_share_one_kept_alive_connection(clair, client):
    deadline = Deadline(30)
    assert client.namespaces(deadline)
    assert client.layer("sha256:" + "0" * 64, deadline) is None
    assert client.namespaces(deadline)
    remotes = {r.remote for r in clair.requests}
    assert len(clair.requests) == 3 and len(remotes) == 1


def test_a_connection_closed_while_idle_is_replaced(clair, client):
    deadline = Deadline(30)
    client.namespaces(deadline)
    clair.close_connections()  # as a proxy in front of Clair drops idle connections
    # No retries are allowed: the closed connection must be noticed before it is used.
    assert client.namespaces(deadline)
    assert len({r.remote for r in clair.requests}) == 2


def test_answers_come_gzipped_and_are_read(clair, client):
    names = client.namespaces(Deadline(30))
    assert "debian:10" in names
    (request,) = clair.requests
    assert request.headers.get("Accept-Encoding") == "gzip"


def test_credentials_in_the_url_are_sent_but_never_shown(clair):
    url = clair.url.replace("http://", "http://scanner:t0p%40s3cret@")
    client = ClairClient(url, retries=0)
    try:
        client.namespaces(Deadline(30))
        clair.fail_next(500, method="GET")
        with pytest.raises(ClairError) as raised:
            client.namespaces(Deadline(30))
    finally:
        client.close()
    token = base64.b64encode(b"scanner:t0p@s3cret").decode()
    assert [r.headers.get("Authorization") for r in clair.requests] == [f"Basic {token}"] * 2
    assert "s3cret" not in str(raised.value)
    assert "Clair answered 500 to GET /v1/namespaces" in str(raised.value)


def test_a_clair_that_is_not_there_is_one_clear_error():
    client = ClairClient("http://127.0.0.1:1", retries=1, backoff=0.01)
    with pytest.raises(ClairError) as raised:
        client.namespaces(Deadline(30))
    assert str(raised.value).startswith("cannot connect to Clair at http://127.0.0.1:1")


@pytest.fixture
def tls_clair(clair):
    """The simulator behind a TLS-terminating proxy on 127.0.0.1, as a shared Clair is often run;
    yields (https URL, the CA's certificate file, the handshakes it refused)."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    listener = socket.create_server(("127.0.0.1", 0))
    upstream = urlsplit(clair.url)
    refused: list[str] = []

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                raw, _ = listener.accept()
                try:
                    client = context.wrap_socket(raw, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    refused.append(str(exc))  # a client that does not trust our CA hangs up
                    raw.close()
                    continue
                server = socket.create_connection((upstream.hostname, upstream.port))
                threading.Thread(target=pump, args=(client, server), daemon=True).start()
                threading.Thread(target=pump, args=(server, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    with tempfile.TemporaryDirectory() as certs:
        ca_file = os.path.join(certs, "ca.pem")
        ca.cert_pem.write_to_path(ca_file)
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", ca_file, refused
    listener.close()


def test_an_https_clair_is_verified_against_the_system_cas(clair, tls_clair, monkeypatch):
    url, ca_file, refused = tls_clair
    untrusted = ClairClient(url, backoff=0.01)
    with pytest.raises(ClairError) as raised:
        untrusted.namespaces(Deadline(30))
    untrusted.close()
    time.sleep(0.1)  # the proxy's side of each refused handshake may end a little later
    assert str(raised.value).startswith(f"cannot verify the certificate of Clair at {url}: ")
    assert "SSL_CERT_FILE" in str(raised.value)
    assert [r.method for r in clair.requests] == []  # refused in the handshake, never asked
    assert wait_until(lambda: len(refused) == 1) and len(refused) == 1  # and not retried
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)  # as a host that trusts the proxy's CA is set up
    trusted = ClairClient(url, retries=0)
    try:
        assert "debian:10" in trusted.namespaces(Deadline(30))
    finally:
        trusted.close()
