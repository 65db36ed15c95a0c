"""python -m clairsim4 --port N [--host H] [--data FILE | --no-data | --dsn DSN]: serve until
SIGTERM or SIGINT, then exit 0.

python -m clairsim4 -conf FILE: as `clair -mode combo -conf FILE` (the Clair image's command):
ports, database and scanner and updater settings come from Clair's config file (config.py);
a config Clair rejects, or a database it cannot reach, ends the process with status 1."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

import clairsim
from clairsim.store import DatabaseUnavailable, connect

from . import config as clairconfig
from .server import ClairV4Simulator

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "vulns.json"


def _log(level: str, message: str, **fields: object) -> None:
    """Clair's log lines: JSON on stderr, lowercase levels (§1)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = json.dumps({"level": level, "time": stamp, **fields, "message": message})
    print(line, file=sys.stderr, flush=True)


def _from_config(path: str) -> tuple[ClairV4Simulator, clairsim.Store] | int:
    """Start as Clair does from its config (main.go:106-146); an exit status when it cannot."""
    try:
        conf = clairconfig.load(path)
    except clairconfig.ConfigError as err:
        _log("error", "failed to load configuration", error=str(err))
        return 1
    # The notifier is opened and migrated first, then the indexer and matcher (services.go).
    for service in ("notifier", "indexer", "matcher"):
        try:
            connect(conf.connstrings[service]).close()
        except DatabaseUnavailable as err:
            _log("error", "fatal error", component=service, error=str(err))
            return 1
    store = clairsim.PostgresStore(conf.connstrings["matcher"])
    simulator = ClairV4Simulator(
        store, "0.0.0.0", conf.api_port, introspection_port=conf.introspection_port, log_stream=sys.stderr
    )
    simulator.ready = False
    try:
        simulator.start()
    except OSError as err:
        _log("error", "fatal error", error=f"http transport: {err}")
        store.close()
        return 1
    problem = clairconfig.rhel_mapping_problem(conf)
    if conf.repo2cpe_mapping_file is None:
        _log(
            "warn",
            "unable to fetch mapping file",
            component="rhel/repositoryscanner",
            url=clairconfig.REPO2CPE_URL,
            error="dial tcp: lookup access.redhat.com: no such host",
        )
    simulator.indexer.scanner_failure = problem
    _log("info", "notifier disabled", component="initialize/Services")
    simulator.ready = True
    threading.Thread(target=_updates, args=(conf,), daemon=True).start()
    return simulator, store


def _updates(conf: clairconfig.Config) -> None:
    """The updaters' first run, in the background (cc:libvuln/updates/manager.go): offline, every
    set's factory fails and the existing data stays; the loop starts either way."""
    for name in conf.update_sets:
        _log(
            "error",
            "failed constructing factory, excluding from run",
            component="libvuln/updates/Manager.Run",
            factory=name,
            error="dial tcp: lookup: no such host",
        )
    _log(
        "info",
        "starting background updates",
        component="libvuln/updates/Manager.Start",
        sets=list(conf.update_sets),
        period=f"{conf.period:g}s",
    )


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
    source.add_argument("-conf", "--conf", dest="conf", help="Clair's config file: run as Clair's image does")
    parser.add_argument("-mode", "--mode", default="combo", choices=["combo"])
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if args.conf:
        started = _from_config(args.conf)
        if isinstance(started, int):
            return started
        simulator, store = started
    else:
        if args.no_data:
            store = clairsim.MemoryStore()
        elif args.dsn:
            store = clairsim.PostgresStore(args.dsn)
        else:
            store = clairsim.MemoryStore.from_json(args.data)
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
