"""Distilled scans: Clair gets one small layer holding only the files its detectors read.

Clair v2 reads a dozen files of a layer: the OS-release files and the package databases
(../shared/CLAIR_V2_API.md §6, "Required names"). Its findings depend on nothing else, so instead
of exporting every layer, the scan gives Clair one layer made of the image's copies of those
files, as its merged filesystem holds them:

- `from_engine`: a container is created from the image (never started) and the files are fetched
  through the engine's archive API; the container is removed on every way out.
- `from_layers` / `read_archive`: the layers of an archive are read once, in a single pass; the
  newest copy of each file is kept, whiteouts delete lower copies, and symlinks are resolved
  across layers. Whole layers never reach the disk.

The layer's name derives from the image ID and RULES_VERSION: a rescan of an unchanged image
finds it in Clair without creating a container, and a change of the rules gets a new name.
Symlinks are resolved because Clair stores a symlink entry as an empty file (§6): Debian's
`etc/os-release` -> `../usr/lib/os-release` is written as a regular file with the target's content.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import threading
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from ..errors import DockerError, FileSystemError, ScanError, UsageError
from ..models import Image, Layer
from ..names import chain_ids

# tarfile, tempfile and the archive stage are imported where they are used: a rescan names the
# distilled layer and asks Clair for it, and loading them would cost it ~10 ms.
if TYPE_CHECKING:
    from ..archive import Blob, LayerFiles
    from .engine import Engine

log = logging.getLogger(__name__)

# The union of Clair v2.1.8's detectors' file lists (CLAIR_V2_API.md §6, §8, §9). Clair v4 is not
# covered: CLAIR_V4_API.md lists no such files (claircore's scanners walk whole layers).
PATHS = (
    "etc/os-release",
    "usr/lib/os-release",
    "etc/lsb-release",
    "etc/apt/sources.list",
    "etc/alpine-release",
    "etc/oracle-release",
    "etc/centos-release",
    "etc/redhat-release",
    "etc/system-release",
    "var/lib/dpkg/status",
    "lib/apk/db/installed",
    "var/lib/rpm/Packages",
)
RULES_VERSION = "1"
"""Changes whenever PATHS or the way the layer is made changes: distilled layers are named by it."""

# Not backend.LABEL: `clair-scan down` removes everything carrying that, and would pull the
# container out from under a scan running alongside.
DISTILL_LABEL = "io.clair-scan.distill"
CHUNK = 1 << 20
# Clair refuses a wanted file over 200 MiB (§6); a bigger one is not worth carrying either.
MAX_FILE = 200 << 20
# Go's os.FileMode bits in the engine's path stat.
_MODE_DIR = 1 << 31
_MODE_SYMLINK = 1 << 27

# Files whose name is one of these are kept as well: a required path may turn out to be a
# symlink (or lie under a symlinked directory) pointing at them, and one pass cannot go back.
_BASENAMES = frozenset(posixpath.basename(p) for p in PATHS)
# Symlinks at these paths can redirect a required path (`lib` -> `usr/lib`, `var/lib/rpm` ->
# `../../usr/lib/sysimage/rpm`); others cannot, and are not kept.
_ANCESTORS = frozenset(
    "/".join(p.split("/")[:i]) for p in PATHS for i in range(1, p.count("/") + 1)
) | frozenset(PATHS)


def layer_name(image_id: str) -> str:
    """The distilled layer's Clair name: the image ID (content-addressed) and the rules' version.
    Clair v2 keeps names in a VARCHAR(128) (CLAIR_V2_API.md §7); this one has 80 characters."""
    digest = image_id.partition(":")[2] or image_id
    return f"clair-scan-distilled-{RULES_VERSION}-{digest}"


def distilled(image: Image) -> Image:
    """The image as a distilled scan sends it: one synthetic layer named by layer_name."""
    layer = Layer(0, "", layer_name(image.id), "distilled: the files Clair reads")
    return Image(image.name, image.id, (layer,), image.digests, distilled=True)


def _clean(path: str) -> str:
    """A member or link path relative to the root, `..` stopping at the root as in a chroot."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def write_layer(files: dict[str, IO[bytes]], dest: str) -> Blob:
    """The distilled layer tar: each path a regular file (mode 0644, mtime 0)."""
    import tarfile

    from ..archive import Blob

    try:
        with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in PATHS:
                source = files.get(path)
                if source is None:
                    continue
                source.seek(0, os.SEEK_END)
                info = tarfile.TarInfo(path)
                info.size = source.tell()
                info.mode = 0o644
                source.seek(0)
                tar.addfile(info, source)
        return Blob(dest, 0, os.path.getsize(dest))
    except OSError as exc:
        raise FileSystemError(f"cannot write the distilled layer to {os.path.dirname(dest)}: {exc}") from None


