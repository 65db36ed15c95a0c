"""The Clair v4 simulator against ../shared/CLAIR_V4_API.md: each test pins one behaviour the
document states (section numbers in the test names' docstrings), over real HTTP on 127.0.0.1
with layers built as real tar files and served by a real HTTP server."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import clairsim
import standin
from clairsim4 import CVSS_ENRICHMENT, ClairV4Simulator
from conftest import DATA, debian_image_layers
from imagebuild import ApkPackage, alpine_files, write_layer
from test_clairsim import database, postgres  # noqa: F401 - the v2 simulator's PostgreSQL fixtures

VND_REPORT = "application/vnd.clair.indexreport.v1+json"
VND_STATE = "application/vnd.clair.indexstate.v1+json"


# --- a host for layer files ---------------------------------------------------------------------


@dataclass
class Served:
    data: bytes
    content_type: str | None = "application/x-tar"
    status: int = 200
    redirect: str | None = None
    gzip_encoding: bool = False  # send the body with Content-Encoding: gzip when asked


@dataclass
class LayerHost:
    """Serves bytes under paths, records each request's headers."""

    files: dict[str, Served] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{path}"


@pytest.fixture
def host() -> Iterator[LayerHost]:
    layer_host = LayerHost()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            layer_host.seen.append((self.path, dict(self.headers.items())))
            served = layer_host.files.get(self.path.lstrip("/"))
            if served is None:
                self.send_response(404)
                self.send_header("Content-Length", "9")
                self.end_headers()
                self.wfile.write(b"not found")
                return
            if served.redirect:
                self.send_response(302)
                self.send_header("Location", served.redirect)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = served.data
            self.send_response(served.status)
            if served.content_type is not None:
                self.send_header("Content-Type", served.content_type)
            if served.gzip_encoding and "gzip" in self.headers.get("Accept-Encoding", ""):
                body = gzip.compress(body)
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    layer_host.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield layer_host
    server.shutdown()
    server.server_close()


