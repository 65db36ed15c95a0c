"""The scan, as a short recipe: find the image's layers, make sure Clair holds them, read the
findings, apply the whitelist and threshold, hand the result to the writer. Nothing here prints
or exits."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

from . import clairv4, findings, whitelist
from .clair import ClairClient, Deadline
from .errors import ClairError, ScanError
from .models import Analysis, Image, ImageResult, Layer, Severity
from .names import redact
from .sources import LayerAccess, Pending, Remote, Target

if TYPE_CHECKING:
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
class Settings:
    ip: str
    bind: str | None = None
    port: int = 0
    clair_timeout: float = 300.0
    threshold: Severity = Severity.UNKNOWN
    ignore_unfixed: bool = False
    whitelist: whitelist.Whitelist | None = None
    data_updated: datetime | None = None
    """When the vulnerability data was last updated, where the run can tell (the appliance)."""


@dataclass(frozen=True)
class Outcome:
    """One image's result, or the error that stopped it; other images still get scanned."""

    name: str
    result: ImageResult | None = None
    error: ScanError | None = None
    files: tuple[str, ...] = ()
    """The report files written for this image alone."""


Writer = Callable[[int, ImageResult], tuple[str, ...]]
"""Writes the files of the image with this index in the run once its scan completed, all or none
(scanner.formats.Plan.write_image); returns their paths."""


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
    target: Target,
    clair: ClairClient,
    resources: _Resources,
    settings: Settings,
    observer: Observer,
    waiting_since: float | None = None,
) -> Analysis:
    """`waiting_since` (time.monotonic()) is when the wait for Clair began, if before this call."""
    img = target.image
    started = _now()
    deadline = Deadline(settings.clair_timeout, waiting_since)
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
                access = files.wait(layer.index, deadline.remaining())
                parent = img.layers[layer.index - 1].chain_id if layer.index else ""
                if isinstance(access, Remote):
                    log.debug("submitting layer %d (%s) from %s", layer.index + 1, layer.chain_id, access.url)
                    clair.submit(layer.chain_id, access.url, parent, deadline, dict(access.headers))
                    sent += 1
                    observer.layers(img.name, sent, total)
                    continue
                server = resources.server()
                url = server.publish(layer.chain_id, access)
                log.debug("submitting layer %d (%s, %d bytes)", layer.index + 1, layer.chain_id, access.size)
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
    return Analysis(
        img, namespace, packages, found, started, _now(), sent, findings.packages(top), settings.data_updated
    )


def analyze_v4(
    target: Target,
    clair: ClairClient,
    resources: _Resources,
    settings: Settings,
    observer: Observer,
    waiting_since: float | None = None,
) -> Analysis:
    """As `analyze`, against Clair v4: one manifest for the image. The image is exported and its
    layers published only when Clair lacks the manifest; Clair downloads them while we wait."""
    img = target.image
    started = _now()
    deadline = Deadline(settings.clair_timeout, waiting_since)
    observer.status(img.name, "asking Clair v4")
    with ExitStack() as stack:
        opened: list[LayerAccess] = []

        def layer_uri(layer: Layer) -> tuple[str, dict[str, str]]:
            if not opened:
                observer.status(img.name, f"exporting and indexing {len(img.layers)} layers")
                opened.append(stack.enter_context(target.layer_files(resources.workdir())))
            access = opened[0].wait(layer.index, deadline.remaining())
            if isinstance(access, Remote):
                return access.url, dict(access.headers)
            server = resources.server()
            url = server.publish(layer.chain_id, access)
            stack.callback(server.withdraw, layer.chain_id)
            return url, {}

        try:
            namespace, packages, found, sent = clairv4.analyze_v4(clair, img, layer_uri, deadline)
        except ClairError:
            if opened:
                opened[0].check()  # a save that broke while Clair downloaded is the real cause
            raise
    if sent:
        observer.layers(img.name, sent, sent)
    return Analysis(img, namespace, packages, found, started, _now(), sent)


def run(
    targets: list[Pending],
    clair_url: str,
    settings: Settings,
    write: Writer | None = None,
    observer: Observer | None = None,
) -> list[Outcome]:
    """Scan every target; a failing image does not stop the others. An image's files are written
    as soon as its scan completed, and only then."""
    from . import headstart

    observer = observer or Quiet()
    outcomes: list[Outcome] = []
    clair = ClairClient(clair_url)
    # The head start may have asked Clair about the first image already.
    waiting_since = headstart.clair_asked_at(clair_url)
    with ExitStack() as stack:
        stack.callback(clair.close)
        try:
            api = clairv4.detect(clair_url, settings.clair_timeout, clair, start=waiting_since)
        except ScanError as exc:
            log.debug("cannot tell which API Clair speaks: %s", exc)
            return [Outcome(name, error=t if isinstance(t, ScanError) else exc) for name, t in targets]
        log.info("Clair at %s speaks the %s API", redact(clair_url), api)
        analyze_one = analyze_v4 if api == "v4" else analyze
        resources = _Resources(stack, settings)
        for index, (name, target) in enumerate(targets):
            if isinstance(target, ScanError):
                outcomes.append(Outcome(name, error=target))
                continue
            try:
                since, waiting_since = waiting_since, None
                analysis = analyze_one(target, clair, resources, settings, observer, since)
                result = whitelist.apply(
                    analysis, settings.whitelist, settings.threshold, settings.ignore_unfixed
                )
                files = write(index, result) if write is not None else ()
                outcomes.append(Outcome(name, result=result, files=files))
            except ScanError as exc:
                log.debug("%s failed: %s", name, exc)
                outcomes.append(Outcome(name, error=exc))
    return outcomes
