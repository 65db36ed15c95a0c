"""Distilled scans: one small layer of the files Clair reads, from the engine or from an archive,
against the Clair simulator, compared with the per-layer scan of the same image."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import tarfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import docker.errors
import pytest

from conftest import DEBIAN_EXPECTED, debian_image_layers, run_cli, run_process, start_process
from imagebuild import (
    DebPackage,
    Filler,
    Layer,
    alpine_files,
    debian_files,
    dpkg_status,
    write_docker_save,
    write_layer,
)
from scanner.sources import distill

pytestmark = pytest.mark.docker

DEBIAN_BASE = [
    DebPackage("openssl", "1.1.1d-0+deb10u1"),
    DebPackage("libc6", "2.28-10", source="glibc"),
    DebPackage("bash", "5.0-4"),
]
RPM_DB = bytes(range(256)) * 64  # Clair hands this to `rpm`; its bytes must arrive unchanged
REDHAT = b"CentOS Linux release 7.7.1908 (Core)\n"


def _upgraded() -> list[Layer]:
    """openssl fixed in an upper layer: its CVE must disappear in both modes."""
    fixed = [DebPackage("openssl", "1.1.1d-0+deb10u2"), *DEBIAN_BASE[1:]]
    return [
        debian_files("10", "buster", DEBIAN_BASE),
        Layer(files={"var/lib/dpkg/status": dpkg_status(fixed)}),
    ]


def _opaque() -> list[Layer]:
    """An upper layer replacing var/lib/dpkg wholesale (an opaque directory)."""
    return [
        debian_files("10", "buster", DEBIAN_BASE),
        Layer(
            files={"var/lib/dpkg/status": dpkg_status([DebPackage("bash", "5.0-4")])},
            opaque_dirs=["var/lib/dpkg"],
        ),
    ]


def _os_release_in_upper_layer() -> list[Layer]:
    """The symlink comes in a layer above its target, and the target is replaced again later."""
    base = debian_files("10", "buster", DEBIAN_BASE)
    base = Layer(files=dict(base.files), dirs=base.dirs)  # no etc/os-release yet
    return [
        base,
        Layer(symlinks={"etc/os-release": "/usr/lib/os-release"}),
        Layer(files={"usr/lib/os-release": base.files["usr/lib/os-release"], "opt/x": b"x"}),
    ]


SHAPES = {
    "dpkg-three-layers": debian_image_layers,
    "dpkg-upgraded-above": _upgraded,
    "dpkg-opaque-dir": _opaque,
    "dpkg-symlink-in-upper-layer": _os_release_in_upper_layer,
    "apk": lambda: [
        alpine_files("3.10.2", [("musl", "1.1.22-r3"), ("curl", "7.65.0-r0"), ("openssl", "1.1.1c-r0")]),
        Layer(files={"srv/app": b"app"}),
    ],
    "rpm": lambda: [Layer(files={"etc/centos-release": REDHAT, "var/lib/rpm/Packages": RPM_DB})],
    "no-package-manager": lambda: [Layer(files={"bin/app": b"\x7fELF", "etc/hostname": b"x\n"})],
}


def _args(clair, *extra: str) -> list[str]:
    return ["scan", *extra, "--clair", clair.url, "--ip", "127.0.0.1", "--format", "json", "--no-report"]


def _outcome(result) -> tuple[int, str, frozenset[tuple], list[str]]:
    """What must not depend on the mode: exit code, namespace, findings, and the summary's words
    (the part about layers aside)."""
    doc = json.loads(result.stdout)["images"][0]
    found = frozenset(
        (f["vulnerability"], f["package"], f["installed"], f["fixed"], f["severity"]) for f in doc["findings"]
    )
    summary = [line.split("; ")[:-1] for line in result.stderr.splitlines() if "unapproved" in line]
    return result.code, doc["namespace"], found, summary[0] if summary else []


def _both_modes(clair, *source: str, tmp_path: Path):
    log = tmp_path / "distilled.log"
    distilled = run_cli([*_args(clair, *source), "--log", str(log)], cwd=tmp_path)
    per_layer = run_cli(_args(clair, *source, "--per-layer"), cwd=tmp_path)
    print(log.read_text())  # shown when a comparison fails
    assert distilled.code in (0, 1), distilled.stderr
    assert per_layer.code in (0, 1), per_layer.stderr
    return distilled, per_layer


def _posted(clair) -> list[dict]:
    return [
        json.loads(r.body)["Layer"] for r in clair.requests if r.method == "POST" and r.path == "/v1/layers"
    ]


def _distill_containers(docker_client) -> list:
    # sparse: no inspection of each, which fails for a container removed in between
    return docker_client.containers.list(all=True, sparse=True, filters={"label": distill.DISTILL_LABEL})


@pytest.mark.parametrize("shape", SHAPES)
def test_engine_image_distilled_finds_what_per_layer_finds(shape, clair, load_image, tmp_path, docker_client):
    image = load_image(SHAPES[shape]())
    distilled, per_layer = _both_modes(clair, image.tag, tmp_path=tmp_path)
    assert _outcome(distilled) == _outcome(per_layer)
    doc = json.loads(distilled.stdout)["images"][0]
    assert doc["distilled"] is True and all("layer" not in f for f in doc["findings"])
    # Clair got one layer without a parent, named by the image ID, then the per-layer chain.
    posted = _posted(clair)
    assert posted[0]["Name"] == distill.layer_name(image.saved.image_id)
    assert posted[0]["ParentName"] == ""
    assert len(posted) == 1 + len(image.saved.diff_ids)
    assert _distill_containers(docker_client) == []


@pytest.mark.parametrize(("layout", "gzip_layers"), [("classic", False), ("oci", True)])
@pytest.mark.parametrize("shape", SHAPES)
def test_archive_distilled_finds_what_per_layer_finds(shape, layout, gzip_layers, clair, tmp_path):
    tarball = tmp_path / "image.tar"
    write_docker_save(
        tarball, SHAPES[shape](), repo_tags=["archived/app:1"], layout=layout, gzip_layers=gzip_layers
    )
    distilled, per_layer = _both_modes(clair, "--archive", str(tarball), tmp_path=tmp_path)
    assert _outcome(distilled) == _outcome(per_layer)
    assert json.loads(distilled.stdout)["images"][0]["image"] == "archived/app:1"


def test_the_known_debian_findings_in_both_modes(clair, load_image, tmp_path):
    # Guards the comparisons above against both modes being wrong the same way.
    image = load_image(debian_image_layers())
    distilled, _ = _both_modes(clair, image.tag, tmp_path=tmp_path)
    assert _outcome(distilled)[2] == {row[:5] for row in DEBIAN_EXPECTED}
    assert _outcome(distilled)[1] == "debian:10"


def test_a_deleted_package_database(clair, load_image, tmp_path):
    """An upper layer deletes var/lib/dpkg/status. Clair v2 ignores whiteouts (CLAIR_V2_API.md
    §11): per layer, the top layer has no database and inherits its parent's packages. The
    distilled layer holds what the image's filesystem holds: no database, so no packages."""
    layers = [debian_files("10", "buster", DEBIAN_BASE), Layer(whiteouts=["var/lib/dpkg/status"])]
    image = load_image(layers)
    distilled, per_layer = _both_modes(clair, image.tag, tmp_path=tmp_path)
    assert _outcome(per_layer)[2] == {
        ("CVE-2019-1543", "openssl", "1.1.1d-0+deb10u1", "1.1.1d-0+deb10u2", "High"),
        ("DSA-4539-1", "glibc", "2.28-10", "2.28-10+deb10u1", "Defcon1"),
        ("CVE-2019-18276", "bash", "5.0-4", None, "Negligible"),
    }
    assert (distilled.code, _outcome(distilled)[1:3]) == (0, ("debian:10", frozenset()))
    tarball = tmp_path / "deleted.tar"
    write_docker_save(tarball, layers, layout="oci", gzip_layers=True)
    from_archive = run_cli(_args(clair, "--archive", str(tarball)), cwd=tmp_path)
    assert _outcome(from_archive)[:3] == _outcome(distilled)[:3]


