"""Bad input ends with one clear stderr line and the documented exit code, in-process and as a
real process, with no report and no temp files left behind."""

from __future__ import annotations

import socket

import pytest

from conftest import debian_image_layers, run_cli, run_process

RUNNERS = [pytest.param(run_cli, id="cli-runner"), pytest.param(run_process, id="process")]


def _dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _one_error_line(stderr: str, *needles: str) -> None:
    """Progress lines may precede it; the error itself is one line."""
    lines = [line for line in stderr.splitlines() if line.startswith("clair-scan: error: ")]
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("run", RUNNERS)
def test_nothing_to_scan(run, tmp_path):
    result = run(["scan", "--clair", "http://127.0.0.1:1"], cwd=tmp_path)
    assert result.code == 2
    _one_error_line(result.stderr, "nothing to scan")


@pytest.mark.parametrize("run", RUNNERS)
def test_bad_threshold_is_a_usage_error(run, tmp_path):
    result = run(["scan", "x", "--threshold", "Severe"], cwd=tmp_path)
    assert result.code == 2
    assert "unknown severity 'Severe'" in result.stderr
    assert "Traceback" not in result.stderr
    env = run(["scan", "x"], env={"CLAIR_OUTPUT": "Severe"}, cwd=tmp_path)
    assert env.code == 2 and "unknown severity" in env.stderr


@pytest.mark.parametrize("run", RUNNERS)
def test_malformed_whitelist(run, tmp_path):
    bad = tmp_path / "whitelist.yml"
    bad.write_text("generalwhitelist:\n  CVE-1: x\n   oops: [\n")
    result = run(["scan", "x", "--clair", "http://127.0.0.1:1", "-w", str(bad)], cwd=tmp_path)
    assert result.code == 2
    _one_error_line(result.stderr, "malformed whitelist", "line")
    assert not (tmp_path / "gl-container-scanning-report.json").exists()
    env = run(["scan", "x", "--clair", "http://127.0.0.1:1"], env={"WHITELIST_FILE": str(bad)}, cwd=tmp_path)
    assert env.code == 2 and "malformed whitelist" in env.stderr


@pytest.mark.parametrize("run", RUNNERS)
def test_corrupt_and_missing_archives(run, tmp_path, private_tmp):
    corrupt = tmp_path / "corrupt.tar"
    corrupt.write_bytes(b"\x00garbage" * 1000)
    result = run(["scan", "--archive", str(corrupt), "--clair", "http://127.0.0.1:1"], cwd=tmp_path)
    assert result.code == 2
    _one_error_line(result.stderr, "not a readable docker save archive")
    missing = run(
        ["scan", "--archive", str(tmp_path / "nope.tar"), "--clair", "http://127.0.0.1:1"], cwd=tmp_path
    )
    assert missing.code == 2
    _one_error_line(missing.stderr, "archive not found")
    assert list(private_tmp.iterdir()) == []
    assert not (tmp_path / "gl-container-scanning-report.json").exists()


@pytest.mark.docker
@pytest.mark.parametrize("run", RUNNERS)
def test_unknown_image(run, tmp_path, docker_client):
    result = run(
        ["scan", "docker:clair-scan-test/does-not-exist:1", "--clair", "http://127.0.0.1:1"], cwd=tmp_path
    )
    assert result.code == 2
    _one_error_line(result.stderr, "image not found: clair-scan-test/does-not-exist:1")


@pytest.mark.docker
@pytest.mark.parametrize("run", RUNNERS)
def test_clair_down(run, tmp_path, load_image, private_tmp):
    image = load_image(debian_image_layers())
    url = f"http://user:s3cret@127.0.0.1:{_dead_port()}"
    log = tmp_path / "debug.log"
    result = run(["scan", image.tag, "--clair", url, "--clair-timeout", "5", "--log", str(log)], cwd=tmp_path)
    assert result.code == 3
    _one_error_line(result.stderr, "cannot connect to Clair", image.tag)
    assert "s3cret" not in result.stderr and "***@127.0.0.1" in result.stderr
    assert "cannot connect to Clair" in log.read_text() and "s3cret" not in log.read_text()
    log.unlink()
    assert not (tmp_path / "gl-container-scanning-report.json").exists()
    assert list(private_tmp.iterdir()) == []


@pytest.mark.docker
def test_docker_down(tmp_path):
    result = run_process(
        ["scan", "docker:x", "--clair", "http://127.0.0.1:1"],
        env={"DOCKER_HOST": "tcp://127.0.0.1:1"},
        cwd=tmp_path,
    )
    assert result.code == 3
    _one_error_line(result.stderr, "cannot reach the Docker engine at tcp://127.0.0.1:1")


def test_the_installed_console_script_runs_the_same_entry_point(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from scanner import __version__

    script = Path(sys.executable).parent / "clair-scan"
    if not script.exists():
        pytest.skip("the package is not installed in this interpreter's environment")
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert (version.returncode, version.stdout.strip()) == (0, f"clair-scan {__version__}")
    missing = subprocess.run(
        [str(script), "scan", "--archive", str(tmp_path / "none.tar"), "--clair", "http://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert missing.returncode == 2, missing.stderr
    _one_error_line(missing.stderr, "archive not found")
