"""JUnit XML for the test-report views of GitLab and Jenkins: one suite per image (so one file holds
several), one failing test case per finding that counts, whitelisted and below-threshold findings
skipped with the reason. An image with nothing that counts gets one passing case, so the view shows
the scan ran."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from ..models import Finding, ImageResult
from . import Format, utc_time


def _case(suite: ET.Element, result: ImageResult, finding: Finding) -> ET.Element:
    return ET.SubElement(
        suite,
        "testcase",
        classname=f"{result.image.name}.{finding.package}",
        name=f"{finding.vulnerability} in {finding.package} {finding.installed}",
        time="0",
    )


def _details(finding: Finding) -> str:
    lines = [
        f"{finding.vulnerability} ({finding.severity.label}) in {finding.package} {finding.installed}",
        f"fixed in {finding.fixed}" if finding.fixed else "no fix yet",
    ]
    lines += [f"CVSS v{c.version} {c.score:.1f} {c.vector}" for c in finding.cvss]
    if finding.layer is not None:
        lines.append(f"added by layer {finding.layer.index + 1}: {finding.layer.created_by}".rstrip(": "))
    if finding.link:
        lines.append(finding.link)
    if finding.description:
        lines += ["", finding.description]
    return "\n".join(lines)


def suite(result: ImageResult) -> ET.Element:
    unapproved, ignored, below = result.unapproved, result.ignored, result.below_threshold
    element = ET.Element(
        "testsuite",
        name=result.image.name,
        tests=str(max(len(unapproved) + len(ignored) + len(below), 1)),
        failures=str(len(unapproved)),
        errors="0",
        skipped=str(len(ignored) + len(below)),
        time=f"{(result.analysis.finished - result.analysis.started).total_seconds():.3f}",
        timestamp=utc_time(result.analysis.started),
    )
    properties = ET.SubElement(element, "properties")
    for name, value in (
        ("image.id", result.image.id),
        ("os", result.analysis.namespace),
        ("threshold", result.threshold.label),
        ("packages", str(result.analysis.packages)),
    ):
        ET.SubElement(properties, "property", name=name, value=value)
    for finding in unapproved:
        failure = ET.SubElement(
            _case(element, result, finding),
            "failure",
            message=f"{finding.severity.label}: {finding.vulnerability} in {finding.package} "
            f"{finding.installed}" + (f", fixed in {finding.fixed}" if finding.fixed else ", no fix yet"),
            type=finding.severity.label,
        )
        failure.text = _details(finding)
    for finding in ignored:
        ET.SubElement(_case(element, result, finding), "skipped", message=f"whitelisted: {finding.ignored}")
    for finding in below:
        ET.SubElement(
            _case(element, result, finding),
            "skipped",
            message=f"{finding.severity.label} is below the threshold {result.threshold.label}",
        )
    if not (unapproved or ignored or below):
        ET.SubElement(
            element,
            "testcase",
            classname=result.image.name,
            name=f"no vulnerabilities at or above {result.threshold.label}",
            time="0",
        )
    return element


def document(results: Sequence[ImageResult]) -> ET.Element:
    suites = [suite(r) for r in results]
    root = ET.Element(
        "testsuites",
        name="clair-scan",
        tests=str(sum(int(s.get("tests", "0")) for s in suites)),
        failures=str(sum(int(s.get("failures", "0")) for s in suites)),
        errors="0",
        skipped=str(sum(int(s.get("skipped", "0")) for s in suites)),
    )
    root.extend(suites)
    return root


# Characters XML 1.0 cannot hold at all, not even escaped; a description could carry them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _render(results: Sequence[ImageResult]) -> bytes:
    root = document(results)
    for element in root.iter():
        element.attrib = {k: _NOT_XML.sub("?", v) for k, v in element.attrib.items()}
        if element.text:
            element.text = _NOT_XML.sub("?", element.text)
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


FORMAT = Format("junit", "clair-scan-junit.xml", combines=True, render=_render)