@pytest.fixture
def sim() -> Iterator[ClairV4Simulator]:
    simulator = ClairV4Simulator(clairsim.MemoryStore.from_json(str(DATA))).start()
    yield simulator
    simulator.stop()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    sim: ClairV4Simulator, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> Reply:
    parts = urlsplit(sim.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    try:
        payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        connection.request(method, path, body=payload, headers=headers or {})
        answer = connection.getresponse()
        return Reply(answer.status, answer.headers, answer.read())
    finally:
        connection.close()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(tmp_path: Path, layer: Any, name: str, compress: bool = False) -> bytes:
    blob = write_layer(layer, tmp_path / name, compress=compress)
    return blob.path.read_bytes()


def manifest(layers: list[tuple[bytes, str]], headers: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """A manifest whose hash derives from its layers' digests."""
    digests = [sha256(data) for data, _ in layers]
    return {
        "hash": sha256("\n".join(digests).encode()),
        "layers": [
            {"hash": digest, "uri": uri, "headers": headers or {}}
            for digest, (_, uri) in zip(digests, layers)
        ],
    }


@pytest.fixture
def debian(host: LayerHost, tmp_path: Path) -> list[tuple[bytes, str]]:
    """The three Debian layers of conftest, served as plain tars."""
    layers = []
    for index, layer in enumerate(debian_image_layers()):
        data = tar_bytes(tmp_path, layer, f"l{index}.tar")
        host.files[f"l{index}.tar"] = Served(data)
        layers.append((data, host.url(f"l{index}.tar")))
    return layers


# --- index_state (§3.5) -------------------------------------------------------------------------


def test_index_state_negotiates_and_honours_if_none_match(sim):
    """§3.5: {"state"} with ETag "<state>", vnd type by default, 304 on a matching If-None-Match,
    415 when nothing can be negotiated, 400 for a malformed Accept."""
    reply = call(sim, "GET", "/indexer/api/v1/index_state")
    state = reply.json()["state"]
    assert reply.status == 200 and len(state) == 32 and int(state, 16) >= 0
    assert reply.headers["Etag"] == f'"{state}"'
    assert reply.headers["Content-Type"] == VND_STATE
    assert (
        call(sim, "GET", "/indexer/api/v1/index_state", headers={"Accept": "*/*"}).headers["Content-Type"]
        == VND_STATE
    )
    json_reply = call(sim, "GET", "/indexer/api/v1/index_state", headers={"Accept": "application/json"})
    assert json_reply.headers["Content-Type"] == "application/json"
    unchanged = call(sim, "GET", "/indexer/api/v1/index_state", headers={"If-None-Match": f'"{state}"'})
    assert (unchanged.status, unchanged.body) == (304, b"")
    weak = call(sim, "GET", "/indexer/api/v1/index_state", headers={"If-None-Match": f'W/"{state}"'})
    assert weak.status == 200  # compared as an exact string
    refused = call(sim, "GET", "/indexer/api/v1/index_state", headers={"Accept": "text/html"})
    assert refused.status == 415 and refused.json()["code"] == "internal-error"
    malformed = call(sim, "GET", "/indexer/api/v1/index_state", headers={"Accept": "garbage"})
    assert malformed.status == 400 and malformed.json()["code"] == "bad-request"


def test_the_state_changes_with_the_scanners_and_old_manifests_are_indexed_again(sim, debian, host):
    """§3.5: the state changes only with the scanner set; then a re-post indexes anew."""
    body = manifest(debian)
    assert call(sim, "POST", "/indexer/api/v1/index_report", body).status == 201
    old = sim.indexer_state
    new = sim.upgrade_scanners("dpkg:5", "apk:5")
    assert new != old and call(sim, "GET", "/indexer/api/v1/index_state").json()["state"] == new
    sim.clear_records()
    assert call(sim, "POST", "/indexer/api/v1/index_report", body).status == 201
    assert len(sim.downloads) == 3


# --- POST index_report (§3.1-3.4, §8) -----------------------------------------------------------


def test_a_posted_manifest_is_indexed_synchronously(sim, debian, host):
    """§3.2, §3.4, §8: 201 with Location, ETag and two Link headers; the report's keys; each
    package with its source, its environment naming the layer that introduced it."""
    body = manifest(debian, headers={"Authorization": ["Bearer t0ken"], "X-Two": ["a", "b"]})
    reply = call(sim, "POST", "/indexer/api/v1/index_report", body)
    assert reply.status == 201
    digest = body["hash"]
    assert reply.headers["Location"] == f"/indexer/api/v1/index_report/{digest}"
    assert reply.headers["Etag"] == f'"{sim.indexer_state}"'
    assert reply.headers.get_all("Link") == [
        f'</indexer/api/v1/index_report/{digest}>; rel="https://projectquay.io/clair/v1/index_report"',
        f"</matcher/api/v1/vulnerability_report/{digest}>; "
        'rel="https://projectquay.io/clair/v1/vulnerability_report"',
    ]
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"  # the handler sets none
    assert reply.headers["Transfer-Encoding"] == "chunked" and reply.headers["Trailer"] == "Clair-Error"
    report = reply.json()
    assert list(report) == [
        "manifest_hash", "state", "packages", "distributions", "repository", "environments", "success", "err"
    ]  # fmt: skip
    assert (report["manifest_hash"], report["state"], report["success"], report["err"]) == (
        digest, "IndexFinished", True, ""
    )  # fmt: skip
    assert report["repository"] == {}
    (distribution,) = report["distributions"].values()
    assert (distribution["did"], distribution["version_id"], distribution["version_code_name"]) == (
        "debian", "10", "buster"
    )  # fmt: skip
    assert list(distribution) == [
        "id", "did", "name", "version", "version_code_name", "version_id", "arch", "cpe", "pretty_name"
    ]  # fmt: skip
    by_name = {p["name"]: p for p in report["packages"].values()}
    assert by_name["libssl1.1"]["source"]["name"] == "openssl"
    assert by_name["libssl1.1"]["source"]["kind"] == "source" and by_name["libssl1.1"]["kind"] == "binary"
    assert by_name["zlib1g"]["version"] == "1:1.2.11.dfsg-1"
    layer_digests = [layer["hash"] for layer in body["layers"]]
    introduced = {
        report["packages"][pid]["name"]: envs[0]["introduced_in"]
        for pid, envs in report["environments"].items()
    }
    assert introduced["bash"] == layer_digests[0]
    assert introduced["libidn2-0"] == layer_digests[1]
    assert introduced["gcc-8"] == layer_digests[2]
    env = report["environments"][by_name["gcc-8"]["id"]][0]
    assert env == {
        "package_db": "var/lib/dpkg/status",
        "introduced_in": layer_digests[2],
        "distribution_id": distribution["id"],
        "repository_ids": None,
    }
    # §3.3: plain GETs with the manifest's headers cloned, Go's client defaults.
    assert len(host.seen) == 3
    for _, headers in host.seen:
        assert headers["Authorization"] == "Bearer t0ken"
        assert headers["Accept-Encoding"] == "gzip"
    assert {d.request_headers["X-Two"] for d in sim.downloads} == {"a, b"}


def test_a_repost_returns_the_stored_report_and_fetches_nothing(sim, debian, host):
    """§3.2: re-posting an indexed manifest gives 201 and the stored report without fetching;
    a layer some earlier manifest scanned is not fetched again (layer dedupe)."""
    body = manifest(debian)
    first = call(sim, "POST", "/indexer/api/v1/index_report", body)
    host.seen.clear()
    again = call(sim, "POST", "/indexer/api/v1/index_report", body)
    assert again.status == 201 and again.json() == first.json() and host.seen == []
    two_layers = manifest(debian[:2])
    assert call(sim, "POST", "/indexer/api/v1/index_report", two_layers).status == 201
    assert host.seen == []


def test_if_none_match_on_post_compares_the_state_only(sim, debian, host):
    """§3.2 step 3, §9.3: a matching If-None-Match gives 412 with an empty body, whether or not
    the manifest was ever indexed, and nothing is indexed."""
    body = manifest(debian)
    reply = call(
        sim, "POST", "/indexer/api/v1/index_report", body, {"If-None-Match": f'"{sim.indexer_state}"'}
    )
    assert (reply.status, reply.body) == (412, b"")
    assert host.seen == []
    assert call(sim, "GET", f"/indexer/api/v1/index_report/{body['hash']}").status == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "failed to deserialize manifest"),
        ({"hash": "", "layers": [{"hash": "sha256:" + "a" * 64, "uri": "http://x/"}]}, "bogus manifest"),
        ({"hash": "sha256:" + "a" * 64, "layers": []}, "bogus manifest"),
        (
            {"hash": "sha256:abc", "layers": [{"hash": "sha256:" + "a" * 64, "uri": "http://x/"}]},
            "deserialize",
        ),
        (
            {"hash": "SHA256:" + "a" * 64, "layers": [{"hash": "sha256:" + "a" * 64, "uri": "x"}]},
            "deserialize",
        ),
        ({"hash": "md5:" + "a" * 32, "layers": [{"hash": "sha256:" + "a" * 64, "uri": "x"}]}, "deserialize"),
        (
            {
                "hash": "sha256:" + "a" * 64,
                "layers": [{"hash": "sha256:" + "b" * 64, "uri": "x", "headers": {"A": "b"}}],
            },
            "deserialize",
        ),
    ],
)
def test_malformed_manifests_get_400_in_clairs_error_shape(sim, body, message):
    """§3.1, §3.2 step 1, §3.6: {"code":"bad-request","message":...} with application/json."""
    reply = call(sim, "POST", "/indexer/api/v1/index_report", body)
    assert reply.status == 400
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json()["code"] == "bad-request" and message in reply.json()["message"]


