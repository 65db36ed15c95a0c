from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest
from hypothesis import HealthCheck, settings
from typer.testing import CliRunner

from imagebuild import (
    DebPackage,
    Layer,
    SavedImage,
    debian_files,
    docker_load,
    dpkg_status,
    remove_images,
    write_docker_save,
)
from scanner.cli import app

ROOT = Path(__file__).resolve().parent.parent

# Real registries (docker-registry behind a recording front): registry_plain, registry_basic, ...
pytest_plugins = ["registry_fixtures"]
# Property-based tests (tests/test_fuzz.py): a few seconds each in CI; `--hypothesis-profile=fuzz`
# for a long hunt. Examples share their test's fixtures (each makes its own files).
_FUZZ = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}
settings.register_profile("ci", max_examples=20, derandomize=False, print_blob=True, **_FUZZ)
settings.register_profile("fuzz", max_examples=1000, print_blob=True, **_FUZZ)
settings.load_profile("ci")

# A shell that starts pytest in the background makes it ignore SIGINT, and an ignored signal stays
# ignored across exec: the scanners the Ctrl-C tests start would never see their Ctrl-C. A handled
# signal is reset to the default in a child, where Python installs its own handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a real full disk for ENOSPC paths. Needs root (as in CI)."""
    mount = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TMPDIR of the test's own, in-process and for subprocesses, to prove nothing is left in it."""
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    return tmp


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        pytest.skip(f"no Docker engine answers here: {exc}")
    yield client
    client.close()


@dataclass(frozen=True)
class LoadedImage:
    tag: str
    saved: SavedImage


@pytest.fixture
def load_image(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[Callable[..., LoadedImage]]:
    """Write a docker-save tarball of real layers and `docker load` it; removed afterwards."""
    tags: list[str] = []

    def load(layers: Sequence[Layer], name: str = "img", **kwargs: object) -> LoadedImage:
        tag = f"clair-scan-test/{name}:{uuid.uuid4().hex[:10]}"
        path = tmp_path / f"{uuid.uuid4().hex[:8]}.tar"
        saved = write_docker_save(path, layers, repo_tags=[tag], **kwargs)  # type: ignore[arg-type]
        docker_load(docker_client, path)
        path.unlink()
        tags.append(tag)
        return LoadedImage(tag, saved)

    yield load
    remove_images(docker_client, tags)


def debian_image_layers() -> list[Layer]:
    """Debian 10 in three layers: a base, a layer installing libidn2, one installing gcc-8. Each
    layer with packages carries the whole dpkg status, as apt leaves it."""
    base_packages = [
        DebPackage("openssl", "1.1.1d-0+deb10u1"),
        DebPackage("libssl1.1", "1.1.1d-0+deb10u1", source="openssl"),
        DebPackage("libc6", "2.28-10", source="glibc"),
        DebPackage("bash", "5.0-4"),
        DebPackage("e2fsprogs", "1.44.5-1+deb10u1"),
        DebPackage("tar", "1.30+dfsg-6"),
        DebPackage("zlib1g", "1:1.2.11.dfsg-1", source="zlib"),
    ]
    with_idn = [*base_packages, DebPackage("libidn2-0", "2.0.5-1", source="libidn2")]
    with_gcc = [*with_idn, DebPackage("gcc-8", "8.3.0-6")]
    return [
        debian_files("10", "buster", base_packages),
        Layer(files={"var/lib/dpkg/status": dpkg_status(with_idn), "usr/lib/libidn2.so.0": b"\x7fELF"}),
        Layer(files={"var/lib/dpkg/status": dpkg_status(with_gcc), "usr/bin/gcc-8": b"\x7fELF"}),
    ]


# What Clair holds for debian_image_layers() given tests/data/vulns.json, worked out by hand:
# (vulnerability, package, installed, fixed, severity, index of the layer that added the package)
DEBIAN_EXPECTED = {
    ("CVE-2019-1543", "openssl", "1.1.1d-0+deb10u1", "1.1.1d-0+deb10u2", "High", 0),
    ("DSA-4539-1", "glibc", "2.28-10", "2.28-10+deb10u1", "Defcon1", 0),
    ("CVE-2019-18276", "bash", "5.0-4", None, "Negligible", 0),
    ("CVE-2019-5094", "e2fsprogs", "1.44.5-1+deb10u1", "1.44.5-1+deb10u2", "Medium", 0),
    ("CVE-2019-5188", "e2fsprogs", "1.44.5-1+deb10u1", "1.44.5-1+deb10u3", "Medium", 0),
    ("CVE-2019-18224", "libidn2", "2.0.5-1", "2.0.5-1+deb10u1", "Critical", 1),
    ("CVE-2018-12886", "gcc-8", "8.3.0-6", None, "Unknown", 2),
}
DEBIAN_HISTORY = ["ADD rootfs.tar /", "RUN apt-get install -y libidn2-0", "RUN apt-get install -y gcc-8"]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def run_cli(args: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    """The command in-process, as Typer's CliRunner runs it."""
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, list(args), env=env, terminal_width=200)
    finally:
        os.chdir(old)
    return Run(result.exit_code, result.stdout, result.stderr)


def start_process(args: Sequence[str], cwd: Path, tmpdir: Path) -> subprocess.Popen[str]:
    """`python -m scanner ...` left running, for tests that signal it; TMPDIR is its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "scanner", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmpdir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_process(
    args: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
) -> Run:
    """The command as a real process: `python -m scanner ...`."""
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "scanner", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )
    return Run(done.returncode, done.stdout, done.stderr)


DATA = Path(__file__).resolve().parent / "data" / "vulns.json"


@pytest.fixture
def clair() -> Iterator[object]:
    """A Clair v2.1.8 simulator on 127.0.0.1 with our test vulnerability data, fresh per test."""
    import clairsim

    sim = clairsim.ClairSimulator(clairsim.MemoryStore.from_json(str(DATA)), log_stream=None)
    sim.start()
    yield sim
    sim.stop()
