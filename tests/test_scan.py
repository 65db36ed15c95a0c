"""The whole scan against a running Clair (the simulator), on real images in the real engine."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from conftest import (
    DEBIAN_EXPECTED,
    DEBIAN_HISTORY,
    debian_image_layers,
    run_cli,
    run_process,
    start_process,
)
from imagebuild import HistoryEntry, Layer, alpine_files, write_docker_save
from reportcheck import validate_gitlab_report

pytestmark = pytest.mark.docker
RUNNERS = [pytest.param(run_cli, id="cli-runner"), pytest.param(run_process, id="process")]
REPORT = "gl-container-scanning-report.json"


def _history() -> list[HistoryEntry | str]:
    return [DEBIAN_HISTORY[0], HistoryEntry("ENV LANG=C.UTF-8", True), *DEBIAN_HISTORY[1:]]


def _scan_args(clair, *extra: str) -> list[str]:
    # These tests are about sending layers; the default, distilled mode is tested in test_distill.py.
    return ["scan", *extra, "--per-layer", "--clair", clair.url, "--ip", "127.0.0.1"]


def _report_set(report: dict) -> set[tuple]:
    return {
        (
            v["identifiers"][0]["value"],
            v["location"]["dependency"]["package"]["name"],
            v["location"]["dependency"]["version"],
        )
        for v in report["vulnerabilities"]
    }


def _json_findings(stdout: str) -> list[dict]:
    return json.loads(stdout)["images"][0]["findings"]


def _posts(clair) -> list:
    return [r for r in clair.requests if r.method == "POST" and r.path == "/v1/layers"]


@pytest.mark.parametrize("run", RUNNERS)
def test_scan_reports_exactly_what_clair_holds(run, clair, load_image, tmp_path):
    image = load_image(debian_image_layers(), history=_history())
    result = run(_scan_args(clair, image.tag, "--format", "json"), cwd=tmp_path)
    assert result.code == 1, result.stderr
    findings = _json_findings(result.stdout)
    got = {
        (f["vulnerability"], f["package"], f["installed"], f["fixed"], f["severity"], f["layer"]["index"])
        for f in findings
    }
    assert got == DEBIAN_EXPECTED
    created_by = {f["layer"]["index"]: f["layer"]["created_by"] for f in findings}
    assert created_by == {0: DEBIAN_HISTORY[0], 1: DEBIAN_HISTORY[1], 2: DEBIAN_HISTORY[2]}
    assert all(f["ignored"] is None for f in findings)

    report = json.loads((tmp_path / REPORT).read_text())
    validate_gitlab_report(report)
    assert _report_set(report) == {(v, p, i) for v, p, i, *_ in DEBIAN_EXPECTED}
    assert {v["location"]["image"] for v in report["vulnerabilities"]} == {image.tag}

    # Clair really downloaded every layer from our server, parents first, named by chain ID.
    chain = [layer.chain_id for layer in _layers_of(image)]
    posted = [json.loads(r.body)["Layer"] for r in _posts(clair)]
    assert [p["Name"] for p in posted] == chain
    assert [p["ParentName"] for p in posted] == ["", *chain[:-1]]
    assert [d.status for d in clair.downloads] == [200, 200, 200]
    for download, post in zip(clair.downloads, posted):
        url = urlsplit(download.url)
        assert url.hostname == "127.0.0.1" and download.url == post["Path"]
        assert url.path.endswith(f"/{post['Name']}/layer.tar")
        assert download.bytes_read > 0
    assert "unapproved" in result.stderr


def _layers_of(image):
    from scanner.names import chain_ids

    return [type("L", (), {"chain_id": c}) for c in chain_ids(list(image.saved.diff_ids))]


def test_report_matches_clairs_own_answer(clair, load_image, tmp_path):
    """Cross-check against the raw API: every (vulnerability, feature) Clair lists is reported."""
    image = load_image(debian_image_layers())
    assert run_cli(_scan_args(clair, image.tag), cwd=tmp_path).code == 1
    top = _layers_of(image)[-1].chain_id
    raw = requests.get(f"{clair.url}/v1/layers/{top}?features&vulnerabilities", timeout=10).json()
    expected = {
        (v["Name"], f["Name"], f["Version"])
        for f in raw["Layer"]["Features"]
        for v in f.get("Vulnerabilities") or []
    }
    assert expected == _report_set(json.loads((tmp_path / REPORT).read_text()))


def _saves(docker_client, since: float, image_id: str) -> list[dict]:
    """This image's saves: other tests on the same engine save theirs meanwhile."""
    events = docker_client.events(
        since=since, until=time.time() + 0.5, decode=True, filters={"event": "save"}
    )
    return [event for event in events if event.get("id") == image_id]