def test_digests_accept_sha512_and_upper_case_hex_reemitted_lower(sim, host, tmp_path):
    """§3.1: sha256 or sha512, 64 or 128 hex digits; upper case accepted, lower case emitted."""
    data = tar_bytes(tmp_path, alpine_files("3.10.2", [("musl", "1.1.22-r2")]), "a.tar")
    host.files["a.tar"] = Served(data)
    layer = "sha512:" + hashlib.sha512(data).hexdigest().upper()
    body = {"hash": "sha256:" + "AB" * 32, "layers": [{"hash": layer, "uri": host.url("a.tar")}]}
    reply = call(sim, "POST", "/indexer/api/v1/index_report", body)
    assert reply.status == 201, reply.body
    report = reply.json()
    assert report["manifest_hash"] == "sha256:" + "ab" * 32
    (env,) = report["environments"].values()
    assert env[0]["introduced_in"] == layer.lower()


# --- the fetcher (§3.3) -------------------------------------------------------------------------


def test_a_digest_that_does_not_hash_the_served_bytes_fails_the_index(sim, debian, host):
    """§3.3, §8: 500 internal-error with claircore's validation message; the stored report is
    IndexError with the error, and the matcher answers 404 for it (§4.1 step 3)."""
    body = manifest(debian)
    wrong = "sha256:" + "2" * 64
    body["layers"][1]["hash"] = wrong
    reply = call(sim, "POST", "/indexer/api/v1/index_report", body)
    assert reply.status == 500
    error = reply.json()
    assert error["code"] == "internal-error"
    actual = hashlib.sha256(debian[1][0]).hexdigest()
    assert error["message"] == (
        "failed to start scan: failed to fetch layers: fetcher: encountered errors: "
        f'error realizing layer {wrong}: fetcher: validation failed: got "{actual}", expected "{"2" * 64}"'
    )
    stored = call(sim, "GET", f"/indexer/api/v1/index_report/{body['hash']}").json()
    assert (stored["state"], stored["success"]) == ("IndexError", False)
    assert "validation failed" in stored["err"]
    missing = call(sim, "GET", f"/matcher/api/v1/vulnerability_report/{body['hash']}")
    assert missing.status == 404 and missing.json()["code"] == "not-found"


