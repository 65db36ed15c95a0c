"""The scan, as a short recipe: find the image's layers, make sure Clair holds them, read the
findings, apply the whitelist and threshold, hand the result to the writer. Nothing here prints
or exits."""

from __future__ import annotations

import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

from . import clairv4, findings, whitelist
from .clair import ClairClient, Deadline
from .errors import ClairError, ScanError
from .models import Analysis, Image, ImageResult, Layer, Severity
from .names import redact
from .sources import LayerAccess, Pending, Remote, Target
from .threads import start_daemon

if TYPE_CHECKING:
    from .archive import Blob
    from .layerserver import LayerServer, Stream

log = logging.getLogger(__name__)


class Observer(Protocol):
    """Progress listener: the terminal shows it, tests and scripts may ignore it."""

    def status(self, name: str, text: str) -> None: ...

    def layers(self, name: str, sent: int, total: int) -> None: ...

    def transfer(self, name: str, part: str, done: int, total: int | None) -> None:
        """Bytes of long work: `done` of `total` (None: not known) of `part` of `name`'s transfer
        (a layer of a pull; "" for the whole)."""
        ...


class Quiet:
    def status(self, name: str, text: str) -> None:
        log.info("%s: %s", name, text)

    def layers(self, name: str, sent: int, total: int) -> None:
        log.info("%s: %d of %d layers sent", name, sent, total)

    def transfer(self, name: str, part: str, done: int, total: int | None) -> None:
        pass


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


def default_jobs() -> int:
    """Images scanned at once unless --jobs says otherwise. An image's scan mostly waits (for the
    engine's export, for Clair's download and indexing), so a few overlap well; more than the
    CPUs mostly queue for them (see benchmarks/parallel_bench.py)."""
    return max(1, min(4, os.cpu_count() or 1))


class _Stopped(Exception):
    """The run is ending (Ctrl-C, SIGTERM, a bug in another worker): a worker leaves its image."""


class _Resources:
    """What a run's workers share, acquired only on first use (a rescan of an image Clair already
    holds needs no export, no temp dir and no layer server), and how they learn to stop."""

    def __init__(self, stack: ExitStack, settings: Settings) -> None:
        self._stack = stack
        self._settings = settings
        self._server: LayerServer | None = None
        self._workdir: str | None = None
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self.commit = threading.Lock()
        """Held while an image's files are written; the stopping run takes it for good."""
        self.claims = _Claims()

    def server(self) -> LayerServer:
        with self._lock:
            if self._server is None:
                from .layerserver import LayerServer

                s = self._settings
                self._server = self._stack.enter_context(LayerServer(s.ip, s.bind, s.port))
            return self._server

    @contextmanager
    def image_dir(self) -> Iterator[str]:
        """A private directory for one image's export (two images may be one image ID)."""
        with self._lock:
            if self.stop.is_set():
                raise _Stopped
            if self._workdir is None:
                self._workdir = tempfile.mkdtemp(prefix="clair-scan-")
                self._stack.callback(_remove_tree, self._workdir)
            path = tempfile.mkdtemp(dir=self._workdir)
        try:
            yield path
        finally:
            _remove_tree(path)

    def check(self) -> None:
        if self.stop.is_set():
            raise _Stopped


def _remove_tree(path: str) -> None:
    # A worker the run left behind (Ctrl-C) may still be creating a file in it while it goes.
    for _ in range(3):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return