def test_rescan_reads_findings_without_export_or_upload(clair, load_image, tmp_path, docker_client):
    image = load_image(debian_image_layers())
    started = time.time() - 0.1
    first = run_cli(_scan_args(clair, image.tag, "--format", "json"), cwd=tmp_path)
    assert first.code == 1
    assert json.loads(first.stdout)["images"][0]["layers_sent"] == 3
    # The engine reports a save when its export ends, which can be after the scan is done.
    deadline = time.monotonic() + 10
    while not _saves(docker_client, started, image.saved.image_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_saves(docker_client, started, image.saved.image_id)) == 1
    clair.clear_records()
    before = time.time()
    again = run_cli(_scan_args(clair, image.tag, "--format", "json"), cwd=tmp_path)
    assert again.code == 1
    assert json.loads(again.stdout)["images"][0]["layers_sent"] == 0
    assert _posts(clair) == [] and clair.downloads == []
    top = _layers_of(image)[-1].chain_id
    assert [(r.method, r.path) for r in clair.requests] == [
        ("GET", "/indexer/api/v1/index_state"),  # which API: not v4's
        ("GET", "/v1/namespaces"),  # v2's
        ("GET", f"/v1/layers/{top}?features&vulnerabilities"),
    ]
    assert _saves(docker_client, before, image.saved.image_id) == []
    assert _json_findings(again.stdout) == _json_findings(first.stdout)


def test_a_scan_against_a_given_clair_loads_neither_the_docker_sdk_nor_requests(clair, load_image, tmp_path):
    # Their ~80 ms of CPU at start would compete with the engine's export (see dockerapi.py).
    image = load_image(debian_image_layers())
    for scan in ("cold", "rescan"):
        done = run_process(_scan_args(clair, image.tag), env={"PYTHONPROFILEIMPORTTIME": "1"}, cwd=tmp_path)
        assert done.code == 1, done.stderr
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
        assert "scanner.clair" in imported and "typer" in imported, scan
        assert not {"docker", "requests", "urllib3"} & imported, scan
    assert len(_posts(clair)) == 3


def test_sibling_image_sends_only_the_layers_clair_lacks(clair, load_image, tmp_path):
    layers = debian_image_layers()
    first = load_image(layers)
    sibling = load_image([*layers[:2], Layer(files={"srv/other": b"other app"})])
    assert run_cli(_scan_args(clair, first.tag), cwd=tmp_path).code == 1
    clair.clear_records()
    result = run_cli(_scan_args(clair, sibling.tag, "--format", "json"), cwd=tmp_path)
    assert result.code == 1
    posted = [json.loads(r.body)["Layer"] for r in _posts(clair)]
    sibling_chain = [layer.chain_id for layer in _layers_of(sibling)]
    assert [p["Name"] for p in posted] == [sibling_chain[2]]
    assert posted[0]["ParentName"] == sibling_chain[1]
    assert len(clair.downloads) == 1
    got = {(f["vulnerability"], f["package"]) for f in _json_findings(result.stdout)}
    assert got == {(v, p) for v, p, *_ in DEBIAN_EXPECTED if v != "CVE-2018-12886"}