@pytest.mark.parametrize(
    ("content_type", "compress", "ok", "message"),
    [
        ("application/x-tar", False, True, ""),
        (None, False, True, ""),
        ("application/octet-stream", True, True, ""),
        ("text/plain", True, True, ""),
        ("application/gzip", True, True, ""),
        ("application/vnd.oci.image.layer.v1.tar+gzip", True, True, ""),
        ("application/vnd.docker.image.rootfs.diff.tar", False, True, ""),
        ("text/plain; charset=utf-8", False, False, "unknown content-type"),
        ("application/json", False, False, "unknown content-type"),
        ("application/x-tar", True, False, "mismatched compression"),
        ("application/gzip", False, False, "mismatched compression"),
    ],
)
def test_content_types_are_matched_exactly_against_the_magic_bytes(
    sim, host, tmp_path, content_type, compress, ok, message
):
    """§3.3: four types leave it to the magic bytes; others must name the compression the bytes
    have; the comparison is exact, so a charset parameter fails."""
    data = tar_bytes(tmp_path, alpine_files("3.10.2", [("musl", "1.1.22-r2")]), "a.tar", compress=compress)
    host.files["a"] = Served(data, content_type)
    reply = call(sim, "POST", "/indexer/api/v1/index_report", manifest([(data, host.url("a"))]))
    if ok:
        assert reply.status == 201, reply.body
        assert {p["name"] for p in reply.json()["packages"].values()} == {"musl"}
    else:
        assert reply.status == 500 and message in reply.json()["message"]


def test_the_digest_is_of_the_bytes_after_transport_decoding(sim, host, tmp_path):
    """§3.3: Go asks for gzip and decodes a Content-Encoding: gzip body before hashing it."""
    data = tar_bytes(tmp_path, alpine_files("3.10.2", [("musl", "1.1.22-r2")]), "a.tar")
    host.files["a"] = Served(data, gzip_encoding=True)
    reply = call(sim, "POST", "/indexer/api/v1/index_report", manifest([(data, host.url("a"))]))
    assert reply.status == 201, reply.body
    assert sim.downloads[0].bytes_read < len(data)  # what crossed the wire was compressed


def test_only_200_is_accepted(sim, host, tmp_path):
    """§3.3: any other status fails the fetch with the status in the message."""
    data = tar_bytes(tmp_path, alpine_files(), "a.tar")
    host.files["partial"] = Served(data, status=203)
    for name, status in (("missing", 404), ("partial", 203)):
        body = manifest([(data, host.url(name))])
        body["hash"] = sha256(name.encode())
        reply = call(sim, "POST", "/indexer/api/v1/index_report", body)
        assert reply.status == 500
        assert f"fetcher: unexpected status code: {status}" in reply.json()["message"]


def test_redirects_are_followed_and_authorization_stays_on_its_host(sim, host, tmp_path):
    """§3.3: Go's redirect policy; Authorization is dropped when a redirect leaves the host."""
    data = tar_bytes(tmp_path, alpine_files(), "a.tar")
    host.files["real"] = Served(data)
    host.files["same"] = Served(b"", redirect=host.url("real"))
    host.files["away"] = Served(b"", redirect=host.url("real", host="localhost"))
    secret = {"Authorization": ["Bearer t0ken"]}
    for name in ("same", "away"):
        body = manifest([(data, host.url(name))], headers=secret)
        body["hash"] = sha256(name.encode())
        assert call(sim, "POST", "/indexer/api/v1/index_report", body).status == 201
        call(sim, "DELETE", f"/indexer/api/v1/index_report/{body['hash']}")  # so the layer is fetched again
    fetched = [headers for path, headers in host.seen if path == "/real"]
    assert [h.get("Authorization") for h in fetched] == ["Bearer t0ken", None]


def test_a_layer_that_is_not_a_tar_is_a_bad_request(sim, host):
    """§3.2: an error wrapping tarfs.ErrFormat gives 400."""
    data = b"this is not a tar archive, just text long enough to be more than one block" * 20
    host.files["junk"] = Served(data)
    reply = call(sim, "POST", "/indexer/api/v1/index_report", manifest([(data, host.url("junk"))]))
    assert reply.status == 400 and reply.json()["code"] == "bad-request"


# --- GET / DELETE index_report (§3.5) -----------------------------------------------------------