def test_the_distilled_layer_holds_the_files_clair_reads(tmp_path):
    layers = [
        debian_files("10", "buster", DEBIAN_BASE).merge(
            Layer(
                files={"var/lib/rpm/Packages": RPM_DB, "etc/redhat-release": REDHAT, "big": Filler(1 << 20)}
            )
        ),
        Layer(files={"etc/lsb-release": b"DISTRIB_ID=Debian\n"}, symlinks={"lib": "usr/lib"}),
        Layer(whiteouts=["etc/redhat-release"]),
    ]
    blobs = [write_layer(layer, tmp_path / f"l{i}.tar", compress=i == 1) for i, layer in enumerate(layers)]
    with ExitStack() as stack:
        streams = [stack.enter_context(open(b.path, "rb")) for b in blobs]
        blob = distill.from_layers(streams, str(tmp_path / "out.tar"), str(tmp_path))
    with tarfile.open(blob.path) as tar:
        members = {m.name: m for m in tar}
        content = {name: tar.extractfile(m).read() for name, m in members.items()}
    assert sorted(members) == sorted(
        [
            "etc/os-release",
            "usr/lib/os-release",
            "etc/lsb-release",
            "var/lib/dpkg/status",
            "var/lib/rpm/Packages",
        ]
    )
    assert all(m.isfile() for m in members.values())  # the symlink became a regular file
    assert content["etc/os-release"] == content["usr/lib/os-release"]
    assert b"ID=debian" in content["etc/os-release"]
    assert content["var/lib/rpm/Packages"] == RPM_DB
    assert content["var/lib/dpkg/status"] == dpkg_status(DEBIAN_BASE)
    assert blob.size < 64 * 1024


