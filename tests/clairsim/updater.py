"""Clair v2.1.8's vulnerability updater (updater.go `RunUpdater`, `update`), over a feed of our own.

As in Clair: `interval` 0 disables it; otherwise the next update is due `interval` after the
`updater/last` time in the database (at once when there is none), only the holder of the
database lock `updater` runs it (the lock is taken for 10 minutes and refreshed every 8 while the
update runs), and `updater/last` is written only when every source was fetched. A failed update
is retried at once, since `updater/last` still says it is due.

What the sources serve: there is no network here, so the simulator's sources read a data file in
our JSON format (`feed`, in the stand-in image the `CLAIRSIM_FEED` variable) and take
`fetch_seconds` to do it (`CLAIRSIM_FETCH_SECONDS`). Without a feed every source fails as it does
on a host that cannot reach them, after `fetch_seconds` (at least one second, the time a lookup
that fails takes, so that the retries do not spin).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid

from .logs import Logger
from .model import BackendError, BadRequest, NotFound, Vulnerability
from .store import UPDATER_LAST, Store, read_dataset

LOCK_NAME = "updater"
LOCK_REFRESH = 8 * 60.0
LOCK_DURATION = LOCK_REFRESH + 2 * 60.0
SOURCES = ("alpine", "debian", "oracle", "rhel", "ubuntu")  # ext/vulnsrc in v2.1.8
DOWNLOAD_ERROR = "could not download requested resource"  # commonerr.ErrCouldNotDownload


class Updater:
    def __init__(
        self,
        store: Store,
        interval: float,
        logger: Logger,
        feed: str | None = None,
        fetch_seconds: float = 0.0,
    ) -> None:
        self.store = store
        self.interval = interval
        self.logger = logger
        self.feed = feed
        self.fetch_seconds = fetch_seconds
        self.owner = str(uuid.uuid4())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Updater:
        if not self.interval:
            self.logger.info("updater service is disabled.")
            return self
        self.logger.info("updater service started", **{"lock identifier": self.owner})
        self._thread = threading.Thread(target=self._run, name="clairsim-updater", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self.logger.info("updater service stopped")

    def _last_update(self) -> tuple[float | None, bool]:
        """(last update in Unix seconds, whether this is the first update); raises on errors."""
        text = self.store.get_key_value(UPDATER_LAST)
        if not text:
            return None, True
        return float(int(text)), False

    def _run(self) -> None:
        while not self._stop.is_set():
            next_update = time.time()
            first = False
            try:
                last, first = self._last_update()
                if last is not None:
                    next_update = last + self.interval
            except (BackendError, ValueError) as err:
                self.logger.error("an error occurred while getting the last update time", error=str(err))
                next_update += self.interval
            if next_update < time.time():
                self.logger.debug("attempting to obtain update lock")
                acquired, until = self.store.lock(LOCK_NAME, self.owner, LOCK_DURATION, False)
                if acquired:
                    done = threading.Event()
                    worker = threading.Thread(target=self._update, args=(first, done), daemon=True)
                    worker.start()
                    while not done.is_set() and not self._stop.is_set():
                        if not done.wait(LOCK_REFRESH) and not self._stop.is_set():
                            self.store.lock(LOCK_NAME, self.owner, LOCK_DURATION, True)
                    self._unlock()
                    continue
                found = self._find_lock()
                next_update = found[1] if found else until
                self.logger.debug("update lock is already taken")
            scheduled = next_update + random.expovariate(0.5)
            self.logger.debug("next update attempt scheduled", **{"scheduled time": scheduled})
            wait = scheduled - time.time()
            if wait > 0 and self._stop.wait(wait):
                break

    def _unlock(self) -> None:
        with contextlib.suppress(BackendError):
            self.store.unlock(LOCK_NAME, self.owner)

    def _find_lock(self) -> tuple[str, float] | None:
        try:
            return self.store.find_lock(LOCK_NAME)
        except BackendError:
            return None

    def _update(self, first: bool, done: threading.Event) -> None:
        try:
            self.logger.info("updating vulnerabilities")
            fetched, vulnerabilities = self._fetch()
            try:
                for vulnerability in vulnerabilities:
                    self.store.insert_vulnerability(vulnerability)
            except (BackendError, BadRequest, NotFound) as err:
                self.logger.error(
                    "an error occured when inserting vulnerabilities for update", error=str(err)
                )
                return
            if fetched:
                self.store.set_key_value(UPDATER_LAST, str(int(time.time())))
            self.logger.info("update finished")
        finally:
            done.set()

    def _fetch(self) -> tuple[bool, list[Vulnerability]]:
        """(whether every source answered, what they served)."""
        self.logger.info("fetching vulnerability updates")
        if self.feed is None:
            self._stop.wait(max(self.fetch_seconds, 1.0))
            for name in SOURCES:
                self.logger.error(
                    "an error occured when fetching update", error=DOWNLOAD_ERROR, **{"updater name": name}
                )
            return False, []
        if self._stop.wait(self.fetch_seconds):
            return False, []  # Clair is stopping: the process ends before the fetch does
        try:
            dataset = read_dataset(self.feed)
        except (OSError, ValueError, KeyError) as err:
            self.logger.error(
                "an error occured when fetching update", error=str(err), **{"updater name": "feed"}
            )
            return False, []
        for namespace in dataset.namespaces:
            self.store.ensure_namespace(namespace.name, namespace.version_format)
        self.logger.info("finished fetching", **{"updater name": "feed"})
        return True, dataset.vulnerabilities
