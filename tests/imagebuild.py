"""Real `docker save` tarballs for tests and benchmarks, written without Docker or a registry.

A layer is described as files, symlinks, directories and whiteouts, and written as a deterministic
tar (fixed mtime, uid and gid: the same content always gets the same diff ID), streamed to disk so
a 1 GB layer never sits in memory. Images are assembled in either layout `docker save` produces:

- "classic" (Docker <= 24): `<v1 id>/{VERSION,json,layer.tar}`, `<config hex>.json`,
  `manifest.json`, `repositories`; a repeated layer is a relative symlink to its first copy.
- "oci" (Docker >= 25): `blobs/sha256/<hex>` for layers, legacy v1 JSON, config and the OCI
  manifest, plus `index.json`, `oci-layout`, and the Docker-compatible `manifest.json` and
  `repositories`.

Members are ordered as Docker's own export orders them: it tars a temp directory in a lexical walk.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import posixpath
import random
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import docker
import docker.errors

MTIME = 1_577_836_800  # 2020-01-01T00:00:00Z, for every tar member
CREATED = "2020-01-01T00:00:00Z"
CHUNK = 1 << 20
GZIP_LEVEL = 1  # the data is throwaway: favour speed, a 1 GB layer takes long enough as it is
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"

Layout = Literal["classic", "oci"]

# How Go marshals an empty container.Config, as Docker writes it into v1 `json` files.
_EMPTY_CONTAINER_CONFIG: dict[str, Any] = {
    "Hostname": "",
    "Domainname": "",
    "User": "",
    "AttachStdin": False,
    "AttachStdout": False,
    "AttachStderr": False,
    "Tty": False,
    "OpenStdin": False,
    "StdinOnce": False,
    "Env": None,
    "Cmd": None,
    "Image": "",
    "Volumes": None,
    "WorkingDir": "",
    "Entrypoint": None,
    "OnBuild": None,
    "Labels": None,
}


# ---------------------------------------------------------------------------------------------
# Layers


@dataclass(frozen=True)
class Filler:
    """`size` bytes of incompressible pseudo-random data, generated while the layer is written.
    The bytes depend only on `seed` and `size`."""

    size: int
    seed: int = 0


@dataclass
class Layer:
    """One layer's changes. Paths are relative to the root (a leading "/" is dropped); parent
    directories are added to the tar implicitly. `whiteouts` are paths deleted from lower layers
    (written as `.wh.<name>`), `opaque_dirs` directories whose lower contents are hidden
    (`<dir>/.wh..wh..opq`)."""

    files: dict[str, bytes | Filler] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)
    whiteouts: list[str] = field(default_factory=list)
    opaque_dirs: list[str] = field(default_factory=list)

    def merge(self, other: Layer) -> Layer:
        """A new layer with both layers' entries; `other` wins where paths collide."""
        return Layer(
            {**self.files, **other.files},
            {**self.symlinks, **other.symlinks},
            [*self.dirs, *other.dirs],
            [*self.whiteouts, *other.whiteouts],
            [*self.opaque_dirs, *other.opaque_dirs],
        )


@dataclass(frozen=True)
class LayerBlob:
    """A layer written to disk. `digest` and `size` describe the stored bytes (gzipped or not);
    `diff_id` is always the sha256 of the uncompressed tar."""

    path: Path
    diff_id: str
    digest: str
    size: int
    tar_size: int
    media_type: str


class _FillerReader:
    """Reads a Filler's bytes; always returns as many as asked while any are left, as
    tarfile's copy loop treats a short read as truncated data."""

    def __init__(self, filler: Filler) -> None:
        self._rng = random.Random(filler.seed)
        self._left = filler.size
        self._buf = b""
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        want = self._left + len(self._buf) - self._pos if size < 0 else size
        parts = []
        while want > 0:
            if self._pos == len(self._buf):
                if self._left == 0:
                    break
                take = min(CHUNK, self._left)
                # Always draw whole chunks so the stream does not depend on the reader's sizes.
                self._buf = self._rng.randbytes(CHUNK)[:take]
                self._pos = 0
                self._left -= take
            piece = self._buf[self._pos : self._pos + want]
            self._pos += len(piece)
            want -= len(piece)
            parts.append(piece)
        return b"".join(parts)


