"""Tests of the Clair v2.1.8 simulator (tests/clairsim) against ../shared/CLAIR_V2_API.md.

Layers are real tar archives built here and served by a real HTTP server on 127.0.0.1; the
PostgreSQL tests start a throw-away PostgreSQL 15 cluster (skipped only when its binaries are
missing); the standalone tests run `python -m clairsim` as a subprocess.
"""

from __future__ import annotations

import bz2
import gzip
import http.client
import http.server
import io
import json
import lzma
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import clairsim
from clairsim import (
    ClairSimulator,
    MemoryStore,
    PostgresStore,
    detect,
    gojson,
    tarstream,
    versions,
    wait_until,
)
from clairsim import config as simconfig
from clairsim.seed import seed
from clairsim.tarstream import ERR_COULD_NOT_EXTRACT

TESTS = Path(__file__).resolve().parent
VULNS = TESTS / "data" / "vulns.json"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
TIMEOUT_TEXT = (
    '{"Error":{"Message":"Clair failed to respond within the configured timeout window.","Type":"Timeout"}}'
)

# --- building layers --------------------------------------------------------------------------


class Link:
    """A symlink (or, with hard=True, a hard link) entry in a test layer."""

    def __init__(self, target: str, hard: bool = False) -> None:
        self.target = target
        self.hard = hard


def make_layer(entries: dict[str, bytes | Link | None], compression: str | None = None) -> bytes:
    """A layer tar; None makes a directory. compression: None, "gz", "bz2" or "xz"."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in entries.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if content is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif isinstance(content, Link):
                info.type = tarfile.LNKTYPE if content.hard else tarfile.SYMTYPE
                info.linkname = content.target
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    data = buffer.getvalue()
    if compression == "gz":
        return gzip.compress(data)
    if compression == "bz2":
        return bz2.compress(data)
    if compression == "xz":
        return lzma.compress(data)
    return data


def dpkg_stanza(
    package: str, version: str, source: str | None = None, status: str = "install ok installed"
) -> str:
    lines = [f"Package: {package}", f"Status: {status}", "Priority: optional", "Architecture: amd64"]
    if source:
        lines.append(f"Source: {source}")
    lines += [f"Version: {version}", "Description: test package", " continued description", ""]
    return "\n".join(lines) + "\n"


DEBIAN_OS_RELEASE = (
    b'PRETTY_NAME="Debian GNU/Linux 10 (buster)"\nNAME="Debian GNU/Linux"\nVERSION_ID="10"\nID=debian\n'
)

BASE_PACKAGES = [
    ("libssl1.1", "1.1.1d-0+deb10u1", "openssl"),
    ("libidn2-0", "2.0.5-1", "libidn2"),
    ("e2fsprogs", "1.44.5-1+deb10u1", None),
    ("bash", "5.0-4", None),
    ("gcc-8-base", "8.3.0-6", "gcc-8"),
    ("libc6", "2.28-10", "glibc"),
    ("libc-bin", "2.28-10", "glibc"),
    ("tar", "1.30+dfsg-6", None),
    ("zlib1g", "1:1.2.11.dfsg-1+b1", "zlib (1:1.2.11.dfsg-1)"),
    ("tzdata", "2019c-0+deb10u1", None),
]


def dpkg_status(packages: list[tuple[str, str, str | None]], extra: str = "") -> bytes:
    return ("".join(dpkg_stanza(*package) for package in packages) + extra).encode()


# dpkg keeps removed packages with config files listed; Clair does not look at Status.
DEINSTALLED = dpkg_stanza("libfoo1", "1.0-1", status="deinstall ok config-files")
INVALID_VERSION = dpkg_stanza("broken", "1.0 beta")

DEBIAN_BASE = {
    "./": None,
    "./etc/": None,
    "./etc/os-release": Link("../usr/lib/os-release"),
    "./usr/lib/os-release": DEBIAN_OS_RELEASE,
    "./etc/apt/sources.list": b"deb http://deb.debian.org/debian buster main\n",
    "./var/lib/dpkg/status": dpkg_status(BASE_PACKAGES, DEINSTALLED + INVALID_VERSION),
    "./bin/bash": b"\x7fELF" + bytes(2000),
}
# No package database; a whiteout of the dpkg status is not understood by Clair v2.
DEBIAN_APP = {"app/": None, "app/server.py": b"print('hi')\n", "var/lib/dpkg/.wh.status": b""}
UPGRADED_PACKAGES = [
    ("libssl1.1", "1.1.1d-0+deb10u2", "openssl"),
    *[p for p in BASE_PACKAGES if p[0] not in ("libssl1.1", "bash")],
    ("curl", "7.64.0-4", None),
]
DEBIAN_UPGRADE = {"var/lib/dpkg/status": dpkg_status(UPGRADED_PACKAGES)}

ALPINE_BASE = {
    "etc/alpine-release": b"3.10.2\n",
    "etc/os-release": b'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.10.2\n',
    "lib/apk/db/installed": (
        b"C:Q1abc=\nP:musl\nV:1.1.22-r2\nA:x86_64\nT:the musl c library\n\n"
        b"C:Q1def=\nP:busybox\nV:1.30.1-r2\nA:x86_64\n\n"
        b"P:curl\nV:7.65.1-r0\n\n"
        b"P:libcrypto1.1\nV:1.1.1c-r0\no:openssl\n\n"
        b"P:openssl\nV:1.1.1c-r0\n\n"
    ),
}

# --- a real layer server ----------------------------------------------------------------------


class LayerServer:
    """Serves layer blobs over HTTP on 127.0.0.1 and records what Clair asked for."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.slow: dict[str, float] = {}
        self.short: dict[str, int] = {}  # path: Content-Length promised beyond the blob
        self.hits: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits.append((self.path, dict(self.headers.items())))
                if self.path in outer.redirects:
                    self.send_response(302)
                    self.send_header("Location", outer.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                blob = outer.blobs.get(self.path)
                if blob is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                delay = outer.slow.get(self.path, 0.0)
                self.send_response(200)
                self.send_header("Content-Length", str(len(blob) + outer.short.get(self.path, 0)))
                self.end_headers()
                if delay:
                    half = len(blob) // 2
                    self.wfile.write(blob[:half])
                    self.wfile.flush()
                    time.sleep(delay)
                    self.wfile.write(blob[half:])
                else:
                    self.wfile.write(blob)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, name: str, blob: bytes) -> str:
        self.blobs["/" + name] = blob
        return f"{self.base}/{name}"

    def paths(self) -> list[str]:
        return [path for path, _ in self.hits]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def layers() -> Iterator[LayerServer]:
    server = LayerServer()
    yield server
    server.close()


@pytest.fixture
def sim() -> Iterator[ClairSimulator]:
    with ClairSimulator(MemoryStore.from_json(VULNS), log_stream=None) as simulator:
        yield simulator


def post_layer(
    sim: ClairSimulator, name: str, path: str, parent: str = "", **extra: Any
) -> requests.Response:
    layer: dict[str, Any] = {"Name": name, "Path": path, "Format": "Docker", **extra}
    if parent:
        layer["ParentName"] = parent
    return requests.post(sim.url + "/v1/layers", json={"Layer": layer}, timeout=30)


def get_layer(sim: ClairSimulator, name: str, query: str = "?features&vulnerabilities") -> requests.Response:
    return requests.get(f"{sim.url}/v1/layers/{name}{query}", timeout=30)


def summary(layer: dict[str, Any]) -> dict[tuple[str, str], tuple[str, list[tuple[str, str | None]]]]:
    """{(name, version): (AddedBy, [(vulnerability, FixedBy or None)])} of a GET layer answer."""
    out = {}
    for feature in layer.get("Features", []):
        vulns = sorted((v["Name"], v.get("FixedBy")) for v in feature.get("Vulnerabilities", []))
        out[(feature["Name"], feature["Version"])] = (feature["AddedBy"], vulns)
    return out


def index_debian(sim: ClairSimulator, layers: LayerServer) -> None:
    assert (
        post_layer(sim, "deb-base", layers.add("base/layer.tar", make_layer(DEBIAN_BASE))).status_code == 201
    )
    app = layers.add("app/layer.tar.gz", make_layer(DEBIAN_APP, "gz"))
    assert post_layer(sim, "deb-app", app, parent="deb-base").status_code == 201
    upgrade = layers.add("upgrade/layer.tar.xz", make_layer(DEBIAN_UPGRADE, "xz"))
    assert post_layer(sim, "deb-upgrade", upgrade, parent="deb-app").status_code == 201


