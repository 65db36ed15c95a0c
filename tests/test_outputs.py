"""`scan --output`: one real scan (real images, the real engine, the Clair simulator) writes every
format at once, each validated or read back; several images; a failed scan writes nothing."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from junitparser import JUnitXml

from conftest import DEBIAN_EXPECTED, debian_image_layers, run_cli, run_process
from imagebuild import alpine_files, write_docker_save
from reportcheck import validate_gitlab_report, validate_sarif

pytestmark = pytest.mark.docker
COUNTING = {(v, p) for v, p, *_ in DEBIAN_EXPECTED}


def _scan(clair, *extra: str) -> list[str]:
    return ["scan", "--per-layer", *extra, "--clair", clair.url, "--ip", "127.0.0.1"]


def _outputs(directory: Path) -> list[str]:
    return [
        "--output", "table",
        "--output", f"gitlab={directory / 'gl.json'}",
        "--output", f"sarif={directory / 'out.sarif'}",
        "--output", f"junit={directory / 'junit.xml'}",
        "--output", f"cyclonedx={directory / 'sbom.json'}",
        "--output", f"html={directory / 'report.html'}",
        "--output", f"json={directory / 'result.json'}",
    ]  # fmt: skip


@pytest.mark.parametrize("run", [pytest.param(run_process, id="process")])
def test_one_scan_writes_every_format(run, clair, load_image, tmp_path):
    image = load_image(debian_image_layers())
    whitelist = tmp_path / "whitelist.yml"
    whitelist.write_text("generalwhitelist:\n  CVE-2019-18224: {package: libidn2, reason: not reachable}\n")
    out = tmp_path / "out"
    out.mkdir()
    result = run(
        _scan(clair, image.tag, "-w", str(whitelist), *_outputs(out)), env={"COLUMNS": "200"}, cwd=tmp_path
    )
    assert result.code == 1, result.stderr
    # Only what --output asked for: no default GitLab report beside it.
    assert sorted(p.name for p in out.iterdir()) == [
        "gl.json", "junit.xml", "out.sarif", "report.html", "result.json", "sbom.json"
    ]  # fmt: skip
    assert list(tmp_path.glob("gl-container-scanning-report*.json")) == []
    counting = COUNTING - {("CVE-2019-18224", "libidn2")}

    assert "CVSS" in result.stdout and "CVE-2019-1543" in result.stdout  # the table
    assert "CVE-2019-18224" not in result.stdout
    gitlab = json.loads((out / "gl.json").read_text())
    validate_gitlab_report(gitlab)
    assert {
        (v["identifiers"][0]["name"], v["location"]["dependency"]["package"]["name"])
        for v in gitlab["vulnerabilities"]
    } == counting

    sarif = json.loads((out / "out.sarif").read_text())
    validate_sarif(sarif)
    (sarif_run,) = sarif["runs"]
    assert {(r["ruleId"], r["properties"]["package"]) for r in sarif_run["results"]} == counting
    assert sarif_run["properties"]["imageName"] == image.tag

    (suite,) = list(JUnitXml.fromfile(str(out / "junit.xml")))
    assert suite.name == image.tag
    assert (suite.tests, suite.failures, suite.skipped) == (7, 6, 1)

    sbom = (out / "sbom.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom) is None
    bom = json.loads(sbom)
    # Every package Clair lists, vulnerable or not (libc6 and libssl1.1 are Clair's glibc and
    # openssl: Clair names dpkg packages by their source).
    assert {c["name"] for c in bom["components"]} == {
        "openssl",
        "glibc",
        "bash",
        "e2fsprogs",
        "tar",
        "zlib",
        "libidn2",
        "gcc-8",
    }
    zlib = next(c for c in bom["components"] if c["name"] == "zlib")
    assert zlib["purl"] == "pkg:deb/debian/zlib@1:1.2.11.dfsg-1?distro=debian-10"
    assert {(v["id"]) for v in bom["vulnerabilities"]} == {v for v, *_ in DEBIAN_EXPECTED}

    page = (out / "report.html").read_text()
    assert image.tag in page and "not reachable" in page and "CVE-2019-1543" in page
    assert json.loads((out / "result.json").read_text())["images"][0]["image"] == image.tag
    assert "wrote " in result.stderr and str(out / "out.sarif") in result.stderr


def test_several_images_share_the_files_that_hold_several(clair, load_image, tmp_path):
    vulnerable = load_image(debian_image_layers(), name="vulnerable")
    clean = load_image([alpine_files("3.10.2", [("musl", "1.1.22-r3")])], name="clean")
    result = run_cli(
        _scan(
            clair, vulnerable.tag, clean.tag,
            "-o", "sarif", "-o", "junit=junit.xml", "-o", "cyclonedx=sbom.json", "-o", "html=report.html",
        ),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 1, result.stderr
    sarif = json.loads(result.stdout)  # SARIF on stdout: one document, a run per image
    validate_sarif(sarif)
    assert [r["properties"]["imageName"] for r in sarif["runs"]] == [vulnerable.tag, clean.tag]
    assert [s.name for s in JUnitXml.fromfile(str(tmp_path / "junit.xml"))] == [vulnerable.tag, clean.tag]
    page = (tmp_path / "report.html").read_text()
    assert page.count('<section class="image"') == 2
    slug = lambda tag: tag.replace("/", "-").replace(":", "-")  # noqa: E731
    sboms = sorted(p.name for p in tmp_path.glob("sbom-*.json"))
    assert sboms == sorted([f"sbom-{slug(vulnerable.tag)}.json", f"sbom-{slug(clean.tag)}.json"])

    # An image that cannot be scanned: its neighbour's own files are written, the shared ones not.
    for path in tmp_path.glob("*"):
        if path.is_file():
            path.unlink()
    partial = run_cli(
        _scan(
            clair,
            clean.tag,
            "docker:clair-scan-test/missing:1",
            "-o",
            "junit=junit.xml",
            "-o",
            "cyclonedx=sbom.json",
        ),
        cwd=tmp_path,
    )
    assert partial.code == 2
    assert "not written, since not every image was scanned" in partial.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"sbom-{slug(clean.tag)}.json"]


def test_old_options_keep_working_with_output(clair, load_image, tmp_path):
    image = load_image(debian_image_layers())
    both = run_cli(
        _scan(clair, image.tag, "--format", "json", "--report", "gl.json", "-o", "junit=j.xml"), cwd=tmp_path
    )
    assert both.code == 1, both.stderr
    assert json.loads(both.stdout)["exit_code"] == 1  # --format json's document, as before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gl.json", "j.xml"]
    clash = run_cli(_scan(clair, image.tag, "--format", "json", "-o", "sarif"), cwd=tmp_path)
    assert clash.code == 2 and "only one output may go to stdout" in clash.stderr
    none = run_cli(
        _scan(clair, image.tag, "--no-report", "-o", "html=r.html", "-o", "json"), cwd=tmp_path / ".."
    )
    assert none.code == 1
    assert json.loads(none.stdout)["images"][0]["image"] == image.tag


def test_a_failed_scan_writes_no_file_of_any_format(clair, tmp_path):
    tarball = tmp_path / "broken.tar"
    write_docker_save(tarball, debian_image_layers()[:1], repo_tags=["broken/app:1"], layout="oci")
    garbage = tmp_path / "garbage.tar"
    with tarfile.open(tarball) as src, tarfile.open(garbage, "w") as out:
        for member in src:
            data = src.extractfile(member).read() if member.isfile() else None
            if data is not None and member.size > 4096:  # the layer blob: Clair cannot read it
                data = b"\x01not a tar" * (len(data) // 10)
                member.size = len(data)
            out.addfile(member, None if data is None else __import__("io").BytesIO(data))
    work = tmp_path / "work"
    work.mkdir()
    result = run_cli(
        _scan(clair, "--archive", str(garbage), "--report", "gl.json", *_outputs(work)), cwd=work
    )
    assert result.code == 3, result.stderr
    assert "422" in result.stderr
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "pdf=x.pdf"], "unknown output format 'pdf'"),
        (["-o", "sarif="], "names no file"),
        (["-o", "sarif", "-o", "junit"], "only one output may go to stdout, not sarif and junit"),
    ],
)
def test_bad_output_is_a_usage_error_before_anything_runs(args, message, tmp_path):
    result = run_process(["scan", "x", "--clair", "http://127.0.0.1:1", *args], cwd=tmp_path)
    assert result.code == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("clair-scan: error: ")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []
