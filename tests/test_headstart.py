"""The export's head start: the command line read before the CLI loads, and the early `docker save`
handed to the pipeline, checked against a real engine and the Clair simulator."""

from __future__ import annotations

import json
import signal
import time

import pytest
import typer.main

from conftest import debian_image_layers, run_cli, run_process, start_process
from imagebuild import Layer, save_events
from scanner import dockerapi, headstart
from scanner.cli import app
from scanner.errors import DockerError
from scanner.names import plain_docker_endpoint

URL = "http://127.0.0.1:6060"


@pytest.fixture(autouse=True)
def _no_stale_head_start():
    yield
    headstart.claim("", None)  # closes one a test left unclaimed


def test_reader_knows_every_scan_option_as_the_cli_declares_it():
    scan = typer.main.get_command(app).commands["scan"]  # type: ignore[attr-defined]
    options = [p for p in scan.params if isinstance(p, typer.core.TyperOption)]
    flags = {o for p in options if p.is_flag for o in p.opts}
    values = {o for p in options if not p.is_flag for o in p.opts}
    assert flags == headstart.FLAG_OPTIONS
    assert values == headstart.VALUE_OPTIONS
    clair = next(p for p in options if p.name == "clair")
    assert clair.opts == ["--clair"] and clair.envvar == "CLAIR_ADDR"


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["scan", "img", "--clair", URL, "--per-layer"], {}, ("img", URL)),
        (["scan", "img", "--clair", URL], {}, None),  # distilled: nothing to export
        (
            ["scan", "--clair=u:1", "-t", "High", "--no-report", "img", "other", "--per-layer"],
            {},
            ("img", "u:1"),
        ),
        (
            ["scan", "--per-layer", "-w", "wl.yml", "img", "--format", "json"],
            {"CLAIR_ADDR": "env:1"},
            ("img", "env:1"),
        ),
        (["scan", "img", "--clair", "arg:1", "--per-layer"], {"CLAIR_ADDR": "env:1"}, ("img", "arg:1")),
        (["scan", "--per-layer", "--clair", URL, "--", "-odd-name"], {}, ("-odd-name", URL)),
        (["scan", "img"], {}, None),  # the appliance: Clair is not known yet
        (["scan", "img"], {"CLAIR_ADDR": ""}, None),
        (["scan", "--archive", "a.tar", "--clair", URL], {}, None),  # no engine image
        (["scan", "img", "--clair", URL, "--frobnicate"], {}, None),  # unknown: Typer will say
        (["scan", "img", "--clair", URL, "-tHigh"], {}, None),  # valid, but not read here
        (["scan", "img", "--clair", URL, "--help"], {}, None),
        (["scan", "img", "--clair"], {}, None),
        (["scan", "img", "-w=x", "--clair", URL], {}, None),
        (["status", "--clair", URL], {}, None),
        ([], {}, None),
    ],
)
def test_the_scan_request_is_read_as_typer_reads_it(argv, env, expected):
    assert headstart.scan_request(argv, env) == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "/var/run/docker.sock"),
        ({"DOCKER_HOST": ""}, "/var/run/docker.sock"),
        ({"DOCKER_HOST": "unix:///run/user/1000/docker.sock"}, "/run/user/1000/docker.sock"),
        ({"DOCKER_HOST": "tcp://docker:2375"}, ("docker", 2375)),
        ({"DOCKER_HOST": "tcp://127.0.0.1"}, ("127.0.0.1", 2375)),
        ({"DOCKER_HOST": "tcp://docker:2376", "DOCKER_TLS_VERIFY": "1"}, None),
        ({"DOCKER_HOST": "tcp://docker:2376", "DOCKER_CERT_PATH": "/certs"}, None),
        ({"DOCKER_HOST": "ssh://user@host"}, None),
        ({"DOCKER_HOST": "tcp://docker:notaport"}, None),
    ],
)
def test_only_a_plain_engine_gets_a_head_start(env, expected):
    assert plain_docker_endpoint(env) == expected


