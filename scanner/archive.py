"""Reading `docker save` output: where each layer's tar lies, from a live stream or from a file.

A live save is copied once into a spool file while its tar headers are read. A layer is handed
out as soon as its header shows where it lies, and its bytes can be read as they reach the disk:
Clair downloads a layer while the engine is still sending it, and later layers after it. Layers
are never extracted: they are served as byte ranges of the spool (or archive) file.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import logging
import os
import posixpath
import re
import socket
import tarfile
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import DockerError, FileSystemError, ScanError, UsageError
from .models import Image, Layer
from .names import chain_ids

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_V1_JSON = re.compile(r"^([0-9a-f]{64})/json$")
_BLOB = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")


class Arrival:
    """How much of a file being written is on disk; readers wait for the bytes they need."""

    def __init__(self) -> None:
        self._written = 0
        self._ended = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()

    def advance(self, written: int) -> None:
        with self._cond:
            self._written = written
            self._cond.notify_all()

    def end(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._ended = True
            self._error = error
            self._cond.notify_all()

    def wait_past(self, position: int) -> int:
        """The file's length on disk once it is more than `position`; raises if it never will be."""
        with self._cond:
            while self._written <= position:
                if self._ended:
                    raise self._error or DockerError("docker save ended before the layer did")
                self._cond.wait()
            return self._written


@dataclass(frozen=True)
class Blob:
    """A byte range of a file on disk: one layer tar inside a saved image."""

    path: str
    offset: int
    size: int
    # Set while a live save is still being written: the bytes are read as they arrive.
    arrival: Arrival | None = field(default=None, compare=False, repr=False)

    def available(self, done: int) -> int:
        """How many of the blob's bytes can be read now, more than `done`: waits for them to
        arrive, and raises the save's error if they never will."""
        if self.arrival is None:
            return self.size
        return min(self.arrival.wait_past(self.offset + done) - self.offset, self.size)


class LayerFiles:
    """Blobs of one image by layer index, published by a producer thread, awaited by consumers."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._blobs: dict[int, Blob] = {}
        self._error: BaseException | None = None
        self._finished = False
        self._cond = threading.Condition()

    def put(self, index: int, blob: Blob) -> None:
        with self._cond:
            self._blobs[index] = blob
            self._cond.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._finished = True
            self._error = error
            self._cond.notify_all()

    def check(self) -> None:
        """Raise the producer's error, if it failed."""
        with self._cond:
            if self._error is not None:
                raise self._error

    def wait(self, index: int, timeout: float) -> Blob:
        end = time.monotonic() + timeout
        with self._cond:
            while index not in self._blobs:
                if self._error is not None:
                    raise self._error
                if self._finished:
                    raise DockerError(f"the saved image has no data for layer {index + 1}")
                left = end - time.monotonic()
                if left <= 0:
                    raise DockerError(f"docker save did not deliver layer {index + 1} in time")
                # Short waits keep Ctrl-C responsive in the main thread.
                self._cond.wait(min(left, 0.5))
            return self._blobs[index]


@dataclass(frozen=True)
class SocketBody:
    """A response body read straight off its socket until the peer closes it (HTTP/1.0): `head`,
    the bytes that came with the headers, then the rest."""

    head: bytes
    sock: socket.socket


class _ChunkCopier:
    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)

    def pull(self, fd: int) -> int:
        try:
            chunk = next(self._chunks, b"")
        except Exception as exc:
            raise DockerError(f"docker save failed: {exc}") from exc
        _write_all(fd, chunk)
        return len(chunk)

    def close(self) -> None:
        pass


