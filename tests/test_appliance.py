"""The appliance on the real engine: stand-ins with the real backend images' interface (real
PostgreSQL with Clair's schema and data; the Clair simulator), host networking, 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from pathlib import Path

import docker
import pytest

import standin
from conftest import DEBIAN_EXPECTED, debian_image_layers, run_cli, run_process, start_process
from reportcheck import validate_gitlab_report

pytestmark = [pytest.mark.docker, pytest.mark.appliance]
LABEL = "io.clair-scan"


@pytest.fixture(scope="session")
def images(docker_client) -> dict[str, str]:
    """Built once (about a minute from scratch, then cached by tag)."""
    if not Path("/usr/sbin/debootstrap").exists():
        pytest.skip("debootstrap is not installed")
    return {"db": standin.db_image(), "clair": standin.clair_image()}


def _ours(client: docker.DockerClient) -> list[str]:
    containers = [c.name for c in client.containers.list(all=True, filters={"label": LABEL})]
    networks = [n.name for n in client.networks.list(filters={"label": LABEL})]
    return containers + networks


@pytest.fixture
def clean_engine(docker_client):
    """Every test starts and must end with no clair-scan container or network."""
    run_cli(["down"])
    yield docker_client
    left = _ours(docker_client)
    run_cli(["down"])
    assert left == [], f"left behind: {left}"


def _backend(images: dict[str, str], *extra: str) -> list[str]:
    return [
        "--network",
        "host",
        "--db-image",
        images["db"],
        "--clair-image",
        images["clair"],
        "--pull",
        "never",
        *extra,
    ]


@pytest.mark.parametrize("run", [run_cli, run_process], ids=["cli-runner", "process"])
def test_scan_through_the_appliance_leaves_nothing(
    run, images, clean_engine, load_image, tmp_path, private_tmp
):
    image = load_image(debian_image_layers())
    result = run(
        ["scan", image.tag, "--format", "json", *_backend(images)],
        env={"TMPDIR": str(private_tmp)},
        cwd=tmp_path,
    )
    assert result.code == 1, result.stderr
    findings = json.loads(result.stdout)["images"][0]["findings"]
    # Distilled (the default): the same findings, no layer named.
    got = {(f["vulnerability"], f["package"], f["installed"], f["fixed"], f["severity"]) for f in findings}
    assert got == {row[:5] for row in DEBIAN_EXPECTED}
    validate_gitlab_report(json.loads((tmp_path / "gl-container-scanning-report.json").read_text()))
    assert _ours(clean_engine) == []
    assert list(private_tmp.iterdir()) == []


def test_database_that_comes_up_late_is_waited_for(images, clean_engine, load_image, tmp_path):
    slow = standin.slow_db_image(5)
    image = load_image(debian_image_layers())
    started = time.monotonic()
    result = run_process(
        ["scan", image.tag, *_backend({**images, "db": slow}, "--ready-timeout", "90")], cwd=tmp_path
    )
    assert result.code == 1, result.stderr
    assert time.monotonic() - started >= 5
    assert "waiting for PostgreSQL" in result.stderr


def test_database_that_never_comes_up_fails_with_its_logs(images, clean_engine, load_image, tmp_path):
    never = standin.slow_db_image(3600)
    image = load_image(debian_image_layers())
    result = run_process(
        ["scan", image.tag, *_backend({**images, "db": never}, "--ready-timeout", "4")], cwd=tmp_path
    )
    assert result.code == 3
    assert "clair-scan: error: PostgreSQL was not ready after 4 s: not accepting connections" in result.stderr
    assert "stand-in: delaying start-up by 3600 s" in result.stderr  # the container's log tail
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "gl-container-scanning-report.json").exists()


def test_pull_never_with_a_missing_image(images, clean_engine, load_image, tmp_path):
    image = load_image(debian_image_layers())
    args = ["scan", image.tag, *_backend({**images, "db": "clair-scan-test/absent:1"})]
    for run in (run_cli, run_process):
        result = run(args, cwd=tmp_path)
        assert result.code == 2
        assert "backend image clair-scan-test/absent:1 is not in the Docker engine" in result.stderr
        assert "--pull never" in result.stderr


def test_up_status_scan_down(images, clean_engine, load_image, tmp_path):
    image = load_image(debian_image_layers())
    assert run_cli(["status"]).code == 3  # nothing running yet
    up = run_process(["up", *_backend(images)], cwd=tmp_path)
    assert up.code == 0, up.stderr
    assert "appliance ready: Clair at http://127.0.0.1:" in up.stderr
    running = sorted(c.name for c in clean_engine.containers.list(filters={"label": LABEL}))
    assert running == ["clair-scan-clair", "clair-scan-db"]
    assert run_cli(["up", *_backend(images)]).code == 0  # idempotent

    status = run_cli(["status", "--max-db-age", "36500"], env={"COLUMNS": "200"})
    assert status.code == 0, status.stderr
    assert "debian:10" in status.stdout and "alpine:v3.10" in status.stdout
    assert "2023-11-14 22:13 UTC" in status.stdout  # updater/last = 1700000000
    old = run_cli(["status", "--max-db-age", "7", "--fail-on-old-db"])
    assert old.code == 3 and "days old, more than 7 days" in old.stderr

    since = time.time() - 0.1
    first = run_process(["scan", image.tag, "--format", "json"], cwd=tmp_path)
    assert first.code == 1, first.stderr
    assert json.loads(first.stdout)["images"][0]["layers_sent"] == 1  # the distilled layer
    again = run_process(["scan", image.tag, "--format", "json"], cwd=tmp_path)
    assert again.code == 1
    assert json.loads(again.stdout)["images"][0]["layers_sent"] == 0
    assert (
        json.loads(again.stdout)["images"][0]["findings"] == json.loads(first.stdout)["images"][0]["findings"]
    )
    created = clean_engine.events(
        since=since,
        until=time.time() + 0.5,
        decode=True,
        filters={"type": "container", "event": "create", "label": LABEL},
    )
    assert list(created) == []  # the scans started no backend of their own
    table = run_process(["scan", image.tag], cwd=tmp_path)
    assert "using the running appliance at http://127.0.0.1:" in table.stderr
    stale = run_process(["scan", image.tag, "--max-db-age", "30"], cwd=tmp_path)
    assert stale.code == 3 and "days old, more than --max-db-age 30" in stale.stderr

    down = run_cli(["down"])
    assert down.code == 0 and "removed 2" in down.stderr
    assert _ours(clean_engine) == []


def test_down_removes_strays_of_a_killed_run(images, clean_engine):
    clean_engine.containers.create(
        images["db"],
        name="clair-scan-db-stray",
        network_mode="host",
        labels={LABEL: "1", "io.clair-scan.run": "dead"},
    )
    result = run_process(["down"])
    assert result.code == 0 and "removed 1" in result.stderr
    assert _ours(clean_engine) == []


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_during_start_up_removes_the_backend(
    images, clean_engine, load_image, tmp_path, private_tmp, signum, code
):
    slow = standin.slow_db_image(3600)
    image = load_image(debian_image_layers())
    process = start_process(["scan", image.tag, *_backend({**images, "db": slow})], tmp_path, private_tmp)
    deadline = time.monotonic() + 60
    while not clean_engine.containers.list(filters={"label": LABEL}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert clean_engine.containers.list(filters={"label": LABEL}), "the backend never started"
    time.sleep(1)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert ("interrupted" if code == 130 else "terminated") in err and "Traceback" not in err
    assert _ours(clean_engine) == []
    assert list(private_tmp.iterdir()) == []


def test_bundle_save_and_load(images, clean_engine, tmp_path):
    tags = {"clair-scan-test/bundle-db:1": images["db"], "clair-scan-test/bundle-clair:1": images["clair"]}
    for new, old in tags.items():
        clean_engine.images.get(old).tag(new)
    bundle = tmp_path / "backend.tar"
    try:
        saved = run_process(
            [
                "bundle",
                "save",
                str(bundle),
                "--db-image",
                "clair-scan-test/bundle-db:1",
                "--clair-image",
                "clair-scan-test/bundle-clair:1",
            ]
        )
        assert saved.code == 0, saved.stderr
        assert [p.name for p in tmp_path.iterdir()] == ["backend.tar"]  # no temp file left
        for new in tags:
            clean_engine.images.remove(new)
        loaded = run_process(["bundle", "load", str(bundle)])
        assert loaded.code == 0, loaded.stderr
        assert sorted(t for t in tags if clean_engine.images.get(t)) == sorted(tags)
        missing = run_cli(["bundle", "load", str(tmp_path / "nope.tar")])
        assert missing.code == 2 and "bundle not found" in missing.stderr
    finally:
        for new in tags:
            with contextlib.suppress(docker.errors.ImageNotFound):
                clean_engine.images.remove(new)


def test_a_rebuilt_stand_in_replaces_the_stale_one(images, docker_client):
    def build(content: str) -> str:
        dockerfile = f"FROM {standin.BASE}\nCOPY a /a\n"
        return standin._build("prune-check", {"Dockerfile": dockerfile, "a": content})

    first = build("old test files\n")
    second = build("new test files\n")
    try:
        assert first != second and first.split(":")[0] == second.split(":")[0]
        assert not standin._exists(first)  # gone: ~0.5 GB per stand-in adds up
        assert standin._exists(second)
        assert build("new test files\n") == second  # a cache hit builds and prunes nothing
    finally:
        for tag in (first, second):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(tag)
