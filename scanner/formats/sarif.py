"""SARIF 2.1.0 for GitHub code scanning: one run per image (so one file holds several), one rule
per vulnerability with help text and link, one result per (vulnerability, package) that counts.

Located as GitHub's own image scanners do (Trivy's SARIF): the image's repository, without
registry, tag or digest, as the artifact's URI, at line 1. That URI, the vulnerability and the
package make the fingerprint, so GitHub tracks a finding across scans of new tags.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..models import Finding, ImageResult, Severity
from . import Format

SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
FINGERPRINT = "clairScanFinding/v1"

# GitHub reads rules[].properties.security-severity as a CVSS-like score: over 9.0 is critical,
# 7.0-8.9 high, 4.0-6.9 medium, 0.1-3.9 low. Without a CVSS score the severity stands in for it
# (Trivy uses the same values).
_SCORE = {
    Severity.UNKNOWN: 0.0,
    Severity.NEGLIGIBLE: 1.0,
    Severity.LOW: 2.0,
    Severity.MEDIUM: 5.5,
    Severity.HIGH: 8.0,
    Severity.CRITICAL: 9.5,
    Severity.DEFCON1: 10.0,
}
_URL = re.compile(r"^https?://\S+$")


def level(severity: Severity) -> str:
    if severity >= Severity.HIGH:
        return "error"
    return "warning" if severity == Severity.MEDIUM else "note"


def security_severity(finding: Finding) -> str:
    return f"{finding.cvss[0].score if finding.cvss else _SCORE[finding.severity]:.1f}"


def repository(image: str) -> str:
    """`registry.example.com:5000/team/app:1.0@sha256:...` -> `team/app`; `debian:12` ->
    `library/debian`, as Docker names them."""
    name = image.split("@", 1)[0]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    last = parts[-1].split(":", 1)[0]
    parts = [*parts[:-1], last]
    if len(parts) == 1:
        parts.insert(0, "library")
    return "/".join(p for p in parts if p) or "image"


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _rule(vulnerability: str, findings: list[Finding]) -> dict[str, Any]:
    first = findings[0]
    lines = [f"**{vulnerability}** ({first.severity.label})", ""]
    if first.description:
        lines += [first.description, ""]
    for cvss in first.cvss:
        lines.append(f"CVSS v{cvss.version}: {cvss.score:.1f} `{cvss.vector}`  ")
    lines += ["", "| Package | Installed | Fixed in |", "| --- | --- | --- |"]
    lines += [
        f"| {_cell(f.package)} | {_cell(f.installed)} | {_cell(f.fixed or 'no fix yet')} |" for f in findings
    ]
    if _URL.match(first.link):
        lines += ["", f"[{vulnerability}]({first.link})"]
    text = [f"{vulnerability} ({first.severity.label})", first.description]
    text += [f"{f.package} {f.installed}: fixed in {f.fixed or 'no release yet'}" for f in findings]
    rule: dict[str, Any] = {
        "id": vulnerability,
        "name": "OsPackageVulnerability",
        "shortDescription": {
            "text": f"{vulnerability} in {', '.join(sorted({f.package for f in findings}))}"
        },
        "fullDescription": {"text": first.description or vulnerability},
        "help": {"text": "\n".join(t for t in text if t), "markdown": "\n".join(lines)},
        "defaultConfiguration": {"level": level(first.severity)},
        "properties": {
            "tags": ["vulnerability", "security", first.severity.label],
            "precision": "very-high",
            "security-severity": security_severity(first),
        },
    }
    if _URL.match(first.link):
        rule["helpUri"] = first.link
    return rule


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def run(result: ImageResult, category: str | None = None) -> dict[str, Any]:
    image = result.image
    uri = repository(image.name)
    by_rule: dict[str, list[Finding]] = {}
    for finding in result.unapproved:
        by_rule.setdefault(finding.vulnerability, []).append(finding)
    index = {vulnerability: i for i, vulnerability in enumerate(by_rule)}
    results = []
    seen: set[str] = set()
    for finding in result.unapproved:
        fingerprint = _fingerprint(uri, finding.vulnerability, finding.package)
        if fingerprint in seen:  # the same package twice, in two versions: tell them apart
            fingerprint = _fingerprint(uri, finding.vulnerability, finding.package, finding.installed)
        seen.add(fingerprint)
        fix = f"fixed in {finding.fixed}" if finding.fixed else "no fix yet"
        results.append(
            {
                "ruleId": finding.vulnerability,
                "ruleIndex": index[finding.vulnerability],
                "level": level(finding.severity),
                "message": {
                    "text": f"{finding.package} {finding.installed} in {image.name} is affected by "
                    f"{finding.vulnerability} ({finding.severity.label}, {fix})"
                },
                "locations": [
                    {
                        "physicalLocation": {
                            "artifactLocation": {"uri": uri},
                            "region": {"startLine": 1, "startColumn": 1, "endLine": 1, "endColumn": 1},
                        },
                        "message": {"text": f"{image.name}: {finding.package}@{finding.installed}"},
                    }
                ],
                "partialFingerprints": {FINGERPRINT: fingerprint},
                "properties": {
                    "package": finding.package,
                    "installed": finding.installed,
                    "fixed": finding.fixed,
                    "severity": finding.severity.label,
                    "security-severity": security_severity(finding),
                },
            }
        )
    return {
        "tool": {
            "driver": {
                "name": "clair-scan",
                "fullName": "clair-scan (Clair v2)",
                "version": __version__,
                "semanticVersion": __version__,
                "rules": [_rule(v, found) for v, found in by_rule.items()],
            }
        },
        # GitHub keeps one analysis per category: each image is its own.
        "automationDetails": {"id": category or f"clair-scan/{uri}/"},
        "columnKind": "utf16CodeUnits",
        "results": results,
        "properties": {
            "imageName": image.name,
            "imageID": image.id,
            "repoDigests": list(image.digests),
            "operatingSystem": result.analysis.namespace,
            "threshold": result.threshold.label,
        },
    }


def document(results: Sequence[ImageResult]) -> dict[str, Any]:
    runs = []
    categories: set[str] = set()
    for result in results:
        category = f"clair-scan/{repository(result.image.name)}/"
        if category in categories:  # two tags of one repository in one file: GitHub wants two categories
            category = f"clair-scan/{re.sub(r'[^A-Za-z0-9._/-]+', '-', result.image.name)}/"
        n = 2
        while category in categories:
            category = f"{category.rstrip('/')}-{n}/"
            n += 1
        categories.add(category)
        runs.append(run(result, category))
    return {"$schema": SCHEMA, "version": "2.1.0", "runs": runs}


def _render(results: Sequence[ImageResult]) -> bytes:
    return (json.dumps(document(results), indent=2) + "\n").encode()


FORMAT = Format("sarif", "clair-scan.sarif", combines=True, render=_render)
