"""The registry test infrastructure (tests/registry.py) works: real distribution registries in
each configuration, checked with plain requests, docker push/pull, skopeo and the Docker SDK."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker.auth
import pytest
import requests
import zstandard

from clairsim.fetch import DownloadRecord, open_layer
from conftest import LoadedImage
from imagebuild import Layer
from registry import (
    CERTS_D,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1_SIGNED,
    LAYER_TYPES,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    OCI_MANIFEST,
    SERVICE,
    Registry,
    docker_config,
    layer_bytes,
    sha256_digest,
    start_registry,
)

pytestmark = pytest.mark.skipif(not shutil.which("docker-registry"), reason="docker-registry is missing")


def client(registry: Registry, auth: bool = True) -> requests.Session:
    """A session as a scanner would open one: the registry's CA, its credentials if any."""
    session = requests.Session()
    session.trust_env = False  # or REQUESTS_CA_BUNDLE overrides session.verify
    session.verify = registry.ca_file or True
    if auth and registry.auth == "basic":
        session.auth = (registry.username or "", registry.password or "")
    return session


def bearer(registry: Registry, scope: str) -> str:
    assert registry.token_server is not None
    answer = requests.get(
        registry.token_server.realm,
        params={"service": SERVICE, "scope": scope},
        auth=(registry.username or "", registry.password or ""),
        timeout=10,
    )
    answer.raise_for_status()
    return str(answer.json()["token"])


def get_manifest(session: requests.Session, registry: Registry, repo: str, ref: str) -> requests.Response:
    answer = session.get(
        f"{registry.url}/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}, timeout=10
    )
    answer.raise_for_status()
    return answer


def small_layers() -> list[bytes]:
    return [
        layer_bytes(Layer(files={"etc/os-release": b'ID=debian\nVERSION_ID="10"\n'})),
        layer_bytes(Layer(files={f"srv/{uuid.uuid4().hex}": os.urandom(2048)})),
    ]


def tiny_engine_image(load_image: Callable[..., LoadedImage]) -> LoadedImage:
    return load_image([Layer(files={"etc/hello": uuid.uuid4().bytes})], name="registry-push")


def skopeo_copy(
    registry: Registry, ref: str, dest: Path, creds: bool = True
) -> subprocess.CompletedProcess[str]:
    """skopeo copies the image to an OCI layout, checking every digest on the way."""
    args = ["skopeo", "copy", "--retry-times", "0"]
    if registry.ca_file:
        certs = dest.parent / f"certs-{uuid.uuid4().hex[:6]}"
        certs.mkdir()
        shutil.copyfile(registry.ca_file, certs / "ca.crt")
        args.append(f"--src-cert-dir={certs}")
    else:
        args.append("--src-tls-verify=false")
    if creds and registry.username:
        args.append(f"--src-creds={registry.username}:{registry.password}")
    args += [f"docker://{registry.host}/{ref}", f"oci:{dest}:copy"]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


needs_skopeo = pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo is missing")


# ---------------------------------------------------------------------------------------------
# No auth


@pytest.mark.docker
def test_plain_registry_takes_a_docker_push(
    registry_plain: Registry, load_image: Callable[..., LoadedImage]
) -> None:
    image = tiny_engine_image(load_image)
    digest = registry_plain.push_engine_image(image.tag, "team/app:v1")

    session = client(registry_plain)
    manifest = get_manifest(session, registry_plain, "team/app", "v1")
    assert sha256_digest(manifest.content) == digest == manifest.headers["Docker-Content-Digest"]
    assert manifest.json()["mediaType"] == DOCKER_MANIFEST
    config = session.get(
        f"{registry_plain.url}/v2/team/app/blobs/{manifest.json()['config']['digest']}", timeout=10
    ).json()
    assert config["rootfs"]["diff_ids"] == list(image.saved.diff_ids)

    log = registry_plain.requests_log()
    pushed = [r for r in log if r.method == "PUT" and r.path == "/v2/team/app/manifests/v1"]
    assert [r.status for r in pushed] == [201] and pushed[0].user_agent.startswith("docker/")
    fetched = [r for r in log if r.method == "GET" and r.path == "/v2/team/app/manifests/v1"]
    assert [(r.status, r.authorization) for r in fetched] == [(200, False)]


