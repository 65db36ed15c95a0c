"""Create Clair v2.1.8's schema in a PostgreSQL database and load a vulnerability data file into it.

    python3 -m clairsim.seed --dsn "host=127.0.0.1 port=5432 user=postgres dbname=postgres" vulns.json

The DSN is a libpq connection string or URL, used as is. The data go in the way Clair's updater
leaves them: namespaces with their version format, one `vulnerability` row per record (metadata
as JSON text, "null" when absent), `feature` + `vulnerability_fixedin_feature` rows per fix
('#MAXV#' when not fixed) and `keyvalue` 'updater/last' = the file's "updated" Unix seconds.
Seeding again with changed records replaces them the way Clair does (old rows soft-deleted).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .store import DatabaseUnavailable, PostgresStore, read_dataset


def seed(dsn: str, data: str | Path | dict[str, Any]) -> dict[str, int]:
    """Migrate the database at `dsn` and load `data` (a JSON file path or its parsed content)."""
    dataset = read_dataset(data)
    store = PostgresStore(dsn, libpq=True)
    try:
        store.load(dataset)
    finally:
        store.close()
    return {"namespaces": len(dataset.namespaces), "vulnerabilities": len(dataset.vulnerabilities)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m clairsim.seed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True, help="libpq connection string or postgresql:// URL")
    parser.add_argument("data", help="vulnerability data file (see clairsim/README.md)")
    args = parser.parse_args(argv)
    try:
        counts = seed(args.dsn, args.data)
    except DatabaseUnavailable as err:
        print(f"clairsim.seed: {err}", file=sys.stderr)
        return 1
    loaded = f"{counts['vulnerabilities']} vulnerabilities in {counts['namespaces']} namespaces"
    print(f"clairsim.seed: loaded {loaded}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
