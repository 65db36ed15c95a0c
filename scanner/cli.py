"""The command line. The only module that knows about Typer and exit codes.

Exit codes: 0 nothing unapproved at or above the threshold; 1 unapproved findings; 2 usage or
configuration error; 3 Docker, Clair, PostgreSQL or filesystem failure (and unexpected bugs, which
must never read as "vulnerabilities found"); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timezone
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import __version__
from .errors import BackendError, ScanError, UsageError
from .models import Severity

if TYPE_CHECKING:
    from . import pipeline

OK, FOUND, USAGE, FAILURE, INTERRUPTED, TERMINATED = 0, 1, 2, 3, 130, 143

log = logging.getLogger("scanner")


class Terminated(KeyboardInterrupt):
    """SIGTERM, as sent by a cancelled CI job, `timeout` or `docker stop`. It takes Ctrl-C's way
    out, so the same cleanup runs: containers, servers and temp files go, no report is half-written."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Scan container images for known vulnerabilities with Clair v2.",
)
bundle_app = typer.Typer(no_args_is_help=True, help="Move the backend images to hosts without a registry.")
app.add_typer(bundle_app, name="bundle")


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


class Pull(str, Enum):
    missing = "missing"
    always = "always"
    never = "never"


class Network(str, Enum):
    bridge = "bridge"
    host = "host"


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


# Options shared by the commands that run the appliance, declared once.
DbImage = Annotated[
    str, typer.Option("--db-image", envvar="CLAIR_DB_IMAGE", help="Vulnerability database image.")
]
ClairImage = Annotated[str, typer.Option("--clair-image", envvar="CLAIR_IMAGE", help="Clair v2 image.")]
PullOpt = Annotated[Pull, typer.Option("--pull", help="When to pull the backend images.")]
NetworkOpt = Annotated[
    Network | None,
    typer.Option("--network", help="Backend networking [default: bridge if the engine has one, else host]."),
]
DbPort = Annotated[
    int | None, typer.Option("--db-port", min=1, max=65535, help="PostgreSQL port with --network host.")
]
ClairPort = Annotated[
    int | None, typer.Option("--clair-port", min=1, max=65535, help="Clair API port with --network host.")
]
ReadyTimeout = Annotated[
    float, typer.Option("--ready-timeout", min=1, help="Seconds to wait for the backend to be ready.")
]
MaxDbAge = Annotated[
    float | None,
    typer.Option("--max-db-age", min=0, help="Days the vulnerability data may be old.", show_default=False),
]
LogOpt = Annotated[
    str | None, typer.Option("--log", "-l", help="Write a debug log to this file.", show_default=False)
]


def _backend_settings(
    db_image: str,
    clair_image: str,
    pull: Pull,
    network: Network | None,
    db_port: int | None,
    clair_port: int | None,
    ready_timeout: float,
    ip: str | None = None,
    bind: str | None = None,
) -> Any:
    from . import backend

    return backend.Settings(
        db_image=db_image,
        clair_image=clair_image,
        pull=pull.value,
        network=network.value if network else None,
        db_port=db_port,
        clair_port=clair_port,
        ready_timeout=ready_timeout,
        ip=ip,
        bind=bind,
    )


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


def _guarded(work: Callable[[], int], log_file: str | None = None) -> None:
    """Run a command body, turning every way it can end into one stderr line and an exit code."""
    from .terminal import Terminal

    terminal = Terminal()
    try:
        # The entry point holds these through start-up; from here on they end the run cleanly.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        _setup_log(log_file)
        code = work()
    except ScanError as exc:
        terminal.error(str(exc), exc.detail)
        code = exc.exit_code if exc.exit_code in (USAGE, FAILURE) else FAILURE
    except Terminated:
        terminal.error("terminated")
        code = TERMINATED
    except KeyboardInterrupt:
        terminal.error("interrupted")
        code = INTERRUPTED
    except Exception as exc:  # a bug: say so, and never exit 1, which CI reads as "vulnerable"
        log.exception("unexpected error")
        terminal.error(f"unexpected {type(exc).__name__}: {exc} (please report it; --log FILE has details)")
        code = FAILURE
    raise typer.Exit(code)


