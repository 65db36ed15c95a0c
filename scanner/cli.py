"""The command line. The only module that knows about Typer and exit codes.

Exit codes: 0 nothing unapproved at or above the threshold; 1 unapproved findings; 2 usage or
configuration error; 3 Docker, Clair, PostgreSQL or filesystem failure (and unexpected bugs, which
must never read as "vulnerabilities found"); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import sys
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timezone
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import __version__, formats
from .errors import BackendError, ScanError, UsageError
from .models import Severity
from .redact import printable, printable_lines, redact

if TYPE_CHECKING:
    pass

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
    help="Scan container images for known vulnerabilities with Clair (v2 or v4).",
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


class Api(str, Enum):
    v2 = "v2"
    v4 = "v4"


def _version(value: bool) -> None:
    if value:
        from .terminal import output

        with output():
            typer.echo(f"clair-scan {__version__}")
        raise typer.Exit(OK)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Scan container images for known vulnerabilities with Clair (v2 or v4)."""


def _finite(value: float | None) -> float | None:
    """Typer reads "nan" and "inf" as numbers, and ranges let them through."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


# Options shared by the commands that run the appliance, declared once.
BackendOpt = Annotated[
    Api,
    typer.Option(
        "--backend",
        envvar="CLAIR_BACKEND",
        help="The appliance's Clair: v2 (arminc/clair-db, arminc/clair-local-scan) or v4 "
        "(arminc/clair-db-v4, arminc/clair-local-scan-v4).",
        metavar="v2|v4",
    ),
]
DbImage = Annotated[
    str | None,
    typer.Option(
        "--db-image",
        envvar="CLAIR_DB_IMAGE",
        help="Vulnerability database image [default: arminc/clair-db:latest, or "
        "arminc/clair-db-v4:latest with --backend v4].",
        metavar="IMAGE",
        show_default=False,
    ),
]
ClairImage = Annotated[
    str | None,
    typer.Option(
        "--clair-image",
        envvar="CLAIR_IMAGE",
        help="Clair image [default: arminc/clair-local-scan:latest, or "
        "arminc/clair-local-scan-v4:latest with --backend v4].",
        metavar="IMAGE",
        show_default=False,
    ),
]
PullOpt = Annotated[
    Pull,
    typer.Option("--pull", help="When to pull the backend images: missing, always or never.", metavar="WHEN"),
]
NetworkOpt = Annotated[
    Network | None,
    typer.Option(
        "--network",
        help="Backend networking, bridge or host [default: bridge if the engine has one, else host].",
        metavar="MODE",
    ),
]
DbPort = Annotated[
    int | None,
    typer.Option("--db-port", min=1, max=65535, help="PostgreSQL port with --network host.", metavar="PORT"),
]
ClairPort = Annotated[
    int | None,
    typer.Option(
        "--clair-port", min=1, max=65535, help="Clair API port with --network host.", metavar="PORT"
    ),
]
ReadyTimeout = Annotated[
    float,
    typer.Option(
        "--ready-timeout",
        min=1,
        callback=_finite,
        help="Seconds to wait for the backend to be ready.",
        metavar="SECONDS",
    ),
]
MaxDbAge = Annotated[
    float | None,
    typer.Option(
        "--max-db-age",
        min=0,
        callback=_finite,
        help="Days the vulnerability data may be old.",
        show_default=False,
        metavar="DAYS",
    ),
]
AllowUnknownAge = Annotated[
    bool,
    typer.Option(
        "--allow-unknown-db-age",
        help="With --max-db-age (scan) or --fail-on-old-db (status): accept data of unknown age.",
    ),
]
LogOpt = Annotated[
    str | None,
    typer.Option("--log", "-l", help="Write a debug log to this file.", show_default=False, metavar="FILE"),
]


def _backend_settings(
    api: Api,
    db_image: str | None,
    clair_image: str | None,
    pull: Pull,
    network: Network | None,
    db_port: int | None,
    clair_port: int | None,
    ready_timeout: float,
    ip: str | None = None,
    bind: str | None = None,
) -> Any:
    from . import backend

    flavour = backend.for_api(api.value)
    return backend.Settings(
        api=flavour.api,
        db_image=db_image or flavour.db_image,
        clair_image=clair_image or flavour.clair_image,
        pull=pull.value,
        network=network.value if network else None,
        db_port=db_port,
        clair_port=clair_port,
        ready_timeout=ready_timeout,
        ip=ip,
        bind=bind,
    )


def _setup_log(path: str | None) -> logging.Handler | None:
    # Without a handler anywhere, logging's last resort prints warnings and `log.exception`'s
    # traceback on stderr; this run's messages go through the terminal, details only to --log.
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    logging.raiseExceptions = False  # a log file that cannot be written must not print tracebacks
    if not path:
        return None
    try:
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot open log file {path}: {exc.strerror or exc}") from None
    handler.setFormatter(_LogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    return handler


class _LogFormatter(logging.Formatter):
    """Log records made printable: a message stays on its record's line, and the lines of a
    traceback are indented, so no text from outside can pass for a record of its own."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.msg, record.args = printable(record.getMessage()), None
        record.exc_text = None  # another formatter's, unredacted
        return super().format(record)

    def formatException(self, ei: Any) -> str:
        return "\n".join("    " + line for line in printable_lines(super().formatException(ei)))

    def formatStack(self, stack_info: str) -> str:
        return "\n".join("    " + line for line in printable_lines(stack_info))