class _Claims:
    """The layers this run sent, and a lock for each layer being sent. An image sharing a layer
    with another waits while that one's worker sends it, then finds it sent, rather than send it
    too: the layer server holds one copy per layer name, and Clair would index it twice."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sending: dict[str, threading.Lock] = {}
        self._sent: set[str] = set()

    @contextmanager
    def layer(self, chain_id: str, deadline: Deadline, stop: threading.Event) -> Iterator[bool]:
        """Hold the layer while sending it; yields whether it still needs sending."""
        with self._lock:
            lock = self._sending.setdefault(chain_id, threading.Lock())
        while not lock.acquire(timeout=0.2):
            if stop.is_set():
                raise _Stopped
            if deadline.remaining() <= 0:
                raise ClairError(f"another image's scan held layer {chain_id} until the deadline")
        try:
            with self._lock:
                needed = chain_id not in self._sent
            yield needed
        finally:
            lock.release()

    def sent(self, chain_id: str) -> None:
        with self._lock:
            self._sent.add(chain_id)


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
        with resources.image_dir() as workdir, target.layer_files(workdir) as files:
            first = _first_missing(clair, img, deadline)
            total = len(img.layers) - first
            observer.status(img.name, f"exporting and indexing {total} of {len(img.layers)} layers")
            for done, layer in enumerate(img.layers[first:], 1):
                access = files.wait(layer.index, deadline.remaining())
                resources.check()
                with resources.claims.layer(layer.chain_id, deadline, resources.stop) as needed:
                    if needed:  # not sent by another image's scan of this run
                        _submit(clair, resources, img, layer.index, access, files, deadline)
                        resources.claims.sent(layer.chain_id)
                        sent += 1
                observer.layers(img.name, done, total)
        observer.status(img.name, "reading findings")
        top = clair.layer(img.top.chain_id, deadline)
        if top is None:
            raise ClairError(f"Clair does not know {img.name}'s top layer right after indexing it")
    namespace, packages, found = findings.from_clair(top, img)
    return Analysis(
        img, namespace, packages, found, started, _now(), sent, findings.packages(top), settings.data_updated
    )


def _submit(
    clair: ClairClient,
    resources: _Resources,
    img: Image,
    index: int,
    access: Blob | Stream | Remote,
    files: LayerAccess,
    deadline: Deadline,
) -> None:
    layer = img.layers[index]
    parent = img.layers[index - 1].chain_id if index else ""
    if isinstance(access, Remote):
        log.debug("submitting layer %d (%s) from %s", index + 1, layer.chain_id, access.url)
        clair.submit(layer.chain_id, access.url, parent, deadline, dict(access.headers))
        return
    server = resources.server()
    url = server.publish(layer.chain_id, access)
    log.debug("submitting layer %d (%s, %d bytes)", index + 1, layer.chain_id, access.size)
    try:
        clair.submit(layer.chain_id, url, parent, deadline)
    except ClairError:
        files.check()  # a save that broke while Clair downloaded is the real cause
        raise
    finally:
        # Clair has its copy (or gave up): the spool may go once this image is done.
        server.withdraw(layer.chain_id)


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
        digests: dict[int, str] = {}

        def served_digest(layer: Layer) -> str:
            return digests.get(layer.index) or clairv4.layer_digest(layer)

        def layer_uri(layer: Layer) -> tuple[str, dict[str, str]]:
            if not opened:
                observer.status(img.name, f"exporting and indexing {len(img.layers)} layers")
                workdir = stack.enter_context(resources.image_dir())
                opened.append(stack.enter_context(target.layer_files(workdir)))
            access = opened[0].wait(layer.index, deadline.remaining())
            resources.check()
            if isinstance(access, Remote):
                return access.url, dict(access.headers)
            if img.distilled:  # made just now: its digest is that of the tar served
                digests[layer.index] = _blob_digest(access)
            server = resources.server()
            url = server.publish(layer.chain_id, access)
            stack.callback(server.withdraw, layer.chain_id)
            return url, {}

        try:
            namespace, packages, found, sent = clairv4.analyze_v4(
                clair, img, layer_uri, deadline, served_digest
            )
        except ClairError:
            if opened:
                opened[0].check()  # a save that broke while Clair downloaded is the real cause
            raise
    if sent:
        observer.layers(img.name, sent, sent)
    return Analysis(img, namespace, packages, found, started, _now(), sent)


def _blob_digest(access: Blob | Stream) -> str:
    """The sha256 of a small layer on disk (a distilled one: a few files)."""
    import hashlib

    from .archive import Blob

    if not isinstance(access, Blob):
        raise ClairError("a distilled layer must be a file on disk")
    digest = hashlib.sha256()
    with open(access.path, "rb") as handle:
        handle.seek(access.offset)
        digest.update(handle.read(access.size))
    return "sha256:" + digest.hexdigest()


def run(
    targets: list[Pending],
    clair_url: str,
    settings: Settings,
    write: Writer | None = None,
    observer: Observer | None = None,
    jobs: int | None = None,
) -> list[Outcome]:
    """Scan every target, `jobs` at once (default_jobs()), one worker thread and Clair client
    each, sharing one layer server; a failing image does not stop the others. An image's files
    are written as soon as its scan completed, and only then. Outcomes come in the targets' order."""
    from . import headstart

    observer = observer or Quiet()
    outcomes: list[Outcome | None] = [None] * len(targets)
    todo: queue.SimpleQueue[tuple[int, str, Target]] = queue.SimpleQueue()
    for index, (name, target) in enumerate(targets):
        if isinstance(target, ScanError):
            outcomes[index] = Outcome(name, error=target)
        else:
            todo.put((index, name, target))
    count = todo.qsize()
    finished: queue.SimpleQueue[tuple[int, Outcome | BaseException]] = queue.SimpleQueue()
    # The head start may have asked Clair about the first image already: that wait counts.
    waiting_since = headstart.clair_asked_at(clair_url)
    first = next((i for i, (_, t) in enumerate(targets) if not isinstance(t, ScanError)), -1)
    with ExitStack() as stack:
        probe = ClairClient(clair_url)
        try:
            api = clairv4.detect(clair_url, settings.clair_timeout, probe, start=waiting_since)
        except ScanError as exc:
            log.debug("cannot tell which API Clair speaks: %s", exc)
            return [Outcome(name, error=t if isinstance(t, ScanError) else exc) for name, t in targets]
        finally:
            probe.close()
        log.info("Clair at %s speaks the %s API", redact(clair_url), api)
        analyze_one = analyze_v4 if api == "v4" else analyze
        resources = _Resources(stack, settings)

        def work() -> None:
            # One Clair client per worker: it holds one connection, which one request at a time uses.
            clair = ClairClient(clair_url)
            try:
                while not resources.stop.is_set():
                    try:
                        index, name, target = todo.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        since = waiting_since if index == first else None
                        outcome = _scan(
                            index,
                            name,
                            target,
                            clair,
                            resources,
                            settings,
                            write,
                            observer,
                            analyze_one,
                            since,
                        )
                        finished.put((index, outcome))
                    except _Stopped:
                        return
                    except BaseException as exc:  # a bug: the main thread reports it
                        finished.put((index, exc))
                        return
            finally:
                clair.close()

        # The workers block SIGINT and SIGTERM: the main thread takes them while it waits here.
        # Interrupted, it stops the workers' writing and leaves them behind, daemons blocked in
        # Clair or the engine; the stack then closes the layer server and removes the temp dir.
        workers = min(jobs or default_jobs(), count)
        if workers <= 1:
            # One at a time: in the main thread, where Ctrl-C unwinds each stage's own cleanup.
            clair = ClairClient(clair_url)
            stack.callback(clair.close)
            while not todo.empty():
                index, name, target = todo.get_nowait()
                since = waiting_since if index == first else None
                outcomes[index] = _scan(
                    index, name, target, clair, resources, settings, write, observer, analyze_one, since
                )
            return [outcome for outcome in outcomes if outcome is not None]
        threads = [start_daemon(work, f"scan-{n + 1}") for n in range(workers)]
        try:
            for _ in range(count):
                index, outcome = finished.get()  # a signal interrupts the wait
                if isinstance(outcome, BaseException):
                    raise outcome
                outcomes[index] = outcome
        finally:
            resources.stop.set()
            resources.commit.acquire()  # an image's files are written whole or not at all
            if "scanner.sources.distill" in sys.modules:
                from .sources import distill

                distill.remove_leftovers()
        for thread in threads:
            thread.join()
    return [outcome for outcome in outcomes if outcome is not None]


def _scan(
    index: int,
    name: str,
    target: Target,
    clair: ClairClient,
    resources: _Resources,
    settings: Settings,
    write: Writer | None,
    observer: Observer,
    analyze_one: Callable[..., Analysis] = analyze,
    waiting_since: float | None = None,
) -> Outcome:
    try:
        analysis = analyze_one(target, clair, resources, settings, observer, waiting_since)
        result = whitelist.apply(analysis, settings.whitelist, settings.threshold, settings.ignore_unfixed)
        with resources.commit:
            resources.check()
            files = write(index, result) if write is not None else ()
        return Outcome(name, result=result, files=files)
    except ScanError as exc:
        if resources.stop.is_set():
            raise _Stopped from None  # the error may be the run's own cleanup
        log.debug("%s failed: %s", name, exc)
        return Outcome(name, error=exc)