def test_get_and_delete_index_report(sim, debian, host):
    """§3.5: 404 "index report not found", 304 on the state even for an unknown digest, the vnd
    type by default, 415 on a mismatch, 204 on delete (also for unknown digests), then fetched
    again on the next post."""
    body = manifest(debian)
    path = f"/indexer/api/v1/index_report/{body['hash']}"
    unknown = call(sim, "GET", path)
    assert (unknown.status, unknown.json()) == (
        404,
        {"code": "not-found", "message": "index report not found"},
    )
    assert call(sim, "GET", path, headers={"If-None-Match": f'"{sim.indexer_state}"'}).status == 304
    call(sim, "POST", "/indexer/api/v1/index_report", body)
    found = call(sim, "GET", path)
    assert found.status == 200 and found.headers["Content-Type"] == VND_REPORT
    assert found.json()["state"] == "IndexFinished"
    assert call(sim, "GET", path, headers={"Accept": "application/json"}).headers["Content-Type"] == (
        "application/json"
    )
    assert call(sim, "GET", path, headers={"Accept": "text/html"}).status == 415
    assert call(sim, "GET", "/indexer/api/v1/index_report/sha256:nothex").status == 400
    assert (call(sim, "DELETE", path).status, call(sim, "DELETE", path).status) == (204, 204)
    assert call(sim, "GET", path).status == 404
    host.seen.clear()
    assert call(sim, "POST", "/indexer/api/v1/index_report", body).status == 201
    assert len(host.seen) == 3


def test_bulk_delete_answers_the_digests_it_deleted(sim, debian, host):
    """§3.5: DELETE index_report with a JSON array of digests: 200 and those actually deleted."""
    body = manifest(debian)
    call(sim, "POST", "/indexer/api/v1/index_report", body)
    unknown = "sha256:" + "7" * 64
    reply = call(sim, "DELETE", "/indexer/api/v1/index_report", [body["hash"], unknown])
    assert (reply.status, reply.json()) == (200, [body["hash"]])
    assert call(sim, "GET", f"/indexer/api/v1/index_report/{body['hash']}").status == 404


def test_unregistered_routes_and_methods(sim):
    """§3.6: Go's plain-text 404 for unknown routes; 405 method-not-allowed on known ones."""
    page = call(sim, "GET", "/v1/namespaces")
    assert (page.status, page.body, page.headers["Content-Type"]) == (
        404, b"404 page not found\n", "text/plain; charset=utf-8"
    )  # fmt: skip
    wrong = call(sim, "PUT", "/indexer/api/v1/index_report")
    assert wrong.status == 405 and wrong.json()["code"] == "method-not-allowed"
    post = call(sim, "POST", "/matcher/api/v1/vulnerability_report/sha256:" + "a" * 64)
    assert post.status == 405 and post.json()["message"] == "endpoint only allows GET"


# --- the matcher (§4, §5) -----------------------------------------------------------------------


def test_vulnerability_report_holds_claircore_fields(sim, debian, host):
    """§4.1, §4.2, §5, §8: 200 application/json with Cache-Control; the index report's keys
    plus vulnerabilities, package_vulnerabilities (binary packages matched by their source
    package's name too) and the CVSS enrichment; links one string; no fix is ""."""
    body = manifest(debian)
    call(sim, "POST", "/indexer/api/v1/index_report", body)
    reply = call(sim, "GET", f"/matcher/api/v1/vulnerability_report/{body['hash']}")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers["Cache-Control"] == "max-age=21600"
    assert "Etag" not in reply.headers
    report = reply.json()
    assert list(report) == [
        "manifest_hash", "packages", "distributions", "repository", "environments",
        "vulnerabilities", "package_vulnerabilities", "enrichments",
    ]  # fmt: skip
    names = {pid: p["name"] for pid, p in report["packages"].items()}
    affected = {
        (names[pid], report["vulnerabilities"][vid]["name"])
        for pid, vids in report["package_vulnerabilities"].items()
        for vid in vids
    }
    assert affected == {
        ("openssl", "CVE-2019-1543"),
        ("libssl1.1", "CVE-2019-1543"),  # matched through its source package, openssl
        ("libc6", "DSA-4539-1"),
        ("bash", "CVE-2019-18276"),
        ("e2fsprogs", "CVE-2019-5094"),
        ("e2fsprogs", "CVE-2019-5188"),
        ("libidn2-0", "CVE-2019-18224"),
        ("gcc-8", "CVE-2018-12886"),
    }
    vulns = {v["name"]: v for v in report["vulnerabilities"].values()}
    openssl = vulns["CVE-2019-1543"]
    assert list(openssl) == [
        "id", "updater", "name", "description", "issued", "links", "severity", "normalized_severity",
        "package", "distribution", "fixed_in_version",
    ]  # fmt: skip
    assert openssl["links"] == (
        "https://security-tracker.debian.org/tracker/CVE-2019-1543 https://nvd.nist.gov/vuln/detail/CVE-2019-1543"
    )
    assert openssl["fixed_in_version"] == "1.1.1d-0+deb10u2"
    assert openssl["package"] == {
        "id": "", "name": "openssl", "version": "", "kind": "source", "normalized_version": "", "cpe": ""
    }  # fmt: skip
    assert openssl["distribution"]["did"] == "debian" and openssl["issued"] == "0001-01-01T00:00:00Z"
    assert vulns["CVE-2019-18276"]["fixed_in_version"] == ""
    assert vulns["DSA-4539-1"]["normalized_severity"] == "Critical"  # v4's scale ends at Critical
    assert {v["normalized_severity"] for v in vulns.values()} <= {
        "Unknown", "Negligible", "Low", "Medium", "High", "Critical"
    }  # fmt: skip
    (cvss_map,) = report["enrichments"][CVSS_ENRICHMENT]
    assert cvss_map[openssl["id"]] == [
        {"version": "3.0", "vectorString": "CVSS:3.0/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:N",
         "baseScore": 7.4, "baseSeverity": "HIGH"}
    ]  # fmt: skip
    assert vulns["CVE-2019-5094"]["id"] not in cvss_map  # no CVSSv3 data: no entry