_decided: list[int] = []
"""The exit codes command bodies decided on: only these may be 0 or 1 (see main)."""


class _Failures:
    """Errors no code path expected, in any thread, while a command body runs: each is logged
    with its traceback (to --log only) and shown as one line. Any of them makes the run's result
    untrustworthy, so it cannot end 0 or 1."""

    def __init__(self, terminal: Any, log_file: str | None) -> None:
        self.terminal = terminal
        self.where = f"details in {log_file}" if log_file else "run with --log FILE for details"
        self.seen = 0

    def unexpected(self, exc: BaseException, context: str = "") -> None:
        self.seen += 1
        log.error("unexpected error%s", context, exc_info=(type(exc), exc, exc.__traceback__))
        what = f"unexpected {type(exc).__name__}{context}: {exc}"
        self.terminal.error(f"{what} (please report it; {self.where})")

    def thread_hook(self, args: Any) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        name = args.thread.name if args.thread is not None else "a thread"
        self.unexpected(args.exc_value, f" in {name}")

    def unraisable_hook(self, args: Any) -> None:
        # Errors Python can only report (a failing __del__, a finalizer at exit): the run's
        # outcome does not depend on them, so they go to the log alone.
        if args.exc_value is not None:
            log.debug("ignored: %s", args.err_msg or args.object, exc_info=args.exc_value)


