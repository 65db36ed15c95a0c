"""`clair-scan scan IMAGE --clair URL` against the Clair v4 simulator: the API is detected by
itself, and the same images give the same findings as under v2 (Defcon1 is Critical on v4's
scale). Real images in the real engine, real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

import clairsim
from clairsim4 import ClairV4Simulator
from conftest import DATA, DEBIAN_EXPECTED, DEBIAN_HISTORY, debian_image_layers, run_cli, run_process
from imagebuild import Layer, save_events
from reportcheck import validate_gitlab_report
from scanner import headstart

pytestmark = pytest.mark.docker
REPORT = "gl-container-scanning-report.json"
V4_EXPECTED = {
    (v, p, i, fix, "Critical" if s == "Defcon1" else s, n) for v, p, i, fix, s, n in DEBIAN_EXPECTED
}


@pytest.fixture
def clair4() -> Iterator[ClairV4Simulator]:
    sim = ClairV4Simulator(clairsim.MemoryStore.from_json(str(DATA))).start()
    yield sim
    sim.stop()


def _unique_debian() -> list[Layer]:
    """The Debian image with a layer of its own on top: other tests on this engine scan the plain
    one, and their saves must not count as ours."""
    return [*debian_image_layers(), Layer(files={"etc/test-id": uuid.uuid4().hex.encode()})]


def _rows(stdout: str) -> set[tuple]:
    return {
        (f["vulnerability"], f["package"], f["installed"], f["fixed"], f["severity"], f["layer"]["index"])
        for f in json.loads(stdout)["images"][0]["findings"]
    }


@pytest.mark.parametrize("run", [run_cli, run_process], ids=["cli-runner", "process"])
def test_scan_against_clair_v4_reports_what_it_holds(run, clair4, load_image, docker_client, tmp_path):
    image = load_image(_unique_debian(), history=[*DEBIAN_HISTORY, "COPY test-id /etc/"])
    args = ["scan", "--per-layer", image.tag, "--clair", clair4.url, "--ip", "127.0.0.1", "--format", "json"]
    result = run(args, cwd=tmp_path)
    assert result.code == 1, result.stderr
    assert _rows(result.stdout) == V4_EXPECTED
    report = json.loads((tmp_path / REPORT).read_text())
    validate_gitlab_report(report)
    assert {v["identifiers"][0]["value"] for v in report["vulnerabilities"]} == {v for v, *_ in V4_EXPECTED}
    # One manifest, every layer downloaded from our layer server with the layer's diff ID.
    assert [r.status for r in clair4.requests if r.method == "POST"] == [201]
    assert sorted(d.layer for d in clair4.downloads) == sorted(image.saved.diff_ids)
    assert all(d.url.startswith("http://127.0.0.1:") and d.status == 200 for d in clair4.downloads)

    # A rescan exports nothing and sends nothing.
    clair4.clear_records()
    since = time.time()
    again = run(args, cwd=tmp_path)
    assert again.code == 1 and _rows(again.stdout) == V4_EXPECTED
    # Detection, then the indexer state and the report it names. As a process, the head start
    # asks first, in v2's words and then in v4's; the report it finds means no export.
    asked = [(r.method, r.path.split("/sha256:")[0]) for r in clair4.requests]
    head_start = [
        ("GET", "/v1/layers"),
        ("GET", "/indexer/api/v1/index_state"),
        ("GET", "/matcher/api/v1/vulnerability_report"),
    ]
    assert asked[: len(asked) - 3] == ([] if run is run_cli else head_start)
    assert asked[-3:] == [
        ("GET", "/indexer/api/v1/index_state"),
        ("GET", "/indexer/api/v1/index_state"),
        ("GET", "/matcher/api/v1/vulnerability_report"),
    ]
    assert clair4.downloads == []
    assert save_events(docker_client, image.saved.image_id, since, time.time() + 0.5) == 0


def test_a_cold_scan_against_clair_v4_exports_once_through_the_head_start(
    clair4, load_image, docker_client, tmp_path
):
    """The head start asks a Clair v4 for the image's manifest (HTTP/1.0, as it asks everything)
    and starts the export when there is no report for it; the rescan starts none."""
    image = load_image(_unique_debian())
    log = tmp_path / "debug.log"
    args = ["scan", "--per-layer", image.tag, "--clair", clair4.url, "--ip", "127.0.0.1", "--no-report"]
    since = time.time()
    cold = run_process([*args, "--log", str(log)], cwd=tmp_path)
    assert cold.code == 1, cold.stderr
    assert "using the head start's request" in log.read_text()
    assert save_events(docker_client, image.saved.image_id, since, time.time() + 0.5) == 1
    assert len(clair4.downloads) == 4
    asked = [(r.method, r.path.split("/sha256:")[0]) for r in clair4.requests][:3]
    assert asked == [
        ("GET", "/v1/layers"),
        ("GET", "/indexer/api/v1/index_state"),
        ("GET", "/matcher/api/v1/vulnerability_report"),
    ]
    since = time.time()
    headstart.begin(args, {})
    assert headstart._started is None  # Clair holds the image now
    assert save_events(docker_client, image.saved.image_id, since, time.time() + 0.5) == 0


def test_a_clair_v4_without_vulnerability_data_is_a_failure_not_a_clean_scan(load_image, tmp_path):
    image = load_image(debian_image_layers())
    with ClairV4Simulator(clairsim.MemoryStore()) as sim:
        args = [
            "scan",
            "--per-layer",
            image.tag,
            "--clair",
            sim.url,
            "--ip",
            "127.0.0.1",
            "--clair-timeout",
            "3",
        ]
        result = run_cli(args, cwd=tmp_path)
    assert result.code == 3
    assert "has no vulnerability data yet" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / REPORT).exists()


def test_a_url_that_is_no_clair_is_one_clear_error(load_image, tmp_path):
    image = load_image(debian_image_layers())
    with ClairV4Simulator(clairsim.MemoryStore()) as sim:
        url = sim.url + "/nothing-here"
        result = run_cli(
            ["scan", "--per-layer", image.tag, "--clair", url, "--ip", "127.0.0.1"], cwd=tmp_path
        )
    assert result.code == 3
    assert f"no Clair API at {url}" in result.stderr and "Traceback" not in result.stderr


def test_a_distilled_scan_against_clair_v4_matches_the_per_layer_one(clair4, load_image, tmp_path):
    """The default scan sends Clair v4 one small layer whose digest is that of the tar served;
    its findings are the per-layer scan's, the layer aside; a rescan sends nothing."""
    image = load_image(_unique_debian(), history=[*DEBIAN_HISTORY, "COPY test-id /etc/"])
    base = ["scan", image.tag, "--clair", clair4.url, "--ip", "127.0.0.1", "--format", "json", "--no-report"]
    distilled = run_process(base, cwd=tmp_path)
    assert distilled.code == 1, distilled.stderr
    doc = json.loads(distilled.stdout)["images"][0]
    assert doc["distilled"] is True and all("layer" not in f for f in doc["findings"])
    found = {
        (f["vulnerability"], f["package"], f["installed"], f["fixed"], f["severity"]) for f in doc["findings"]
    }
    assert found == {row[:5] for row in V4_EXPECTED}
    (download,) = clair4.downloads
    assert download.status == 200  # Clair checked the digest of what it downloaded
    clair4.clear_records()
    again = run_process(base, cwd=tmp_path)
    assert again.code == 1, again.stderr
    assert json.loads(again.stdout)["images"][0]["layers_sent"] == 0
    assert not clair4.downloads and not [r for r in clair4.requests if r.method == "POST"]
