"""Data model and errors shared by the stores, the layer worker and the HTTP API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import versions

ENGINE_VERSION = 3  # clair.Version in worker.go

# Clair's error texts (pkg/commonerr, database, worker.go, ext/imagefmt).
NOT_FOUND = "the resource cannot be found"
BACKEND_ERROR = "database: an error occured when querying the backend"
PARENT_UNKNOWN = "worker: parent layer is unknown, it must be processed first"
UNSUPPORTED = "worker: OS and/or package manager are not supported"
COULD_NOT_FIND_LAYER = "could not find layer"
BAD_SEVERITY = "failed to parse Severity from input"

SEVERITIES = ("Unknown", "Negligible", "Low", "Medium", "High", "Critical", "Defcon1")

# VARCHAR(128) columns: longer values make PostgreSQL fail, which Clair masks as BACKEND_ERROR.
MAX_NAME = 128


class ApiError(Exception):
    """An error with the HTTP status Clair answers it with; str() is the message."""

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    """Clair's commonerr.ErrBadRequest (400)."""

    status = 400


class NotFound(ApiError):
    status = 404

    def __init__(self, message: str = NOT_FOUND) -> None:
        super().__init__(message)


class BackendError(ApiError):
    """A masked database failure (500)."""

    status = 500

    def __init__(self, message: str = BACKEND_ERROR) -> None:
        super().__init__(message)


class Unprocessable(ApiError):
    """Archive errors and unsupported OS (422)."""

    status = 422


def parse_severity(text: str) -> str:
    for severity in SEVERITIES:
        if text.lower() == severity.lower():
            return severity
    raise BadRequest(BAD_SEVERITY)


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class Namespace:
    name: str
    version_format: str

    @property
    def compare_format(self) -> str:
        return versions.format_for_namespace(self.name, self.version_format)


@dataclass(frozen=True)
class FeatureKey:
    """A feature version as Clair identifies it: namespace, (source) package name, version."""

    namespace: str
    name: str
    version: str


@dataclass
class FixedIn:
    name: str
    version: str  # versions.MAX_VERSION when there is no fix


@dataclass
class Vulnerability:
    name: str
    namespace: str
    severity: str = "Unknown"
    description: str = ""
    link: str = ""
    metadata: dict[str, Any] | None = None
    fixed_in: list[FixedIn] = field(default_factory=list)
    id: int = 0

    def api_json(
        self, *, fixed_by: str | None = None, with_fixed_in: bool = False, version_format: str = ""
    ) -> dict[str, Any]:
        """The API's Vulnerability object (every field omitempty)."""
        out: dict[str, Any] = {}
        for key, value in (
            ("Name", self.name),
            ("NamespaceName", self.namespace),
            ("Description", self.description),
            ("Link", self.link),
            ("Severity", self.severity),
        ):
            if value:
                out[key] = value
        if self.metadata:
            out["Metadata"] = self.metadata
        if fixed_by and fixed_by != versions.MAX_VERSION:
            out["FixedBy"] = fixed_by
        if with_fixed_in and self.fixed_in:
            out["FixedIn"] = [
                _omit_empty(
                    {
                        "Name": fix.name,
                        "NamespaceName": self.namespace,
                        "VersionFormat": version_format,
                        "Version": "None" if fix.version == versions.MAX_VERSION else fix.version,
                    }
                )
                for fix in self.fixed_in
            ]
        return out


def _omit_empty(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value not in ("", None, [], {})}


@dataclass
class Match:
    """A vulnerability affecting a feature version, with the version that fixes it."""

    vulnerability: Vulnerability
    fixed_by: str
