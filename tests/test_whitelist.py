"""Whitelist parsing (clair-scanner's format and the extended one) and how it marks findings."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from scanner import whitelist
from scanner.errors import UsageError
from scanner.models import Analysis, Finding, Image, Layer, Severity

NOW = datetime(2026, 11, 23, tzinfo=timezone.utc)


def _analysis(name: str, *findings: Finding) -> Analysis:
    image = Image(name=name, id="sha256:1", layers=(Layer(0, "sha256:a", "sha256:a"),))
    return Analysis(image, "debian:10", 10, findings, NOW, NOW)


def _finding(
    vuln: str, package: str = "openssl", severity: Severity = Severity.HIGH, fixed: str | None = "2"
) -> Finding:
    return Finding(vuln, package, "1", fixed, severity, "debian:10")


def _load(tmp_path, text: str) -> whitelist.Whitelist:
    path = tmp_path / "whitelist.yml"
    path.write_text(text)
    return whitelist.load(str(path))


def test_clair_scanner_file_matches_by_id_general_and_per_image(tmp_path):
    rules = _load(
        tmp_path,
        "generalwhitelist:\n  CVE-1: XML\nimages:\n  ubuntu:\n    CVE-2: XSX\n  debian:\n    CVE-3: zlib\n",
    )
    analysis = _analysis("ubuntu:18.04", _finding("CVE-1", "libxml2"), _finding("CVE-2"), _finding("CVE-3"))
    result = whitelist.apply(analysis, rules, Severity.UNKNOWN, today=date(2026, 1, 1))
    ignored = {f.vulnerability: f.ignored for f in result.findings}
    # clair-scanner's value is only a note: CVE-1 is whitelisted although the package is libxml2.
    assert ignored["CVE-1"] is not None and "XML" in ignored["CVE-1"] and "general" in ignored["CVE-1"]
    assert ignored["CVE-2"] is not None and "image ubuntu" in ignored["CVE-2"]
    assert ignored["CVE-3"] is None  # the debian entry is for another image
    assert [f.vulnerability for f in result.unapproved] == ["CVE-3"]
    assert result.warnings == ()


@pytest.mark.parametrize(
    ("name", "key", "matches"),
    [
        ("ubuntu:18.04", "ubuntu", True),
        ("ubuntu", "ubuntu", True),
        ("registry.example.com/team/app:1.2", "registry.example.com/team/app", True),
        ("registry:5000/app:1", "registry:5000/app", True),
        ("registry:5000/app:1", "registry", True),  # clair-scanner's split at the first colon
        ("app@sha256:abc", "app", True),
        ("ubuntu:18.04", "ubuntu:18.04", False),
        ("myubuntu:1", "ubuntu", False),
    ],
)
def test_image_keys_follow_clair_scanner(name, key, matches):
    assert (key in whitelist.image_keys(name)) is matches


def test_extended_entries_restrict_package_expire_and_report_stale(tmp_path):
    rules = _load(
        tmp_path,
        """
generalwhitelist:
  CVE-1: {package: openssl, reason: no TLS here, expires: 2027-01-31}
  CVE-2: {package: zlib, reason: wrong package}
  CVE-3: {reason: expired one, expires: "2026-01-01"}
  CVE-9: {reason: never seen}
""",
    )
    analysis = _analysis("app:1", _finding("CVE-1"), _finding("CVE-2"), _finding("CVE-3"))
    result = whitelist.apply(analysis, rules, Severity.UNKNOWN, today=date(2026, 6, 1))
    by_id = {f.vulnerability: f for f in result.findings}
    assert by_id["CVE-1"].ignored is not None and "no TLS here" in by_id["CVE-1"].ignored
    assert by_id["CVE-2"].ignored is None  # entry names zlib, finding is in openssl
    assert by_id["CVE-3"].ignored is None  # expired
    assert any("CVE-3" in w and "expired on 2026-01-01" in w for w in result.warnings)
    stale = [w for w in result.warnings if "matched nothing" in w]
    assert any("CVE-9" in w for w in stale) and any("CVE-2" in w for w in stale)
    assert not any("CVE-1" in w for w in result.warnings)
    # The same entry still applies on its last day.
    last_day = whitelist.apply(analysis, rules, Severity.UNKNOWN, today=date(2027, 1, 31))
    assert {f.vulnerability for f in last_day.ignored} == {"CVE-1"}


def test_threshold_and_ignore_unfixed():
    analysis = _analysis(
        "app:1",
        _finding("CVE-C", severity=Severity.CRITICAL),
        _finding("CVE-H", severity=Severity.HIGH, fixed=None),
        _finding("CVE-L", severity=Severity.LOW),
        _finding("CVE-D", severity=Severity.DEFCON1),
    )
    high = whitelist.apply(analysis, None, Severity.HIGH)
    assert {f.vulnerability for f in high.unapproved} == {"CVE-C", "CVE-H", "CVE-D"}
    assert {f.vulnerability for f in high.below_threshold} == {"CVE-L"}
    unfixed = whitelist.apply(analysis, None, Severity.HIGH, ignore_unfixed=True)
    assert {f.vulnerability for f in unfixed.unapproved} == {"CVE-C", "CVE-D"}
    assert [f.ignored for f in unfixed.ignored] == ["no fix available (--ignore-unfixed)"]
    assert whitelist.apply(analysis, None, Severity.DEFCON1).unapproved[0].vulnerability == "CVE-D"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("generalwhitelist: [CVE-1]\n", "generalwhitelist must be a mapping"),
        ("generalWhitelist:\n  CVE-1: x\n", "unknown key 'generalWhitelist'"),
        ("images:\n  ubuntu: CVE-1\n", "images.ubuntu must be a mapping"),
        ("generalwhitelist:\n  CVE-1: {pkg: x}\n", "unknown field 'pkg'"),
        ("generalwhitelist:\n  CVE-1: {expires: soon}\n", "expires must be a date"),
        ("generalwhitelist:\n  CVE-1: x\n   bad: [\n", "malformed whitelist"),
        ("- just\n- a list\n", "the file must be a mapping"),
    ],
)
def test_malformed_whitelists_are_usage_errors(tmp_path, text, message):
    with pytest.raises(UsageError) as caught:
        _load(tmp_path, text)
    assert message in str(caught.value)
    assert caught.value.exit_code == 2


def test_missing_and_empty_whitelist(tmp_path):
    with pytest.raises(UsageError, match="whitelist not found"):
        whitelist.load(str(tmp_path / "nope.yml"))
    assert _load(tmp_path, "").entries == ()
    assert _load(tmp_path, "generalwhitelist:\n").entries == ()


def test_example_whitelist_parses():
    from pathlib import Path

    rules = whitelist.load(str(Path(__file__).parent.parent / "whitelist.example.yml"))
    assert any(e.image is None for e in rules.entries)
    assert any(e.image is not None for e in rules.entries)
    assert any(e.expires is not None and e.reason for e in rules.entries)
