"""Every way out of a run, tried as a hostile user would (issue 13): unexpected errors in any
thread, standard streams that are closed, broken or full, bad values for options and files,
credentials and control characters in what servers send back, a Clair that never answers."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from conftest import ROOT, debian_image_layers, run_cli, run_process
from imagebuild import write_docker_save
from reportcheck import validate_gitlab_report

RUNNERS = [pytest.param(run_cli, id="cli-runner"), pytest.param(run_process, id="process")]
REPORT = "gl-container-scanning-report.json"


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("clair-scan: error: ")]


def _archive(tmp_path: Path) -> Path:
    """An image with findings (exit 1 when scanned), as a `docker save` file: no engine needed."""
    tarball = tmp_path / "image.tar"
    write_docker_save(tarball, debian_image_layers(), repo_tags=["archived/app:1"])
    return tarball


def _scan_archive(clair, tmp_path: Path, *extra: str) -> list[str]:
    return ["scan", "--archive", str(_archive(tmp_path)), "--clair", clair.url, "--ip", "127.0.0.1", *extra]


def _process(args: list[str], cwd: Path, prelude: str = "", **popen: object) -> subprocess.CompletedProcess:
    """`clair-scan ARGS` as a real process through the real entry point; `prelude` runs first
    (to plant a bug where no input can reach one)."""
    code = (
        textwrap.dedent(prelude)
        + "\nimport sys\nfrom scanner.__main__ import main\nsys.argv[1:] = ARGS\nmain()\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.run(
        [sys.executable, "-c", code.replace("ARGS", repr(args))],
        cwd=cwd,
        env=env,
        timeout=120,
        text=True,
        **options,  # type: ignore[arg-type]
    )


# --- 3. no tracebacks: a bug ends as one line, exit 3, saying where the details are


def test_a_bug_is_one_line_without_log(tmp_path):
    prelude = """
        from scanner import whitelist
        def broken(path):
            raise RuntimeError("planted bug")
        whitelist.load = broken
    """
    (tmp_path / "w.yml").write_text("{}\n")
    args = ["scan", "x", "--clair", "http://127.0.0.1:1", "-w", "w.yml"]
    done = _process(args, tmp_path, prelude)
    assert done.returncode == 3
    assert done.stderr.splitlines() == [
        "clair-scan: error: unexpected RuntimeError: planted bug "
        "(please report it; run with --log FILE for details)"
    ]
    logged = _process([*args, "--log", "debug.log"], tmp_path, prelude)
    assert logged.returncode == 3
    assert _error_lines(logged.stderr) == [
        "clair-scan: error: unexpected RuntimeError: planted bug (please report it; details in debug.log)"
    ]
    assert "Traceback" not in logged.stderr
    log = (tmp_path / "debug.log").read_text()
    assert "Traceback" in log and "planted bug" in log


def test_a_bug_in_a_thread_fails_a_finished_scan(clair, tmp_path, private_tmp):
    """A worker thread that dies of a bug: one line, and the run cannot end 0 or 1 (its result
    is not to be trusted); an error Python can only ignore (a failing __del__) goes to the log."""
    prelude = """
        import gc
        from scanner import whitelist
        from scanner.threads import start_daemon
        class Leaky:
            def __del__(self):
                raise ValueError("from a finalizer")
        def load(path):
            start_daemon(lambda: 1 / 0, "worker").join()
            Leaky()
            gc.collect()
            return None
        whitelist.load = load
    """
    (tmp_path / "w.yml").write_text("{}\n")
    done = _process(_scan_archive(clair, tmp_path, "-w", "w.yml", "--log", "debug.log"), tmp_path, prelude)
    assert done.returncode == 3, done.stderr
    assert _error_lines(done.stderr) == [
        "clair-scan: error: unexpected ZeroDivisionError in worker: division by zero "
        "(please report it; details in debug.log)"
    ]
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert "from a finalizer" in (tmp_path / "debug.log").read_text()
    assert list(private_tmp.iterdir()) == []


# --- 4. bad input is a usage error naming the value


@pytest.mark.parametrize("run", RUNNERS)
@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://127.0.0.1:60x0", "'60x0'"),
        ("127.0.0.1:99999", "http://127.0.0.1:99999"),
        ("http://user:s3cret@127.0.0.1:-1", "http://***@127.0.0.1:-1"),
    ],
)
def test_a_clair_url_with_a_bad_port_is_a_usage_error(run, tmp_path, url, needle):
    result = run(["scan", "x", "--clair", url], cwd=tmp_path)
    assert result.code == 2, result.stderr
    (line,) = _error_lines(result.stderr)
    assert "not a Clair URL" in line and needle in line
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("run", RUNNERS)
def test_a_whitelist_date_that_does_not_exist_is_a_usage_error(run, tmp_path):
    (tmp_path / "w.yml").write_text("generalwhitelist:\n  CVE-2019-1543: {expires: 2027-02-30}\n")
    result = run(["scan", "x", "--clair", "http://127.0.0.1:1", "-w", "w.yml"], cwd=tmp_path)
    assert result.code == 2, result.stderr
    assert _error_lines(result.stderr) == [
        "clair-scan: error: malformed whitelist w.yml at line 2: '2027-02-30' is not a date "
        "(day is out of range for month)"
    ]


@pytest.mark.parametrize("run", RUNNERS)
def test_a_whitelist_that_is_a_directory_is_a_usage_error(run, tmp_path):
    (tmp_path / "rules").mkdir()
    result = run(["scan", "x", "--clair", "http://127.0.0.1:1", "-w", "rules"], cwd=tmp_path)
    assert result.code == 2, result.stderr
    assert _error_lines(result.stderr) == ["clair-scan: error: whitelist is a directory: rules"]


# --- 6. a closed stderr does not change how a scan ends


def _close_stderr() -> None:
    os.close(2)


def test_a_closed_stderr_still_scans_and_reports(clair, tmp_path, private_tmp):
    done = _process(_scan_archive(clair, tmp_path), tmp_path, stderr=None, preexec_fn=_close_stderr)
    assert done.returncode == 1  # findings: the scan finished
    validate_gitlab_report(json.loads((tmp_path / REPORT).read_text()))
    assert list(private_tmp.iterdir()) == []


def test_a_closed_stderr_does_not_turn_a_failure_into_findings(tmp_path):
    dead = _process(
        ["scan", "--archive", str(_archive(tmp_path)), "--clair", "http://127.0.0.1:1"],
        tmp_path,
        stderr=None,
        preexec_fn=_close_stderr,
    )
    assert dead.returncode == 3
    usage = _process(["scan", "--threshold", "Severe", "x"], tmp_path, stderr=None, preexec_fn=_close_stderr)
    assert usage.returncode == 2
    assert not (tmp_path / REPORT).exists()


# --- 7. broken or full stdout: one line, exit 3, reports already written stay


def test_stdout_on_a_full_disk(clair, tmp_path):
    with open("/dev/full", "w") as full:
        done = _process(
            _scan_archive(clair, tmp_path, "--format", "json"), tmp_path, stdout=full, stderr=subprocess.PIPE
        )
    assert done.returncode == 3
    assert _error_lines(done.stderr) == [
        "clair-scan: error: cannot write to standard output: No space left on device"
    ]
    assert "Traceback" not in done.stderr
    validate_gitlab_report(json.loads((tmp_path / REPORT).read_text()))


@pytest.mark.parametrize("output", ["json", "table"])
def test_stdout_whose_reader_is_gone(clair, tmp_path, output):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "scanner", *_scan_archive(clair, tmp_path, "--format", output)]
    process = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    process.stdout.close()  # `| true`: the reader is gone before the results are written
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3
    assert _error_lines(stderr) == ["clair-scan: error: cannot write to standard output: Broken pipe"]
    validate_gitlab_report(json.loads((tmp_path / REPORT).read_text()))


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["scan", "--help"]])
def test_help_and_version_on_a_broken_stdout_are_not_success(tmp_path, args):
    with open("/dev/full", "w") as full:
        done = _process(args, tmp_path, stdout=full, stderr=subprocess.PIPE)
    assert done.returncode == 3
    assert "Traceback" not in done.stderr


def test_a_closed_stdout_fails_a_run_that_has_results_to_show(clair, tmp_path):
    done = _process(
        _scan_archive(clair, tmp_path, "--format", "json"),
        tmp_path,
        stdout=None,
        preexec_fn=lambda: os.close(1),
    )
    assert done.returncode == 3
    assert _error_lines(done.stderr) == [
        "clair-scan: error: cannot write to standard output: Bad file descriptor"
    ]
    report = json.loads((tmp_path / REPORT).read_text())
    validate_gitlab_report(report)
    assert report["vulnerabilities"]  # stdout's /dev/null did not become the report


# --- 8. --clair-timeout bounds the whole wait for Clair


@pytest.mark.docker
def test_the_head_starts_wait_counts_against_the_deadline(clair, load_image, tmp_path):
    """The head start asks Clair before the CLI loads; a Clair that never answers must not get
    the head start's wait and then a whole --clair-timeout more."""
    image = load_image(debian_image_layers())
    clair.hang(method="GET")
    result = run_process(["scan", image.tag, "--clair", clair.url, "--clair-timeout", "1"], cwd=tmp_path)
    assert result.code == 3
    assert "did not finish within 1 s" in result.stderr
    # The head start's question used up the second: nothing more was asked.
    assert [r.method for r in clair.requests] == ["GET"]


