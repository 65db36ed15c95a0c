"""Podman users point DOCKER_HOST at Podman's Docker-compatible socket: today's scan works there
and finds what the same image in the Docker engine gives.

Podman runs as root with storage of its own (vfs, in a temp dir): `podman system service` on a
unix socket (and once on tcp://127.0.0.1), images put there with `podman load` and `podman build`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import DATA, DEBIAN_EXPECTED, DEBIAN_HISTORY, debian_image_layers, run_process
from imagebuild import DebPackage, HistoryEntry, dpkg_status, write_docker_save

pytestmark = pytest.mark.docker

PODMAN = shutil.which("podman")


@dataclass
class Podman:
    base: Path
    host: str  # the DOCKER_HOST of its service

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PODMAN or "podman", *self.global_options(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def global_options(self) -> list[str]:
        # Everything Podman keeps, under our own directory: nothing shared with other users of Podman.
        return [
            "--root", str(self.base / "root"),
            "--runroot", str(self.base / "run"),
            "--tmpdir", str(self.base / "tmp"),
            "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
        ]  # fmt: skip


@contextlib.contextmanager
def podman_service(base: Path, uri: str) -> Iterator[subprocess.Popen[str]]:
    """`podman system service` on `uri`, answering /_ping, stopped on exit."""
    podman = Podman(base, uri)
    log = open(base / f"service-{uuid.uuid4().hex[:6]}.log", "w+")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [PODMAN or "podman", *podman.global_options(), "system", "service", "--time=0", uri],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        if not _wait_for_ping(uri, process):
            log.seek(0)
            pytest.skip(f"podman system service cannot run here: {log.read()[-800:].strip()}")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_for_ping(uri: str, process: subprocess.Popen[str]) -> bool:
    for _ in range(300):
        if process.poll() is not None:
            return False
        try:
            if uri.startswith("unix://"):
                sock = socket.socket(socket.AF_UNIX)
                sock.settimeout(2)
                sock.connect(uri[len("unix://") :])
            else:
                host, port = uri[len("tcp://") :].rsplit(":", 1)
                sock = socket.create_connection((host, int(port)), timeout=2)
            with sock:
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: localhost\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.0 200"):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    if PODMAN is None:
        pytest.skip("podman is not installed (apt-get install podman)")
    base = Path(tempfile.mkdtemp(prefix="clair-scan-podman-"))
    try:
        uri = f"unix://{base}/podman.sock"
        with podman_service(base, uri):
            yield Podman(base, uri)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _history() -> list[HistoryEntry | str]:
    return [DEBIAN_HISTORY[0], HistoryEntry("ENV LANG=C.UTF-8", True), *DEBIAN_HISTORY[1:]]


def _podman_load(podman: Podman, tmp_path: Path) -> tuple[str, str]:
    """The Debian test image loaded into Podman: (tag, image ID)."""
    tag = f"clair-scan-test/podman:{uuid.uuid4().hex[:10]}"
    tarball = tmp_path / "podman-image.tar"
    saved = write_docker_save(tarball, debian_image_layers(), repo_tags=[tag], history=_history())
    loaded = podman.cli("load", "-i", str(tarball))
    assert loaded.returncode == 0, loaded.stderr
    tarball.unlink()
    return tag, saved.image_id


def _scan(clair: Any, ref: str, cwd: Path, docker_host: str | None = None) -> tuple[Any, dict[str, Any]]:
    env = {"DOCKER_HOST": docker_host} if docker_host else None
    result = run_process(
        ["scan", "--per-layer", ref, "--clair", clair.url, "--ip", "127.0.0.1", "--format", "json"],
        env=env,
        cwd=cwd,
    )
    assert result.code == 1, result.stderr
    return result, json.loads(result.stdout)["images"][0]


def _fresh_clair() -> Any:
    import clairsim

    sim = clairsim.ClairSimulator(clairsim.MemoryStore.from_json(str(DATA)), log_stream=None)
    sim.start()
    return sim


def _without_name(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("image", "started", "finished")}


def test_scan_through_podmans_socket_matches_the_docker_engine(
    podman: Podman, clair: Any, load_image: Any, tmp_path: Path
) -> None:
    tag, image_id = _podman_load(podman, tmp_path)
    (tmp_path / "podman").mkdir()
    _, via_podman = _scan(clair, tag, tmp_path / "podman", docker_host=podman.host)
    # Clair held nothing: every layer came out of Podman's `docker save`.
    assert [d.status for d in clair.downloads] == [200, 200, 200]
    assert via_podman["image_id"] == image_id and via_podman["layers_sent"] == 3

    engine_image = load_image(debian_image_layers(), history=_history())
    assert engine_image.saved.image_id == image_id
    docker_clair = _fresh_clair()
    try:
        (tmp_path / "docker").mkdir()
        _, via_docker = _scan(docker_clair, engine_image.tag, tmp_path / "docker")
        assert [d.status for d in docker_clair.downloads] == [200, 200, 200]
    finally:
        docker_clair.stop()

    assert _without_name(via_podman) == _without_name(via_docker)
    got = {
        (f["vulnerability"], f["package"], f["installed"], f["fixed"], f["severity"], f["layer"]["index"])
        for f in via_podman["findings"]
    }
    assert got == DEBIAN_EXPECTED
    assert {f["layer"]["created_by"] for f in via_podman["findings"]} == set(DEBIAN_HISTORY)
    reports = [
        json.loads((tmp_path / side / "gl-container-scanning-report.json").read_text())["vulnerabilities"]
        for side in ("podman", "docker")
    ]
    # The same entries but for the image name, which also seeds each entry's id.
    for vulnerabilities in reports:
        for v in vulnerabilities:
            del v["id"], v["location"]["image"]
    assert reports[0] == reports[1] and len(reports[0]) == len(DEBIAN_EXPECTED)


def test_podman_names_ids_and_missing_images(podman: Podman, clair: Any, tmp_path: Path) -> None:
    tag, image_id = _podman_load(podman, tmp_path)
    # Podman files a short name under localhost/; both spellings, the ID and a short ID all work.
    for ref in (tag, f"localhost/{tag}", image_id, image_id.split(":")[1][:12]):
        _, doc = _scan(clair, ref, tmp_path, docker_host=podman.host)
        assert doc["image_id"] == image_id and len(doc["findings"]) == len(DEBIAN_EXPECTED)
    missing = run_process(
        ["scan", "docker:clair-scan-test/podman-missing:1", "--clair", clair.url, "--ip", "127.0.0.1"],
        env={"DOCKER_HOST": podman.host},
        cwd=tmp_path,
    )
    assert missing.code == 2
    assert "image not found: clair-scan-test/podman-missing:1" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_image_built_by_podman(podman: Podman, clair: Any, tmp_path: Path) -> None:
    """Buildah writes its own history; the layer a COPY made is named by that step."""
    base_tag, _ = _podman_load(podman, tmp_path)
    context = tmp_path / "context"
    context.mkdir()
    # The COPY downgrades tar below its fix: a finding introduced by the fourth layer.
    packages = [DebPackage(name, version, source) for name, version, source in BASE_PACKAGES]
    (context / "status").write_bytes(dpkg_status(packages))
    (context / "Containerfile").write_text(
        f"FROM localhost/{base_tag}\nENV STAGE=test\nCOPY status /var/lib/dpkg/status\nLABEL built=podman\n"
    )
    tag = f"clair-scan-test/podman-built:{uuid.uuid4().hex[:10]}"
    built = podman.cli("build", "--network", "none", "-t", tag, str(context))
    assert built.returncode == 0, built.stderr
    history = json.loads(podman.cli("image", "history", "--format", "json", tag).stdout)
    [copy_step] = [h["CreatedBy"] for h in history if "COPY" in h["CreatedBy"]]

    _, doc = _scan(clair, tag, tmp_path, docker_host=podman.host)
    assert doc["layers"] == 4
    got = {
        (f["vulnerability"], f["package"], f["installed"], f["fixed"], f["severity"], f["layer"]["index"])
        for f in doc["findings"]
    }
    assert got == {*DEBIAN_EXPECTED, ("CVE-2018-20482", "tar", "1.30+dfsg-4", "1.30+dfsg-5", "Low", 3)}
    created_by = {f["layer"]["index"]: f["layer"]["created_by"] for f in doc["findings"]}
    assert created_by == {0: DEBIAN_HISTORY[0], 1: DEBIAN_HISTORY[1], 2: DEBIAN_HISTORY[2], 3: copy_step}


# What debian_image_layers() leaves installed, with tar downgraded.
BASE_PACKAGES = [
    ("openssl", "1.1.1d-0+deb10u1", None),
    ("libssl1.1", "1.1.1d-0+deb10u1", "openssl"),
    ("libc6", "2.28-10", "glibc"),
    ("bash", "5.0-4", None),
    ("e2fsprogs", "1.44.5-1+deb10u1", None),
    ("tar", "1.30+dfsg-4", None),
    ("zlib1g", "1:1.2.11.dfsg-1", "zlib"),
    ("libidn2-0", "2.0.5-1", "libidn2"),
    ("gcc-8", "8.3.0-6", None),
]


def test_podman_over_tcp(podman: Podman, clair: Any, tmp_path: Path) -> None:
    tag, image_id = _podman_load(podman, tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"tcp://127.0.0.1:{port}"
    with podman_service(podman.base, uri):
        _, doc = _scan(clair, tag, tmp_path, docker_host=uri)
    assert doc["image_id"] == image_id
    assert len(doc["findings"]) == len(DEBIAN_EXPECTED)
    assert os.path.exists(podman.base)