def test_a_cold_scan_exports_once_through_the_head_start(clair, load_image, docker_client, tmp_path):
    image = load_image(debian_image_layers())
    image_id = docker_client.api.inspect_image(image.tag)["Id"]
    log = tmp_path / "debug.log"
    args = ["scan", image.tag, "--per-layer", "--clair", clair.url, "--ip", "127.0.0.1", "--format", "json"]
    since = time.time()
    cold = run_process([*args, "--no-report", "--log", str(log)], cwd=tmp_path)
    assert cold.code == 1, cold.stderr  # the Debian layer has known vulnerabilities
    assert "using the head start's request" in log.read_text()
    assert json.loads(cold.stdout)["images"][0]["layers_sent"] == len(image.saved.diff_ids)
    assert save_events(docker_client, image_id, since, time.time()) == 1
    assert len(clair.downloads) == len(image.saved.diff_ids)  # Clair fetched what the head start exported

    since = time.time()
    rescan = run_process([*args, "--no-report"], cwd=tmp_path)
    assert rescan.code == 1, rescan.stderr
    assert json.loads(rescan.stdout)["images"][0]["layers_sent"] == 0
    assert (
        save_events(docker_client, image_id, since, time.time()) == 0
    )  # Clair holds it: no head start, no export


def test_a_head_start_for_an_image_whose_tag_moved_is_dropped(
    clair, load_image, docker_client, tmp_path, request
):
    first = load_image(debian_image_layers())
    second = load_image([*debian_image_layers(), Layer(files={"etc/second": b"2\n"})])
    headstart.begin(["scan", first.tag, "--per-layer", "--clair", clair.url], {})
    started = headstart._started
    assert started is not None, "the head start should have sent a save"
    first_id = docker_client.api.inspect_image(first.tag)["Id"]
    docker_client.images.get(second.tag).tag(first.tag)  # the tag now names another image
    request.addfinalizer(lambda: docker_client.images.remove(first_id, force=True))
    log = tmp_path / "debug.log"
    args = ["scan", first.tag, "--per-layer", "--clair", clair.url, "--ip", "127.0.0.1", "--format", "json"]
    result = run_cli([*args, "--no-report", "--log", str(log)])
    assert result.code == 1, result.stderr
    scanned = json.loads(result.stdout)["images"][0]
    assert scanned["image_id"] == docker_client.api.inspect_image(second.tag)["Id"]
    assert scanned["layers"] == len(second.saved.diff_ids)
    assert "head start" not in log.read_text()
    assert started.save.sock.fileno() == -1  # closed: the engine stops the stale export
    assert headstart._started is None


def test_an_unclaimed_head_start_is_closed_by_the_next_claim(clair, load_image):
    image = load_image(debian_image_layers())
    headstart.begin(["scan", image.tag, "--per-layer", "--clair", clair.url], {})
    started = headstart._started
    assert started is not None
    assert headstart.claim(image.tag, "http://elsewhere:6060") is None
    assert started.save.sock.fileno() == -1


def test_no_head_start_when_clair_does_not_answer_as_expected(clair, load_image):
    image = load_image(debian_image_layers())
    clair.fail_next(500, method="GET")
    headstart.begin(["scan", image.tag, "--per-layer", "--clair", clair.url], {})
    assert headstart._started is None  # an error answer is left to the normal path to report
    headstart.begin(["scan", "clair-scan-test/no-such-image:1", "--per-layer", "--clair", clair.url], {})
    assert headstart._started is None
    headstart.begin(["scan", image.tag, "--per-layer", "--clair", "http://user:secret@127.0.0.1:1"], {})
    assert headstart._started is None
    headstart.begin(["status", "--clair", clair.url], {})
    assert headstart._started is None


def test_the_engine_refusing_the_save_is_a_docker_error(docker_client):
    engine = plain_docker_endpoint({})
    assert engine is not None
    save = dockerapi.send_save(engine, "sha256:" + "0" * 64, 5)
    try:
        with pytest.raises(DockerError, match=r"docker save failed: [45]\d\d .*0000000000") as raised:
            save.body()
        assert "{" not in str(raised.value)  # the engine's message, not its JSON
    finally:
        save.close()


def test_ctrl_c_while_the_head_start_waits_ends_cleanly(clair, load_image, tmp_path, private_tmp):
    image = load_image(debian_image_layers())
    clair.hang(method="GET")  # the head start's question, and every later one, goes unanswered
    process = start_process(
        ["scan", image.tag, "--per-layer", "--clair", clair.url, "--ip", "127.0.0.1"], tmp_path, private_tmp
    )
    deadline = time.monotonic() + 30
    while not clair.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert clair.requests, "the head start never asked Clair"
    process.send_signal(signal.SIGINT)  # held while the head start runs, then taken cleanly
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert list(private_tmp.iterdir()) == [] and list(tmp_path.iterdir()) == [private_tmp]