def _guarded(work: Callable[[], int], log_file: str | None = None) -> None:
    """Run a command body, turning every way it can end into one stderr line and an exit code."""
    import threading

    from .terminal import Terminal, flush_output

    terminal = Terminal()
    failures = _Failures(terminal, log_file)
    hooks = threading.excepthook, sys.unraisablehook
    threading.excepthook, sys.unraisablehook = failures.thread_hook, failures.unraisable_hook
    handler = None
    held = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    try:
        # The entry point holds these through start-up; from here on they end the run cleanly.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        handler = _setup_log(log_file)
        code = work()
        flush_output()
    except ScanError as exc:
        terminal.error(str(exc), exc.detail)
        code = exc.exit_code if exc.exit_code in (USAGE, FAILURE) else FAILURE
    except Terminated:
        terminal.error("terminated")
        code = TERMINATED
    except KeyboardInterrupt:
        terminal.error("interrupted")
        code = INTERRUPTED
    except (Exception, SystemExit) as exc:  # a bug (or a library exiting): never exit 1, "vulnerable"
        failures.unexpected(exc)
        code = FAILURE
    finally:
        # Held again as the entry point held them: a late signal must not change a settled outcome.
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        threading.excepthook, sys.unraisablehook = hooks
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
    if failures.seen and code in (OK, FOUND):
        code = FAILURE
    _decided.append(code)
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
        typer.Argument(
            help="Images: REF (the engine's if it holds it, else the registry's), docker:REF, "
            "registry:REF, docker-archive:FILE, oci-archive:FILE, oci-dir:DIR.",
            show_default=False,
            metavar="[IMAGE]...",
        ),
    ] = None,
    archive: Annotated[
        list[str] | None,
        typer.Option("--archive", help="Same as docker-archive:FILE (repeatable).", metavar="FILE"),
    ] = None,
    platform: Annotated[
        str | None,
        typer.Option(
            "--platform",
            help="Image of a multi-platform registry image or OCI index to scan "
            "[default: the engine's platform, else linux/amd64].",
            metavar="OS/ARCH[/VARIANT]",
            show_default=False,
        ),
    ] = None,
    relay_layers: Annotated[
        bool,
        typer.Option(
            "--relay-layers",
            help="Registry images: stream each layer through clair-scan's layer server instead of "
            "having Clair download it from the registry (for a Clair that cannot reach the registry).",
        ),
    ] = False,
    clair: Annotated[
        str | None,
        typer.Option(
            "--clair",
            envvar="CLAIR_ADDR",
            help="Use this running Clair (v2 or v4, told apart by itself) instead of the local appliance.",
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
        int,
        typer.Option(
            "--port", min=0, max=65535, help="Layer server port; 0 picks a free one.", metavar="PORT"
        ),
    ] = 0,
    clair_timeout: Annotated[
        float,
        typer.Option(
            "--clair-timeout",
            min=1,
            callback=_finite,
            help="Seconds Clair may take for one image.",
            metavar="SECONDS",
        ),
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
        str | None,
        typer.Option(
            "--report",
            "-r",
            help="GitLab report file [default: gl-container-scanning-report.json]. With several "
            "images, one per image: NAME-<image>.json.",
            metavar="FILE",
            show_default=False,
        ),
    ] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Write no GitLab report file.")] = False,
    output: Annotated[
        OutputFormat | None,
        typer.Option(
            "--format",
            help="table for people, json for scripts (stdout) [default: table].",
            show_default=False,
            metavar="FORMAT",
        ),
    ] = None,
    outputs: Annotated[
        list[str] | None,
        typer.Option(
            "--output",
            "-o",
            help="Write FORMAT to FILE, or to stdout without =FILE; repeatable. Formats: "
            + ", ".join(formats.NAMES)
            + ". Replaces the default table and GitLab report.",
            metavar="FORMAT[=FILE]",
            show_default=False,
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="Images scanned at once [default: the CPU count, at most 4].",
            metavar="N",
            show_default=False,
        ),
    ] = None,
    log_file: LogOpt = None,
    api: BackendOpt = Api.v2,
    db_image: DbImage = None,
    clair_image: ClairImage = None,
    pull: PullOpt = Pull.missing,
    network: NetworkOpt = None,
    db_port: DbPort = None,
    clair_port: ClairPort = None,
    ready_timeout: ReadyTimeout = 180.0,
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the started appliance running, as `up` does.")
    ] = False,
    max_db_age: MaxDbAge = None,
    allow_unknown_age: AllowUnknownAge = False,
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
            api, db_image, clair_image, pull, network, db_port, clair_port, ready_timeout, ip, bind
        )

    def work() -> int:
        from . import whitelist
        from .sources import Options, platforms

        if not images and not archive:
            raise UsageError("nothing to scan: name an image or give --archive FILE")
        if platform is not None:
            platforms.parse(platform)
        settings = pipeline.Settings(
            ip=ip or "",
            bind=bind,
            port=port,
            clair_timeout=clair_timeout,
            threshold=level,
            ignore_unfixed=ignore_unfixed,
            whitelist=whitelist.load(whitelist_file) if whitelist_file else None,
        )
        specs = list(images or []) + [f"docker-archive:{path}" for path in archive or []]
        return _scan(
            specs,
            Options(platform=platform, relay=relay_layers, per_layer=per_layer),
            clair,
            settings,
            backend_settings,
            _output_specs(outputs or [], report_path, no_report, output),
            keep,
            max_db_age,
            allow_unknown_age,
            jobs,
        )

    _guarded(work, log_file)


def _output_specs(
    given: list[str], report_path: str | None, no_report: bool, output: OutputFormat | None
) -> list[formats.Output]:
    """What the run writes. Without --output: --format's stdout and the GitLab report, as before
    --output existed. With it: exactly the outputs listed, plus --report and --format if given."""
    specs = [formats.parse_output(text) for text in given]
    if not specs or output is not None:
        specs.append(formats.Output((output or OutputFormat.table).value))
    if not no_report and (report_path is not None or not given):
        specs.append(formats.Output("gitlab", report_path or formats.get("gitlab").default_file))
    stdout = [o.format for o in specs if o.path is None]
    if len(stdout) > 1:
        both = " and ".join(stdout)
        raise UsageError(f"only one output may go to stdout, not {both}: give the others =FILE")
    return specs


