"""The v4 appliance's probes against the Clair v4 simulator over real HTTP on 127.0.0.1: when it
counts as ready, and what its update operations say about the data's age."""

from __future__ import annotations

from datetime import datetime, timezone

import clairsim
from clairsim4 import ClairV4Simulator
from conftest import DATA
from scanner import backend


def test_ready_needs_readyz_and_vulnerability_data():
    with ClairV4Simulator(clairsim.MemoryStore(), introspection_port=0) as empty:
        assert backend.clair_v4_problem(empty.url, empty.introspection_url) == "no vulnerability data yet"
        empty.ready = False
        assert backend.clair_v4_problem(empty.url, empty.introspection_url) == "/readyz answers 503"
    with ClairV4Simulator(clairsim.MemoryStore.from_json(str(DATA)), introspection_port=0) as sim:
        assert backend.clair_v4_problem(sim.url, sim.introspection_url) is None
        problem = backend.clair_v4_problem(sim.url, "http://127.0.0.1:1")
        assert problem is not None and "cannot connect" in problem


def test_update_operations_give_the_datas_age():
    with ClairV4Simulator(clairsim.MemoryStore.from_json(str(DATA))) as sim:
        facts = backend.update_operation_facts(sim.url)
    stamp = datetime.fromtimestamp(1700000000, timezone.utc)
    assert facts.problem is None and facts.updating is None
    assert facts.updated == stamp
    assert dict(facts.updaters) == {"alpine-main-v3.10-updater": stamp, "debian/updater/buster": stamp}
    with ClairV4Simulator(clairsim.MemoryStore()) as empty:
        assert backend.update_operation_facts(empty.url).updated is None


def test_go_times_are_read_to_the_microsecond():
    parsed = backend._rfc3339("2024-07-08T00:21:37.123456789Z")
    assert parsed == datetime(2024, 7, 8, 0, 21, 37, 123456, timezone.utc)
    assert backend._rfc3339("2024-07-08T02:21:37+02:00") == datetime(
        2024, 7, 8, 0, 21, 37, tzinfo=timezone.utc
    )
    assert backend._rfc3339("yesterday") is None
