"""The Clair v4 appliance (`--backend v4`) on the real engine: stand-ins with arminc's v4 images'
interface (real PostgreSQL; the Clair v4 simulator reading the generated /config/config.yaml as
Clair 4.7.4 does), host networking, 127.0.0.1 only, and no network for the stand-ins to reach:
as arminc ships it, the RHEL scanner's CPE mapping download fails and every index with it."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import tarfile
import time
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from test_appliance import ROLE, _config, _ours, _remove_appliances

import standin
from conftest import DEBIAN_EXPECTED, debian_image_layers, run_cli, run_process
from reportcheck import validate_gitlab_report

pytestmark = [pytest.mark.docker, pytest.mark.appliance]
V4_EXPECTED = {
    (v, p, i, fix, "Critical" if s == "Defcon1" else s, n) for v, p, i, fix, s, n in DEBIAN_EXPECTED
}
MAPPING_ERROR = "rhel: unable to create a mappingFile object"


@pytest.fixture
def clean_engine(docker_client):
    """Every test starts and must end with no appliance container or network."""
    _remove_appliances(docker_client)
    yield docker_client
    left = _ours(docker_client)
    _remove_appliances(docker_client)
    assert left == [], f"left behind: {left}"


@pytest.fixture(scope="session")
def images_v4(docker_client) -> dict[str, str]:
    if not Path("/usr/sbin/debootstrap").exists():
        pytest.skip("debootstrap is not installed")
    return {"db": standin.db_v4_image(), "clair": standin.clair_v4_image()}


def _backend(images: dict[str, str], *extra: str) -> list[str]:
    return [
        "--backend",
        "v4",
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


def _rows(stdout: str) -> set[tuple[Any, ...]]:
    return {
        (f["vulnerability"], f["package"], f["installed"], f["fixed"], f["severity"], f["layer"]["index"])
        for f in json.loads(stdout)["images"][0]["findings"]
    }


def test_scan_through_the_v4_appliance_leaves_nothing(
    images_v4, clean_engine, load_image, tmp_path, private_tmp
):
    image = load_image(debian_image_layers())
    result = run_process(
        ["scan", "--per-layer", image.tag, "--format", "json", *_backend(images_v4)],
        env={"TMPDIR": str(private_tmp)},
        cwd=tmp_path,
    )
    assert result.code == 1, result.stderr
    assert _rows(result.stdout) == V4_EXPECTED  # what the v4 simulator holds: v2's, on v4's scale
    assert "Traceback" not in result.stderr
    validate_gitlab_report(json.loads((tmp_path / "gl-container-scanning-report.json").read_text()))
    assert _ours(clean_engine) == []
    assert list(private_tmp.iterdir()) == []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _put(container: Any, name: str, text: str) -> None:
    data = text.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    container.put_archive("/config", buffer.getvalue())


def _wait_ready(url: str) -> None:
    import requests

    for _ in range(300):
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url}/readyz never answered 200")


def test_the_generated_config_is_what_lets_clair_index_offline(
    images_v4, clean_engine, docker_client, load_image, tmp_path
):
    """Next to the appliance, the same Clair image with arminc's shipped config (only its ports
    moved to free ones): every index fails with the RHEL mapping error. The appliance's generated
    config indexes the same image."""
    from scanner import backend

    image = load_image(debian_image_layers())
    settings = backend.Settings(
        api="v4", db_image=images_v4["db"], clair_image=images_v4["clair"], pull="never", network="host"
    )
    running = backend.start(docker_client, settings, backend.Progress())
    shipped_name = f"clair-scan-test-shipped-{running.run}"
    try:
        clair = docker_client.containers.get(f"clair-scan-v4-clair-{running.run}")
        generated = yaml.safe_load(_config(clair))
        db_port = json.loads(clair.labels["io.clair-scan.ports"])["db"]
        connstring = (
            f"host=postgres port={db_port} user=postgres password=password sslmode=disable"
            " statement_timeout=60000"
        )
        for service in ("indexer", "matcher", "notifier"):
            assert generated[service]["connstring"] == connstring
            assert generated[service]["migrations"] is True
        assert generated["matcher"]["disable_updaters"] is True
        rhel = generated["indexer"]["scanner"]["repo"]["rhel-repository-scanner"]
        assert rhel["repo2cpe_mapping_file"] == "/config/repository-to-cpe.json"
        logs = clair.logs().decode()
        assert '"sets": []' in logs and "failed constructing factory" not in logs  # updaters off

        shipped = yaml.safe_load(standin.CLAIR_V4_CONFIG.format())
        assert "scanner" not in shipped["indexer"]
        api_port, introspection_port = _free_port(), _free_port()
        shipped["http_listen_addr"], shipped["introspection_addr"] = f":{api_port}", f":{introspection_port}"
        for service in ("indexer", "matcher", "notifier"):
            shipped[service]["connstring"] = shipped[service]["connstring"].replace(
                "port=5432", f"port={db_port}"
            )
        other = docker_client.containers.create(
            images_v4["clair"],
            name=shipped_name,
            network_mode="host",
            extra_hosts={"postgres": "127.0.0.1"},
            labels={"io.clair-scan.test": "shipped-config"},
        )
        _put(other, "config.yaml", yaml.safe_dump(shipped))
        other.start()
        _wait_ready(f"http://127.0.0.1:{introspection_port}")

        args = ["scan", "--per-layer", image.tag, "--ip", "127.0.0.1", "--format", "json", "--no-report"]
        failed = run_process([*args, "--clair", f"http://127.0.0.1:{api_port}"], cwd=tmp_path)
        assert failed.code == 3, failed.stderr
        assert MAPPING_ERROR in failed.stderr and "Traceback" not in failed.stderr
        assert "unable to fetch mapping file" in other.logs().decode()

        scanned = run_process([*args, "--clair", running.clair_url], cwd=tmp_path)
        assert scanned.code == 1, scanned.stderr
        assert _rows(scanned.stdout) == V4_EXPECTED
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(shipped_name).remove(force=True, v=True)
        backend.cleanup(docker_client, running.owner, backend.Progress())
    assert _ours(clean_engine) == []


def test_up_status_scan_down_v4(images_v4, clean_engine, load_image, tmp_path):
    image = load_image(debian_image_layers())
    assert run_cli(["status", "--backend", "v4"]).code == 3  # nothing running yet
    up = run_process(["up", *_backend(images_v4)], cwd=tmp_path)
    assert up.code == 0, up.stderr
    assert "appliance ready: Clair at http://127.0.0.1:" in up.stderr
    containers = clean_engine.containers.list(filters={"label": ROLE})
    assert sorted(c.name for c in containers) == ["clair-scan-v4-clair", "clair-scan-v4-db"]
    volumes = [m["Name"] for c in containers for m in c.attrs["Mounts"] if m["Type"] == "volume"]
    assert volumes  # Clair's image declares /config a volume, as arminc's does
    again = run_cli(["up", *_backend(images_v4)])
    assert again.code == 0 and "the appliance is already running" in again.stderr

    status = run_cli(["status", "--backend", "v4", "--max-db-age", "36500"], env={"COLUMNS": "200"})
    assert status.code == 0, status.stderr
    # The matcher's update operations: one per updater, dated by the data (updater/last).
    assert "debian/updater/buster" in status.stdout and "alpine-main-v3.10-updater" in status.stdout
    assert "2023-11-14 22:13 UTC" in status.stdout
    assert "Clair's updater: off" in status.stdout
    old = run_cli(["status", "--backend", "v4", "--max-db-age", "7", "--fail-on-old-db"])
    assert old.code == 3 and "days old, more than 7 days" in old.stderr
    assert run_cli(["status"]).code == 3  # no v2 appliance is running

    env = {"CLAIR_BACKEND": "v4"}
    first = run_process(["scan", "--per-layer", image.tag, "--format", "json"], env=env, cwd=tmp_path)
    assert first.code == 1, first.stderr
    assert _rows(first.stdout) == V4_EXPECTED
    assert json.loads(first.stdout)["images"][0]["layers_sent"] == 3
    rescan = run_process(["scan", "--per-layer", image.tag, "--format", "json"], env=env, cwd=tmp_path)
    assert rescan.code == 1
    assert json.loads(rescan.stdout)["images"][0]["layers_sent"] == 0
    assert _rows(rescan.stdout) == V4_EXPECTED

    stale = run_process(["scan", "--per-layer", image.tag, "--max-db-age", "30"], env=env, cwd=tmp_path)
    assert stale.code == 3 and "days old, more than --max-db-age 30" in stale.stderr
    fresh_enough = run_process(
        ["scan", "--per-layer", image.tag, "--max-db-age", "36500"], env=env, cwd=tmp_path
    )
    assert fresh_enough.code == 1, fresh_enough.stderr
    assert "using the running appliance at http://127.0.0.1:" in fresh_enough.stderr

    # --clair to a Clair v4: the data's age comes from its API as well.
    from scanner import backend

    warm = backend.find_warm(docker.from_env(), backend.Settings(api="v4"))
    assert warm is not None and warm.api == "v4"
    direct = run_process(
        [
            "scan",
            "--per-layer",
            image.tag,
            "--clair",
            warm.clair_url,
            "--ip",
            "127.0.0.1",
            "--max-db-age",
            "30",
        ],
        cwd=tmp_path,
    )
    assert direct.code == 3 and "days old, more than --max-db-age 30" in direct.stderr

    down = run_cli(["down", "--backend", "v2"])
    assert down.code == 0 and "nothing to remove" in down.stderr  # the v4 one stays
    down = run_cli(["down", "--backend", "v4"])
    assert down.code == 0 and "removed 2" in down.stderr
    assert _ours(clean_engine) == []
    for volume in volumes:  # removed with their containers
        with pytest.raises(docker.errors.NotFound):
            clean_engine.volumes.get(volume)


def test_up_v4_with_updates_runs_the_updaters_and_keeps_the_data(images_v4, clean_engine, docker_client):
    up = run_process(["up", "--update", *_backend(images_v4)])
    assert up.code == 0, up.stderr
    clair = docker_client.containers.get("clair-scan-v4-clair")
    matcher = yaml.safe_load(_config(clair))["matcher"]
    assert matcher["period"] == "21600s" and "disable_updaters" not in matcher
    logs = ""
    for _ in range(300):
        logs = clair.logs().decode()
        if "starting background updates" in logs:
            break
        time.sleep(0.1)
    assert "failed constructing factory" in logs  # offline: every updater fails...
    status = run_cli(["status", "--backend", "v4", "--max-db-age", "36500"], env={"COLUMNS": "200"})
    assert status.code == 0, status.stderr  # ...and the data stays
    assert "Clair's updater: every 6h" in status.stdout
    _remove_appliances(clean_engine)


def test_bundle_save_and_load_v4_defaults(images_v4, clean_engine, tmp_path):
    defaults = {
        "arminc/clair-db-v4:latest": images_v4["db"],
        "arminc/clair-local-scan-v4:latest": images_v4["clair"],
    }
    for ref in defaults:
        with contextlib.suppress(docker.errors.ImageNotFound):
            clean_engine.images.get(ref)
            pytest.skip(f"{ref} is in the engine already: not ours to remove")
    bundle = tmp_path / "v4.tar"
    try:
        for new, old in defaults.items():
            clean_engine.images.get(old).tag(new)
        saved = run_process(["bundle", "save", str(bundle), "--backend", "v4"])
        assert saved.code == 0, saved.stderr
        assert "arminc/clair-db-v4:latest and arminc/clair-local-scan-v4:latest" in saved.stderr
        for new in defaults:
            clean_engine.images.remove(new)
        loaded = run_process(["bundle", "load", str(bundle), "--backend", "v4"])
        assert loaded.code == 0, loaded.stderr
        assert "lacks" not in loaded.stderr
        assert all(clean_engine.images.get(ref) for ref in defaults)
        other = run_process(["bundle", "load", str(bundle), "--backend", "v2"])
        assert other.code == 0
        assert "the bundle lacks the v2 appliance's arminc/clair-db:latest" in other.stderr
    finally:
        for new in defaults:
            with contextlib.suppress(docker.errors.ImageNotFound):
                clean_engine.images.remove(new)


def test_an_update_interval_clair_v4_would_ignore_is_a_usage_error():
    result = run_cli(["up", "--backend", "v4", "--update-interval", "30s"])
    assert result.code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "too short for Clair v4" in lines[0], result.stderr


def test_an_unknown_backend_is_a_usage_error():
    result = run_cli(["status", "--backend", "v3"])
    assert result.code == 2 and "v3" in result.stderr


def test_max_db_age_with_a_running_clair_v2_is_a_usage_error(clair, load_image, tmp_path):
    """A Clair v2 keeps its data's age in its database only, which --clair does not reach."""
    image = load_image(debian_image_layers())
    args = ["scan", "--per-layer", image.tag, "--clair", clair.url, "--ip", "127.0.0.1", "--max-db-age", "30"]
    result = run_process(args, cwd=tmp_path)
    assert result.code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("clair-scan: error: --max-db-age with --clair needs a Clair v4")
    assert not (tmp_path / "gl-container-scanning-report.json").exists()