@needs_skopeo
@pytest.mark.parametrize("oci", [False, True], ids=["docker", "oci"])
@pytest.mark.parametrize("compress", ["gzip", "none", "zstd"])
def test_put_image_stores_a_proper_image(
    registry_plain: Registry, tmp_path: Path, oci: bool, compress: Any
) -> None:
    layers = small_layers()
    digest = registry_plain.put_image("lib/img", "1.0", layers, oci=oci, compress=compress)
    assert registry_plain.requests_log() == []  # the fixture's own uploads are not recorded

    session = client(registry_plain)
    answer = get_manifest(session, registry_plain, "lib/img", "1.0")
    manifest = answer.json()
    assert sha256_digest(answer.content) == digest
    assert (
        answer.headers["Content-Type"] == manifest["mediaType"] == (OCI_MANIFEST if oci else DOCKER_MANIFEST)
    )
    config = session.get(f"{registry_plain.url}/v2/lib/img/blobs/{manifest['config']['digest']}", timeout=10)
    assert config.json()["rootfs"]["diff_ids"] == [sha256_digest(layer) for layer in layers]
    assert len(config.json()["history"]) == len(layers)
    decompress = {
        "gzip": gzip.decompress,
        "none": lambda data: data,
        "zstd": lambda data: zstandard.ZstdDecompressor().stream_reader(data).read(),
    }[compress]
    for descriptor, layer in zip(manifest["layers"], layers):
        assert descriptor["mediaType"] == LAYER_TYPES[(oci, compress)]
        blob = session.get(
            f"{registry_plain.url}/v2/lib/img/blobs/{descriptor['digest']}", timeout=10
        ).content
        assert sha256_digest(blob) == descriptor["digest"] and len(blob) == descriptor["size"]
        assert decompress(blob) == layer

    copied = skopeo_copy(registry_plain, "lib/img:1.0", tmp_path / "oci")
    if (oci, compress) == (False, "zstd"):
        # containerd's Docker zstd media type, which containers/image does not take.
        assert "unsupported docker v2s2 media type" in copied.stderr
    else:
        assert copied.returncode == 0, copied.stderr


@pytest.mark.parametrize("oci", [True, False], ids=["oci-index", "docker-list"])
def test_put_index_lists_platform_manifests(registry_plain: Registry, oci: bool) -> None:
    amd64 = registry_plain.put_image("multi", "amd64", small_layers(), oci=oci)
    arm64 = registry_plain.put_image("multi", "arm64", small_layers(), oci=oci)
    arm_platform = {"os": "linux", "architecture": "arm64", "variant": "v8"}
    digest = registry_plain.put_index(
        "multi", "latest", [(amd64, {"os": "linux", "architecture": "amd64"}), (arm64, arm_platform)], oci=oci
    )

    session = client(registry_plain)
    answer = get_manifest(session, registry_plain, "multi", "latest")
    assert sha256_digest(answer.content) == digest
    index = answer.json()
    assert index["mediaType"] == answer.headers["Content-Type"] == (OCI_INDEX if oci else DOCKER_LIST)
    assert [(m["digest"], m["platform"]) for m in index["manifests"]] == [
        (amd64, {"os": "linux", "architecture": "amd64"}),
        (arm64, arm_platform),
    ]
    for entry in index["manifests"]:
        child = get_manifest(session, registry_plain, "multi", entry["digest"])
        assert len(child.content) == entry["size"] and child.headers["Content-Type"] == entry["mediaType"]