def _severity(text: str) -> Severity:
    try:
        return Severity.parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def scan(
    images: Annotated[
        list[str] | None,
        typer.Argument(help="Images in the Docker engine.", show_default=False, metavar="[IMAGE]..."),
    ] = None,
    archive: Annotated[
        list[str] | None,
        typer.Option("--archive", help="Scan a `docker save` tarball (repeatable).", metavar="FILE"),
    ] = None,
    clair: Annotated[
        str | None,
        typer.Option(
            "--clair",
            envvar="CLAIR_ADDR",
            help="Use this running Clair v2 instead of starting the local appliance.",
            metavar="URL",
        ),
    ] = None,
    ip: Annotated[
        str | None,
        typer.Option(
            "--ip",
            help="Address Clair downloads layers from [default: found from the route to Clair].",
            metavar="ADDR",
        ),
    ] = None,
    bind: Annotated[
        str | None,
        typer.Option("--bind", help="Address the layer server listens on [default: --ip].", metavar="ADDR"),
    ] = None,
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Layer server port; 0 picks a free one.")
    ] = 0,
    clair_timeout: Annotated[
        float, typer.Option("--clair-timeout", min=1, help="Seconds Clair may take for one image.")
    ] = 300.0,
    whitelist_file: Annotated[
        str | None,
        typer.Option(
            "--whitelist",
            "-w",
            envvar="WHITELIST_FILE",
            help="Whitelist YAML (clair-scanner's format).",
            metavar="FILE",
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
            metavar="SEVERITY",
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
            help="GitLab report file. With several images, one per image: NAME-<image>.json.",
            metavar="FILE",
        ),
    ] = "gl-container-scanning-report.json",
    no_report: Annotated[bool, typer.Option("--no-report", help="Write no report file.")] = False,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="table for people, json for scripts.")
    ] = OutputFormat.table,
    log_file: LogOpt = None,
    db_image: DbImage = "arminc/clair-db:latest",
    clair_image: ClairImage = "arminc/clair-local-scan:latest",
    pull: PullOpt = Pull.missing,
    network: NetworkOpt = None,
    db_port: DbPort = None,
    clair_port: ClairPort = None,
    ready_timeout: ReadyTimeout = 180.0,
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the started appliance running, as `up` does.")
    ] = False,
    max_db_age: MaxDbAge = None,
    per_layer: Annotated[
        bool,
        typer.Option(
            "--per-layer",
            help="Send Clair every layer of the image (exported with `docker save`) and show the "
            "layer that brought each finding, instead of one small layer of the files Clair reads. "
            "Slower, and its cost grows with the image; choose it to learn which layer to fix, or "
            "for images whose package database an upper layer deletes (see README).",
        ),
    ] = False,
) -> None:
    """Scan images for vulnerabilities; the exit code is the CI gate.

    By default Clair is given one small layer made of the files it reads (the OS-release files
    and the package databases), whatever the image's size; --per-layer sends every layer.

    Without --clair, the Clair appliance (clair-db and clair-local-scan) is started for the scan
    and removed afterwards, or the one `clair-scan up` left running is used.
    """
    from . import pipeline

    level = _severity(threshold)

    def backend_settings() -> Any:
        return _backend_settings(
            db_image, clair_image, pull, network, db_port, clair_port, ready_timeout, ip, bind
        )

    def work() -> int:
        from . import whitelist

        if not images and not archive:
            raise UsageError("nothing to scan: name an image or give --archive FILE")
        settings = pipeline.Settings(
            ip=ip or "",
            bind=bind,
            port=port,
            clair_timeout=clair_timeout,
            threshold=level,
            ignore_unfixed=ignore_unfixed,
            whitelist=whitelist.load(whitelist_file) if whitelist_file else None,
        )
        return _scan(
            images or [],
            archive or [],
            clair,
            settings,
            backend_settings,
            None if no_report else report_path,
            output,
            keep,
            max_db_age,
            per_layer,
        )

    _guarded(work, log_file)


