"""Scanning straight from a registry: a real distribution registry on 127.0.0.1 (no auth, htpasswd,
token auth, TLS, redirected blobs), the Clair simulator downloading the blobs itself with the
headers it is given, and credentials from every place users keep them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from conftest import DEBIAN_EXPECTED, debian_image_layers, run_cli, run_process
from imagebuild import alpine_files
from registry import docker_config, layer_bytes
from reportcheck import validate_gitlab_report

pytestmark = pytest.mark.docker
REPO = "team/app"


def _args(clair, *extra: str) -> list[str]:
    return ["scan", *extra, "--clair", clair.url, "--ip", "127.0.0.1"]


def _found(stdout: str) -> set[tuple]:
    doc = json.loads(stdout)["images"][0]
    return {
        (f["vulnerability"], f["package"], f["installed"], f["fixed"], f["severity"], f["layer"]["index"])
        for f in doc["findings"]
    }


def _posts(clair) -> list:
    return [r for r in clair.requests if r.method == "POST" and r.path == "/v1/layers"]


def _no_secret(secret: str, *texts: str) -> None:
    assert secret, "a test secret must not be empty"
    for text in texts:
        assert secret not in text


def _files_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def _first_layer(reg) -> str:
    """The digest of the lowest layer blob of REPO:1."""
    accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    with reg._session(REPO) as session:
        manifest = session.get(reg._api(REPO, "manifests/1"), headers=accept).json()
    return str(manifest["layers"][0]["digest"])


def _push_debian(load_image, reg) -> str:
    image = load_image(debian_image_layers())
    reg.push_engine_image(image.tag, f"{REPO}:1")
    reg.clear_log()
    return image.tag


def test_registry_scan_with_docker_login_password_equals_the_engine_scan(
    clair, load_image, registry_basic, tmp_path
):
    """Issue 10's finish line: the password comes from `docker login`'s config, the findings are
    the engine scan's, no `docker save` runs, and the layers keep their chain-ID names."""
    reg = registry_basic
    local = _push_debian(load_image, reg)
    config_dir, _ = docker_config(tmp_path, reg, "auths")
    log = tmp_path / "scan.log"
    # No engine to ask: the scan cannot run a `docker save`.
    result = run_process(
        [*_args(clair, f"registry:{reg.host}/{REPO}:1", "--format", "json", "--log", str(log))],
        env={"DOCKER_CONFIG": config_dir, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"},
        cwd=tmp_path,
    )
    assert result.code == 1, result.stderr
    assert _found(result.stdout) == DEBIAN_EXPECTED
    # Clair fetched every blob itself, from the registry, authenticated.
    blob_gets = [r for r in reg.requests_log() if r.method == "GET" and "/blobs/sha256:" in r.path]
    go_gets = [r for r in blob_gets if r.user_agent.startswith("Go-http-client")]
    assert len(go_gets) == 3 and all(r.status == 200 and r.auth_scheme == "Basic" for r in go_gets)
    assert {d.status for d in clair.downloads} == {200}
    report = json.loads((tmp_path / "gl-container-scanning-report.json").read_text())
    validate_gitlab_report(report)
    _no_secret(reg.password, result.stdout, result.stderr, log.read_text(), json.dumps(report))
    # The engine scan of the same image finds Clair holding every layer: nothing is sent.
    posts = len(_posts(clair))
    engine = run_cli(
        _args(clair, f"docker:{local}", "--per-layer", "--format", "json", "--no-report"), cwd=tmp_path
    )
    assert engine.code == 1, engine.stderr
    assert _found(engine.stdout) == DEBIAN_EXPECTED
    assert len(_posts(clair)) == posts


def test_registry_scan_works_with_no_docker_engine_at_all(clair, load_image, registry_plain, tmp_path):
    reg = registry_plain
    _push_debian(load_image, reg)
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "REGISTRY_INSECURE": "true"}
    bare = run_process(_args(clair, f"{reg.host}/{REPO}:1", "--format", "json"), env=env, cwd=tmp_path)
    assert bare.code == 1, bare.stderr
    assert _found(bare.stdout) == DEBIAN_EXPECTED
    assert "scanning it from its registry" in bare.stderr


def test_bare_reference_says_it_took_the_registry(clair, load_image, registry_plain, tmp_path):
    reg = registry_plain
    image = load_image(debian_image_layers())
    reg.push_engine_image(image.tag, f"{REPO}:1")
    # In the engine under the registry's name (push_engine_image tagged it): the engine's.
    held = run_cli(_args(clair, f"{reg.host}/{REPO}:1", "--no-report"), cwd=tmp_path)
    assert held.code == 1, held.stderr
    assert "from its registry" not in held.stderr
    # A tag the engine lacks: the registry's, and the scan says so.
    reg.put_image(REPO, "2", [layer_bytes(layer) for layer in debian_image_layers()])
    other = run_cli(_args(clair, f"{reg.host}/{REPO}:2", "--no-report"), cwd=tmp_path)
    assert other.code == 1, other.stderr
    assert f"{reg.host}/{REPO}:2: not in the Docker engine; scanning it from its registry" in other.stderr