def _spool(stack: ExitStack, workdir: str) -> IO[bytes]:
    """A kept file's copy: in memory while small, in `workdir` once bigger (an rpm database)."""
    import tempfile

    return stack.enter_context(tempfile.SpooledTemporaryFile(CHUNK, dir=workdir))


def _one_layer(blob: Blob) -> LayerFiles:
    from ..archive import LayerFiles

    files = LayerFiles(1)
    files.put(0, blob)
    files.finish()
    return files


# ---------------------------------------------------------------------------------------------
# From the engine: a container's merged filesystem, through the archive API


def _path_stat(headers: dict[str, str]) -> dict[str, Any]:
    import base64

    raw = headers.get("x-docker-container-path-stat", "")
    try:
        found = json.loads(base64.b64decode(raw))
    except ValueError:
        raise DockerError("the engine's archive answer has no readable path stat") from None
    return found if isinstance(found, dict) else {}


_LIVE: set[_Container] = set()
_LIVE_LOCK = threading.Lock()


def remove_leftovers() -> None:
    """Remove the containers this process made and has not removed yet: a parallel scan's worker
    left behind by Ctrl-C cannot run its own cleanup."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for container in live:
        container.remove()


class _Container:
    """A container created from the image and never started, known by a name chosen before it
    exists: removal is registered first, so an interrupt at any point still removes it."""

    def __init__(self, engine: Engine, image: Image, run: str) -> None:
        import secrets

        self.engine = engine
        self.image = image
        self.name = f"clair-scan-distill-{run}-{secrets.token_hex(4)}"
        self.run = run
        self._created = threading.Event()
        self._create_thread: threading.Thread | None = None
        self._error: ScanError | None = None
        self._removed = False

    def create(self) -> None:
        # The request runs in a thread of its own: if Ctrl-C arrives while the engine creates
        # the container, removal waits for the answer, then removes what was made (a removal
        # racing the creation can leave a container the engine lists but cannot remove).
        from ..threads import start_daemon

        with _LIVE_LOCK:
            _LIVE.add(self)
        self._create_thread = start_daemon(self._create, "distill-create")
        # An Event, not join(): a join() interrupted by Ctrl-C can take the thread for ended.
        self._created.wait()
        if self._error is not None:
            raise self._error

    def _create(self) -> None:
        body = {
            "Image": self.image.id,
            # Never started; an image without a command would otherwise be refused.
            "Entrypoint": ["/clair-scan-never-started"],
            "Cmd": [],
            "Labels": {DISTILL_LABEL: self.run},
            "NetworkDisabled": True,
            "HostConfig": {"NetworkMode": "none"},
        }
        try:
            status, _, answer = self.engine.request("POST", f"/containers/create?name={self.name}", body)
            if status != 201:
                from ..dockerapi import message

                self._error = _CannotCreate(f"{status} {message(answer)}")
        except ScanError as exc:
            self._error = exc
        finally:
            self._created.set()

    def remove(self) -> bool:
        """Remove the container (once); False if the engine no longer had it, or something else
        was removing it."""
        if self._create_thread is None or self._removed:
            return True
        self._created.wait(timeout=60.0)
        with _LIVE_LOCK:
            if self._removed:
                return True
            self._removed = True
            _LIVE.discard(self)
        try:
            status, _, answer = self.engine.request("DELETE", f"/containers/{self.name}?force=1&v=1")
        except ScanError as exc:
            log.debug("cannot remove container %s: %s", self.name, exc)
            return True
        if status not in (204, 404):
            log.debug("cannot remove container %s: %s %s", self.name, status, answer[:200])
        log.debug("removed container %s (%s)", self.name, status)
        return status not in (404, 409)

    def archive_path(self, path: str) -> str:
        return f"/containers/{self.name}/archive?path={quote('/' + path)}"

    def stat(self, path: str) -> dict[str, Any] | None:
        status, headers, _ = self.engine.request("HEAD", self.archive_path(path))
        if status == 404:
            return None
        if status != 200:
            raise DockerError(f"the engine cannot stat {path} in {self.image.name}: {status}")
        return _path_stat(headers)

    def fetch(self, path: str, out: IO[bytes], workdir: str) -> bool:
        """Copy the regular file at `path` into `out`; False if it is not one."""
        import shutil
        import tarfile
        import tempfile

        with tempfile.TemporaryFile(dir=workdir) as raw:
            status, _, _ = self.engine.request("GET", self.archive_path(path), sink=_DiskSink(raw, workdir))
            if status == 404:
                return False
            if status != 200:
                raise DockerError(f"the engine cannot copy {path} out of {self.image.name}: {status}")
            raw.seek(0)
            try:
                with tarfile.open(fileobj=raw, mode="r:") as tar:
                    for member in tar:
                        if member.isfile() and member.size <= MAX_FILE:
                            source = tar.extractfile(member)
                            assert source is not None
                            shutil.copyfileobj(source, out, CHUNK)
                            return True
                        return False
            except (tarfile.TarError, EOFError) as exc:  # a copy cut short
                raise DockerError(
                    f"the engine's copy of {path} out of {self.image.name} is broken: {exc}"
                ) from None
        return False


class _CannotCreate(DockerError):
    pass


class _DiskSink:
    """Where a copied file lands: a full disk is the file system's failure, not the engine's
    (the engine's route takes any OSError for a lost connection)."""

    def __init__(self, out: IO[bytes], workdir: str) -> None:
        self._out = out
        self._workdir = workdir

    def write(self, data: bytes) -> int:
        try:
            return self._out.write(data)
        except OSError as exc:
            raise FileSystemError(f"cannot write to {self._workdir}: {exc.strerror or exc}") from None


def _block_signals() -> None:
    # Ctrl-C and SIGTERM are left to the main thread (see threads.py).
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def _fetch_all(container: _Container, workdir: str, stack: ExitStack) -> dict[str, IO[bytes]]:
    """The required files as the merged filesystem holds them, symlinks followed."""
    from concurrent.futures import ThreadPoolExecutor

    # The engine answers one request per container at a time, but asking for all the stats at
    # once still saves the round trips between them (12 HEADs: 0.14 s -> 0.10 s on a busy host).
    with ThreadPoolExecutor(len(PATHS), "distill-stat", initializer=_block_signals) as pool:
        stats = list(pool.map(container.stat, PATHS))
    found: dict[str, IO[bytes]] = {}
    by_target: dict[str, IO[bytes] | None] = {}
    for path, stat in zip(PATHS, stats, strict=True):
        if stat is None:
            log.debug("%s: absent", path)
            continue
        mode = int(stat.get("mode") or 0)
        if mode & _MODE_DIR:
            continue
        # The engine resolves a symlink within the container's root: linkTarget is absolute.
        target = _clean(str(stat.get("linkTarget") or "")) if mode & _MODE_SYMLINK else path
        if target not in by_target:
            out = _spool(stack, workdir)
            by_target[target] = out if container.fetch(target, out, workdir) else None
        if by_target[target] is not None:
            found[path] = by_target[target]  # type: ignore[assignment]
        log.debug("%s: %s", path, "copied" if by_target[target] else f"not a regular file ({stat})")
    # A HEAD's 404 does not say whether the path or the container is missing: a container
    # removed from outside while its files were copied must not read as an image without them.
    if not container.remove():
        raise DockerError(
            f"the container made to read {container.image.name} went away while its files were copied"
        )
    return found


@contextmanager
def from_engine(engine: Engine, image: Image, workdir: str, run: str | None = None) -> Iterator[LayerFiles]:
    """The distilled layer of an engine image, written into `workdir`. The container exists only
    while its files are copied. If the engine cannot create one, the image is exported with
    `docker save` and its layers are distilled as they stream (the same layer, the same name)."""
    import secrets

    dest = os.path.join(workdir, layer_name(image.id) + ".tar")
    run = run or secrets.token_hex(6)
    try:
        with ExitStack() as stack:
            container = _Container(engine, image, run)
            stack.callback(container.remove)
            try:
                container.create()
            except _CannotCreate as exc:
                log.debug(
                    "the engine cannot create a container from %s (%s): distilling its export instead",
                    image.name,
                    exc,
                )
                stack.close()
                blob = _from_export(engine, image, workdir, dest)
            else:
                log.debug("container %s created from %s", container.name, image.name)
                try:
                    files = _fetch_all(container, workdir, stack)
                except OSError as exc:  # the engine's errors are DockerErrors by now: this is the disk
                    raise FileSystemError(f"cannot write to {workdir}: {exc.strerror or exc}") from None
                blob = write_layer(files, dest)
        log.debug("distilled layer of %s: %d bytes", image.name, blob.size)
        yield _one_layer(blob)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(dest)


def files_of(tar_path: str) -> list[str]:
    """The member names of a distilled layer (for logs and tests)."""
    import tarfile

    with tarfile.open(tar_path) as tar:
        return tar.getnames()


def _from_export(engine: Engine, image: Image, workdir: str, dest: str) -> Blob:
    from .engine import exported

    with exported(engine, image, workdir) as layer_files:
        from ..clair import Deadline

        deadline = Deadline(3600.0)
        streams = (_BlobReader(layer_files.wait(layer.index, deadline.remaining())) for layer in image.layers)
        return from_layers(streams, dest, workdir)  # type: ignore[arg-type]


class _BlobReader:
    """Reads a layer of a save that may still be streaming into its spool."""

    def __init__(self, blob: Blob) -> None:
        self._blob = blob
        self._pos = 0
        self._handle = open(blob.path, "rb")  # noqa: SIM115 - closed when read to the end

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        if self._pos >= self._blob.size:
            self._handle.close()
            return b""
        ready = self._blob.available(self._pos)
        want = ready - self._pos if size < 0 else min(size, ready - self._pos)
        data = os.pread(self._handle.fileno(), want, self._blob.offset + self._pos)
        self._pos += len(data)
        return data


# ---------------------------------------------------------------------------------------------
# From layer tars, in one pass


@dataclass
class _Changes:
    """What one layer does to the files Clair reads."""

    files: dict[str, IO[bytes]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # path -> target, relative to the root
    dirs: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    opaque: set[str] = field(default_factory=set)


def _wanted(path: str) -> bool:
    return path in _ANCESTORS or posixpath.basename(path) in _BASENAMES


def distill_layer(stream: IO[bytes], workdir: str, stack: ExitStack, seekable: bool = False) -> _Changes:
    """Read one layer tar (gzipped or not) to its end, keeping what the distilled layer may need.
    A `seekable` plain tar is walked header to header: the contents of other files are skipped
    unread."""
    import shutil
    import tarfile

    changes = _Changes()
    opened = (
        tarfile.open(fileobj=stream, mode="r:")  # noqa: SIM115 - entered just below
        if seekable
        else tarfile.open(fileobj=stream, mode="r|*", bufsize=CHUNK)  # noqa: SIM115
    )
    with opened as tar:
        for member in tar:
            path = _clean(member.name)
            base = posixpath.basename(path)
            parent = posixpath.dirname(path)
            if base == ".wh..wh..opq":
                changes.opaque.add(parent)
            elif base.startswith(".wh."):
                changes.deleted.add(posixpath.join(parent, base[len(".wh.") :]))
            elif not _wanted(path):
                continue
            elif member.isdir():
                changes.dirs.add(path)
            elif member.issym():
                # join() drops `parent` when the target is absolute.
                changes.links[path] = _clean(posixpath.join(parent, member.linkname))
            elif member.islnk():
                source = changes.files.get(_clean(member.linkname))
                if source is not None:
                    changes.files[path] = source
            elif member.isfile() and member.size <= MAX_FILE:
                handle = tar.extractfile(member)
                assert handle is not None
                out = _spool(stack, workdir)
                shutil.copyfileobj(handle, out, CHUNK)
                changes.files[path] = out
    return changes


_Entry = tuple[str, Any]  # ("file", IO[bytes]) or ("link", target)


def _beneath(path: str, roots: Iterable[str]) -> bool:
    return any(root == "" or path.startswith(root + "/") for root in roots)


def merge(layers: Iterable[_Changes]) -> dict[str, IO[bytes]]:
    """The required files of the filesystem the layers make, lowest first, symlinks resolved."""
    state: dict[str, _Entry] = {}
    for changes in layers:
        # A layer's whiteouts delete what lower layers hold; its own entries then go on top.
        replaced = set(changes.files) | set(changes.links)
        state = {
            p: e
            for p, e in state.items()
            if p not in changes.deleted
            and not _beneath(p, changes.deleted | changes.opaque | replaced)
            and not (p in changes.dirs and e[0] != "dir")
        }
        state.update({p: ("file", f) for p, f in changes.files.items()})
        state.update({p: ("link", t) for p, t in changes.links.items()})
    found = {}
    for path in PATHS:
        resolved = _resolve(path, state)
        if resolved is not None:
            found[path] = resolved
    return found


def _resolve(path: str, state: dict[str, _Entry]) -> IO[bytes] | None:
    for _ in range(40):  # as Linux's limit on symlinks followed in one lookup
        parts = path.split("/")
        for i in range(len(parts)):
            here = "/".join(parts[: i + 1])
            entry = state.get(here)
            if entry is None:
                continue
            kind, value = entry
            if kind == "link":
                path = _clean(posixpath.join(value, *parts[i + 1 :]))
                break
            if kind == "file":
                return value if i == len(parts) - 1 else None
        else:
            return None
    return None


def from_layers(streams: Iterable[IO[bytes]], dest: str, workdir: str) -> Blob:
    """Distil layer tars given lowest first into the layer tar `dest`."""
    with ExitStack() as stack:
        return write_layer(merge(distill_layer(s, workdir, stack) for s in streams), dest)


# ---------------------------------------------------------------------------------------------
# From a `docker save` archive (classic or OCI layout, the archive and its layers gzipped or not)


@dataclass(frozen=True)
class DistilledArchiveImage:
    image: Image
    """Already distilled (see `distilled`)."""
    files: LayerFiles


class _Prefixed:
    """A stream with bytes already read from it put back in front."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0 or size >= len(self._head):
                head, self._head = self._head, b""
                return head + self._rest.read(-1 if size < 0 else size - len(head))
            head, self._head = self._head[:size], self._head[size:]
            return head
        return self._rest.read(size)


class _Window:
    """A member of a plain archive on disk as a file of its own, seekable (read with pread, so
    the archive's own reader keeps its place)."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd = fd
        self._offset = offset
        self._size = size
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        left = self._size - self._pos
        size = left if size < 0 else min(size, left)
        data = os.pread(self._fd, size, self._offset + self._pos) if size > 0 else b""
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos


def _is_layer(head: bytes) -> bool:
    empty_tar = len(head) >= 1024 and not head.strip(b"\0")
    return head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar" or empty_tar


def read_archive(path: str, workdir: str, stack: ExitStack) -> list[DistilledArchiveImage]:
    """Every image of an archive, each as its distilled layer written into `workdir`; the archive
    is read once, front to back."""
    import tarfile

    try:
        return _read_archive(path, workdir, stack)
    except FileNotFoundError:
        raise UsageError(f"archive not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"archive is a directory: {path}") from None
    except (tarfile.TarError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path} is not a readable docker save archive: {exc}") from None
    except OSError as exc:
        raise FileSystemError(f"cannot read {path}: {exc}") from None


def _read_archive(path: str, workdir: str, stack: ExitStack) -> list[DistilledArchiveImage]:
    import tarfile

    from ..archive import history_from_config

    documents: dict[str, Any] = {}
    layers: dict[str, _Changes] = {}
    links: dict[str, str] = {}
    with open(path, "rb") as raw:
        # A plain archive on disk is walked by seeking; a gzipped one can only be streamed.
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        with tarfile.open(fileobj=raw, mode="r|*" if gzipped else "r:", bufsize=CHUNK) as tar:
            for member in tar:
                name = _clean(member.name)
                if member.issym() or member.islnk():
                    base = posixpath.dirname(name) if member.issym() else ""
                    links[name] = _clean(posixpath.join(base, member.linkname))
                    continue
                if not member.isfile():
                    continue
                handle: Any = (
                    tar.extractfile(member)
                    if gzipped
                    else _Window(raw.fileno(), member.offset_data, member.size)
                )
                head = handle.read(1024)
                if _is_layer(head):
                    if gzipped:
                        layers[name] = distill_layer(_Prefixed(head, handle), workdir, stack)  # type: ignore[arg-type]
                    else:
                        handle.seek(0)
                        layers[name] = distill_layer(handle, workdir, stack, seekable=head[:2] != b"\x1f\x8b")
                elif head.lstrip()[:1] in (b"{", b"[") and member.size <= 16 << 20:
                    documents[name] = json.loads(head + handle.read())
    found = []
    for config_name, layer_names, tags in _entries(documents, links):
        config = documents[_follow(config_name, links)]
        diff_ids = list(config["rootfs"]["diff_ids"])
        if len(diff_ids) != len(layer_names) or not diff_ids:
            raise ValueError(f"{config_name}: layer count does not match the manifest")
        created_by = history_from_config(config.get("history") or [], len(diff_ids))
        image = Image(
            name=tags[0] if tags else os.path.basename(path),
            id="sha256:" + posixpath.basename(config_name).removesuffix(".json"),
            layers=tuple(
                Layer(i, d, c, created_by[i])
                for i, (d, c) in enumerate(zip(diff_ids, chain_ids(diff_ids), strict=True))
            ),
        )
        missing = [n for n in layer_names if _follow(n, links) not in layers]
        if missing:
            raise ValueError(f"layer {missing[0]} is missing from the archive")
        dest = os.path.join(workdir, layer_name(image.id) + ".tar")
        blob = write_layer(merge(layers[_follow(n, links)] for n in layer_names), dest)
        found.append(DistilledArchiveImage(distilled(image), _one_layer(blob)))
    return found


def _follow(name: str, links: dict[str, str]) -> str:
    name = _clean(name)
    for _ in range(16):
        if name not in links:
            return name
        name = links[name]
    return name


def _entries(documents: dict[str, Any], links: dict[str, str]) -> list[tuple[str, list[str], list[str]]]:
    """(config member, layer members, tags) of each image, from manifest.json or index.json."""
    entries: list[tuple[str, list[str], list[str]]] = []
    if "manifest.json" in documents:
        for entry in documents["manifest.json"]:
            entries.append((entry["Config"], list(entry["Layers"]), list(entry.get("RepoTags") or [])))
    elif "index.json" in documents:

        def blob(desc: dict[str, Any]) -> str:
            algo, _, hexdigest = str(desc["digest"]).partition(":")
            return f"blobs/{algo}/{hexdigest}"

        for desc in documents["index.json"].get("manifests", []):
            manifest = documents[_follow(blob(desc), links)]
            while "manifests" in manifest:  # an image index: take the first (platform) manifest
                desc = manifest["manifests"][0] | {"annotations": desc.get("annotations", {})}
                manifest = documents[_follow(blob(desc), links)]
            notes = desc.get("annotations") or {}
            tag = notes.get("io.containerd.image.name") or notes.get("org.opencontainers.image.ref.name")
            layers = [blob(d) for d in manifest["layers"]]
            entries.append((blob(manifest["config"]), layers, [tag] if tag else []))
    else:
        raise ValueError("neither manifest.json nor index.json found")
    if not entries:
        raise ValueError("the archive holds no image")
    return entries
