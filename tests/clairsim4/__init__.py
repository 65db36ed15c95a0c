"""clairsim4: a stand-in for Clair v4.7.4's HTTP API (combo mode), for tests.

    store = clairsim.MemoryStore.from_json("tests/data/vulns.json")   # or clairsim.MemoryStore(): no data yet
    with ClairV4Simulator(store) as sim:
        sim.url   # "http://127.0.0.1:PORT": append /indexer/api/v1/... or /matcher/api/v1/...

Standalone: python -m clairsim4 --port 8080 [--data tests/data/vulns.json | --no-data]
See README.md in this directory.
"""

from .indexer import SCANNERS, IndexFailure
from .model import CVSS_ENRICHMENT, parse_digest
from .server import ClairV4Simulator, RequestRecord

__all__ = ["CVSS_ENRICHMENT", "SCANNERS", "ClairV4Simulator", "IndexFailure", "RequestRecord", "parse_digest"]