# --- version comparison -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.1.1d-0+deb10u1", "1.1.1d-0+deb10u2", -1),
        ("1.1.1d-0+deb10u2", "1.1.1d-0+deb10u2", 0),
        ("1:0.4", "10.3", 1),
        ("0:1.18.36", "1.18.36", 0),
        ("3.0~rc1-1", "3.0-1", -1),
        ("1.0", "1.0-0", 0),
        ("1.0", "1.0-0+b1", -1),
        ("1.0", "1.0-0~", 1),
        ("2.6b2-1", "2.6b-2", 1),
        ("98.1p5-1", "98.1-pre2-b6-2", -1),
        ("1.1.22-r2", "1.1.22-r3", -1),
        ("7.65.1-r0", "7.66.0-r0", -1),
        ("5.0-4", versions.MAX_VERSION, -1),
        (versions.MIN_VERSION, "0", -1),
        ("1:1.2.11.dfsg-1", "1.2.11.dfsg-2", 1),
    ],
)
def test_dpkg_comparison(a: str, b: str, expected: int) -> None:
    assert versions.compare("dpkg", a, b) == expected
    assert versions.compare("dpkg", b, a) == -expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.0-1", "1.0-2", -1),
        ("1.0.10-1", "1.0.9-1", 1),
        ("1:1.0-1", "2.0-1", 1),
        ("1.0~rc1-1", "1.0-1", -1),
        ("1.0a-1", "1.0-1", 1),
        ("2.17-260.el7_6.3", "2.17-260.el7_6.4", -1),
        ("1.0-1.el7", "1.0-1.el7", 0),
        ("openssl-1.0.2k-16", "openssl-1.0.2k-19", -1),
        ("1.0-1", versions.MAX_VERSION, -1),
    ],
)
def test_rpm_comparison(a: str, b: str, expected: int) -> None:
    assert versions.compare("rpm", a, b) == expected
    assert versions.compare("rpm", b, a) == -expected


def test_version_validation() -> None:
    assert versions.is_valid("dpkg", "1:2.28-10+deb10u1")
    assert versions.is_valid("dpkg", "  0:0-1  ")
    for bad in ("", "0:", "a:1.0", "-1:0-1", "1.0 beta", "1.0-a:b", "1.0/2"):
        assert not versions.is_valid("dpkg", bad), bad
    assert versions.is_valid("rpm", "1:3.2.1-1.el7:x")
    with pytest.raises(versions.UnknownFormatError):
        versions.compare("apk", "1", "2")


# --- detection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"etc/os-release": b"", "usr/lib/os-release": DEBIAN_OS_RELEASE}, "debian:10"),
        ({"etc/os-release": b'ID="ubuntu"\nVERSION_ID="18.04"\r\n'}, "ubuntu:18.04"),
        ({"etc/os-release": b"ID=debian\nPRETTY_NAME=bullseye/sid\n"}, None),
        ({"etc/os-release": b"ID=alpine\nVERSION_ID=3.10.2\n"}, None),
        (
            {
                "etc/os-release": b"ID=centos\nVERSION_ID=7\n",
                "etc/redhat-release": b"CentOS Linux release 7.6",
            },
            "centos:7",
        ),
        ({"etc/lsb-release": b"DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=16.04\n"}, "ubuntu:16.04"),
        ({"etc/lsb-release": b"DISTRIB_ID=Debian\nDISTRIB_RELEASE=9.4\n"}, "debian:9"),
        ({"etc/apt/sources.list": b"deb http://deb.debian.org/debian stretch main\n"}, "debian:9"),
        ({"etc/apt/sources.list": b"deb http://security.debian.org buster/updates main\n"}, None),
        (
            {"etc/apt/sources.list": b"deb http://archive.ubuntu.com/ubuntu bionic main restricted\n"},
            "ubuntu:18.04",
        ),
        ({"etc/apt/sources.list": b"deb http://deb.debian.org/debian buster contrib\n"}, None),
        ({"etc/alpine-release": b"3.10.2\n"}, "alpine:v3.10"),
        ({"etc/alpine-release": b"edge\n"}, None),
        ({"etc/system-release": b"Amazon Linux release 2 (Karoo)\n"}, "amzn:2"),
        ({"etc/oracle-release": b"Oracle Linux Server release 7.6\n"}, "oracle:7"),
        ({"etc/redhat-release": b"Red Hat Enterprise Linux Server release 7.6 (Maipo)\n"}, "centos:7"),
        ({"etc/centos-release": b"CentOS Linux release 8.0.1905 (Core)\n"}, "centos:8"),
        ({}, None),
    ],
)
def test_namespace_detection(files: dict[str, bytes], expected: str | None) -> None:
    found = detect.detect_namespace(files)
    assert (found.name if found else None) == expected


def test_dpkg_listing_uses_source_packages() -> None:
    status = dpkg_status(BASE_PACKAGES, DEINSTALLED + INVALID_VERSION)
    packages = {(p.name, p.version) for p in detect.list_dpkg({"var/lib/dpkg/status": status})}
    assert packages == {
        ("openssl", "1.1.1d-0+deb10u1"),
        ("libidn2", "2.0.5-1"),
        ("e2fsprogs", "1.44.5-1+deb10u1"),
        ("bash", "5.0-4"),
        ("gcc-8", "8.3.0-6"),
        ("glibc", "2.28-10"),  # libc6 and libc-bin share their source: one feature
        ("tar", "1.30+dfsg-6"),
        ("zlib", "1:1.2.11.dfsg-1"),  # the source version in parentheses wins over Version
        ("tzdata", "2019c-0+deb10u1"),
        ("libfoo1", "1.0-1"),  # deinstalled but still listed
    }


def test_apk_listing() -> None:
    packages = {
        (p.name, p.version)
        for p in detect.list_apk({"lib/apk/db/installed": ALPINE_BASE["lib/apk/db/installed"]})
    }
    assert packages == {
        ("musl", "1.1.22-r2"),
        ("busybox", "1.30.1-r2"),
        ("curl", "7.65.1-r0"),
        ("libcrypto1.1", "1.1.1c-r0"),
        ("openssl", "1.1.1c-r0"),
    }


