"""The indexer: manifests in, index reports out (cc:libindex, cc:indexer/controller).

Each layer is downloaded as claircore's fetcher does it (cc:libindex/fetcher.go: a plain GET with
the manifest's headers, Go's client through clairsim.fetch, only 200 accepted, the Content-Type
checked against the magic bytes, the bytes as received hashed and compared with the layer's
digest), decompressed into a temporary file, and read for its distribution and package
databases (dpkg, apk, rpm; the tar walk and the rpm query come from clairsim). Layers already
scanned under the current indexer state are not fetched again.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from clairsim import detect, tarstream
from clairsim.fetch import DownloadRecord, FetchError, open_layer

from .model import Distribution, IdTable, LayerSpec, Manifest, Package, sorted_map

DPKG_DB = "var/lib/dpkg/status"
APK_DB = "lib/apk/db/installed"
RPM_DB = "var/lib/rpm/Packages"
# Scanner names and versions: the indexer state is their md5 (cc:libindex/libindex.go).
SCANNERS = ("dpkg:4", "apk:5", "rpm:10", "os-release:2", "alpine:3")

# The four Content-Types that leave the decision to the magic bytes (cc:libindex/fetcher.go).
_SNIFFED = ("text/plain", "application/octet-stream", "binary/octet-stream")
_GZIP_TYPES = ("application/gzip", "application/x-gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip")


class IndexFailure(Exception):
    """Indexing failed: `status` is what POST answers (400 for a layer that is not a tar, else 500)."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class _NotATar(Exception):
    pass


# --- one layer --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerScan:
    """What the scanners found in one layer: its distribution and each package database's content."""

    distribution: Distribution | None
    databases: dict[str, tuple[Package, ...]]