class _HashingWriter:
    """A write-only file object that hashes and counts the bytes passing through to `target`."""

    def __init__(self, target: IO[bytes] | gzip.GzipFile) -> None:
        self._target = target
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._sha.update(data)
        self._target.write(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._target.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self._sha.hexdigest()


def _clean(path: str) -> str:
    cleaned = posixpath.normpath("/" + path).lstrip("/")
    if not cleaned:
        raise ValueError(f"not a path inside the image: {path!r}")
    return cleaned


def _walk_key(name: str) -> tuple[str, ...]:
    """Sorts paths the way a lexical directory walk visits them: a directory right before its
    contents, siblings by name."""
    return tuple(name.rstrip("/").split("/"))


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = link
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _layer_entries(layer: Layer) -> list[tuple[tarfile.TarInfo, bytes | Filler | None]]:
    entries: dict[str, tuple[tarfile.TarInfo, bytes | Filler | None]] = {}

    def add(path: str, kind: bytes, mode: int, content: bytes | Filler | None = None, link: str = "") -> None:
        name = _clean(path)
        size = len(content) if isinstance(content, bytes) else content.size if content else 0
        entries[name] = (_info(name, kind, mode, size, link), content)

    for path in layer.dirs:
        add(path, tarfile.DIRTYPE, 0o755)
    for path, content in layer.files.items():
        add(path, tarfile.REGTYPE, 0o644, content)
    for path, target in layer.symlinks.items():
        add(path, tarfile.SYMTYPE, 0o777, link=target)
    for path in layer.whiteouts:
        parent, name = posixpath.split(_clean(path))
        add(posixpath.join(parent, ".wh." + name), tarfile.REGTYPE, 0o600, b"")
    for path in layer.opaque_dirs:
        add(posixpath.join(_clean(path), ".wh..wh..opq"), tarfile.REGTYPE, 0o755, b"")
    for name in list(entries):
        parent = posixpath.dirname(name)
        while parent and parent not in entries:
            entries[parent] = (_info(parent, tarfile.DIRTYPE, 0o755), None)
            parent = posixpath.dirname(parent)
    return [entries[name] for name in sorted(entries, key=_walk_key)]


def _write_tar(layer: Layer, sink: _HashingWriter) -> None:
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK) as tar:  # type: ignore[call-overload]
        for info, content in _layer_entries(layer):
            if isinstance(content, Filler):
                tar.addfile(info, _FillerReader(content))
            elif content is not None:
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.addfile(info)


def write_layer(layer: Layer, dest: str | Path, *, compress: bool = False) -> LayerBlob:
    """Write `layer` as a tar (gzipped if `compress`) to `dest`, streaming, and describe it."""
    dest = Path(dest)
    with open(dest, "wb") as out:
        stored = _HashingWriter(out)
        if compress:
            # No name and mtime 0 in the gzip header: the same content gives the same digest.
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=stored, mtime=0, compresslevel=GZIP_LEVEL
            ) as gz:
                tar_sink = _HashingWriter(gz)
                _write_tar(layer, tar_sink)
        else:
            tar_sink = stored
            _write_tar(layer, tar_sink)
    return LayerBlob(
        path=dest,
        diff_id=tar_sink.digest,
        digest=stored.digest,
        size=stored.size,
        tar_size=tar_sink.size,
        media_type=MEDIA_LAYER_GZIP if compress else MEDIA_LAYER,
    )


# ---------------------------------------------------------------------------------------------
# OS content


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    source: str | None = None
    source_version: str | None = None  # written as `Source: name (version)`
    architecture: str = "amd64"
    status: str = "install ok installed"


@dataclass(frozen=True)
class ApkPackage:
    name: str
    version: str
    architecture: str = "x86_64"
    origin: str | None = None