def test_rpm_listing_without_rpm_binary_gives_no_features(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    warnings: list[str] = []
    assert detect.list_rpm({"var/lib/rpm/Packages": b"\0" * 64}, lambda e, f: warnings.append(e)) == []
    assert warnings == ["could not query RPM"]


# --- tar walking ------------------------------------------------------------------------------


def extract(blob: bytes, wanted: list[str] | None = None) -> dict[str, bytes]:
    return tarstream.extract_files(io.BytesIO(blob), wanted or detect.REQUIRED_FILES)


def test_tar_extraction_keeps_wanted_files_only() -> None:
    blob = make_layer(
        {
            "./etc/os-release": Link("../usr/lib/os-release"),
            "./usr/lib/os-release": DEBIAN_OS_RELEASE,
            "etc/apt/sources.list.d/": None,
            "etc/apt/sources.list.d/extra.list": b"deb x y main\n",
            "etc/lsb-release": Link("etc/os-release", hard=True),
            "usr/share/doc/readme": b"x",
            "/etc/alpine-release": b"3.10.2\n",
        }
    )
    assert extract(blob) == {
        "etc/os-release": b"",
        "usr/lib/os-release": DEBIAN_OS_RELEASE,
        "etc/apt/sources.list.d/extra.list": b"deb x y main\n",  # prefix match, as in Clair
        "etc/lsb-release": b"",
    }


@pytest.mark.parametrize("compression", [None, "gz", "bz2", "xz"])
def test_tar_compressions(compression: str | None) -> None:
    long_name = "var/lib/dpkg/status"  # with a PAX path longer than 100 bytes before it
    entries = {"x/" + "d" * 120 + "/file": b"long", long_name: b"Package: a\nVersion: 1\n"}
    assert extract(make_layer(entries, compression)) == {long_name: b"Package: a\nVersion: 1\n"}


def test_tar_gnu_long_names() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        name = "var/lib/dpkg/status" + "/x" * 60
        info = tarfile.TarInfo(name)
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    assert extract(buffer.getvalue(), ["var/lib/dpkg/status/"]) == {name: b"abc"}


def test_tar_reader_accepts_what_go_accepts() -> None:
    assert extract(b"") == {}  # an empty stream is an empty layer for Go's tar reader
    assert extract(bytes(1024)) == {}
    assert extract(bytes(512)) == {}


@pytest.mark.parametrize(
    "blob",
    [
        b"this is not a tar archive at all" * 40,
        b"short",
        make_layer({"etc/alpine-release": b"3.10.2\n"})[:700],  # truncated inside the data
        make_layer({"a": b"1"})[:1024] + b"garbage!" * 100,  # junk after the first entry
        bytes(512) + b"x" * 512,  # a zero block followed by data
        gzip.compress(b"not a tar inside gzip" * 50),
        b"\x1f\x8b\x08\x00broken gzip stream" * 20,
        b"BZh91AY&SY broken bzip2" * 20,
    ],
)
def test_tar_reader_rejects_broken_archives(blob: bytes) -> None:
    with pytest.raises(tarstream.ExtractError, match=r"^tarutil: could not extract the archive$"):
        extract(blob)


def test_tar_file_too_big_is_checked_on_the_header() -> None:
    info = tarfile.TarInfo("var/lib/dpkg/status")
    info.size = tarstream.MAX_EXTRACTABLE_FILE_SIZE + 1
    header = info.tobuf(tarfile.USTAR_FORMAT)
    with pytest.raises(tarstream.ExtractError, match=r"file too big$"):
        extract(header + b"Package: x\n")
    info.name = "usr/share/big.bin"  # not wanted: its size does not matter (until the data ends)
    with pytest.raises(tarstream.ExtractError, match=r"could not extract the archive$"):
        extract(info.tobuf(tarfile.USTAR_FORMAT) + b"x" * 100)


# --- POST and GET layers ----------------------------------------------------------------------


def test_post_layer_echo(sim: ClairSimulator, layers: LayerServer) -> None:
    path = layers.add("base/layer.tar", make_layer(DEBIAN_BASE))
    response = post_layer(sim, "deb-base", path, Headers={"authorization": "Bearer t0ken", "X-b": "1"})
    assert response.status_code == 201
    assert response.headers["Content-Type"] == "application/json;charset=utf-8"
    assert response.headers["Server"] == "clair"
    assert response.json() == {
        "Layer": {
            "Name": "deb-base",
            "Path": path,
            "Headers": {"X-b": "1", "authorization": "Bearer t0ken"},
            "Format": "Docker",
            "IndexedByVersion": 3,
        }
    }
    assert list(response.json()["Layer"]) == ["Name", "Path", "Headers", "Format", "IndexedByVersion"]


def test_debian_image_report(sim: ClairSimulator, layers: LayerServer) -> None:
    index_debian(sim, layers)

    top = get_layer(sim, "deb-upgrade")
    assert top.status_code == 200
    layer = top.json()["Layer"]
    assert {k: v for k, v in layer.items() if k != "Features"} == {
        "Name": "deb-upgrade",
        "NamespaceName": "debian:10",
        "ParentName": "deb-app",
        "IndexedByVersion": 3,
    }
    assert summary(layer) == {
        ("openssl", "1.1.1d-0+deb10u2"): ("deb-upgrade", []),
        ("curl", "7.64.0-4"): ("deb-upgrade", []),
        ("libidn2", "2.0.5-1"): ("deb-base", [("CVE-2019-18224", "2.0.5-1+deb10u1")]),
        ("e2fsprogs", "1.44.5-1+deb10u1"): (
            "deb-base",
            [("CVE-2019-5094", "1.44.5-1+deb10u2"), ("CVE-2019-5188", "1.44.5-1+deb10u3")],
        ),
        ("gcc-8", "8.3.0-6"): ("deb-base", [("CVE-2018-12886", None)]),
        ("glibc", "2.28-10"): ("deb-base", [("DSA-4539-1", "2.28-10+deb10u1")]),
        ("tar", "1.30+dfsg-6"): ("deb-base", []),
        ("zlib", "1:1.2.11.dfsg-1"): ("deb-base", []),
        ("tzdata", "2019c-0+deb10u1"): ("deb-base", []),
    }
    for feature in layer["Features"]:
        assert list(feature)[:4] == ["Name", "NamespaceName", "VersionFormat", "Version"]
        assert feature["NamespaceName"] == "debian:10" and feature["VersionFormat"] == "dpkg"
        assert feature.get("Vulnerabilities") != []  # omitempty: absent rather than empty
        assert list(feature)[-1] == "AddedBy"

    libidn2 = next(f for f in layer["Features"] if f["Name"] == "libidn2")
    assert libidn2["Vulnerabilities"] == [
        {
            "Name": "CVE-2019-18224",
            "NamespaceName": "debian:10",
            "Description": "idn2_to_ascii_4i in lib/lookup.c in GNU libidn2 before 2.1.1 has a "
            "heap-based buffer overflow via a long domain string.",
            "Link": "https://security-tracker.debian.org/tracker/CVE-2019-18224",
            "Severity": "Critical",
            "Metadata": {
                "NVD": {
                    "CVSSv2": {
                        "PublishedDateTime": "2019-10-21T17:15Z",
                        "Score": 7.5,
                        "Vectors": "AV:N/AC:L/Au:N/C:P/I:P/A:P",
                    },
                    "CVSSv3": {
                        "ExploitabilityScore": 3.9,
                        "ImpactScore": 5.9,
                        "Score": 9.8,
                        "Vectors": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
                    },
                }
            },
            "FixedBy": "2.0.5-1+deb10u1",
        }
    ]
    assert list(libidn2["Vulnerabilities"][0]) == [
        "Name",
        "NamespaceName",
        "Description",
        "Link",
        "Severity",
        "Metadata",
        "FixedBy",
    ]
    gcc = next(f for f in layer["Features"] if f["Name"] == "gcc-8")
    assert "FixedBy" not in gcc["Vulnerabilities"][0] and gcc["Vulnerabilities"][0]["Severity"] == "Unknown"

    # The middle layer has no package database (and a whiteout Clair ignores): it inherits.
    middle = summary(get_layer(sim, "deb-app").json()["Layer"])
    assert middle[("bash", "5.0-4")] == ("deb-base", [("CVE-2019-18276", None)])
    assert middle[("openssl", "1.1.1d-0+deb10u1")] == ("deb-base", [("CVE-2019-1543", "1.1.1d-0+deb10u2")])
    assert middle[("libfoo1", "1.0-1")] == ("deb-base", [])
    assert ("broken", "1.0 beta") not in middle
    assert len(middle) == 10
    assert summary(get_layer(sim, "deb-base").json()["Layer"]) == middle


def test_get_layer_flags_are_presence_only(sim: ClairSimulator, layers: LayerServer) -> None:
    index_debian(sim, layers)
    bare = get_layer(sim, "deb-app", "").json()["Layer"]
    assert bare == {
        "Name": "deb-app",
        "NamespaceName": "debian:10",
        "ParentName": "deb-base",
        "IndexedByVersion": 3,
    }
    features = get_layer(sim, "deb-app", "?features=false").json()["Layer"]["Features"]
    assert len(features) == 10 and not any("Vulnerabilities" in f for f in features)
    only_vulns = get_layer(sim, "deb-app", "?vulnerabilities").json()["Layer"]["Features"]
    assert sum("Vulnerabilities" in f for f in only_vulns) == 6
    missing = get_layer(sim, "nope")
    assert missing.status_code == 404
    assert missing.json() == {"Error": {"Message": "the resource cannot be found"}}


def test_alpine_image_and_go_json(sim: ClairSimulator, layers: LayerServer) -> None:
    path = layers.add("alpine.tar.gz", make_layer(ALPINE_BASE, "gz"))
    assert post_layer(sim, "alp", path).status_code == 201
    response = get_layer(sim, "alp")
    layer = response.json()["Layer"]
    assert layer["NamespaceName"] == "alpine:v3.10"
    assert summary(layer) == {
        ("musl", "1.1.22-r2"): ("alp", [("CVE-2019-14697", "1.1.22-r3")]),
        ("busybox", "1.30.1-r2"): ("alp", []),
        ("curl", "7.65.1-r0"): ("alp", [("CVE-2019-5482", "7.66.0-r0")]),
        ("libcrypto1.1", "1.1.1c-r0"): ("alp", []),
        ("openssl", "1.1.1c-r0"): ("alp", [("CVE-2019-1549", "1.1.1d-r0")]),
    }
    # float64 metadata printed the Go way, and Go's HTML-safe escaping
    assert b'"CVSSv2":{"PublishedDateTime":"2019-09-10T17:15Z","Score":5,' in response.content
    assert b'"CVSSv3":{"ExploitabilityScore":0,"ImpactScore":0,"Score":0,"Vectors":""}' in response.content
    assert response.content.endswith(b"}}\n")


def test_html_characters_are_escaped_like_go(sim: ClairSimulator, layers: LayerServer) -> None:
    index_debian(sim, layers)
    raw = requests.get(
        sim.url + "/v1/layers/deb-upgrade?vulnerabilities", headers={"Accept-Encoding": "identity"}
    )
    assert "Content-Encoding" not in raw.headers
    assert b"including a \\u003cscript\\u003e \\u0026 stack overflow" in raw.content
    assert raw.headers.get("Transfer-Encoding") == "chunked"  # large bodies are chunked, as in Go


def test_layer_server_is_really_used(sim: ClairSimulator, layers: LayerServer) -> None:
    blob = make_layer(DEBIAN_BASE)
    path = layers.add("blobs/sha256:abc", blob) + "?token=s3cr3t"
    layers.blobs["/blobs/sha256:abc?token=s3cr3t"] = blob
    assert post_layer(sim, "L1", path, Headers={"authorization": "Bearer xyz"}).status_code == 201
    assert layers.paths() == ["/blobs/sha256:abc?token=s3cr3t"]
    sent = layers.hits[0][1]
    assert sent["Authorization"] == "Bearer xyz"  # canonical key, one value
    assert sent["User-Agent"] == "Go-http-client/1.1"
    (download,) = sim.downloads
    assert download.layer == "L1" and download.status == 200 and download.error is None
    assert download.bytes_read == len(blob) and download.elapsed > 0
    # Logged layer paths lose their query string (cleanURL), so tokens do not leak into logs.
    assert post_layer(sim, "L2", layers.base + "/gone?token=s3cr3t&x=1").status_code == 400
    (failure,) = [r for r in sim.logs if r["Event"] == "failed to extract data from path"]
    assert failure["path"] == layers.base + "/gone" and failure["layer"] == "L2"


def test_redirects_are_followed_and_auth_is_dropped_across_hosts(
    sim: ClairSimulator, layers: LayerServer
) -> None:
    blob = make_layer(DEBIAN_BASE)
    layers.add("real", blob)
    port = layers.server.server_address[1]
    layers.redirects["/same"] = f"http://127.0.0.1:{port}/real"
    layers.redirects["/other"] = f"http://localhost:{port}/real"
    assert post_layer(sim, "r1", layers.base + "/same", Headers={"Authorization": "A"}).status_code == 201
    assert post_layer(sim, "r2", layers.base + "/other", Headers={"Authorization": "B"}).status_code == 201
    hits = [(path, headers.get("Authorization")) for path, headers in layers.hits]
    assert hits == [("/same", "A"), ("/real", "A"), ("/other", "B"), ("/real", None)]


def test_https_layers_and_insecure_tls(layers: LayerServer, tmp_path: Path) -> None:
    """Registry blobs are https: the certificate is verified unless -insecure-tls is given."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    layers.add("tls.tar", make_layer(ALPINE_BASE))
    layers.server.socket = context.wrap_socket(layers.server.socket, server_side=True)
    url = layers.base.replace("http://", "https://") + "/tls.tar"
    with ClairSimulator(MemoryStore.from_json(VULNS), log_stream=None) as strict:
        assert post_layer(strict, "tls", url).json() == {"Error": {"Message": "could not find layer"}}
        assert "CERTIFICATE_VERIFY_FAILED" in (strict.downloads[0].error or "")
    with ClairSimulator(MemoryStore.from_json(VULNS), insecure_tls=True, log_stream=None) as insecure:
        assert post_layer(insecure, "tls", url).status_code == 201
        assert get_layer(insecure, "tls").json()["Layer"]["NamespaceName"] == "alpine:v3.10"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "EOF"),
        (b"{", "unexpected EOF"),
        (b"nope", "invalid character 'o' in literal null (expecting 'u')"),
        (b"[]", "json: cannot unmarshal array into Go value of type v1.LayerEnvelope"),
        (
            b'{"Layer": 5}',
            "json: cannot unmarshal number into Go struct field LayerEnvelope.Layer of type v1.Layer",
        ),
        (
            b'{"Layer": {"Name": 5}}',
            "json: cannot unmarshal number into Go struct field Layer.Name of type string",
        ),
        (b"{}", "failed to provide layer"),
        (b'{"Layer": null}', "failed to provide layer"),
        (b'{"Layer": {}}', "could not process a layer which does not have a name"),
        (b'{"Layer": {"Name": "x"}}', "could not process a layer which does not have a path"),
        (b'{"Layer": {"Name": "x", "Path": "/p"}}', "could not process a layer which does not have a format"),
        (
            b'{"Layer": {"Name": "x", "Path": "/p", "Format": "Docker", "ParentName": "ghost"}}',
            "worker: parent layer is unknown, it must be processed first",
        ),
    ],
)
def test_post_layer_bad_requests(sim: ClairSimulator, body: bytes, message: str) -> None:
    response = requests.post(sim.url + "/v1/layers", data=body, timeout=10)
    assert response.status_code == 400
    assert response.json() == {"Error": {"Message": message}}
    assert sim.downloads == []


def test_post_layer_go_decoding(sim: ClairSimulator, layers: LayerServer) -> None:
    path = layers.add("l.tar", make_layer({"etc/alpine-release": b"3.10.2\n"}))
    body = json.dumps({"layer": {"name": "lc", "PATH": path, "format": "docker"}}) + " trailing junk"
    response = requests.post(sim.url + "/v1/layers", data=body, timeout=10)
    assert response.status_code == 201
    assert response.json()["Layer"] == {"Name": "lc", "Path": path, "Format": "docker", "IndexedByVersion": 3}


def test_download_failures_are_400(sim: ClairSimulator, layers: LayerServer, tmp_path: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    for path in (
        layers.base + "/missing.tar",
        f"http://127.0.0.1:{dead_port}/layer.tar",
        str(tmp_path / "missing.tar"),
        "file://" + str(tmp_path / "x.tar"),
    ):
        response = post_layer(sim, "f-" + uuid.uuid4().hex, path)
        assert (response.status_code, response.json()) == (
            400,
            {"Error": {"Message": "could not find layer"}},
        ), path
    assert layers.paths() == ["/missing.tar"]
    assert [d.status for d in sim.downloads] == [404, None, None, None]
    assert any(
        r["Event"] == "could not download layer: expected 2XX" and r["status code"] == 404 for r in sim.logs
    )


def test_a_body_shorter_than_its_content_length_is_not_indexed(
    sim: ClairSimulator, layers: LayerServer
) -> None:
    # Cut at an entry boundary, the tar alone would read as complete; Go's transport still
    # reports the missing bytes as an unexpected EOF.
    full = make_layer({**DEBIAN_BASE, "opt/after": b"x" * 4096})
    cut = full.index(b"opt/after") // 512 * 512
    path = layers.add("short.tar", full[:cut])
    layers.short["/short.tar"] = len(full) - cut
    response = post_layer(sim, "short", path)
    assert (response.status_code, response.json()) == (422, {"Error": {"Message": ERR_COULD_NOT_EXTRACT}})
    assert get_layer(sim, "short").status_code == 404
    whole = post_layer(sim, "whole", layers.add("whole.tar", full[:cut]))
    assert whole.status_code == 201  # the same bytes, honestly labelled, are a valid layer


def test_unsupported_format_is_checked_after_download(sim: ClairSimulator, layers: LayerServer) -> None:
    path = layers.add("oci.tar", make_layer(DEBIAN_BASE))
    response = post_layer(sim, "oci", path, Format="OCI")
    assert response.status_code == 400
    assert response.json() == {"Error": {"Message": "unsupported image format 'OCI'"}}
    assert layers.paths() == ["/oci.tar"]
    assert get_layer(sim, "oci").status_code == 404
    missing = post_layer(sim, "oci2", layers.base + "/nothing", Format="OCI")
    assert missing.json() == {"Error": {"Message": "could not find layer"}}


def test_local_file_layers(sim: ClairSimulator, tmp_path: Path) -> None:
    layer_file = tmp_path / "layer.tar"
    layer_file.write_bytes(make_layer(ALPINE_BASE, "bz2"))
    assert post_layer(sim, "local", str(layer_file)).status_code == 201
    assert get_layer(sim, "local").json()["Layer"]["NamespaceName"] == "alpine:v3.10"
    directory = post_layer(sim, "dir", str(tmp_path))  # Go opens a directory; reading it fails
    assert directory.status_code == 422


@pytest.mark.parametrize(
    ("blob", "status", "message"),
    [
        (os.urandom(4096), 422, "tarutil: could not extract the archive"),
        (gzip.compress(os.urandom(4096)), 422, "tarutil: could not extract the archive"),
        (
            make_layer({"var/lib/dpkg/status": dpkg_status(BASE_PACKAGES)}),
            422,
            "worker: OS and/or package manager are not supported",
        ),
    ],
)
def test_unprocessable_layers(
    sim: ClairSimulator, layers: LayerServer, blob: bytes, status: int, message: str
) -> None:
    response = post_layer(sim, "bad", layers.add("bad.tar", blob))
    assert (response.status_code, response.json()) == (status, {"Error": {"Message": message}})
    assert get_layer(sim, "bad").status_code == 404
    assert any(r["Event"] == "failed to extract data from path" for r in sim.logs) == message.startswith(
        "tarutil"
    )


def test_file_too_big_is_422(sim: ClairSimulator, layers: LayerServer) -> None:
    info = tarfile.TarInfo("var/lib/rpm/Packages")
    info.size = 200 * 1024 * 1024 + 1
    response = post_layer(sim, "big", layers.add("big.tar", info.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 4096))
    assert response.status_code == 422
    assert response.json()["Error"]["Message"] == (
        "tarutil: could not extract one or more files from the archive: file too big"
    )


def test_layers_without_os_or_packages(sim: ClairSimulator, layers: LayerServer) -> None:
    assert post_layer(sim, "empty", layers.add("empty.tar", b"")).status_code == 201
    assert get_layer(sim, "empty").json()["Layer"] == {"Name": "empty", "IndexedByVersion": 3}
    # A layer whose packages are all already in its parent gets their namespace from there.
    base = layers.add("b.tar", make_layer(ALPINE_BASE))
    assert post_layer(sim, "alp-base", base).status_code == 201
    same_db = layers.add("s.tar", make_layer({"lib/apk/db/installed": ALPINE_BASE["lib/apk/db/installed"]}))
    assert post_layer(sim, "alp-same", same_db, parent="alp-base").status_code == 201
    # ... but a new package with no namespace anywhere is unsupported.
    more = ALPINE_BASE["lib/apk/db/installed"] + b"P:zlib\nV:1.2.11-r1\n"
    new_db = layers.add("n.tar", make_layer({"lib/apk/db/installed": more}))
    assert post_layer(sim, "alp-new", new_db, parent="empty").status_code == 422
    # with the namespace inherited from the parent it is fine
    assert post_layer(sim, "alp-new", new_db, parent="alp-base").status_code == 201
    top = summary(get_layer(sim, "alp-new").json()["Layer"])
    assert top[("zlib", "1.2.11-r1")][0] == "alp-new" and top[("musl", "1.1.22-r2")][0] == "alp-base"


def test_already_indexed_layer_is_not_downloaded_again(sim: ClairSimulator, layers: LayerServer) -> None:
    first = layers.add("first.tar", make_layer(DEBIAN_BASE))
    assert post_layer(sim, "dup", first).status_code == 201
    again = post_layer(sim, "dup", layers.base + "/does-not-exist", parent="whatever", Format="Nonsense")
    assert again.status_code == 201
    assert again.json()["Layer"] == {
        "Name": "dup",
        "Path": layers.base + "/does-not-exist",
        "ParentName": "whatever",
        "Format": "Nonsense",
        "IndexedByVersion": 3,
    }
    assert layers.paths() == ["/first.tar"] and len(sim.downloads) == 1
    assert "ParentName" not in get_layer(sim, "dup").json()["Layer"]


def test_long_layer_names_fail_in_the_database(sim: ClairSimulator, layers: LayerServer) -> None:
    path = layers.add("l.tar", make_layer({"etc/alpine-release": b"3.10.2\n"}))
    response = post_layer(sim, "x" * 129, path)
    assert response.status_code == 500
    assert response.json() == {"Error": {"Message": "database: an error occured when querying the backend"}}
    assert post_layer(sim, "x" * 128, path).status_code == 201


def test_delete_layer_cascades(sim: ClairSimulator, layers: LayerServer) -> None:
    index_debian(sim, layers)
    response = requests.delete(sim.url + "/v1/layers/deb-app", timeout=10)
    assert response.status_code == 200 and response.content == b""
    assert "Server" not in response.headers and "Content-Type" not in response.headers
    assert get_layer(sim, "deb-app").status_code == 404
    assert get_layer(sim, "deb-upgrade").status_code == 404
    assert get_layer(sim, "deb-base").status_code == 200
    again = requests.delete(sim.url + "/v1/layers/deb-app", timeout=10)
    assert again.status_code == 404 and again.json()["Error"]["Message"] == "the resource cannot be found"


# --- HTTP behaviour ---------------------------------------------------------------------------


def raw_request(
    url: str, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), data


def test_gzip_responses(sim: ClairSimulator) -> None:
    status, headers, body = raw_request(
        sim.url, "GET", "/v1/namespaces", {"Accept-Encoding": "gzip, deflate"}
    )
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(body)) == {
        "Namespaces": [
            {"Name": "debian:10", "VersionFormat": "dpkg"},
            {"Name": "alpine:v3.10", "VersionFormat": "dpkg"},
        ]
    }
    status, headers, body = raw_request(sim.url, "GET", "/v1/namespaces")
    assert "Content-Encoding" not in headers and body.startswith(b'{"Namespaces":[')
    assert headers["Content-Length"] == str(len(body)) and headers["Server"] == "clair"
    status, headers, body = raw_request(sim.url, "GET", "/v1/layers/none", {"Accept-Encoding": "gzip"})
    assert (
        status == 404 and gzip.decompress(body) == b'{"Error":{"Message":"the resource cannot be found"}}\n'
    )


def test_plain_text_404_405_and_redirects(sim: ClairSimulator) -> None:
    for path in (
        "/",
        "/health",
        "/v2/layers",
        "/layers",
        "/v1/unknown",
        "/v1/layers/a/b",
        "/v1",
        "/v1/layers/",
    ):
        status, headers, body = raw_request(sim.url, "GET", path)
        assert (status, body) == (404, b"404 page not found\n"), path
        assert headers["Content-Type"] == "text/plain; charset=utf-8" and "Server" not in headers
    for method, path in (
        ("PUT", "/v1/layers"),
        ("GET", "/v1/layers"),
        ("POST", "/v1/namespaces"),
        ("HEAD", "/v1/namespaces"),
    ):
        status, headers, body = raw_request(sim.url, method, path)
        assert status == 405, (method, path)
        assert body == (b"" if method == "HEAD" else b"Method Not Allowed\n")
    # httprouter redirects; the Location loses the /v1 prefix, as Clair's does
    status, headers, _ = raw_request(sim.url, "GET", "/v1/namespaces/")
    assert (status, headers["Location"]) == (301, "/namespaces")
    status, headers, _ = raw_request(sim.url, "POST", "/v1/layers/")
    assert (status, headers["Location"]) == (307, "/layers")
    status, headers, _ = raw_request(sim.url, "GET", "/v1/Namespaces?x=1")
    assert (status, headers["Location"]) == (301, "/namespaces?x=1")
    assert not [r for r in sim.logs if r["Event"] == "Handled HTTP request"]
    assert [r["request uri"] for r in sim.logs if r["Event"] == "Served HTTP request"][:1] == ["/"]


def test_request_timeout_gives_clairs_503(layers: LayerServer) -> None:
    with ClairSimulator(MemoryStore.from_json(VULNS), api_timeout=0.3, log_stream=None) as slow_sim:
        path = layers.add("slow.tar", make_layer(DEBIAN_BASE))
        layers.slow["/slow.tar"] = 1.0
        started = time.monotonic()
        response = post_layer(slow_sim, "slow", path)
        assert 0.3 <= time.monotonic() - started < 1.0
        assert response.status_code == 503
        assert response.text == TIMEOUT_TEXT
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert "Server" not in response.headers
        # The handler goes on: Clair indexes the layer anyway.
        assert wait_until(lambda: get_layer(slow_sim, "slow").status_code == 200, timeout=5)
        assert slow_sim.requests[0].status == 503
        assert slow_sim.downloads[0].bytes_read == len(layers.blobs["/slow.tar"])


def test_health(sim: ClairSimulator) -> None:
    response = requests.get(sim.health_url + "/health", timeout=5)
    assert (response.status_code, response.content, response.headers["Server"]) == (200, b"", "clair")
    assert requests.get(sim.url + "/health", timeout=5).status_code == 404  # not on the API port
    assert requests.get(sim.health_url + "/v1/namespaces", timeout=5).status_code == 404
    assert requests.post(sim.health_url + "/health", timeout=5).status_code == 405
    sim.store.down = True  # type: ignore[attr-defined]
    assert requests.get(sim.health_url + "/health", timeout=5).status_code == 500
    down = requests.get(sim.url + "/v1/namespaces", timeout=5)
    assert down.status_code == 500
    assert down.json() == {"Error": {"Message": "database: an error occured when querying the backend"}}
    assert requests.get(sim.url + "/v1/layers/x", timeout=5).status_code == 500
    sim.store.down = False  # type: ignore[attr-defined]
    assert requests.get(sim.health_url + "/health", timeout=5).status_code == 200


def test_namespaces_include_detected_ones(sim: ClairSimulator, layers: LayerServer) -> None:
    ubuntu = {"etc/lsb-release": b"DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=18.04\n"}
    assert post_layer(sim, "ubu", layers.add("u.tar", make_layer(ubuntu))).status_code == 201
    names = [ns["Name"] for ns in requests.get(sim.url + "/v1/namespaces", timeout=5).json()["Namespaces"]]
    assert names == ["debian:10", "alpine:v3.10", "ubuntu:18.04"]
    empty = ClairSimulator(MemoryStore(), log_stream=None).start()
    try:
        assert requests.get(empty.url + "/v1/namespaces", timeout=5).json() == {"Namespaces": None}
    finally:
        empty.stop()


def test_vulnerability_routes(sim: ClairSimulator, layers: LayerServer) -> None:
    base = sim.url + "/v1/namespaces"
    assert requests.get(base + "/debian:10/vulnerabilities").json() == {
        "Error": {"Message": "must provide limit query parameter"}
    }
    assert requests.get(base + "/debian:10/vulnerabilities?limit=x").json()["Error"]["Message"] == (
        'invalid limit format: strconv.Atoi: parsing "x": invalid syntax'
    )
    assert requests.get(base + "/debian:10/vulnerabilities?limit=-1").status_code == 400
    assert requests.get(base + "/debian:10/vulnerabilities?limit=2&page=bogus").json()["Error"][
        "Message"
    ] == ("invalid page format: invalid or expired pagination token")
    assert requests.get(base + "/debian:99/vulnerabilities?limit=2").status_code == 404

    names, page = [], ""
    while True:
        answer = requests.get(f"{base}/debian:10/vulnerabilities?limit=4{page}").json()
        assert len(answer["Vulnerabilities"]) <= 4 and "FixedIn" not in answer["Vulnerabilities"][0]
        names += [v["Name"] for v in answer["Vulnerabilities"]]
        if "NextPage" not in answer:
            break
        page = "&page=" + answer["NextPage"]
    assert len(names) == 9 and names[0] == "CVE-2019-1543"

    one = requests.get(base + "/debian:10/vulnerabilities/CVE-2019-18276?fixedIn").json()["Vulnerability"]
    assert one["FixedIn"] == [
        {"Name": "bash", "NamespaceName": "debian:10", "VersionFormat": "dpkg", "Version": "None"}
    ]
    assert (
        "FixedIn"
        not in requests.get(base + "/debian:10/vulnerabilities/CVE-2019-18276").json()["Vulnerability"]
    )
    fixes = requests.get(base + "/debian:10/vulnerabilities/CVE-2019-1543/fixes").json()
    assert fixes == {
        "Features": [
            {
                "Name": "openssl",
                "NamespaceName": "debian:10",
                "VersionFormat": "dpkg",
                "Version": "1.1.1d-0+deb10u2",
            }
        ]
    }

    # New data through the API changes reports, as with real Clair.
    index_debian(sim, layers)
    new = {
        "Vulnerability": {
            "Name": "CVE-2099-0001",
            "NamespaceName": "debian:10",
            "Severity": "high",
            "Link": "",
            "Metadata": {"NVD": {"CVSSv2": {"Score": 10}}},
            "FixedIn": [
                {
                    "Name": "tzdata",
                    "NamespaceName": "debian:10",
                    "VersionFormat": "dpkg",
                    "Version": "2020a-0+deb10u1",
                }
            ],
        }
    }
    created = requests.post(base + "/debian:10/vulnerabilities", json=new)
    assert created.status_code == 201
    assert created.json() == {
        "Vulnerability": {
            "Name": "CVE-2099-0001",
            "NamespaceName": "debian:10",
            "Severity": "high",
            "Metadata": {"NVD": {"CVSSv2": {"Score": 10}}},
            "FixedIn": [
                {
                    "Name": "tzdata",
                    "NamespaceName": "debian:10",
                    "VersionFormat": "dpkg",
                    "Version": "2020a-0+deb10u1",
                }
            ],
        }
    }
    report = summary(get_layer(sim, "deb-upgrade").json()["Layer"])
    assert report[("tzdata", "2019c-0+deb10u1")] == ("deb-base", [("CVE-2099-0001", "2020a-0+deb10u1")])
    stored = requests.get(base + "/debian:10/vulnerabilities/CVE-2099-0001").json()["Vulnerability"]
    assert stored["Severity"] == "High"

    # Deleting it removes it from reports; deleting again is 404.
    assert requests.delete(base + "/debian:10/vulnerabilities/CVE-2099-0001").status_code == 200
    assert requests.delete(base + "/debian:10/vulnerabilities/CVE-2099-0001").status_code == 404
    assert summary(get_layer(sim, "deb-upgrade").json()["Layer"])[("tzdata", "2019c-0+deb10u1")][1] == []

    bad = dict(new["Vulnerability"], Severity="Urgent")
    assert requests.post(base + "/x/vulnerabilities", json={"Vulnerability": bad}).json() == {
        "Error": {"Message": "failed to parse Severity from input"}
    }
    bad = dict(new["Vulnerability"], FixedIn=[{"Name": "tzdata", "Version": "1.0"}])
    assert requests.post(base + "/x/vulnerabilities", json={"Vulnerability": bad}).json()["Error"][
        "Message"
    ] == ("unknown version format")
    assert (
        requests.post(base + "/x/vulnerabilities", json={}).json()["Error"]["Message"]
        == "failed to provide vulnerability"
    )
    put = requests.put(
        base + "/debian:10/vulnerabilities/CVE-2019-1543", json={"Vulnerability": new["Vulnerability"]}
    )
    assert put.json() == {"Error": {"Message": "Vulnerability.FixedIn must be empty"}}
    # Clair's fix routes read the namespace from a parameter that does not exist.
    fix = {"Feature": {"Name": "openssl", "VersionFormat": "dpkg", "Version": "1.0-1"}}
    put_fix = requests.put(base + "/debian:10/vulnerabilities/CVE-2019-1543/fixes/openssl", json=fix)
    assert (put_fix.status_code, put_fix.json()["Error"]["Message"]) == (
        400,
        "insertVulnerability needs at least the Name and the Namespace",
    )
    assert requests.delete(base + "/debian:10/vulnerabilities/CVE-2019-1543/fixes/openssl").status_code == 500
    assert (
        requests.get(sim.url + "/v1/notifications/n1").json()["Error"]["Message"]
        == "must provide limit query parameter"
    )
    assert requests.get(sim.url + "/v1/notifications/n1?limit=1").status_code == 404


# --- fault injection, records, logs -----------------------------------------------------------


def test_fail_next(sim: ClairSimulator) -> None:
    fault = sim.fail_next(500, count=2, method="GET", path="/v1/namespaces")
    for _ in range(2):
        response = requests.get(sim.url + "/v1/namespaces", timeout=5)
        assert response.status_code == 500 and response.headers["Server"] == "clair"
        assert response.json() == {
            "Error": {"Message": "database: an error occured when querying the backend"}
        }
    assert requests.get(sim.url + "/v1/namespaces", timeout=5).status_code == 200
    assert fault.hits == 2
    sim.fail_next(502, "bad gateway", path="/v1/layers", method="POST")
    assert requests.post(sim.url + "/v1/layers", data=b"{}", timeout=5).text == "bad gateway"
    sim.fail_next(500, server="health")
    assert requests.get(sim.health_url + "/health", timeout=5).status_code == 500
    assert [(r.server, r.status, r.fault) for r in sim.requests][-2:] == [
        ("api", 502, "respond"),
        ("health", 500, "respond"),
    ]


def test_hang_drop_and_delay() -> None:
    store = MemoryStore.from_json(VULNS)
    simulator = ClairSimulator(store, api_timeout=0.4, log_stream=None).start()
    try:
        simulator.hang(path="/v1/layers/stuck", respect_timeout=True)
        started = time.monotonic()
        assert requests.get(simulator.url + "/v1/layers/stuck", timeout=5).status_code == 503
        assert time.monotonic() - started >= 0.4
        simulator.drop(path="/v1/namespaces")
        with pytest.raises(requests.ConnectionError):
            requests.get(simulator.url + "/v1/namespaces", timeout=5)
        assert requests.get(simulator.url + "/v1/namespaces", timeout=5).status_code == 200
        simulator.delay(0.6, count=1, path="/v1/namespaces")
        assert requests.get(simulator.url + "/v1/namespaces", timeout=5).status_code == 503
        simulator.hang(path="/v1/layers/forever")
        outcome: list[BaseException | int] = []

        def call() -> None:
            try:
                outcome.append(requests.get(simulator.url + "/v1/layers/forever", timeout=10).status_code)
            except requests.RequestException as err:
                outcome.append(err)

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.8)  # longer than api_timeout: a plain hang ignores the time-out
        assert outcome == []
    finally:
        simulator.stop()
    thread.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], requests.ConnectionError)


def test_request_records_and_logs(sim: ClairSimulator, layers: LayerServer) -> None:
    path = layers.add("a.tar", make_layer(ALPINE_BASE))
    post_layer(sim, "rec", path)
    get_layer(sim, "rec")
    records = sim.requests
    assert [(r.server, r.method, r.path, r.status) for r in records] == [
        ("api", "POST", "/v1/layers", 201),
        ("api", "GET", "/v1/layers/rec?features&vulnerabilities", 200),
    ]
    assert json.loads(records[0].body)["Layer"]["Name"] == "rec" and records[0].elapsed > 0
    handled = [r for r in sim.logs if r["Event"] == "Handled HTTP request"]
    assert [(r["method"], r["request uri"], r["status"]) for r in handled] == [
        ("POST", "/v1/layers", "201"),
        ("GET", "/v1/layers/rec?features&vulnerabilities", "200"),
    ]
    for record in sim.logs:
        assert list(record) == sorted(record) and record["Level"] in ("info", "warning", "error")
        assert record["Location"].endswith(tuple(f".py:{n}" for n in range(1, 2000)))
        time.strptime(record["Time"][:19], "%Y-%m-%d %H:%M:%S")
    assert isinstance(handled[0]["elapsed time"], int)
    starts = [r for r in sim.logs if r["Event"] in ("starting main API", "starting health API")]
    assert [r["port"] for r in starts] == [sim.port, sim.health_port]
    sim.clear_records()
    assert sim.requests == [] and sim.downloads == []


def test_log_lines_are_go_json() -> None:
    stream = io.StringIO()
    logger = clairsim.Logger(stream=stream, level="warning")
    logger.info("hidden")
    logger.log("warning", "shown", {"request uri": "/v1/layers/a?features&x=<y>", "n": 3})
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert '"request uri":"/v1/layers/a?features\\u0026x=\\u003cy\\u003e"' in line
    assert json.loads(line)["Event"] == "shown"


# --- config and JSON helpers ------------------------------------------------------------------


def test_config_and_connection_strings() -> None:
    config = simconfig.parse_config(
        "clair:\n  database:\n    type: pgsql\n    options:\n"
        "      source: host=postgres port=5432 user=postgres password=password sslmode=disable"
        " statement_timeout=60000\n"
        "      cachesize: 16384\n  api:\n    port: 6060\n    healthport: 6061\n    timeout: 900s\n"
        "  updater:\n    interval: 2h\n"
    )
    assert (config.api.port, config.api.health_port, config.api.timeout) == (6060, 6061, 900.0)  # type: ignore[union-attr]
    assert config.updater_interval == 7200.0
    info = simconfig.libpq_conninfo(config.source)
    assert info == (
        "host='postgres' port='5432' user='postgres' password='password' sslmode='disable' "
        "options='-c statement_timeout=60000'"
    )
    assert "sslmode='require'" in simconfig.libpq_conninfo("user=postgres")  # lib/pq's default
    assert simconfig.parse_go_duration("1h30m0.5s") == 5400.5
    assert simconfig.yaml_duration(900, 0) == 900e-9  # a bare integer is nanoseconds
    assert simconfig.parse_config("clair:\n  api:\n").api is None
    with pytest.raises(simconfig.ConfigError):
        simconfig.parse_go_duration("15 minutes")


def test_go_float_formatting() -> None:
    assert [gojson.format_float(x) for x in (5.0, 7.5, 0.0, 9.8, 1e21, 1e-7, 123456789.0)] == [
        "5",
        "7.5",
        "0",
        "9.8",
        "1e+21",
        "1e-7",
        "123456789",
    ]


# --- PostgreSQL -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture(scope="session")
def postgres() -> Iterator[dict[str, Any]]:
    """A PostgreSQL 15 cluster on 127.0.0.1 for this test session (trust authentication)."""
    if not (PG_BIN / "postgres").exists():
        pytest.skip("PostgreSQL 15 binaries are not installed")
    datadir = tempfile.mkdtemp(prefix="clairsim-pg-")
    if os.geteuid() == 0:
        shutil.chown(datadir, "postgres", "postgres")
    subprocess.run(
        _as_postgres(
            [
                str(PG_BIN / "initdb"),
                "-D",
                datadir,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    port = _free_port()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=off"
    subprocess.run(
        _as_postgres(
            [str(PG_BIN / "pg_ctl"), "-D", datadir, "-o", options, "-w", "-l", f"{datadir}/log", "start"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield {"host": "127.0.0.1", "port": port, "user": "postgres"}
    finally:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", datadir, "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(datadir, ignore_errors=True)


@pytest.fixture
def database(postgres: dict[str, Any]) -> Iterator[str]:
    """A fresh database; yields its libpq DSN (sslmode=disable, as arminc's config has)."""
    import psycopg

    name = "clair_" + uuid.uuid4().hex[:10]
    admin = f"host={postgres['host']} port={postgres['port']} user=postgres dbname=postgres sslmode=disable"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    yield f"host={postgres['host']} port={postgres['port']} user=postgres dbname={name} sslmode=disable"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE {name} WITH (FORCE)")


def _query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        cursor = connection.execute(sql, params or None)
        return cursor.fetchall() if cursor.description else []


def test_seed_writes_clairs_schema(database: str) -> None:
    counts = seed(database, VULNS)
    assert counts == {"namespaces": 2, "vulnerabilities": 12}
    tables = {
        row[0] for row in _query(database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert tables == {
        "schema_migrations",
        "namespace",
        "layer",
        "feature",
        "featureversion",
        "layer_diff_featureversion",
        "vulnerability",
        "vulnerability_fixedin_feature",
        "vulnerability_affects_featureversion",
        "keyvalue",
        "lock",
        "vulnerability_notification",
    }
    assert [r[0] for r in _query(database, "SELECT version FROM schema_migrations ORDER BY 1")] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    assert _query(database, "SELECT value FROM keyvalue WHERE key = 'updater/last'") == [("1700000000",)]
    assert _query(database, "SELECT name, version_format FROM namespace ORDER BY id") == [
        ("debian:10", "dpkg"),
        ("alpine:v3.10", "dpkg"),
    ]
    rows = _query(
        database,
        "SELECT v.severity::text, v.metadata, vf.version FROM vulnerability v"
        " JOIN vulnerability_fixedin_feature vf ON vf.vulnerability_id = v.id WHERE v.name = %s",
        "CVE-2019-18276",
    )
    assert rows[0][0] == "Negligible" and rows[0][2] == "#MAXV#"
    assert rows[0][1].startswith('{"NVD":{"CVSSv2":{"PublishedDateTime":"2019-11-28T01:15Z","Score":7.2,')
    assert _query(database, "SELECT metadata FROM vulnerability WHERE name = 'CVE-2019-5094'") == [("null",)]
    seed(database, VULNS)  # unchanged records are left alone ...
    assert _query(database, "SELECT count(*) FROM vulnerability") == [(12,)]
    changed = json.loads(VULNS.read_text())
    changed["vulnerabilities"][0]["Severity"] = "Critical"
    seed(database, changed)  # ... a changed one is replaced, the old row soft-deleted, as Clair does
    assert _query(database, "SELECT count(*), count(deleted_at) FROM vulnerability") == [(13, 1)]
    assert _query(
        database,
        "SELECT severity::text FROM vulnerability WHERE name = %s AND deleted_at IS NULL",
        "CVE-2019-1543",
    ) == [("Critical",)]


def test_database_mode_matches_memory_mode(database: str, layers: LayerServer) -> None:
    seed(database, VULNS)
    with ClairSimulator(MemoryStore.from_json(VULNS), log_stream=None) as memory_sim:
        index_debian(memory_sim, layers)
        expected = get_layer(memory_sim, "deb-upgrade").json()
    with ClairSimulator(PostgresStore(database), log_stream=None) as db_sim:
        index_debian(db_sim, layers)
        assert get_layer(db_sim, "deb-upgrade").json() == expected
        assert requests.get(db_sim.health_url + "/health", timeout=5).status_code == 200
        assert db_sim.store.get_key_value("updater/last") == "1700000000"

        # Rows soft-deleted in the database no longer count.
        _query(database, "UPDATE vulnerability SET deleted_at = now() WHERE name = 'DSA-4539-1'")
        report = summary(get_layer(db_sim, "deb-upgrade").json()["Layer"])
        assert report[("glibc", "2.28-10")] == ("deb-base", [])
        listed = requests.get(db_sim.url + "/v1/namespaces/debian:10/vulnerabilities?limit=100").json()
        assert "DSA-4539-1" not in [v["Name"] for v in listed["Vulnerabilities"]]

        # A namespace detected in a layer is written to the namespace table, as Clair does.
        ubuntu = {"etc/lsb-release": b"DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=18.04\n"}
        assert post_layer(db_sim, "ubu", layers.add("u.tar", make_layer(ubuntu))).status_code == 201
        assert _query(database, "SELECT version_format FROM namespace WHERE name = 'ubuntu:18.04'") == [
            ("dpkg",)
        ]

        # Vulnerabilities posted through the API go to the database.
        vuln = {
            "Name": "CVE-2099-7",
            "NamespaceName": "debian:10",
            "Severity": "Critical",
            "FixedIn": [{"Name": "tar", "VersionFormat": "dpkg", "Version": "1.31-1"}],
        }
        assert (
            requests.post(
                db_sim.url + "/v1/namespaces/debian:10/vulnerabilities", json={"Vulnerability": vuln}
            ).status_code
            == 201
        )
        assert _query(database, "SELECT severity::text FROM vulnerability WHERE name = 'CVE-2099-7'") == [
            ("Critical",)
        ]
        report = summary(get_layer(db_sim, "deb-upgrade").json()["Layer"])
        assert report[("tar", "1.30+dfsg-6")] == ("deb-base", [("CVE-2099-7", "1.31-1")])


def test_database_health_follows_connectivity(database: str, postgres: dict[str, Any]) -> None:
    seed(database, VULNS)
    name = database.split("dbname=")[1].split()[0]
    admin = f"host=127.0.0.1 port={postgres['port']} user=postgres dbname=postgres sslmode=disable"
    with ClairSimulator(PostgresStore(database), log_stream=None) as db_sim:
        assert requests.get(db_sim.health_url + "/health", timeout=5).status_code == 200
        _query(admin, f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        _query(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", name)
        try:
            assert requests.get(db_sim.health_url + "/health", timeout=5).status_code == 500
            response = requests.get(db_sim.url + "/v1/namespaces", timeout=5)
            assert response.status_code == 500
            assert response.json() == {
                "Error": {"Message": "database: an error occured when querying the backend"}
            }
        finally:
            _query(admin, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        assert requests.get(db_sim.health_url + "/health", timeout=5).status_code == 200


def test_opening_migrates_an_empty_database(database: str) -> None:
    store = PostgresStore(database)
    try:
        assert store.list_namespaces() == [] and store.get_key_value("updater/last") is None
        assert len(_query(database, "SELECT version FROM schema_migrations")) == 6
    finally:
        store.close()
    again = clairsim.open_store(dsn=database)  # a second start finds everything migrated
    assert isinstance(again, PostgresStore)
    again.close()
    with pytest.raises(clairsim.DatabaseUnavailable, match=r"^pgsql: could not open database: "):
        PostgresStore(f"host=127.0.0.1 port={_free_port()} user=postgres sslmode=disable")


# --- standalone -------------------------------------------------------------------------------


class Standalone:
    """`python -m clairsim ...` as a subprocess, reading its JSON log lines."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(TESTS))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clairsim", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(TESTS),
        )
        self.lines: list[dict[str, Any]] = []

    def wait_for(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(json.loads(line))
            if self.lines[-1]["Event"] == event:
                return self.lines[-1]
        raise AssertionError(
            f"no {event!r} in {self.lines}; stderr: "
            + (self.process.stderr.read() if self.process.stderr else "")
        )

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(10)
        assert self.process.stdout is not None
        self.lines += [json.loads(line) for line in self.process.stdout.read().splitlines()]
        return code


def _config(tmp_path: Path, source: str, timeout: str = "900s") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "clair:\n  database:\n    type: pgsql\n    options:\n"
        f"      source: {source}\n      cachesize: 16384\n"
        f"  api:\n    port: 0\n    healthport: 0\n    timeout: {timeout}\n    paginationkey:\n"
        "  updater:\n    interval: 2h\n  notifier:\n    attempts: 3\n    renotifyinterval: 2h\n"
    )
    return path


def test_standalone_with_data_file(tmp_path: Path, layers: LayerServer) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("clair:\n  api:\n    port: 0\n    healthport: 0\n    timeout: 1s\n")
    run = Standalone(f"-data={VULNS}", "-config", str(config), "-host=127.0.0.1", "--log-level=info")
    try:
        api = run.wait_for("starting main API")["port"]
        health = run.wait_for("starting health API")["port"]
        assert requests.get(f"http://127.0.0.1:{health}/health", timeout=5).status_code == 200
        path = layers.add("a.tar.gz", make_layer(ALPINE_BASE, "gz"))
        response = requests.post(
            f"http://127.0.0.1:{api}/v1/layers",
            json={"Layer": {"Name": "a", "Path": path, "Format": "Docker"}},
        )
        assert response.status_code == 201
        layer = requests.get(f"http://127.0.0.1:{api}/v1/layers/a?vulnerabilities", timeout=5).json()["Layer"]
        assert layer["NamespaceName"] == "alpine:v3.10"
        run.wait_for("Handled HTTP request")
    finally:
        code = run.stop()
    assert code == 0
    events = [line["Event"] for line in run.lines]
    assert "Received interruption, gracefully stopping ..." in events and "main API stopped" in events


def test_standalone_with_postgres(tmp_path: Path, database: str) -> None:
    seeded = subprocess.run(
        [sys.executable, "-m", "clairsim.seed", "--dsn", database, str(VULNS)],
        cwd=str(TESTS),
        env=dict(os.environ, PYTHONPATH=str(TESTS)),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "loaded 12 vulnerabilities in 2 namespaces" in seeded.stdout
    run = Standalone("-config=" + str(_config(tmp_path, database)))
    try:
        migrations = run.wait_for("database migration ran successfully")
        assert migrations["Level"] == "info"
        api = run.wait_for("starting main API")["port"]
        namespaces = requests.get(f"http://127.0.0.1:{api}/v1/namespaces", timeout=5).json()["Namespaces"]
        assert {ns["Name"] for ns in namespaces} == {"debian:10", "alpine:v3.10"}
    finally:
        assert run.stop() == 0


@pytest.mark.parametrize("source_kind", ["closed-port", "lib/pq-default-sslmode", "unknown-host"])
def test_standalone_exits_when_the_database_is_unreachable(
    tmp_path: Path, postgres: dict[str, Any], source_kind: str
) -> None:
    source = {
        "closed-port": f"host=127.0.0.1 port={_free_port()} user=postgres sslmode=disable",
        # like Clair's lib/pq, a source without sslmode requires TLS, which this server lacks
        "lib/pq-default-sslmode": f"host=127.0.0.1 port={postgres['port']} user=postgres",
        "unknown-host": "host=postgres.invalid port=5432 user=postgres sslmode=disable statement_timeout=6",
    }[source_kind]
    run = Standalone("-config=" + str(_config(tmp_path, source)))
    code = run.process.wait(30)
    assert run.process.stdout is not None
    lines = [json.loads(line) for line in run.process.stdout.read().splitlines()]
    assert code == 1
    assert lines[-1]["Level"] == "fatal"
    assert lines[-1]["Event"].startswith("pgsql: could not open database: ")
    assert not any(line["Event"].startswith("starting") for line in lines)


def test_standalone_config_errors(tmp_path: Path) -> None:
    run = Standalone("-config=" + str(tmp_path / "missing.yaml"))
    assert run.process.wait(20) == 1
    assert run.process.stderr is not None and "failed to load configuration" in run.process.stderr.read()
    run = Standalone("-nonsense")
    assert run.process.wait(20) == 2
