"""The appliance on the real engine: stand-ins with the real backend images' interface (real
PostgreSQL with Clair's schema and data; the Clair simulator), host networking, 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import io
import json
import queue
import signal
import socket
import subprocess
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import docker
import pytest

import standin
from conftest import DEBIAN_EXPECTED, debian_image_layers, run_cli, run_process, start_process
from reportcheck import validate_gitlab_report
from scanner.terminal import _size

pytestmark = [pytest.mark.docker, pytest.mark.appliance]
LABEL = "io.clair-scan"


@pytest.fixture(scope="session")
def images(docker_client) -> dict[str, str]:
    """Built once (about a minute from scratch, then cached by tag)."""
    if not Path("/usr/sbin/debootstrap").exists():
        pytest.skip("debootstrap is not installed")
    return {"db": standin.db_image(), "clair": standin.clair_image()}


# The appliance's own objects. Other parts of clair-scan label theirs `io.clair-scan` too, and
# other test runs may hold some right now: the fixtures neither count nor remove those.
ROLE = "io.clair-scan.role"


def _ours(client: docker.DockerClient) -> list[str]:
    containers = [
        c.name for c in client.containers.list(all=True, filters={"label": ROLE}, ignore_removed=True)
    ]
    networks = [n.name for n in client.networks.list(filters={"label": ROLE})]
    return containers + networks


def _remove_appliances(client: docker.DockerClient) -> None:
    """Remove the appliance's objects, waiting out a removal already under way (409)."""
    for _ in range(300):
        for container in client.containers.list(all=True, filters={"label": ROLE}, ignore_removed=True):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True, v=True)
        for network in client.networks.list(filters={"label": ROLE}):
            with contextlib.suppress(docker.errors.APIError):
                network.remove()
        if not _ours(client):
            return
        time.sleep(0.1)