def test_the_matcher_answers_202_until_it_has_data(debian, host):
    """§4.1 step 2, §2.1: an empty vulnerability store gives 202 with an empty body, before any
    404 logic (even for a manifest never indexed); once data arrives, 200."""
    store = clairsim.MemoryStore()
    with ClairV4Simulator(store) as sim:
        body = manifest(debian)
        never = call(sim, "GET", "/matcher/api/v1/vulnerability_report/sha256:" + "9" * 64)
        assert (never.status, never.body) == (202, b"")
        assert call(sim, "POST", "/indexer/api/v1/index_report", body).status == 201
        assert call(sim, "GET", f"/matcher/api/v1/vulnerability_report/{body['hash']}").status == 202
        store.load(clairsim.read_dataset(DATA))
        ready = call(sim, "GET", f"/matcher/api/v1/vulnerability_report/{body['hash']}")
        assert ready.status == 200 and ready.json()["vulnerabilities"]
        unknown = call(sim, "GET", "/matcher/api/v1/vulnerability_report/sha256:" + "9" * 64)
        assert unknown.json() == {
            "code": "not-found",
            "message": f'index report for manifest "sha256:{"9" * 64}" not found',
        }


def test_alpine_packages_and_their_findings(sim, host, tmp_path):
    """apk databases with the origin as source package; Alpine's distribution version is
    major.minor; enrichments may be {} when no CVSS applies."""
    layer = alpine_files(
        "3.10.2",
        [ApkPackage("musl", "1.1.22-r2"), ApkPackage("curl", "7.65.0-r0"), ApkPackage("zlib", "1.2.11-r1")],
    )
    data = tar_bytes(tmp_path, layer, "a.tar")
    host.files["a"] = Served(data)
    body = manifest([(data, host.url("a"))])
    index = call(sim, "POST", "/indexer/api/v1/index_report", body).json()
    (distribution,) = index["distributions"].values()
    assert (distribution["did"], distribution["version_id"], distribution["pretty_name"]) == (
        "alpine", "3.10", "Alpine Linux v3.10"
    )  # fmt: skip
    report = call(sim, "GET", f"/matcher/api/v1/vulnerability_report/{body['hash']}").json()
    assert {v["name"] for v in report["vulnerabilities"].values()} == {"CVE-2019-14697", "CVE-2019-5482"}
    ids = {v["name"]: v["id"] for v in report["vulnerabilities"].values()}
    (cvss_map,) = report["enrichments"][CVSS_ENRICHMENT]
    assert set(cvss_map) == {ids["CVE-2019-14697"]}  # curl's record has no CVSSv3 data


def test_update_operations_date_the_data(sim):
    """§4.3: {updater: [{ref, updater, fingerprint, date, kind}]}, ETag the latest ref, 304 on
    If-None-Match, 400 for an unknown kind; none while there is no data."""
    reply = call(sim, "GET", "/matcher/api/v1/internal/update_operation?kind=vulnerability&latest=true")
    assert reply.status == 200
    operations = reply.json()
    assert set(operations) == {"debian/updater/buster", "alpine-main-v3.10-updater"}
    (debian_op,) = operations["debian/updater/buster"]
    assert list(debian_op) == ["ref", "updater", "fingerprint", "date", "kind"]
    assert (debian_op["date"], debian_op["kind"]) == (
        "2023-11-14T22:13:20Z",
        "vulnerability",
    )  # data's `updated`
    assert reply.headers["Etag"].strip('"') in {ops[0]["ref"] for ops in operations.values()}
    again = call(
        sim,
        "GET",
        "/matcher/api/v1/internal/update_operation",
        headers={"If-None-Match": reply.headers["Etag"]},
    )
    assert (again.status, again.body) == (304, b"")
    enrichment = call(sim, "GET", "/matcher/api/v1/internal/update_operation?kind=enrichment").json()
    assert list(enrichment) == ["clair.cvss"]
    assert call(sim, "GET", "/matcher/api/v1/internal/update_operation?kind=nonsense").status == 400
    with ClairV4Simulator(clairsim.MemoryStore()) as empty:
        assert call(empty, "GET", "/matcher/api/v1/internal/update_operation").json() == {}


