"""The whole result model as JSON, for scripts: every finding, whitelisted ones with their reason.
One document holds any number of images."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..models import Finding, ImageResult
from . import Format, utc_time


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
        "started": utc_time(analysis.started),
        "finished": utc_time(analysis.finished),
        "unapproved": len(result.unapproved),
        "distilled": result.image.distilled,
        "findings": [_finding_json(f, result.image.distilled) for f in result.findings],
        "warnings": list(result.warnings),
    }


def document(results: Sequence[ImageResult]) -> dict[str, Any]:
    return {"images": [result_json(r) for r in results]}


def _render(results: Sequence[ImageResult]) -> bytes:
    return (json.dumps(document(results), indent=2) + "\n").encode()


FORMAT = Format("json", "clair-scan.json", combines=True, render=_render)
