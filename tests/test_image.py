"""The image stage against a real engine: layers from the image config, and the export, by both of
its routes (a connection of its own for a plain engine, the docker SDK for TLS or ssh)."""

from __future__ import annotations

import hashlib
import os

import pytest

from conftest import debian_image_layers
from imagebuild import Filler, Layer
from scanner import dockerapi
from scanner.errors import DockerError, UsageError
from scanner.sources import engine as image


def _sha(blob) -> str:
    with open(blob.path, "rb") as handle:
        handle.seek(blob.offset)
        return "sha256:" + hashlib.sha256(handle.read(blob.size)).hexdigest()


@pytest.mark.parametrize("route", ["own connection", "docker SDK"])
def test_export_hands_out_every_layer_whole(load_image, docker_client, tmp_path, monkeypatch, route):
    sent: list[str] = []
    if route == "docker SDK":
        monkeypatch.setattr(image, "plain_docker_endpoint", lambda environ: None)  # as for TLS or ssh
    else:
        send_save = dockerapi.send_save
        monkeypatch.setattr(dockerapi, "send_save", lambda *a: sent.append(a[1]) or send_save(*a))
    engine = image.Engine()
    loaded = load_image([*debian_image_layers(), Layer(files={"data/blob": Filler(3 << 20)})])
    img = image.inspect(engine, loaded.tag)
    assert [layer.diff_id for layer in img.layers] == list(loaded.saved.diff_ids)
    assert img.id == docker_client.api.inspect_image(loaded.tag)["Id"]
    workdir = tmp_path / "work"
    workdir.mkdir()
    with image.exported(engine, img, str(workdir)) as files:
        for layer in img.layers:
            blob = files.wait(layer.index, 60)
            blob.available(blob.size - 1)  # waits until the whole layer is on disk
            assert _sha(blob) == layer.diff_id
    assert sent == ([img.id] if route == "own connection" else [])
    assert os.listdir(workdir) == []  # the spool went with the export


def test_export_of_an_image_the_engine_lost_is_a_docker_error(load_image, docker_client, tmp_path):
    engine = image.Engine()
    loaded = load_image(debian_image_layers()[:1])
    img = image.inspect(engine, loaded.tag)
    docker_client.images.remove(loaded.tag, force=True)
    with image.exported(engine, img, str(tmp_path)) as files, pytest.raises(DockerError) as raised:
        files.wait(0, 60)
    assert "docker save failed" in str(raised.value)


@pytest.mark.parametrize("route", ["own connection", "docker SDK"])
def test_what_the_engine_refuses_to_inspect_is_a_usage_error(monkeypatch, route):
    if route == "docker SDK":
        monkeypatch.setattr(image, "plain_docker_endpoint", lambda environ: None)
    engine = image.Engine()
    with pytest.raises(
        UsageError, match=r"^image not found: clair-scan-test/does-not-exist:1 \(build or pull it first"
    ):
        image.inspect(engine, "clair-scan-test/does-not-exist:1")
    with pytest.raises(UsageError) as raised:
        image.inspect(engine, "Not/A/Valid:Reference")
    assert str(raised.value).startswith("cannot use image 'Not/A/Valid:Reference': ")
    assert "invalid reference format" in str(raised.value) and "{" not in str(raised.value)


@pytest.mark.parametrize(
    "environ",
    [
        {"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
        {"DOCKER_HOST": "tcp://127.0.0.1:1", "DOCKER_TLS_VERIFY": "1"},  # the docker SDK's route
    ],
)
def test_an_engine_that_is_not_there_is_a_docker_error(environ):
    engine = image.Engine(environ)
    with pytest.raises(DockerError) as raised:
        engine.check()
    assert str(raised.value).startswith(f"cannot reach the Docker engine at {environ['DOCKER_HOST']}: ")
