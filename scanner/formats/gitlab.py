"""GitLab's container scanning report (schema 15.0.7), one image per file."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..models import Finding, ImageResult, Severity
from . import Format, utc_time

SCHEMA_VERSION = "15.0.7"

# As GitLab mapped Clair's severities (its container_scanning parser for clair-scanner reports;
# klar documented the same five levels): GitLab has no Negligible or Defcon1.
GITLAB_SEVERITY = {
    Severity.UNKNOWN: "Unknown",
    Severity.NEGLIGIBLE: "Low",
    Severity.LOW: "Low",
    Severity.MEDIUM: "Medium",
    Severity.HIGH: "High",
    Severity.CRITICAL: "Critical",
    Severity.DEFCON1: "Critical",
}

_CVSS2 = re.compile(r"^(AV:[NAL]/AC:[LMH]/Au:[MSN]/C:[NPC]/I:[NPC]/A:[NPC])$")
_CVSS3 = re.compile(r"^CVSS:3[.][01]/")
_URL = re.compile(r"^(https?|ftp)://.+")
_ID_NAMESPACE = uuid.UUID("8f1c5f0e-3c55-4a4e-9a57-1bd6f3d1c1a5")


def _identifier(finding: Finding) -> dict[str, str]:
    prefix = finding.vulnerability.split("-", 1)[0].lower() if "-" in finding.vulnerability else ""
    identifier = {
        "type": prefix or "clair",
        "name": finding.vulnerability,
        "value": finding.vulnerability,
    }
    if _URL.match(finding.link):
        identifier["url"] = finding.link
    return identifier


def _vulnerability(finding: Finding, image: str, operating_system: str) -> dict[str, Any]:
    solution = (
        f"Upgrade {finding.package} from {finding.installed} to {finding.fixed}"
        if finding.fixed
        else "No fix is available yet."
    )
    key = f"{image}|{finding.vulnerability}|{finding.package}|{finding.installed}"
    item: dict[str, Any] = {
        "id": str(uuid.uuid5(_ID_NAMESPACE, key)),
        "name": f"{finding.vulnerability} in {finding.package}"[:255],
        "description": finding.description[:1048576],
        "severity": GITLAB_SEVERITY[finding.severity],
        "solution": solution[:7000],
        "identifiers": [_identifier(finding)],
        "location": {
            "dependency": {"package": {"name": finding.package}, "version": finding.installed},
            "operating_system": finding.namespace or operating_system,
            "image": image,
        },
    }
    if _URL.match(finding.link):
        item["links"] = [{"url": finding.link}]
    vectors = [
        {"vendor": "NVD", "vector": c.vector}
        for c in finding.cvss
        if (_CVSS2.match(c.vector) or _CVSS3.match(c.vector)) and 16 <= len(c.vector) <= 128
    ]
    if vectors:
        item["cvss_vectors"] = vectors
    return item


def gitlab_report(result: ImageResult) -> dict[str, Any]:
    """Only findings that count (not whitelisted, at or above the threshold) are listed, as GitLab's
    own analyzers drop allowlisted findings and those below CS_SEVERITY_THRESHOLD."""
    analysis = result.analysis
    operating_system = analysis.namespace or "unknown"
    return {
        "version": SCHEMA_VERSION,
        "scan": {
            "analyzer": {
                "id": "clair-scan",
                "name": "clair-scan",
                "version": __version__,
                "vendor": {"name": "clair-scan"},
            },
            "scanner": {
                "id": "clair",
                "name": "Clair",
                "url": "https://github.com/quay/clair",
                "version": "2",
                "vendor": {"name": "Quay"},
            },
            "type": "container_scanning",
            "status": "success",
            "start_time": utc_time(analysis.started),
            "end_time": utc_time(analysis.finished),
        },
        "vulnerabilities": [
            _vulnerability(f, result.image.name, operating_system) for f in result.unapproved
        ],
        "remediations": [],
    }


def _render(results: Sequence[ImageResult]) -> bytes:
    (result,) = results
    return (json.dumps(gitlab_report(result), indent=2) + "\n").encode()


FORMAT = Format("gitlab", "gl-container-scanning-report.json", combines=False, render=_render)
