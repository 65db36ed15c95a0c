"""The Clair v4 client against the v4 simulator over real HTTP on 127.0.0.1, with layers served
by the real layer server from real `docker save` tarballs (tests/imagebuild.py)."""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import clairsim
from clairsim4 import ClairV4Simulator
from conftest import DATA, DEBIAN_EXPECTED, DEBIAN_HISTORY, debian_image_layers
from imagebuild import ApkPackage, alpine_files, write_docker_save
from scanner import archive, findings
from scanner.clair import ClairClient, Deadline
from scanner.clairv4 import analyze_v4, detect, manifest_hash
from scanner.errors import ClairError, IndexFailed, LayerDigestMismatch, UnsupportedMediaType
from scanner.layerserver import LayerServer
from scanner.models import Image, Layer


@dataclasses.dataclass
class Saved:
    image: Image
    files: archive.LayerFiles


def _saved(tmp: Path, layers: list[Any], name: str, history: list[str] | None = None) -> Saved:
    path = tmp / f"{name}.tar"
    write_docker_save(path, layers, repo_tags=[f"clair-scan-test/{name}:v4"], history=history)
    (found,) = archive.read_archive(str(path), str(tmp))
    return Saved(found.image, found.files)


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    return _saved(tmp_path_factory.mktemp("debian"), debian_image_layers(), "debian", DEBIAN_HISTORY)