def _scan(
    specs: list[str],
    options: Any,
    clair: str | None,
    settings: Any,
    backend_settings: Callable[[], Any],
    outputs: list[formats.Output],
    keep: bool,
    max_db_age: float | None,
    allow_unknown_age: bool = False,
    jobs: int | None = None,
) -> int:
    # Imports stay inside the commands: a rescan of an image Clair already holds should cost
    # little more than the interpreter's start, so nothing is loaded that the run does not use.
    import dataclasses

    from . import headstart, pipeline, sources
    from .names import normalize_url
    from .terminal import Terminal

    terminal = Terminal(quiet=any(o.path is None and o.format != "table" for o in outputs))
    with ExitStack() as stack:
        clair_url = normalize_url(clair) if clair is not None else None
        head = headstart.claim(headstart.engine_ref(specs[0]) if specs else "", clair_url)
        if head is not None:
            stack.callback(head.save.close)
        # Resolve the images first: a typo must not cost an appliance start-up.
        targets = sources.resolve(specs, options, stack, head)
        for _, target in targets:
            if isinstance(target, sources.Target) and target.note:
                terminal.info(target.note)
        plan = formats.Plan.make(outputs, [name for name, _ in targets])
        if all(isinstance(t, ScanError) for _, t in targets):
            return _show(terminal, [pipeline.Outcome(n, error=t) for n, t in targets], plan)  # type: ignore[arg-type]
        progress = stack.enter_context(terminal.progress())
        if clair_url is not None:
            from .layerserver import route_address

            settings = dataclasses.replace(settings, ip=settings.ip or route_address(clair_url))
            if max_db_age is not None:
                _check_running_clair_age(clair_url, max_db_age, allow_unknown_age, terminal)
        else:
            from . import backend
            from .sources import engine

            running = stack.enter_context(
                backend.appliance(engine.connect(), backend_settings(), progress, keep)
            )
            clair_url = running.clair_url
            settings = dataclasses.replace(settings, ip=running.layer_ip, bind=running.layer_bind)
            if max_db_age is not None:
                _check_age(backend.data_facts(running), max_db_age, allow_unknown_age, terminal)
            if any(o.format == "html" for o in outputs):  # the page shows the data's age
                settings = dataclasses.replace(settings, data_updated=backend.data_facts(running).updated)
        outcomes = pipeline.run(targets, clair_url, settings, plan.write_image, progress, jobs)
    return _show(terminal, outcomes, plan)


def _check_running_clair_age(url: str, max_days: float, allow_unknown: bool, terminal: Any) -> None:
    """--max-db-age with --clair: a Clair v4 tells its data's age through its API (the matcher's
    update operations); a Clair v2 only through its database, which --clair does not reach."""
    from .backend import update_operation_facts
    from .clairv4 import detect

    if detect(url) != "v4":
        raise UsageError(
            "--max-db-age with --clair needs a Clair v4: a Clair v2 keeps the data's age in its database",
            hint="leave --clair out to use the local appliance, which reads it there",
        )
    _check_age(update_operation_facts(url), max_days, allow_unknown, terminal)


def _check_age(facts: Any, max_days: float, allow_unknown: bool, terminal: Any) -> None:
    updated = facts.updated
    if updated is None:
        why = f"the age of the vulnerability data is unknown ({facts.problem or _no_age_record(facts)})"
        if not allow_unknown:
            raise BackendError(why, hint="--allow-unknown-db-age scans anyway")
        terminal.warn(why)
        return
    days = (datetime.now(timezone.utc) - updated).total_seconds() / 86400
    if days > max_days:
        raise BackendError(
            f"the vulnerability data is {days:.1f} days old, more than --max-db-age {max_days:g}",
            hint="pull a newer clair-db image",
        )


def _no_age_record(facts: Any) -> str:
    return "no updater/last record" if facts.updating is not None else "no update operation"


def _show(terminal: Any, outcomes: list[Any], plan: formats.Plan) -> int:
    """Show every image's outcome, then write what holds all images: only when every scan
    completed, so no such file ever misses an image."""
    from .formats.json import result_json

    stdout = next((o.format for o in plan.outputs if o.path is None), None)
    code = OK
    documents: list[dict[str, Any]] = []
    results = []
    for outcome in outcomes:
        if outcome.error is not None:
            terminal.error(f"{outcome.name}: {outcome.error}", outcome.error.detail)
            code = max(code, outcome.error.exit_code)
            documents.append({"image": outcome.name, "error": redact(str(outcome.error))})
            continue
        result = outcome.result
        results.append(result)
        for warning in result.warnings:
            terminal.warn(warning)
        if stdout == "table":
            terminal.table(result)
        elif stdout == "json":
            documents.append(result_json(result))
        terminal.summary(result, outcome.files)
        if result.unapproved:
            code = max(code, FOUND)
    complete = bool(results) and len(results) == len(outcomes)
    if complete:
        try:
            written = plan.write_combined(results)
        except ScanError as exc:
            terminal.error(str(exc), exc.detail)
            return FAILURE
        if written:
            terminal.info(f"wrote {', '.join(written)} ({len(results)} images)")
    elif results and plan.combined_paths():
        terminal.warn(f"not written, since not every image was scanned: {', '.join(plan.combined_paths())}")
    if stdout == "json":
        terminal.json({"images": documents, "exit_code": code})
    elif stdout not in (None, "table") and complete:
        terminal.document(formats.get(stdout).render(results))
    return code


