"""The scan, as a short recipe: find the image's layers, make sure Clair holds them, read the
findings, apply the whitelist and threshold, write the report. Nothing here prints or exits."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from . import findings, image, report, whitelist
from .clair import ClairClient, Deadline
from .errors import ClairError, ScanError
from .models import Analysis, Image, ImageResult, Severity

if TYPE_CHECKING:
    from . import archive
    from .dockerapi import SaveRequest
    from .headstart import HeadStart
    from .layerserver import LayerServer

log = logging.getLogger(__name__)


class Observer(Protocol):
    """Progress listener: the terminal shows it, tests and scripts may ignore it."""

    def status(self, name: str, text: str) -> None: ...

    def layers(self, name: str, sent: int, total: int) -> None: ...


class Quiet:
    def status(self, name: str, text: str) -> None:
        log.info("%s: %s", name, text)

    def layers(self, name: str, sent: int, total: int) -> None:
        log.info("%s: %d of %d layers sent", name, sent, total)


@dataclass(frozen=True)
class Target:
    """An image to scan, and how to get at its layer tars (given a private temp dir)."""

    image: Image
    layer_files: Callable[[str], AbstractContextManager[archive.LayerFiles]]


Pending = tuple[str, "Target | ScanError"]
"""An image's name and its target, or the error that kept it from being one."""


@dataclass(frozen=True)
class Settings:
    ip: str
    bind: str | None = None
    port: int = 0
    clair_timeout: float = 300.0
    threshold: Severity = Severity.UNKNOWN
    ignore_unfixed: bool = False
    whitelist: whitelist.Whitelist | None = None


@dataclass(frozen=True)
class Outcome:
    """One image's result, or the error that stopped it; other images still get scanned."""

    name: str
    result: ImageResult | None = None
    error: ScanError | None = None
    report: str | None = None


class _Resources:
    """What a run may need, acquired only on first use: a rescan of an image Clair already holds
    needs no export, no temp dir and no layer server."""

    def __init__(self, stack: ExitStack, settings: Settings) -> None:
        self._stack = stack
        self._settings = settings
        self._server: LayerServer | None = None
        self._workdir: str | None = None

    def server(self) -> LayerServer:
        if self._server is None:
            from .layerserver import LayerServer

            s = self._settings
            self._server = self._stack.enter_context(LayerServer(s.ip, s.bind, s.port))
        return self._server

    def workdir(self) -> str:
        if self._workdir is None:
            self._workdir = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="clair-scan-"))
        return self._workdir


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _first_missing(clair: ClairClient, img: Image, deadline: Deadline) -> int:
    """Index of the lowest layer Clair lacks. A layer is only ever indexed after its parent, so
    the highest one Clair holds means all below it are held too."""
    for layer in reversed(img.layers[:-1]):
        if clair.layer(layer.chain_id, deadline, vulnerabilities=False) is not None:
            return layer.index + 1
    return 0


def analyze(
    target: Target, clair: ClairClient, resources: _Resources, settings: Settings, observer: Observer
) -> Analysis:
    img = target.image
    started = _now()
    deadline = Deadline(settings.clair_timeout)
    # 1. Clair may hold the whole image already: then nothing is exported or sent.
    observer.status(img.name, "asking Clair")
    top = clair.layer(img.top.chain_id, deadline)
    sent = 0
    if top is None:
        # 2. Export the image once and send Clair only the layers it lacks, parents first, each
        #    as soon as the export has written it. The export starts first: the engine takes a
        #    while before it sends anything, and asking Clair what it holds fits in that time.
        with target.layer_files(resources.workdir()) as files:
            first = _first_missing(clair, img, deadline)
            total = len(img.layers) - first
            observer.status(img.name, f"exporting and indexing {total} of {len(img.layers)} layers")
            for layer in img.layers[first:]:
                blob = files.wait(layer.index, deadline.remaining())
                server = resources.server()
                url = server.publish(layer.chain_id, blob)
                parent = img.layers[layer.index - 1].chain_id if layer.index else ""
                log.debug("submitting layer %d (%s, %d bytes)", layer.index + 1, layer.chain_id, blob.size)
                try:
                    clair.submit(layer.chain_id, url, parent, deadline)
                except ClairError:
                    files.check()  # a save that broke while Clair downloaded is the real cause
                    raise
                finally:
                    # Clair has its copy (or gave up): the spool may go once this image is done.
                    server.withdraw(layer.chain_id)
                sent += 1
                observer.layers(img.name, sent, total)
        observer.status(img.name, "reading findings")
        top = clair.layer(img.top.chain_id, deadline)
        if top is None:
            raise ClairError(f"Clair does not know {img.name}'s top layer right after indexing it")
    namespace, packages, found = findings.from_clair(top, img)
    return Analysis(img, namespace, packages, found, started, _now(), sent)