@pytest.mark.parametrize("mode", ["credsStore", "credHelpers"])
def test_credentials_from_a_credential_helper(clair, registry_basic, tmp_path, mode):
    reg = registry_basic
    reg.put_image(REPO, "1", [layer_bytes(layer) for layer in debian_image_layers()])
    config_dir, bin_dir = docker_config(tmp_path, reg, mode)
    env = {"DOCKER_CONFIG": config_dir, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = run_process(
        _args(clair, f"registry:{reg.host}/{REPO}:1", "--format", "json"), env=env, cwd=tmp_path
    )
    assert result.code == 1, result.stderr
    assert _found(result.stdout) == DEBIAN_EXPECTED
    calls = (Path(bin_dir) / "cstest-calls.log").read_text()
    assert calls.startswith("get ") and reg.host in calls
    _no_secret(reg.password, result.stdout, result.stderr)


@pytest.mark.parametrize("how", ["klar", "gitlab"])
def test_credentials_from_klar_and_gitlab_variables(clair, registry_basic, tmp_path, how):
    reg = registry_basic
    reg.put_image(REPO, "1", [layer_bytes(layer) for layer in debian_image_layers()])
    env = (
        {"DOCKER_USER": reg.username, "DOCKER_PASSWORD": reg.password}
        if how == "klar"
        else {"CI_REGISTRY": reg.host, "CI_REGISTRY_USER": reg.username, "CI_REGISTRY_PASSWORD": reg.password}
    )
    result = run_process(
        _args(clair, f"registry:{reg.host}/{REPO}:1", "--format", "json"), env=env, cwd=tmp_path
    )
    assert result.code == 1, result.stderr
    assert _found(result.stdout) == DEBIAN_EXPECTED


def test_token_auth_renews_tokens_that_expire_mid_scan(clair, registry_token, tmp_path):
    reg = registry_token
    assert reg.token_server is not None
    reg.put_image(REPO, "1", [layer_bytes(layer) for layer in debian_image_layers()])
    reg.clear_log()
    reg.token_server.lifetime = 4
    # Each layer POST waits 1.5 s before Clair downloads: a token kept from the start would be
    # dead by the third layer.
    clair.delay(1.5, method="POST", path="/v1/layers")
    log = tmp_path / "scan.log"
    env = {"DOCKER_USER": reg.username, "DOCKER_PASSWORD": reg.password}
    result = run_process(
        _args(clair, f"registry:{reg.host}/{REPO}:1", "--format", "json", "--log", str(log)),
        env=env,
        cwd=tmp_path,
    )
    assert result.code == 1, result.stderr
    assert _found(result.stdout) == DEBIAN_EXPECTED
    issued = reg.token_server.issued
    assert len(issued) >= 2
    assert all(scope == f"repository:{REPO}:pull" for token in issued for scope in token.scopes)
    assert {d.status for d in clair.downloads} == {200}
    for token in issued:
        _no_secret(token.token, result.stdout, result.stderr, log.read_text())


def test_an_expired_token_is_rejected_credentials(clair, registry_token, tmp_path):
    reg = registry_token
    assert reg.token_server is not None
    reg.put_image(REPO, "1", [layer_bytes(layer) for layer in debian_image_layers()])
    reg.token_server.lifetime = 1
    stale = reg.token_server.mint(reg.username or "", "clair-scan-test-registry", [f"repository:{REPO}:pull"])
    time.sleep(1.5)
    result = run_process(
        _args(clair, f"registry:{reg.host}/{REPO}:1"), env={"DOCKER_TOKEN": stale.token}, cwd=tmp_path
    )
    assert result.code == 2, result.stderr
    assert "rejected the credentials from DOCKER_TOKEN" in result.stderr
    _no_secret(stale.token, result.stdout, result.stderr)
    assert not _posts(clair)
    assert not (tmp_path / "gl-container-scanning-report.json").exists()


def test_tls_registry_with_its_ca_trusted(clair, registry_tls, tmp_path):
    reg = registry_tls
    assert reg.ca_file is not None
    reg.put_image(REPO, "1", [layer_bytes(layer) for layer in debian_image_layers()])
    env = {"DOCKER_USER": reg.username, "DOCKER_PASSWORD": reg.password}
    untrusted = run_process(
        _args(clair, f"registry:{reg.host}/{REPO}:1", "--relay-layers"), env=env, cwd=tmp_path
    )
    assert untrusted.code == 3, untrusted.stderr
    assert "TLS handshake failed" in untrusted.stderr
    trusted = run_process(
        _args(clair, f"registry:{reg.host}/{REPO}:1", "--relay-layers", "--format", "json"),
        env={**env, "SSL_CERT_FILE": reg.ca_file},
        cwd=tmp_path,
    )
    assert trusted.code == 1, trusted.stderr
    assert _found(trusted.stdout) == DEBIAN_EXPECTED


def test_relay_streams_blobs_through_the_layer_server(clair, registry_basic, tmp_path, private_tmp):
    reg = registry_basic
    reg.put_image(REPO, "1", [layer_bytes(layer) for layer in debian_image_layers()])
    env = {"DOCKER_USER": reg.username, "DOCKER_PASSWORD": reg.password}
    result = run_cli(
        _args(clair, f"registry:{reg.host}/{REPO}:1", "--relay-layers", "--format", "json"), env=env
    )
    assert result.code == 1, result.stderr
    assert _found(result.stdout) == DEBIAN_EXPECTED
    # Clair downloaded from us, with no registry credentials; we fetched the blobs.
    assert all(d.url.startswith("http://127.0.0.1:") and "/v2/" not in d.url for d in clair.downloads)
    assert all("Authorization" not in d.request_headers for d in clair.downloads)
    blob_gets = [r for r in reg.requests_log() if "/blobs/sha256:" in r.path and r.method == "GET"]
    assert blob_gets and not [r for r in blob_gets if r.user_agent.startswith("Go-http-client")]
    assert not list(private_tmp.iterdir())


def test_blob_redirects_to_object_storage_work(clair, registry_redirect, tmp_path):
    reg = registry_redirect
    assert reg.blob_host is not None
    reg.put_image(REPO, "1", [layer_bytes(layer) for layer in debian_image_layers()])
    env = {"DOCKER_USER": reg.username, "DOCKER_PASSWORD": reg.password}
    result = run_process(
        _args(clair, f"registry:{reg.host}/{REPO}:1", "--format", "json"), env=env, cwd=tmp_path
    )
    assert result.code == 1, result.stderr
    assert _found(result.stdout) == DEBIAN_EXPECTED
    at_storage = [r for r in reg.requests_log() if r.host == reg.blob_host]
    assert len(at_storage) >= 3 and all(r.status == 200 for r in at_storage)
    # Go's client leaves the Authorization header behind when a redirect leaves the host.
    assert not [r for r in at_storage if r.authorization]


def test_multi_platform_index_scans_the_platform_asked_for(clair, registry_plain, tmp_path):
    reg = registry_plain
    amd = reg.put_image(REPO, "amd64", [layer_bytes(layer) for layer in debian_image_layers()], oci=True)
    arm = reg.put_image(
        REPO, "arm64", [layer_bytes(alpine_files("3.10.2", [("musl", "1.1.22-r3")]))], oci=True
    )
    reg.put_index(
        REPO,
        "multi",
        [
            (amd, {"os": "linux", "architecture": "amd64"}),
            (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
        ],
    )
    env = {"REGISTRY_INSECURE": "true"}
    default = run_process(
        _args(clair, f"registry:{reg.host}/{REPO}:multi", "--format", "json"), env=env, cwd=tmp_path
    )
    assert default.code == 1, default.stderr
    assert _found(default.stdout) == DEBIAN_EXPECTED
    arm_scan = run_process(
        _args(clair, f"registry:{reg.host}/{REPO}:multi", "--platform", "linux/arm64", "--format", "json"),
        env=env,
        cwd=tmp_path,
    )
    assert arm_scan.code in (0, 1), arm_scan.stderr
    arm_doc = json.loads(arm_scan.stdout)["images"][0]
    assert arm_doc["namespace"].startswith("alpine"), arm_doc
    missing = run_process(
        _args(clair, f"registry:{reg.host}/{REPO}:multi", "--platform", "linux/ppc64le"), env=env
    )
    assert missing.code == 2
    assert "it has: linux/amd64, linux/arm64/v8" in missing.stderr


@pytest.mark.parametrize(
    ("ref_suffix", "env_kind", "code", "words"),
    [
        ("team/nothing:1", "good", 2, "image not found in its registry"),
        (f"{REPO}:nope", "good", 2, "image not found in its registry"),
        (f"{REPO}:1", "wrong", 2, "rejected the credentials from DOCKER_USER/DOCKER_PASSWORD"),
        (f"{REPO}:1", "none", 2, "requires credentials"),
    ],
)
def test_registry_usage_errors(clair, registry_basic, tmp_path, ref_suffix, env_kind, code, words):
    reg = registry_basic
    reg.put_image(REPO, "1", [layer_bytes(layer) for layer in debian_image_layers()])
    env = {
        "good": {"DOCKER_USER": reg.username, "DOCKER_PASSWORD": reg.password},
        "wrong": {"DOCKER_USER": reg.username, "DOCKER_PASSWORD": "not-the-password-123"},
        "none": {"DOCKER_CONFIG": str(tmp_path / "empty-config")},
    }[env_kind]
    result = run_process(_args(clair, f"registry:{reg.host}/{ref_suffix}"), env=env, cwd=tmp_path)
    assert result.code == code, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    _no_secret("not-the-password-123", result.stderr)
    _no_secret(reg.password, result.stderr)
    assert not (tmp_path / "gl-container-scanning-report.json").exists()


def test_unreachable_registry_and_5xx_are_failures_after_retries(clair, registry_plain, tmp_path):
    reg = registry_plain
    reg.put_image(REPO, "1", [layer_bytes(layer) for layer in debian_image_layers()])
    env = {"REGISTRY_INSECURE": "true"}
    reg.override(f"/v2/{REPO}/manifests/1", b'{"errors":[{"code":"UNAVAILABLE"}]}', status=503)
    broken = run_process(_args(clair, f"registry:{reg.host}/{REPO}:1"), env=env, cwd=tmp_path)
    assert broken.code == 3, broken.stderr
    assert "answered 503" in broken.stderr
    tries = [r for r in reg.requests_log() if r.path.startswith(f"/v2/{REPO}/manifests/1")]
    assert len(tries) == 4  # the first try and three retries
    gone = run_process(_args(clair, "registry:127.0.0.1:1/team/app:1"), env=env, cwd=tmp_path)
    assert gone.code == 3
    assert "cannot reach the registry 127.0.0.1:1" in gone.stderr
    assert not (tmp_path / "gl-container-scanning-report.json").exists()


def test_manifest_that_does_not_match_its_digest(clair, registry_plain, tmp_path):
    reg = registry_plain
    digest = reg.put_image(REPO, "1", [layer_bytes(layer) for layer in debian_image_layers()])
    reg.override(f"/v2/{REPO}/manifests/{digest}", b'{"schemaVersion": 2, "layers": []}')
    result = run_process(_args(clair, f"registry:{reg.host}/{REPO}@{digest}"), env={"REGISTRY_INSECURE": "1"})
    assert result.code == 3, result.stderr
    assert "does not match its digest" in result.stderr
    assert not _posts(clair)


def test_schema1_and_zstd_fail_with_one_line(clair, registry_plain, tmp_path):
    reg = registry_plain
    layers = [layer_bytes(layer) for layer in debian_image_layers()]
    reg.put_image(REPO, "zstd", layers, oci=True, compress="zstd")
    schema1 = json.dumps(
        {"schemaVersion": 1, "name": REPO, "tag": "old", "fsLayers": [], "history": []}
    ).encode()
    reg.override(
        f"/v2/{REPO}/manifests/old",
        schema1,
        content_type="application/vnd.docker.distribution.manifest.v1+prettyjws",
    )
    env = {"REGISTRY_INSECURE": "1"}
    for tag, words in (("zstd", "zstd-compressed"), ("old", "schema 1 manifest")):
        result = run_process(_args(clair, f"registry:{reg.host}/{REPO}:{tag}"), env=env, cwd=tmp_path)
        assert result.code == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and words in errors[0], result.stderr
    assert not _posts(clair)


def test_blob_clair_cannot_download_names_clairs_message_and_the_relay(clair, registry_plain, tmp_path):
    reg = registry_plain
    reg.put_image(REPO, "1", [layer_bytes(layer) for layer in debian_image_layers()])
    first = _first_layer(reg)
    reg.override(f"/v2/{REPO}/blobs/{first}", b"gone", status=404)
    result = run_process(
        _args(clair, f"registry:{reg.host}/{REPO}:1"), env={"REGISTRY_INSECURE": "1"}, cwd=tmp_path
    )
    assert result.code == 3, result.stderr
    assert "could not find layer" in result.stderr and "--relay-layers" in result.stderr


def test_truncated_blob_in_relay_mode_fails_and_leaves_nothing(clair, registry_plain, tmp_path, private_tmp):
    reg = registry_plain
    reg.put_image(REPO, "1", [layer_bytes(layer) for layer in debian_image_layers()])
    first = _first_layer(reg)
    reg.override(f"/v2/{REPO}/blobs/{first}", b"\x1f\x8b\x08\x00truncated")
    result = run_cli(
        _args(clair, f"registry:{reg.host}/{REPO}:1", "--relay-layers"), env={"REGISTRY_INSECURE": "1"}
    )
    assert result.code == 3, result.stderr
    assert not [d for d in clair.downloads if d.status == 200 and d.error is None]
    assert not list(private_tmp.iterdir())
