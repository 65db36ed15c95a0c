"""clairsim: a faithful stand-in for Clair v2.1.8's HTTP API, for tests and stand-in images.

Library use:

    store = MemoryStore.from_json("tests/data/vulns.json")       # or PostgresStore(dsn)
    with ClairSimulator(store, api_timeout=900.0) as sim:
        requests.post(sim.url + "/v1/layers", json={...})
        requests.get(sim.health_url + "/health")

Standalone (as the Clair image runs it): python3 -m clairsim -config=/config/config.yaml
See README.md in this directory.
"""

from .fetch import DownloadRecord
from .logs import Logger
from .model import ENGINE_VERSION, SEVERITIES, FeatureKey, FixedIn, Namespace, Vulnerability
from .server import TIMEOUT_BODY, ClairSimulator, Fault, RequestRecord, wait_until
from .store import (
    UPDATER_LAST,
    DatabaseUnavailable,
    Dataset,
    MemoryStore,
    PostgresStore,
    Store,
    read_dataset,
)

__all__ = [
    "ENGINE_VERSION",
    "SEVERITIES",
    "TIMEOUT_BODY",
    "UPDATER_LAST",
    "ClairSimulator",
    "DatabaseUnavailable",
    "Dataset",
    "DownloadRecord",
    "Fault",
    "FeatureKey",
    "FixedIn",
    "Logger",
    "MemoryStore",
    "Namespace",
    "PostgresStore",
    "RequestRecord",
    "Store",
    "Vulnerability",
    "open_store",
    "read_dataset",
    "wait_until",
]


def open_store(*, data: str | None = None, dsn: str | None = None, logger: Logger | None = None) -> Store:
    """A MemoryStore loaded from a JSON data file, or a PostgresStore on a lib/pq-style DSN."""
    if (data is None) == (dsn is None):
        raise ValueError("give exactly one of data= or dsn=")
    if data is not None:
        return MemoryStore.from_json(data, logger)
    assert dsn is not None
    return PostgresStore(dsn, logger)