def _compression_of(head: bytes) -> str:
    if len(head) < 4:
        return "none"
    if head.startswith(b"\x1f\x8b\x08"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if head.startswith(b"BZh"):
        return "bzip2"
    return "none"


def _expected_compression(content_type: str | None) -> str | None:
    """What the header says the body is; None: let the magic bytes decide."""
    if content_type is None or content_type in _SNIFFED:
        return None
    if content_type in _GZIP_TYPES or content_type.endswith(".tar+gzip"):
        return "gzip"
    if content_type == "application/zstd" or content_type.endswith(".tar+zstd"):
        return "zstd"
    if content_type == "application/x-tar" or content_type.endswith(".tar"):
        return "none"
    raise IndexFailure(f"fetcher: unknown content-type {content_type!r}")


def _header(headers: dict[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def fetch_layer(layer: LayerSpec, record: DownloadRecord, spool_dir: str) -> str:
    """Download `layer` into an uncompressed tar file under `spool_dir`; returns its path."""
    uri = urllib.parse.urlsplit(layer.uri)
    if not layer.uri or not uri.scheme or not (uri.netloc or uri.path.startswith("/")):
        raise IndexFailure(f"fetcher: unable to parse uri {layer.uri!r}")
    if uri.scheme not in ("http", "https"):
        raise IndexFailure(f'fetcher: unsupported protocol scheme "{uri.scheme}"')
    try:
        stream = open_layer(layer.uri, layer.headers, record)
    except FetchError as err:
        if err.status is None:
            raise IndexFailure(f"fetcher: {err}") from None
        raise IndexFailure(f"fetcher: unexpected status code: {err.status}") from None
    with contextlib.closing(stream):
        if record.status != 200:
            body = stream.read(256)
            raise IndexFailure(f"fetcher: unexpected status code: {record.status} (body starts: {body!r})")
        algo, _, want = layer.hash.partition(":")
        digest = hashlib.new(algo)
        raw_path = os.path.join(spool_dir, "fetched")
        with open(raw_path, "wb") as raw:
            head = b""
            while chunk := stream.read(1 << 20):
                if len(head) < 4:
                    head += chunk[:4]
                digest.update(chunk)
                raw.write(chunk)
    detected = _compression_of(head)
    expected = _expected_compression(_header(record.response_headers, "Content-Type"))
    if expected is not None and expected != detected:
        raise IndexFailure(f"fetcher: mismatched compression: header says {expected}, content is {detected}")
    if digest.hexdigest() != want:
        raise IndexFailure(f'fetcher: validation failed: got "{digest.hexdigest()}", expected "{want}"')
    if detected == "none":
        return raw_path
    if detected == "bzip2":
        raise IndexFailure("fetcher: unsupported compression: bzip2")
    if detected == "zstd":
        raise IndexFailure("fetcher: zstd layers are not supported by this simulator")
    tar_path = os.path.join(spool_dir, "layer.tar")
    with gzip.open(raw_path, "rb") as source, open(tar_path, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
    os.unlink(raw_path)
    return tar_path


def _stanzas(data: bytes) -> list[dict[str, str]]:
    """RFC 822-style stanzas (dpkg status): `Key: value`, continuation lines, blank-line separated."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in detect.scan_lines(data):
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
        elif line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def dpkg_packages(data: bytes) -> tuple[Package, ...]:
    """Binary packages with their source package (`Source: name (version)`; the binary's own
    name and version when absent)."""
    found: dict[Package, None] = {}
    for stanza in _stanzas(data):
        name, version = stanza.get("Package", ""), stanza.get("Version", "")
        if not name or not version:
            continue
        source_name, _, rest = stanza.get("Source", name).partition(" (")
        source_version = rest.rstrip(")") if rest else version
        package = Package(
            name, version, "binary", stanza.get("Architecture", ""), source_name, source_version
        )
        found[package] = None
    return tuple(found)


def apk_packages(data: bytes) -> tuple[Package, ...]:
    found: dict[Package, None] = {}
    fields: dict[str, str] = {}

    def flush() -> None:
        if fields.get("P") and fields.get("V"):
            origin = fields.get("o", "")
            package = Package(
                fields["P"], fields["V"], "binary", fields.get("A", ""), origin, fields["V"] if origin else ""
            )
            found[package] = None
        fields.clear()

    for line in detect.scan_lines(data):
        if not line:
            flush()
        elif len(line) > 2 and line[1] == ":":
            fields[line[0]] = line[2:]
    flush()
    return tuple(found)


def rpm_packages(files: detect.Files) -> tuple[Package, ...]:
    return tuple(Package(p.name, p.version) for p in detect.list_rpm(files))


def _os_release(files: detect.Files) -> dict[str, str]:
    values: dict[str, str] = {}
    for path in ("usr/lib/os-release", "etc/os-release"):  # etc/ overrides, when it is a real file
        for line in detect.scan_lines(files.get(path, b"")):
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def detect_distribution(files: detect.Files) -> Distribution | None:
    release = files.get("etc/alpine-release", b"").decode("utf-8", "replace").strip()
    if release:
        version_id = ".".join(release.split(".")[:2])
        return Distribution(
            "alpine", "Alpine Linux", version_id=version_id, pretty_name=f"Alpine Linux v{version_id}"
        )
    values = _os_release(files)
    did, version_id = values.get("ID", ""), values.get("VERSION_ID", "")
    if not did:
        return None
    if did == "alpine":
        version_id = ".".join(version_id.split(".")[:2])
    return Distribution(
        did=did,
        name=values.get("NAME", ""),
        version=values.get("VERSION", ""),
        version_code_name=values.get("VERSION_CODENAME", ""),
        version_id=version_id,
        pretty_name=values.get("PRETTY_NAME", ""),
    )


def scan_layer(tar_path: str) -> LayerScan:
    try:
        with open(tar_path, "rb") as handle:
            files = tarstream.extract_files(handle, detect.REQUIRED_FILES)  # type: ignore[arg-type]
    except tarstream.ExtractError:
        raise _NotATar() from None
    databases: dict[str, tuple[Package, ...]] = {}
    if DPKG_DB in files:
        databases[DPKG_DB] = dpkg_packages(files[DPKG_DB])
    if APK_DB in files:
        databases[APK_DB] = apk_packages(files[APK_DB])
    if RPM_DB in files:
        databases[RPM_DB] = rpm_packages(files)
    return LayerScan(detect_distribution(files), databases)


# --- coalescing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    package_db: str
    introduced_in: str
    distribution: Distribution | None


def coalesce(layers: list[tuple[str, LayerScan]]) -> dict[Package, Environment]:
    """The image's packages: per package database, the content of the last layer that holds it;
    a package was introduced by the layer from which on it has been in that database without a
    break. The last distribution found applies to all."""
    distribution = None
    for _, scan in layers:
        distribution = scan.distribution or distribution
    result: dict[Package, Environment] = {}
    for db in (DPKG_DB, APK_DB, RPM_DB):
        since: dict[Package, str] = {}
        for digest, scan in layers:
            if db not in scan.databases:
                continue
            since = {package: since.get(package, digest) for package in scan.databases[db]}
        for package, digest in since.items():
            result[package] = Environment(db, digest, distribution)
    return result


# --- the index --------------------------------------------------------------------------------


@dataclass
class IndexRecord:
    manifest: Manifest
    state: str
    indexer_state: str
    err: str = ""
    packages: dict[Package, Environment] = field(default_factory=dict)


class Indexer:
    def __init__(
        self, ids: IdTable, on_download: Callable[[DownloadRecord], None], indexer_state: str
    ) -> None:
        self.ids = ids
        self.on_download = on_download
        self.state = indexer_state
        self.scanner_failure: str | None = None
        """Set when a scanner could not be configured (the RHEL repository scanner without its
        CPE mapping, §2.1): every layer scan then fails with this error."""
        self.reports: dict[str, IndexRecord] = {}
        self._layers: dict[tuple[str, str], LayerScan] = {}  # (indexer state, digest) -> scan
        self._lock = threading.RLock()
        self._manifest_locks: dict[str, threading.Lock] = {}

    def get(self, digest: str) -> IndexRecord | None:
        with self._lock:
            return self.reports.get(digest)

    def delete(self, digest: str) -> bool:
        """Drop a manifest and the layers no other manifest references (they are fetched again)."""
        with self._lock:
            record = self.reports.pop(digest, None)
            if record is None:
                return False
            kept = {layer.hash for other in self.reports.values() for layer in other.manifest.layers}
            for layer in record.manifest.layers:
                if layer.hash not in kept:
                    for key in [key for key in self._layers if key[1] == layer.hash]:
                        del self._layers[key]
            return True

    def index(self, manifest: Manifest) -> IndexRecord:
        with self._lock:
            lock = self._manifest_locks.setdefault(manifest.hash, threading.Lock())
        with lock:  # concurrent posts of one manifest are serialised (a Postgres lock in Clair)
            with self._lock:
                done = self.reports.get(manifest.hash)
                if done is not None and done.state == "IndexFinished" and done.indexer_state == self.state:
                    return done  # already scanned: the stored report, nothing fetched
                state = self.state
                record = IndexRecord(manifest, "CheckManifest", state)
                self.reports[manifest.hash] = record
            try:
                record.state = "FetchLayers"
                scans = self._scan_layers(manifest, state, record)
                record.state = "Coalesce"
                packages = coalesce([(layer.hash, scans[layer.hash]) for layer in manifest.layers])
                record.state = "IndexManifest"
                record.packages = packages
                record.state = "IndexFinished"
            except IndexFailure as err:
                record.state, record.err = "IndexError", str(err)
                raise
            return record

    def _scan_layers(self, manifest: Manifest, state: str, record: IndexRecord) -> dict[str, LayerScan]:
        with self._lock:
            scans = {
                layer.hash: self._layers[(state, layer.hash)]
                for layer in manifest.layers
                if (state, layer.hash) in self._layers
            }
        wanted = list({layer.hash: layer for layer in manifest.layers if layer.hash not in scans}.values())
        errors: list[str] = []
        scan_errors: list[str] = []  # after every fetch: a fetch error is reported first
        not_tar = False

        def one(layer: LayerSpec) -> None:
            nonlocal not_tar
            download = DownloadRecord(layer=layer.hash, url=layer.uri)
            self.on_download(download)
            with tempfile.TemporaryDirectory(prefix="clairsim4-") as spool:
                try:
                    path = fetch_layer(layer, download, spool)
                except IndexFailure as err:
                    download.error = str(err)
                    errors.append(f"error realizing layer {layer.hash}: {err}")
                    return
                record.state = "ScanLayers"
                if self.scanner_failure is not None:
                    scan_errors.append(self.scanner_failure)
                    return
                try:
                    scans[layer.hash] = scan_layer(path)
                except _NotATar:
                    not_tar = True
                    errors.append(f"layer {layer.hash}: tarfs: format error")

        # At most GOMAXPROCS downloads at once; two CPUs here.
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(one, wanted))
        if errors:
            if not_tar:
                raise IndexFailure("failed to scan all layer contents: " + "\n".join(errors), status=400)
            raise IndexFailure("failed to fetch layers: fetcher: encountered errors: " + "\n".join(errors))
        if scan_errors:
            raise IndexFailure("failed to scan all layer contents: " + scan_errors[0])
        with self._lock:
            for layer in wanted:
                self._layers[(state, layer.hash)] = scans[layer.hash]
        return scans

    def report_json(self, record: IndexRecord) -> dict[str, Any]:
        """IndexReport (cc:indexreport.go)."""
        packages: dict[str, Any] = {}
        distributions: dict[str, Any] = {}
        environments: dict[str, Any] = {}
        for package, env in record.packages.items():
            entry = package.json(self.ids)
            packages[entry["id"]] = entry
            distribution_id = ""
            if env.distribution is not None:
                dist = env.distribution.json(self.ids)
                distributions[dist["id"]] = dist
                distribution_id = dist["id"]
            environments[entry["id"]] = [
                {
                    "package_db": env.package_db,
                    "introduced_in": env.introduced_in,
                    "distribution_id": distribution_id,
                    "repository_ids": None,
                }
            ]
        return {
            "manifest_hash": record.manifest.hash,
            "state": record.state,
            "packages": sorted_map(packages),
            "distributions": sorted_map(distributions),
            "repository": {},
            "environments": sorted_map(environments),
            "success": record.state == "IndexFinished",
            "err": record.err,
        }
