"""CycloneDX 1.6 JSON, built with cyclonedx-python-lib: the image's packages as Clair lists them,
with purls of the distro's type, and every finding as a vulnerability with its ratings and the
package it affects (whitelisted ones carry their reason as analysis). An SBOM describes one
artifact, so each image gets a file of its own."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal

from cyclonedx.model import Property, XsUri
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.impact_analysis import ImpactAnalysisAffectedStatus
from cyclonedx.model.vulnerability import (
    BomTarget,
    BomTargetVersionRange,
    Vulnerability,
    VulnerabilityAnalysis,
    VulnerabilityRating,
    VulnerabilityScoreSource,
    VulnerabilitySeverity,
    VulnerabilitySource,
)
from cyclonedx.output import make_outputter
from cyclonedx.schema import OutputFormat, SchemaVersion
from packageurl import PackageURL

from .. import __version__
from ..models import Finding, ImageResult, Package, Severity
from . import Format

SCHEMA_VERSION = SchemaVersion.V1_6
_SERIAL = uuid.UUID("0b6f6c2e-6d1a-4f0e-8f39-0c1a2b3c4d5e")
_SEVERITY = {
    Severity.UNKNOWN: VulnerabilitySeverity.UNKNOWN,
    Severity.NEGLIGIBLE: VulnerabilitySeverity.INFO,
    Severity.LOW: VulnerabilitySeverity.LOW,
    Severity.MEDIUM: VulnerabilitySeverity.MEDIUM,
    Severity.HIGH: VulnerabilitySeverity.HIGH,
    Severity.CRITICAL: VulnerabilitySeverity.CRITICAL,
    Severity.DEFCON1: VulnerabilitySeverity.CRITICAL,
}
# Clair v2's namespaces name the distro; package managers follow from it (Alpine's namespace has
# the dpkg version format, so the format alone cannot tell apk from deb).
_RPM = {"centos", "rhel", "oracle", "amzn", "fedora", "opensuse", "sles", "photon"}


def purl(package: Package) -> PackageURL:
    """`debian:12` -> pkg:deb/debian/NAME@VERSION?distro=debian-12; alpine:v3.10 -> pkg:apk/alpine/
    ...?distro=alpine-3.10; centos:7 -> pkg:rpm/centos/...?distro=centos-7."""
    distro, _, release = package.namespace.partition(":")
    distro = distro.lower()
    if distro == "alpine":
        kind = "apk"
    elif distro in _RPM or package.version_format == "rpm":
        kind = "rpm"
    else:
        kind = "deb"
    qualifiers = {"distro": f"{distro}-{release.removeprefix('v')}"} if distro and release else {}
    return PackageURL(
        type=kind,
        namespace=distro or None,
        name=package.name,
        version=package.version or None,
        qualifiers=qualifiers,
    )


def _packages(result: ImageResult) -> list[Package]:
    """Clair's full list when the result has it; otherwise at least the vulnerable packages."""
    if result.analysis.features:
        return list(result.analysis.features)
    found = {
        Package(f.package, f.installed, f.namespace or result.analysis.namespace) for f in result.findings
    }
    return sorted(found, key=lambda p: (p.name, p.version))


def _status(result: ImageResult, finding: Finding) -> str:
    if finding.ignored is not None:
        return "whitelisted"
    return "unapproved" if finding.severity >= result.threshold else "below-threshold"


def _vulnerability(result: ImageResult, finding: Finding, component: Component, n: int) -> Vulnerability:
    distro = finding.namespace or result.analysis.namespace or "clair"
    source = VulnerabilitySource(name=distro, url=XsUri(finding.link) if finding.link else None)
    ratings = [VulnerabilityRating(source=source, severity=_SEVERITY[finding.severity], method=None)]
    for cvss in finding.cvss:
        if cvss.version == "3":
            method = (
                VulnerabilityScoreSource.CVSS_V3_1
                if cvss.vector.startswith("CVSS:3.1/")
                else VulnerabilityScoreSource.CVSS_V3
            )
        else:
            method = VulnerabilityScoreSource.CVSS_V2
        ratings.append(
            VulnerabilityRating(
                source=VulnerabilitySource(name="NVD"),
                score=Decimal(str(cvss.score)),
                method=method,
                vector=cvss.vector,
            )
        )
    target = BomTarget(
        ref=str(component.bom_ref),
        versions=[
            BomTargetVersionRange(version=finding.installed, status=ImpactAnalysisAffectedStatus.AFFECTED)
        ],
    )
    return Vulnerability(
        bom_ref=f"vulnerability-{n}",
        id=finding.vulnerability,
        source=source,
        ratings=ratings,
        description=finding.description or None,
        recommendation=f"Upgrade {finding.package} to {finding.fixed}" if finding.fixed else None,
        affects=[target],
        analysis=VulnerabilityAnalysis(detail=f"whitelisted: {finding.ignored}") if finding.ignored else None,
        properties=[Property(name="clair-scan:status", value=_status(result, finding))],
    )


def bom(result: ImageResult) -> Bom:
    image = result.image
    analysis = result.analysis
    subject = Component(
        type=ComponentType.CONTAINER,
        name=image.name,
        version=image.id,
        bom_ref="image",
        properties=[Property(name="clair-scan:os", value=analysis.namespace)] if analysis.namespace else [],
    )
    document = Bom(
        serial_number=uuid.uuid5(_SERIAL, f"{image.id}|{analysis.started.isoformat()}"),
        metadata=BomMetaData(component=subject, timestamp=analysis.finished),
    )
    document.metadata.tools.components.add(
        Component(type=ComponentType.APPLICATION, name="clair-scan", version=__version__)
    )
    components: dict[tuple[str, str], Component] = {}
    for package in _packages(result):
        url = purl(package)
        ref = url.to_string()
        if ref in {str(c.bom_ref) for c in components.values()}:
            continue
        component = Component(
            type=ComponentType.LIBRARY, name=package.name, version=package.version, purl=url, bom_ref=ref
        )
        components[(package.name, package.version)] = component
        document.components.add(component)
    document.register_dependency(subject, components.values())
    for n, finding in enumerate(result.findings, 1):
        known = components.get((finding.package, finding.installed))
        if known is not None:
            component = known
        else:  # a package Clair's list lacks: list it all the same
            package = Package(finding.package, finding.installed, finding.namespace or analysis.namespace)
            component = Component(
                type=ComponentType.LIBRARY,
                name=package.name,
                version=package.version,
                purl=purl(package),
                bom_ref=f"{purl(package).to_string()}#{n}",
            )
            components[(finding.package, finding.installed)] = component
            document.components.add(component)
            document.register_dependency(subject, [component])
        document.vulnerabilities.add(_vulnerability(result, finding, component, n))
    return document


def _render(results: Sequence[ImageResult]) -> bytes:
    (result,) = results
    text: str = make_outputter(bom(result), OutputFormat.JSON, SCHEMA_VERSION).output_as_string(indent=2)
    return (text + "\n").encode()


FORMAT = Format("cyclonedx", "clair-scan.cdx.json", combines=False, render=_render)