@pytest.fixture(scope="module")
def alpine(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    packages = [
        ApkPackage("musl", "1.1.22-r2"),
        ApkPackage("curl", "7.65.0-r0"),
        ApkPackage("openssl", "1.1.1c-r0"),
    ]
    layers = [alpine_files("3.10.2", packages[:1]), alpine_files("3.10.2", packages)]
    return _saved(tmp_path_factory.mktemp("alpine"), layers, "alpine")


@pytest.fixture
def sim() -> Iterator[ClairV4Simulator]:
    simulator = ClairV4Simulator(clairsim.MemoryStore.from_json(str(DATA))).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def server() -> Iterator[LayerServer]:
    with LayerServer("127.0.0.1") as layer_server:
        yield layer_server


@pytest.fixture
def client(sim: ClairV4Simulator) -> Iterator[ClairClient]:
    clair_client = ClairClient(sim.url, retries=0)
    yield clair_client
    clair_client.close()


def publisher(server: LayerServer, saved: Saved, calls: list[Layer] | None = None) -> Callable[..., Any]:
    """layer_uri for analyze_v4: publish the layer's tar on the layer server."""

    def layer_uri(layer: Layer) -> tuple[str, dict[str, str]]:
        if calls is not None:
            calls.append(layer)
        return server.publish(layer.chain_id, saved.files.wait(layer.index, 30)), {}

    return layer_uri


def refuse(layer: Layer) -> tuple[str, dict[str, str]]:
    raise AssertionError(f"layer {layer.index} was asked for although Clair holds the image")


def as_rows(found: Any) -> set[tuple[Any, ...]]:
    return {
        (
            f.vulnerability,
            f.package,
            f.installed,
            f.fixed,
            f.severity.label,
            f.layer.index if f.layer else None,
        )
        for f in found
    }


V4_EXPECTED = {
    # Clair v4's scale tops out at Critical: Defcon1 data is normalized to it.
    (v, p, i, fix, "Critical" if sev == "Defcon1" else sev, layer)
    for v, p, i, fix, sev, layer in DEBIAN_EXPECTED
}


# --- which API ------------------------------------------------------------------------------


def test_detect_tells_v4_from_v2(sim):
    v2 = clairsim.ClairSimulator(clairsim.MemoryStore.from_json(str(DATA)), log_stream=None).start()
    try:
        assert detect(sim.url) == "v4"
        assert detect(v2.url) == "v2"
    finally:
        v2.stop()


def test_detect_names_a_server_that_is_no_clair(server):
    with pytest.raises(ClairError) as raised:
        detect(f"http://127.0.0.1:{server.port}")
    assert str(raised.value).startswith(f"no Clair API at http://127.0.0.1:{server.port}")


def test_detect_says_when_clair_v4_wants_authentication():
    """A Clair v4 with `auth.psk` answers every API route 401 with an empty body."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with pytest.raises(ClairError) as raised:
            detect(f"http://127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert str(raised.value).startswith("Clair v4 at http://127.0.0.1:") and "requires authentication" in str(
        raised.value
    )


# --- scans ----------------------------------------------------------------------------------


def test_cold_scan_indexes_the_image_and_maps_the_report(sim, client, server, debian):
    calls: list[Layer] = []
    namespace, packages, found, sent = analyze_v4(
        client, debian.image, publisher(server, debian, calls), Deadline(60)
    )
    assert (namespace, sent) == ("debian:10", 3)
    assert packages == 9  # binary packages: libssl1.1 and openssl are two
    assert as_rows(found) == V4_EXPECTED
    assert [layer.index for layer in calls] == [0, 1, 2]
    # Clair downloaded each layer once, and took the layer server's Content-Type.
    assert sorted(d.layer for d in sim.downloads) == sorted(layer.diff_id for layer in debian.image.layers)
    assert {d.response_headers["Content-Type"] for d in sim.downloads} == {"application/octet-stream"}
    (openssl,) = [f for f in found if f.vulnerability == "CVE-2019-1543"]
    assert openssl.link == "https://security-tracker.debian.org/tracker/CVE-2019-1543"
    assert [(c.version, c.score, c.vector) for c in openssl.cvss] == [
        ("3", 7.4, "CVSS:3.0/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:N")
    ]
    assert openssl.namespace == "debian:10" and openssl.description.startswith("ChaCha20-Poly1305")
    assert openssl.layer == debian.image.layers[0]
    (gcc,) = [f for f in found if f.package == "gcc-8"]
    assert gcc.cvss == () and gcc.fixed is None
    assert [f.severity for f in found] == sorted((f.severity for f in found), reverse=True)


@pytest.mark.parametrize("layout", ["classic", "oci"])
def test_gzipped_layer_blobs_are_named_by_their_own_digest(layout, sim, client, server, tmp_path):
    """An archive whose layers are gzipped is served as it lies: Clair hashes the gzip bytes, so
    the manifest names them by the blob's digest, and the layer server's Content-Type lets the
    magic bytes decide the compression."""
    path = tmp_path / "gz.tar"
    saved_image = write_docker_save(
        path,
        debian_image_layers(),
        repo_tags=["gz:1"],
        layout=layout,
        gzip_layers=True,
        history=DEBIAN_HISTORY,
    )
    (found,) = archive.read_archive(str(path), str(tmp_path))
    saved = Saved(found.image, found.files)
    assert [layer.digest for layer in saved.image.layers] == list(saved_image.layer_digests)
    _, _, findings_found, sent = analyze_v4(client, saved.image, publisher(server, saved), Deadline(60))
    assert sent == 3 and as_rows(findings_found) == V4_EXPECTED
    assert sorted(d.layer for d in sim.downloads) == sorted(saved_image.layer_digests)


def test_a_rescan_of_an_unchanged_image_sends_nothing(sim, client, server, debian):
    first = analyze_v4(client, debian.image, publisher(server, debian), Deadline(60))
    sim.clear_records()
    again = analyze_v4(client, debian.image, refuse, Deadline(60))
    assert again[:3] == first[:3] and again[3] == 0
    assert [(r.method, r.path.rsplit("/", 1)[0]) for r in sim.requests] == [
        ("GET", "/indexer/api/v1"),
        ("GET", "/matcher/api/v1/vulnerability_report"),
    ]
    assert sim.downloads == []


def test_a_clair_with_new_scanners_indexes_the_image_again(sim, client, server, debian):
    analyze_v4(client, debian.image, publisher(server, debian), Deadline(60))
    old = manifest_hash(sim.indexer_state, debian.image)
    sim.upgrade_scanners("dpkg:9")
    sim.clear_records()
    calls: list[Layer] = []
    *_, sent = analyze_v4(client, debian.image, publisher(server, debian, calls), Deadline(60))
    assert sent == 3 and len(calls) == 3 and len(sim.downloads) == 3
    assert manifest_hash(sim.indexer_state, debian.image) != old


def test_a_shared_base_is_not_downloaded_again(sim, client, server, debian, tmp_path):
    """Layer dedupe is Clair's: an image sharing the base layers posts its own manifest, and
    Clair fetches only the layer it has not scanned."""
    analyze_v4(client, debian.image, publisher(server, debian), Deadline(60))
    sibling = _saved(tmp_path, [*debian_image_layers()[:2], alpine_files()], "sibling")
    assert sibling.image.layers[1].diff_id == debian.image.layers[1].diff_id
    sim.clear_records()
    analyze_v4(client, sibling.image, publisher(server, sibling), Deadline(60))
    assert [d.layer for d in sim.downloads] == [sibling.image.layers[2].diff_id]


def test_no_vulnerability_data_yet_is_waited_for(client, server, debian):
    store = clairsim.MemoryStore()
    with ClairV4Simulator(store) as sim:
        client = ClairClient(sim.url, retries=0)

        def load_once_refused() -> None:
            # Data arrives after the client has been told 202 for its indexed image.
            clairsim.wait_until(
                lambda: (
                    any(r.status == 202 for r in sim.requests if r.method == "GET" and "matcher" in r.path)
                    and any(r.status == 201 for r in sim.requests)
                ),
                timeout=60,
            )
            store.load(clairsim.read_dataset(DATA))

        loader = threading.Thread(target=load_once_refused)
        loader.start()
        try:
            _, _, found, sent = analyze_v4(client, debian.image, publisher(server, debian), Deadline(120))
        finally:
            loader.join()
            client.close()
        assert sent == 3 and as_rows(found) == V4_EXPECTED
        statuses = [r.status for r in sim.requests if "vulnerability_report" in r.path]
        assert statuses[0] == 202 and statuses[-1] == 200


def test_no_vulnerability_data_within_the_deadline_fails_with_that_reason(server, debian):
    with ClairV4Simulator(clairsim.MemoryStore()) as sim:
        client = ClairClient(sim.url, retries=0)
        try:
            with pytest.raises(ClairError) as raised:
                analyze_v4(client, debian.image, publisher(server, debian), Deadline(3))
        finally:
            client.close()
        assert "has no vulnerability data yet" in str(raised.value)
        assert "\n" not in str(raised.value)
        # 202 says nothing about the manifest, so the image was indexed all the same.
        assert [r.status for r in sim.requests if r.method == "POST"] == [201]


# --- failures -------------------------------------------------------------------------------


def test_an_index_error_is_reported_with_clairs_message(sim, client, server, debian):
    def unpublished(layer: Layer) -> tuple[str, dict[str, str]]:
        url = server.publish(layer.chain_id, debian.files.wait(layer.index, 30))
        return url.replace("/layer.tar", "/gone.tar") if layer.index == 2 else url, {}

    with pytest.raises(IndexFailed) as raised:
        analyze_v4(client, debian.image, unpublished, Deadline(60))
    message = str(raised.value)
    assert message.startswith("Clair v4 could not index the image: failed to fetch layers")
    assert "unexpected status code: 404" in message and "\n" not in message
    # The message is the one Clair stored with the IndexError state.
    assert any(r.method == "GET" and "/index_report/" in r.path for r in sim.requests)


def test_urls_in_clairs_errors_lose_their_path_and_credentials(client, debian, server):
    """Clair quotes the URL it could not fetch: the layer server's token (or a registry's)
    must not reach the message."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()

    def nowhere(layer: Layer) -> tuple[str, dict[str, str]]:
        return f"http://user:pw@127.0.0.1:{port}/s3cret-token/{layer.index}?sig=s3cret", {}

    with pytest.raises(IndexFailed) as raised:
        analyze_v4(client, debian.image, nowhere, Deadline(60))
    message = str(raised.value)
    assert f"http://127.0.0.1:{port}/…" in message
    assert "s3cret" not in message and "pw" not in message


