"""Clair's config.yaml (cmd/clair/config.go) and its PostgreSQL connection string.

The connection string is read the way Clair's driver, lib/pq, reads it, then rewritten for libpq
(psycopg): lib/pq defaults to `sslmode=require` and host `localhost`, and sends keys it does not
know (such as `statement_timeout` in the shipped config) as server settings, which libpq would
reject as unknown options.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any


class ConfigError(Exception):
    pass


# --- Go durations -----------------------------------------------------------------------------

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """time.ParseDuration, in seconds: "900s", "1h30m", "1.5s", "0"."""
    rest = text.strip()
    sign = 1.0
    if rest[:1] in "+-" and rest:
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ConfigError(f"time: invalid duration {text}")
    total = 0.0
    while rest:
        match = _DURATION_PART.match(rest)
        if not match or match.group(1) in ("", "."):
            raise ConfigError(f"time: invalid duration {text}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        rest = rest[match.end() :]
    return sign * total


def yaml_duration(value: Any, default: float) -> float:
    """A time.Duration field as yaml.v2 fills it: text is parsed, a bare integer is nanoseconds."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise ConfigError(f"cannot unmarshal {value!r} into time.Duration")
    if isinstance(value, int):
        return value / 1e9
    return parse_go_duration(str(value))


# --- config.yaml ------------------------------------------------------------------------------


@dataclass
class ApiConfig:
    port: int = 6060
    health_port: int = 6061
    timeout: float = 900.0
    pagination_key: str = ""


@dataclass
class ClairConfig:
    database_type: str = "pgsql"
    database_options: dict[str, Any] = field(default_factory=dict)
    api: ApiConfig | None = field(default_factory=ApiConfig)
    updater_interval: float | None = 3600.0  # None: no updater section at all
    notifier_endpoint: str = ""

    @property
    def source(self) -> str:
        return str(self.database_options.get("source") or "")


def _section(parent: dict[str, Any], key: str) -> tuple[bool, dict[str, Any] | None]:
    """(present, mapping) for a sub-mapping; present with None means `key:` left empty."""
    if key not in parent:
        return False, None
    value = parent[key]
    if value is None:
        return True, None
    if not isinstance(value, dict):
        raise ConfigError(f"yaml: cannot unmarshal {key} into a mapping")
    return True, value


def parse_config(text: str) -> ClairConfig:
    import yaml  # only the standalone entry point needs PyYAML

    document = yaml.safe_load(text) or {}
    if not isinstance(document, dict):
        raise ConfigError("yaml: the configuration must be a mapping")
    config = ClairConfig()
    _, clair = _section(document, "clair")
    clair = clair or {}

    _, database = _section(clair, "database")
    if database:
        config.database_type = str(database.get("type") or "")
        config.database_options = dict(database.get("options") or {})

    present, api = _section(clair, "api")
    if present and api is None:
        config.api = None  # yaml.v2 sets the pointer to nil: the APIs are disabled
    elif api:
        assert config.api is not None
        config.api.port = int(api.get("port", config.api.port))
        config.api.health_port = int(api.get("healthport", config.api.health_port))
        config.api.timeout = yaml_duration(api.get("timeout"), config.api.timeout)
        config.api.pagination_key = str(api.get("paginationkey") or "")

    present, updater = _section(clair, "updater")
    if present and updater is None:
        config.updater_interval = None
    elif updater:
        config.updater_interval = yaml_duration(updater.get("interval"), 3600.0)

    _, notifier = _section(clair, "notifier")
    if notifier:
        http = notifier.get("http") or {}
        config.notifier_endpoint = str(http.get("endpoint") or "") if isinstance(http, dict) else ""

    if config.api is not None and config.api.pagination_key:
        try:
            key = base64.urlsafe_b64decode(config.api.pagination_key.encode())
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            raise ConfigError("Invalid Pagination key; must be 32-bit URL-safe base64")
    return config


def load_config(path: str) -> ClairConfig:
    with open(os.path.expandvars(path), encoding="utf-8") as handle:
        return parse_config(handle.read())


# --- lib/pq connection strings ----------------------------------------------------------------

# Keys lib/pq handles itself; every other key becomes a server setting ("-c key=value").
_PQ_CONNECTION_KEYS = {
    "host",
    "port",
    "user",
    "password",
    "dbname",
    "sslmode",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "connect_timeout",
    "application_name",
    "fallback_application_name",
}
_PQ_IGNORED_KEYS = {"disable_prepared_binary_result", "binary_parameters", "extra_float_digits"}


def parse_pq_source(source: str) -> dict[str, str]:
    """Key/value pairs of a lib/pq source: `k=v k='quoted \\' value'` or a postgres:// URL."""
    if source.startswith(("postgres://", "postgresql://")):
        url = urllib.parse.urlsplit(source)
        pairs: dict[str, str] = {}
        if url.hostname:
            pairs["host"] = url.hostname
        if url.port:
            pairs["port"] = str(url.port)
        if url.username:
            pairs["user"] = urllib.parse.unquote(url.username)
        if url.password:
            pairs["password"] = urllib.parse.unquote(url.password)
        if url.path.strip("/"):
            pairs["dbname"] = urllib.parse.unquote(url.path.lstrip("/"))
        for key, value in urllib.parse.parse_qsl(url.query):
            pairs[key] = value
        return pairs
    pairs = {}
    i, n = 0, len(source)
    while True:
        while i < n and source[i].isspace():
            i += 1
        if i >= n:
            return pairs
        start = i
        while i < n and source[i] != "=" and not source[i].isspace():
            i += 1
        key = source[start:i]
        while i < n and source[i].isspace():
            i += 1
        if i >= n or source[i] != "=" or not key:
            raise ConfigError(f'missing "=" after "{key}" in connection info string')
        i += 1
        while i < n and source[i].isspace():
            i += 1
        value_chars: list[str] = []
        if i < n and source[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise ConfigError("unterminated quoted string in connection info string")
                if source[i] == "\\" and i + 1 < n:
                    value_chars.append(source[i + 1])
                    i += 2
                elif source[i] == "'":
                    i += 1
                    break
                else:
                    value_chars.append(source[i])
                    i += 1
        else:
            while i < n and not source[i].isspace():
                if source[i] == "\\" and i + 1 < n:
                    value_chars.append(source[i + 1])
                    i += 2
                else:
                    value_chars.append(source[i])
                    i += 1
        pairs[key] = "".join(value_chars)


def _quote_libpq(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def libpq_conninfo(source: str) -> str:
    """A libpq conninfo string that connects the way lib/pq would with `source`."""
    pairs = parse_pq_source(source)
    settings = []
    conninfo: dict[str, str] = {}
    for key, value in pairs.items():
        if key in _PQ_CONNECTION_KEYS:
            conninfo[key] = value
        elif key not in _PQ_IGNORED_KEYS:
            settings.append(f"-c {key}={value}")
    if "host" not in conninfo and "PGHOST" not in os.environ:
        conninfo["host"] = "localhost"
    if not conninfo.get("sslmode") and "PGSSLMODE" not in os.environ:
        conninfo["sslmode"] = "require"  # lib/pq's default, unlike libpq's "prefer"
    if settings:
        conninfo["options"] = " ".join(settings)
    return " ".join(f"{key}={_quote_libpq(value)}" for key, value in conninfo.items())