def dpkg_status(packages: Iterable[DebPackage | tuple[str, str]]) -> bytes:
    """A `var/lib/dpkg/status` file, stanzas in the order and form dpkg writes them."""
    stanzas = []
    for pkg in packages:
        p = DebPackage(*pkg) if isinstance(pkg, tuple) else pkg
        lines = [
            f"Package: {p.name}",
            f"Status: {p.status}",
            "Priority: optional",
            "Section: misc",
            "Installed-Size: 100",
            "Maintainer: Debian Developers <debian-devel@lists.debian.org>",
            f"Architecture: {p.architecture}",
        ]
        if p.source:
            lines.append(
                f"Source: {p.source} ({p.source_version})" if p.source_version else f"Source: {p.source}"
            )
        lines += [f"Version: {p.version}", f"Description: {p.name} test package", " Generated for tests."]
        stanzas.append("\n".join(lines) + "\n\n")
    return "".join(stanzas).encode()


def apk_installed(packages: Iterable[ApkPackage | tuple[str, str]]) -> bytes:
    """A `lib/apk/db/installed` file: one blank-line separated entry per package."""
    entries = []
    for pkg in packages:
        p = ApkPackage(*pkg) if isinstance(pkg, tuple) else pkg
        lines = [f"P:{p.name}", f"V:{p.version}", f"A:{p.architecture}", "S:1024", "I:4096"]
        lines += [f"T:{p.name} test package", "L:MIT", f"o:{p.origin or p.name}"]
        entries.append("\n".join(lines) + "\n\n")
    return "".join(entries).encode()


def debian_files(
    version_id: str = "10", codename: str = "buster", packages: Iterable[DebPackage | tuple[str, str]] = ()
) -> Layer:
    """A Debian base: os-release lives in usr/lib with etc/os-release a relative symlink to it,
    as in real Debian images, and a dpkg status database."""
    os_release = (
        f'PRETTY_NAME="Debian GNU/Linux {version_id} ({codename})"\n'
        'NAME="Debian GNU/Linux"\n'
        f'VERSION_ID="{version_id}"\n'
        f'VERSION="{version_id} ({codename})"\n'
        f"VERSION_CODENAME={codename}\n"
        "ID=debian\n"
        'HOME_URL="https://www.debian.org/"\n'
        'SUPPORT_URL="https://www.debian.org/support"\n'
        'BUG_REPORT_URL="https://bugs.debian.org/"\n'
    )
    return Layer(
        files={"usr/lib/os-release": os_release.encode(), "var/lib/dpkg/status": dpkg_status(packages)},
        symlinks={"etc/os-release": "../usr/lib/os-release"},
        dirs=["tmp", "var/lib/dpkg/info"],
    )


def alpine_files(release: str = "3.10.2", packages: Iterable[ApkPackage | tuple[str, str]] = ()) -> Layer:
    """An Alpine base: etc/alpine-release and the apk installed database."""
    return Layer(
        files={
            "etc/alpine-release": f"{release}\n".encode(),
            "lib/apk/db/installed": apk_installed(packages),
        },
        dirs=["tmp"],
    )


# ---------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class HistoryEntry:
    created_by: str
    empty_layer: bool = False


@dataclass
class ImageSpec:
    """One image of a tarball. `history` lists build steps, strings being steps that made a
    layer; its non-empty entries must match the layers one to one (default: one ADD/COPY step
    per layer). `config_overrides` is merged into the config JSON, dicts one level deep."""

    layers: Sequence[Layer | LayerBlob]
    repo_tags: Sequence[str] = ()
    history: Sequence[HistoryEntry | str] | None = None
    config_overrides: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class SavedImage:
    image_id: str  # sha256 of the config JSON: what the engine reports as the image ID
    repo_tags: tuple[str, ...]
    diff_ids: tuple[str, ...]
    layer_digests: tuple[str, ...]  # of the stored layer blobs, gzipped or not
    config: dict[str, Any]

    @property
    def created_by(self) -> list[str]:
        return [str(h.get("created_by", "")) for h in self.config.get("history", [])]


