"""What a person sees: progress and summaries on stderr, the findings table on stdout.

Progress is animated only on a terminal; in CI logs and pipes it becomes plain lines. rich is
loaded only for what needs it (a table, colour, animation), which keeps a quick rescan quick.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from .errors import FileSystemError
from .models import Finding, ImageResult, Severity
from .redact import escape, printable, printable_lines

_STYLE = {
    Severity.DEFCON1: "bold magenta",
    Severity.CRITICAL: "bold red",
    Severity.HIGH: "red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
    Severity.NEGLIGIBLE: "dim",
    Severity.UNKNOWN: "dim",
}


class _PlainProgress:
    """Progress as lines for CI logs and pipes. Every step is a line; a byte transfer is one when
    it starts, at each further tenth of its total (at most one a second), after PLAIN_INTERVAL
    seconds without a line if it moved, and when it ends: never a line per chunk. Workers of a
    parallel scan call from their threads: a lock keeps lines whole."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._transfers: dict[str, _Transfer] = {}

    def status(self, name: str, text: str) -> None:
        with self._lock:
            _message(f"{name}: {text}")

    def layers(self, name: str, sent: int, total: int) -> None:
        with self._lock:
            _message(f"{name}: layer {sent}/{total} indexed")

    def warn(self, text: str) -> None:
        with self._lock:
            _message(f"clair-scan: warning: {text}")

    def transfer(self, name: str, part: str, done: int, total: int | None) -> None:
        with self._lock:
            transfer = self._transfers.setdefault(name, _Transfer())
            line = transfer.update(part, done, total, time.monotonic())
            if line is not None:
                _message(f"{name}: {line}")


PLAIN_INTERVAL = 5.0