def test_files_under_a_symlinked_directory_and_across_layers(tmp_path):
    """apk's database reached through a `lib` symlink made in a later layer; a whiteout of the
    symlink's target directory removes it again."""
    installed = b"P:musl\nV:1.1.22-r3\n\n"
    layers = [
        Layer(files={"usr/lib/apk/db/installed": installed, "etc/alpine-release": b"3.10.2\n"}),
        Layer(symlinks={"lib": "usr/lib"}),
    ]

    def distilled(stack_layers: list[Layer]) -> dict[str, bytes]:
        with ExitStack() as stack:
            streams = [
                stack.enter_context(open(write_layer(layer, tmp_path / f"s{i}.tar").path, "rb"))
                for i, layer in enumerate(stack_layers)
            ]
            blob = distill.from_layers(streams, str(tmp_path / "o.tar"), str(tmp_path))
        with tarfile.open(blob.path) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar}

    assert distilled(layers)["lib/apk/db/installed"] == installed
    assert "lib/apk/db/installed" not in distilled([*layers, Layer(whiteouts=["usr/lib/apk"])])


def test_a_rescan_creates_no_container_and_sends_nothing(clair, load_image, tmp_path, docker_client):
    image = load_image(debian_image_layers())
    first = run_cli(_args(clair, image.tag), cwd=tmp_path)
    assert first.code == 1, first.stderr
    clair.clear_records()
    since = time.time()
    again = run_cli(_args(clair, image.tag), cwd=tmp_path)
    until = time.time() + 0.5
    assert again.code == 1
    assert _outcome(again) == _outcome(first)
    assert json.loads(again.stdout)["images"][0]["layers_sent"] == 0
    name = distill.layer_name(image.saved.image_id)
    # Besides asking which API Clair speaks (/indexer/... then /v1/namespaces), one question.
    assert [(r.method, r.path) for r in clair.requests if r.path.startswith("/v1/layers")] == [
        ("GET", f"/v1/layers/{name}?features&vulnerabilities")
    ]
    events = docker_client.api.events(
        since=f"{since:.9f}", until=f"{until:.9f}", filters={"type": "container"}, decode=True
    )
    created = [e for e in events if e.get("Action") == "create" and "clair-scan-distill" in str(e)]
    assert created == []
    # The first scan's container: created and gone again.
    assert _distill_containers(docker_client) == []


class _RefusingEngine:
    """The real engine behind a unix socket that refuses to create containers, as an
    authorization plugin does; every other request is passed through unchanged."""

    REFUSAL = b'{"message":"authorization denied by plugin clair-scan-test: no containers"}'

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.refused = 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            method, path = head.split(b" ", 2)[:2]
            if method == b"POST" and path.split(b"?")[0].endswith(b"/containers/create"):
                self.refused += 1
                client.sendall(
                    b"HTTP/1.0 403 Forbidden\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(self.REFUSAL)}\r\n\r\n".encode()
                    + self.REFUSAL
                )
                return
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as engine:
                engine.connect("/var/run/docker.sock")
                engine.sendall(head)

                def upstream() -> None:
                    with contextlib.suppress(OSError):
                        while data := client.recv(65536):
                            engine.sendall(data)

                threading.Thread(target=upstream, daemon=True).start()
                with contextlib.suppress(OSError):
                    while data := engine.recv(1 << 20):
                        client.sendall(data)
                    # Ends the answer (HTTP/1.0) and wakes the thread still reading the client.
                    client.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()


