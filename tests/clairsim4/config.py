"""Clair v4.7.4's config file, read as `clair -conf FILE -mode combo` reads it (CLAIR_V4_API.md
§1, §2, §2.1), as far as a local appliance meets it:

* the file name must end in `.yaml` or `.json`; YAML is turned into JSON and decoded with
  DisallowUnknownFields, so an unknown key is fatal;
* `http_listen_addr` (default `:6060`) and `introspection_addr` (default `:8089`);
* `indexer.connstring`, `matcher.connstring`, `notifier.connstring`: all three are opened at start
  in combo mode, and one that cannot be reached ends the process with status 1;
* `matcher.disable_updaters`, `matcher.period`, `updaters.sets`: which updater sets run in the
  background, and how often (periods under a minute become 6h);
* `indexer.scanner.repo.rhel-repository-scanner.repo2cpe_mapping_file`: without it the RHEL
  repository scanner downloads Red Hat's repository-to-CPE mapping at start. This stand-in has no
  network (as the offline hosts it stands for), so that download fails, the mapping stays nil, and
  every layer scan fails (cc:rhel/repositoryscanner.go:119-205). With it, the file is read
  (JSON, gzip-compressed or not) and indexing works.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO2CPE_URL = "https://access.redhat.com/security/data/metrics/repository-to-cpe.json"
MAPPING_FAILURE = "rhel: unable to create a mappingFile object"
ALL_SETS = (
    *("rhel", "alpine", "ubuntu", "debian", "osv", "aws", "oracle", "photon", "suse", "rhcc"),
    "clair.cvss",
)
SIX_HOURS = 6 * 3600.0

# The keys of clair:config (v1.3.0) that a combo-mode config may hold; anything else is fatal.
_KNOWN: dict[str, Any] = {
    "http_listen_addr": None,
    "introspection_addr": None,
    "log_level": None,
    "tls": {"root_ca": None, "cert": None, "key": None},
    "indexer": {
        "connstring": None,
        "scanlock_retry": None,
        "layer_scan_concurrency": None,
        "migrations": None,
        "scanner": {"package": "*", "dist": "*", "repo": "*"},
        "airgap": None,
        "index_report_request_concurrency": None,
        "max_conn_pool": None,
    },
    "matcher": {
        "connstring": None,
        "indexer_addr": None,
        "migrations": None,
        "period": None,
        "disable_updaters": None,
        "update_retention": None,
        "cache_age": None,
        "max_conn_pool": None,
    },
    "matchers": {"names": None, "config": "*"},
    "updaters": {"sets": None, "config": "*", "filter": None},
    "notifier": {
        "connstring": None,
        "indexer_addr": None,
        "matcher_addr": None,
        "migrations": None,
        "delivery_interval": None,
        "poll_interval": None,
        "disable_summary": None,
        "webhook": "*",
        "amqp": "*",
        "stomp": "*",
    },
    "auth": "*",
    "trace": "*",
    "metrics": "*",
}


class ConfigError(Exception):
    """The config cannot be loaded: Clair exits with status 1."""


@dataclass(frozen=True)
class Config:
    api_port: int = 6060
    introspection_port: int = 8089
    connstrings: dict[str, str] = field(default_factory=dict)
    """indexer, matcher, notifier -> connstring."""
    update_sets: tuple[str, ...] = ALL_SETS
    period: float = SIX_HOURS
    repo2cpe_mapping_file: str | None = None


def _check_keys(value: Any, known: Any, where: str) -> None:
    if known == "*" or known is None or not isinstance(value, dict):
        return
    for key, inner in value.items():
        if key not in known:
            raise ConfigError(f"json: unknown field {key!r} ({where or 'top level'})")
        _check_keys(inner, known[key], f"{where}.{key}".lstrip("."))


def _port(address: Any, default: int) -> int:
    if not address:
        return default
    port = str(address).rpartition(":")[2]
    if not port.isdigit():
        raise ConfigError(f"bad listen address {address!r}")
    return int(port)


def _duration(text: Any) -> float:
    """time.ParseDuration for the forms configs use (`6h`, `30m`, `90s`, `1h30m`)."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    total, number = 0.0, ""
    for char in str(text):
        if char.isdigit() or char == ".":
            number += char
        elif char in units and number:
            total += float(number) * units[char]
            number = ""
        else:
            raise ConfigError(f"time: invalid duration {text!r}")
    if number:
        raise ConfigError(f"time: missing unit in duration {text!r}")
    return total


def load(path: str) -> Config:
    if not path.endswith((".yaml", ".json")):
        raise ConfigError(f"unknown config file extension: {path!r}")
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"failed to load config: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("failed to decode config: not an object")
    _check_keys(data, _KNOWN, "")
    indexer, matcher = data.get("indexer") or {}, data.get("matcher") or {}
    services = ("indexer", "matcher", "notifier")
    connstrings = {name: str((data.get(name) or {}).get("connstring") or "") for name in services}
    sets = (data.get("updaters") or {}).get("sets")
    update_sets = tuple(str(s) for s in sets) if sets is not None else ALL_SETS
    if matcher.get("disable_updaters"):
        update_sets = ()
    period = _duration(matcher["period"]) if matcher.get("period") else SIX_HOURS
    if period < 60:
        period = SIX_HOURS
    scanners = ((indexer.get("scanner") or {}).get("repo") or {}).get("rhel-repository-scanner") or {}
    return Config(
        api_port=_port(data.get("http_listen_addr"), 6060),
        introspection_port=_port(data.get("introspection_addr"), 8089),
        connstrings=connstrings,
        update_sets=update_sets,
        period=period,
        repo2cpe_mapping_file=scanners.get("repo2cpe_mapping_file"),
    )


def rhel_mapping_problem(config: Config) -> str | None:
    """What the RHEL repository scanner's Configure step leaves behind: None when it holds a
    mapping, else the error every layer scan will fail with. Its download from Red Hat cannot
    succeed here (the stand-in has no network): Clair logs the failure and carries on."""
    path = config.repo2cpe_mapping_file
    if path is None:
        return MAPPING_FAILURE
    try:
        raw = Path(path).read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        mapping = json.loads(raw)
    except (OSError, ValueError):
        return MAPPING_FAILURE
    return None if isinstance(mapping, dict) and "data" in mapping else MAPPING_FAILURE
