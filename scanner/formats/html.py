"""One self-contained HTML page for people: a verdict, findings by severity as an inline SVG chart,
a sortable and filterable findings table, the whitelisted findings with their reasons, and the
image's facts. Everything is inline (CSS, JS, SVG) and a Content-Security-Policy forbids any
fetch, so the page shows the same offline, as a CI artifact or from a mail. One page can hold
several images, one section each. Built with jinja2 with autoescaping: outside text (descriptions,
image names) is never markup."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Any

from .. import __version__
from ..models import Finding, ImageResult, Severity
from . import Format

COLOURS = {
    Severity.DEFCON1: "#6a1b9a",
    Severity.CRITICAL: "#c62828",
    Severity.HIGH: "#e65100",
    Severity.MEDIUM: "#f9a825",
    Severity.LOW: "#1e88e5",
    Severity.NEGLIGIBLE: "#78909c",
    Severity.UNKNOWN: "#9e9e9e",
}
_URL = re.compile(r"^https?://\S+$")


@dataclass(frozen=True)
class Bar:
    label: str
    colour: str
    counted: int
    other: int
    """Whitelisted or below the threshold."""


def _status(result: ImageResult, finding: Finding) -> str:
    if finding.ignored is not None:
        return "whitelisted"
    return "unapproved" if finding.severity >= result.threshold else "below threshold"


def _row(result: ImageResult, finding: Finding) -> dict[str, Any]:
    cvss = finding.cvss[0] if finding.cvss else None
    layer = ""
    if finding.layer is not None:
        layer = f"{finding.layer.index + 1}"
        if finding.layer.created_by:
            layer += f" · {finding.layer.created_by}"
    return {
        "finding": finding,
        "severity": finding.severity.label,
        "rank": int(finding.severity),
        "colour": COLOURS[finding.severity],
        "cvss": f"{cvss.score:.1f}" if cvss else "",
        "cvss_rank": cvss.score if cvss else -1,
        "cvss_title": f"CVSS v{cvss.version} {cvss.vector}" if cvss else "",
        "link": finding.link if _URL.match(finding.link) else "",
        "layer": layer,
        "status": _status(result, finding),
    }


def _age(moment: datetime | None) -> str:
    if moment is None:
        return ""
    days = (datetime.now(timezone.utc) - moment).total_seconds() / 86400
    return f"{moment.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC ({days:.1f} days old)"


def _section(result: ImageResult, n: int) -> dict[str, Any]:
    analysis = result.analysis
    counted = Counter(f.severity for f in result.unapproved)
    other = Counter(f.severity for f in result.findings if f not in result.unapproved)
    bars = [Bar(s.label, COLOURS[s], counted[s], other[s]) for s in sorted(Severity, reverse=True)]
    most = max([b.counted + b.other for b in bars] + [1])
    facts = [
        ("Image ID", result.image.id),
        ("Operating system", analysis.namespace or "unknown"),
        ("Packages", str(analysis.packages)),
        ("Layers", f"{len(result.image.layers)} ({analysis.layers_sent} sent to Clair)"),
        ("Threshold", result.threshold.label),
        ("Scanned", f"{analysis.finished.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"),
        ("Scan took", f"{(analysis.finished - analysis.started).total_seconds():.1f} s"),
    ]
    facts += [("Digest", digest) for digest in result.image.digests]
    data_age = _age(analysis.data_updated)
    if data_age:
        facts.append(("Vulnerability data", data_age))
    return {
        "id": f"image-{n}",
        "result": result,
        "facts": facts,
        "bars": bars,
        "most": most,
        "rows": [_row(result, f) for f in result.findings],
        "whitelisted": [_row(result, f) for f in result.ignored],
        "unapproved": len(result.unapproved),
    }


def page(results: Sequence[ImageResult]) -> str:
    import jinja2

    template = resources.files(__package__).joinpath("report.html.j2").read_text(encoding="utf-8")
    environment = jinja2.Environment(
        autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined
    )
    sections = [_section(r, n) for n, r in enumerate(results, 1)]
    title = results[0].image.name if len(results) == 1 else f"{len(results)} images"
    return environment.from_string(template).render(
        title=title,
        sections=sections,
        version=__version__,
        generated=f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        failed=sum(1 for s in sections if s["unapproved"]),
    )


def _render(results: Sequence[ImageResult]) -> bytes:
    return page(results).encode("utf-8")


FORMAT = Format("html", "clair-scan-report.html", combines=True, render=_render)