def _trickling_server(stop: threading.Event) -> tuple[socket.socket, threading.Thread]:
    """Answers every request with headers, then one byte of body every 0.1 s, for ever."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                )
                while not stop.wait(0.1):
                    try:
                        conn.sendall(b" ")
                    except OSError:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_a_clair_that_trickles_its_answer_hits_the_deadline():
    from scanner.clair import ClairClient, Deadline
    from scanner.errors import ClairError

    stop = threading.Event()
    listener, thread = _trickling_server(stop)
    outcome: list[BaseException] = []

    def ask() -> None:
        client = ClairClient(f"http://127.0.0.1:{listener.getsockname()[1]}")
        try:
            client.namespaces(Deadline(1))
        except BaseException as exc:
            outcome.append(exc)
        finally:
            client.close()

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(60)  # per read, a 1 s timeout never fires: without the deadline this never ends
    stop.set()
    thread.join(5)
    listener.close()
    assert not asker.is_alive()
    (error,) = outcome
    assert isinstance(error, ClairError) and "did not finish within 1 s" in str(error)


# --- 9 and 10. credentials and control characters from servers never reach the terminal or log


def test_a_server_echoing_our_authorization_header_is_redacted(clair, tmp_path):
    token = base64.b64encode(b"scanner:hunter22").decode()
    url = clair.url.replace("http://", "http://scanner:hunter22@")
    echo = f"bad request; you sent Authorization: Basic {token} and User-Agent: clair-scan"
    clair.fail_next(400, {"Error": {"Message": echo}}, count=None, method="GET")
    args = ["scan", "--archive", str(_archive(tmp_path)), "--clair", url, "--ip", "127.0.0.1"]
    result = run_process([*args, "--log", "debug.log", "--format", "json"], cwd=tmp_path)
    assert result.code == 3
    (line,) = _error_lines(result.stderr)
    assert "Clair answered 400" in line and "Authorization: ***" in line
    log = (tmp_path / "debug.log").read_text()
    assert "Authorization: ***" in log
    for where in (result.stderr, result.stdout, log):
        assert token not in where and "hunter22" not in where


def test_a_bearer_token_in_a_plain_error_body_is_redacted(clair, tmp_path):
    clair.fail_next(502, "upstream said: Bearer eyJhbGciOi.secretpart.sig rejected", count=None, method="GET")
    result = run_cli(_scan_archive(clair, tmp_path, "--clair-timeout", "3"), cwd=tmp_path)
    assert result.code == 3
    assert "secretpart" not in result.stderr and "Bearer ***" in result.stderr


def test_control_characters_from_a_server_stay_on_one_line(clair, tmp_path):
    forged = "oops\nclair-scan: error: \x1b[32mall clear\x1b[0m\r"
    clair.fail_next(400, {"Error": {"Message": forged}}, count=None, method="GET")
    result = run_process([*_scan_archive(clair, tmp_path), "--log", "debug.log"], cwd=tmp_path)
    assert result.code == 3
    (line,) = _error_lines(result.stderr)
    assert "oops\\nclair-scan: error: \\x1b[32mall clear\\x1b[0m\\r" in line
    assert "\x1b" not in result.stderr
    for record in (tmp_path / "debug.log").read_text().splitlines():
        assert record[:4].isdigit() or record.startswith("    "), record  # a record or a traceback line


@pytest.mark.parametrize("run", RUNNERS)
def test_control_characters_in_an_image_name(run, tmp_path):
    name = "evil\nclair-scan: error: nothing\x07"
    result = run(["scan", "--archive", name, "--clair", "http://127.0.0.1:1"], cwd=tmp_path)
    assert result.code == 2
    assert _error_lines(result.stderr) == [
        "clair-scan: error: evil\\nclair-scan: error: nothing\\x07: "
        "archive not found: evil\\nclair-scan: error: nothing\\x07"
    ]


def test_container_logs_in_an_error_are_indented():
    """A failed container's log is shown under the error; none of its lines can pass for ours."""
    from scanner.cli import _guarded
    from scanner.errors import BackendError

    def work() -> int:
        raise BackendError("Clair did not start", detail="line 1\nclair-scan: error: forged\x1b[0m")

    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command()(lambda: _guarded(work))
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 3
    assert result.stderr.splitlines() == [
        "clair-scan: error: Clair did not start",
        "  line 1",
        "  clair-scan: error: forged\\x1b[0m",
    ]


