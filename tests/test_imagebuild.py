"""imagebuild writes tarballs the real engine loads, with the layers and history it computed."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import posixpath
import tarfile
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest

from imagebuild import (
    MEDIA_LAYER,
    MEDIA_LAYER_GZIP,
    MEDIA_MANIFEST,
    MTIME,
    ApkPackage,
    DebPackage,
    Filler,
    HistoryEntry,
    ImageSpec,
    Layer,
    Layout,
    alpine_files,
    debian_files,
    docker_load,
    dpkg_status,
    remove_images,
    write_docker_save,
    write_images,
    write_layer,
)

PACKAGES = [
    DebPackage("libc6", "2.28-10"),
    DebPackage("openssl", "1.1.1d-0+deb10u2"),
    DebPackage("libssl1.1", "1.1.1d-0+deb10u2", source="openssl"),
    DebPackage("libgcc1", "1:8.3.0-6", source="gcc-8", source_version="8.3.0-6"),
]
HISTORY = [
    HistoryEntry("/bin/sh -c #(nop) ADD file:base in / "),
    HistoryEntry('/bin/sh -c #(nop)  ENV APP_HOME="/opt/app"', empty_layer=True),
    HistoryEntry("/bin/sh -c #(nop) COPY dir:app in /opt/app "),
    HistoryEntry("/bin/sh -c rm -rf /opt/old /var/cache/apt && mkdir -p /var/cache/apt"),
    HistoryEntry("/bin/sh -c #(nop) COPY dir:app in /opt/app "),
    HistoryEntry('/bin/sh -c #(nop)  CMD ["/opt/app/run"]', empty_layer=True),
]


def _layers() -> list[Layer]:
    """base, app, a layer deleting things, and the app layer again (same content, same diff ID)."""
    base = debian_files(packages=PACKAGES).merge(
        Layer(files={"opt/old/readme": b"old\n", "var/cache/apt/pkgcache.bin": b"cache"})
    )
    app = Layer(files={"opt/app/run": b"#!/bin/sh\necho hi\n"}, symlinks={"opt/app/current": "run"})
    cleanup = Layer(files={"var/cache/apt/new": b"new"}, whiteouts=["opt/old"], opaque_dirs=["var/cache/apt"])
    return [base, app, cleanup, app]


# ---------------------------------------------------------------------------------------------
# Reading tarballs back


@dataclass
class Tarball:
    names: list[str]  # in archive order, directories with a trailing "/"
    files: dict[str, bytes]
    links: dict[str, str]  # symlink member -> the member it points at
    infos: dict[str, tarfile.TarInfo]

    def layer_tars(self) -> list[list[bytes]]:
        """Each manifest entry's layer tars, decompressed, following symlinks."""
        result = []
        for entry in json.loads(self.files["manifest.json"]):
            result.append([_plain(self.files[self.links.get(n, n)]) for n in entry["Layers"]])
        return result


def read_tarball(data: bytes | Path) -> Tarball:
    raw = data.read_bytes() if isinstance(data, Path) else data
    tarball = Tarball([], {}, {}, {})
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for member in tar:
            tarball.names.append(member.name + ("/" if member.isdir() else ""))
            tarball.infos[member.name] = member
            if member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                tarball.files[member.name] = handle.read()
            elif member.issym():
                target = posixpath.join(posixpath.dirname(member.name), member.linkname)
                tarball.links[member.name] = posixpath.normpath(target)
    return tarball


def _plain(blob: bytes) -> bytes:
    return gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _walk_order(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: tuple(n.rstrip("/").split("/")))


# ---------------------------------------------------------------------------------------------
# Without an engine


def test_layer_tar_is_deterministic_with_parents_whiteouts_and_links(tmp_path: Path) -> None:
    layer = Layer(
        files={"/etc/app.conf": b"x=1\n", "usr/bin/tool": b"#!/bin/sh\n"},
        symlinks={"usr/bin/alias": "tool"},
        dirs=["var/empty"],
        whiteouts=["etc/old.conf"],
        opaque_dirs=["var/cache"],
    )
    first = write_layer(layer, tmp_path / "a.tar")
    second = write_layer(layer, tmp_path / "b.tar")
    zipped = write_layer(layer, tmp_path / "c.tar.gz", compress=True)
    other = write_layer(Layer(files={"etc/app.conf": b"x=2\n"}), tmp_path / "d.tar")

    data = first.path.read_bytes()
    assert first.diff_id == first.digest == _sha(data) == second.diff_id
    assert (first.size, first.tar_size, first.media_type) == (len(data), len(data), MEDIA_LAYER)
    assert data == second.path.read_bytes()
    assert zipped.diff_id == first.diff_id
    assert zipped.digest == _sha(zipped.path.read_bytes()) != zipped.diff_id
    assert gzip.decompress(zipped.path.read_bytes()) == data
    assert zipped.media_type == MEDIA_LAYER_GZIP
    assert other.diff_id != first.diff_id

    tar = read_tarball(data)
    assert tar.names == [
        "etc/",
        "etc/.wh.old.conf",
        "etc/app.conf",
        "usr/",
        "usr/bin/",
        "usr/bin/alias",
        "usr/bin/tool",
        "var/",
        "var/cache/",
        "var/cache/.wh..wh..opq",
        "var/empty/",
    ]
    assert tar.infos["usr/bin/alias"].linkname == "tool"
    assert tar.files["etc/.wh.old.conf"] == b""
    assert {(i.mtime, i.uid, i.gid) for i in tar.infos.values()} == {(MTIME, 0, 0)}


