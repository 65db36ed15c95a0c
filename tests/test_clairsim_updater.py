"""The simulator's vulnerability updater behaves as Clair v2.1.8's (updater.go): disabled by an
interval of 0, due `interval` after `updater/last`, run only by the holder of the `updater` lock,
`updater/last` written only when every source answered."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import clairsim
from clairsim.logs import Logger
from clairsim.updater import LOCK_NAME, SOURCES, Updater

DATA = Path(__file__).resolve().parent / "data" / "vulns.json"


def _store(updated: int | None) -> clairsim.MemoryStore:
    data = json.loads(DATA.read_text())
    data.pop("updated", None)
    if updated is not None:
        data["updated"] = updated
    return clairsim.MemoryStore.from_json(data)


@pytest.fixture
def logger() -> Logger:
    return Logger(stream=None, level="debug")


def test_interval_zero_disables_the_updater(logger):
    store = _store(1700000000)
    updater = Updater(store, 0, logger, feed=str(DATA)).start()
    updater.stop()
    assert [r["Event"] for r in logger.records] == ["updater service is disabled."]
    assert store.get_key_value(clairsim.UPDATER_LAST) == "1700000000"


def test_recent_data_is_not_updated_before_the_interval(logger):
    now = int(time.time())
    store = _store(now)
    updater = Updater(store, 3600, logger, feed=str(DATA)).start()
    try:
        assert clairsim.wait_until(lambda: logger.events("next update attempt scheduled"), 10)
        scheduled = logger.events("next update attempt scheduled")[0]["scheduled time"]
        assert scheduled >= now + 3600
        assert logger.events("updating vulnerabilities") == []
    finally:
        updater.stop()


def test_old_data_is_updated_at_once_under_the_lock(logger):
    store = _store(1700000000)
    updater = Updater(store, 7200, logger, feed=str(DATA), fetch_seconds=600).start()
    try:
        assert clairsim.wait_until(lambda: logger.events("fetching vulnerability updates"), 10)
        held = store.find_lock(LOCK_NAME)
        assert held is not None and held[0] == updater.owner and held[1] > time.time()
        # A second Clair on the same database does not run the update while the lock is held.
        other_log = Logger(stream=None, level="debug")
        other = Updater(store, 7200, other_log, feed=str(DATA)).start()
        try:
            assert clairsim.wait_until(lambda: other_log.events("update lock is already taken"), 10)
            assert other_log.events("updating vulnerabilities") == []
        finally:
            other.stop()
    finally:
        updater.stop()
    assert store.get_key_value(clairsim.UPDATER_LAST) == "1700000000"  # stopped before it finished


def test_a_finished_update_records_its_time_and_releases_the_lock(logger):
    store = _store(None)  # no updater/last: the first update runs at once
    started = int(time.time())
    updater = Updater(store, 7200, logger, feed=str(DATA)).start()
    try:
        assert clairsim.wait_until(lambda: logger.events("update finished"), 10)
        assert clairsim.wait_until(lambda: store.find_lock(LOCK_NAME) is None, 10)
    finally:
        updater.stop()
    assert int(store.get_key_value(clairsim.UPDATER_LAST) or 0) >= started


def test_unreachable_sources_fail_every_update_and_leave_the_time(logger):
    store = _store(1700000000)
    updater = Updater(store, 7200, logger).start()
    try:
        assert clairsim.wait_until(lambda: logger.events("update finished"), 10)
    finally:
        updater.stop()
    failed = logger.events("an error occured when fetching update")
    assert {r["updater name"] for r in failed} == set(SOURCES)
    assert store.get_key_value(clairsim.UPDATER_LAST) == "1700000000"