@pytest.mark.parametrize("run", RUNNERS)
def test_threshold_whitelist_and_exit_codes(run, clair, load_image, tmp_path):
    image = load_image(debian_image_layers())
    repo = image.tag.split(":")[0]
    whitelist = tmp_path / "whitelist.yml"
    whitelist.write_text(
        "generalwhitelist:\n"
        "  DSA-4539-1: glibc\n"
        "  CVE-2099-0001: never seen\n"
        "images:\n"
        f"  {repo}:\n"
        "    CVE-2019-18224: {package: libidn2, reason: not reachable, expires: 2099-01-01}\n"
        "    CVE-2019-1543: {reason: old approval, expires: 2020-01-01}\n"
    )
    high = run(
        _scan_args(clair, image.tag, "-t", "High", "-w", str(whitelist), "--format", "json"), cwd=tmp_path
    )
    assert high.code == 1
    findings = {f["vulnerability"]: f for f in _json_findings(high.stdout)}
    assert "not reachable" in findings["CVE-2019-18224"]["ignored"]
    assert "glibc" in findings["DSA-4539-1"]["ignored"]
    assert findings["CVE-2019-1543"]["ignored"] is None  # its approval expired
    report = json.loads((tmp_path / REPORT).read_text())
    validate_gitlab_report(report)
    assert {v[0] for v in _report_set(report)} == {"CVE-2019-1543"}  # the only unapproved High+
    assert "expired on 2020-01-01" in high.stderr
    assert "CVE-2099-0001" in high.stderr and "matched nothing" in high.stderr

    # Critical: the only Critical+ findings are whitelisted -> 0, and the report is empty.
    critical = run(_scan_args(clair, image.tag, "-t", "critical", "-w", str(whitelist)), cwd=tmp_path)
    assert critical.code == 0, critical.stderr
    report = json.loads((tmp_path / REPORT).read_text())
    validate_gitlab_report(report)
    assert report["vulnerabilities"] == []
    # The environment variables of the GitLab/klar setup work the same way.
    env = run(
        _scan_args(clair, image.tag),
        env={"CLAIR_OUTPUT": "Critical", "WHITELIST_FILE": str(whitelist)},
        cwd=tmp_path,
    )
    assert env.code == 0, env.stderr
    unfixed = run(
        _scan_args(
            clair, image.tag, "-t", "Unknown", "--ignore-unfixed", "-w", str(whitelist), "--format", "json"
        ),
        cwd=tmp_path,
    )
    assert unfixed.code == 1
    ignored = {f["vulnerability"] for f in _json_findings(unfixed.stdout) if f["ignored"]}
    assert {"CVE-2019-18276", "CVE-2018-12886"} <= ignored


def test_table_output_groups_by_severity(clair, load_image, tmp_path):
    image = load_image(debian_image_layers(), history=_history())
    result = run_cli(_scan_args(clair, image.tag), env={"COLUMNS": "200"}, cwd=tmp_path)
    assert result.code == 1
    out = result.stdout
    order = [out.index(s) for s in ("Defcon1", "Critical", "High", "Medium", "Negligible", "Unknown")]
    assert order == sorted(order)
    assert "CVE-2019-18224" in out and "2.0.5-1+deb10u1" in out and "RUN apt-get install -y libidn2-0" in out
    summary = [line for line in result.stderr.splitlines() if line.startswith(image.tag + ": 7 unapproved")]
    assert summary, result.stderr


def test_several_images_get_their_reports_and_the_worst_exit_code(clair, load_image, tmp_path):
    vulnerable = load_image(debian_image_layers(), name="vulnerable")
    clean = load_image([alpine_files("3.10.2", [("musl", "1.1.22-r3"), ("curl", "7.66.0-r0")])], name="clean")
    result = run_cli(_scan_args(clair, vulnerable.tag, clean.tag), cwd=tmp_path)
    assert result.code == 1, result.stderr
    reports = sorted(p.name for p in tmp_path.glob("gl-container-scanning-report-*.json"))
    slug = lambda tag: tag.replace("/", "-").replace(":", "-")  # noqa: E731
    assert reports == sorted(
        [
            f"gl-container-scanning-report-{slug(vulnerable.tag)}.json",
            f"gl-container-scanning-report-{slug(clean.tag)}.json",
        ]
    )
    clean_report = json.loads((tmp_path / f"gl-container-scanning-report-{slug(clean.tag)}.json").read_text())
    validate_gitlab_report(clean_report)
    assert clean_report["vulnerabilities"] == []
    with_unknown = run_cli(_scan_args(clair, clean.tag, "docker:clair-scan-test/missing:1"), cwd=tmp_path)
    assert with_unknown.code == 2
    assert "image not found: clair-scan-test/missing:1" in with_unknown.stderr
    assert (tmp_path / f"gl-container-scanning-report-{slug(clean.tag)}.json").exists()


@pytest.mark.parametrize(("layout", "gzip_layers"), [("classic", False), ("oci", True)])
def test_archive_scan_matches_the_daemon_scan(clair, tmp_path, layout, gzip_layers):
    tarball = tmp_path / "image.tar"
    write_docker_save(
        tarball, debian_image_layers(), repo_tags=["archived/app:1"], layout=layout, gzip_layers=gzip_layers
    )
    result = run_cli(_scan_args(clair, "--archive", str(tarball), "--format", "json"), cwd=tmp_path)
    assert result.code == 1, result.stderr
    doc = json.loads(result.stdout)["images"][0]
    assert doc["image"] == "archived/app:1"
    got = {
        (f["vulnerability"], f["package"], f["installed"], f["fixed"], f["severity"], f["layer"]["index"])
        for f in doc["findings"]
    }
    assert got == DEBIAN_EXPECTED
    validate_gitlab_report(json.loads((tmp_path / REPORT).read_text()))


