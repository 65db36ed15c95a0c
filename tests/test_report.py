"""The GitLab report: schema-valid, severities mapped as GitLab's Clair analyzer did, written atomically."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import pytest

from reportcheck import validate_gitlab_report
from scanner.errors import FileSystemError
from scanner.formats import report_paths, write_all
from scanner.formats.gitlab import gitlab_report
from scanner.models import Analysis, Cvss, Finding, Image, ImageResult, Layer, Severity


def write_atomic(path: str, data: object) -> None:
    """A JSON document written as every report is (formats.write_all: all or nothing)."""
    write_all([(path, (json.dumps(data, indent=2) + "\n").encode())])


START = datetime(2026, 11, 23, 7, 0, 1, 123456, tzinfo=timezone.utc)
END = datetime(2026, 11, 23, 7, 0, 9, tzinfo=timezone.utc)


def _result(findings: tuple[Finding, ...], threshold: Severity = Severity.UNKNOWN) -> ImageResult:
    layer = Layer(0, "sha256:" + "a" * 64, "sha256:" + "a" * 64, "ADD rootfs.tar /")
    image = Image(name="registry.example.com/app:1.0", id="sha256:" + "b" * 64, layers=(layer,))
    analysis = Analysis(image, "debian:10", 42, findings, START, END, 1)
    return ImageResult(analysis, findings, threshold)


def _every_severity() -> tuple[Finding, ...]:
    v2 = Cvss("2", 7.5, "AV:N/AC:L/Au:N/C:P/I:P/A:P")
    v3 = Cvss("3", 9.8, "CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")
    return tuple(
        Finding(
            vulnerability=f"CVE-2019-{1000 + s.value}",
            package=f"pkg{s.value}",
            installed="1.0-1",
            fixed="1.0-2" if s.value % 2 else None,
            severity=s,
            namespace="debian:10",
            link=f"https://security-tracker.debian.org/tracker/CVE-2019-{1000 + s.value}" if s.value else "",
            description="a [bracketed] description" if s.value else "",
            cvss=(v3, v2) if s.value == 3 else (),
        )
        for s in Severity
    )


def test_report_validates_and_maps_severities_like_gitlab_klar():
    data = gitlab_report(_result(_every_severity()))
    validate_gitlab_report(data)
    severities = {v["identifiers"][0]["name"]: v["severity"] for v in data["vulnerabilities"]}
    assert severities == {
        "CVE-2019-1000": "Unknown",
        "CVE-2019-1001": "Low",
        "CVE-2019-1002": "Low",
        "CVE-2019-1003": "Medium",
        "CVE-2019-1004": "High",
        "CVE-2019-1005": "Critical",
        "CVE-2019-1006": "Critical",
    }
    assert data["version"] == "15.0.7"
    assert data["scan"]["start_time"] == "2026-11-23T07:00:01"
    medium = next(v for v in data["vulnerabilities"] if v["severity"] == "Medium")
    assert medium["solution"] == "Upgrade pkg3 from 1.0-1 to 1.0-2"
    assert medium["location"] == {
        "dependency": {"package": {"name": "pkg3"}, "version": "1.0-1"},
        "operating_system": "debian:10",
        "image": "registry.example.com/app:1.0",
    }
    assert medium["cvss_vectors"][0]["vector"].startswith("CVSS:3.0/")
    assert medium["identifiers"][0]["type"] == "cve"
    unknown = next(v for v in data["vulnerabilities"] if v["severity"] == "Unknown")
    assert "links" not in unknown and "url" not in unknown["identifiers"][0]


def test_report_lists_only_findings_that_count_and_ids_are_stable():
    findings = _every_severity()
    whitelisted = tuple(
        f if f.severity != Severity.CRITICAL else Finding(**{**f.__dict__, "ignored": "whitelisted"})
        for f in findings
    )
    data = gitlab_report(_result(whitelisted, threshold=Severity.HIGH))
    validate_gitlab_report(data)
    assert sorted(v["identifiers"][0]["name"] for v in data["vulnerabilities"]) == [
        "CVE-2019-1004",
        "CVE-2019-1006",
    ]
    again = gitlab_report(_result(whitelisted, threshold=Severity.HIGH))
    assert [v["id"] for v in again["vulnerabilities"]] == [v["id"] for v in data["vulnerabilities"]]


def test_empty_report_is_valid(tmp_path):
    data = gitlab_report(_result(()))
    validate_gitlab_report(data)
    assert data["vulnerabilities"] == []


def test_unknown_os_still_validates():
    result = _result(_every_severity())
    analysis = Analysis(result.image, "", 0, result.findings, START, END)
    bare = ImageResult(
        analysis, tuple(Finding(**{**f.__dict__, "namespace": ""}) for f in result.findings), Severity.UNKNOWN
    )
    data = gitlab_report(bare)
    validate_gitlab_report(data)
    assert {v["location"]["operating_system"] for v in data["vulnerabilities"]} == {"unknown"}


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "gl-container-scanning-report.json"
    path.write_text("old")
    write_atomic(str(path), {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == [path.name]


def test_atomic_write_failure_keeps_old_report_and_no_temp(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        write_atomic(str(path), {"bad": object()})  # not serialisable
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]


def test_atomic_write_to_missing_directory_is_a_filesystem_error(tmp_path):
    with pytest.raises(FileSystemError):
        write_atomic(str(tmp_path / "no" / "such" / "r.json"), {})


def test_full_disk_gives_filesystem_error_and_keeps_old_report(tiny_fs):
    path = tiny_fs / "report.json"
    path.write_text("old")
    with pytest.raises(FileSystemError, match="No space left"):
        write_atomic(str(path), {"a": "b" * 200_000})
    assert path.read_text() == "old"
    assert os.listdir(tiny_fs) == ["report.json"]


def test_report_paths_name_one_file_per_image():
    assert report_paths("gl.json", ["alpine:3.10"]) == ["gl.json"]
    assert report_paths("out/gl.json", ["alpine:3.10", "registry:5000/app:1", "alpine:3.10"]) == [
        "out/gl-alpine-3.10.json",
        "out/gl-registry-5000-app-1.json",
        "out/gl-alpine-3.10-2.json",
    ]
