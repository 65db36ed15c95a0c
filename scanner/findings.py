"""The findings stage: Clair's layer JSON turned into one record per (vulnerability, package)."""

from __future__ import annotations

from typing import Any

from .errors import ClairError
from .models import Cvss, Finding, Image, Package, Severity


def _severity(text: Any) -> Severity:
    try:
        return Severity.parse(str(text))
    except ValueError:
        return Severity.UNKNOWN


def _cvss(metadata: Any) -> tuple[Cvss, ...]:
    nvd = metadata.get("NVD") if isinstance(metadata, dict) else None
    if not isinstance(nvd, dict):
        return ()
    scores = []
    for key, version in (("CVSSv3", "3"), ("CVSSv2", "2")):
        entry = nvd.get(key)
        # Clair fills CVSSv3 with zero values when NVD had none: that is no score.
        if isinstance(entry, dict) and entry.get("Vectors") and entry.get("Score") is not None:
            scores.append(Cvss(version, float(entry["Score"]), str(entry["Vectors"])))
    return tuple(scores)


def from_clair(layer: dict[str, Any], image: Image) -> tuple[str, int, tuple[Finding, ...]]:
    """The top layer's namespace, package count and findings, sorted most severe first."""
    try:
        return _from_clair(layer, image)
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError) as exc:
        # Clair's answer is outside data: a shape we cannot read is Clair's failure, not a bug.
        raise ClairError(
            f"Clair's answer for {image.name} is malformed: {type(exc).__name__}: {exc}"
        ) from None


def _from_clair(layer: dict[str, Any], image: Image) -> tuple[str, int, tuple[Finding, ...]]:
    # A distilled image's one layer says nothing about where a package came from.
    by_chain = {} if image.distilled else {layer.chain_id: layer for layer in image.layers}
    features = layer.get("Features") or []
    findings: dict[tuple[str, str, str], Finding] = {}
    for feature in features:
        for vuln in feature.get("Vulnerabilities") or []:
            finding = Finding(
                vulnerability=str(vuln.get("Name", "")),
                package=str(feature.get("Name", "")),
                installed=str(feature.get("Version", "")),
                fixed=str(vuln["FixedBy"]) if vuln.get("FixedBy") else None,
                severity=_severity(vuln.get("Severity")),
                namespace=str(vuln.get("NamespaceName") or feature.get("NamespaceName") or ""),
                link=str(vuln.get("Link") or ""),
                description=str(vuln.get("Description") or ""),
                cvss=_cvss(vuln.get("Metadata")),
                layer=by_chain.get(str(feature.get("AddedBy", ""))),
            )
            findings[(finding.vulnerability, finding.package, finding.installed)] = finding
    ordered = sorted(findings.values(), key=lambda f: (-f.severity, f.vulnerability, f.package, f.installed))
    return str(layer.get("NamespaceName") or ""), len(features), tuple(ordered)


def packages(layer: dict[str, Any]) -> tuple[Package, ...]:
    """Every package (Clair's "features") of the top layer, which holds the whole image's, sorted."""
    found = {
        Package(
            name=str(feature.get("Name", "")),
            version=str(feature.get("Version", "")),
            namespace=str(feature.get("NamespaceName") or ""),
            version_format=str(feature.get("VersionFormat") or ""),
        )
        for feature in layer.get("Features") or []
    }
    return tuple(sorted(found, key=lambda p: (p.name, p.version, p.namespace)))