def test_the_introspection_port():
    """§1: /healthz answers "ok", /readyz an empty 200 once serving, only GET; the API port
    does not serve them."""
    with ClairV4Simulator(clairsim.MemoryStore(), introspection_port=0) as sim:
        parts = urlsplit(sim.introspection_url)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        try:
            connection.request("GET", "/healthz")
            health = connection.getresponse()
            assert (health.status, health.read()) == (200, b"ok")
            connection.request("GET", "/readyz")
            ready = connection.getresponse()
            assert (ready.status, ready.read()) == (200, b"")
            connection.request("POST", "/readyz")
            assert connection.getresponse().status == 405
        finally:
            connection.close()
        assert call(sim, "GET", "/readyz").status == 404


# --- standalone ---------------------------------------------------------------------------------


def test_runs_standalone_and_stops_on_sigterm(tmp_path):
    """`python -m clairsim4 --port N`, as the v2 simulator runs; SIGTERM ends it with 0."""
    tests = Path(__file__).resolve().parent
    process = subprocess.Popen(
        [sys.executable, "-m", "clairsim4", "--port", "0", "--no-data"],
        cwd=tests,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tests)},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.strip().rsplit(" ", 1)[-1]
        parts = urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        connection.request("GET", "/matcher/api/v1/vulnerability_report/sha256:" + "1" * 64)
        assert connection.getresponse().status == 202
        connection.close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


# --- vulnerability data in PostgreSQL -----------------------------------------------------------


def test_vulnerability_data_from_postgresql_gives_the_same_report(database, debian, host):  # noqa: F811
    """The v2 simulator's PostgreSQL store serves v4 too: empty, the matcher answers 202; seeded
    with the same data file, the report equals the in-memory one."""
    from clairsim.seed import seed

    body = manifest(debian)
    path = f"/matcher/api/v1/vulnerability_report/{body['hash']}"
    store = clairsim.PostgresStore(database)
    try:
        with ClairV4Simulator(store) as sim:
            assert call(sim, "POST", "/indexer/api/v1/index_report", body).status == 201
            assert call(sim, "GET", path).status == 202
            seed(database, DATA)
            from_db = call(sim, "GET", path).json()
    finally:
        store.close()
    with ClairV4Simulator(clairsim.MemoryStore.from_json(str(DATA))) as sim:
        call(sim, "POST", "/indexer/api/v1/index_report", body)
        in_memory = call(sim, "GET", path).json()

    def named(report: dict) -> set[tuple[str, str, str, str]]:
        names = {pid: p["name"] for pid, p in report["packages"].items()}
        return {
            (names[pid], v["name"], v["fixed_in_version"], v["normalized_severity"])
            for pid, vids in report["package_vulnerabilities"].items()
            for v in (report["vulnerabilities"][vid] for vid in vids)
        }

    assert named(from_db) == named(in_memory) and len(named(from_db)) == 8


# --- the config file (§1.1, §2, §2.1) -----------------------------------------------------------

ARMINC_CONFIG = standin.CLAIR_V4_CONFIG.format()  # arminc/clair-local-scan-v4's shipped config
SHIPPED_DSN = (
    "host=postgres port=5432 user=postgres password=password sslmode=disable statement_timeout=60000"
)


def test_the_config_file_is_read_as_clair_reads_it(tmp_path):
    """§1.1/§2: arminc's config gives ports 8080/8081, every updater set, and no RHEL mapping
    (so every scan will fail offline); unknown keys and `.yml` are fatal; `disable_updaters`
    runs no set; a period under a minute becomes 6h."""
    from clairsim4 import config

    path = tmp_path / "config.yaml"
    path.write_text(ARMINC_CONFIG)
    arminc = config.load(str(path))
    assert (arminc.api_port, arminc.introspection_port) == (8080, 8081)
    assert arminc.update_sets == config.ALL_SETS and arminc.period == 6 * 3600
    assert "statement_timeout=60000" in arminc.connstrings["notifier"]
    assert config.rhel_mapping_problem(arminc) == config.MAPPING_FAILURE

    path.write_text(ARMINC_CONFIG + "airgapped: true\n")
    with pytest.raises(config.ConfigError, match="unknown field 'airgapped'"):
        config.load(str(path))
    (tmp_path / "config.yml").write_text(ARMINC_CONFIG)
    with pytest.raises(config.ConfigError, match="extension"):
        config.load(str(tmp_path / "config.yml"))

    path.write_text(
        ARMINC_CONFIG.replace("  max_conn_pool: 100\n  migrations", "  period: 30s\n  migrations")
    )
    assert config.load(str(path)).period == 6 * 3600
    mapping = tmp_path / "repository-to-cpe.json"
    path.write_text(
        ARMINC_CONFIG.replace(
            "  migrations: true\n  max_conn_pool: 100\nmatcher:",
            "  migrations: true\n  scanner:\n    repo:\n      rhel-repository-scanner:\n"
            f"        repo2cpe_mapping_file: {mapping}\nmatcher:\n  disable_updaters: true",
        )
    )
    fixed = config.load(str(path))
    assert fixed.update_sets == ()
    assert config.rhel_mapping_problem(fixed) == config.MAPPING_FAILURE  # named, but not there
    mapping.write_bytes(gzip.compress(b'{"data": {}}'))
    assert config.rhel_mapping_problem(fixed) is None