# --- what the property-based tests (test_fuzz.py) found


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("option", ["--clair-timeout", "--ready-timeout", "--max-db-age"])
def test_numbers_that_are_not_numbers_are_usage_errors(tmp_path, option, value):
    result = run_cli(["scan", "x", option, value], cwd=tmp_path)
    assert result.code == 2, result.stderr
    assert f"Invalid value for '{option}': {value} is not a finite number" in result.stderr


def test_an_absurdly_long_clair_timeout_still_scans(clair, tmp_path):
    result = run_cli(_scan_archive(clair, tmp_path, "--clair-timeout", "1e300"), cwd=tmp_path)
    assert result.code == 1, result.stderr
    validate_gitlab_report(json.loads((tmp_path / REPORT).read_text()))


@pytest.mark.parametrize(
    "layer",
    [
        {"Features": [1]},
        {"Features": "x"},
        {
            "Features": [
                {"Vulnerabilities": [{"Metadata": {"NVD": {"CVSSv3": {"Score": "high", "Vectors": "v"}}}}]}
            ]
        },
    ],
)
def test_a_malformed_layer_from_clair_is_clairs_failure(layer):
    from scanner import findings
    from scanner.errors import ClairError
    from scanner.models import Image, Layer

    image = Image("app:1", "sha256:" + "0" * 64, (Layer(0, "sha256:1", "sha256:1", ""),))
    with pytest.raises(ClairError, match="Clair's answer for app:1 is malformed"):
        findings.from_clair(layer, image)


