"""Standalone entry point, run as the Clair image runs Clair:

    python3 -m clairsim -config=/config/config.yaml [-log-level=info] [-insecure-tls]
    python3 -m clairsim -data=vulns.json [-config=...]     # in-memory data, no PostgreSQL

Like Clair it opens the database (ping + migrations) before starting any server and exits with a
fatal log line and status 1 when that fails, without retrying. SIGTERM/SIGINT stop it cleanly.
Extra flags: -data (in-memory data file) and -host (bind address; default all interfaces).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import uuid
from typing import Any

from .config import ClairConfig, ConfigError, load_config
from .logs import Logger
from .server import ClairSimulator
from .store import DatabaseUnavailable, MemoryStore, PostgresStore, Store
from .updater import Updater

DEFAULT_CONFIG = "/etc/clair/config.yaml"
_FLAGS: dict[str, Any] = {
    "config": DEFAULT_CONFIG,
    "log-level": "info",
    "insecure-tls": False,
    "cpu-profile": "",
    "data": "",
    "host": "",
}


class UsageError(Exception):
    pass


def parse_flags(argv: list[str]) -> tuple[dict[str, Any], set[str]]:
    """Go's flag package: -name=value, -name value, --name=value; booleans take no value."""
    values = dict(_FLAGS)
    given: set[str] = set()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-", "--") or not arg.startswith("-"):
            if arg == "--":
                break
            raise UsageError(f"unexpected argument: {arg}")
        name, has_value, value = arg.lstrip("-").partition("=")
        if name in ("h", "help"):
            raise UsageError("")
        if name not in values:
            raise UsageError(f"flag provided but not defined: -{name}")
        if isinstance(_FLAGS[name], bool):
            if has_value and value.lower() not in ("1", "0", "t", "f", "true", "false"):
                raise UsageError(f'invalid boolean value "{value}" for -{name}')
            values[name] = value.lower() in ("1", "t", "true") if has_value else True
        else:
            if not has_value:
                if not args:
                    raise UsageError(f"flag needs an argument: -{name}")
                value = args.pop(0)
            values[name] = value
        given.add(name)
    return values, given


def _usage() -> str:
    return (
        "Usage of clairsim:\n"
        "  -config string\n"
        '    \tLoad configuration from the specified file. (default "/etc/clair/config.yaml")\n'
        "  -cpu-profile string\n    \tIgnored (accepted for compatibility).\n"
        "  -data string\n    \tServe vulnerability data from this JSON file instead of PostgreSQL.\n"
        "  -host string\n    \tAddress to listen on (default: all interfaces, as Clair).\n"
        "  -insecure-tls\n    \tDisable TLS verification when pulling layers.\n"
        '  -log-level string\n    \tDefine the logging level. (default "info")\n'
    )


def _text_fatal(message: str, error: str) -> None:
    # Before the JSON formatter is set up, logrus writes its text format to stderr.
    print(f'level=fatal msg="{message}" error="{error}"', file=sys.stderr)


def open_database(config: ClairConfig, flags: dict[str, Any], logger: Logger) -> Store:
    if flags["data"]:
        return MemoryStore.from_json(flags["data"], logger)
    if config.database_type != "pgsql":
        raise DatabaseUnavailable(
            f'database: unknown Driver "{config.database_type}" (forgotten configuration or import?)'
        )
    if not config.source:
        raise DatabaseUnavailable("pgsql: no database connection string specified")
    return PostgresStore(config.source, logger)


def main(argv: list[str] | None = None) -> int:
    try:
        flags, given = parse_flags(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        if str(err):
            print(err, file=sys.stderr)
        print(_usage(), file=sys.stderr, end="")
        return 2

    if flags["data"] and "config" not in given and not os.path.exists(DEFAULT_CONFIG):
        config = ClairConfig()
    else:
        try:
            config = load_config(flags["config"])
        except (OSError, ConfigError, ValueError, TypeError) as err:
            _text_fatal("failed to load configuration", str(err))
            return 1

    try:
        logger = Logger(stream=sys.stdout, level=flags["log-level"])
    except ValueError as err:
        print(err, file=sys.stderr)
        return 1

    try:
        store = open_database(config, flags, logger)
    except DatabaseUnavailable as err:
        logger.fatal(str(err))
        return 1
    except (OSError, ValueError, KeyError) as err:
        logger.fatal(f"could not load the data file: {err}")
        return 1

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    if config.notifier_endpoint:
        logger.info("notifier service started", **{"lock identifier": str(uuid.uuid4())})
    else:
        logger.info("notifier service is disabled")

    simulator = None
    if config.api is None:
        logger.info("main API service is disabled.")
        logger.info("health API service is disabled.")
    else:
        simulator = ClairSimulator(
            store,
            host=flags["host"],
            port=config.api.port,
            health_port=config.api.health_port,
            api_timeout=config.api.timeout,
            insecure_tls=flags["insecure-tls"],
            pagination_key=config.api.pagination_key,
            logger=logger,
        )
        try:
            simulator.start()
        except OSError as err:
            logger.fatal(f"listen tcp {flags['host']}: {err}")
            return 1

    updater = Updater(
        store,
        config.updater_interval or 0.0,
        logger,
        feed=os.environ.get("CLAIRSIM_FEED") or None,
        fetch_seconds=float(os.environ.get("CLAIRSIM_FETCH_SECONDS") or 0),
    ).start()

    while not stop.wait(0.5):
        pass
    logger.info("Received interruption, gracefully stopping ...")
    if simulator is not None:
        simulator.stop()
    updater.stop()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