@app.command()
def up(
    api: BackendOpt = Api.v2,
    db_image: DbImage = None,
    clair_image: ClairImage = None,
    pull: PullOpt = Pull.missing,
    network: NetworkOpt = None,
    db_port: DbPort = None,
    clair_port: ClairPort = None,
    ready_timeout: ReadyTimeout = 180.0,
    update: Annotated[
        bool,
        typer.Option(
            "--update", help="Let Clair update its vulnerability data (every 2 h; Clair v4: every 6 h)."
        ),
    ] = False,
    update_interval: Annotated[
        str | None,
        typer.Option(
            "--update-interval",
            help="Let Clair update its data this often: 30m, 6h, 1d, 1h30m (implies --update).",
            metavar="DURATION",
            show_default=False,
        ),
    ] = None,
    log_file: LogOpt = None,
) -> None:
    """Start the appliance and leave it running: later scans reuse it with no start-up cost.

    Clair does not update its vulnerability data unless --update or --update-interval asks it to.
    When another run is starting the appliance at the same moment, this one waits for it.
    """

    def work() -> int:
        import dataclasses

        from . import backend
        from .sources import engine as image
        from .terminal import Terminal, describe_updates

        flavour = backend.for_api(api.value)
        interval = _update_interval(update, update_interval, flavour.default_update_interval)
        if flavour.api == "v4" and 0 < interval < 60:
            raise UsageError(
                f"--update-interval {update_interval} is too short for Clair v4, which would update every 6h"
                " instead: give 1m or more"
            )
        terminal = Terminal()
        settings = dataclasses.replace(
            _backend_settings(api, db_image, clair_image, pull, network, db_port, clair_port, ready_timeout),
            update_interval=interval,
        )
        client = image.connect()
        with terminal.progress() as progress:
            running, started = backend.ensure_warm(client, settings, progress)
        if started:
            terminal.info(f"appliance ready: Clair at {running.clair_url}; stop it with `clair-scan down`")
            return OK
        terminal.info(f"the appliance is already running: Clair at {running.clair_url}")
        if running.update_interval is not None and running.update_interval != interval:
            terminal.warn(
                f"its updater is {describe_updates(running.update_interval)}, not"
                f" {describe_updates(interval)} as asked; to change that, restart it with"
                " `clair-scan down` and `clair-scan up` with the update option you want"
            )
        return OK

    _guarded(work, log_file)


def _update_interval(update: bool, text: str | None, default: float | None = None) -> float:
    """Seconds between Clair's updates: 0 unless asked, `default` (Clair v2's 2 h unless given)
    for a bare --update."""
    from .backend import DEFAULT_UPDATE_INTERVAL

    if text is None:
        return (DEFAULT_UPDATE_INTERVAL if default is None else default) if update else 0.0
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    given = text.strip()
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", given)
    seconds = sum(float(number) * units[unit] for number, unit in parts)
    if "".join(number + unit for number, unit in parts) != given or seconds <= 0:
        raise UsageError(f"--update-interval {text!r} is not a duration such as 30m, 6h, 1d or 1h30m")
    return seconds


@app.command()
def down(
    api: Annotated[
        Api | None,
        typer.Option(
            "--backend",
            envvar="CLAIR_BACKEND",
            help="Remove only the v2 or the v4 appliance [default: both].",
            metavar="v2|v4",
            show_default=False,
        ),
    ] = None,
    log_file: LogOpt = None,
) -> None:
    """Remove the appliance and anything a killed run left behind."""

    def work() -> int:
        from . import backend
        from .sources import engine as image
        from .terminal import Terminal

        removed = backend.remove(image.connect(), api=api.value if api else None)
        Terminal().info(f"removed {removed} container(s) and network(s)" if removed else "nothing to remove")
        return OK

    _guarded(work, log_file)


