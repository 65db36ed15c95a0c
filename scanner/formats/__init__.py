"""Output formats. Each module takes the one result model (ImageResult) and renders bytes; this
module names them, plans which files a run writes, and writes them atomically.

A format's module is imported only when a run asks for it: a rescan that writes the GitLab report
need not load jinja2 or cyclonedx-python-lib.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from ..errors import FileSystemError, UsageError
from ..models import ImageResult

NAMES = ("table", "json", "gitlab", "sarif", "junit", "cyclonedx", "html")


@dataclass(frozen=True)
class Format:
    name: str
    default_file: str
    combines: bool
    """Whether one file can hold several images; if not, each image gets a file of its own."""
    render: Callable[[Sequence[ImageResult]], bytes]
    """The document for these results: exactly one unless `combines`."""


def get(name: str) -> Format:
    if name not in NAMES:
        raise UsageError(f"unknown output format {name!r} (expected one of {', '.join(NAMES)})")
    module = importlib.import_module(f"{__name__}.{name}")
    found: Format = module.FORMAT
    return found


@dataclass(frozen=True)
class Output:
    """One `--output FORMAT[=PATH]`; no path means stdout."""

    format: str
    path: str | None = None


def parse_output(text: str) -> Output:
    name, sep, path = text.partition("=")
    name = name.strip().lower()
    if name not in NAMES:
        expected = ", ".join(NAMES)
        raise UsageError(f"unknown output format {name!r} in --output {text!r} (expected one of {expected})")
    if sep and not path:
        raise UsageError(f"--output {text!r} names no file (use {name} alone for stdout)")
    return Output(name, path or None)


def utc_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def report_paths(report: str, images: Sequence[str]) -> list[str]:
    """One file per image: the given path for a single image; with several, the image's name is
    added to it: gl-container-scanning-report.json -> gl-container-scanning-report-alpine-3.10.json."""
    if len(images) <= 1:
        return [report] * len(images)
    stem, ext = os.path.splitext(report)
    paths: list[str] = []
    for name in images:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "image"
        candidate = f"{stem}-{slug}{ext or '.json'}"
        n = 2
        while candidate in paths:
            candidate = f"{stem}-{slug}-{n}{ext or '.json'}"
            n += 1
        paths.append(candidate)
    return paths


@dataclass(frozen=True)
class Plan:
    """Which files a run writes for its images. Files of formats that hold one image are written as
    each image's scan completes; files that hold all images once every scan has completed."""

    outputs: tuple[Output, ...]
    names: tuple[str, ...]

    @classmethod
    def make(cls, outputs: Sequence[Output], names: Sequence[str]) -> Plan:
        stdout = [o.format for o in outputs if o.path is None]
        if len(stdout) > 1:
            both = " and ".join(stdout)
            raise UsageError(f"only one output may go to stdout, not {both}: give the others =FILE")
        plan = cls(tuple(outputs), tuple(names))
        for output in outputs:
            if output.path is None and len(names) > 1 and not get(output.format).combines:
                raise UsageError(
                    f"{output.format} holds one image, and {len(names)} are scanned: "
                    f"give --output {output.format}=FILE for one file per image"
                )
        paths = [p for index in range(len(names)) for p in plan._image_paths(index)] + [
            path for _, path in plan._combined()
        ]
        twice = sorted({p for p in paths if paths.count(p) > 1})
        if twice:
            raise UsageError(f"two outputs would write {twice[0]}")
        return plan

    def _files(self) -> list[tuple[Format, str]]:
        return [(get(o.format), o.path) for o in self.outputs if o.path is not None]

    def _combines(self, fmt: Format) -> bool:
        return fmt.combines and len(self.names) > 1

    def _image_paths(self, index: int) -> list[str]:
        return [
            report_paths(path, self.names)[index] for fmt, path in self._files() if not self._combines(fmt)
        ]

    def _combined(self) -> list[tuple[Format, str]]:
        return [(fmt, path) for fmt, path in self._files() if self._combines(fmt)]

    def combined_paths(self) -> list[str]:
        return [path for _, path in self._combined()]

    def write_image(self, index: int, result: ImageResult) -> tuple[str, ...]:
        """Write this image's own files, all or none; returns their paths."""
        files = [
            (report_paths(path, self.names)[index], fmt.render([result]))
            for fmt, path in self._files()
            if not self._combines(fmt)
        ]
        write_all(files)
        return tuple(path for path, _ in files)

    def write_combined(self, results: Sequence[ImageResult]) -> tuple[str, ...]:
        """Write the files that hold every image; the caller calls this only when all completed."""
        files = [(path, fmt.render(results)) for fmt, path in self._combined()]
        write_all(files)
        return tuple(path for path, _ in files)


def write_all(files: Sequence[tuple[str, bytes]]) -> None:
    """Every file is staged next to its target first and renamed into place only when all are on
    disk: readers see the old files or the complete new ones, and a failure leaves no new file."""
    staged: list[tuple[str, str]] = []
    try:
        for path, data in files:
            directory = os.path.dirname(os.path.abspath(path))
            try:
                fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
            except OSError as exc:
                raise FileSystemError(f"cannot write report {path}: {exc.strerror or exc}") from None
            staged.append((tmp, path))
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise FileSystemError(f"cannot write report {path}: {exc.strerror or exc}") from None
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise FileSystemError(f"cannot write report {path}: {exc.strerror or exc}") from None
        staged = []
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
