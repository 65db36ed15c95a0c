"""What a person sees: progress and summaries on stderr, the findings table on stdout.

Progress is animated only on a terminal; in CI logs and pipes it becomes plain lines.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table
from rich.text import Text

from .models import ImageResult, Severity

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
    def __init__(self, console: Console) -> None:
        self._console = console

    def status(self, name: str, text: str) -> None:
        self._console.print(Text(f"{name}: {text}"))

    def layers(self, name: str, sent: int, total: int) -> None:
        self._console.print(Text(f"{name}: layer {sent}/{total} indexed"))


class _RichProgress:
    def __init__(self, progress: Progress) -> None:
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


class Terminal:
    def __init__(self, quiet: bool = False) -> None:
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.animated = self.err.is_terminal and not os.environ.get("CI")

    def error(self, message: str) -> None:
        self.err.print(Text(f"clair-scan: error: {message}", style="bold red" if self.animated else ""))

    def warn(self, message: str) -> None:
        self.err.print(Text(f"clair-scan: warning: {message}", style="yellow" if self.animated else ""))

    def info(self, message: str) -> None:
        self.err.print(Text(message))

    @contextmanager
    def progress(self) -> Iterator[Any]:
        if self.quiet:
            yield _Silent()
        elif not self.animated:
            yield _PlainProgress(self.err)
        else:
            columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
            with Progress(*columns, console=self.err, transient=True) as progress:
                yield _RichProgress(progress)

    def table(self, result: ImageResult) -> None:
        shown = result.unapproved
        if not shown:
            return
        table = Table(title=Text(f"{result.image.name} ({result.analysis.namespace or 'unknown OS'})"))
        for column in ("Severity", "Vulnerability", "Package", "Installed", "Fixed in", "Layer"):
            table.add_column(column, overflow="fold")
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
            table.add_row(
                Text(finding.severity.label, style=_STYLE[finding.severity]),
                Text(finding.vulnerability),
                Text(finding.package),
                Text(finding.installed),
                Text(finding.fixed or "-"),
                Text(layer),
            )
        self.out.print(table)

    def summary(self, result: ImageResult, report: str | None) -> None:
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
        if report:
            parts.append(f"report {report}")
        style = "bold red" if unapproved else "green"
        self.err.print(
            Text(f"{result.image.name}: " + "; ".join(parts), style=style if self.animated else "")
        )


class _Silent:
    def status(self, name: str, text: str) -> None:
        pass

    def layers(self, name: str, sent: int, total: int) -> None:
        pass


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.replace("/bin/sh -c #(nop) ", "").replace("/bin/sh -c ", "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()