def test_debian_and_alpine_content(tmp_path: Path) -> None:
    debian = read_tarball(write_layer(debian_files("12", "bookworm", PACKAGES), tmp_path / "d.tar").path)
    assert debian.infos["etc/os-release"].issym()
    assert debian.infos["etc/os-release"].linkname == "../usr/lib/os-release"
    os_release = debian.files["usr/lib/os-release"].decode()
    assert 'VERSION_ID="12"' in os_release and "VERSION_CODENAME=bookworm" in os_release
    stanzas = debian.files["var/lib/dpkg/status"].decode().split("\n\n")
    assert stanzas[-1] == "" and len(stanzas) == len(PACKAGES) + 1
    assert stanzas[0].startswith("Package: libc6\nStatus: install ok installed\n")
    assert "\nVersion: 2.28-10\n" in stanzas[0] and "Source:" not in stanzas[0]
    assert "\nArchitecture: amd64\n" in stanzas[0]
    assert "\nSource: openssl\n" in stanzas[2]
    assert "\nSource: gcc-8 (8.3.0-6)\nVersion: 1:8.3.0-6\n" in stanzas[3]
    assert dpkg_status([("zlib1g", "1:1.2.11")]).startswith(b"Package: zlib1g\n")

    packages: list[ApkPackage | tuple[str, str]] = [ApkPackage("musl", "1.1.22-r3"), ("busybox", "1.30.1-r2")]
    alpine = read_tarball(write_layer(alpine_files("3.10.2", packages), tmp_path / "a.tar").path)
    assert alpine.files["etc/alpine-release"] == b"3.10.2\n"
    entries = alpine.files["lib/apk/db/installed"].decode().split("\n\n")
    assert entries[-1] == "" and len(entries) == 3
    assert entries[0].startswith("P:musl\nV:1.1.22-r3\nA:x86_64\n")
    assert entries[1].startswith("P:busybox\nV:1.30.1-r2\nA:x86_64\n")


def test_classic_layout_is_docker_24s(tmp_path: Path) -> None:
    path = tmp_path / "image.tar"
    saved = write_docker_save(path, _layers(), repo_tags=["example/app:1.0"], history=HISTORY)
    tar = read_tarball(path)

    assert tar.names == _walk_order(tar.names)
    manifest = json.loads(tar.files["manifest.json"])
    assert manifest == [
        {
            "Config": saved.image_id.removeprefix("sha256:") + ".json",
            "RepoTags": ["example/app:1.0"],
            "Layers": manifest[0]["Layers"],
        }
    ]
    v1_ids = [name.removesuffix("/layer.tar") for name in manifest[0]["Layers"]]
    assert len(set(v1_ids)) == 4
    config_bytes = tar.files[manifest[0]["Config"]]
    assert _sha(config_bytes) == saved.image_id
    assert json.loads(config_bytes) == saved.config
    assert sorted(tar.names) == sorted(
        [f"{v}{suffix}" for v in v1_ids for suffix in ("/", "/VERSION", "/json", "/layer.tar")]
        + [manifest[0]["Config"], "manifest.json", "repositories"]
    )
    parent = None
    for v1_id in v1_ids:
        assert tar.files[f"{v1_id}/VERSION"] == b"1.0"
        doc = json.loads(tar.files[f"{v1_id}/json"])
        assert doc["id"] == v1_id and doc.get("parent") == parent and doc["os"] == "linux"
        parent = v1_id
    assert json.loads(tar.files[f"{v1_ids[-1]}/json"])["config"] == saved.config["config"]
    # The repeated app layer is a relative symlink to its first copy, as Docker writes it.
    assert tar.infos[f"{v1_ids[3]}/layer.tar"].linkname == f"../{v1_ids[1]}/layer.tar"
    assert json.loads(tar.files["repositories"]) == {"example/app": {"1.0": v1_ids[-1]}}
    assert [_sha(layer) for layer in tar.layer_tars()[0]] == list(saved.diff_ids)
    assert saved.diff_ids[1] == saved.diff_ids[3]


