"""What a person sees: progress and summaries on stderr, the findings table on stdout.

Progress is animated only on a terminal; in CI logs and pipes it becomes plain lines. rich is
loaded only for what needs it (a table, colour, animation), which keeps a quick rescan quick.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from .models import Finding, ImageResult, Severity

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
    def status(self, name: str, text: str) -> None:
        _write(sys.stderr, f"{name}: {text}")

    def layers(self, name: str, sent: int, total: int) -> None:
        _write(sys.stderr, f"{name}: layer {sent}/{total} indexed")

    def warn(self, text: str) -> None:
        _write(sys.stderr, f"clair-scan: warning: {text}")


def _write(stream: Any, line: str) -> None:
    stream.write(line + "\n")
    stream.flush()


class _RichProgress:
    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._tasks: dict[str, Any] = {}

    def _task(self, name: str) -> Any:
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(name, total=None)
        return self._tasks[name]

    def status(self, name: str, text: str) -> None:
        self._progress.update(self._task(name), description=f"{name}: {text}")

    def layers(self, name: str, sent: int, total: int) -> None:
        self._progress.update(self._task(name), completed=sent, total=total)

    def warn(self, text: str) -> None:
        from rich.text import Text

        self._progress.console.print(Text(f"clair-scan: warning: {text}", style="yellow"))


class Terminal:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.animated = sys.stderr.isatty() and not os.environ.get("CI")

    @cached_property
    def out(self) -> Any:
        from rich.console import Console

        return Console(highlight=False, soft_wrap=True)

    @cached_property
    def err(self) -> Any:
        from rich.console import Console

        return Console(stderr=True, highlight=False, soft_wrap=True)

    def _line(self, text: str, style: str = "") -> None:
        """A line on stderr; markup is never interpreted, since image names may hold brackets."""
        if self.animated:
            from rich.text import Text

            self.err.print(Text(text, style=style))
        else:
            _write(sys.stderr, text)

    def error(self, message: str, detail: str | None = None) -> None:
        self._line(f"clair-scan: error: {message}", "bold red")
        if detail:
            self._line(detail, "dim")

    def warn(self, message: str) -> None:
        self._line(f"clair-scan: warning: {message}", "yellow")

    def info(self, message: str) -> None:
        self._line(message)

    def json(self, document: Any) -> None:
        _write(sys.stdout, json.dumps(document, indent=2))

    @contextmanager
    def progress(self) -> Iterator[Any]:
        if self.quiet:
            yield _Silent()
        elif not self.animated:
            yield _PlainProgress()
        else:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

            columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
            with Progress(*columns, console=self.err, transient=True) as progress:
                yield _RichProgress(progress)

    def table(self, result: ImageResult) -> None:
        table = findings_table(result)
        if table is not None:
            self.out.print(table)

    def document(self, data: bytes) -> None:
        """A rendered report on stdout (`--output FORMAT` without a file)."""
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
        parts.append(f"{analysis.layers_sent} of {len(result.image.layers)} layers sent to Clair")
        if files:
            parts.append(f"wrote {', '.join(files)}")
        self._line(f"{result.image.name}: " + "; ".join(parts), "bold red" if unapproved else "green")

    def status(self, state: Any, max_days: float, fail_on_old: bool, fail_on_unknown: bool) -> int:
        """Print the appliance's state; the exit code says whether it is usable (and fresh)."""
        from rich.table import Table
        from rich.text import Text

        if not state.containers:
            self.info("no clair-scan containers; start the appliance with `clair-scan up`")
            return 3
        table = Table(title="clair-scan containers")
        for column in ("Name", "Image", "State"):
            table.add_column(column)
        for name, image, condition in state.containers:
            table.add_row(Text(name), Text(image), Text(condition))
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
    table = Table(title=Text(f"{result.image.name} ({result.analysis.namespace or 'unknown OS'})"))
    columns = ["Severity", "Vulnerability", "Package", "Installed", "Fixed in", "Layer"]
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
            Text(finding.vulnerability),
            Text(finding.package),
            Text(finding.installed),
            Text(finding.fixed or "-"),
            Text(layer),
        ]
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
