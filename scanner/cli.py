"""The command line. The only module that knows about Typer and exit codes.

Exit codes: 0 nothing unapproved at or above the threshold; 1 unapproved findings; 2 usage or
configuration error; 3 Docker, Clair, PostgreSQL or filesystem failure (and unexpected bugs, which
must never read as "vulnerabilities found"); 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from contextlib import ExitStack
from enum import Enum
from typing import Annotated, Any

import typer

from . import __version__, pipeline, report
from .errors import ScanError, UsageError
from .models import Severity

OK, FOUND, USAGE, FAILURE, INTERRUPTED = 0, 1, 2, 3, 130

log = logging.getLogger("scanner")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Scan container images for known vulnerabilities with Clair v2.",
)


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clair-scan {__version__}")
        raise typer.Exit(OK)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Scan container images for known vulnerabilities with Clair v2."""


def _setup_log(path: str | None) -> None:
    if not path:
        return
    try:
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot open log file {path}: {exc.strerror or exc}") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)


def _guarded(work: Callable[[], int]) -> int:
    """Run a command body, turning every way it can end into one stderr line and an exit code."""
    from .terminal import Terminal

    try:
        return work()
    except ScanError as exc:
        Terminal().error(str(exc))
        return exc.exit_code if exc.exit_code in (USAGE, FAILURE) else FAILURE
    except KeyboardInterrupt:
        Terminal().error("interrupted")
        return INTERRUPTED
    except Exception as exc:  # a bug: say so, and never exit 1, which CI reads as "vulnerable"
        log.exception("unexpected error")
        Terminal().error(f"unexpected {type(exc).__name__}: {exc} (please report this; --log has details)")
        return FAILURE


def _severity(text: str) -> Severity:
    try:
        return Severity.parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


ImagesArg = Annotated[
    list[str] | None, typer.Argument(help="Images in the Docker engine.", show_default=False)
]
ClairOpt = Annotated[
    str | None,
    typer.Option(
        "--clair", envvar="CLAIR_ADDR", help="URL of a running Clair v2 (API port).", show_default=False
    ),
]


@app.command()
def scan(
    images: ImagesArg = None,
    archive: Annotated[
        list[str] | None,
        typer.Option(
            "--archive", help="Scan a `docker save` tarball instead (repeatable).", show_default=False
        ),
    ] = None,
    clair: ClairOpt = None,
    ip: Annotated[
        str | None,
        typer.Option(
            "--ip", help="Address Clair uses to download layers from this host.", show_default=False
        ),
    ] = None,
    bind: Annotated[
        str | None,
        typer.Option(
            "--bind",
            help="Address the layer server listens on [default: the --ip value].",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Layer server port; 0 picks a free one.")
    ] = 0,
    clair_timeout: Annotated[
        float, typer.Option("--clair-timeout", min=1, help="Seconds Clair may take for one image's analysis.")
    ] = 300.0,
    whitelist_file: Annotated[
        str | None,
        typer.Option(
            "--whitelist",
            "-w",
            envvar="WHITELIST_FILE",
            help="Whitelist YAML (clair-scanner format).",
            show_default=False,
        ),
    ] = None,
    threshold: Annotated[
        str,
        typer.Option(
            "--threshold",
            "-t",
            envvar="CLAIR_OUTPUT",
            help="Lowest severity that fails the scan: Unknown, Negligible, Low, Medium, High, "
            "Critical, Defcon1.",
        ),
    ] = "Unknown",
    ignore_unfixed: Annotated[
        bool, typer.Option("--ignore-unfixed", help="Findings without a fix do not count.")
    ] = False,
    report_path: Annotated[
        str,
        typer.Option(
            "--report",
            "-r",
            help="GitLab report file; with several images, one per image (name-<image>.json).",
        ),
    ] = "gl-container-scanning-report.json",
    no_report: Annotated[bool, typer.Option("--no-report", help="Write no report file.")] = False,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="table for people, json for scripts.")
    ] = OutputFormat.table,
    log_file: Annotated[
        str | None, typer.Option("--log", "-l", help="Write a debug log to this file.", show_default=False)
    ] = None,
) -> None:
    """Scan images for vulnerabilities; the exit code is the CI gate."""
    level = _severity(threshold)
    code = _guarded(
        lambda: _scan(
            images or [],
            archive or [],
            clair,
            ip,
            bind,
            port,
            clair_timeout,
            whitelist_file,
            level,
            ignore_unfixed,
            None if no_report else report_path,
            output,
            log_file,
        )
    )
    raise typer.Exit(code)


def _scan(
    images: list[str],
    archives: list[str],
    clair: str | None,
    ip: str | None,
    bind: str | None,
    port: int,
    clair_timeout: float,
    whitelist_file: str | None,
    threshold: Severity,
    ignore_unfixed: bool,
    report_path: str | None,
    output: OutputFormat,
    log_file: str | None,
) -> int:
    from . import whitelist
    from .clair import normalize_url
    from .layerserver import route_address
    from .terminal import Terminal

    _setup_log(log_file)
    if not images and not archives:
        raise UsageError("nothing to scan: name an image or give --archive FILE")
    rules = whitelist.load(whitelist_file) if whitelist_file else None
    if clair is None:
        raise UsageError("no Clair given: pass --clair URL or set CLAIR_ADDR")
    clair_url = normalize_url(clair)
    terminal = Terminal(quiet=output is OutputFormat.json)
    with ExitStack() as stack:
        targets = pipeline.docker_targets(images) + pipeline.archive_targets(archives, stack)
        settings = pipeline.Settings(
            ip=ip or route_address(clair_url),
            bind=bind,
            port=port,
            clair_timeout=clair_timeout,
            threshold=threshold,
            ignore_unfixed=ignore_unfixed,
            whitelist=rules,
        )
        names = [name for name, _ in targets]
        paths: list[str | None] = (
            list(report.report_paths(report_path, names)) if report_path else [None] * len(names)
        )
        with terminal.progress() as observer:
            outcomes = pipeline.run(targets, clair_url, settings, paths, observer)
    return _show(terminal, outcomes, output)


def _show(terminal: Any, outcomes: list[pipeline.Outcome], output: OutputFormat) -> int:
    code = OK
    documents: list[dict[str, Any]] = []
    for outcome in outcomes:
        if outcome.error is not None:
            terminal.error(f"{outcome.name}: {outcome.error}")
            code = max(code, outcome.error.exit_code)
            documents.append({"image": outcome.name, "error": str(outcome.error)})
            continue
        result = outcome.result
        assert result is not None
        for warning in result.warnings:
            terminal.warn(warning)
        if output is OutputFormat.table:
            terminal.table(result)
        else:
            documents.append(report.result_json(result))
        terminal.summary(result, outcome.report)
        if result.unapproved:
            code = max(code, FOUND)
    if output is OutputFormat.json:
        terminal.out.print_json(json.dumps({"images": documents, "exit_code": code}))
    return code


def main() -> None:
    """Console-script entry point. Typer maps usage errors to 2 and Ctrl-C to 130 itself."""
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("clair-scan: error: interrupted\n")
        sys.exit(INTERRUPTED)