class _Transfer:
    """The parts (layers) of one transfer, added up, and when it was last shown."""

    def __init__(self) -> None:
        self._parts: dict[str, tuple[int, int | None]] = {}
        self._shown_at: float | None = None
        self._shown_tenth = -1
        self._shown_done = -1

    def update(self, part: str, done: int, total: int | None, now: float) -> str | None:
        self._parts[part] = (done, total)
        done_all = sum(d for d, _ in self._parts.values())
        totals = [t for _, t in self._parts.values()]
        known = None if None in totals else sum(t or 0 for t in totals)
        ended = known is not None and done_all >= known
        tenth = -1 if not known else min(10, done_all * 10 // known)
        # A pull's total grows as the engine starts on more layers: its share can fall back.
        self._shown_tenth = min(self._shown_tenth, tenth)
        moved = done_all != self._shown_done
        due = (
            self._shown_at is None
            or (ended and moved)
            or (tenth > self._shown_tenth and now - self._shown_at >= 1.0)
            or (now - self._shown_at >= PLAIN_INTERVAL and moved)
        )
        if not due:
            return None
        self._shown_at, self._shown_tenth, self._shown_done = now, tenth, done_all
        text = _size(done_all) if known is None else f"{_size(done_all)} of {_size(known)} ({tenth * 10}%)"
        if len(self._parts) > 1:
            finished = sum(1 for d, t in self._parts.values() if t is not None and d >= t)
            text += f", {finished} of {len(self._parts)} layers done"
        return text


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def _message(line: str) -> None:
    """A line on stderr. Messages are best effort: a closed or broken stderr (`2>&-`) must not
    change how a scan ends."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.write(printable(line) + "\n")
        sys.stderr.flush()


@contextmanager
def output() -> Iterator[None]:
    """Results on stdout are not best effort: a run whose output is lost has failed."""
    try:
        if sys.stdout is None:
            raise OSError(errno.EBADF, "standard output is closed")
        yield
    except (OSError, ValueError) as exc:
        problem = getattr(exc, "strerror", None) or exc
        raise FileSystemError(f"cannot write to standard output: {problem}") from None


def flush_output() -> None:
    """What is still buffered for stdout, written out (or the run fails, see output)."""
    with output():
        sys.stdout.flush()


def _console(**options: Any) -> Any:
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich would exit 1, which CI reads as "vulnerabilities found": a reader that is gone
            # is an output failure like any other (see output).
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    return _Console(**options)


def _markup(text: str) -> str:
    """Text from outside as a progress description, which rich reads as markup."""
    from rich.markup import escape as escape_markup

    return escape_markup(printable(text))


class _RichProgress:
    """rich's Progress is thread-safe; the map from names to its tasks is guarded here."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._tasks: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _task(self, name: str, **fields: Any) -> Any:
        with self._lock:
            if name not in self._tasks:
                self._tasks[name] = self._progress.add_task(_markup(name), total=None, **fields)
            return self._tasks[name]

    def status(self, name: str, text: str) -> None:
        self._progress.update(self._task(name), description=_markup(f"{name}: {text}"))

    def layers(self, name: str, sent: int, total: int) -> None:
        self._progress.update(self._task(name), completed=sent, total=total)

    def warn(self, text: str) -> None:
        from rich.text import Text

        self._progress.console.print(Text(f"clair-scan: warning: {text}", style="yellow"))

    def transfer(self, name: str, part: str, done: int, total: int | None) -> None:
        """One row per part, as `docker pull` shows a row per layer, with its bytes."""
        label = f"{name} {part}".strip()
        task = self._task(f"\0{label}", unit="bytes")
        self._progress.update(task, description=_markup(label), completed=done, total=total)


class Terminal:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.animated = sys.stderr.isatty() and not os.environ.get("CI")

    @cached_property
    def out(self) -> Any:
        return _console(highlight=False, soft_wrap=True)

    @cached_property
    def err(self) -> Any:
        return _console(stderr=True, highlight=False, soft_wrap=True)

    def _line(self, text: str, style: str = "") -> None:
        """A line on stderr; markup is never interpreted, since image names may hold brackets."""
        if self.animated:
            from rich.text import Text

            with contextlib.suppress(OSError, ValueError):
                self.err.print(Text(printable(text), style=style))
        else:
            _message(text)

    def error(self, message: str, detail: str | None = None) -> None:
        self._line(f"clair-scan: error: {message}", "bold red")
        # Indented, so that no line of a container's log can pass for one of ours.
        for line in printable_lines(detail or ""):
            self._line(f"  {line}", "dim")

    def warn(self, message: str) -> None:
        self._line(f"clair-scan: warning: {message}", "yellow")

    def info(self, message: str) -> None:
        self._line(message)

    def json(self, document: Any) -> None:
        with output():
            sys.stdout.write(json.dumps(document, indent=2) + "\n")
            sys.stdout.flush()

    @contextmanager
    def progress(self) -> Iterator[Any]:
        if self.quiet:
            yield _Silent()
        elif not self.animated:
            yield _PlainProgress()
        else:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

            columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), _counts_column())
            with Progress(*columns, console=self.err, transient=True) as progress:
                yield _RichProgress(progress)

    def table(self, result: ImageResult) -> None:
        table = findings_table(result)
        if table is not None:
            with output():
                self.out.print(table)

    def document(self, data: bytes) -> None:
        """A rendered report on stdout (`--output FORMAT` without a file)."""
        with output():
            sys.stdout.write(data.decode("utf-8"))
            sys.stdout.flush()

    def summary(self, result: ImageResult, files: Sequence[str] = ()) -> None:
        counts = Counter(f.severity for f in result.unapproved)
        by_severity = ", ".join(f"{counts[s]} {s.label}" for s in sorted(counts, reverse=True))
        unapproved = len(result.unapproved)
        parts = [
            f"{unapproved} unapproved vulnerabilit{'y' if unapproved == 1 else 'ies'}"
            + (f" ({by_severity})" if by_severity else "")
            + f" at or above {result.threshold.label}"
        ]
        if result.ignored:
            parts.append(f"{len(result.ignored)} ignored")
        if result.below_threshold:
            parts.append(f"{len(result.below_threshold)} below threshold")
        analysis = result.analysis
        parts.append(f"{analysis.packages} packages")
        if result.image.distilled:
            parts.append(f"distilled layer {'sent to' if analysis.layers_sent else 'already in'} Clair")
        else:
            parts.append(f"{analysis.layers_sent} of {len(result.image.layers)} layers sent to Clair")
        if files:
            parts.append(f"wrote {', '.join(files)}")
        self._line(f"{result.image.name}: " + "; ".join(parts), "bold red" if unapproved else "green")

    def status(self, state: Any, max_days: float, fail_on_old: bool, fail_on_unknown: bool) -> int:
        """Print the appliance's state; the exit code says whether it is usable (and fresh)."""
        with output():
            return self._status(state, max_days, fail_on_old, fail_on_unknown)

    def _status(self, state: Any, max_days: float, fail_on_old: bool, fail_on_unknown: bool) -> int:
        from rich.table import Table
        from rich.text import Text

        if not state.containers:
            self.info("no clair-scan containers; start the appliance with `clair-scan up`")
            return 3
        table = Table(title="clair-scan containers")
        for column in ("Name", "Image", "State"):
            table.add_column(column)
        for name, image, condition in state.containers:
            table.add_row(Text(escape(name)), Text(escape(image)), Text(escape(condition)))
        self.out.print(table)
        if state.clair_url is None or state.clair_problem:
            self.error(f"Clair is not usable: {state.clair_problem or 'no warm appliance'}")
            return 3
        self.out.print(Text(f"Clair at {state.clair_url} answers"))
        data = state.data
        if data.problem:
            self.warn(f"cannot read Clair's database: {data.problem}")
            return 3
        counts = Table(title="Vulnerability data")
        if data.updating is None:  # Clair v4: its updaters and when each last brought data
            counts.add_column("Updater")
            counts.add_column("Updated", justify="right")
            for updater, when in data.updaters:
                counts.add_row(Text(updater), f"{when:%Y-%m-%d %H:%M} UTC")
        else:
            counts.add_column("Namespace")
            counts.add_column("Vulnerabilities", justify="right")
            for namespace, count in data.vulnerabilities:
                counts.add_row(Text(namespace), str(count))
        self.out.print(counts)
        setting = "unknown" if state.update_interval is None else describe_updates(state.update_interval)
        if data.updating is None:
            self.out.print(Text(f"Clair's updater: {setting}"))
        else:
            running = "an update is running now" if data.updating else "no update is running"
            self.out.print(Text(f"Clair's updater: {setting}; {running}"))
        if data.updated is None:
            record = "no updater/last record" if data.updating is not None else "no update operation"
            self.warn(f"the age of the vulnerability data is unknown ({record})")
            return 3 if fail_on_unknown else 0
        days = (datetime.now(timezone.utc) - data.updated).total_seconds() / 86400
        self.out.print(
            Text(f"Vulnerability data updated {data.updated:%Y-%m-%d %H:%M} UTC ({days:.1f} days ago)")
        )
        if days > max_days:
            self.warn(f"the vulnerability data is {days:.1f} days old, more than {max_days:g} days")
            return 3 if fail_on_old else 0
        return 0