def test_raw_manifests_and_overrides(registry_plain: Registry) -> None:
    good = registry_plain.put_image("raw", "base", small_layers())
    session = client(registry_plain)
    body = get_manifest(session, registry_plain, "raw", good).content
    retagged = registry_plain.put_raw_manifest("raw", "again", body, DOCKER_MANIFEST)
    assert retagged == good

    # A registry checks what it stores: a body under someone else's digest is refused ...
    altered = body.replace(b"   ", b"  ")
    with pytest.raises(RuntimeError, match=r"HTTP 400: .*DIGEST_INVALID"):
        registry_plain.put_raw_manifest("raw", good.replace(good[-4:], "0000"), altered, DOCKER_MANIFEST)
    # ... so a registry serving a wrong body is made up at the front.
    registry_plain.override(f"/v2/raw/manifests/{good}", altered, content_type=DOCKER_MANIFEST)
    served = session.get(f"{registry_plain.url}/v2/raw/manifests/{good}", timeout=10)
    assert served.content == altered and sha256_digest(served.content) != good
    assert registry_plain.requests_log()[-1].path == f"/v2/raw/manifests/{good}"

    # Schema 1 must come signed (libtrust JWS) and even then distribution 2.8 takes it no more:
    # a registry still serving one is made up at the front too.
    schema1 = json.dumps({"schemaVersion": 1, "name": "raw", "tag": "old", "fsLayers": []}).encode()
    with pytest.raises(RuntimeError, match="MANIFEST_INVALID"):
        registry_plain.put_raw_manifest("raw", "old", schema1, DOCKER_SCHEMA1_SIGNED)
    registry_plain.override("/v2/raw/manifests/old", schema1, content_type=DOCKER_SCHEMA1_SIGNED)
    old = session.get(f"{registry_plain.url}/v2/raw/manifests/old", timeout=10)
    assert old.headers["Content-Type"] == DOCKER_SCHEMA1_SIGNED and old.content == schema1


# ---------------------------------------------------------------------------------------------
# Basic auth


