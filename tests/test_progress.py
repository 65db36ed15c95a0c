"""Progress of long work: a real `docker pull` from a registry on 127.0.0.1, and the plain lines
CI logs get for it."""

from __future__ import annotations

import io
import os
import sys
import uuid

import docker.errors
import pytest
import requests

from imagebuild import Layer, alpine_files
from scanner import backend
from scanner.errors import BackendError
from scanner.terminal import _PlainProgress, _size, _Transfer

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


class Recorder(backend.Progress):
    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.transfers: list[tuple[str, str, int, int | None]] = []

    def status(self, name: str, text: str) -> None:
        self.statuses.append(f"{name}: {text}")

    def transfer(self, name: str, part: str, done: int, total: int | None) -> None:
        self.transfers.append((name, part, done, total))


@pytest.mark.docker
def test_pulling_a_backend_image_shows_each_layers_bytes(registry_plain, load_image, docker_client, capsys):
    layers = [
        alpine_files("3.10.2", [("musl", "1.1.22-r3")]),
        Layer(files={"srv/a": os.urandom(3 << 20)}),
        Layer(files={"srv/b": os.urandom(2 << 20)}),
    ]
    local = load_image(layers, name="pull").tag
    repo = f"clair-scan-test/pull-{uuid.uuid4().hex[:8]}"
    registry_plain.push_engine_image(local, f"{repo}:1")
    ref = f"{registry_plain.host}/{repo}:1"
    # Nothing of it may stay in the engine, or the pull would find its layers there.
    for tag in (ref, local):
        docker_client.images.remove(tag, force=True)
    answer = requests.get(
        f"{registry_plain.url}/v2/{repo}/manifests/1", headers={"Accept": MANIFEST}, timeout=10
    )
    blobs = {d["digest"].split(":")[1][:12]: d["size"] for d in answer.json()["layers"]}

    recorder = Recorder()
    backend._ensure_image(docker_client, ref, "missing", recorder)
    docker_client.images.get(ref)  # pulled
    assert recorder.statuses == [f"backend: pulling {ref}"]
    assert {name for name, *_ in recorder.transfers} == {f"pulling {ref}"}
    # A row per layer, as `docker pull` shows them: its compressed size, counted up to the end.
    last = {part: (done, total) for _, part, done, total in recorder.transfers}
    assert {part: total for part, (_, total) in last.items()} == blobs
    assert all(done == total for done, total in last.values())
    big = max(blobs, key=lambda part: blobs[part])
    counts = [done for _, part, done, _ in recorder.transfers if part == big]
    assert counts == sorted(counts) and counts[0] < counts[-1]  # counted as it came, not just the end

    # In a CI log the same pull is a few lines, not one per event.
    docker_client.images.remove(ref, force=True)
    plain = _PlainProgress()
    backend._ensure_image(docker_client, ref, "always", plain)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"backend: pulling {ref}"
    pulling = [line for line in lines if line.startswith(f"pulling {ref}: ")]
    assert 1 < len(pulling) <= 13, lines
    total = sum(blobs.values())
    assert pulling[-1] == f"pulling {ref}: {_size(total)} of {_size(total)} (100%), 3 of 3 layers done"
    docker_client.images.remove(ref, force=True)


@pytest.mark.docker
def test_a_pull_the_registry_refuses_is_a_backend_error(registry_plain, docker_client):
    ref = f"{registry_plain.host}/clair-scan-test/absent-{uuid.uuid4().hex[:8]}:1"
    with pytest.raises(BackendError) as failed:
        backend._ensure_image(docker_client, ref, "missing", Recorder())
    assert failed.value.message.startswith(f"cannot pull {ref}: ")
    assert "bundle load" in (failed.value.hint or "")
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(ref)


def test_plain_transfer_lines_come_per_tenth_and_not_more_than_once_a_second():
    transfer = _Transfer()
    shown = []
    for n in range(0, 1001):  # 1000 reports over 10 s of a 1000-byte transfer
        line = transfer.update("", n, 1000, now=n / 100)
        if line is not None:
            shown.append(line)
    assert shown[0] == "0 B of 1.0 kB (0%)"
    assert shown[-1] == "1.0 kB of 1.0 kB (100%)"
    assert len(shown) == 11  # the start, then each tenth (a second apart here)

    fast = _Transfer()
    lines = [fast.update("", n, 1000, now=n / 1000) for n in range(0, 1001)]  # all within 1 s
    assert [line for line in lines if line] == ["0 B of 1.0 kB (0%)", "1.0 kB of 1.0 kB (100%)"]

    unknown = _Transfer()
    lines = [unknown.update("", n * 1000, None, now=n / 10) for n in range(0, 200)]  # 20 s
    assert [line for line in lines if line] == [f"{_size(n * 1000)}" for n in (0, 50, 100, 150)]
    stalled = [unknown.update("", 199_000, None, now=20 + n) for n in range(0, 30)]
    assert [line for line in stalled if line] == ["199.0 kB"]  # once, not every 5 s while stuck

    # A pull: one small layer done at once, then a bigger one the engine starts on later.
    growing = _Transfer()
    lines = [growing.update("a", 300, 300, now=0.0)]
    lines += [growing.update("b", n * 100, 1000, now=0.01 * n) for n in range(0, 11)]
    assert [line for line in lines if line] == [
        "300 B of 300 B (100%)",
        "1.3 kB of 1.3 kB (100%), 2 of 2 layers done",
    ]


def test_plain_progress_keeps_lines_whole_across_threads(monkeypatch):
    import threading

    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    plain = _PlainProgress()

    def chatter(n: int) -> None:
        for i in range(300):
            plain.status(f"image{n}", f"step {i}")

    threads = [threading.Thread(target=chatter, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1200
    for n in range(4):
        assert [line for line in lines if line.startswith(f"image{n}: ")] == [
            f"image{n}: step {i}" for i in range(300)
        ]
