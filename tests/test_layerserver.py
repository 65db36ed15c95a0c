"""The layer server: exactly this scan's layers, as byte ranges of the spool, over real HTTP."""

from __future__ import annotations

import http.client
import os
import socket
from urllib.parse import urlsplit

import pytest
import requests

from scanner.archive import Arrival, Blob
from scanner.errors import DockerError, UsageError
from scanner.layerserver import LayerServer, route_address


@pytest.fixture
def spool(tmp_path):
    path = tmp_path / "spool.tar"
    path.write_bytes(b"HEAD" + bytes(range(256)) * 40 + b"TAIL")
    return path


def test_serves_the_byte_range_of_a_published_layer(spool):
    blob = Blob(str(spool), 4, 256 * 40)
    with LayerServer("127.0.0.1") as server:
        url = server.publish("sha256:abc", blob)
        assert urlsplit(url).hostname == "127.0.0.1"
        assert url.endswith("/sha256:abc/layer.tar")
        response = requests.get(url, timeout=5)
        assert response.status_code == 200
        assert response.content == bytes(range(256)) * 40
        assert response.headers["Content-Length"] == str(256 * 40)
        head = requests.head(url, timeout=5)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["Content-Length"] == str(256 * 40)


def test_a_layer_published_twice_stays_until_withdrawn_twice(spool):
    """Two images scanned in parallel may share a layer: one finishing must not take it from
    the other."""
    first, second = Blob(str(spool), 4, 256 * 40), Blob(str(spool), 0, 4)
    with LayerServer("127.0.0.1") as server:
        url = server.publish("sha256:shared", first)
        assert server.publish("sha256:shared", second) == url
        server.withdraw("sha256:shared")
        response = requests.get(url, timeout=5)
        assert response.status_code == 200 and response.content == bytes(range(256)) * 40
        server.withdraw("sha256:shared")
        assert requests.get(url, timeout=5).status_code == 404
        server.withdraw("sha256:shared")  # once more is harmless
        server.publish("sha256:shared", second)
        assert requests.get(url, timeout=5).content == b"HEAD"


def test_anything_else_is_404(spool):
    with LayerServer("127.0.0.1") as server:
        url = server.publish("sha256:abc", Blob(str(spool), 0, 10))
        base, token = url.rsplit("/", 3)[0], url.split("/")[3]
        for path in (
            url.replace(token, "x" * len(token)),  # wrong token
            url.replace("sha256:abc", "sha256:def"),  # a layer of no scan
            f"{base}/{token}/",
            f"{base}/{token}/sha256:abc/layer.tar/extra",
            f"{base}/",
        ):
            assert requests.get(path, timeout=5).status_code == 404, path
        # requests would normalise a dot segment away; send it as it is.
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request("GET", f"/{token}/sha256:def/../sha256:abc/layer.tar")
        assert connection.getresponse().status == 404
        connection.close()
        assert requests.get(url + "?x=1", timeout=5).status_code == 200


def test_two_servers_have_different_tokens(spool):
    with LayerServer("127.0.0.1") as one, LayerServer("127.0.0.1") as two:
        a = one.publish("sha256:abc", Blob(str(spool), 0, 10))
        b = two.publish("sha256:abc", Blob(str(spool), 0, 10))
        assert a.split("/")[3] != b.split("/")[3]


def test_stops_listening_on_exit(spool):
    with LayerServer("127.0.0.1") as server:
        url = server.publish("sha256:abc", Blob(str(spool), 0, 10))
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=2)


def test_port_in_use_is_a_usage_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UsageError, match="in use") as caught:
            LayerServer("127.0.0.1", port=port).__enter__()
        assert "--port" in str(caught.value)


def test_bind_to_foreign_address_is_a_usage_error():
    # 192.0.2.0/24 is TEST-NET-1; binding only asks the kernel, nothing is sent.
    with pytest.raises(UsageError, match="--bind"):
        LayerServer("198.51.100.7").__enter__()


def test_separate_bind_and_advertised_address(spool):
    with LayerServer("127.0.0.2", bind="127.0.0.1") as server:
        url = server.publish("sha256:abc", Blob(str(spool), 0, 10))
        assert urlsplit(url).hostname == "127.0.0.2"
        local = url.replace("127.0.0.2", "127.0.0.1")
        assert requests.get(local, timeout=5).content == spool.read_bytes()[:10]


def test_route_address_for_loopback():
    assert route_address("http://127.0.0.1:6060") == "127.0.0.1"
    assert route_address("localhost") == "127.0.0.1"
    with pytest.raises(UsageError):
        route_address("http://name.invalid:6060")


def _growing(tmp_path, data: bytes, on_disk: int) -> tuple[Blob, Arrival]:
    path = tmp_path / "growing.tar"
    path.write_bytes(data[:on_disk])
    arrival = Arrival()
    arrival.advance(on_disk)
    return Blob(str(path), 100, len(data) - 200, arrival), arrival


def _download(server: LayerServer, blob: Blob) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    url = urlsplit(server.publish("sha256:abc", blob))
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    connection.request("GET", url.path)
    return connection, connection.getresponse()


def test_a_layer_still_arriving_is_sent_as_it_arrives(tmp_path):
    data = os.urandom(1 << 20)
    blob, arrival = _growing(tmp_path, data, 300_000)
    with LayerServer("127.0.0.1") as server:
        connection, response = _download(server, blob)
        assert response.getheader("Content-Length") == str(blob.size)
        assert response.read(300_000 - 100) == data[100:300_000]  # all that is on disk, at once
        with open(blob.path, "ab") as handle:
            handle.write(data[300_000:])
        arrival.advance(len(data))
        arrival.end()
        assert response.read() == data[300_000:-100]
        connection.close()


def test_a_layer_that_will_never_arrive_is_cut_short(tmp_path):
    data = os.urandom(1 << 20)
    blob, arrival = _growing(tmp_path, data, 300_000)
    with LayerServer("127.0.0.1") as server:
        connection, response = _download(server, blob)
        assert response.read(300_000 - 100) == data[100:300_000]
        arrival.end(DockerError("engine went away"))
        # Fewer bytes than Content-Length: Clair fails the download instead of indexing a part.
        with pytest.raises(http.client.IncompleteRead):
            response.read()
        connection.close()


def test_a_client_that_hangs_up_prints_nothing(capfd):
    """socketserver prints a traceback on stderr for a request that fails, as one does when the
    client resets the connection before the answer is written."""
    import struct

    with LayerServer("127.0.0.1") as server:
        for partial in (b"\r\n", b"") * 5:
            client = socket.create_connection(("127.0.0.1", server.port))
            client.sendall(b"GET /x/y/layer.tar HTTP/1.1\r\nHost: x\r\n" + partial)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # with SO_LINGER 0: a reset, not a goodbye
        # The server took every earlier connection before this one (one accept loop).
        with socket.create_connection(("127.0.0.1", server.port)) as last:
            last.sendall(b"GET /x HTTP/1.0\r\n\r\n")
            assert last.recv(100).startswith(b"HTTP/1.0 404")
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err