@pytest.fixture
def clean_engine(docker_client):
    """Every test starts and must end with no appliance container or network."""
    _remove_appliances(docker_client)
    yield docker_client
    left = _ours(docker_client)
    _remove_appliances(docker_client)
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
    running = sorted(c.name for c in clean_engine.containers.list(filters={"label": ROLE}))
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
        filters={"type": "container", "event": "create", "label": ROLE},
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
        labels={LABEL: "1", "io.clair-scan.run": "dead", ROLE: "db"},
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
    while not clean_engine.containers.list(filters={"label": ROLE}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert clean_engine.containers.list(filters={"label": ROLE}), "the backend never started"
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
        # Progress in a CI log: the bytes written now and then (not per MiB written), then all.
        size = _size(bundle.stat().st_size)
        writing = [line for line in saved.stderr.splitlines() if line.startswith(f"writing {bundle}: ")]
        assert writing[-1] == f"writing {bundle}: {size} of {size} (100%)"
        assert 1 < len(writing) < 20, saved.stderr
        for new in tags:
            clean_engine.images.remove(new)
        loaded = run_process(["bundle", "load", str(bundle)])
        assert loaded.code == 0, loaded.stderr
        reading = [line for line in loaded.stderr.splitlines() if line.startswith(f"reading {bundle}: ")]
        assert reading[-1] == f"reading {bundle}: {size} of {size} (100%)"
        assert 1 < len(reading) < 20, loaded.stderr
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


# --- two runs at the same moment, signals during cleanup, the updater (issue 13) ---------------


def _finish(processes: list[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        results.append((process.returncode, out, err))
    return results


def _warm_names(client: docker.DockerClient) -> list[str]:
    return sorted(
        c.name for c in client.containers.list(all=True, filters={"label": ROLE}, ignore_removed=True)
    )


def test_two_ups_at_the_same_moment_start_one_appliance(images, clean_engine, tmp_path, private_tmp):
    for _ in range(3):
        ups = [start_process(["up", *_backend(images)], tmp_path, private_tmp) for _ in range(2)]
        results = _finish(ups)
        for code, _, err in results:
            assert code == 0, err
            assert "Traceback" not in err
        errors = [err for _, _, err in results]
        assert sum("appliance ready: Clair at http://127.0.0.1:" in err for err in errors) == 1, errors
        assert sum("the appliance is already running" in err for err in errors) == 1, errors
        assert _warm_names(clean_engine) == ["clair-scan-clair", "clair-scan-db"]
        status = run_process(["status", "--max-db-age", "36500"])
        assert status.code == 0, status.stderr
        _remove_appliances(clean_engine)


def test_up_racing_scans_that_keep_or_reuse_the_appliance(
    images, clean_engine, load_image, tmp_path, private_tmp
):
    image = load_image(debian_image_layers())
    scan = ["scan", "--per-layer", image.tag, "--format", "json", "--no-report", *_backend(images)]
    racing = [["up", *_backend(images)], [*scan, "--keep"], scan]
    processes = [start_process(args, tmp_path, private_tmp) for args in racing]
    (up_code, _, up_err), *scans = _finish(processes)
    assert up_code == 0, up_err
    for code, out, err in scans:
        assert code == 1, err
        assert "Traceback" not in err
        findings = json.loads(out)["images"][0]["findings"]
        got = {
            (f["vulnerability"], f["package"], f["installed"], f["fixed"], f["severity"], f["layer"]["index"])
            for f in findings
        }
        assert got == DEBIAN_EXPECTED
    # One warm appliance; the plain scan's own one, if it started one, is gone.
    assert _warm_names(clean_engine) == ["clair-scan-clair", "clair-scan-db"]
    assert run_process(["status", "--max-db-age", "36500"]).code == 0
    assert list(private_tmp.iterdir()) == []
    _remove_appliances(clean_engine)


def test_two_downs_at_the_same_moment(images, clean_engine, tmp_path, private_tmp):
    for _ in range(3):
        up = run_process(["up", *_backend(images)])
        assert up.code == 0, up.stderr
        downs = _finish([start_process(["down"], tmp_path, private_tmp) for _ in range(2)])
        removed = 0
        for code, _, err in downs:
            assert code == 0, err
            assert "Traceback" not in err
            if "removed" in err:
                removed += int(err.split("removed ")[1].split()[0])
            else:
                assert "nothing to remove" in err
        assert removed >= 2  # the appliance's two, and whatever else of clair-scan's was there
        assert _ours(clean_engine) == []


def _stderr_lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return lines


def _wait_for_line(lines: queue.Queue[str], text: str, seen: list[str]) -> None:
    while True:
        line = lines.get(timeout=120)
        seen.append(line)
        if text in line:
            return
        assert line, f"the scanner ended without printing {text!r}: {''.join(seen)}"


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_second_signal_during_cleanup_is_answered_and_the_cleanup_goes_on(
    images, clean_engine, load_image, tmp_path, private_tmp, signum, code
):
    slow = standin.slow_db_image(3600)
    image = load_image(debian_image_layers())
    process = start_process(["scan", image.tag, *_backend({**images, "db": slow})], tmp_path, private_tmp)
    lines, seen = _stderr_lines(process), []
    _wait_for_line(lines, "waiting for PostgreSQL", seen)
    process.send_signal(signum)
    _wait_for_line(lines, "backend: removing clair-scan-db-", seen)
    process.send_signal(signum)  # while the containers are being removed
    process.wait(timeout=120)
    while (line := lines.get(timeout=30)) != "":
        seen.append(line)
    err = "".join(seen)
    assert process.returncode == code, err
    assert "clair-scan: warning: still removing clair-scan-db-" in err and "Traceback" not in err
    assert _ours(clean_engine) == []
    assert list(private_tmp.iterdir()) == []


def _config(container: Any) -> str:
    stream, _ = container.get_archive("/config/config.yaml")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.extractfile("config.yaml")
        assert member is not None
        return member.read().decode()


def _updater_line(container: Any) -> str:
    """Clair's log line saying whether its updater runs."""
    for _ in range(600):
        for line in container.logs().decode().splitlines():
            if "updater service" in line:
                return line
        time.sleep(0.1)
    raise AssertionError("Clair never said whether its updater runs")


def test_a_scans_own_appliance_never_updates_its_data(images, clean_engine, docker_client):
    from scanner import backend

    feed = standin.clair_feed_image()  # sources that answer: an enabled updater would update at once
    settings = backend.Settings(db_image=images["db"], clair_image=feed, pull="never", network="host")
    running = backend.start(docker_client, settings, backend.Progress())
    try:
        clair = docker_client.containers.get(f"clair-scan-clair-{running.run}")
        assert "    interval: 0\n" in _config(clair)
        assert "updater service is disabled." in _updater_line(clair)
        facts = backend.database_facts(running.dsn)
        assert facts.updated is not None and facts.updated.timestamp() == 1700000000
        assert not facts.updating
    finally:
        backend.cleanup(docker_client, running.owner, backend.Progress())
    assert _ours(clean_engine) == []


def test_up_updates_only_when_asked_and_status_shows_the_updater(images, clean_engine, docker_client):
    from scanner import backend

    up = run_process(["up", *_backend({**images, "clair": standin.clair_feed_image()})])
    assert up.code == 0, up.stderr
    clair = docker_client.containers.get("clair-scan-clair")
    assert "    interval: 0\n" in _config(clair)
    assert "updater service is disabled." in _updater_line(clair)
    status = run_cli(["status", "--max-db-age", "36500"])
    assert "Clair's updater: off; no update is running" in status.stdout
    again = run_process(["up", "--update", *_backend({**images, "clair": standin.clair_feed_image()})])
    assert again.code == 0 and "its updater is off, not every 2h as asked" in again.stderr
    _remove_appliances(clean_engine)

    up = run_process(["up", "--update", *_backend({**images, "clair": standin.clair_feed_image()})])
    assert up.code == 0, up.stderr
    clair = docker_client.containers.get("clair-scan-clair")
    assert "    interval: 7200s\n" in _config(clair)
    assert "updater service started" in _updater_line(clair)
    warm = backend.find_warm(docker_client, backend.Settings())
    assert warm is not None
    for _ in range(600):  # the data is older than 2 h: Clair updates it at once
        updated = backend.database_facts(warm.dsn).updated
        if updated is not None and updated.timestamp() > 1700000000:
            break
        time.sleep(0.1)
    status = run_cli(["status", "--max-db-age", "1"], env={"COLUMNS": "200"})
    assert status.code == 0, status.stderr
    assert "Clair's updater: every 2h; no update is running" in status.stdout
    assert "(0.0 days ago)" in status.stdout
    _remove_appliances(clean_engine)

    slow = standin.clair_feed_image(fetch_seconds=3600)
    up = run_process(["up", "--update-interval", "90m", *_backend({**images, "clair": slow})])
    assert up.code == 0, up.stderr
    assert "    interval: 5400s\n" in _config(docker_client.containers.get("clair-scan-clair"))
    for _ in range(600):
        status = run_cli(["status", "--max-db-age", "36500"], env={"COLUMNS": "200"})
        if "an update is running now" in status.stdout:
            break
        time.sleep(0.1)
    assert "Clair's updater: every 90m; an update is running now" in status.stdout
    assert "2023-11-14 22:13 UTC" in status.stdout  # not finished: the data is still the old one
    _remove_appliances(clean_engine)


def test_max_db_age_fails_when_the_age_is_unknown(images, clean_engine, docker_client, load_image, tmp_path):
    import psycopg

    from scanner import backend

    image = load_image(debian_image_layers())
    assert run_process(["up", *_backend(images)]).code == 0
    warm = backend.find_warm(docker_client, backend.Settings())
    assert warm is not None
    with psycopg.connect(warm.dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM keyvalue WHERE key = 'updater/last'")

    unknown = run_process(["scan", image.tag, "--max-db-age", "30"], cwd=tmp_path)
    assert unknown.code == 3, unknown.stderr
    assert "error: the age of the vulnerability data is unknown" in unknown.stderr
    assert "--allow-unknown-db-age" in unknown.stderr
    assert not (tmp_path / "gl-container-scanning-report.json").exists()
    allowed = run_process(["scan", image.tag, "--max-db-age", "30", "--allow-unknown-db-age"], cwd=tmp_path)
    assert allowed.code == 1, allowed.stderr
    assert "warning: the age of the vulnerability data is unknown" in allowed.stderr
    assert run_cli(["status", "--fail-on-old-db"]).code == 3
    assert run_cli(["status", "--fail-on-old-db", "--allow-unknown-db-age"]).code == 0
    _remove_appliances(clean_engine)


def test_only_a_third_signal_gives_the_cleanup_up_naming_what_remains(
    images, clean_engine, load_image, tmp_path, private_tmp
):
    slow = standin.slow_db_image(3600)
    image = load_image(debian_image_layers())
    process = start_process(["scan", image.tag, *_backend({**images, "db": slow})], tmp_path, private_tmp)
    lines, seen = _stderr_lines(process), []
    _wait_for_line(lines, "waiting for PostgreSQL", seen)
    process.send_signal(signal.SIGINT)
    _wait_for_line(lines, "backend: removing clair-scan-db-", seen)
    process.send_signal(signal.SIGINT)
    _wait_for_line(lines, "clair-scan: warning: still removing clair-scan-db-", seen)
    process.send_signal(signal.SIGINT)  # signals of one kind do not queue: one at a time
    process.wait(timeout=120)
    while (line := lines.get(timeout=30)) != "":
        seen.append(line)
    err = "".join(seen)
    assert process.returncode == 130, err
    warnings = [line for line in seen if line.startswith("clair-scan: warning:")]
    assert warnings[0].startswith("clair-scan: warning: still removing clair-scan-db-"), err
    assert warnings[1].startswith("clair-scan: warning: gave up removing clair-scan-db-"), err
    assert "`clair-scan down` removes it" in warnings[1] and "Traceback" not in err
    for name in _ours(clean_engine):  # what is still there was named
        assert name in warnings[1], (name, warnings[1])
    _remove_appliances(clean_engine)


def test_an_appliance_half_made_by_a_run_that_is_gone_is_not_waited_for(images, clean_engine):
    # What `up` killed with SIGKILL between its two containers leaves: a warm db, no Clair.
    dead = subprocess.Popen(["true"])  # a process that has ended: its pid is free
    dead.wait()
    clean_engine.containers.create(
        images["db"],
        name="clair-scan-db",
        network_mode="host",
        labels={
            LABEL: "1",
            "io.clair-scan.run": "warm",
            ROLE: "db",
            "io.clair-scan.creator": f"{socket.gethostname()}/{dead.pid}",
        },
    )
    for args in (["up", *_backend(images)], ["status"]):
        result = run_process(args)
        assert result.code == 3, result.stderr
        assert "the warm appliance is incomplete and the run that started it is gone" in result.stderr
        assert "clair-scan down" in result.stderr and "Traceback" not in result.stderr
    assert _ours(clean_engine) == ["clair-scan-db"]  # not removed: this run did not create it
    _remove_appliances(clean_engine)