@app.command()
def status(
    max_db_age: Annotated[
        float,
        typer.Option(
            "--max-db-age",
            min=0,
            callback=_finite,
            help="Warn when the vulnerability data is older (days).",
            metavar="DAYS",
        ),
    ] = 7.0,
    fail: Annotated[
        bool, typer.Option("--fail-on-old-db", help="Exit 3 when the data is older than --max-db-age.")
    ] = False,
    allow_unknown_age: AllowUnknownAge = False,
    api: BackendOpt = Api.v2,
    log_file: LogOpt = None,
) -> None:
    """Show the appliance's containers, whether Clair answers, the vulnerability data's age and
    whether Clair is updating it."""

    def work() -> int:
        from . import backend
        from .sources import engine as image
        from .terminal import Terminal

        terminal = Terminal()
        state = backend.status(image.connect(), backend.Settings(api=backend.for_api(api.value).api))
        return terminal.status(state, max_db_age, fail, fail and not allow_unknown_age)

    _guarded(work, log_file)


@bundle_app.command("save")
def bundle_save(
    path: Annotated[str, typer.Argument(metavar="FILE", help="Tarball to write.")],
    api: BackendOpt = Api.v2,
    db_image: DbImage = None,
    clair_image: ClairImage = None,
    log_file: LogOpt = None,
) -> None:
    """Write both backend images into one tarball (pulling them if needed)."""

    def work() -> int:
        from . import backend
        from .sources import engine as image
        from .terminal import Terminal

        flavour = backend.for_api(api.value)
        refs = [db_image or flavour.db_image, clair_image or flavour.clair_image]
        terminal = Terminal()
        with terminal.progress() as progress:
            backend.bundle_save(image.connect(), path, refs, progress)
        terminal.info(f"wrote {refs[0]} and {refs[1]} to {path}")
        return OK

    _guarded(work, log_file)


@bundle_app.command("load")
def bundle_load(
    path: Annotated[str, typer.Argument(metavar="FILE", help="Tarball written by `bundle save`.")],
    api: Annotated[
        Api | None,
        typer.Option(
            "--backend",
            envvar="CLAIR_BACKEND",
            help="Warn unless the bundle holds this appliance's default images.",
            metavar="v2|v4",
            show_default=False,
        ),
    ] = None,
    log_file: LogOpt = None,
) -> None:
    """Load the backend images from a tarball on a host with no network."""

    def work() -> int:
        from . import backend
        from .sources import engine as image
        from .terminal import Terminal

        terminal = Terminal()
        with terminal.progress() as progress:
            tags = backend.bundle_load(image.connect(), path, progress)
        terminal.info("loaded " + (", ".join(tags) if tags else "images without tags"))
        if api is not None:
            flavour = backend.for_api(api.value)
            missing = [ref for ref in (flavour.db_image, flavour.clair_image) if ref not in tags]
            if missing:
                terminal.warn(
                    f"the bundle lacks the {flavour.api} appliance's {' and '.join(missing)}:"
                    " give the images it holds with --db-image and --clair-image"
                )
        return OK

    _guarded(work, log_file)


def main() -> None:
    """The CLI's half of the entry point (scanner.__main__ gives the export its head start first).
    Command bodies end through _guarded; Typer maps usage errors to 2."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
        code = OK
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else FAILURE if done.code else OK
    except ScanError as exc:
        _last_words(str(exc))
        code = exc.exit_code
    except BaseException as exc:  # outside a command body: Typer itself, --help or --version
        _last_words(f"unexpected {type(exc).__name__}: {exc} (please report it)")
        code = FAILURE
    # 1 says "vulnerabilities found" and only a finished scan may say it. Typer exits 1 on its
    # own too (a broken pipe while printing --help): that is a failure.
    if code == FOUND and FOUND not in _decided:
        code = FAILURE
    # The run has cleaned up after itself by now. Tearing the interpreter down, freeing every
    # module the docker SDK and Typer loaded, would add ~30 ms to every scan.
    logging.shutdown()
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (OSError, ValueError):
        if code in (OK, FOUND):
            code = FAILURE
    with contextlib.suppress(OSError, ValueError, AttributeError):  # messages are best effort
        sys.stderr.flush()
    os._exit(code)


def _last_words(message: str) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.write(f"clair-scan: error: {printable(message)}\n")
        sys.stderr.flush()