@dataclass(frozen=True)
class _Built:
    saved: SavedImage
    raw_config: bytes
    blobs: tuple[LayerBlob, ...]


@dataclass(frozen=True)
class _Member:
    """A member of the outer tarball: bytes, a file on disk, or a symlink."""

    name: str
    data: bytes | None = None
    path: Path | None = None
    link: str | None = None


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _hex(digest: str) -> str:
    return digest.partition(":")[2]


def _compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else _sha256(f"{chain[-1]} {diff_id}".encode()))
    return chain


def image_config(
    diff_ids: Sequence[str],
    history: Sequence[HistoryEntry | str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The image config JSON document for these layers."""
    if history is None:
        steps = [
            HistoryEntry(f"/bin/sh -c #(nop) {'COPY' if i else 'ADD'} file:{_hex(d)} in / ")
            for i, d in enumerate(diff_ids)
        ]
    else:
        steps = [HistoryEntry(h) if isinstance(h, str) else h for h in history]
    if sum(not step.empty_layer for step in steps) != len(diff_ids):
        raise ValueError(f"history has {len(steps)} entries but not one non-empty entry per layer")
    entries = []
    for step in steps:
        entry: dict[str, Any] = {"created": CREATED, "created_by": step.created_by}
        if step.empty_layer:
            entry["empty_layer"] = True
        entries.append(entry)
    config: dict[str, Any] = {
        "architecture": "amd64",
        "config": {"Env": [DEFAULT_PATH], "Cmd": ["/bin/sh"]},
        "created": CREATED,
        "history": entries,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }
    for key, value in (overrides or {}).items():
        old = config.get(key)
        config[key] = {**old, **value} if isinstance(old, dict) and isinstance(value, Mapping) else value
    return config


def _v1_layers(config: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """(v1 id, v1 `json`) for each layer, derived as Docker's save does: from the chain ID, the
    parent's v1 id and, for the top layer only, the image's own settings."""
    diff_ids = config["rootfs"]["diff_ids"]
    result: list[tuple[str, bytes]] = []
    parent = ""
    for i, chain_id in enumerate(chain_ids(diff_ids)):
        top = i == len(diff_ids) - 1
        body: dict[str, Any] = {
            "created": config.get("created", CREATED) if top else "1970-01-01T00:00:00Z",
            "container_config": _EMPTY_CONTAINER_CONFIG,
        }
        if top:
            body |= {"config": config.get("config"), "architecture": config.get("architecture")}
            body["os"] = config.get("os")
        id_doc = {**body, "layer_id": chain_id, "parent": f"sha256:{parent}" if parent else ""}
        v1_id = hashlib.sha256(json.dumps(id_doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        doc = {"id": v1_id, **({"parent": parent} if parent else {}), **body, "os": config.get("os")}
        result.append((v1_id, _compact(doc)))
        parent = v1_id
    return result


def _split_ref(ref: str) -> tuple[str, str]:
    name, sep, tag = ref.rpartition(":")
    return (name, tag) if sep and "/" not in tag else (ref, "latest")


def _full_name(name: str) -> str:
    first, _, rest = name.partition("/")
    if not rest:
        return f"docker.io/library/{name}"
    if "." in first or ":" in first or first == "localhost":
        return name
    return f"docker.io/{name}"


def _repositories(built: Sequence[_Built], top: Sequence[str]) -> bytes | None:
    repos: dict[str, dict[str, str]] = {}
    for image, top_id in zip(built, top, strict=True):
        for ref in image.saved.repo_tags:
            name, tag = _split_ref(ref)
            repos.setdefault(name, {})[tag] = top_id
    return json.dumps(repos, separators=(",", ":")).encode() + b"\n" if repos else None


def _manifest_json(entries: list[dict[str, Any]]) -> bytes:
    return _compact(entries) + b"\n"  # Go's json.Encoder ends with a newline


def _classic_members(built: Sequence[_Built]) -> list[_Member]:
    members: list[_Member] = []
    first_copy: dict[str, str] = {}  # stored digest -> member name of its layer.tar
    seen: set[str] = set()
    manifest, tops = [], []
    for image in built:
        v1 = _v1_layers(image.saved.config)
        for (v1_id, v1_json), blob in zip(v1, image.blobs, strict=True):
            if v1_id in seen:
                continue
            seen.add(v1_id)
            layer_tar = f"{v1_id}/layer.tar"
            members += [_Member(f"{v1_id}/VERSION", b"1.0"), _Member(f"{v1_id}/json", v1_json)]
            if blob.digest in first_copy:
                members.append(_Member(layer_tar, link=f"../{first_copy[blob.digest]}"))
            else:
                first_copy[blob.digest] = layer_tar
                members.append(_Member(layer_tar, path=blob.path))
        config_name = f"{_hex(image.saved.image_id)}.json"
        members.append(_Member(config_name, image.raw_config))
        manifest.append(
            {
                "Config": config_name,
                "RepoTags": list(image.saved.repo_tags) or None,
                "Layers": [f"{v1_id}/layer.tar" for v1_id, _ in v1],
            }
        )
        tops.append(v1[-1][0])
    members.append(_Member("manifest.json", _manifest_json(manifest)))
    repositories = _repositories(built, tops)
    if repositories is not None:
        members.append(_Member("repositories", repositories))
    return members


def _oci_members(built: Sequence[_Built]) -> list[_Member]:
    blobs: dict[str, _Member] = {}

    def blob(digest: str, data: bytes | None = None, path: Path | None = None) -> str:
        name = f"blobs/sha256/{_hex(digest)}"
        blobs.setdefault(name, _Member(name, data, path))
        return name

    manifest, tops, descriptors = [], [], []
    for image in built:
        for _, v1_json in _v1_layers(image.saved.config):
            blob(_sha256(v1_json), v1_json)  # Docker >= 25 keeps the legacy v1 JSON as blobs too
        layer_names = [blob(b.digest, path=b.path) for b in image.blobs]
        config_name = blob(image.saved.image_id, image.raw_config)
        oci_manifest = _compact(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": {
                    "mediaType": MEDIA_CONFIG,
                    "digest": image.saved.image_id,
                    "size": len(image.raw_config),
                },
                "layers": [
                    {"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in image.blobs
                ],
            }
        )
        manifest_digest = _sha256(oci_manifest)
        blob(manifest_digest, oci_manifest)
        descriptor = {"mediaType": MEDIA_MANIFEST, "digest": manifest_digest, "size": len(oci_manifest)}
        for ref in image.saved.repo_tags:
            name, tag = _split_ref(ref)
            annotations = {
                "io.containerd.image.name": f"{_full_name(name)}:{tag}",
                "org.opencontainers.image.ref.name": tag,
            }
            descriptors.append({**descriptor, "annotations": annotations})
        if not image.saved.repo_tags:
            descriptors.append(descriptor)
        manifest.append(
            {"Config": config_name, "RepoTags": list(image.saved.repo_tags) or None, "Layers": layer_names}
        )
        tops.append(_hex(image.saved.diff_ids[-1]))
    members = list(blobs.values())
    members.append(
        _Member(
            "index.json", _compact({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": descriptors})
        )
    )
    members.append(_Member("manifest.json", _manifest_json(manifest)))
    members.append(_Member("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'))
    repositories = _repositories(built, tops)
    if repositories is not None:
        members.append(_Member("repositories", repositories))
    return members


def _write_archive(path: Path, members: Sequence[_Member]) -> None:
    entries = {m.name: m for m in members}
    for name in list(entries):
        parent = posixpath.dirname(name)
        while parent and parent not in entries:
            entries[parent] = _Member(parent)
            parent = posixpath.dirname(parent)
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK) as tar:  # type: ignore[call-overload]
        for name in sorted(entries, key=_walk_key):
            member = entries[name]
            if member.link is not None:
                tar.addfile(_info(name, tarfile.SYMTYPE, 0o777, link=member.link))
            elif member.path is not None:
                with open(member.path, "rb") as source:
                    tar.addfile(_info(name, tarfile.REGTYPE, 0o644, member.path.stat().st_size), source)
            elif member.data is not None:
                tar.addfile(_info(name, tarfile.REGTYPE, 0o644, len(member.data)), io.BytesIO(member.data))
            else:
                tar.addfile(_info(name, tarfile.DIRTYPE, 0o755))


def write_images(
    path: str | Path, images: Sequence[ImageSpec], *, layout: Layout = "classic", gzip_layers: bool = False
) -> list[SavedImage]:
    """Write a `docker save` tarball holding `images` to `path`. Layers given as Layer are written
    to a scratch directory beside `path` first (gzipped if `gzip_layers`); LayerBlobs are used
    as they are, so a big layer can be written once and shared by several tarballs."""
    path = Path(path)
    if layout not in ("classic", "oci"):
        raise ValueError(f"unknown layout {layout!r}")
    with tempfile.TemporaryDirectory(prefix=".imagebuild-", dir=path.parent) as scratch:
        written: dict[int, LayerBlob] = {}  # by id(): the same Layer object is written once

        def blob_of(layer: Layer | LayerBlob) -> LayerBlob:
            if isinstance(layer, LayerBlob):
                return layer
            if id(layer) not in written:
                written[id(layer)] = write_layer(
                    layer, Path(scratch) / f"layer{len(written)}.tar", compress=gzip_layers
                )
            return written[id(layer)]

        built = []
        for spec in images:
            blobs = tuple(blob_of(layer) for layer in spec.layers)
            config = image_config([b.diff_id for b in blobs], spec.history, spec.config_overrides)
            raw = _compact(config)
            tags = tuple(f"{name}:{tag}" for name, tag in map(_split_ref, spec.repo_tags))
            saved = SavedImage(
                image_id=_sha256(raw),
                repo_tags=tags,
                diff_ids=tuple(b.diff_id for b in blobs),
                layer_digests=tuple(b.digest for b in blobs),
                config=config,
            )
            built.append(_Built(saved, raw, blobs))
        _write_archive(path, _classic_members(built) if layout == "classic" else _oci_members(built))
    return [b.saved for b in built]


def write_docker_save(
    path: str | Path,
    layers: Sequence[Layer | LayerBlob],
    *,
    repo_tags: Sequence[str] = (),
    layout: Layout = "classic",
    gzip_layers: bool = False,
    history: Sequence[HistoryEntry | str] | None = None,
    config_overrides: Mapping[str, Any] | None = None,
) -> SavedImage:
    """Write a one-image `docker save` tarball; see ImageSpec and write_images."""
    spec = ImageSpec(layers, repo_tags, history, config_overrides)
    return write_images(path, [spec], layout=layout, gzip_layers=gzip_layers)[0]


# ---------------------------------------------------------------------------------------------
# Engine


def docker_load(client: docker.DockerClient, path: str | Path) -> list[str]:
    """`docker load` the tarball (streamed from disk); returns the loaded images' IDs, each once
    (the engine reports an image once per tag)."""
    with open(path, "rb") as stream:
        return list(dict.fromkeys(image.id for image in client.images.load(stream)))


def remove_images(client: docker.DockerClient, tags: Iterable[str]) -> None:
    """Remove images by tag, ignoring those already gone."""
    for tag in tags:
        with contextlib.suppress(docker.errors.NotFound):
            client.images.remove(tag, force=True)


def save_events(client: docker.DockerClient, image_id: str, since: float, until: float) -> int:
    """How many `docker save`s of this image the engine logged between the two times (other
    images' saves, say by tests running alongside, do not count). The API takes fractional Unix
    times as text ("seconds.nanoseconds")."""
    events = client.api.events(
        since=f"{since:.9f}", until=f"{until:.9f}", filters={"event": "save"}, decode=True
    )
    try:
        return sum(1 for event in events if event.get("id") == image_id)
    finally:
        events.close()