def _scan(
    images: list[str],
    archives: list[str],
    clair: str | None,
    settings: Any,
    backend_settings: Callable[[], Any],
    report_path: str | None,
    output: OutputFormat,
    keep: bool,
    max_db_age: float | None,
    per_layer: bool = False,
) -> int:
    # Imports stay inside the commands: a rescan of an image Clair already holds should cost
    # little more than the interpreter's start, so nothing is loaded that the run does not use.
    import dataclasses

    from . import headstart, image, pipeline, report
    from .names import normalize_url
    from .terminal import Terminal

    terminal = Terminal(quiet=output is OutputFormat.json)
    with ExitStack() as stack:
        clair_url = normalize_url(clair) if clair is not None else None
        head = headstart.claim(images[0] if images else "", clair_url)
        if head is not None:
            stack.callback(head.save.close)
        # Resolve the images first: a typo must not cost an appliance start-up.
        targets = _targets(images, archives, head, stack, per_layer)
        names = [name for name, _ in targets]
        paths = report.report_paths(report_path, names) if report_path else [None] * len(names)
        if all(isinstance(t, ScanError) for _, t in targets):
            return _show(terminal, [pipeline.Outcome(n, error=t) for n, t in targets], output)  # type: ignore[arg-type]
        progress = stack.enter_context(terminal.progress())
        if clair_url is not None:
            from .layerserver import route_address

            settings = dataclasses.replace(settings, ip=settings.ip or route_address(clair_url))
            if max_db_age is not None:
                raise UsageError("--max-db-age needs the local appliance (it reads Clair's database)")
        else:
            from . import backend

            running = stack.enter_context(
                backend.appliance(image.connect(), backend_settings(), progress, keep)
            )
            clair_url = running.clair_url
            settings = dataclasses.replace(settings, ip=running.layer_ip, bind=running.layer_bind)
            if max_db_age is not None:
                _check_age(running.dsn, max_db_age, terminal)
        outcomes = pipeline.run(targets, clair_url, settings, list(paths), progress)
    return _show(terminal, outcomes, output)


def _targets(
    images: list[str], archives: list[str], head: Any, stack: ExitStack, per_layer: bool
) -> list[pipeline.Pending]:
    from . import pipeline

    if per_layer:
        return pipeline.docker_targets(images, head) + pipeline.archive_targets(archives, stack)
    return pipeline.distilled_docker_targets(images) + pipeline.distilled_archive_targets(archives, stack)


def _check_age(dsn: str, max_days: float, terminal: Any) -> None:
    from . import backend

    _, updated, problem = backend.database_facts(dsn)
    if updated is None:
        terminal.warn(f"the age of the vulnerability data is unknown ({problem or 'no updater/last record'})")
        return
    days = (datetime.now(timezone.utc) - updated).total_seconds() / 86400
    if days > max_days:
        raise BackendError(
            f"the vulnerability data is {days:.1f} days old, more than --max-db-age {max_days:g}",
            hint="pull a newer clair-db image",
        )


def _show(terminal: Any, outcomes: list[Any], output: OutputFormat) -> int:
    from . import report

    code = OK
    documents: list[dict[str, Any]] = []
    for outcome in outcomes:
        if outcome.error is not None:
            terminal.error(f"{outcome.name}: {outcome.error}", outcome.error.detail)
            code = max(code, outcome.error.exit_code)
            documents.append({"image": outcome.name, "error": str(outcome.error)})
            continue
        result = outcome.result
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
        terminal.json({"images": documents, "exit_code": code})
    return code