@pytest.mark.parametrize("gzip_layers", [False, True], ids=["tar", "gzip"])
def test_oci_layout_is_docker_25s(tmp_path: Path, gzip_layers: bool) -> None:
    path = tmp_path / "image.tar"
    saved = write_docker_save(
        path, _layers(), repo_tags=["registry.example:5000/team/app:2"], layout="oci", gzip_layers=gzip_layers
    )
    tar = read_tarball(path)

    assert tar.names == _walk_order(tar.names)
    assert tar.names[:2] == ["blobs/", "blobs/sha256/"]
    assert tar.names[-4:] == ["index.json", "manifest.json", "oci-layout", "repositories"]
    assert tar.files["oci-layout"] == b'{"imageLayoutVersion": "1.0.0"}'
    for name, data in tar.files.items():
        if name.startswith("blobs/"):
            assert _sha(data) == "sha256:" + posixpath.basename(name)

    index = json.loads(tar.files["index.json"])
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    [descriptor] = index["manifests"]
    assert descriptor["mediaType"] == MEDIA_MANIFEST
    assert descriptor["annotations"] == {
        "io.containerd.image.name": "registry.example:5000/team/app:2",
        "org.opencontainers.image.ref.name": "2",
    }
    oci_manifest = json.loads(tar.files["blobs/sha256/" + descriptor["digest"].removeprefix("sha256:")])
    assert oci_manifest["config"]["digest"] == saved.image_id
    assert oci_manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    layers = oci_manifest["layers"]
    assert [d["digest"] for d in layers] == list(saved.layer_digests)
    assert {d["mediaType"] for d in layers} == {MEDIA_LAYER_GZIP if gzip_layers else MEDIA_LAYER}
    assert (saved.layer_digests == saved.diff_ids) is not gzip_layers

    [entry] = json.loads(tar.files["manifest.json"])
    assert entry["Config"] == "blobs/sha256/" + saved.image_id.removeprefix("sha256:")
    assert entry["Layers"] == ["blobs/sha256/" + d.removeprefix("sha256:") for d in saved.layer_digests]
    assert entry["RepoTags"] == ["registry.example:5000/team/app:2"]
    assert [_sha(layer) for layer in tar.layer_tars()[0]] == list(saved.diff_ids)
    top = saved.diff_ids[-1].removeprefix("sha256:")
    assert json.loads(tar.files["repositories"]) == {"registry.example:5000/team/app": {"2": top}}


def test_history_must_line_up_with_layers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="history"):
        write_docker_save(tmp_path / "x.tar", _layers(), history=HISTORY[:2])


