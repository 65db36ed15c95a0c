"""python -m clairsim4 --port N [--host H] [--data FILE | --no-data | --dsn DSN]: serve until
SIGTERM or SIGINT, then exit 0."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

import clairsim

from .server import ClairV4Simulator

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "vulns.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clairsim4", description="A Clair v4.7.4 simulator")
    parser.add_argument("--port", type=int, default=6060)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--introspection-port", type=int, help="serve /healthz, /readyz and /metrics there")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data", default=str(DEFAULT_DATA), help="vulnerability data (clairsim's JSON format)"
    )
    source.add_argument("--dsn", help="vulnerability data in Clair v2's PostgreSQL schema (clairsim.seed)")
    source.add_argument(
        "--no-data", action="store_true", help="no vulnerability data yet: the matcher answers 202"
    )
    args = parser.parse_args(argv)
    if args.no_data:
        store: clairsim.Store = clairsim.MemoryStore()
    elif args.dsn:
        store = clairsim.PostgresStore(args.dsn)
    else:
        store = clairsim.MemoryStore.from_json(args.data)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        simulator = ClairV4Simulator(
            store, args.host, args.port, introspection_port=args.introspection_port, log_stream=sys.stdout
        ).start()
    except OSError as err:
        print(f"clairsim4: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    while not stop.wait(0.5):
        pass
    simulator.stop()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