def test_an_image_the_engine_cannot_make_a_container_of_is_distilled_from_its_export(
    clair, load_image, tmp_path, docker_client
):
    image = load_image(debian_image_layers())
    refusing = _RefusingEngine(tmp_path / "engine.sock")
    env = {"DOCKER_HOST": f"unix://{refusing.path}"}
    log = tmp_path / "debug.log"
    try:
        distilled = run_process([*_args(clair, image.tag), "--log", str(log)], env=env, cwd=tmp_path)
    finally:
        refusing.close()
    per_layer = run_cli(_args(clair, image.tag, "--per-layer"), cwd=tmp_path)
    assert refusing.refused == 1, distilled.stderr
    assert _outcome(distilled) == _outcome(per_layer)
    assert _outcome(distilled)[0] == 1
    assert "cannot create a container from" in log.read_text()
    assert "authorization denied by plugin" in log.read_text()
    assert _posted(clair)[0]["Name"] == distill.layer_name(image.saved.image_id)
    assert _distill_containers(docker_client) == []


@pytest.mark.parametrize(
    ("signum", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
@pytest.mark.parametrize("moment", ["creating", "copying"])
def test_an_interrupt_removes_the_container(
    clair, load_image, tmp_path, docker_client, moment, signum, code, word
):
    """Interrupted while the engine creates the container (it is listed before the scan hears
    back) or while the files are copied: either way the container goes."""
    # A big package database makes the copy last long enough to be interrupted in it.
    layers = [
        debian_files("10", "buster", DEBIAN_BASE),
        Layer(files={"var/lib/rpm/Packages": Filler(150 << 20)}),
    ]
    image = load_image(layers)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    log = tmp_path / "scan.log"
    process = start_process([*_args(clair, image.tag), "--log", str(log)], work, tmp)
    deadline = time.monotonic() + 60

    def reached() -> bool:
        if moment == "creating":
            return bool(_distill_containers(docker_client))
        return log.exists() and "created from" in log.read_text()

    while not reached() and time.monotonic() < deadline:
        time.sleep(0.002)
    assert reached(), f"the scan never got to {moment}"
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert word in err and "Traceback" not in err
    assert "var/lib/rpm/Packages: copied" not in log.read_text()  # cut short
    assert _distill_containers(docker_client) == []
    assert list(tmp.iterdir()) == []
    assert list(work.iterdir()) == []
    assert _posted(clair) == []  # interrupted before anything reached Clair


def test_a_failed_scan_leaves_no_container(clair, load_image, tmp_path, docker_client):
    image = load_image(debian_image_layers())
    clair.fail_next(400, count=None, method="POST", path="/v1/layers")
    result = run_cli(_args(clair, image.tag), cwd=tmp_path)
    assert result.code == 3, result.stderr
    assert _distill_containers(docker_client) == []


def test_an_unreadable_archive_is_a_usage_error(clair, tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar at all" * 100)
    result = run_cli(_args(clair, "--archive", str(bad)), cwd=tmp_path)
    assert result.code == 2
    assert "is not a readable docker save archive" in result.stderr
    assert "Traceback" not in result.stderr


def test_layer_name_fits_clair_and_follows_the_rules_version():
    name = distill.layer_name("sha256:" + "ab" * 32)
    assert len(name) <= 128 and distill.RULES_VERSION in name and name.endswith("ab" * 32)


def test_the_docker_sdk_route_distills_the_same_files(load_image, tmp_path):
    """Engines behind TLS or ssh are asked through the docker SDK: the same requests, the same
    layer. Here the SDK is made to reach the local engine."""
    from scanner.sources import engine as image_stage

    loaded = load_image(debian_image_layers())
    contents = []
    for route in ("stdlib", "sdk"):
        engine = image_stage.Engine()
        if route == "sdk":
            engine.address = None  # as for a TLS or ssh DOCKER_HOST
        img = image_stage.inspect(engine, loaded.tag)
        workdir = tmp_path / route
        workdir.mkdir()
        with (
            distill.from_engine(engine, img, str(workdir)) as files,
            tarfile.open(files.wait(0, 10).path) as tar,
        ):
            contents.append({m.name: tar.extractfile(m).read() for m in tar})
        assert list(workdir.iterdir()) == []
    assert contents[0] == contents[1]
    assert sorted(contents[0]) == ["etc/os-release", "usr/lib/os-release", "var/lib/dpkg/status"]


def test_a_distilled_scan_loads_neither_the_docker_sdk_nor_requests(clair, load_image, tmp_path):
    image = load_image(debian_image_layers())
    for scan in ("cold", "rescan"):
        done = run_process(_args(clair, image.tag), env={"PYTHONPROFILEIMPORTTIME": "1"}, cwd=tmp_path)
        assert done.code == 1, done.stderr
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
        assert "scanner.sources.distill" in imported, scan
        assert not {"docker", "requests", "urllib3"} & imported, scan
    assert len(_posted(clair)) == 1


def test_the_table_and_reports_show_no_layer_when_distilled(clair, load_image, tmp_path):
    from reportcheck import validate_gitlab_report

    image = load_image(
        debian_image_layers(), history=["ADD rootfs.tar /", "RUN apt-get install -y libidn2-0", "RUN x"]
    )
    args = ["scan", image.tag, "--clair", clair.url, "--ip", "127.0.0.1"]
    distilled = run_cli(args, env={"COLUMNS": "200"}, cwd=tmp_path)
    assert distilled.code == 1, distilled.stderr
    assert "CVE-2019-18224" in distilled.stdout
    assert "Layer" not in distilled.stdout and "apt-get install" not in distilled.stdout
    assert "distilled layer sent to Clair" in distilled.stderr
    report = json.loads((tmp_path / "gl-container-scanning-report.json").read_text())
    validate_gitlab_report(report)
    assert len(report["vulnerabilities"]) == len(DEBIAN_EXPECTED)
    per_layer = run_cli([*args, "--per-layer"], env={"COLUMNS": "200"}, cwd=tmp_path)
    assert "Layer" in per_layer.stdout and "RUN apt-get install -y libidn2-0" in per_layer.stdout


def test_a_plain_archive_is_walked_without_reading_the_layers_contents(tmp_path):
    """Only tar headers and the kept files are read from a plain archive on disk; the 64 MiB
    file in the upper layer is skipped by seeking. rchar counts every byte read(2) returned."""
    tarball = tmp_path / "image.tar"
    layers = [debian_files("10", "buster", DEBIAN_BASE), Layer(files={"opt/blob": Filler(64 << 20)})]
    write_docker_save(tarball, layers, repo_tags=["big/app:1"], layout="oci")

    def read_so_far() -> int:
        io_stats = Path("/proc/self/io").read_text().split()
        return int(io_stats[io_stats.index("rchar:") + 1])

    before = read_so_far()
    with ExitStack() as stack:
        (found,) = distill.read_archive(str(tarball), str(tmp_path), stack)
        names = distill.files_of(found.files.wait(0, 0).path)
    assert read_so_far() - before < 4 << 20
    assert tarball.stat().st_size > 64 << 20
    assert names == ["etc/os-release", "usr/lib/os-release", "var/lib/dpkg/status"]
    assert found.image.name == "big/app:1" and found.image.distilled


def test_a_container_removed_from_outside_during_the_copy_fails_the_scan(
    clair, load_image, tmp_path, docker_client
):
    """Another tool removing the container mid-copy makes the absent files look absent; the scan
    must fail rather than report an image without packages."""
    image = load_image(
        [debian_files("10", "buster", DEBIAN_BASE), Layer(files={"var/lib/rpm/Packages": Filler(150 << 20)})]
    )
    log = tmp_path / "scan.log"
    process = start_process([*_args(clair, image.tag), "--log", str(log)], tmp_path, tmp_path)
    deadline = time.monotonic() + 60
    while not (log.exists() and "created from" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.002)
    for container in _distill_containers(docker_client):
        with contextlib.suppress(docker.errors.APIError):
            docker_client.api.remove_container(container.id, force=True)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 3, err
    assert "Traceback" not in err
    assert "went away" in err or "is broken" in err or "cannot copy" in err
    assert _posted(clair) == []
    assert _distill_containers(docker_client) == []


def test_full_disk_while_copying_is_a_file_system_error(clair, load_image, tmp_path, tiny_fs, docker_client):
    image = load_image(
        [debian_files("10", "buster", DEBIAN_BASE), Layer(files={"var/lib/rpm/Packages": RPM_DB * 64})]
    )
    result = run_process(_args(clair, image.tag), env={"TMPDIR": str(tiny_fs)}, cwd=tmp_path)
    assert result.code == 3, result.stderr
    assert "No space left on device" in result.stderr and "Traceback" not in result.stderr
    assert "Docker engine" not in result.stderr  # the disk failed, not the engine
    assert list(Path(tiny_fs).iterdir()) == []
    assert _distill_containers(docker_client) == []


def test_a_gzipped_archive_is_distilled_as_it_streams(clair, tmp_path):
    import gzip
    import shutil

    tarball = tmp_path / "image.tar"
    write_docker_save(tarball, debian_image_layers(), repo_tags=["gz/app:1"], layout="classic")
    with open(tarball, "rb") as src, gzip.open(tmp_path / "image.tar.gz", "wb", compresslevel=1) as out:
        shutil.copyfileobj(src, out)
    distilled, per_layer = _both_modes(clair, "--archive", str(tmp_path / "image.tar.gz"), tmp_path=tmp_path)
    assert _outcome(distilled) == _outcome(per_layer)
    assert _outcome(distilled)[2] == {row[:5] for row in DEBIAN_EXPECTED}