def test_filler_layer_is_streamed_not_held_in_memory(tmp_path: Path) -> None:
    size = 50 << 20
    layer = Layer(files={"blob/filler.bin": Filler(size, seed=7)})
    tracemalloc.start()
    try:
        blob = write_layer(layer, tmp_path / "big.tar")
        write_docker_save(tmp_path / "big-image.tar", [blob], layout="oci")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak} bytes while writing a {size} byte layer"

    assert size < blob.size < size + (64 << 10)
    digest = hashlib.sha256()
    with open(blob.path, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            assert (member.name, member.size) in {("blob", 0), ("blob/filler.bin", size)}
            if member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                head = handle.read(1 << 20)
                assert len(gzip.compress(head)) > len(head)  # incompressible
    with open(blob.path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    assert blob.diff_id == "sha256:" + digest.hexdigest()
    assert (tmp_path / "big-image.tar").stat().st_size > size
    small = Layer(files={"f": Filler(3 << 20, seed=7)})
    assert write_layer(small, tmp_path / "s1.tar").diff_id == write_layer(small, tmp_path / "s2.tar").diff_id
    reseeded = Layer(files={"f": Filler(3 << 20, seed=8)})
    assert (
        write_layer(reseeded, tmp_path / "s3.tar").diff_id != write_layer(small, tmp_path / "s4.tar").diff_id
    )


# ---------------------------------------------------------------------------------------------
# Against the real engine


@pytest.fixture
def client(docker_client: docker.DockerClient) -> docker.DockerClient:
    return docker_client  # conftest's engine, skipping where none answers


@pytest.fixture
def new_tag(client: docker.DockerClient) -> Iterator[Callable[[str], str]]:
    made: list[str] = []

    def make(name: str = "img") -> str:
        made.append(f"clair-scan-imagebuild/{name}:{uuid.uuid4().hex[:12]}")
        return made[-1]

    yield make
    remove_images(client, made)


def _saved_by_engine(client: docker.DockerClient, tag: str) -> Tarball:
    return read_tarball(b"".join(client.images.get(tag).save(named=True)))


@pytest.mark.docker
@pytest.mark.parametrize("gzip_layers", [False, True], ids=["tar", "gzip"])
@pytest.mark.parametrize("layout", ["classic", "oci"])
def test_engine_loads_image_with_computed_layers_and_history(
    client: docker.DockerClient,
    new_tag: Callable[[str], str],
    tmp_path: Path,
    layout: Layout,
    gzip_layers: bool,
) -> None:
    tag = new_tag(f"{layout}-{'gzip' if gzip_layers else 'tar'}")
    path = tmp_path / "image.tar"
    saved = write_docker_save(
        path,
        _layers(),
        repo_tags=[tag],
        layout=layout,
        gzip_layers=gzip_layers,
        history=HISTORY,
        config_overrides={"config": {"Cmd": ["/opt/app/run"], "Env": ["APP_HOME=/opt/app"]}},
    )

    assert docker_load(client, path) == [saved.image_id]
    image = client.images.get(tag)
    assert image.id == saved.image_id
    assert image.attrs["RootFS"]["Layers"] == list(saved.diff_ids)
    assert image.attrs["Config"]["Cmd"] == ["/opt/app/run"]
    assert image.attrs["Config"]["Env"] == ["APP_HOME=/opt/app"]
    history = client.api.history(tag)  # newest first
    assert [h["CreatedBy"] for h in reversed(history)] == [h.created_by for h in HISTORY]
    assert saved.created_by == [h.created_by for h in HISTORY]

    # The engine's own save gives back exactly the layer tars we wrote (uncompressed).
    again = _saved_by_engine(client, tag)
    [layers] = again.layer_tars()
    assert [_sha(layer) for layer in layers] == list(saved.diff_ids)
    base = read_tarball(layers[0])
    assert base.files["var/lib/dpkg/status"] == dpkg_status(PACKAGES)
    assert base.infos["etc/os-release"].linkname == "../usr/lib/os-release"


@pytest.mark.docker
def test_engine_applies_whiteouts_and_symlinks(
    client: docker.DockerClient, new_tag: Callable[[str], str], tmp_path: Path
) -> None:
    tag = new_tag("whiteouts")
    write_docker_save(tmp_path / "image.tar", _layers(), repo_tags=[tag], history=HISTORY)
    docker_load(client, tmp_path / "image.tar")

    container = client.containers.create(tag)
    try:
        rootfs = read_tarball(b"".join(container.export()))
    finally:
        container.remove(force=True)
    assert "opt/old/readme" not in rootfs.files and "opt/old/" not in rootfs.names
    assert "var/cache/apt/pkgcache.bin" not in rootfs.files
    assert rootfs.files["var/cache/apt/new"] == b"new"
    assert rootfs.infos["opt/app/current"].linkname == "run"
    assert rootfs.files["var/lib/dpkg/status"] == dpkg_status(PACKAGES)


@pytest.mark.docker
@pytest.mark.parametrize("layout", ["classic", "oci"])
def test_engine_loads_several_images_from_one_tarball(
    client: docker.DockerClient, new_tag: Callable[[str], str], tmp_path: Path, layout: Layout
) -> None:
    base = debian_files(packages=PACKAGES)
    alpine = alpine_files(packages=[("musl", "1.1.22-r3")])
    specs = [
        ImageSpec([base, Layer(files={"srv/one": b"1"})], repo_tags=[new_tag("one")]),
        ImageSpec([base, Layer(files={"srv/two": b"2"})], repo_tags=[new_tag("two"), new_tag("two-alias")]),
        ImageSpec([alpine], repo_tags=[new_tag("alpine")]),
    ]
    path = tmp_path / "images.tar"
    saved = write_images(path, specs, layout=layout)
    assert saved[0].diff_ids[0] == saved[1].diff_ids[0]

    assert sorted(docker_load(client, path)) == sorted(s.image_id for s in saved)
    for spec, image in zip(specs, saved, strict=True):
        for tag in spec.repo_tags:
            assert client.images.get(tag).attrs["RootFS"]["Layers"] == list(image.diff_ids)
    tar = read_tarball(path)
    if layout == "classic":  # the shared base is one v1 directory, written once
        assert len([n for n in tar.names if n.endswith("/layer.tar")]) == 4
    else:
        assert len(json.loads(tar.files["index.json"])["manifests"]) == 4