def _evil_archive(tmp_path: Path) -> Path:
    tarball = tmp_path / "evil.tar"
    write_docker_save(
        tarball, debian_image_layers(), repo_tags=["evil/app:1\x1b[2J\nclair-scan: error: [bold]forged"]
    )
    return tarball


def test_control_characters_in_an_archives_image_name(clair, tmp_path):
    args = ["scan", "--archive", str(_evil_archive(tmp_path)), "--clair", clair.url, "--ip", "127.0.0.1"]
    result = run_process(args, cwd=tmp_path)
    assert result.code == 1, result.stderr
    assert "\x1b" not in result.stderr + result.stdout
    assert _error_lines(result.stderr) == []
    assert "evil/app:1\\x1b[2J\\nclair-scan: error: [bold]forged: 7 unapproved" in result.stderr


def test_control_characters_in_an_image_name_on_a_terminal(clair, tmp_path):
    """On a terminal, progress is drawn by rich, which reads descriptions as markup."""
    import pty

    args = ["scan", "--archive", str(_evil_archive(tmp_path)), "--clair", clair.url, "--ip", "127.0.0.1"]
    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300", "TERM": "xterm"}
    env.pop("CI", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "scanner", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        seen += chunk
    process.communicate(timeout=120)
    os.close(leader)
    assert process.returncode == 1
    text = seen.decode(errors="replace")
    assert "\x1b[2J" not in text and "\nclair-scan: error: [bold]" not in text
    assert "[bold]forged" in text  # shown as written, not taken as markup


def test_a_library_that_exits_on_its_own_is_a_failure(tmp_path):
    """A library calling sys.exit(1) mid-run (rich does on a broken pipe) must not read as findings."""
    prelude = """
        import sys
        from scanner import whitelist
        whitelist.load = lambda path: sys.exit(1)
    """
    (tmp_path / "w.yml").write_text("{}\n")
    done = _process(["scan", "x", "--clair", "http://127.0.0.1:1", "-w", "w.yml"], tmp_path, prelude)
    assert done.returncode == 3
    assert _error_lines(done.stderr) == [
        "clair-scan: error: unexpected SystemExit: 1 (please report it; run with --log FILE for details)"
    ]
