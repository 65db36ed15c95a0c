from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest
from typer.testing import CliRunner

from imagebuild import Layer, SavedImage, debian_files, docker_load, remove_images, write_docker_save
from scanner.cli import app

ROOT = Path(__file__).resolve().parent.parent


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
    """A Debian 10 base with packages our test data holds vulnerabilities for, and an app layer."""
    base = debian_files(
        version_id="10",
        codename="buster",
        packages=[
            ("openssl", "1.1.1d-0+deb10u1"),
            ("libssl1.1", "1.1.1d-0+deb10u1"),
            ("zlib1g", "1:1.2.11.dfsg-1"),
            ("bash", "5.0-4"),
        ],
    )
    app = Layer(files={"srv/app/main.py": b"print('hello')\n"})
    return [base, app]


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
