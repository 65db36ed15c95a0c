"""Many images in one call, scanned in parallel (--jobs), against the simulator on real images."""

from __future__ import annotations

import json
import re
import signal
import socket
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import DATA, DEBIAN_EXPECTED, debian_image_layers, run_cli, run_process, start_process
from imagebuild import Layer, alpine_files, write_docker_save
from reportcheck import validate_gitlab_report

pytestmark = pytest.mark.docker


def _scan_args(clair, *extra: str) -> list[str]:
    return ["scan", "--per-layer", *extra, "--clair", clair.url, "--ip", "127.0.0.1"]


def _variant(n: int) -> list[Layer]:
    """debian_image_layers() with a base of its own: no layer is shared with another variant."""
    base, *rest = debian_image_layers()
    return [Layer(files={**base.files, "etc/clair-scan-variant": f"{n}\n".encode()}), *rest]


@pytest.fixture
def images(load_image) -> list[str]:
    """Three vulnerable images and a clean one, no layer in common."""
    tags = [load_image(_variant(n), name=f"parallel{n}").tag for n in range(3)]
    clean = load_image([alpine_files("3.10.2", [("musl", "1.1.22-r3")])], name="parallel-clean")
    return [*tags, clean.tag]


@pytest.fixture
def fresh_clair() -> Iterator[object]:
    """A second simulator, empty like the `clair` fixture: both runs send every layer."""
    import clairsim

    sim = clairsim.ClairSimulator(clairsim.MemoryStore.from_json(str(DATA)), log_stream=None)
    sim.start()
    yield sim
    sim.stop()


def _posts(clair) -> list:
    return [r for r in clair.requests if r.method == "POST" and r.path == "/v1/layers"]


def _comparable(document: dict) -> list[dict]:
    """The JSON result of each image without the times of the run."""
    images = []
    for image in document["images"]:
        image = {k: v for k, v in image.items() if k not in ("started", "finished")}
        images.append(image)
    return images


def _reports(directory: Path) -> dict[str, dict]:
    found = {}
    for path in sorted(directory.glob("gl-container-scanning-report-*.json")):
        report = json.loads(path.read_text())
        validate_gitlab_report(report)
        found[path.name] = sorted(report["vulnerabilities"], key=lambda v: v["id"])
    return found


def test_parallel_scan_gives_what_one_at_a_time_gives(clair, fresh_clair, images, tmp_path):
    one, three = tmp_path / "one", tmp_path / "three"
    one.mkdir()
    three.mkdir()
    sequential = run_cli(_scan_args(fresh_clair, *images, "--jobs", "1", "--format", "json"), cwd=one)
    assert sequential.code == 1, sequential.stderr
    # Each of three scans must have a layer POST in flight at once before Clair answers any:
    # one at a time, they would wait for each other until the deadline.
    gathering = clair.gather(3, method="POST", path="/v1/layers")
    parallel = run_cli(
        _scan_args(clair, *images, "--jobs", "3", "--format", "json", "--clair-timeout", "60"), cwd=three
    )
    assert parallel.code == 1, parallel.stderr
    assert gathering.gathered.is_set()
    assert {r.status for r in _posts(clair)} == {201}
    # Three workers, a Clair connection each: the gathered POSTs came on three connections.
    assert len({r.remote for r in _posts(clair)[:3]}) == 3

    document = json.loads(parallel.stdout)
    assert [image["image"] for image in document["images"]] == images  # the order named
    assert _comparable(document) == _comparable(json.loads(sequential.stdout))
    for image in document["images"][:3]:
        got = {
            (f["vulnerability"], f["package"], f["severity"], f["layer"]["index"]) for f in image["findings"]
        }
        assert got == {(v, p, s, i) for v, p, _, _, s, i in DEBIAN_EXPECTED}
    assert document["images"][3]["findings"] == []
    assert len(_reports(three)) == 4
    assert _reports(three) == _reports(one)
    # Every layer of every image went to Clair once, each after its parent.
    assert len(_posts(clair)) == len(_posts(fresh_clair)) == 3 * 3 + 1
    indexed: set[str] = set()
    for post in _posts(clair):
        layer = json.loads(post.body)["Layer"]
        assert layer["ParentName"] in indexed | {""}
        indexed.add(layer["Name"])


def test_images_sharing_layers_send_each_layer_once(clair, load_image, tmp_path):
    layers = debian_image_layers()
    tags = [
        load_image([*layers, Layer(files={"srv/app": f"app {n}".encode()})], name=f"sib{n}").tag
        for n in range(3)
    ]
    result = run_cli(_scan_args(clair, *tags, "--jobs", "3", "--format", "json"), cwd=tmp_path)
    assert result.code == 1, result.stderr
    names = [json.loads(p.body)["Layer"]["Name"] for p in _posts(clair)]
    assert len(names) == len(set(names)) == 3 + 3  # the shared three once, each top once
    document = json.loads(result.stdout)
    assert sum(image["layers_sent"] for image in document["images"]) == 6
    for image in document["images"]:
        assert {(f["vulnerability"], f["package"]) for f in image["findings"]} == {
            (v, p) for v, p, *_ in DEBIAN_EXPECTED
        }


