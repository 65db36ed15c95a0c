"""Image sources other than the engine and the registry: OCI layouts written by skopeo (a real
tool), archives named by source, and references checked before anything is asked."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import DEBIAN_EXPECTED, debian_image_layers, run_cli, run_process
from imagebuild import write_docker_save
from scanner import reference
from scanner.errors import UsageError
from scanner.sources import split

needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")


def _scan(clair, *args: str) -> list[str]:
    return [
        "scan",
        "--per-layer",
        *args,
        "--clair",
        clair.url,
        "--ip",
        "127.0.0.1",
        "--format",
        "json",
        "--no-report",
    ]


def _found(stdout: str) -> set[tuple]:
    doc = json.loads(stdout)["images"][0]
    return {
        (f["vulnerability"], f["package"], f["installed"], f["fixed"], f["severity"], f["layer"]["index"])
        for f in doc["findings"]
    }


def _skopeo(*args: str) -> None:
    done = subprocess.run(["skopeo", "copy", "--quiet", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "saved.tar"
    write_docker_save(path, debian_image_layers(), repo_tags=["sources/app:1"])
    return path


@needs_skopeo
@pytest.mark.parametrize("kind", ["oci-dir", "oci-archive"])
def test_oci_layouts_written_by_skopeo_scan_like_the_docker_archive(clair, saved, tmp_path, kind):
    target = tmp_path / ("layout" if kind == "oci-dir" else "layout.tar")
    skopeo_kind = "oci" if kind == "oci-dir" else "oci-archive"
    _skopeo("--dest-compress", f"docker-archive:{saved}", f"{skopeo_kind}:{target}:v1")
    result = run_cli(_scan(clair, f"{kind}:{target}"), cwd=tmp_path)
    assert result.code == 1, result.stderr
    assert _found(result.stdout) == DEBIAN_EXPECTED
    # The same layers by diff ID: a rescan from the docker archive sends nothing.
    posts = len([r for r in clair.requests if r.method == "POST"])
    again = run_cli(_scan(clair, f"docker-archive:{saved}"), cwd=tmp_path)
    assert again.code == 1, again.stderr
    assert len([r for r in clair.requests if r.method == "POST"]) == posts


@needs_skopeo
def test_oci_dir_picks_the_tag_after_the_path(clair, saved, tmp_path):
    layout = tmp_path / "layout"
    _skopeo(f"docker-archive:{saved}", f"oci:{layout}:v1")
    ok = run_cli(_scan(clair, f"oci-dir:{layout}:v1"), cwd=tmp_path)
    assert ok.code == 1, ok.stderr
    assert json.loads(ok.stdout)["images"][0]["image"] == f"{layout}:v1"
    missing = run_process(_scan(clair, f"oci-dir:{layout}:v2"), cwd=tmp_path)
    assert missing.code == 2
    assert "holds no image tagged v2" in missing.stderr
    assert "Traceback" not in missing.stderr


@needs_skopeo
def test_zstd_layers_fail_with_one_clear_line(clair, saved, tmp_path):
    layout = tmp_path / "zstd"
    _skopeo("--dest-compress-format", "zstd", f"docker-archive:{saved}", f"oci:{layout}:v1")
    result = run_process(_scan(clair, f"oci-dir:{layout}"), cwd=tmp_path)
    assert result.code == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "zstd" in errors[0], result.stderr
    assert not [r for r in clair.requests if r.method == "POST"]


def _platform_index(layout: Path, platforms: list[dict]) -> None:
    """Turn a one-image OCI layout into one whose index points at an image index listing the
    image under each platform, as multi-platform builds write them."""
    index = json.loads((layout / "index.json").read_text())
    manifest = index["manifests"][0]
    image_index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{**manifest, "annotations": {}, "platform": p} for p in platforms],
    }
    body = json.dumps(image_index).encode()
    digest = hashlib.sha256(body).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(body)
    index["manifests"] = [
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": f"sha256:{digest}",
            "size": len(body),
            "annotations": manifest.get("annotations", {}),
        }
    ]
    (layout / "index.json").write_text(json.dumps(index))


@needs_skopeo
def test_multi_platform_layout_takes_the_platform_or_lists_what_it_has(clair, saved, tmp_path):
    layout = tmp_path / "multi"
    _skopeo(f"docker-archive:{saved}", f"oci:{layout}:v1")
    _platform_index(
        layout,
        [
            {"os": "linux", "architecture": "amd64"},
            {"os": "linux", "architecture": "arm64", "variant": "v8"},
            {"os": "unknown", "architecture": "unknown"},
        ],
    )
    arm = run_cli(_scan(clair, f"oci-dir:{layout}", "--platform", "linux/arm64"), cwd=tmp_path)
    assert arm.code == 1, arm.stderr
    assert _found(arm.stdout) == DEBIAN_EXPECTED
    none = run_process(_scan(clair, f"oci-dir:{layout}", "--platform", "linux/s390x"), cwd=tmp_path)
    assert none.code == 2
    assert "has no image for linux/s390x; it has: linux/amd64, linux/arm64/v8" in none.stderr
    assert "unknown" not in none.stderr
    bad = run_process(_scan(clair, f"oci-dir:{layout}", "--platform", "linux"), cwd=tmp_path)
    assert bad.code == 2
    assert "invalid --platform 'linux'" in bad.stderr


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("", "it is empty"),
        ("registry.example.com//team/app:1", "empty path component"),
        ("https://host/app:1", "no scheme"),
        ("..", "not a valid repository name component"),
        ("docker:Team/App:1", "not a valid repository name component"),
        ("registry:app:v1!", "not a valid tag"),
        ("app:1 ", "whitespace"),
        ("app@sha256:xyz", "is not a digest"),
    ],
)
def test_bad_references_are_usage_errors_before_anything_is_asked(ref, why, tmp_path):
    # Neither the engine nor Clair answers: a reference checked first never gets that far.
    result = run_process(
        ["scan", ref, "--clair", "http://127.0.0.1:1"], env={"DOCKER_HOST": "tcp://127.0.0.1:1"}, cwd=tmp_path
    )
    assert result.code == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "invalid image reference" in lines[0] and why in lines[0], result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alpine", ("docker.io", "library/alpine", "latest", None)),
        ("team/app:1.0", ("docker.io", "team/app", "1.0", None)),
        ("localhost/app", ("localhost", "app", "latest", None)),
        ("127.0.0.1:5000/a/b:c", ("127.0.0.1:5000", "a/b", "c", None)),
        ("reg.example.com/app@sha256:" + "a" * 64, ("reg.example.com", "app", None, "sha256:" + "a" * 64)),
        ("[::1]:5000/app:2", ("[::1]:5000", "app", "2", None)),
    ],
)
def test_references_parse_as_docker_pull_reads_them(text, expected):
    ref = reference.parse(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == expected


def test_engine_references_may_be_image_ids():
    reference.check_engine_ref("sha256:" + "b" * 64)
    reference.check_engine_ref("b" * 64)
    with pytest.raises(UsageError):
        reference.check_engine_ref("sha256:" + "b" * 64 + "/x")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("registry:team/app:1", ("registry", "team/app:1")),
        ("registry:5000/app:1", (None, "registry:5000/app:1")),  # a host named registry
        ("docker:app", ("docker", "app")),
        ("oci-dir:/tmp/x:v1", ("oci-dir", "/tmp/x:v1")),
        ("docker-archive:img.tar", ("docker-archive", "img.tar")),
        ("app:1", (None, "app:1")),
    ],
)
def test_source_prefixes(spec, expected):
    assert split(spec) == expected