def test_a_digest_mismatch_names_the_layer(sim, client, server, debian):
    wrong = "sha256:" + "2" * 64
    layers = list(debian.image.layers)
    layers[1] = dataclasses.replace(layers[1], diff_id=wrong)
    image = dataclasses.replace(debian.image, layers=tuple(layers))
    with pytest.raises(LayerDigestMismatch) as raised:
        analyze_v4(client, image, publisher(server, debian), Deadline(60))
    assert str(raised.value).startswith(
        f"Clair v4 rejected layer 2 ({wrong}): the bytes it downloaded hash to"
    )
    assert debian.image.layers[1].diff_id.split(":")[1] in str(raised.value)


def test_a_content_type_clair_refuses_is_one_clear_error(client, debian):
    """A server that labels tars `text/plain; charset=utf-8` (as many do by default)."""
    blobs = {f"/{layer.index}": debian.files.wait(layer.index, 30) for layer in debian.image.layers}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            blob = blobs[self.path]
            with open(blob.path, "rb") as handle:
                handle.seek(blob.offset)
                data = handle.read(blob.size)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with ExitStack() as stack:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        stack.callback(httpd.server_close)
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        stack.callback(httpd.shutdown)
        port = httpd.server_address[1]
        with pytest.raises(UnsupportedMediaType) as raised:
            analyze_v4(
                client,
                debian.image,
                lambda layer: (f"http://127.0.0.1:{port}/{layer.index}", {}),
                Deadline(60),
            )
    assert str(raised.value).startswith("Clair v4 refused layer ")
    assert "unknown content-type 'text/plain; charset=utf-8'" in str(raised.value)


def test_a_clair_that_is_not_there_is_one_clear_error(debian):
    client = ClairClient("http://127.0.0.1:1", retries=0)
    with pytest.raises(ClairError) as raised:
        analyze_v4(client, debian.image, refuse, Deadline(10))
    assert str(raised.value).startswith("cannot connect to Clair at http://127.0.0.1:1")


# --- the same image under both APIs ---------------------------------------------------------


def _v2_findings(saved: Saved, server: LayerServer) -> tuple[str, set[tuple[Any, ...]]]:
    sim = clairsim.ClairSimulator(clairsim.MemoryStore.from_json(str(DATA)), log_stream=None).start()
    client = ClairClient(sim.url, retries=0)
    try:
        deadline = Deadline(60)
        for layer in saved.image.layers:
            url = server.publish(layer.chain_id, saved.files.wait(layer.index, 30))
            parent = saved.image.layers[layer.index - 1].chain_id if layer.index else ""
            client.submit(layer.chain_id, url, parent, deadline)
        top = client.layer(saved.image.top.chain_id, deadline)
        assert top is not None
        namespace, _, found = findings.from_clair(top, saved.image)
        return namespace, as_rows(found)
    finally:
        client.close()
        sim.stop()


@pytest.mark.parametrize("name", ["debian", "alpine"])
def test_both_apis_report_the_same_findings(name, request, sim, client, server):
    saved: Saved = request.getfixturevalue(name)
    v2_namespace, v2_rows = _v2_findings(saved, server)
    namespace, _, found, _ = analyze_v4(client, saved.image, publisher(server, saved), Deadline(60))
    clamped = {(*row[:4], "Critical" if row[4] == "Defcon1" else row[4], row[5]) for row in v2_rows}
    assert v2_rows and as_rows(found) == clamped
    assert namespace.split(":")[0] == v2_namespace.split(":")[0]