@pytest.mark.docker
def test_basic_auth_registry(registry_basic: Registry, load_image: Callable[..., LoadedImage]) -> None:
    assert registry_basic.auth == "basic" and registry_basic.username and registry_basic.password
    anonymous = client(registry_basic, auth=False).get(f"{registry_basic.url}/v2/", timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic realm=")
    wrong = requests.get(f"{registry_basic.url}/v2/", auth=(registry_basic.username, "nope"), timeout=10)
    assert wrong.status_code == 401
    assert client(registry_basic).get(f"{registry_basic.url}/v2/", timeout=10).status_code == 200

    digest = registry_basic.push_engine_image(tiny_engine_image(load_image).tag, "private/app:1")
    manifest = get_manifest(client(registry_basic), registry_basic, "private/app", "1")
    assert sha256_digest(manifest.content) == digest

    log = registry_basic.requests_log()
    probes = [(r.status, r.authorization, r.auth_scheme, r.user_agent[:7]) for r in log if r.path == "/v2/"]
    assert probes[:3] == [
        (401, False, None, "python-"),
        (401, True, "Basic", "python-"),
        (200, True, "Basic", "python-"),
    ]
    # docker login and push: the engine asks anonymously first, then with the credentials.
    assert probes[3:5] == [(401, False, None, "docker/"), (200, True, "Basic", "docker/")]
    assert all(r.auth_scheme == "Basic" for r in log if r.method == "PUT")


# ---------------------------------------------------------------------------------------------
# Token auth


def test_token_auth_protocol(registry_token: Registry) -> None:
    token_server = registry_token.token_server
    assert token_server is not None
    digest = registry_token.put_image("app", "v1", small_layers())
    assert token_server.issued == []  # the fixture's own uploads mint tokens unrecorded

    challenge = requests.get(f"{registry_token.url}/v2/app/manifests/v1", timeout=10)
    assert challenge.status_code == 401
    assert challenge.headers["WWW-Authenticate"] == (
        f'Bearer realm="{token_server.realm}",service="{SERVICE}",scope="repository:app:pull"'
    )
    no_creds = requests.get(token_server.realm, params={"service": SERVICE}, timeout=10)
    wrong = requests.get(token_server.realm, params={"service": SERVICE}, auth=("x", "y"), timeout=10)
    assert (no_creds.status_code, wrong.status_code) == (401, 401)

    answer = requests.get(
        token_server.realm,
        params={"service": SERVICE, "scope": "repository:app:pull"},
        auth=(registry_token.username or "", registry_token.password or ""),
        timeout=10,
    ).json()
    assert set(answer) == {"token", "access_token", "expires_in", "issued_at"}
    assert answer["token"] == answer["access_token"] and answer["expires_in"] == token_server.lifetime
    headers = {"Authorization": f"Bearer {answer['token']}", "Accept": MANIFEST_ACCEPT}
    manifest = requests.get(f"{registry_token.url}/v2/app/manifests/v1", headers=headers, timeout=10)
    assert manifest.status_code == 200 and sha256_digest(manifest.content) == digest
    # A pull token does not push, nor read another repository.
    upload = requests.post(f"{registry_token.url}/v2/app/blobs/uploads/", headers=headers, timeout=10)
    assert (
        upload.status_code == 401 and 'scope="repository:app:pull,push"' in upload.headers["WWW-Authenticate"]
    )
    other = requests.get(f"{registry_token.url}/v2/other/manifests/v1", headers=headers, timeout=10)
    assert other.status_code == 401

    [issued] = token_server.issued
    assert issued.scopes == ("repository:app:pull",) and issued.account == registry_token.username
    assert issued.access == ({"type": "repository", "name": "app", "actions": ["pull"]},)
    log = registry_token.requests_log()
    assert [(r.auth_scheme, r.status) for r in log if r.method == "GET"] == [
        (None, 401),
        ("Bearer", 200),
        ("Bearer", 401),
    ]


def test_token_server_can_serve_anonymous_pulls(registry_token: Registry) -> None:
    token_server = registry_token.token_server
    assert token_server is not None
    digest = registry_token.put_image("public", "1", small_layers())
    scope = {"service": SERVICE, "scope": "repository:public:pull,push"}
    assert requests.get(token_server.realm, params=scope, timeout=10).status_code == 401

    token_server.anonymous_actions = {"pull"}
    answer = requests.get(token_server.realm, params=scope, timeout=10)
    assert answer.status_code == 200
    assert token_server.issued[-1].access == ({"type": "repository", "name": "public", "actions": ["pull"]},)
    headers = {"Authorization": f"Bearer {answer.json()['token']}", "Accept": MANIFEST_ACCEPT}
    manifest = requests.get(f"{registry_token.url}/v2/public/manifests/1", headers=headers, timeout=10)
    assert sha256_digest(manifest.content) == digest
    upload = requests.post(f"{registry_token.url}/v2/public/blobs/uploads/", headers=headers, timeout=10)
    assert upload.status_code == 401
    # Wrong credentials are still refused, not taken for anonymous.
    wrong = requests.get(token_server.realm, params=scope, auth=("x", "y"), timeout=10)
    assert wrong.status_code == 401


def test_token_lifetime_makes_tokens_expire(registry_token: Registry) -> None:
    assert registry_token.token_server is not None
    registry_token.put_image("app", "v1", small_layers())
    registry_token.token_server.lifetime = 2
    token = bearer(registry_token, "repository:app:pull")
    assert registry_token.token_server.issued[-1].expires_in == 2
    url = f"{registry_token.url}/v2/app/manifests/v1"
    headers = {"Authorization": f"Bearer {token}", "Accept": MANIFEST_ACCEPT}
    statuses = [requests.get(url, headers=headers, timeout=10).status_code]
    deadline = time.monotonic() + 30
    while statuses[-1] == 200 and time.monotonic() < deadline:
        time.sleep(0.5)
        statuses.append(requests.get(url, headers=headers, timeout=10).status_code)
    assert statuses[0] == 200 and statuses[-1] == 401
    # A fresh token works again.
    fresh = {"Authorization": f"Bearer {bearer(registry_token, 'repository:app:pull')}"}
    assert requests.get(url, headers={**headers, **fresh}, timeout=10).status_code == 200


@pytest.mark.docker
def test_token_registry_takes_a_docker_push(
    registry_token: Registry, load_image: Callable[..., LoadedImage]
) -> None:
    assert registry_token.token_server is not None
    digest = registry_token.push_engine_image(tiny_engine_image(load_image).tag, "team/app:v2")
    assert any("push" in scope for t in registry_token.token_server.issued for scope in t.scopes)
    token = bearer(registry_token, "repository:team/app:pull")
    manifest = requests.get(
        f"{registry_token.url}/v2/team/app/manifests/v2",
        headers={"Authorization": f"Bearer {token}", "Accept": MANIFEST_ACCEPT},
        timeout=10,
    )
    assert sha256_digest(manifest.content) == digest


# ---------------------------------------------------------------------------------------------
# TLS


@pytest.mark.docker
def test_tls_registry_with_basic_auth(
    registry_tls: Registry, load_image: Callable[..., LoadedImage], tmp_path: Path
) -> None:
    assert registry_tls.scheme == "https" and registry_tls.url.startswith("https://127.0.0.1:")
    assert registry_tls.ca_file and Path(registry_tls.ca_file).read_text().startswith(
        "-----BEGIN CERTIFICATE"
    )
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{registry_tls.url}/v2/", verify=True, timeout=10)
    assert client(registry_tls).get(f"{registry_tls.url}/v2/", timeout=10).status_code == 200

    digest = registry_tls.push_engine_image(tiny_engine_image(load_image).tag, "secure/app:1")
    assert (CERTS_D / registry_tls.host / "ca.crt").read_text() == Path(registry_tls.ca_file).read_text()
    assert (
        sha256_digest(get_manifest(client(registry_tls), registry_tls, "secure/app", "1").content) == digest
    )
    if shutil.which("skopeo"):
        copied = skopeo_copy(registry_tls, "secure/app:1", tmp_path / "oci")
        assert copied.returncode == 0, copied.stderr


def test_tls_registry_without_auth(make_registry: Callable[..., Registry]) -> None:
    registry = make_registry(tls=True)
    assert registry.username is None and registry.auth == "none" and registry.ca_file
    digest = registry.put_image("open", "1", small_layers(), oci=True)
    assert sha256_digest(get_manifest(client(registry), registry, "open", "1").content) == digest
    assert registry.requests_log()[-1].authorization is False


# ---------------------------------------------------------------------------------------------
# Redirected blobs


def test_redirect_sends_blobs_to_another_host(registry_redirect: Registry) -> None:
    assert registry_redirect.blob_host and registry_redirect.blob_host.startswith("127.0.0.2:")
    registry_redirect.put_image("app", "v1", small_layers())
    session = client(registry_redirect)
    layer = get_manifest(session, registry_redirect, "app", "v1").json()["layers"][0]
    url = f"{registry_redirect.url}/v2/app/blobs/{layer['digest']}"

    first = session.get(url, allow_redirects=False, timeout=10)
    assert first.status_code == 307
    assert first.headers["Location"].startswith(f"http://{registry_redirect.blob_host}/")
    followed = session.get(url, timeout=10)
    assert sha256_digest(followed.content) == layer["digest"]

    # Clair's Go client (as clairsim fetches) keeps Authorization on the registry, drops it on the
    # other host.
    record = DownloadRecord(layer=layer["digest"], url=url)
    with open_layer(url, {"Authorization": _basic(registry_redirect)}, record) as stream:
        assert sha256_digest(stream.read()) == layer["digest"]
    log = [r for r in registry_redirect.requests_log() if "blobs" in r.path]
    assert [(r.host, r.status, r.authorization) for r in log] == [
        (registry_redirect.host, 307, True),
        (registry_redirect.host, 307, True),
        (registry_redirect.blob_host, 200, False),
        (registry_redirect.host, 307, True),
        (registry_redirect.blob_host, 200, False),
    ]


def _basic(registry: Registry) -> str:
    prepared = requests.Request("GET", registry.url, auth=(registry.username or "", registry.password or ""))
    return str(prepared.prepare().headers["Authorization"])


# ---------------------------------------------------------------------------------------------
# Lifecycle


@pytest.mark.docker
def test_registry_leaves_nothing_behind(load_image: Callable[..., LoadedImage]) -> None:
    image = tiny_engine_image(load_image)
    with start_registry(auth="token", tls=True, redirect=True) as registry:
        registry.push_engine_image(image.tag, "gone/app:1")
        assert registry.token_server is not None
        ports = [registry.host, registry.blob_host, f"127.0.0.1:{registry.token_server.port}"]
        storage, certs, pid = registry.storage, CERTS_D / registry.host, registry.pid
        assert storage.exists() and certs.exists()
    assert not storage.parent.exists() and not certs.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    for address in ports:
        assert address is not None
        host, port = address.rsplit(":", 1)
        with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port)), timeout=5):
            pass
    tags = subprocess.run(["docker", "images", "--format", "{{.Repository}}"], capture_output=True, text=True)
    assert f"{registry.host}/gone/app" not in tags.stdout