def _garbage_archive(tmp_path: Path) -> Path:
    """An image whose layer Clair cannot read (422)."""
    import io

    tarball = tmp_path / "broken.tar"
    write_docker_save(tarball, _variant(9)[:1], repo_tags=["broken/app:1"], layout="oci")
    fixed = tmp_path / "garbage-layer.tar"
    with tarfile.open(tarball) as src, tarfile.open(fixed, "w") as out:
        for member in src:
            data = src.extractfile(member).read() if member.isfile() else None
            if data is not None and member.size > 4096:  # the layer blob
                data = b"\x01not a tar" * (len(data) // 10)
                member.size = len(data)
            out.addfile(member, None if data is None else io.BytesIO(data))
    return fixed


def test_a_failing_image_does_not_stop_the_others(clair, images, tmp_path):
    broken = _garbage_archive(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    args = _scan_args(
        clair, images[0], f"docker-archive:{broken}", images[3], "--jobs", "3", "--format", "json"
    )
    result = run_cli(args, cwd=work)
    assert result.code == 3, result.stderr  # the worst: a failure outranks findings
    assert "broken/app:1: Clair answered 422" in result.stderr
    document = json.loads(result.stdout)
    assert [image["image"] for image in document["images"]] == [images[0], "broken/app:1", images[3]]
    assert "422" in document["images"][1]["error"]
    assert len(document["images"][0]["findings"]) == len(DEBIAN_EXPECTED)
    reports = sorted(p.name for p in work.glob("gl-container-scanning-report-*.json"))
    assert len(reports) == 2 and not any("broken" in name for name in reports)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize(
    ("signum", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_ctrl_c_mid_parallel_scan_leaves_nothing(clair, images, tmp_path, signum, code, word):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    clair.hang(method="POST", path="/v1/layers")
    process = start_process(_scan_args(clair, *images, "--jobs", "3"), work, tmp)

    def in_flight() -> list:
        return [r for r in _posts(clair) if r.status is None]

    deadline = time.monotonic() + 60
    while len(in_flight()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    # Three images' layers in Clair's hands at once: the scans run side by side.
    held = in_flight()
    assert len({json.loads(r.body)["Layer"]["Name"] for r in held}) == 3, process.stderr
    port = urlsplit(json.loads(held[0].body)["Layer"]["Path"]).port
    assert _listening(port)
    assert len(list(next(tmp.iterdir()).iterdir())) == 3, "three images' spools while they run"
    process.send_signal(signum)
    _, err = process.communicate(timeout=30)
    assert process.returncode == code, err
    assert word in err and "Traceback" not in err
    assert list(tmp.iterdir()) == []
    assert list(work.iterdir()) == []
    assert not _listening(port)


def test_plain_progress_shows_every_image(clair, images, tmp_path):
    result = run_process(_scan_args(clair, *images, "--jobs", "3"), cwd=tmp_path)
    assert result.code == 1, result.stderr
    lines = result.stderr.splitlines()
    for tag, count in zip(images, (3, 3, 3, 1), strict=True):
        mine = [line for line in lines if line.startswith(f"{tag}: ")]
        assert f"{tag}: asking Clair" in mine
        assert f"{tag}: exporting and indexing {count} of {count} layers" in mine
        assert [line for line in mine if " indexed" in line] == [
            f"{tag}: layer {n}/{count} indexed" for n in range(1, count + 1)
        ]
        assert f"{tag}: reading findings" in mine
    # Lines from several threads are whole: each one is an image's, or the table's summary.
    names = "|".join(re.escape(tag) for tag in images)
    assert all(re.match(rf"({names}): \S", line) for line in lines), result.stderr


def test_live_progress_on_a_terminal(clair, images, tmp_path):
    """stderr a terminal: rich's live display, updated from every worker, then the summaries."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios
    import threading

    from conftest import ROOT

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    process = subprocess.Popen(
        [sys.executable, "-m", "scanner", *_scan_args(clair, *images, "--jobs", "3")],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT), "TERM": "xterm"},
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out, _ = process.communicate(timeout=120)
    reader.join(30)
    os.close(master)
    err = b"".join(chunks).decode("utf-8", "replace")
    assert process.returncode == 1, err
    assert "\x1b[" in err  # drawn, not plain lines
    assert "Traceback" not in err
    for tag in images[:3]:
        assert f"{tag}: 7 unapproved" in err
        assert tag in out  # its table's title
    assert f"{images[3]}: 0 unapproved" in err