def run(
    targets: list[Pending],
    clair_url: str,
    settings: Settings,
    reports: list[str | None],
    observer: Observer | None = None,
) -> list[Outcome]:
    """Scan every target; a failing image does not stop the others. Reports are written only for
    images whose scan completed."""
    observer = observer or Quiet()
    outcomes: list[Outcome] = []
    clair = ClairClient(clair_url)
    with ExitStack() as stack:
        stack.callback(clair.close)
        resources = _Resources(stack, settings)
        for (name, target), path in zip(targets, reports, strict=True):
            if isinstance(target, ScanError):
                outcomes.append(Outcome(name, error=target))
                continue
            try:
                analysis = analyze(target, clair, resources, settings, observer)
                result = whitelist.apply(
                    analysis, settings.whitelist, settings.threshold, settings.ignore_unfixed
                )
                if path:
                    report.write_atomic(path, report.gitlab_report(result))
                outcomes.append(Outcome(name, result=result, report=path))
            except ScanError as exc:
                log.debug("%s failed: %s", name, exc)
                outcomes.append(Outcome(name, error=exc))
    return outcomes


def docker_targets(refs: list[str], head: HeadStart | None = None) -> list[Pending]:
    """Images in the Docker engine. An unknown image is an error for that image only. The first
    image's export may already be under way (see headstart)."""
    if not refs:
        return []
    engine = image.Engine()
    engine.check()
    targets: list[Pending] = []
    for ref in refs:
        try:
            img = image.inspect(engine, ref)
        except ScanError as exc:
            targets.append((ref, exc))
            continue
        started = None
        if head is not None and head.ref == ref:
            started, head = head.save, None  # its one response serves one export

        def export(
            workdir: str, img: Image = img, started: SaveRequest | None = started
        ) -> AbstractContextManager[archive.LayerFiles]:
            return image.exported(engine, img, workdir, started)

        targets.append((ref, Target(img, export)))
    return targets


def archive_targets(paths: list[str], stack: ExitStack) -> list[Pending]:
    """Every image in each `docker save` archive; no Docker engine involved."""
    if not paths:
        return []
    from . import archive

    targets: list[Pending] = []
    for path in paths:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="clair-scan-"))
        try:
            found = archive.read_archive(path, workdir)
        except ScanError as exc:
            targets.append((path, exc))
            continue
        for item in found:

            def ready(_workdir: str, files: archive.LayerFiles = item.files) -> Any:
                return nullcontext(files)  # already on disk: nothing to export

            targets.append((item.image.name, Target(item.image, ready)))
    return targets


# Distilled scans (see distill.py): one small layer of the files Clair reads per image.


def distilled_docker_targets(refs: list[str]) -> list[Pending]:
    """Engine images, each sent to Clair as its distilled layer. Nothing is created before the
    scan finds that Clair lacks the layer: a rescan creates no container."""
    if not refs:
        return []
    from . import distill

    engine = image.Engine()
    engine.check()
    targets: list[Pending] = []
    for ref in refs:
        try:
            img = image.inspect(engine, ref)
        except ScanError as exc:
            targets.append((ref, exc))
            continue

        def layer_files(workdir: str, img: Image = img) -> AbstractContextManager[archive.LayerFiles]:
            return distill.from_engine(engine, img, workdir)

        targets.append((ref, Target(distill.distilled(img), layer_files)))
    return targets


def distilled_archive_targets(paths: list[str], stack: ExitStack) -> list[Pending]:
    """Every image in each archive, distilled while the archive is read once."""
    if not paths:
        return []
    from . import distill

    targets: list[Pending] = []
    for path in paths:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="clair-scan-"))
        try:
            found = distill.read_archive(path, workdir, stack)
        except ScanError as exc:
            targets.append((path, exc))
            continue
        for item in found:

            def ready(_workdir: str, files: archive.LayerFiles = item.files) -> Any:
                return nullcontext(files)

            targets.append((item.image.name, Target(item.image, ready)))
    return targets