# ---------------------------------------------------------------------------------------------
# Docker client configuration and the credential helper


@pytest.mark.parametrize("mode", ["auths", "credsStore", "credHelpers"])
def test_docker_config_resolves_with_the_docker_sdk(
    registry_basic: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: Any
) -> None:
    config_dir, bin_dir = docker_config(tmp_path, registry_basic, mode)
    monkeypatch.setenv("DOCKER_CONFIG", config_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    resolved = docker.auth.load_config().resolve_authconfig(registry_basic.host)
    # The SDK's two shapes: lower-case keys from "auths", capitalised ones from a helper.
    user_key, password_key = ("username", "password") if mode == "auths" else ("Username", "Password")
    assert resolved[user_key] == registry_basic.username
    assert resolved[password_key] == registry_basic.password
    calls = Path(bin_dir, "cstest-calls.log")
    assert (calls.read_text().splitlines() if calls.exists() else []) == (
        [] if mode == "auths" else [f"get {registry_basic.host}"]
    )


@pytest.mark.docker
@pytest.mark.parametrize("mode", ["auths", "credsStore", "credHelpers"])
def test_docker_config_works_for_the_docker_cli(
    registry_basic: Registry, tmp_path: Path, docker_client: Any, mode: Any
) -> None:
    config_dir, bin_dir = docker_config(tmp_path, registry_basic, mode)
    registry_basic.put_image("cli/app", "1", small_layers())
    ref = f"{registry_basic.host}/cli/app:1"
    env = {**os.environ, "DOCKER_CONFIG": config_dir, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    try:
        pulled = subprocess.run(["docker", "pull", ref], capture_output=True, text=True, env=env, timeout=120)
        assert pulled.returncode == 0, pulled.stderr
    finally:
        subprocess.run(["docker", "rmi", ref], capture_output=True, check=False)
    assert any(r.auth_scheme == "Basic" and r.status == 200 for r in registry_basic.requests_log())
    if mode != "auths":
        assert f"get {registry_basic.host}" in Path(bin_dir, "cstest-calls.log").read_text().splitlines()


def test_credential_helper_protocol(registry_basic: Registry, tmp_path: Path) -> None:
    _, bin_dir = docker_config(tmp_path, registry_basic, "credsStore")
    helper = str(Path(bin_dir, "docker-credential-cstest"))

    def call(action: str, data: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([helper, action], input=data, capture_output=True, text=True, timeout=30)

    got = call("get", registry_basic.host + "\n")
    assert got.returncode == 0
    assert json.loads(got.stdout) == {
        "ServerURL": registry_basic.host,
        "Username": registry_basic.username,
        "Secret": registry_basic.password,
    }
    assert (
        json.loads(call("get", f"https://{registry_basic.host}/v2/").stdout)["Secret"]
        == registry_basic.password
    )
    missing = call("get", "elsewhere.example:5000")
    assert (missing.returncode, missing.stdout.strip()) == (1, "credentials not found in native keychain")

    stored = call("store", json.dumps({"ServerURL": "other:5000", "Username": "u", "Secret": "s"}))
    assert stored.returncode == 0
    assert json.loads(call("list").stdout) == {
        registry_basic.host: registry_basic.username,
        "other:5000": "u",
    }
    assert call("erase", "other:5000").returncode == 0
    assert call("get", "other:5000").returncode == 1
    with pytest.raises(ValueError):
        docker_config(tmp_path, Registry("h", "u", "http", None, None, None, "none", None), "auths")