def test_scanner_generated_config_passes_clairs_checks(tmp_path):
    """The appliance's generated v4 config has only keys Clair knows, and names mapping files."""
    from clairsim4 import config
    from scanner.backend import clair_config_v4

    files = clair_config_v4(5432, 8080, 8081, 0)
    for name, text in files.items():
        (tmp_path / name).write_text(text.replace("/config/", f"{tmp_path}/"))
    loaded = config.load(str(tmp_path / "config.yaml"))
    assert loaded.update_sets == () and config.rhel_mapping_problem(loaded) is None
    files = clair_config_v4(5432, 8080, 8081, 5400)
    (tmp_path / "config.yaml").write_text(files["config.yaml"])
    updating = config.load(str(tmp_path / "config.yaml"))
    assert updating.update_sets == config.ALL_SETS and updating.period == 5400


def test_without_the_rhel_mapping_every_index_fails(sim, debian, host):
    """§2.1: the RHEL repository scanner without its mapping fails every layer scan: 500
    `failed to start scan: failed to scan all layer contents: rhel: …`, the report in IndexError."""
    from clairsim4.config import MAPPING_FAILURE

    sim.indexer.scanner_failure = MAPPING_FAILURE
    body = manifest(debian)
    answer = call(sim, "POST", "/indexer/api/v1/index_report", body)
    assert answer.status == 500
    assert answer.json() == {
        "code": "internal-error",
        "message": f"failed to start scan: failed to scan all layer contents: {MAPPING_FAILURE}",
    }
    stored = call(sim, "GET", f"/indexer/api/v1/index_report/{body['hash']}").json()
    assert stored["state"] == "IndexError" and MAPPING_FAILURE in stored["err"]
    sim.indexer.scanner_failure = None
    assert call(sim, "POST", "/indexer/api/v1/index_report", body).status == 201


def _conf_process(path: Path) -> subprocess.Popen[str]:
    tests = Path(__file__).resolve().parent
    return subprocess.Popen(
        [sys.executable, "-m", "clairsim4", "-mode", "combo", "-conf", str(path)],
        cwd=tests,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tests)},
    )


def test_runs_from_its_config_file_and_exits_when_the_database_is_unreachable(
    database,  # noqa: F811
    tmp_path,
):
    """§1: `-conf FILE -mode combo` serves the ports the file names and becomes ready once its
    database is open; a database it cannot reach ends it with status 1 and a JSON error line."""
    import socket

    from clairsim.seed import seed

    seed(database, DATA)
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    text = ARMINC_CONFIG.replace(":8080", f":{ports[0]}").replace(":8081", f":{ports[1]}")
    dsn = database  # statement_timeout=60000 stays after it: a runtime parameter, as pgx takes it
    path = tmp_path / "config.yaml"
    path.write_text(
        text.replace(
            "host=postgres port=5432 user=postgres password=password sslmode=disable statement_timeout=60000",
            dsn,
        )
    )
    process = _conf_process(path)
    try:
        for _ in range(300):
            try:
                connection = http.client.HTTPConnection("127.0.0.1", ports[1], timeout=5)
                connection.request("GET", "/readyz")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None, process.communicate()
            threading.Event().wait(0.1)
        connection = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=5)
        connection.request("GET", "/matcher/api/v1/vulnerability_report/sha256:" + "1" * 64)
        assert connection.getresponse().status == 404  # data: an unknown manifest is not found
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert "unable to fetch mapping file" in (process.stderr.read() if process.stderr else "")

    path.write_text(text)  # host `postgres` resolves nowhere here
    process = _conf_process(path)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    line = json.loads(err.strip().splitlines()[-1])
    assert line["level"] == "error" and "could not open database" in line["error"]
