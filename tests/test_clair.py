"""The Clair client on its own, against the simulator: the connection it keeps, what it sends,
and how it reads Clair's answers."""

from __future__ import annotations

import base64

import pytest

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