def _cvss(finding: Finding) -> str:
    """The newest CVSS version Clair gives (findings list v3 before v2)."""
    return f"{finding.cvss[0].score:.1f}" if finding.cvss else ""


def findings_table(result: ImageResult) -> Any:
    """The findings that count as a rich Table, most severe first; None when there are none."""
    shown = result.unapproved
    if not shown:
        return None
    from rich.table import Table
    from rich.text import Text

    with_cvss = any(f.cvss for f in shown)
    table = Table(title=Text(escape(f"{result.image.name} ({result.analysis.namespace or 'unknown OS'})")))
    columns = ["Severity", "Vulnerability", "Package", "Installed", "Fixed in"]
    if not result.image.distilled:
        columns.append("Layer")  # a distilled scan does not know it
    if with_cvss:
        columns.insert(1, "CVSS")
    for column in columns:
        table.add_column(column, overflow="fold", justify="right" if column == "CVSS" else "left")
    previous = None
    for finding in shown:
        if previous is not None and finding.severity != previous:
            table.add_section()
        previous = finding.severity
        layer = ""
        if finding.layer is not None:
            layer = f"{finding.layer.index + 1}"
            if finding.layer.created_by:
                layer += " " + _shorten(finding.layer.created_by, 40)
        cells = [
            Text(finding.severity.label, style=_STYLE[finding.severity]),
            Text(escape(finding.vulnerability)),
            Text(escape(finding.package)),
            Text(escape(finding.installed)),
            Text(escape(finding.fixed or "-")),
        ]
        if not result.image.distilled:
            cells.append(Text(escape(layer)))
        if with_cvss:
            cells.insert(1, Text(_cvss(finding)))
        table.add_row(*cells)
    return table


def table_text(results: Sequence[ImageResult], width: int = 160) -> str:
    """The tables as plain text, for `--output table=FILE`."""
    import io

    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, no_color=True, highlight=False, soft_wrap=False)
    for result in results:
        table = findings_table(result)
        if table is None:
            console.print(f"{result.image.name}: no unapproved vulnerabilities", markup=False)
        else:
            console.print(table)
    return buffer.getvalue()


class _Silent(_PlainProgress):
    """Progress hidden (--format json); warnings are still shown."""

    def status(self, name: str, text: str) -> None:
        pass

    def layers(self, name: str, sent: int, total: int) -> None:
        pass

    def transfer(self, name: str, part: str, done: int, total: int | None) -> None:
        pass


def _counts_column() -> Any:
    """Layers as `3/5`, bytes as `12.3/50.1 MB` (tasks made by transfer() carry unit=bytes)."""
    from rich.progress import DownloadColumn, MofNCompleteColumn, ProgressColumn

    class Counts(ProgressColumn):
        def __init__(self) -> None:
            super().__init__()
            self._count = MofNCompleteColumn()
            self._bytes = DownloadColumn()

        def render(self, task: Any) -> Any:
            column = self._bytes if task.fields.get("unit") == "bytes" else self._count
            return column.render(task)

    return Counts()


def describe_updates(interval: float) -> str:
    """Clair's updater setting in words: "off", "every 2h"."""
    if interval <= 0:
        return "off"
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if interval >= seconds and interval % seconds == 0:
            return f"every {interval / seconds:g}{unit}"
    return f"every {interval:g}s"


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.replace("/bin/sh -c #(nop) ", "").replace("/bin/sh -c ", "").split())
    return text if len(text) <= width else text[: width - 1] + "…"