class _SocketCopier:
    """Moves a socket's bytes into the file by splice(2), through a pipe, never through Python.
    Alone that is no faster than reading and writing, but in a scan, where Clair indexes
    alongside on the same CPUs, a 100 MB stream took 70 ms instead of 89 ms. Where there is no
    splice (not Linux), it reads and writes."""

    def __init__(self, body: SocketBody) -> None:
        self._head = body.head
        self._sock = body.sock
        self._pipe: tuple[int, int] | None = None

    def pull(self, fd: int) -> int:
        if self._head:
            head, self._head = self._head, b""
            _write_all(fd, head)
            return len(head)
        if not hasattr(os, "splice"):
            data = self._recv()
            _write_all(fd, data)
            return len(data)
        if self._pipe is None:
            import fcntl  # Linux only, as splice is

            self._pipe = os.pipe()
            with contextlib.suppress(OSError, AttributeError):  # a bigger pipe: fewer, larger moves
                fcntl.fcntl(self._pipe[1], fcntl.F_SETPIPE_SZ, CHUNK)
        try:
            moved = os.splice(self._sock.fileno(), self._pipe[1], CHUNK)
        except OSError as exc:
            raise DockerError(f"docker save failed: {exc}") from exc
        left = moved
        while left:  # errors here are the disk's
            left -= os.splice(self._pipe[0], fd, left)
        return moved

    def _recv(self) -> bytes:
        try:
            return self._sock.recv(CHUNK)
        except OSError as exc:
            raise DockerError(f"docker save failed: {exc}") from exc

    def close(self) -> None:
        for pipe_fd in self._pipe or ():
            os.close(pipe_fd)
        self._pipe = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Spool:
    """A seekable reader over a stream that is being copied to `path`: tarfile reads headers through
    it, and every byte it pulls from the stream lands in the file first."""

    def __init__(self, source: Iterable[bytes] | SocketBody, path: str, stop: threading.Event) -> None:
        self.name = path
        self._copier = _SocketCopier(source) if isinstance(source, SocketBody) else _ChunkCopier(source)
        self._stop = stop
        self._out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._in = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._written = 0
        self._pos = 0
        self._exhausted = False
        self.arrival = Arrival()

    def _fill(self, upto: int) -> None:
        # Readers of the file (the layer server) may take each byte as soon as it is written.
        while self._written < upto and not self._exhausted:
            moved = 0 if self._stop.is_set() else self._copier.pull(self._out)
            if moved:
                self._written += moved
                self.arrival.advance(self._written)
            else:
                self._exhausted = True

    def drain(self) -> int:
        """Copy whatever the stream still holds (padding after the tar's end marker); returns the
        stream's length."""
        self._fill(1 << 62)
        return self._written

    def read(self, size: int = -1) -> bytes:
        self._fill(1 << 62 if size < 0 else self._pos + size)
        self._in.seek(self._pos)
        data = self._in.read(size)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._pos
        elif whence == os.SEEK_END:
            self.drain()
            offset += self._written
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._copier.close()
        os.close(self._out)
        self._in.close()