def test_clair_500_is_retried_then_fails(clair, load_image, tmp_path):
    image = load_image(debian_image_layers())
    clair.fail_next(500, count=2, method="POST", path="/v1/layers")
    ok = run_cli(_scan_args(clair, image.tag), cwd=tmp_path)
    assert ok.code == 1, ok.stderr  # two transient 500s are retried
    clair.fail_next(500, count=None, method="GET", path="/v1/layers")
    failed = run_process(_scan_args(clair, image.tag, "--clair-timeout", "30"), cwd=tmp_path / "..")
    assert failed.code == 3
    assert re.search(
        r"Clair answered 500 to GET /v1/layers/sha256:[0-9a-f]{64}: database: an error occured", failed.stderr
    ), failed.stderr
    assert "Traceback" not in failed.stderr


@pytest.mark.parametrize("run", RUNNERS)
def test_layer_clair_cannot_read_is_422(run, clair, tmp_path):
    tarball = tmp_path / "broken.tar"
    write_docker_save(tarball, debian_image_layers()[:1], repo_tags=["broken/app:1"], layout="oci")
    import tarfile

    fixed = tmp_path / "garbage-layer.tar"
    with tarfile.open(tarball) as src, tarfile.open(fixed, "w") as out:
        for member in src:
            data = src.extractfile(member).read() if member.isfile() else None
            if data is not None and member.size > 4096:  # the layer blob
                data = b"\x01not a tar" * (len(data) // 10)
                member.size = len(data)
            out.addfile(member, None if data is None else __import__("io").BytesIO(data))
    result = run(_scan_args(clair, "--archive", str(fixed)), cwd=tmp_path)
    assert result.code == 3
    assert "Clair answered 422 to POST /v1/layers: tarutil: could not extract the archive" in result.stderr
    assert not (tmp_path / REPORT).exists()


def test_clair_that_never_answers_hits_the_deadline(clair, load_image, tmp_path):
    image = load_image(debian_image_layers())
    clair.hang(method="POST", path="/v1/layers")
    started = time.monotonic()
    result = run_process(_scan_args(clair, image.tag, "--clair-timeout", "4"), cwd=tmp_path)
    assert result.code == 3
    assert time.monotonic() - started < 30
    assert "did not finish within 4 s" in result.stderr
    assert not (tmp_path / REPORT).exists()


def test_wrong_ip_gives_clairs_could_not_find_layer(clair, load_image, tmp_path):
    image = load_image(debian_image_layers())
    result = run_cli(
        ["scan", image.tag, "--per-layer", "--clair", clair.url, "--ip", "127.0.0.2", "--bind", "127.0.0.1"],
        cwd=tmp_path,
    )
    assert result.code == 3
    assert "could not find layer" in result.stderr
    assert "pass an --ip that Clair can reach" in result.stderr


@pytest.mark.parametrize("run", RUNNERS)
def test_busy_port_is_a_usage_error(run, clair, load_image, tmp_path):
    import socket

    image = load_image(debian_image_layers())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(_scan_args(clair, image.tag, "--port", str(port)), cwd=tmp_path)
    assert result.code == 2
    assert f"127.0.0.1:{port}: the port is in use" in result.stderr


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize(
    ("signum", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_ctrl_c_or_sigterm_mid_scan_leaves_nothing(clair, load_image, tmp_path, signum, code, word):
    image = load_image(debian_image_layers())
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    clair.hang(method="POST", path="/v1/layers")
    process = start_process(_scan_args(clair, image.tag), work, tmp)
    deadline = time.monotonic() + 60
    while not any(r.method == "POST" for r in clair.requests) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(r.method == "POST" for r in clair.requests), "the scan never reached Clair"
    layer_port = urlsplit(
        json.loads(next(r for r in clair.requests if r.method == "POST").body)["Layer"]["Path"]
    ).port
    assert _listening(layer_port)
    assert list(tmp.iterdir()), "the spool should exist while the scan runs"
    process.send_signal(signum)
    _, err = process.communicate(timeout=30)
    assert process.returncode == code, err
    assert word in err and "Traceback" not in err
    assert list(tmp.iterdir()) == []
    assert list(work.iterdir()) == []
    assert not _listening(layer_port)


def test_ctrl_c_while_the_findings_are_read_leaves_nothing(clair, load_image, tmp_path):
    image = load_image(debian_image_layers()[:1])
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    clair.delay(2.0, method="POST", path="/v1/layers")  # time to make the findings' GET hang
    process = start_process(_scan_args(clair, image.tag), work, tmp)
    deadline = time.monotonic() + 60
    while not any(r.method == "POST" for r in clair.requests) and time.monotonic() < deadline:
        time.sleep(0.02)
    clair.hang(method="GET")

    def findings_asked() -> bool:
        methods = [r.method for r in clair.requests]
        return "POST" in methods and "GET" in methods[methods.index("POST") :]

    while not findings_asked() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert findings_asked(), "the scan never asked for the findings"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert list(tmp.iterdir()) == []
    assert list(work.iterdir()) == []


def test_ctrl_c_in_process_exits_130(clair, load_image, tmp_path, private_tmp):
    image = load_image(debian_image_layers())
    clair.hang(method="POST", path="/v1/layers")

    def interrupt() -> None:
        deadline = time.monotonic() + 60
        while not any(r.method == "POST" for r in clair.requests) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    result = run_cli(_scan_args(clair, image.tag), cwd=tmp_path)
    assert result.code == 130
    assert "interrupted" in result.stderr
    assert list(private_tmp.iterdir()) == []
    assert not (tmp_path / REPORT).exists()


def test_full_disk_during_export(clair, load_image, tmp_path, tiny_fs):
    from imagebuild import Filler

    image = load_image([*debian_image_layers(), Layer(files={"big": Filler(1 << 20)})])
    result = run_process(_scan_args(clair, image.tag), env={"TMPDIR": str(tiny_fs)}, cwd=tmp_path)
    assert result.code == 3, result.stderr
    assert "No space left on device" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(Path(tiny_fs).iterdir()) == []
    assert not (tmp_path / REPORT).exists()


def test_debug_log_records_the_run_without_secrets(clair, load_image, tmp_path):
    image = load_image(debian_image_layers())
    log = tmp_path / "scan.log"
    url = clair.url.replace("http://", "http://scanner:t0ps3cret@")
    result = run_process(
        ["scan", image.tag, "--per-layer", "--clair", url, "--ip", "127.0.0.1", "--log", str(log)],
        cwd=tmp_path,
    )
    assert result.code == 1, result.stderr
    text = log.read_text()
    assert "submitting layer 1" in text and "layer server listening on 127.0.0.1" in text
    assert "t0ps3cret" not in text and "t0ps3cret" not in result.stderr + result.stdout
    assert "t0ps3cret" not in (tmp_path / REPORT).read_text()


def test_clair_addr_without_scheme_from_the_environment(clair, load_image, tmp_path):
    image = load_image(debian_image_layers())
    address = clair.url.removeprefix("http://")
    result = run_process(
        ["scan", image.tag, "--per-layer", "--ip", "127.0.0.1"], env={"CLAIR_ADDR": address}, cwd=tmp_path
    )
    assert result.code == 1, result.stderr
    assert len(_posts(clair)) == 3


def test_a_save_that_breaks_while_clair_downloads_is_a_docker_error(clair, tmp_path):
    import tarfile
    from contextlib import contextmanager

    from imagebuild import Filler
    from scanner import archive, pipeline
    from scanner.errors import DockerError

    tarball = tmp_path / "save.tar"
    layers = [*debian_image_layers()[:1], Layer(files={"data/blob": Filler(4 << 20)})]
    write_docker_save(tarball, layers, layout="oci")
    (saved,) = archive.read_archive(str(tarball), str(tmp_path))  # the image as the scanner sees it
    image = saved.image
    with tarfile.open(tarball) as tar:
        member = tar.getmember("blobs/sha256/" + image.layers[1].diff_id.partition(":")[2])
    data = tarball.read_bytes()

    def chunks():
        yield data[: member.offset_data + member.size // 2]
        deadline = time.monotonic() + 30
        while len(clair.downloads) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # Clair is fetching the second layer while it still streams
        raise ConnectionResetError("engine went away")

    @contextmanager
    def exported(workdir):
        files = archive.LayerFiles(len(image.layers))
        spool = os.path.join(workdir, "spool.tar")
        thread = threading.Thread(
            target=archive.stream_save, args=(chunks(), image, spool, files, threading.Event()), daemon=True
        )
        thread.start()
        yield files
        thread.join(30)

    settings = pipeline.Settings(ip="127.0.0.1")
    (outcome,) = pipeline.run([(image.name, pipeline.Target(image, exported))], clair.url, settings)
    assert isinstance(outcome.error, DockerError), outcome
    assert "engine went away" in str(outcome.error)
    assert len(clair.downloads) == 2
    held = requests.get(f"{clair.url}/v1/layers/{image.layers[1].chain_id}", timeout=10)
    assert held.status_code == 404  # half a layer was never indexed
    assert requests.get(f"{clair.url}/v1/layers/{image.layers[0].chain_id}", timeout=10).status_code == 200
