"""Every output format on hand-made results: validated against its schema or read back with a
library that reads it (jsonschema for SARIF, junitparser, cyclonedx-python-lib's validator), and
the plan that decides which files a run writes."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from junitparser import Failure, JUnitXml, Skipped
from packageurl import PackageURL

from reportcheck import validate_gitlab_report, validate_sarif
from samples import alpine_result, clean_result, debian_result
from scanner import formats
from scanner.errors import FileSystemError, UsageError
from scanner.formats import Output, Plan
from scanner.formats.gitlab import gitlab_report
from scanner.models import Finding, Package, Severity

SARIF_SCHEMA = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "schemas" / "sarif-schema-2.1.0.json"
)


def render(name: str, *results) -> bytes:
    return formats.get(name).render(list(results))


# SARIF ------------------------------------------------------------------------------------------


def test_sarif_validates_and_has_one_rule_per_vulnerability_and_one_result_per_package():
    result = debian_result()
    twice = Finding("DSA-4539-1", "glibc-extra", "2.28-10", None, Severity.DEFCON1, "debian:10")
    result = replace(result, findings=(*result.findings, twice))
    document = json.loads(render("sarif", result))
    validate_sarif(document)
    (run,) = document["runs"]
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    # Counting findings only: the whitelisted Critical and the Negligible below Low are not listed.
    assert list(rules) == ["DSA-4539-1", "CVE-2019-1543", "CVE-2019-5094"]
    assert [(r["ruleId"], r["properties"]["package"]) for r in run["results"]] == [
        ("DSA-4539-1", "glibc"),
        ("CVE-2019-1543", "openssl"),
        ("CVE-2019-5094", "e2fsprogs"),
        ("DSA-4539-1", "glibc-extra"),
    ]
    for item in run["results"]:
        assert run["tool"]["driver"]["rules"][item["ruleIndex"]]["id"] == item["ruleId"]
    glibc = rules["DSA-4539-1"]
    assert glibc["helpUri"] == "https://security-tracker.debian.org/tracker/DSA-4539-1"
    assert "| glibc | 2.28-10 | 2.28-10+deb10u1 |" in glibc["help"]["markdown"]
    assert "| glibc-extra | 2.28-10 | no fix yet |" in glibc["help"]["markdown"]
    assert "ChaCha20-Poly1305 | nonce" in rules["CVE-2019-1543"]["fullDescription"]["text"]
    assert "helpUri" not in rules["CVE-2019-5094"]  # Clair gave no link
    # level from the severity; security-severity from CVSS where Clair has it, else the severity.
    levels = {r["ruleId"]: (r["level"], r["properties"]["security-severity"]) for r in run["results"]}
    assert levels == {
        "DSA-4539-1": ("error", "10.0"),
        "CVE-2019-1543": ("error", "7.4"),
        "CVE-2019-5094": ("warning", "5.5"),
    }
    assert glibc["properties"]["security-severity"] == "10.0"
    assert rules["CVE-2019-1543"]["properties"]["security-severity"] == "7.4"


def test_sarif_location_and_fingerprints_follow_the_repository_not_the_tag():
    first = json.loads(render("sarif", debian_result("registry.example.com:5000/team/app:1.0")))
    later = json.loads(render("sarif", debian_result("registry.example.com:5000/team/app:1.1")))
    location = first["runs"][0]["results"][0]["locations"][0]["physicalLocation"]
    assert location["artifactLocation"] == {"uri": "team/app"}
    assert location["region"]["startLine"] == 1

    def prints(document):
        return [r["partialFingerprints"]["clairScanFinding/v1"] for r in document["runs"][0]["results"]]

    assert prints(first) == prints(later)  # a new tag: GitHub keeps tracking the same alerts
    assert len(set(prints(first))) == len(prints(first))
    other = json.loads(render("sarif", debian_result("other/app:1.0")))
    assert not set(prints(other)) & set(prints(first))
    assert first["runs"][0]["automationDetails"]["id"] == "clair-scan/team/app/"


def test_sarif_holds_several_images_as_runs_with_their_own_categories():
    document = json.loads(render("sarif", debian_result("app:1"), debian_result("app:2"), alpine_result()))
    validate_sarif(document)
    assert [r["properties"]["imageName"] for r in document["runs"]] == ["app:1", "app:2", "alpine:3.10"]
    categories = [r["automationDetails"]["id"] for r in document["runs"]]
    assert len(set(categories)) == 3
    assert categories[2] == "clair-scan/library/alpine/"
    (curl,) = document["runs"][2]["results"]
    assert curl["properties"]["security-severity"] == "9.8"  # CVSS v3 over the severity's 8.0


def test_sarif_of_a_clean_image_validates():
    document = json.loads(render("sarif", clean_result()))
    validate_sarif(document)
    assert document["runs"][0]["results"] == []


# JUnit ------------------------------------------------------------------------------------------


def _cases(suite):
    return {case.name: case for case in suite}


def test_junit_fails_counting_findings_and_skips_whitelisted_ones_with_their_reason(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_bytes(render("junit", debian_result(), alpine_result(), clean_result()))
    xml = JUnitXml.fromfile(str(path))
    suites = list(xml)
    assert [s.name for s in suites] == [
        "registry.example.com:5000/team/app:1.0",
        "alpine:3.10",
        "clean/app:2",
    ]
    debian = suites[0]
    assert (debian.tests, debian.failures, debian.skipped, debian.errors) == (5, 3, 2, 0)
    cases = _cases(debian)
    failure = cases["DSA-4539-1 in glibc 2.28-10"].result[0]
    assert isinstance(failure, Failure)
    assert failure.type == "Defcon1"
    assert "fixed in 2.28-10+deb10u1" in failure.message
    assert "glibc <b>overflow</b> & more" in failure.text  # escaped on write, read back as text
    whitelisted = cases["CVE-2019-18224 in libidn2 2.0.5-1"].result[0]
    assert isinstance(whitelisted, Skipped)
    assert whitelisted.message == "whitelisted: not reachable (whitelist.yml, expires 2099-01-01)"
    below = cases["CVE-2019-18276 in bash 5.0-4"].result[0]
    assert isinstance(below, Skipped) and "below the threshold Low" in below.message
    clean = suites[2]
    assert (clean.tests, clean.failures, clean.skipped) == (1, 0, 0)
    assert [case.is_passed for case in clean] == [True]


def test_junit_survives_characters_xml_cannot_hold(tmp_path):
    result = debian_result()
    bad = replace(result.findings[0], description="bell \x07 and nul \x00 inside")
    result = replace(result, findings=(bad, *result.findings[1:]))
    path = tmp_path / "junit.xml"
    path.write_bytes(render("junit", result))
    (suite,) = list(JUnitXml.fromfile(str(path)))
    assert "bell ? and nul ? inside" in _cases(suite)["DSA-4539-1 in glibc 2.28-10"].result[0].text


# CycloneDX --------------------------------------------------------------------------------------


def test_cyclonedx_validates_and_lists_clairs_packages_with_distro_purls():
    text = render("cyclonedx", debian_result()).decode()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    assert bom["specVersion"] == "1.6"
    assert bom["metadata"]["component"]["type"] == "container"
    purls = {
        PackageURL.from_string(c["purl"]).to_dict()["name"]: PackageURL.from_string(c["purl"])
        for c in bom["components"]
    }
    assert {"openssl", "glibc", "bash", "libidn2", "zlib", "gcc-8"} <= set(purls)  # every package
    zlib = purls["zlib"]
    assert (zlib.type, zlib.namespace, zlib.version, zlib.qualifiers) == (
        "deb",
        "debian",
        "1:1.2.11.dfsg-1",
        {"distro": "debian-10"},
    )
    refs = {c["bom-ref"] for c in bom["components"]}
    vulns = {(v["id"], v["affects"][0]["ref"]) for v in bom["vulnerabilities"]}
    assert len(vulns) == 5 and all(ref in refs for _, ref in vulns)
    libidn2 = next(v for v in bom["vulnerabilities"] if v["id"] == "CVE-2019-18224")
    assert libidn2["analysis"]["detail"] == "whitelisted: not reachable (whitelist.yml, expires 2099-01-01)"
    ratings = {r.get("method"): r for r in libidn2["ratings"]}
    assert ratings["CVSSv31"]["score"] == 9.8 and ratings["CVSSv2"]["score"] == 7.5
    assert ratings[None]["severity"] == "critical"
    assert libidn2["affects"][0]["versions"] == [{"status": "affected", "version": "2.0.5-1"}]
    assert libidn2["recommendation"] == "Upgrade libidn2 to 2.0.5-1+deb10u1"


def test_cyclonedx_purl_types_follow_the_distro():
    text = render("cyclonedx", alpine_result()).decode()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    assert {c["purl"] for c in json.loads(text)["components"]} == {
        "pkg:apk/alpine/musl@1.1.22-r3?distro=alpine-3.10",
        "pkg:apk/alpine/curl@7.66.0-r0?distro=alpine-3.10",
    }
    from scanner.formats.cyclonedx import purl

    assert purl(Package("openssl", "1.0.2k-19.el7", "centos:7", "rpm")).to_string() == (
        "pkg:rpm/centos/openssl@1.0.2k-19.el7?distro=centos-7"
    )
    assert purl(Package("zlib", "1.2.13.dfsg-1", "debian:12", "dpkg")).to_string() == (
        "pkg:deb/debian/zlib@1.2.13.dfsg-1?distro=debian-12"
    )


def test_cyclonedx_without_clairs_package_list_still_lists_the_vulnerable_packages():
    result = debian_result()
    bare = replace(result, analysis=replace(result.analysis, features=()))
    text = render("cyclonedx", bare).decode()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    names = {c["name"] for c in json.loads(text)["components"]}
    assert names == {f.package for f in result.findings}


# JSON, GitLab, table ----------------------------------------------------------------------------


def test_json_holds_every_image_and_every_finding():
    document = json.loads(render("json", debian_result(), clean_result()))
    assert [d["image"] for d in document["images"]] == [
        "registry.example.com:5000/team/app:1.0",
        "clean/app:2",
    ]
    first = document["images"][0]
    assert len(first["findings"]) == 5 and first["unapproved"] == 3
    assert {f["vulnerability"]: f["ignored"] for f in first["findings"]}["CVE-2019-18224"].startswith(
        "not reachable"
    )


def test_gitlab_format_renders_the_gitlab_report():
    data = json.loads(render("gitlab", debian_result()))
    validate_gitlab_report(data)
    assert data == gitlab_report(debian_result())
    with pytest.raises(ValueError):
        render("gitlab", debian_result(), alpine_result())  # one image per file


def test_table_file_has_a_cvss_column():
    text = render("table", debian_result(), clean_result()).decode()
    header = next(line for line in text.splitlines() if "Vulnerability" in line)
    assert header.index("Severity") < header.index("CVSS") < header.index("Vulnerability")
    openssl = next(line for line in text.splitlines() if "CVE-2019-1543" in line)
    assert "7.4" in openssl
    assert "CVE-2019-18224" not in text  # whitelisted
    assert "clean/app:2: no unapproved vulnerabilities" in text


# HTML (static; tests/test_html.py renders it in Chromium) ---------------------------------------


def test_html_escapes_outside_text_and_fetches_nothing():
    page = render("html", debian_result(), clean_result()).decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "glibc &lt;b&gt;overflow&lt;/b&gt; &amp; more" in page
    assert "default-src 'none'" in page
    lowered = page.lower()
    assert "<link" not in lowered and " src=" not in lowered and "@import" not in lowered
    assert page.count('<section class="image"') == 2 and "<svg" in page


def test_html_links_only_web_addresses():
    result = debian_result()
    evil = replace(result.findings[0], link="javascript:alert(1)")
    page = render("html", replace(result, findings=(evil, *result.findings[1:]))).decode()
    assert "javascript:alert" not in page


# Plan and atomic writing ------------------------------------------------------------------------


def test_parse_output():
    assert formats.parse_output("sarif=out/x.sarif") == Output("sarif", "out/x.sarif")
    assert formats.parse_output("TABLE") == Output("table", None)
    assert formats.parse_output("html=a=b.html") == Output("html", "a=b.html")
    with pytest.raises(UsageError, match="unknown output format 'pdf'"):
        formats.parse_output("pdf=x.pdf")
    with pytest.raises(UsageError, match="names no file"):
        formats.parse_output("sarif=")


def test_plan_writes_per_image_files_as_each_completes_and_combined_ones_at_the_end(tmp_path):
    outputs = [
        Output("gitlab", str(tmp_path / "gl.json")),
        Output("cyclonedx", str(tmp_path / "sbom.json")),
        Output("sarif", str(tmp_path / "all.sarif")),
        Output("junit", str(tmp_path / "junit.xml")),
    ]
    plan = Plan.make(outputs, ["app:1", "alpine:3.10"])
    assert plan.write_image(0, debian_result("app:1")) == (
        str(tmp_path / "gl-app-1.json"),
        str(tmp_path / "sbom-app-1.json"),
    )
    assert sorted(os.listdir(tmp_path)) == ["gl-app-1.json", "sbom-app-1.json"]
    plan.write_image(1, alpine_result())
    assert plan.combined_paths() == [str(tmp_path / "all.sarif"), str(tmp_path / "junit.xml")]
    plan.write_combined([debian_result("app:1"), alpine_result()])
    assert sorted(os.listdir(tmp_path)) == [
        "all.sarif",
        "gl-alpine-3.10.json",
        "gl-app-1.json",
        "junit.xml",
        "sbom-alpine-3.10.json",
        "sbom-app-1.json",
    ]
    assert len(json.loads((tmp_path / "all.sarif").read_text())["runs"]) == 2


def test_plan_with_one_image_writes_everything_with_the_image(tmp_path):
    plan = Plan.make(
        [Output("sarif", str(tmp_path / "x.sarif")), Output("html", str(tmp_path / "r.html"))], ["a"]
    )
    assert plan.combined_paths() == []
    assert plan.write_image(0, debian_result("a")) == (str(tmp_path / "x.sarif"), str(tmp_path / "r.html"))


def test_plan_refuses_what_cannot_be_written():
    with pytest.raises(UsageError, match="only one output may go to stdout"):
        Plan.make([Output("table"), Output("sarif")], ["a"])
    with pytest.raises(UsageError, match="gitlab holds one image, and 2 are scanned"):
        Plan.make([Output("gitlab")], ["a", "b"])
    Plan.make([Output("sarif")], ["a", "b"])  # one document holds both
    with pytest.raises(UsageError, match=r"two outputs would write x\.json"):
        Plan.make([Output("gitlab", "x.json"), Output("json", "x.json")], ["a"])


def test_a_failed_write_leaves_no_new_file_and_keeps_the_old_ones(tmp_path):
    old = tmp_path / "gl.json"
    old.write_text("old")
    plan = Plan.make(
        [Output("gitlab", str(old)), Output("sarif", str(tmp_path / "missing" / "x.sarif"))], ["app:1"]
    )
    with pytest.raises(FileSystemError, match=r"cannot write report .*x\.sarif"):
        plan.write_image(0, debian_result("app:1"))
    assert old.read_text() == "old"
    assert os.listdir(tmp_path) == ["gl.json"]


def test_a_full_disk_leaves_no_new_file(tiny_fs):
    plan = Plan.make(
        [Output("json", str(tiny_fs / "a.json")), Output("html", str(tiny_fs / "b.html"))], ["x"]
    )
    big = debian_result("x")
    big = replace(big, findings=tuple(replace(f, description="d" * 40_000) for f in big.findings))
    with pytest.raises(FileSystemError, match="No space left"):
        plan.write_image(0, big)
    assert os.listdir(tiny_fs) == []


def test_html_shows_the_age_of_the_vulnerability_data_when_known():
    from datetime import datetime, timezone

    result = debian_result()
    assert "Vulnerability data" not in render("html", result).decode()  # unknown: not guessed
    dated = replace(
        result,
        analysis=replace(
            result.analysis, data_updated=datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)
        ),
    )
    page = render("html", dated).decode()
    assert "Vulnerability data" in page and "2023-11-14 22:13 UTC (" in page and "days old)" in page