def _read_json(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Any:
    handle = tar.extractfile(member)
    if handle is None:
        raise ValueError(f"{member.name} is not a file")
    return json.loads(handle.read())


class _TarIndex:
    """Regular files and symlinks of a saved image, by member name."""

    def __init__(self, path: str, arrival: Arrival | None = None) -> None:
        self.path = path
        self.arrival = arrival
        self.files: dict[str, Blob] = {}
        self.links: dict[str, str] = {}

    def add(self, member: tarfile.TarInfo) -> None:
        name = posixpath.normpath(member.name)
        if member.isfile():
            self.files[name] = Blob(self.path, member.offset_data, member.size, self.arrival)
        elif member.issym() or member.islnk():
            # Docker writes a repeated layer as a relative symlink to its first copy.
            base = posixpath.dirname(name) if member.issym() else ""
            self.links[name] = posixpath.normpath(posixpath.join(base, member.linkname))

    def resolve(self, name: str) -> Blob | None:
        name = posixpath.normpath(name)
        for _ in range(16):
            if name in self.files:
                return self.files[name]
            if name not in self.links:
                return None
            name = self.links[name]
        return None


class _LayerMatcher:
    """Works out which member holds which layer while a save streams, before manifest.json (which
    Docker writes last) arrives: OCI blobs are named by digest, and classic `<id>/json` files name
    their parent, so a layer's depth in that chain is its index. The manifest settles the rest and
    must agree with what was matched early."""

    def __init__(self, image: Image, index: _TarIndex, files: LayerFiles) -> None:
        self._image = image
        self._index = index
        self._files = files
        self._parents: dict[str, str] = {}
        self._early: dict[int, str] = {}
        self._manifest: list[str] | None = None

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        self._index.add(member)
        name = posixpath.normpath(member.name)
        v1 = _V1_JSON.match(name)
        if v1 and member.isfile():
            self._parents[v1.group(1)] = str(_read_json(tar, member).get("parent") or "")
        elif name == "manifest.json" and member.isfile():
            self._manifest = _manifest_layers(_read_json(tar, member), self._image.id)
        self._publish()

    def finish(self) -> None:
        self._publish()
        missing = [i for i in range(self._files.count) if i not in self._early]
        if missing:
            raise DockerError(f"docker save output has no layer {missing[0] + 1} of the image")

    def _depths(self) -> dict[int, str]:
        depth: dict[str, int] = {}
        changed = True
        while changed:
            changed = False
            for v1_id, parent in self._parents.items():
                if v1_id in depth:
                    continue
                if not parent:
                    depth[v1_id] = 0
                elif parent in depth:
                    depth[v1_id] = depth[parent] + 1
                else:
                    continue
                changed = True
        return {d: f"{v1_id}/layer.tar" for v1_id, d in depth.items()}

    def _candidates(self) -> dict[int, str]:
        if self._manifest is not None:
            return dict(enumerate(self._manifest))
        found = self._depths()
        for layer in self._image.layers:
            algo, _, hexdigest = layer.diff_id.partition(":")
            blob = f"blobs/{algo}/{hexdigest}"
            if layer.index not in found and (blob in self._index.files or blob in self._index.links):
                found[layer.index] = blob
        return found

    def _publish(self) -> None:
        for position, name in self._candidates().items():
            if position >= self._files.count:
                raise DockerError("docker save output has more layers than the image")
            if position in self._early:
                if self._early[position] != name and self._index.resolve(name) != self._index.resolve(
                    self._early[position]
                ):
                    raise DockerError("docker save output does not match the image's layers")
                continue
            blob = self._index.resolve(name)
            if blob is not None:
                self._early[position] = name
                self._files.put(position, blob)


def _manifest_layers(manifest: Any, image_id: str) -> list[str]:
    entries = manifest if isinstance(manifest, list) else []
    hexid = image_id.partition(":")[2]
    for entry in entries:
        if hexid and hexid in str(entry.get("Config", "")):
            return [str(x) for x in entry.get("Layers", [])]
    if len(entries) == 1:
        return [str(x) for x in entries[0].get("Layers", [])]
    raise DockerError("docker save output has no manifest for the image")


def stream_save(
    source: Iterable[bytes] | SocketBody,
    image: Image,
    spool_path: str,
    files: LayerFiles,
    stop: threading.Event,
) -> None:
    """Copy a live `docker save` stream to `spool_path`, publishing each layer into `files` as soon
    as its place in the stream is known. Runs in its own thread; any failure is handed to the
    waiting consumer, and to whoever still reads a layer that will now never be complete."""
    error: BaseException | None = None
    spool: _Spool | None = None
    try:
        spool = _Spool(source, spool_path, stop)
        matcher = _LayerMatcher(image, _TarIndex(spool_path, spool.arrival), files)
        with tarfile.open(fileobj=spool, mode="r:") as tar:  # type: ignore[call-overload]
            for member in tar:
                matcher.add(member, tar)
        if not stop.is_set():
            # Read the stream to its end so the engine sees a complete transfer.
            log.debug("docker save stream ended after %d bytes", spool.drain())
            matcher.finish()
    except ScanError as exc:
        error = exc
    except OSError as exc:
        error = FileSystemError(f"cannot write the image to {os.path.dirname(spool_path)}: {exc}")
    except tarfile.TarError as exc:
        error = DockerError(f"docker save produced an unreadable archive: {exc}")
    except BaseException as exc:
        error = DockerError(f"docker save failed: {exc}")
    finally:
        if spool is not None:
            spool.close()
        files.finish(error)
        if spool is not None:
            spool.arrival.end(error)


# ---------------------------------------------------------------------------------------------
# Archives on disk: `clair-scan scan --archive FILE`


@dataclass(frozen=True)
class ArchiveImage:
    image: Image
    files: LayerFiles


def _plain_tar(path: str, workdir: str) -> str:
    """The archive as a plain tar on disk: itself, or a decompressed copy of a gzipped one."""
    with open(path, "rb") as raw:
        magic = raw.read(2)
    if magic != b"\x1f\x8b":
        return path
    plain = os.path.join(workdir, "archive.tar")
    with gzip.open(path, "rb") as src:
        out = _create(plain)
        try:
            while chunk := src.read(CHUNK):
                try:
                    _write_all(out, chunk)
                except OSError as exc:
                    raise _cannot_write(plain, exc) from None
        finally:
            os.close(out)
    return plain


def _create(path: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise _cannot_write(path, exc) from None


def _cannot_write(path: str, exc: OSError) -> FileSystemError:
    """A failed write names the file written (a temp file, not the archive being read)."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    hint = "free space there, or point TMPDIR at a larger file system" if full else None
    return FileSystemError(f"cannot write {path}: {exc.strerror or exc}", hint=hint)


def read_archive(path: str, workdir: str, platform: str | None = None) -> list[ArchiveImage]:
    """Every image in a `docker save` archive, classic or OCI layout, layers gzipped or not; of a
    multi-platform image, the manifest for `platform`."""
    try:
        tar_path = _plain_tar(path, workdir)
        index = _TarIndex(tar_path)
        with tarfile.open(tar_path, mode="r:") as tar:
            for member in tar:
                index.add(member)
            return _archive_images(tar, index, os.path.basename(path), platform)
    except FileNotFoundError:
        raise UsageError(f"archive not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"archive is a directory: {path}") from None
    except ScanError:
        raise
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path} is not a readable docker save archive: {exc}") from None
    except OSError as exc:
        raise FileSystemError(f"cannot read {path}: {exc}") from None


def _blob_json(tar: tarfile.TarFile, index: _TarIndex, name: str) -> Any:
    blob = index.resolve(name)
    if blob is None:
        raise ValueError(f"missing {name}")
    handle = tar.fileobj
    assert handle is not None
    handle.seek(blob.offset)
    return json.loads(handle.read(blob.size))


def _archive_images(
    tar: tarfile.TarFile, index: _TarIndex, fallback_name: str, platform: str | None
) -> list[ArchiveImage]:
    entries: list[tuple[str, list[str], list[str]]] = []  # (config member, layer members, tags)
    if "manifest.json" in index.files:
        for entry in _blob_json(tar, index, "manifest.json"):
            entries.append((entry["Config"], list(entry["Layers"]), list(entry.get("RepoTags") or [])))
    elif "index.json" in index.files:
        for desc in _blob_json(tar, index, "index.json").get("manifests", []):
            entries.append(_oci_entry(tar, index, desc, platform, fallback_name))
    else:
        raise ValueError("neither manifest.json nor index.json found")
    if not entries:
        raise ValueError("the archive holds no image")
    images = []
    for config_name, layer_names, tags in entries:
        config = _blob_json(tar, index, config_name)
        diff_ids = list(config["rootfs"]["diff_ids"])
        if len(diff_ids) != len(layer_names) or not diff_ids:
            raise ValueError(f"{config_name}: layer count does not match the manifest")
        created_by = history_from_config(config.get("history") or [], len(diff_ids))
        blobs = [index.resolve(name) for name in layer_names]
        for name, found in zip(layer_names, blobs, strict=True):
            if found is None:
                raise ValueError(f"layer {name} is missing from the archive")
        layers = tuple(
            Layer(i, d, c, created_by[i], _compressed_digest(tar, name, blob))
            for i, (d, c, name, blob) in enumerate(
                zip(diff_ids, chain_ids(diff_ids), layer_names, blobs, strict=True)
            )
        )
        config_blob = index.resolve(config_name)
        assert config_blob is not None
        config_digest = "sha256:" + posixpath.basename(config_name).removesuffix(".json")
        image = Image(name=tags[0] if tags else fallback_name, id=config_digest, layers=layers)
        files = LayerFiles(len(layers))
        for i, blob in enumerate(blobs):
            assert blob is not None
            files.put(i, blob)
        files.finish()
        images.append(ArchiveImage(image, files))
    return images


def _compressed_digest(tar: tarfile.TarFile, name: str, blob: Blob | None) -> str:
    """The digest of a compressed layer blob's bytes ("" for a plain tar, whose digest is its
    diff ID): an OCI blob is named by it, any other is hashed."""
    handle = tar.fileobj
    assert handle is not None and blob is not None
    handle.seek(blob.offset)
    head = handle.read(4)
    if not (head.startswith(b"\x1f\x8b\x08") or head == b"\x28\xb5\x2f\xfd"):
        return ""
    named = _BLOB.match(name)
    if named:
        return "sha256:" + named.group(1)
    handle.seek(blob.offset)
    digest = hashlib.sha256()
    left = blob.size
    while left > 0:
        chunk = handle.read(min(CHUNK, left))
        if not chunk:
            raise ValueError(f"layer {name} is cut short")
        digest.update(chunk)
        left -= len(chunk)
    return "sha256:" + digest.hexdigest()


def _oci_entry(
    tar: tarfile.TarFile, index: _TarIndex, desc: dict[str, Any], platform: str | None, fallback_name: str
) -> tuple[str, list[str], list[str]]:
    from .sources import platforms

    def member(d: dict[str, Any]) -> str:
        algo, _, hexdigest = str(d["digest"]).partition(":")
        return f"blobs/{algo}/{hexdigest}"

    manifest = _blob_json(tar, index, member(desc))
    annotations = desc.get("annotations") or {}
    while "manifests" in manifest:  # an image index: the manifest for the platform
        desc = platforms.choose(manifest, platform, fallback_name)
        manifest = _blob_json(tar, index, member(desc))
    for i, layer in enumerate(manifest["layers"]):
        platforms.check_layer_type(str(layer.get("mediaType", "")), fallback_name, i)
    tag = annotations.get("io.containerd.image.name") or annotations.get("org.opencontainers.image.ref.name")
    return member(manifest["config"]), [member(d) for d in manifest["layers"]], [tag] if tag else []


def history_from_config(history: list[dict[str, Any]], count: int) -> list[str]:
    """`created_by` of each layer from an image config's history, skipping empty-layer steps."""
    steps = [str(h.get("created_by", "")) for h in history if not h.get("empty_layer")]
    return steps if len(steps) == count else [""] * count
