"""Clair v4's wire types (claircore v1.5.27) and its digest rules, as ../../../shared/CLAIR_V4_API.md
describes them. Objects are plain dicts in Go's struct-field order; maps are sorted by key when
written, as Go's encoders write them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from clairsim import gojson

STATES = (
    "CheckManifest",
    "FetchLayers",
    "ScanLayers",
    "Coalesce",
    "IndexManifest",
    "IndexError",
    "IndexFinished",
)
ZERO_TIME = "0001-01-01T00:00:00Z"
CVSS_ENRICHMENT = (
    "message/vnd.clair.map.vulnerability; enricher=clair.cvss "
    "schema=https://csrc.nist.gov/schema/nvd/feed/1.1/cvss-v3.x.json"
)
NORMALIZED = ("Unknown", "Negligible", "Low", "Medium", "High", "Critical")

_DIGEST = re.compile(r"(sha256|sha512):([0-9a-fA-F]+)\Z")
_HEX_LENGTH = {"sha256": 64, "sha512": 128}


class DigestError(ValueError):
    pass


def parse_digest(text: Any) -> str:
    """cc:digest.go: `sha256:` or `sha512:` (lower case) and 64 or 128 hex digits; upper-case hex
    is accepted and re-emitted in lower case."""
    if not isinstance(text, str):
        raise DigestError(f"unable to decode digest: {text!r}")
    match = _DIGEST.match(text)
    if match is None:
        algo = text.partition(":")[0]
        if ":" not in text:
            raise DigestError(f"invalid digest format: {text!r}")
        raise DigestError(f"unknown algorithm {algo!r}")
    algo, hexpart = match.groups()
    if len(hexpart) != _HEX_LENGTH[algo]:
        raise DigestError(f"bad checksum length: {len(hexpart) // 2}")
    return f"{algo}:{hexpart.lower()}"


def encode(value: Any) -> bytes:
    """The body Clair writes: compact JSON and a newline (json.Encoder.Encode)."""
    return (gojson.dumps(value) + "\n").encode()


def sorted_map(values: dict[str, Any]) -> dict[str, Any]:
    return {key: values[key] for key in sorted(values)}


@dataclass(frozen=True)
class LayerSpec:
    """One manifest layer as posted."""

    hash: str
    uri: str
    headers: dict[str, list[str]]


@dataclass(frozen=True)
class Manifest:
    hash: str
    layers: tuple[LayerSpec, ...]


@dataclass(frozen=True)
class Package:
    """A package row: identical packages share one id across manifests, as in Clair's database."""

    name: str
    version: str
    kind: str = "binary"
    arch: str = ""
    source_name: str = ""
    source_version: str = ""

    def json(self, ids: IdTable) -> dict[str, Any]:
        out: dict[str, Any] = {"id": ids.package(self), "name": self.name, "version": self.version}
        out["kind"] = self.kind
        if self.source_name:
            source = Package(self.source_name, self.source_version, kind="source")
            out["source"] = {
                "id": ids.package(source),
                "name": source.name,
                "version": source.version,
                "kind": "source",
                "normalized_version": "",
                "cpe": "",
            }
        out["normalized_version"] = ""
        if self.arch:
            out["arch"] = self.arch
        out["cpe"] = ""
        return out


@dataclass(frozen=True)
class Distribution:
    did: str
    name: str
    version: str = ""
    version_code_name: str = ""
    version_id: str = ""
    pretty_name: str = ""

    def json(self, ids: IdTable) -> dict[str, Any]:
        return {
            "id": ids.distribution(self),
            "did": self.did,
            "name": self.name,
            "version": self.version,
            "version_code_name": self.version_code_name,
            "version_id": self.version_id,
            "arch": "",
            "cpe": "",
            "pretty_name": self.pretty_name,
        }


@dataclass
class IdTable:
    """Opaque decimal row ids, stable for the simulator's lifetime."""

    _packages: dict[Package, str] = field(default_factory=dict)
    _distributions: dict[Distribution, str] = field(default_factory=dict)
    _vulnerabilities: dict[tuple[int, str, str], str] = field(default_factory=dict)
    _next: int = 1

    def _take(self, table: dict[Any, str], key: Any) -> str:
        if key not in table:
            table[key] = str(self._next)
            self._next += 1
        return table[key]

    def package(self, package: Package) -> str:
        return self._take(self._packages, package)

    def distribution(self, distribution: Distribution) -> str:
        return self._take(self._distributions, distribution)

    def vulnerability(self, key: tuple[int, str, str]) -> str:
        return self._take(self._vulnerabilities, key)


def error_body(status: int, message: str) -> bytes:
    """httptransport/error.go: 400/404/405/429 have their own codes, every other status is
    `internal-error`."""
    code = {400: "bad-request", 404: "not-found", 405: "method-not-allowed", 429: "too-many-requests"}
    return encode({"code": code.get(status, "internal-error"), "message": message})