@app.command()
def up(
    db_image: DbImage = "arminc/clair-db:latest",
    clair_image: ClairImage = "arminc/clair-local-scan:latest",
    pull: PullOpt = Pull.missing,
    network: NetworkOpt = None,
    db_port: DbPort = None,
    clair_port: ClairPort = None,
    ready_timeout: ReadyTimeout = 180.0,
    log_file: LogOpt = None,
) -> None:
    """Start the appliance and leave it running: later scans reuse it with no start-up cost."""

    def work() -> int:
        from . import backend, image
        from .terminal import Terminal

        terminal = Terminal()
        settings = _backend_settings(db_image, clair_image, pull, network, db_port, clair_port, ready_timeout)
        client = image.connect()
        running = backend.find_warm(client, settings)
        if running is not None:
            terminal.info(f"the appliance is already running: Clair at {running.clair_url}")
            return OK
        with terminal.progress() as progress:
            running = backend.start(client, settings, progress, warm=True)
        terminal.info(f"appliance ready: Clair at {running.clair_url}; stop it with `clair-scan down`")
        return OK

    _guarded(work, log_file)


@app.command()
def down(log_file: LogOpt = None) -> None:
    """Remove the appliance and anything a killed run left behind."""

    def work() -> int:
        from . import backend, image
        from .terminal import Terminal

        removed = backend.remove(image.connect())
        Terminal().info(f"removed {removed} container(s) and network(s)" if removed else "nothing to remove")
        return OK

    _guarded(work, log_file)


@app.command()
def status(
    max_db_age: Annotated[
        float, typer.Option("--max-db-age", min=0, help="Warn when the vulnerability data is older (days).")
    ] = 7.0,
    fail: Annotated[
        bool, typer.Option("--fail-on-old-db", help="Exit 3 when the data is older than --max-db-age.")
    ] = False,
    log_file: LogOpt = None,
) -> None:
    """Show the appliance's containers, whether Clair answers, and the vulnerability data's age."""

    def work() -> int:
        from . import backend, image
        from .terminal import Terminal

        terminal = Terminal()
        state = backend.status(image.connect(), backend.Settings())
        return terminal.status(state, max_db_age, fail)

    _guarded(work, log_file)


@bundle_app.command("save")
def bundle_save(
    path: Annotated[str, typer.Argument(metavar="FILE", help="Tarball to write.")],
    db_image: DbImage = "arminc/clair-db:latest",
    clair_image: ClairImage = "arminc/clair-local-scan:latest",
    log_file: LogOpt = None,
) -> None:
    """Write both backend images into one tarball (pulling them if needed)."""

    def work() -> int:
        from . import backend, image
        from .terminal import Terminal

        backend.bundle_save(image.connect(), path, [db_image, clair_image])
        Terminal().info(f"wrote {db_image} and {clair_image} to {path}")
        return OK

    _guarded(work, log_file)


@bundle_app.command("load")
def bundle_load(
    path: Annotated[str, typer.Argument(metavar="FILE", help="Tarball written by `bundle save`.")],
    log_file: LogOpt = None,
) -> None:
    """Load the backend images from a tarball on a host with no network."""

    def work() -> int:
        from . import backend, image
        from .terminal import Terminal

        tags = backend.bundle_load(image.connect(), path)
        Terminal().info("loaded " + (", ".join(tags) if tags else "images without tags"))
        return OK

    _guarded(work, log_file)


def main() -> None:
    """The CLI's half of the entry point (scanner.__main__ gives the export its head start first).
    Command bodies end through _guarded; Typer maps usage errors to 2."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except SystemExit as done:
        if not isinstance(done.code, int | None):
            raise
        code = done.code or OK
    # The run has cleaned up after itself by now. Tearing the interpreter down, freeing every
    # module the docker SDK and Typer loaded, would add ~30 ms to every scan.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`) is not an error
            stream.flush()
    os._exit(code)
