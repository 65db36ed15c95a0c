"""The report stage: GitLab's container scanning report and the JSON result model for scripts."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import uuid
from datetime import datetime, timezone
from typing import Any

from . import __version__
from .errors import FileSystemError
from .models import Finding, ImageResult, Severity

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


def _time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


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
            "start_time": _time(analysis.started),
            "end_time": _time(analysis.finished),
        },
        "vulnerabilities": [
            _vulnerability(f, result.image.name, operating_system) for f in result.unapproved
        ],
        "remediations": [],
    }


def _finding_json(finding: Finding, distilled: bool = False) -> dict[str, Any]:
    found: dict[str, Any] = {
        "vulnerability": finding.vulnerability,
        "package": finding.package,
        "installed": finding.installed,
        "fixed": finding.fixed,
        "severity": finding.severity.label,
        "namespace": finding.namespace,
        "link": finding.link,
        "description": finding.description,
        "cvss": [{"version": c.version, "score": c.score, "vector": c.vector} for c in finding.cvss],
        "layer": None
        if finding.layer is None
        else {
            "index": finding.layer.index,
            "chain_id": finding.layer.chain_id,
            "diff_id": finding.layer.diff_id,
            "created_by": finding.layer.created_by,
        },
        "ignored": finding.ignored,
    }
    if distilled:
        del found["layer"]  # absent, not wrong: a distilled scan does not know it
    return found


def result_json(result: ImageResult) -> dict[str, Any]:
    """Everything the scan found, approved findings included, for scripts (`--format json`)."""
    analysis = result.analysis
    return {
        "image": result.image.name,
        "image_id": result.image.id,
        "namespace": analysis.namespace,
        "packages": analysis.packages,
        "layers": len(result.image.layers),
        "layers_sent": analysis.layers_sent,
        "threshold": result.threshold.label,
        "started": _time(analysis.started),
        "finished": _time(analysis.finished),
        "unapproved": len(result.unapproved),
        "distilled": result.image.distilled,
        "findings": [_finding_json(f, result.image.distilled) for f in result.findings],
        "warnings": list(result.warnings),
    }


def write_atomic(path: str, data: dict[str, Any]) -> None:
    """Readers see the old file or the whole new one, never a partial report."""
    text = json.dumps(data, indent=2) + "\n"
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise FileSystemError(f"cannot write report {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def report_paths(report: str, images: list[str]) -> list[str]:
    """One report per image: the given path for a single image; with several, the image's name is
    added to it: gl-container-scanning-report.json -> gl-container-scanning-report-alpine-3.10.json."""
    if len(images) <= 1:
        return [report] * len(images)
    stem, ext = os.path.splitext(report)
    paths = []
    for name in images:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "image"
        candidate = f"{stem}-{slug}{ext or '.json'}"
        n = 2
        while candidate in paths:
            candidate = f"{stem}-{slug}-{n}{ext or '.json'}"
            n += 1
        paths.append(candidate)
    return paths
